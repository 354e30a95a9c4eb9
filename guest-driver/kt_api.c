// SPDX-License-Identifier: GPL-2.0
/*
 * kerntransport in-kernel API (include/linux/kerntransport_api.h): channels
 * opened by or accepted for other kernel modules, and the work item that
 * hands their messages to the owner's callbacks in process context. The
 * protocol itself is kt_chan.c's; this file only adapts it.
 */
#include <linux/err.h>
#include <linux/module.h>
#include <linux/slab.h>
#include <linux/string.h>

#include "kt_priv.h"

/* Delivers queued messages, then the end of the channel, to the owner. */
void kt_chan_work(struct work_struct *work)
{
	struct kt_chan *ch = container_of(work, struct kt_chan, work);
	const struct kt_chan_ops *ops;
	struct kt_msg *msg;
	int err;

	for (;;) {
		spin_lock(&ch->lock);
		ops = ch->ops;
		if (!ops) {
			spin_unlock(&ch->lock);
			break;
		}
		msg = list_first_entry_or_null(&ch->rxq, struct kt_msg, node);
		if (msg) {
			list_del(&msg->node);
			spin_unlock(&ch->lock);
			if (ops->recv)
				ops->recv(ch, msg->data, msg->len);
			kt_chan_consumed(ch, kt_msg_cost(msg->len));
			kt_msg_free(ch->kd, msg);
			continue;
		}
		if (kt_ch_ended(ch->state) && !ch->closed_notified) {
			ch->closed_notified = true;
			err = ch->err;
			spin_unlock(&ch->lock);
			if (ops->closed)
				ops->closed(ch, err);
			continue;
		}
		spin_unlock(&ch->lock);
		break;
	}
	kt_chan_put(ch);
}

/**
 * kt_open() - open a channel to a host service
 * @name: service name (1..63 bytes of UTF-8, no control characters)
 * @ops: callbacks for the channel; @ops->owner is pinned until it is freed
 * @priv: the owner's pointer, returned by kt_chan_priv()
 *
 * Sends OPEN and sleeps (interruptibly) until the host accepts or refuses.
 *
 * Context: process context, may sleep.
 * Return: the open channel, or an ERR_PTR: -EINVAL (bad name), -ENODEV (no
 * device), -ENOENT/-EACCES/-ECONNREFUSED/... (refused by the host),
 * -EMFILE (too many channels), -EINTR, -ENOMEM, -ECONNRESET.
 */
struct kt_chan *kt_open(const char *name, const struct kt_chan_ops *ops,
			void *priv)
{
	struct kt_dev *kd;
	struct kt_chan *ch;
	int err;

	if (!ops || kt_check_name(name, strnlen(name, KT_NAME_MAX + 1)))
		return ERR_PTR(-EINVAL);
	kd = kt_dev_get_active();
	if (!kd)
		return ERR_PTR(-ENODEV);
	ch = kt_chan_new(kd, name);
	kt_dev_put(kd);
	if (!ch)
		return ERR_PTR(-ENOMEM);
	if (!try_module_get(ops->owner)) {
		kt_chan_put(ch);
		return ERR_PTR(-ENODEV);
	}
	ch->owner = ops->owner;
	ch->priv = priv;
	ch->kernel = true;

	err = kt_chan_connect(ch, false);
	if (err) {
		kt_chan_put(ch);
		return ERR_PTR(err);
	}
	/* Callbacks start now; anything that arrived meanwhile is queued. */
	spin_lock(&ch->lock);
	WRITE_ONCE(ch->ops, ops);	/* kt_chan_notify() reads it unlocked */
	spin_unlock(&ch->lock);
	kt_chan_notify(ch);
	return ch;
}
EXPORT_SYMBOL_GPL(kt_open);

/**
 * kt_send() - send one message on a channel
 * @ch: a channel from kt_open() or a service's accept
 * @data: the message
 * @len: its length, at most kt_chan_max_msg_size()
 * @flags: 0 to wait for credit, or KT_SEND_NONBLOCK
 *
 * The message is copied; it is sent whole and in order, and the peer
 * receives it as one message. Waiting for credit ends when credit arrives,
 * the channel ends, or kt_close() is called.
 *
 * Context: process context, may sleep (also with KT_SEND_NONBLOCK: the
 * copy is allocated with GFP_KERNEL). May be called from the channel's own
 * callbacks.
 * Return: 0, -EMSGSIZE (nothing sent), -EAGAIN (KT_SEND_NONBLOCK, no
 * credit), -EPIPE (closed), -ECONNRESET (transport reset), -ENOTCONN,
 * -ENOMEM, -EINTR.
 */
int kt_send(struct kt_chan *ch, const void *data, size_t len,
	    unsigned int flags)
{
	struct kt_txbuf *txb;
	int err;

	if (len > ch->kd->max_msg_size)
		return -EMSGSIZE;
	txb = kt_txbuf_alloc(ch->kd, len, GFP_KERNEL);
	if (!txb)
		return -ENOMEM;
	memcpy(txb->data, data, len);
	err = kt_chan_send(ch, txb, flags & KT_SEND_NONBLOCK);
	if (err) {
		kt_txbuf_free(txb);
		if (err == -ERESTARTSYS)
			err = -EINTR;
	}
	return err;
}
EXPORT_SYMBOL_GPL(kt_send);

