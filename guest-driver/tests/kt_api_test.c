// SPDX-License-Identifier: GPL-2.0
/*
 * Test module for the kerntransport in-kernel client API, run against
 * fake_device.py: kt_open() errors, kt_send()/recv callback round trip,
 * kt_close(), and a host close delivered to the closed callback, which
 * calls kt_close() itself. Logs "kt_api_test: N failures" at load.
 */
#include <linux/completion.h>
#include <linux/err.h>
#include <linux/kerntransport_api.h>
#include <linux/module.h>
#include <linux/string.h>

static DECLARE_COMPLETION(got_msg);
static DECLARE_COMPLETION(got_closed);
static char last[64];
static size_t last_len;
static int closed_err = -1;
static bool close_in_callback;
static int failures;
static char too_big[65537];

static void t_check(bool ok, const char *what)
{
	pr_info("kt_api_test %s: %s\n", ok ? "ok" : "FAIL", what);
	if (!ok)
		failures++;
}

static void t_recv(struct kt_chan *ch, const void *data, size_t len)
{
	last_len = min(len, sizeof(last));
	memcpy(last, data, last_len);
	complete(&got_msg);
}

static void t_closed(struct kt_chan *ch, int err)
{
	closed_err = err;
	if (close_in_callback)
		kt_close(ch);
	complete(&got_closed);
}

static const struct kt_chan_ops t_ops = {
	.owner = THIS_MODULE,
	.recv = t_recv,
	.closed = t_closed,
};

static int __init t_init(void)
{
	struct kt_chan *ch;
	unsigned long left;

	ch = kt_open("nosuch", &t_ops, NULL);
	t_check(PTR_ERR(ch) == -ENOENT, "kt_open of an unknown service -> -ENOENT");
	ch = kt_open("bad\x01", &t_ops, NULL);
	t_check(PTR_ERR(ch) == -EINVAL, "kt_open of a bad name -> -EINVAL");

	ch = kt_open("echo", &t_ops, t_ops.owner);
	t_check(!IS_ERR(ch), "kt_open echo");
	if (IS_ERR(ch))
		goto out;
	t_check(kt_chan_priv(ch) == t_ops.owner &&
		kt_chan_max_msg_size(ch) == sizeof(too_big) - 1,
		"kt_chan_priv, kt_chan_max_msg_size");
	t_check(kt_send(ch, too_big, sizeof(too_big), 0) == -EMSGSIZE,
		"kt_send over max_msg_size -> -EMSGSIZE");
	t_check(kt_send(ch, "from kernel", 11, 0) == 0, "kt_send");
	left = wait_for_completion_timeout(&got_msg, 5 * HZ);
	t_check(left && last_len == 11 && !memcmp(last, "from kernel", 11),
		"the echo arrives in the recv callback");
	kt_close(ch);

	close_in_callback = true;
	ch = kt_open("closeafter", &t_ops, NULL);
	t_check(!IS_ERR(ch), "kt_open closeafter");
	if (IS_ERR(ch))
		goto out;
	t_check(kt_send(ch, "y", 1, KT_SEND_NONBLOCK) == 0,
		"kt_send with KT_SEND_NONBLOCK");
	left = wait_for_completion_timeout(&got_closed, 5 * HZ);
	t_check(left && closed_err == 0 && last_len == 1,
		"recv, then closed(0) calling kt_close from the callback");
out:
	pr_info("kt_api_test: %d failures\n", failures);
	return 0;
}

static void __exit t_exit(void)
{
}

module_init(t_init);
module_exit(t_exit);

MODULE_DESCRIPTION("kerntransport in-kernel API test against fake_device.py");
MODULE_LICENSE("GPL");
