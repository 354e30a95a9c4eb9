// SPDX-License-Identifier: GPL-2.0
/*
 * kerntransport user-space interface: the /dev/kerntransport misc device.
 *
 * An open file is one endpoint: idle, then either a channel (after
 * KT_IOC_CONNECT, or a file returned by KT_IOC_ACCEPT) or a listener (after
 * KT_IOC_LISTEN). read() returns one whole message, write() sends one,
 * KT_IOC_RECVV / KT_IOC_SENDV several per call with the same rules; poll,
 * O_NONBLOCK and blocking waits follow socket conventions. This file maps
 * the file API onto kt_chan.c and owns nothing of the protocol.
 */
#include <linux/anon_inodes.h>
#include <linux/build_bug.h>
#include <linux/err.h>
#include <linux/fs.h>
#include <linux/miscdevice.h>
#include <linux/module.h>
#include <linux/overflow.h>
#include <linux/poll.h>
#include <linux/slab.h>
#include <linux/string.h>
#include <linux/uaccess.h>

#include "kt_priv.h"

enum kt_file_mode {
	KT_FILE_IDLE,
	KT_FILE_CONNECTING,
	KT_FILE_CHANNEL,
	KT_FILE_LISTENER,
};

struct kt_file {
	struct mutex lock;		/* mode changes */
	enum kt_file_mode mode;
	struct kt_chan *ch;		/* KT_FILE_CHANNEL, published once */
	struct kt_service *lst;		/* KT_FILE_LISTENER */
};

static const struct file_operations kt_fops;

static struct kt_file *kt_file_new(void)
{
	struct kt_file *kf;

	kf = kzalloc(sizeof(*kf), GFP_KERNEL);
	if (!kf)
		return NULL;
	mutex_init(&kf->lock);
	kf->mode = KT_FILE_IDLE;
	return kf;
}

/* The file's channel once connected or accepted, else NULL. */
static struct kt_chan *kt_file_chan(struct kt_file *kf)
{
	/* Pairs with the release in kt_ioc_connect(): ch is fully set up. */
	return smp_load_acquire(&kf->ch);
}

static int kt_open_file(struct inode *inode, struct file *file)
{
	struct kt_file *kf = kt_file_new();

	if (!kf)
		return -ENOMEM;
	file->private_data = kf;
	return stream_open(inode, file);
}

/* Closes the channels waiting in a listener already out of the registry. */
static void kt_listener_drain(struct kt_service *svc)
{
	struct kt_chan *ch;

	for (;;) {
		spin_lock(&svc->lock);
		ch = list_first_entry_or_null(&svc->chans, struct kt_chan,
					      svc_node);
		if (ch) {
			list_del_init(&ch->svc_node);
			svc->backlog--;
		}
		spin_unlock(&svc->lock);
		if (!ch)
			break;
		kt_chan_release(ch);
		kt_chan_put(ch);
	}
}

static int kt_release(struct inode *inode, struct file *file)
{
	struct kt_file *kf = file->private_data;

	if (kf->ch) {
		kt_chan_release(kf->ch);
		kt_chan_put(kf->ch);
	}
	if (kf->lst) {
		kt_service_del(kf->lst);
		kt_listener_drain(kf->lst);
		kfree(kf->lst);
	}
	kfree(kf);
	return 0;
}

static bool kt_chan_connecting(struct kt_chan *ch)
{
	return kt_ch_connecting(READ_ONCE(ch->state));
}

static bool kt_chan_readable(struct kt_chan *ch)
{
	bool ret;

	spin_lock(&ch->lock);
	ret = !list_empty(&ch->rxq) || kt_ch_ended(ch->state);
	spin_unlock(&ch->lock);
	return ret;
}

