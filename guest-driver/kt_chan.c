// SPDX-License-Identifier: GPL-2.0
/*
 * kerntransport channels: the channel object and its reference counting,
 * the per-device id table (SPEC section 3), opening and closing, sending
 * with credit flow control and returning credit as the reader consumes
 * (SPEC section 5), transport reset (SPEC section 6), service-name checks,
 * and the registry of names listened on (user-space listeners and kernel
 * services). Shared by the char device (kt_cdev.c) and the in-kernel API
 * (kt_api.c); parsing device input is kt_rx.c's job. The channel's life
 * cycle is the state machine in kt_chan_transition(): no other code sets
 * ch->state.
 */
#include <linux/module.h>
#include <linux/sched/signal.h>
#include <linux/slab.h>
#include <linux/string.h>
#include <linux/virtio.h>

#include "kt_priv.h"

/*
 * Guards kt_services and every listener's membership in it, and
 * kt_listen_dev: the live device that is told about listeners
 * (KT_MSG_LISTEN/UNLISTEN), set from kt_vqs_start() to kt_vqs_stop(). A
 * listener is announced under the lock, so announcements reach the device
 * in the order listeners come and go, and a re-announce after activation
 * neither misses one nor sends one that is gone.
 */
DEFINE_MUTEX(kt_services_lock);
static LIST_HEAD(kt_services);
static struct kt_dev *kt_listen_dev;

static void kt_chan_free(struct kref *ref)
{
	struct kt_chan *ch = container_of(ref, struct kt_chan, ref);
	struct kt_msg *msg, *tmp;

	/* Messages waiting to be sent hold the channel. */
	WARN_ON_ONCE(!list_empty(&ch->tx_node));
	list_for_each_entry_safe(msg, tmp, &ch->rxq, node)
		kt_msg_free(ch->kd, msg);
	module_put(ch->owner);
	kt_dev_put(ch->kd);
	kfree(ch);
}

void kt_chan_put(struct kt_chan *ch)
{
	kref_put(&ch->ref, kt_chan_free);
}

static const char *const kt_ch_state_names[] = {
	[KT_CH_NEW] = "new",
	[KT_CH_CONNECTING] = "connecting",
	[KT_CH_ABANDONED] = "abandoned",
	[KT_CH_OPEN] = "open",
	[KT_CH_CLOSE_SENT] = "close-sent",
	[KT_CH_CLOSE_RCVD] = "close-received",
	[KT_CH_CLOSED] = "closed",
	[KT_CH_RESET] = "reset",
};

/**
 * kt_ch_state_name() - a channel state's name, for log lines
 * @s: the state
 *
 * Return: a static string.
 */
const char *kt_ch_state_name(enum kt_ch_state s)
{
	if ((unsigned int)s >= ARRAY_SIZE(kt_ch_state_names))
		return "?";
	return kt_ch_state_names[s];
}

/* The state @ev moves a channel in state @s to, or -1 if illegal there. */
static int kt_ch_next(enum kt_ch_state s, enum kt_ch_event ev)
{
	switch (ev) {
	case KT_EV_LIST:
		return s == KT_CH_NEW ? KT_CH_CONNECTING : -1;
	case KT_EV_UNLIST:
		return kt_ch_listed(s) ? KT_CH_CLOSED : -1;
	case KT_EV_ABANDON:
		return s == KT_CH_CONNECTING || s == KT_CH_ABANDONED ?
		       KT_CH_ABANDONED : -1;
	case KT_EV_ACCEPT:
		return s == KT_CH_CONNECTING ? KT_CH_OPEN : -1;
	case KT_EV_CLOSE:
		if (s == KT_CH_CLOSE_RCVD)
			return KT_CH_CLOSED;
		return s == KT_CH_CONNECTING || s == KT_CH_ABANDONED ||
		       s == KT_CH_OPEN ? KT_CH_CLOSE_SENT : -1;
	case KT_EV_RESET:
		return kt_ch_listed(s) ? KT_CH_RESET : -1;
	case KT_EV_RX_OPEN_OK:
		return s == KT_CH_CONNECTING || s == KT_CH_ABANDONED ?
		       KT_CH_OPEN : -1;
	case KT_EV_RX_OPEN_ERR:
		return s == KT_CH_CONNECTING || s == KT_CH_ABANDONED ?
		       KT_CH_CLOSED : -1;
	case KT_EV_RX_DATA:
		/* Delivered when OPEN; discarded when we closed or reset. */
		return s == KT_CH_OPEN || s == KT_CH_CLOSE_SENT ||
		       s == KT_CH_RESET ? (int)s : -1;
	case KT_EV_RX_CLOSE:
		if (s == KT_CH_CLOSE_SENT)
			return KT_CH_CLOSED;
		return s == KT_CH_CONNECTING || s == KT_CH_ABANDONED ||
		       s == KT_CH_OPEN ? KT_CH_CLOSE_RCVD : -1;
	}
	return -1;
}