/**
 * kt_close() - close a channel and release it
 * @ch: a channel from kt_open() or a service's accept
 *
 * Sends CLOSE if the channel is still open. When kt_close() returns, no
 * callback of @ch runs any more, unless it was called from one of @ch's
 * callbacks, which then return normally. A kt_send() sleeping on @ch
 * fails with -EPIPE. @ch must not be used afterwards.
 *
 * Context: process context, may sleep.
 */
void kt_close(struct kt_chan *ch)
{
	spin_lock(&ch->lock);
	if (!ch->ops) {
		/* Closed already (a second kt_close() is a caller bug). */
		spin_unlock(&ch->lock);
		return;
	}
	WRITE_ONCE(ch->ops, NULL);
	spin_unlock(&ch->lock);
	wake_up_interruptible(&ch->wq);

	/*
	 * CLOSE first: a kt_send() sleeping for credit (perhaps in a
	 * callback that cancel_work_sync() waits for) wakes with -EPIPE.
	 */
	kt_chan_shutdown(ch, KT_ERR_OK);
	if (current_work() != &ch->work && cancel_work_sync(&ch->work))
		kt_chan_put(ch);	/* the cancelled work's reference */
	kt_chan_put(ch);
}
EXPORT_SYMBOL_GPL(kt_close);

/**
 * kt_chan_priv() - the owner's pointer for a channel
 * @ch: the channel
 *
 * Return: the @priv given to kt_open(), the service's priv for an accepted
 * channel, or what kt_chan_set_priv() stored.
 */
void *kt_chan_priv(const struct kt_chan *ch)
{
	return READ_ONCE(ch->priv);
}
EXPORT_SYMBOL_GPL(kt_chan_priv);

/**
 * kt_chan_set_priv() - store the owner's pointer for a channel
 * @ch: the channel
 * @priv: any pointer
 */
void kt_chan_set_priv(struct kt_chan *ch, void *priv)
{
	WRITE_ONCE(ch->priv, priv);
}
EXPORT_SYMBOL_GPL(kt_chan_set_priv);

/**
 * kt_chan_id() - the channel's id on the wire (for logs)
 * @ch: the channel
 *
 * Return: the id; bit 31 is set for host-initiated channels.
 */
u32 kt_chan_id(const struct kt_chan *ch)
{
	return ch->id;
}
EXPORT_SYMBOL_GPL(kt_chan_id);

/**
 * kt_chan_max_msg_size() - the largest message kt_send() accepts on @ch
 * @ch: the channel
 *
 * Return: max_msg_size of the channel's device, in bytes.
 */
size_t kt_chan_max_msg_size(const struct kt_chan *ch)
{
	return ch->kd->max_msg_size;
}
EXPORT_SYMBOL_GPL(kt_chan_max_msg_size);

/**
 * kt_register_service() - serve host-initiated channels on a name
 * @name: service name; names starting "k." are reserved for the kernel
 * @ops: @ops->accept is called for each channel a host program opens;
 *	accepted channels use @ops->chan_ops
 * @priv: returned by kt_service_priv(), and the initial kt_chan_priv() of
 *	accepted channels
 *
 * Each accepted channel pins @ops->chan_ops->owner and must be released
 * with kt_close() (typically from its closed callback).
 *
 * Context: process context, may sleep.
 * Return: the service, or an ERR_PTR: -EINVAL, -EADDRINUSE (someone
 * listens on @name already), -ENOMEM.
 */
struct kt_service *kt_register_service(const char *name,
				       const struct kt_service_ops *ops,
				       void *priv)
{
	struct kt_service *svc;
	int err;

	if (!ops || !ops->accept || !ops->chan_ops ||
	    kt_check_name(name, strnlen(name, KT_NAME_MAX + 1)))
		return ERR_PTR(-EINVAL);
	svc = kzalloc(sizeof(*svc), GFP_KERNEL);
	if (!svc)
		return ERR_PTR(-ENOMEM);
	strscpy(svc->name, name, sizeof(svc->name));
	svc->ops = ops;
	svc->priv = priv;
	spin_lock_init(&svc->lock);
	INIT_LIST_HEAD(&svc->chans);
	init_waitqueue_head(&svc->wq);

	err = kt_service_add(svc);
	if (err) {
		kfree(svc);
		return ERR_PTR(err);
	}
	return svc;
}
EXPORT_SYMBOL_GPL(kt_register_service);

/**
 * kt_unregister_service() - stop serving a name
 * @svc: from kt_register_service()
 *
 * New channels to the name are refused (ENOENT) from now on; channels
 * already accepted stay open until their owner calls kt_close(). @svc is
 * freed; an accept callback is not running when this returns.
 *
 * Context: process context, may sleep; not from an accept callback.
 */
void kt_unregister_service(struct kt_service *svc)
{
	kt_service_del(svc);
	kfree(svc);
}
EXPORT_SYMBOL_GPL(kt_unregister_service);

/**
 * kt_service_priv() - the @priv given to kt_register_service()
 * @svc: the service
 *
 * Return: the pointer.
 */
void *kt_service_priv(const struct kt_service *svc)
{
	return svc->priv;
}
EXPORT_SYMBOL_GPL(kt_service_priv);