/* Copies a message's payload to user space; nonzero if that faulted. */
static int kt_msg_copy_out(struct kt_msg *msg, char __user *ubuf)
{
	unsigned int i;
	u32 n;
	void *b;

	if (!msg->nbufs)
		return copy_to_user(ubuf, msg->data, msg->len) ? -EFAULT : 0;
	for (i = 0; i < msg->nbufs; i++, ubuf += n) {
		b = kt_msg_bufs(msg)[i];
		n = kt_msg_buf_len(b);
		if (copy_to_user(ubuf, (u8 *)b + KT_HDR_SIZE, n))
			return -EFAULT;
	}
	return 0;
}

/*
 * read()'s answer once a closed channel's queue is empty. EMSGSIZE already
 * means "your buffer is too small" (the message stays queued), so a peer
 * closing with KT_ERR_MSGSIZE is reported as ECONNABORTED.
 */
static ssize_t kt_read_errno(int err)
{
	if (err == EMSGSIZE)
		return -ECONNABORTED;
	return -err;
}

/* Takes rd_mutex; a non-blocking reader never sleeps behind a blocked one. */
static int kt_rd_lock(struct kt_chan *ch, bool nonblock)
{
	if (nonblock)
		return mutex_trylock(&ch->rd_mutex) ? 0 : -EAGAIN;
	return mutex_lock_interruptible(&ch->rd_mutex) ? -ERESTARTSYS : 0;
}

/*
 * The first queued message, left on the queue; waits for one unless
 * @nonblock. NULL with *@ret set when there is none: 0 (EOF) or the close
 * reason once the channel ended, else -EAGAIN or -ERESTARTSYS. The caller
 * holds rd_mutex: only a reader removes messages from rxq.
 */
static struct kt_msg *kt_rx_first(struct kt_chan *ch, bool nonblock,
				  ssize_t *ret)
{
	struct kt_msg *msg;
	int err;

	for (;;) {
		spin_lock(&ch->lock);
		msg = list_first_entry_or_null(&ch->rxq, struct kt_msg, node);
		err = ch->err;
		if (msg || kt_ch_ended(ch->state))
			break;
		spin_unlock(&ch->lock);
		if (nonblock) {
			*ret = -EAGAIN;
			return NULL;
		}
		if (wait_event_interruptible(ch->wq, kt_chan_readable(ch))) {
			*ret = -ERESTARTSYS;
			return NULL;
		}
	}
	spin_unlock(&ch->lock);
	if (!msg)
		*ret = kt_read_errno(err);	/* queued data first */
	return msg;
}

/* The reader copied the first queued message out: drop it, return credit. */
static void kt_rx_consume(struct kt_chan *ch, struct kt_msg *msg)
{
	kt_chan_dequeue(ch, msg);
	kt_msg_free(ch->kd, msg);
}

static ssize_t kt_read(struct file *file, char __user *buf, size_t count,
		       loff_t *ppos)
{
	struct kt_chan *ch = kt_file_chan(file->private_data);
	bool nonblock = file->f_flags & O_NONBLOCK;
	struct kt_msg *msg;
	ssize_t ret;

	if (!ch)
		return -ENOTCONN;
	ret = kt_rd_lock(ch, nonblock);
	if (ret)
		return ret;
	msg = kt_rx_first(ch, nonblock, &ret);
	if (!msg)
		goto out;
	if (msg->len > count) {
		ret = -EMSGSIZE;	/* the message stays queued */
		goto out;
	}
	if (kt_msg_copy_out(msg, buf)) {
		ret = -EFAULT;
		goto out;
	}
	ret = msg->len;
	kt_rx_consume(ch, msg);
out:
	mutex_unlock(&ch->rd_mutex);
	return ret;
}

/* Sends @len bytes from @ubuf as one message, as write() does. */
static int kt_send_user(struct kt_chan *ch, const char __user *ubuf,
			size_t len, bool nonblock)
{
	struct kt_txbuf *txb;
	int err;

	if (len > ch->kd->max_msg_size)
		return -EMSGSIZE;
	txb = kt_txbuf_alloc(ch->kd, len, GFP_KERNEL);
	if (!txb)
		return -ENOMEM;
	if (copy_from_user(txb->data, ubuf, len)) {
		kt_txbuf_free(txb);
		return -EFAULT;
	}
	err = kt_chan_send(ch, txb, nonblock);
	if (err)
		kt_txbuf_free(txb);
	return err;
}