/**
 * kt_chan_transition() - apply one life-cycle event to a channel
 * @ch: the channel (ch->lock held)
 * @ev: what happened
 * @err: the errno it carries (KT_EV_RX_OPEN_ERR, KT_EV_RX_CLOSE and
 *	KT_EV_CLOSE: the reason, 0 for a normal close); else ignored
 *
 * The one place ch->state changes. Also records how the channel ended
 * (ch->err, and ch->open_err if it never opened) and keeps kd->nclosing,
 * the number of channels in KT_CH_CLOSE_SENT, bounded by kd->max_closing:
 * a KT_EV_CLOSE beyond the bound goes to KT_CH_CLOSED at once (forgotten).
 * An illegal event changes nothing; the caller counts it as malformed if
 * the device caused it. A caller that moves a channel out of a listed
 * state (kt_ch_listed()) removes it from the id table.
 *
 * Return: true if @ev was legal in the channel's state.
 */
bool kt_chan_transition(struct kt_chan *ch, enum kt_ch_event ev, int err)
{
	enum kt_ch_state s = ch->state;
	struct kt_dev *kd = ch->kd;
	int next;

	lockdep_assert_held(&ch->lock);
	next = kt_ch_next(s, ev);
	if (next < 0)
		return false;

	switch (ev) {
	case KT_EV_RX_OPEN_ERR:
		ch->err = err ? err : EPROTO;
		break;
	case KT_EV_RX_CLOSE:
		if (s == KT_CH_CLOSE_SENT)
			break;		/* our reason stays */
		ch->err = !err && kt_ch_connecting(s) ? ECONNREFUSED : err;
		break;
	case KT_EV_CLOSE:
		if (s != KT_CH_CLOSE_RCVD)
			ch->err = err;	/* the peer's reason stays */
		break;
	case KT_EV_RESET:
		if (!kt_ch_ended(s) || !ch->err)
			ch->err = ECONNRESET;
		break;
	default:
		break;
	}
	if (kt_ch_connecting(s) && !kt_ch_connecting(next) &&
	    next != KT_CH_OPEN)
		ch->open_err = ch->err ? ch->err : ECONNREFUSED;

	if (s == KT_CH_CLOSE_SENT && next != KT_CH_CLOSE_SENT)
		atomic_dec(&kd->nclosing);
	if (s != KT_CH_CLOSE_SENT && next == KT_CH_CLOSE_SENT &&
	    atomic_inc_return(&kd->nclosing) > kd->max_closing) {
		/* The peer leaves too many half closed: do not wait. */
		atomic_dec(&kd->nclosing);
		next = KT_CH_CLOSED;
	}
	WRITE_ONCE(ch->state, next);
	return true;
}

/**
 * kt_chan_table_drop() - remove a channel that left the listed states
 * @ch: the channel; the caller's kt_chan_transition() moved it out of a
 *	listed state (kt_ch_listed()), so nobody else drops it
 *
 * Removes the id table's entry and drops the table's reference; the id may
 * be reused afterwards.
 */
void kt_chan_table_drop(struct kt_chan *ch)
{
	struct kt_dev *kd = ch->kd;

	xa_cmpxchg(&kd->chans, ch->id, ch, NULL, 0);
	atomic_dec(&kd->nchan);
	kt_chan_put(ch);
}

/**
 * kt_chan_new() - allocate a channel endpoint on a device
 * @kd: the device (a reference is taken)
 * @name: service name, already checked
 *
 * Return: the channel in state KT_CH_NEW with one reference (the owner's),
 * not yet in the id table; NULL if out of memory.
 */
