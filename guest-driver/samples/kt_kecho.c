// SPDX-License-Identifier: GPL-2.0
/*
 * kt_kecho: sample in-kernel kerntransport service.
 *
 * Registers the reserved name "k.echo" and answers every message a host
 * program sends on it with the same bytes, so the host can exchange
 * messages with guest kernel code. Shows the whole in-kernel API: a
 * service, its accept and channel callbacks, kt_send() and kt_close().
 */
#include <linux/err.h>
#include <linux/kerntransport_api.h>
#include <linux/module.h>
#include <linux/printk.h>

#define KECHO_NAME	"k.echo"

static struct kt_service *kecho_svc;

static void kecho_recv(struct kt_chan *ch, const void *data, size_t len)
{
	int err;

	/* Waits for the host's credit: back-pressure reaches the host. */
	err = kt_send(ch, data, len, 0);
	if (err && err != -EPIPE && err != -ECONNRESET)
		pr_warn_ratelimited("kt_kecho: channel %#x: echo failed: %d\n",
				    kt_chan_id(ch), err);
}

static void kecho_closed(struct kt_chan *ch, int err)
{
	pr_debug("kt_kecho: channel %#x closed (%d)\n", kt_chan_id(ch), err);
	kt_close(ch);
}

static const struct kt_chan_ops kecho_chan_ops = {
	.owner = THIS_MODULE,
	.recv = kecho_recv,
	.closed = kecho_closed,
};

static int kecho_accept(struct kt_service *svc, struct kt_chan *ch)
{
	pr_debug("kt_kecho: channel %#x accepted\n", kt_chan_id(ch));
	return 0;
}

static const struct kt_service_ops kecho_ops = {
	.accept = kecho_accept,
	.chan_ops = &kecho_chan_ops,
};

static int __init kecho_init(void)
{
	kecho_svc = kt_register_service(KECHO_NAME, &kecho_ops, NULL);
	if (IS_ERR(kecho_svc))
		return PTR_ERR(kecho_svc);
	pr_info("kt_kecho: serving \"%s\"\n", KECHO_NAME);
	return 0;
}

static void __exit kecho_exit(void)
{
	kt_unregister_service(kecho_svc);
}

module_init(kecho_init);
module_exit(kecho_exit);

MODULE_DESCRIPTION("kerntransport sample service: echoes host messages from the guest kernel");
MODULE_LICENSE("GPL");