static ssize_t kt_write(struct file *file, const char __user *buf,
			size_t count, loff_t *ppos)
{
	struct kt_chan *ch = kt_file_chan(file->private_data);
	int err;

	if (!ch)
		return -ENOTCONN;
	err = kt_send_user(ch, buf, count, file->f_flags & O_NONBLOCK);
	return err ? err : count;
}

static __poll_t kt_poll_chan(struct file *file, struct kt_chan *ch,
			     poll_table *wait)
{
	__poll_t mask = 0;
	u32 need;

	poll_wait(file, &ch->wq, wait);
	spin_lock(&ch->lock);
	if (!list_empty(&ch->rxq))
		mask |= EPOLLIN | EPOLLRDNORM;
	if (kt_ch_ended(ch->state)) {
		/* read() returns at once: queued data, then EOF or error. */
		mask |= EPOLLIN | EPOLLRDNORM | EPOLLHUP | EPOLLRDHUP;
		if (ch->err)
			mask |= EPOLLERR;
	}
	spin_unlock(&ch->lock);

	/* Writable when the last message that had to wait would now fit. */
	need = READ_ONCE(ch->tx_want);
	if (!need)
		need = kt_msg_cost(0);
	if (READ_ONCE(ch->state) == KT_CH_OPEN && kt_chan_can_send(ch, need))
		mask |= EPOLLOUT | EPOLLWRNORM;
	return mask;
}

static __poll_t kt_poll(struct file *file, poll_table *wait)
{
	struct kt_file *kf = file->private_data;
	struct kt_chan *ch = kt_file_chan(kf);
	struct kt_service *svc;

	if (ch)
		return kt_poll_chan(file, ch, wait);
	svc = READ_ONCE(kf->lst);
	if (svc) {
		poll_wait(file, &svc->wq, wait);
		return READ_ONCE(svc->backlog) ? EPOLLIN | EPOLLRDNORM : 0;
	}
	return 0;
}

static int kt_get_name(void __user *argp, char *name)
{
	struct kt_ioc_name n;
	size_t len;

	if (copy_from_user(&n, argp, sizeof(n)))
		return -EFAULT;
	len = strnlen(n.name, sizeof(n.name));
	if (len == sizeof(n.name) || kt_check_name(n.name, len))
		return -EINVAL;
	memcpy(name, n.name, len + 1);
	return 0;
}

static int kt_ioc_connect(struct file *file, struct kt_file *kf,
			  void __user *argp)
{
	char name[KT_NAME_MAX + 1];
	struct kt_dev *kd;
	struct kt_chan *ch;
	int err;

	err = kt_get_name(argp, name);
	if (err)
		return err;

	mutex_lock(&kf->lock);
	if (kf->mode != KT_FILE_IDLE) {
		err = kf->mode == KT_FILE_LISTENER ? -EINVAL :
		      kf->mode == KT_FILE_CONNECTING ? -EALREADY :
		      kt_chan_connecting(kf->ch) ? -EALREADY : -EISCONN;
		mutex_unlock(&kf->lock);
		return err;
	}
	kf->mode = KT_FILE_CONNECTING;
	mutex_unlock(&kf->lock);

	kd = kt_dev_get_active();
	if (!kd) {
		err = -ENODEV;
		goto out;
	}
	ch = kt_chan_new(kd, name);
	kt_dev_put(kd);
	if (!ch) {
		err = -ENOMEM;
		goto out;
	}
	err = kt_chan_connect(ch, file->f_flags & O_NONBLOCK);
	if (err && err != -EINPROGRESS)
		kt_chan_put(ch);
out:
	mutex_lock(&kf->lock);
	if (err && err != -EINPROGRESS) {
		kf->mode = KT_FILE_IDLE;
	} else {
		kf->mode = KT_FILE_CHANNEL;
		/*
		 * Publish only a connected channel, or one whose non-blocking
		 * connect is in progress (poll shows when it ends), to
		 * read/write/poll.
		 */
		smp_store_release(&kf->ch, ch);
	}
	mutex_unlock(&kf->lock);
	return err;
}