struct kt_chan *kt_chan_new(struct kt_dev *kd, const char *name)
{
	struct kt_chan *ch;

	ch = kzalloc(sizeof(*ch), GFP_KERNEL);
	if (!ch)
		return NULL;
	kref_init(&ch->ref);
	kref_get(&kd->ref);
	ch->kd = kd;
	spin_lock_init(&ch->lock);
	init_waitqueue_head(&ch->wq);
	mutex_init(&ch->rd_mutex);
	INIT_LIST_HEAD(&ch->rxq);
	INIT_LIST_HEAD(&ch->svc_node);
	INIT_LIST_HEAD(&ch->tx_pending);
	INIT_LIST_HEAD(&ch->tx_node);
	INIT_WORK(&ch->work, kt_chan_work);
	strscpy(ch->name, name, sizeof(ch->name));
	ch->state = KT_CH_NEW;
	ch->buf_alloc = kd->buf_alloc;
	ch->pair = &kd->pairs[0];	/* the opener picks another */
	return ch;
}

/**
 * kt_chan_lookup() - find a listed channel by id
 * @kd: the device
 * @id: channel id from the device (untrusted)
 *
 * Return: the channel with a reference held, or NULL.
 */
struct kt_chan *kt_chan_lookup(struct kt_dev *kd, u32 id)
{
	struct kt_chan *ch;

	xa_lock(&kd->chans);
	ch = xa_load(&kd->chans, id);
	if (ch && !kref_get_unless_zero(&ch->ref))
		ch = NULL;
	xa_unlock(&kd->chans);
	return ch;
}

static int kt_chan_reserve(struct kt_chan *ch)
{
	struct kt_dev *kd = ch->kd;

	if (atomic_inc_return(&kd->nchan) > kd->max_channels) {
		atomic_dec(&kd->nchan);
		return -EMFILE;
	}
	kref_get(&ch->ref);		/* the table's reference */
	spin_lock(&ch->lock);
	kt_chan_transition(ch, KT_EV_LIST, 0);
	spin_unlock(&ch->lock);
	return 0;
}

static void kt_chan_unreserve(struct kt_chan *ch)
{
	spin_lock(&ch->lock);
	kt_chan_transition(ch, KT_EV_UNLIST, 0);
	spin_unlock(&ch->lock);
	atomic_dec(&ch->kd->nchan);
	kt_chan_put(ch);
}

/**
 * kt_chan_insert_local() - give a channel we open an id and list it
 * @ch: the new channel
 *
 * Ids are handed out in increasing order from a random start and wrap,
 * skipping ids in use (SPEC section 3). The id is reserved first (a
 * reserved entry looks up as NULL), and the channel is stored only once
 * ch->id is set, so no message from the device can reach a channel that
 * is not fully initialised.
 *
 * Return: 0, -EMFILE (max_channels reached or no id free) or -ENOMEM.
 */
int kt_chan_insert_local(struct kt_chan *ch)
{
	struct kt_dev *kd = ch->kd;
	u32 id;
	int err;

	err = kt_chan_reserve(ch);
	if (err)
		return err;
	err = xa_alloc_cyclic(&kd->chans, &id, NULL,
			      XA_LIMIT(1, KT_CHAN_DEVICE_BIT - 1),
			      &kd->next_id, GFP_KERNEL);
	if (err < 0) {
		kt_chan_unreserve(ch);
		return err == -EBUSY ? -EMFILE : err;
	}
	ch->id = id;
	/* Storing over the reserved entry allocates nothing. */
	xa_lock(&kd->chans);
	err = xa_err(__xa_store(&kd->chans, id, ch, GFP_KERNEL));
	ch->gen = kd->chan_gen;
	xa_unlock(&kd->chans);
	if (err) {
		xa_release(&kd->chans, id);
		kt_chan_unreserve(ch);
		return err;
	}
	return 0;
}

/**
 * kt_chan_insert_remote() - list a channel the device opened
 * @ch: the new channel
 * @id: the device's id for it (bit 31 set, checked by the caller)
 *
 * Return: 0, -EMFILE, -EEXIST or -ENOMEM.
 */
int kt_chan_insert_remote(struct kt_chan *ch, u32 id)
{
	struct kt_dev *kd = ch->kd;
	int err;

	err = kt_chan_reserve(ch);
	if (err)
		return err;
	ch->id = id;
	/* If it allocates, __xa_insert() drops the lock but stores under it. */
	xa_lock(&kd->chans);
	err = __xa_insert(&kd->chans, id, ch, GFP_KERNEL);
	ch->gen = kd->chan_gen;
	xa_unlock(&kd->chans);
	if (err) {
		kt_chan_unreserve(ch);
		return err == -EBUSY ? -EEXIST : err;
	}
	return 0;
}

/**
 * kt_chan_unlist() - remove a channel from the id table
 * @ch: the channel
 *
 * Called when the open failed on our side or our CLOSE could not be
 * queued: the channel moves to KT_CH_CLOSED and the id may be reused.
 * Safe against a concurrent reset: whoever moves the channel out of a
 * listed state removes the entry and drops the table's reference.
 */
void kt_chan_unlist(struct kt_chan *ch)
{
	bool was;

	spin_lock(&ch->lock);
	was = kt_chan_transition(ch, KT_EV_UNLIST, 0);
	spin_unlock(&ch->lock);
	if (was)
		kt_chan_table_drop(ch);
}

/**
 * kt_chan_notify() - wake everyone waiting on a channel
 * @ch: the channel
 *
 * Wakes readers, writers and pollers (if any sleep: the common case of a
 * reader busy with earlier messages costs no wake-up); for a kernel
 * endpoint, schedules delivery to its callbacks. ch->ops is read without
 * the lock: kt_chan_work() checks it again under it.
 */
void kt_chan_notify(struct kt_chan *ch)
{
	if (wq_has_sleeper(&ch->wq))
		wake_up_interruptible(&ch->wq);
	if (READ_ONCE(ch->ops)) {
		kref_get(&ch->ref);	/* the work item's reference */
		if (!queue_work(kt_cb_wq, &ch->work))
			kt_chan_put(ch);
	}
}

/**
 * kt_chan_connect() - open a channel to a host service and wait
 * @ch: a new channel from kt_chan_new()
 * @nonblock: return -EINPROGRESS once OPEN is queued instead of waiting
 *
 * Sends OPEN on the pair of the calling CPU (SPEC 1.4: the channel lives
 * there) and sleeps interruptibly for OPEN_OK or OPEN_ERR. If a signal
 * arrives first, the channel is abandoned: a late OPEN_OK is answered with
 * CLOSE. With @nonblock the answer moves the channel to open or closed
 * (with the refusal in ch->err) and wakes ch->wq.
 *
 * Return: 0 when open, -EINPROGRESS, -EINTR, or the errno of the refusal
 * (-ENOENT, -EACCES, -ECONNREFUSED, ...), -EMFILE, -ECONNRESET.
 */
int kt_chan_connect(struct kt_chan *ch, bool nonblock)
{
	int err;

	ch->pair = kt_pair_local(ch->kd);
	err = kt_chan_insert_local(ch);
	if (err)
		return err;
	err = kt_tx_queue_ctrl(ch, KT_MSG_OPEN, 0, ch->name, strlen(ch->name));
	if (err) {
		kt_chan_unlist(ch);
		return err;
	}
	if (nonblock)
		return -EINPROGRESS;

	wait_event_interruptible(ch->wq,
				 !kt_ch_connecting(READ_ONCE(ch->state)));

	spin_lock(&ch->lock);
	if (kt_ch_connecting(ch->state)) {
		kt_chan_transition(ch, KT_EV_ABANDON, 0);
		err = -EINTR;
	} else {
		/* Refused, or reset/closed before OPEN_OK. Once opened, a
		 * later close is reported by read/write, not by connect.
		 */
		err = -ch->open_err;
	}
	spin_unlock(&ch->lock);
	return err;
}

/**
 * kt_chan_send() - send one DATA message, waiting for credit if allowed
 * @ch: the channel
 * @txb: the message; on success it belongs to the tx queue
 * @nonblock: return -EAGAIN instead of sleeping
 *
 * Return: 0, -EAGAIN, -ERESTARTSYS, -EPIPE, -ECONNRESET, -ENOTCONN.
 */
int kt_chan_send(struct kt_chan *ch, struct kt_txbuf *txb, bool nonblock)
{
	u32 cost = kt_msg_cost(txb->len);
	bool stalled = false;
	int err;

	for (;;) {
		err = kt_tx_queue_data(ch, txb, &stalled);
		if (err != -EAGAIN || nonblock)
			return err;
		if (wait_event_interruptible(ch->wq, kt_chan_can_send(ch, cost)))
			return -ERESTARTSYS;
	}
}