static int kt_ioc_listen(struct kt_file *kf, void __user *argp)
{
	char name[KT_NAME_MAX + 1];
	struct kt_service *svc;
	int err;

	err = kt_get_name(argp, name);
	if (err)
		return err;
	if (!strncmp(name, KT_KERNEL_NAME_PREFIX,
		     strlen(KT_KERNEL_NAME_PREFIX)))
		return -EPERM;

	svc = kzalloc(sizeof(*svc), GFP_KERNEL);
	if (!svc)
		return -ENOMEM;
	strscpy(svc->name, name, sizeof(svc->name));
	spin_lock_init(&svc->lock);
	INIT_LIST_HEAD(&svc->chans);
	init_waitqueue_head(&svc->wq);

	mutex_lock(&kf->lock);
	if (kf->mode != KT_FILE_IDLE) {
		err = kf->mode == KT_FILE_LISTENER ? -EINVAL : -EISCONN;
		goto err_unlock;
	}
	err = kt_service_add(svc);
	if (err)
		goto err_unlock;
	kf->mode = KT_FILE_LISTENER;
	WRITE_ONCE(kf->lst, svc);
	mutex_unlock(&kf->lock);
	return 0;

err_unlock:
	mutex_unlock(&kf->lock);
	kfree(svc);
	return err;
}

/*
 * The argument is accept4()'s flags: O_CLOEXEC and O_NONBLOCK are honoured,
 * other bits ignored (older callers passed nothing).
 */
static int kt_ioc_accept(struct file *file, struct kt_file *kf,
			 unsigned long arg)
{
	int flags = O_RDWR | (arg & (O_CLOEXEC | O_NONBLOCK));
	struct kt_service *svc = READ_ONCE(kf->lst);
	struct kt_file *nkf;
	struct kt_chan *ch;
	int fd;

	if (!svc)
		return -EINVAL;
	for (;;) {
		spin_lock(&svc->lock);
		ch = list_first_entry_or_null(&svc->chans, struct kt_chan,
					      svc_node);
		if (ch) {
			list_del_init(&ch->svc_node);
			WRITE_ONCE(svc->backlog, svc->backlog - 1);
		}
		spin_unlock(&svc->lock);
		if (ch)
			break;
		if (file->f_flags & O_NONBLOCK)
			return -EAGAIN;
		if (wait_event_interruptible(svc->wq, READ_ONCE(svc->backlog)))
			return -ERESTARTSYS;
	}

	nkf = kt_file_new();
	if (!nkf) {
		fd = -ENOMEM;
		goto err_close;
	}
	/* The accept queue's reference moves to the new file. */
	nkf->mode = KT_FILE_CHANNEL;
	nkf->ch = ch;
	fd = anon_inode_getfd("[kerntransport]", &kt_fops, nkf, flags);
	if (fd < 0) {
		kfree(nkf);
		goto err_close;
	}
	return fd;

err_close:
	kt_chan_release(ch);
	kt_chan_put(ch);
	return fd;
}