/*
 * Returns @cost credit bytes to the window; true if a CREDIT_UPDATE is due:
 * half the window was freed since the peer last heard our fwd_cnt (SPEC
 * section 5). ch->lock held.
 */
static bool kt_chan_credit_locked(struct kt_chan *ch, u32 cost)
{
	ch->fwd_cnt += cost;
	return ch->state == KT_CH_OPEN && !ch->credit_update_queued &&
	       ch->fwd_cnt - ch->last_fwd_sent >= ch->buf_alloc / 2;
}

/**
 * kt_chan_consumed() - the reader took a message: return its credit
 * @ch: the channel
 * @cost: the message's credit bytes
 */
void kt_chan_consumed(struct kt_chan *ch, u32 cost)
{
	bool update;

	spin_lock(&ch->lock);
	update = kt_chan_credit_locked(ch, cost);
	spin_unlock(&ch->lock);
	if (update)
		kt_tx_queue_ctrl(ch, KT_MSG_CREDIT_UPDATE, 0, NULL, 0);
}

/**
 * kt_chan_dequeue() - a reader is done with the first queued message
 * @ch: the channel (the caller holds rd_mutex)
 * @msg: that message; the caller frees it afterwards
 *
 * Takes it off the queue and returns its credit in one go.
 */
void kt_chan_dequeue(struct kt_chan *ch, struct kt_msg *msg)
{
	bool update;

	spin_lock(&ch->lock);
	list_del(&msg->node);
	update = kt_chan_credit_locked(ch, kt_msg_cost(msg->len));
	spin_unlock(&ch->lock);
	if (update)
		kt_tx_queue_ctrl(ch, KT_MSG_CREDIT_UPDATE, 0, NULL, 0);
}

/**
 * kt_chan_shutdown() - close our side of a channel
 * @ch: the channel
 * @wire_err: KT_ERR_OK for a normal close, else the reason sent in CLOSE
 *	(the local reader then sees that errno after its queued data)
 *
 * Sends CLOSE once (KT_EV_CLOSE); the channel leaves the id table when the
 * peer's CLOSE has also been seen. A channel still opening is abandoned by
 * a normal close (its OPEN_OK is answered with CLOSE) and failed by an
 * error. Does nothing more on a channel that already sent CLOSE or ended.
 */
void kt_chan_shutdown(struct kt_chan *ch, u32 wire_err)
{
	enum kt_ch_state old, new;
	bool legal;

	spin_lock(&ch->lock);
	old = ch->state;
	if (kt_ch_connecting(old) && wire_err == KT_ERR_OK) {
		/* The answer will be closed when it arrives. */
		kt_chan_transition(ch, KT_EV_ABANDON, 0);
		spin_unlock(&ch->lock);
		return;
	}
	legal = kt_chan_transition(ch, KT_EV_CLOSE, wire_err);
	new = ch->state;
	spin_unlock(&ch->lock);

	if (!legal)
		goto out;
	if (kt_tx_queue_ctrl(ch, KT_MSG_CLOSE, wire_err, NULL, 0) &&
	    kt_ch_listed(new)) {
		/* Not sent (no memory, device gone): nothing to wait for. */
		kt_chan_unlist(ch);
	} else if (!kt_ch_listed(new)) {
		if (old != KT_CH_CLOSE_RCVD) {
			/*
			 * Beyond max_closing: stop waiting for the peer's
			 * CLOSE (a late one is discarded).
			 */
			atomic64_inc(&ch->kd->stats.malformed);
			dev_warn_ratelimited(&ch->kd->vdev->dev,
					     "channel %#x: too many channels wait for the peer's CLOSE, forgotten\n",
					     ch->id);
		}
		kt_chan_table_drop(ch);
	}
out:
	kt_chan_notify(ch);
}

/**
 * kt_chan_release() - the endpoint's owner is done with the channel
 * @ch: the channel (the caller still drops its own reference afterwards)
 */
void kt_chan_release(struct kt_chan *ch)
{
	struct kt_msg *msg, *tmp;
	LIST_HEAD(gone);

	/* Nobody reads any more: free what was queued now, not when the
	 * peer's CLOSE comes (it may never come).
	 */
	spin_lock(&ch->lock);
	list_splice_init(&ch->rxq, &gone);
	ch->fwd_cnt = ch->rx_cnt;
	spin_unlock(&ch->lock);
	list_for_each_entry_safe(msg, tmp, &gone, node)
		kt_msg_free(ch->kd, msg);
	kt_chan_shutdown(ch, KT_ERR_OK);
}

/**
 * kt_chans_reset() - fail the channels of a device with ECONNRESET
 * @kd: the device
 * @all: every channel (the device goes away or restarts), not only those
 *	listed before this call (a RESET from the device)
 *
 * SPEC section 6: open, opening and accepted-but-waiting channels fail;
 * ids, sequence numbers and credit are forgotten; messages still waiting
 * for ring room are dropped. Readers get the data already received first.
 * Each failed channel we had not closed yet is then announced with CLOSE
 * KT_ERR_CONNRESET (at most KT_REPLY_PENDING_MAX of them): the new device
 * ignores ids it never saw, and closes a channel it opened just before the
 * RESET that we handled first (the rx and event queues are not ordered).
 * Every pair's channels: each CLOSE goes on its channel's pair.
 *
 * Without @all, channels listed after this call starts are left alone:
 * such a channel, even one opened by a reader this very walk woke,
 * sends its OPEN to the new device and keeps its messages. Channels are
 * listed and the generation moves on under xa_lock, so each channel is
 * on one side of the line.
 */
void kt_chans_reset(struct kt_dev *kd, bool all)
{
	unsigned int i, nclose = 0;
	unsigned long id = 0, gen;
	struct kt_chan *ch;
	bool was, announce;
	struct kt_close_id {
		u32 id;
		struct kt_pair *pair;
	} *close_ids;

	close_ids = kmalloc_array(KT_REPLY_PENDING_MAX, sizeof(*close_ids),
				  GFP_KERNEL);
	xa_lock(&kd->chans);
	gen = ++kd->chan_gen;
	xa_unlock(&kd->chans);

	for (;; id++) {
		/* Listed channels hold a reference while under xa_lock. */
		xa_lock(&kd->chans);
		for (;; id++) {
			ch = xa_find(&kd->chans, &id, ULONG_MAX, XA_PRESENT);
			if (!ch || all || ch->gen != gen)
				break;
		}
		if (ch)
			kref_get(&ch->ref);
		xa_unlock(&kd->chans);
		if (!ch)
			break;

		spin_lock(&ch->lock);
		announce = ch->state == KT_CH_CONNECTING ||
			   ch->state == KT_CH_ABANDONED ||
			   ch->state == KT_CH_OPEN;
		was = kt_chan_transition(ch, KT_EV_RESET, 0);
		spin_unlock(&ch->lock);
		if (was)
			kt_chan_table_drop(ch);
		if (was && announce && close_ids &&
		    nclose < KT_REPLY_PENDING_MAX) {
			close_ids[nclose].id = (u32)id;
			close_ids[nclose++].pair = ch->pair;
		}
		kt_chan_notify(ch);
		kt_chan_put(ch);
	}
	kt_tx_purge(kd, all ? 0 : gen);
	/* Removal or recovery: no device to tell (and no drop to count). */
	for (i = 0; i < nclose; i++)
		if (kt_pair_tx_live(close_ids[i].pair))
			kt_tx_queue_reply(close_ids[i].pair, close_ids[i].id,
					  KT_MSG_CLOSE, KT_ERR_CONNRESET);
	kfree(close_ids);
}

/**
 * kt_errno_from_wire() - map an error code from the device to an errno
 * @arg: the header's arg field
 *
 * Return: the positive errno; unknown codes become EPROTO (SPEC 7).
 */
int kt_errno_from_wire(u32 arg)
{
	switch (arg) {
	case KT_ERR_NOENT:
	case KT_ERR_NOMEM:
	case KT_ERR_ACCES:
	case KT_ERR_EXIST:
	case KT_ERR_INVAL:
	case KT_ERR_MFILE:
	case KT_ERR_PROTO:
	case KT_ERR_MSGSIZE:
	case KT_ERR_CONNRESET:
	case KT_ERR_CONNREFUSED:
		return arg;
	default:
		return KT_ERR_PROTO;
	}
}