static int kt_ioc_info(struct kt_file *kf, void __user *argp)
{
	struct kt_ioc_info info = { };
	struct kt_dev *kd;
	struct kt_chan *ch;

	mutex_lock(&kf->lock);
	switch (kf->mode) {
	case KT_FILE_IDLE:
		info.state = KT_STATE_IDLE;
		break;
	case KT_FILE_CONNECTING:
		info.state = KT_STATE_CONNECTING;
		break;
	case KT_FILE_LISTENER:
		info.state = KT_STATE_LISTENING;
		break;
	case KT_FILE_CHANNEL:
		ch = kf->ch;
		spin_lock(&ch->lock);
		info.channel = ch->id;
		info.state = ch->state == KT_CH_OPEN ? KT_STATE_OPEN :
			     kt_ch_connecting(ch->state) ? KT_STATE_CONNECTING :
			     KT_STATE_CLOSED;
		spin_unlock(&ch->lock);
		info.max_msg_size = ch->kd->max_msg_size;
		info.guest_id = ch->kd->guest_id;
		break;
	}
	mutex_unlock(&kf->lock);

	if (!info.max_msg_size) {
		kd = kt_dev_get_active();
		if (kd) {
			info.max_msg_size = kd->max_msg_size;
			info.guest_id = kd->guest_id;
			kt_dev_put(kd);
		}
	}
	if (copy_to_user(argp, &info, sizeof(info)))
		return -EFAULT;
	return 0;
}

static int kt_ioc_next(struct kt_file *kf, void __user *argp)
{
	struct kt_chan *ch = kt_file_chan(kf);
	struct kt_ioc_next next = { };
	struct kt_msg *msg;

	if (!ch)
		return -ENOTCONN;
	spin_lock(&ch->lock);
	msg = list_first_entry_or_null(&ch->rxq, struct kt_msg, node);
	if (msg) {
		next.flags |= KT_NEXT_F_MSG;
		next.len = msg->len;
	}
	if (kt_ch_ended(ch->state)) {
		next.flags |= KT_NEXT_F_ENDED;
		next.error = -kt_read_errno(ch->err);
	}
	spin_unlock(&ch->lock);
	if (copy_to_user(argp, &next, sizeof(next)))
		return -EFAULT;
	return 0;
}

/*
 * Copies in a KT_IOC_SENDV/RECVV argument and its array (kfree() it) and
 * checks both: 1..KT_IOC_VEC_MAX entries, every flags field 0. The array is
 * used from this copy only, so user space changing it meanwhile (or
 * pointing a buffer at it) changes nothing the driver decides.
 */
static struct kt_ioc_msg *kt_msgvec_get(void __user *argp, u32 *count,
					struct kt_ioc_msg __user **umsgs)
{
	struct kt_ioc_msgvec vec;
	struct kt_ioc_msg *m;
	u32 i;

	if (copy_from_user(&vec, argp, sizeof(vec)))
		return ERR_PTR(-EFAULT);
	if (vec.flags || !vec.count || vec.count > KT_IOC_VEC_MAX)
		return ERR_PTR(-EINVAL);
	*umsgs = u64_to_user_ptr(vec.msgs);
	m = memdup_user(*umsgs, array_size(vec.count, sizeof(*m)));
	if (IS_ERR(m))
		return m;
	for (i = 0; i < vec.count; i++) {
		if (m[i].flags) {
			kfree(m);
			return ERR_PTR(-EINVAL);
		}
	}
	*count = vec.count;
	return m;
}

/*
 * KT_IOC_SENDV: each entry as one write(); only the first may wait for
 * credit. Nothing is sent if an entry is over max_msg_size. Returns the
 * count sent, or the first message's error.
 */
static long kt_ioc_sendv(struct file *file, struct kt_file *kf,
			 void __user *argp)
{
	struct kt_chan *ch = kt_file_chan(kf);
	bool nonblock = file->f_flags & O_NONBLOCK;
	struct kt_ioc_msg __user *um;
	struct kt_ioc_msg *m;
	u32 i, n, sent = 0;
	int err = 0;

	if (!ch)
		return -ENOTCONN;
	m = kt_msgvec_get(argp, &n, &um);
	if (IS_ERR(m))
		return PTR_ERR(m);
	for (i = 0; i < n; i++) {
		if (m[i].len > ch->kd->max_msg_size) {
			err = -EMSGSIZE;
			goto out;
		}
	}
	for (; sent < n; sent++) {
		err = kt_send_user(ch, u64_to_user_ptr(m[sent].buf),
				   m[sent].len, nonblock || sent);
		if (err)
			break;
	}
out:
	kfree(m);
	return sent ? sent : err;
}