/**
 * kt_check_name() - validate a service name (SPEC section 2.1)
 * @name: the bytes (not necessarily NUL-terminated)
 * @len: their number
 *
 * Return: 0 if 1..KT_NAME_MAX bytes of UTF-8 without NUL or ASCII control
 * characters, else -EINVAL.
 */
int kt_check_name(const char *name, size_t len)
{
	const u8 *s = (const u8 *)name;
	size_t i = 0, n, j;
	u32 cp;

	if (len < 1 || len > KT_NAME_MAX)
		return -EINVAL;
	while (i < len) {
		u8 c = s[i];

		if (c < 0x80) {
			if (c < 0x20 || c == 0x7f)
				return -EINVAL;
			i++;
			continue;
		}
		if (c >= 0xc2 && c <= 0xdf)
			n = 1;
		else if (c >= 0xe0 && c <= 0xef)
			n = 2;
		else if (c >= 0xf0 && c <= 0xf4)
			n = 3;
		else
			return -EINVAL;
		if (n >= len - i)
			return -EINVAL;
		cp = c & (0x3f >> n);
		for (j = 1; j <= n; j++) {
			if ((s[i + j] & 0xc0) != 0x80)
				return -EINVAL;
			cp = (cp << 6) | (s[i + j] & 0x3f);
		}
		if ((n == 2 && cp < 0x800) ||
		    (cp >= 0xd800 && cp <= 0xdfff) ||
		    (n == 3 && (cp < 0x10000 || cp > 0x10ffff)))
			return -EINVAL;
		i += n + 1;
	}
	return 0;
}

/**
 * kt_service_find() - look up who listens on a name
 * @name: NUL-terminated name
 *
 * Context: kt_services_lock held.
 * Return: the service or NULL.
 */
struct kt_service *kt_service_find(const char *name)
{
	struct kt_service *svc;

	lockdep_assert_held(&kt_services_lock);
	list_for_each_entry(svc, &kt_services, node)
		if (!strcmp(svc->name, name))
			return svc;
	return NULL;
}

/**
 * kt_service_add() - start listening on svc->name
 * @svc: an initialised service
 *
 * Return: 0 or -EADDRINUSE if someone already listens on the name.
 */
int kt_service_add(struct kt_service *svc)
{
	int err = 0;

	mutex_lock(&kt_services_lock);
	if (kt_service_find(svc->name)) {
		err = -EADDRINUSE;
	} else {
		list_add_tail(&svc->node, &kt_services);
		/* A full queue drops it (counted); listening goes on. */
		if (kt_listen_dev)
			kt_tx_queue_listen(kt_listen_dev, KT_MSG_LISTEN,
					   svc->name);
	}
	mutex_unlock(&kt_services_lock);
	return err;
}

/**
 * kt_service_del() - stop listening; no new channel reaches @svc afterwards
 * @svc: a service added with kt_service_add()
 */
void kt_service_del(struct kt_service *svc)
{
	mutex_lock(&kt_services_lock);
	list_del(&svc->node);
	if (kt_listen_dev)
		kt_tx_queue_listen(kt_listen_dev, KT_MSG_UNLISTEN, svc->name);
	mutex_unlock(&kt_services_lock);
}

/**
 * kt_listen_announce() - tell a (re)activated device every listener
 * @kd: the device, queues live
 *
 * After probe, restore, recovery or a transport RESET the device knows no
 * listeners (SPEC 2.2): each current one is announced with KT_MSG_LISTEN,
 * and later changes go to @kd as they happen.
 */
void kt_listen_announce(struct kt_dev *kd)
{
	struct kt_service *svc;

	mutex_lock(&kt_services_lock);
	kt_listen_dev = kd;
	list_for_each_entry(svc, &kt_services, node)
		kt_tx_queue_listen(kd, KT_MSG_LISTEN, svc->name);
	mutex_unlock(&kt_services_lock);
}

/**
 * kt_listen_forget() - stop telling a stopping device about listeners
 * @kd: the device
 */
void kt_listen_forget(struct kt_dev *kd)
{
	mutex_lock(&kt_services_lock);
	if (kt_listen_dev == kd)
		kt_listen_dev = NULL;
	mutex_unlock(&kt_services_lock);
}