/*
 * KT_IOC_RECVV: each entry as one read(), under one rd_mutex hold; only the
 * first waits. A buffer too small for its message ends the batch: that
 * entry gets the message's length and KT_MSG_F_TRUNC, and the message
 * stays queued, as read()'s EMSGSIZE leaves it. A message whose copy-out
 * faults stays queued too. Returns the entries filled, or (none filled)
 * what read() would have returned: 0 for EOF or an error.
 */
static long kt_ioc_recvv(struct file *file, struct kt_file *kf,
			 void __user *argp)
{
	struct kt_chan *ch = kt_file_chan(kf);
	bool nonblock = file->f_flags & O_NONBLOCK;
	struct kt_ioc_msg __user *um;
	struct {
		__u32 len;
		__u32 flags;
	} res;
	struct kt_ioc_msg *m;
	struct kt_msg *msg;
	u32 i = 0, n;
	ssize_t ret;

	if (!ch)
		return -ENOTCONN;
	m = kt_msgvec_get(argp, &n, &um);
	if (IS_ERR(m))
		return PTR_ERR(m);
	BUILD_BUG_ON(offsetof(struct kt_ioc_msg, flags) !=
		     offsetof(struct kt_ioc_msg, len) + sizeof(res.len));
	ret = kt_rd_lock(ch, nonblock);
	if (ret)
		goto out_free;
	for (; i < n; i++) {
		msg = kt_rx_first(ch, nonblock || i, &ret);
		if (!msg)
			break;
		res.len = msg->len;
		res.flags = msg->len > m[i].len ? KT_MSG_F_TRUNC : 0;
		if (!res.flags &&
		    kt_msg_copy_out(msg, u64_to_user_ptr(m[i].buf))) {
			ret = -EFAULT;
			break;
		}
		if (copy_to_user(&um[i].len, &res, sizeof(res))) {
			ret = -EFAULT;
			break;
		}
		if (res.flags) {
			i++;
			break;
		}
		kt_rx_consume(ch, msg);
	}
	mutex_unlock(&ch->rd_mutex);
out_free:
	kfree(m);
	return i ? i : ret;
}

static long kt_ioctl(struct file *file, unsigned int cmd, unsigned long arg)
{
	struct kt_file *kf = file->private_data;
	void __user *argp = (void __user *)arg;

	switch (cmd) {
	case KT_IOC_CONNECT:
		return kt_ioc_connect(file, kf, argp);
	case KT_IOC_LISTEN:
		return kt_ioc_listen(kf, argp);
	case KT_IOC_ACCEPT:
		return kt_ioc_accept(file, kf, arg);
	case KT_IOC_INFO:
		return kt_ioc_info(kf, argp);
	case KT_IOC_NEXT:
		return kt_ioc_next(kf, argp);
	case KT_IOC_SENDV:
		return kt_ioc_sendv(file, kf, argp);
	case KT_IOC_RECVV:
		return kt_ioc_recvv(file, kf, argp);
	default:
		return -ENOTTY;
	}
}

static const struct file_operations kt_fops = {
	.owner = THIS_MODULE,
	.open = kt_open_file,
	.release = kt_release,
	.read = kt_read,
	.write = kt_write,
	.poll = kt_poll,
	.unlocked_ioctl = kt_ioctl,
	.compat_ioctl = compat_ptr_ioctl,
};

static struct miscdevice kt_misc = {
	.minor = MISC_DYNAMIC_MINOR,
	.name = "kerntransport",
	.fops = &kt_fops,
	.mode = 0660,
};

int kt_cdev_register(void)
{
	return misc_register(&kt_misc);
}

void kt_cdev_unregister(void)
{
	misc_deregister(&kt_misc);
}
