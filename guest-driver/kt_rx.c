// SPDX-License-Identifier: GPL-2.0
/*
 * kerntransport receive path: validation and dispatch of every buffer the
 * device hands back on the rx and event queues.
 *
 * The device is not trusted (SPEC section 8): each length, type, flag,
 * channel id, sequence number, credit claim and service name is checked
 * here before anything acts on it; a bad message is counted, logged at a
 * rate-limited level and dropped, and the channel it names is closed where
 * the SPEC says so. Fragmented DATA is reassembled here (SPEC section 4),
 * per queue pair. A channel's message that arrives on another pair than
 * the channel's is dropped and counted without touching the channel
 * (SPEC 1.4). Runs only from a pair's rx work item, under its rx_mutex,
 * or from the event work item, under kd->rx_sem held for writing.
 */
#include <linux/slab.h>
#include <linux/string.h>
#include <linux/virtio.h>

#include "kt_priv.h"

/*
 * A DATA message that arrives whole in one rx buffer is handed to the
 * reader in that buffer, not copied, if it is at least this long and
 * fills at least a quarter of the buffer: a queued message then never
 * pins more than four times the credit it is charged (SPEC 5 counts its
 * length, not the buffer's). Shorter ones are copied into an allocation
 * of their own size, so a 64 B message never pins a 64 KiB buffer.
 */
#define KT_RX_COPYBREAK		1024U

/* A decoded header: host-endian copies of the untrusted fields. */
struct kt_rx_hdr {
	u32 id;
	u16 type;
	u16 flags;
	u32 len;
	u32 msg_len;
	u32 seq;
	u32 buf_alloc;
	u32 fwd_cnt;
	u32 arg;
};

static void kt_decode(const struct kt_hdr *h, struct kt_rx_hdr *r)
{
	r->id = le32_to_cpu(h->channel);
	r->type = le16_to_cpu(h->type);
	r->flags = le16_to_cpu(h->flags);
	r->len = le32_to_cpu(h->len);
	r->msg_len = le32_to_cpu(h->msg_len);
	r->seq = le32_to_cpu(h->seq);
	r->buf_alloc = le32_to_cpu(h->buf_alloc);
	r->fwd_cnt = le32_to_cpu(h->fwd_cnt);
	r->arg = le32_to_cpu(h->arg);
}

/* Counts a malformed message, per device and (if known) per channel. */
static void kt_malformed_count(struct kt_dev *kd, struct kt_chan *ch)
{
	atomic64_inc(&kd->stats.malformed);
	if (ch) {
		spin_lock(&ch->lock);
		ch->stats.malformed++;
		spin_unlock(&ch->lock);
	}
}

/* Counts and logs (rate-limited) a malformed message. */
static void kt_malformed(struct kt_dev *kd, struct kt_chan *ch,
			 const char *what, u32 id, u16 type)
{
	kt_malformed_count(kd, ch);
	dev_warn_ratelimited(&kd->vdev->dev,
			     "malformed input dropped: %s (channel %#x type %u)\n",
			     what, id, type);
}

/*
 * Counts and logs (rate-limited) a message the channel's state machine
 * refused (kt_chan_transition() returned false for it in state @s).
 */
static void kt_illegal(struct kt_dev *kd, struct kt_chan *ch,
		       enum kt_ch_state s, u32 id, u16 type)
{
	kt_malformed_count(kd, ch);
	dev_warn_ratelimited(&kd->vdev->dev,
			     "malformed input dropped: type %u illegal for channel %#x in state %s\n",
			     type, id, kt_ch_state_name(s));
}

/* Counts, drops and closes the channel with @wire_err. */
static void kt_violation(struct kt_dev *kd, struct kt_chan *ch,
			 const char *what, u32 id, u16 type, u32 wire_err)
{
	kt_malformed(kd, ch, what, id, type);
	if (ch)
		kt_chan_shutdown(ch, wire_err);
}

void kt_rx_bad_len(struct kt_pair *p, u32 used)
{
	struct kt_dev *kd = p->kd;

	kt_reasm_abort(p, true);
	atomic64_inc(&kd->stats.rx_len_clamped);
	kt_malformed(kd, NULL, "used length beyond buffer", 0, 0);
	dev_dbg_ratelimited(&kd->vdev->dev, "used length %u > %u\n", used,
			    kd->rx_buf_size);
}

/*
 * Records the peer's credit from a header for the channel; true if it
 * changed (then wake writers once the lock is dropped). ch->lock held.
 */
static bool kt_peer_credit_locked(struct kt_chan *ch,
				  const struct kt_rx_hdr *r)
{
	bool changed = ch->peer_buf_alloc != r->buf_alloc ||
		       ch->peer_fwd_cnt != r->fwd_cnt;

	ch->peer_buf_alloc = r->buf_alloc;
	ch->peer_fwd_cnt = r->fwd_cnt;
	return changed;
}

/* Records the peer's credit from any header for the channel. */
static void kt_peer_credit(struct kt_chan *ch, const struct kt_rx_hdr *r)
{
	bool changed;

	spin_lock(&ch->lock);
	changed = kt_peer_credit_locked(ch, r);
	spin_unlock(&ch->lock);
	if (changed)
		wake_up_interruptible(&ch->wq);
}

/**
 * kt_rx_notify_flush() - wake the readers of the messages just delivered
 * @p: the pair (its rx_mutex, or rx_sem for writing, held)
 *
 * Called at the end of each rx run: a reader woken per message would, on
 * a busy CPU, preempt the rx work once per message.
 */
void kt_rx_notify_flush(struct kt_pair *p)
{
	struct kt_chan *ch, *tmp;

	list_for_each_entry_safe(ch, tmp, &p->rx_notify, notify_node) {
		list_del(&ch->notify_node);
		ch->notify_queued = false;
		kt_chan_notify(ch);
		kt_chan_put(ch);
	}
}

/* Queues a complete message for the reader; discards if it went away. */
static void kt_deliver(struct kt_pair *p, struct kt_chan *ch,
		       struct kt_msg *msg)
{
	struct kt_dev *kd = p->kd;
	/* Once on rxq and unlocked, a reader may free @msg at any time. */
	u32 len = msg->len;
	bool keep;

	spin_lock(&ch->lock);
	keep = ch->state == KT_CH_OPEN;
	if (keep) {
		list_add_tail(&msg->node, &ch->rxq);
		ch->stats.rx_msgs++;
		ch->stats.rx_bytes += len;
	}
	spin_unlock(&ch->lock);

	if (!keep) {
		atomic64_inc(&kd->stats.rx_discarded);
		kt_msg_free(kd, msg);
		return;
	}
	atomic64_inc(&kd->stats.rx_msgs);
	atomic64_add(len, &kd->stats.rx_bytes);
	if (!ch->notify_queued) {
		/* Woken by kt_rx_notify_flush() at the end of this run. */
		ch->notify_queued = true;
		kref_get(&ch->ref);
		list_add_tail(&ch->notify_node, &p->rx_notify);
	}
}

/* A message of @len bytes to copy into (data = buf), or NULL. */
static struct kt_msg *kt_msg_alloc(u32 len)
{
	struct kt_msg *msg;

	msg = kvmalloc(struct_size(msg, buf, len), GFP_KERNEL);
	if (msg) {
		msg->data = msg->buf;
		msg->len = len;
		msg->rxbuf = false;
		msg->nbufs = 0;
	}
	return msg;
}

/*
 * A chained message of @msg_len bytes (see struct kt_msg) whose first
 * buffer is @buf, holding @len payload bytes, with room for as many
 * buffers as the message needs when the device fills them, plus one. Only
 * for messages too large for one buffer, so the buffers pinned stay below
 * three times the credit charged; NULL if it cannot be had.
 */
static struct kt_msg *kt_msg_chain_start(struct kt_pair *p, u32 msg_len,
					 void *buf, u32 len)
{
	u32 room = p->kd->rx_buf_size - KT_HDR_SIZE;
	unsigned int slots = DIV_ROUND_UP(msg_len, room) + 1;
	struct kt_msg *msg;

	if (slots > U16_MAX)
		return NULL;
	msg = kvmalloc(struct_size(msg, buf, slots * sizeof(void *)),
		       GFP_KERNEL);
	if (!msg)
		return NULL;
	msg->data = NULL;
	msg->len = msg_len;
	msg->rxbuf = false;
	msg->nbufs = 1;
	*(u32 *)buf = len;	/* over the decoded header */
	kt_msg_bufs(msg)[0] = buf;
	p->reasm.slots = slots;
	return msg;
}

/*
 * Turns the chained message being reassembled into a copied one (the
 * device sent more, shorter fragments than room was made for). Returns
 * false if there is no memory (the chain is freed either way).
 */
static bool kt_msg_chain_flatten(struct kt_pair *p)
{
	struct kt_reasm *re = &p->reasm;
	struct kt_msg *chain = re->msg, *msg;
	unsigned int i;
	u32 off = 0, n;
	void *b;

	msg = kt_msg_alloc(chain->len);
	for (i = 0; msg && i < chain->nbufs; i++) {
		b = kt_msg_bufs(chain)[i];
		n = kt_msg_buf_len(b);
		memcpy(msg->data + off, (u8 *)b + KT_HDR_SIZE, n);
		off += n;
	}
	kt_msg_free(p->kd, chain);
	re->msg = msg;
	return msg;
}

/**
 * kt_reasm_abort() - drop a pair's partly reassembled message
 * @p: the pair (its rx_mutex, or rx_sem for writing, held)
 * @broken: true if the fragment sequence broke (count it and close the
 *	channel with KT_ERR_PROTO); false when the device is going away.
 */
void kt_reasm_abort(struct kt_pair *p, bool broken)
{
	struct kt_dev *kd = p->kd;
	struct kt_reasm *r = &p->reasm;
	struct kt_chan *ch = r->ch;

	if (!ch)
		return;
	if (r->msg)
		kt_msg_free(kd, r->msg);
	r->msg = NULL;
	r->ch = NULL;
	if (broken)
		kt_violation(kd, ch, "fragment sequence broken", ch->id,
			     KT_MSG_DATA, KT_ERR_PROTO);
	kt_chan_put(ch);
}

/*
 * A continuation fragment of the message being reassembled, in @buf.
 * Returns true if the (chained) message kept @buf.
 */
static bool kt_rx_fragment(struct kt_pair *p, const struct kt_rx_hdr *r,
			   void *buf)
{
	const u8 *payload = (const u8 *)buf + KT_HDR_SIZE;
	struct kt_dev *kd = p->kd;
	struct kt_reasm *re = &p->reasm;
	bool more = r->flags & KT_HDR_F_MORE;
	bool kept = false;
	struct kt_chan *ch;
	struct kt_msg *msg;

	if (r->seq != re->seq || r->msg_len != re->msg_len ||
	    r->buf_alloc != re->buf_alloc || r->fwd_cnt != re->fwd_cnt ||
	    r->len > re->msg_len - re->got ||
	    (!more && re->got + r->len != re->msg_len)) {
		kt_reasm_abort(p, true);
		return false;
	}
	if (re->msg && re->msg->nbufs && re->msg->nbufs >= re->slots &&
	    !kt_msg_chain_flatten(p)) {
		/* Credit was granted: never drop it silently. */
		dev_warn_ratelimited(&kd->vdev->dev,
				     "channel %#x: no memory for a %u byte message\n",
				     re->ch->id, re->msg_len);
		kt_chan_shutdown(re->ch, KT_ERR_NOMEM);
	}
	if (re->msg && re->msg->nbufs) {
		*(u32 *)buf = r->len;	/* over the decoded header */
		kt_msg_bufs(re->msg)[re->msg->nbufs++] = buf;
		kept = true;
	} else if (re->msg) {
		memcpy(re->msg->data + re->got, payload, r->len);
	}
	re->got += r->len;
	if (more)
		return kept;

	ch = re->ch;
	msg = re->msg;
	re->ch = NULL;
	re->msg = NULL;
	if (msg)
		kt_deliver(p, ch, msg);
	else
		atomic64_inc(&kd->stats.rx_discarded);
	kt_chan_put(ch);
	return kept;
}

/*
 * Starts reassembly of a fragmented message. With @msg NULL the remaining
 * fragments are consumed and discarded (the channel is closing or the
 * message was refused), so they are not mistaken for new messages.
 */
static void kt_reasm_start(struct kt_pair *p, struct kt_chan *ch,
			   struct kt_msg *msg, const struct kt_rx_hdr *r)
{
	struct kt_reasm *re = &p->reasm;

	re->ch = ch;			/* the caller's reference moves here */
	re->msg = msg;
	re->seq = r->seq;
	re->msg_len = r->msg_len;
	re->got = r->len;
	re->buf_alloc = r->buf_alloc;
	re->fwd_cnt = r->fwd_cnt;
}

/*
 * DATA or CREDIT_* for a channel we do not have: counted, and answered with
 * CLOSE KT_ERR_CONNRESET (SPEC 6, 8) on the pair it came on, so a device
 * that still thinks the channel is open (e.g. it opened it just before a
 * transport reset made us forget it) closes its end instead of waiting
 * forever. One answer per run of messages for the same id; the replies are
 * bounded (kt_tx_queue_reply).
 */
static void kt_rx_unknown(struct kt_pair *p, const struct kt_rx_hdr *r,
			  const char *what)
{
	kt_malformed(p->kd, NULL, what, r->id, r->type);
	if (r->id == KT_CHAN_TRANSPORT || r->id == p->unknown_answered)
		return;
	p->unknown_answered = r->id;
	kt_tx_queue_reply(p, r->id, KT_MSG_CLOSE, KT_ERR_CONNRESET);
}

/*
 * The listed channel a message of pair @p names, with a reference held;
 * NULL if there is none, or (*@foreign set) if it lives on another pair:
 * such a message is malformed (SPEC 1.4), counted here and dropped by the
 * caller, and the channel is not touched (not even its counters).
 */
static struct kt_chan *kt_rx_chan(struct kt_pair *p,
				  const struct kt_rx_hdr *r, bool *foreign)
{
	struct kt_dev *kd = p->kd;
	struct kt_chan *ch;

	*foreign = false;
	ch = kt_chan_lookup(kd, r->id);
	if (!ch || ch->pair == p)
		return ch;
	kt_chan_put(ch);
	*foreign = true;
	atomic64_inc(&kd->stats.wrong_pair);
	kt_malformed(kd, NULL, "message on another pair than its channel's",
		     r->id, r->type);
	return NULL;
}

/*
 * The first (or only) buffer of a DATA message, @buf (header decoded into
 * @r). Returns true if the message kept @buf (see KT_RX_COPYBREAK).
 */
static bool kt_rx_data(struct kt_pair *p, const struct kt_rx_hdr *r,
		       void *buf)
{
	struct kt_dev *kd = p->kd;
	const u8 *payload = (const u8 *)buf + KT_HDR_SIZE;
	bool more = r->flags & KT_HDR_F_MORE;
	struct kt_msg *msg = NULL;
	bool credit_changed;
	bool kept = false;
	const char *bad = NULL;
	u32 wire_err = KT_ERR_PROTO;
	bool discard = false, illegal = false;
	enum kt_ch_state state;
	struct kt_chan *ch;
	bool foreign;
	u32 cost;

	ch = kt_rx_chan(p, r, &foreign);
	if (!ch) {
		if (!foreign)
			kt_rx_unknown(p, r, "DATA for unknown channel");
		return false;
	}
	if (more ? r->len > r->msg_len : r->len != r->msg_len) {
		kt_violation(kd, ch, "DATA len/msg_len mismatch", r->id,
			     r->type, KT_ERR_PROTO);
		kt_chan_put(ch);
		return false;
	}
	cost = kt_msg_cost(r->msg_len);
	spin_lock(&ch->lock);
	credit_changed = kt_peer_credit_locked(ch, r);
	state = ch->state;
	if (!kt_chan_transition(ch, KT_EV_RX_DATA, 0)) {
		/* Before OPEN_OK, or after the peer's CLOSE: dropped. */
		illegal = true;
	} else if (state != KT_CH_OPEN) {
		/* The reader has gone: discard (SPEC 3.2), not an error. */
		discard = true;
	} else if (r->msg_len > kd->max_msg_size) {
		bad = "DATA larger than max_msg_size";
		wire_err = KT_ERR_MSGSIZE;
	} else if (r->seq != ch->rx_seq) {
		bad = "DATA out of sequence";
	} else if ((u64)(u32)(ch->rx_cnt - ch->last_fwd_sent) + cost >
		   ch->buf_alloc) {
		/*
		 * Granted = what the device can have seen: the fwd_cnt of
		 * the last header we put in the ring. fwd_cnt >= that, so
		 * this also bounds what we hold to buf_alloc.
		 */
		bad = "DATA beyond granted credit";
	} else {
		ch->rx_seq++;
		ch->rx_cnt += cost;
	}
	spin_unlock(&ch->lock);
	if (credit_changed && wq_has_sleeper(&ch->wq))
		wake_up_interruptible(&ch->wq);

	if (illegal) {
		kt_illegal(kd, ch, state, r->id, r->type);
		discard = true;
	} else if (bad) {
		kt_violation(kd, ch, bad, r->id, r->type, wire_err);
		discard = true;
	}

	if (!discard && !more && r->len >= KT_RX_COPYBREAK &&
	    r->len >= kd->rx_buf_size / 4) {
		/* Over the decoded header: nothing reads it any more. */
		BUILD_BUG_ON(offsetof(struct kt_msg, buf) > KT_HDR_SIZE);
		msg = buf;
		msg->data = (u8 *)buf + KT_HDR_SIZE;
		msg->len = r->len;
		msg->rxbuf = true;
		msg->nbufs = 0;
		kept = true;
	} else if (!discard) {
		/*
		 * Too large for one buffer, for a user-space reader (kernel
		 * users get one flat buffer): kept as the chain it comes in.
		 */
		if (more && !ch->kernel &&
		    kd->rx_buf_size >= KT_RX_COPYBREAK &&
		    r->msg_len > kd->rx_buf_size - KT_HDR_SIZE)
			msg = kt_msg_chain_start(p, r->msg_len, buf, r->len);
		kept = msg;
		if (!kept) {
			msg = kt_msg_alloc(r->msg_len);
			if (msg)
				memcpy(msg->data, payload, r->len);
		}
		if (!msg) {
			/* Credit was granted: never drop it silently. */
			dev_warn_ratelimited(&kd->vdev->dev,
					     "channel %#x: no memory for a %u byte message\n",
					     r->id, r->msg_len);
			kt_chan_shutdown(ch, KT_ERR_NOMEM);
		}
	}

	if (more) {
		kt_reasm_start(p, ch, msg, r);
		return kept;
	}
	if (msg)
		kt_deliver(p, ch, msg);
	else if (!bad && !illegal)
		atomic64_inc(&kd->stats.rx_discarded);
	kt_chan_put(ch);
	return kept;
}

/*
 * OPEN from the device: a host program connects to a guest service. The
 * channel lives on the pair the OPEN came on; so do the answers.
 */
static void kt_rx_open(struct kt_pair *p, const struct kt_rx_hdr *r,
		       const u8 *payload)
{
	struct kt_dev *kd = p->kd;
	char name[KT_NAME_MAX + 1];
	struct kt_service *svc;
	struct kt_chan *ch;
	u32 refuse = 0;
	int err;

	if (!(r->id & KT_CHAN_DEVICE_BIT)) {
		kt_malformed(kd, NULL, "OPEN with a driver-side id", r->id,
			     r->type);
		kt_tx_queue_reply(p, r->id, KT_MSG_OPEN_ERR, KT_ERR_EXIST);
		return;
	}
	if (!kd->guest_listen) {
		kt_malformed(kd, NULL, "OPEN without KT_F_GUEST_LISTEN", r->id,
			     r->type);
		kt_tx_queue_reply(p, r->id, KT_MSG_OPEN_ERR, KT_ERR_NOENT);
		return;
	}
	if (kt_check_name(payload, r->len)) {
		kt_malformed(kd, NULL, "OPEN with an invalid name", r->id,
			     r->type);
		kt_tx_queue_reply(p, r->id, KT_MSG_OPEN_ERR, KT_ERR_INVAL);
		return;
	}
	memcpy(name, payload, r->len);
	name[r->len] = '\0';

	ch = kt_chan_lookup(kd, r->id);
	if (ch) {
		/* In use on any pair (one id space); another's is not touched. */
		kt_malformed(kd, ch->pair == p ? ch : NULL,
			     "OPEN for an id in use", r->id, r->type);
		kt_chan_put(ch);
		kt_tx_queue_reply(p, r->id, KT_MSG_OPEN_ERR, KT_ERR_EXIST);
		return;
	}

	mutex_lock(&kt_services_lock);
	svc = kt_service_find(name);
	if (!svc) {
		refuse = KT_ERR_NOENT;
		goto out_unlock;
	}
	if (!svc->ops && READ_ONCE(svc->backlog) >= KT_ACCEPT_BACKLOG) {
		refuse = KT_ERR_NOMEM;
		goto out_unlock;
	}
	ch = kt_chan_new(kd, name);
	if (!ch) {
		refuse = KT_ERR_NOMEM;
		goto out_unlock;
	}
	ch->kernel = svc->ops;
	ch->pair = p;
	ch->peer_buf_alloc = r->buf_alloc;
	ch->peer_fwd_cnt = r->fwd_cnt;
	err = kt_chan_insert_remote(ch, r->id);
	if (err) {
		refuse = err == -EMFILE ? KT_ERR_MFILE : KT_ERR_NOMEM;
		goto out_put;
	}

	if (svc->ops) {
		/* Kernel service: stays CONNECTING (no sends) until OPEN_OK. */
		if (!try_module_get(svc->ops->chan_ops->owner)) {
			refuse = KT_ERR_NOENT;
			goto out_unlist;
		}
		ch->owner = svc->ops->chan_ops->owner;
		ch->priv = svc->priv;
		err = svc->ops->accept(svc, ch);
		if (err) {
			refuse = err < 0 ? -err : KT_ERR_CONNREFUSED;
			goto out_unlist;
		}
	}

	if (kt_tx_queue_ctrl(ch, KT_MSG_OPEN_OK, 0, NULL, 0)) {
		refuse = KT_ERR_NOMEM;
		goto out_unlist;
	}
	spin_lock(&ch->lock);
	/* Not if a reset came meanwhile: the channel stays failed. */
	kt_chan_transition(ch, KT_EV_ACCEPT, 0);
	if (svc->ops)
		WRITE_ONCE(ch->ops, svc->ops->chan_ops);
	spin_unlock(&ch->lock);

	if (!svc->ops) {
		/* User listener: the accept queue owns our reference. */
		spin_lock(&svc->lock);
		list_add_tail(&ch->svc_node, &svc->chans);
		WRITE_ONCE(svc->backlog, svc->backlog + 1);
		spin_unlock(&svc->lock);
		wake_up_interruptible(&svc->wq);
	}
	/* Kernel service: the owner's reference is the one from kt_chan_new. */
	mutex_unlock(&kt_services_lock);
	atomic64_inc(&kd->stats.opens_in);
	dev_dbg_ratelimited(&kd->vdev->dev, "channel %#x: host opened \"%s\"\n",
			    r->id, name);
	return;

out_unlist:
	kt_chan_unlist(ch);
out_put:
	kt_chan_put(ch);
out_unlock:
	mutex_unlock(&kt_services_lock);
	dev_dbg_ratelimited(&kd->vdev->dev, "channel %#x: refused \"%s\": %u\n",
			    r->id, name, refuse);
	atomic64_inc(&kd->stats.opens_refused);
	kt_tx_queue_reply(p, r->id, KT_MSG_OPEN_ERR, refuse);
}

/* OPEN_OK / OPEN_ERR: the answer to a channel we opened. */
static void kt_rx_open_answer(struct kt_pair *p, const struct kt_rx_hdr *r)
{
	bool ok = r->type == KT_MSG_OPEN_OK;
	struct kt_dev *kd = p->kd;
	enum kt_ch_state old;
	struct kt_chan *ch;
	bool legal, foreign;

	ch = kt_rx_chan(p, r, &foreign);
	if (foreign)
		return;
	if (!ch) {
		kt_malformed(kd, NULL, "open answer for unknown channel",
			     r->id, r->type);
		return;
	}
	spin_lock(&ch->lock);
	old = ch->state;
	legal = kt_chan_transition(ch, ok ? KT_EV_RX_OPEN_OK :
					    KT_EV_RX_OPEN_ERR,
				   kt_errno_from_wire(r->arg));
	if (legal && ok) {
		ch->peer_buf_alloc = r->buf_alloc;
		ch->peer_fwd_cnt = r->fwd_cnt;
	}
	spin_unlock(&ch->lock);

	if (!legal) {
		kt_illegal(kd, ch, old, r->id, r->type);
	} else if (ok) {
		atomic64_inc(&kd->stats.opens_out);
		if (old == KT_CH_ABANDONED)
			kt_chan_shutdown(ch, KT_ERR_OK);
	} else {
		/* No channel came to be: nothing to close on either side. */
		kt_chan_table_drop(ch);
	}
	wake_up_interruptible(&ch->wq);
	kt_chan_put(ch);
}

static void kt_rx_close(struct kt_pair *p, const struct kt_rx_hdr *r)
{
	struct kt_dev *kd = p->kd;
	enum kt_ch_state old, new;
	struct kt_chan *ch;
	bool foreign;

	ch = kt_rx_chan(p, r, &foreign);
	if (foreign)
		return;
	if (!ch) {
		/* Late CLOSE for a channel already gone: counted, harmless. */
		atomic64_inc(&kd->stats.rx_discarded);
		return;
	}
	spin_lock(&ch->lock);
	old = ch->state;
	if (!kt_chan_transition(ch, KT_EV_RX_CLOSE,
				r->arg ? kt_errno_from_wire(r->arg) : 0)) {
		spin_unlock(&ch->lock);
		kt_illegal(kd, ch, old, r->id, r->type);
		goto out;
	}
	new = ch->state;
	spin_unlock(&ch->lock);

	if (new == KT_CH_CLOSE_RCVD) {
		kt_chan_shutdown(ch, KT_ERR_OK);	/* our answer; notifies */
	} else {
		kt_chan_table_drop(ch);		/* CLOSE_SENT -> CLOSED */
		kt_chan_notify(ch);
	}
out:
	kt_chan_put(ch);
}

static void kt_rx_credit(struct kt_pair *p, const struct kt_rx_hdr *r)
{
	bool reply = false, foreign;
	struct kt_chan *ch;

	ch = kt_rx_chan(p, r, &foreign);
	if (!ch) {
		if (!foreign)
			kt_rx_unknown(p, r,
				      "credit message for unknown channel");
		return;
	}
	kt_peer_credit(ch, r);
	if (r->type == KT_MSG_CREDIT_REQUEST) {
		spin_lock(&ch->lock);
		reply = ch->state == KT_CH_OPEN;
		spin_unlock(&ch->lock);
	}
	if (reply)
		kt_tx_queue_ctrl(ch, KT_MSG_CREDIT_UPDATE, 0, NULL, 0);
	kt_chan_put(ch);
}

/*
 * Reports a bad message whose channel may be known; closes it if asked.
 * A channel of another pair is left alone (counted only as malformed).
 */
static void kt_rx_bad(struct kt_pair *p, const struct kt_rx_hdr *r,
		      const char *what, bool close)
{
	struct kt_dev *kd = p->kd;
	struct kt_chan *ch = NULL;

	if (r->id != KT_CHAN_TRANSPORT)
		ch = kt_chan_lookup(kd, r->id);
	if (ch && ch->pair != p) {
		kt_chan_put(ch);
		ch = NULL;
		close = false;
	}
	if (close)
		kt_violation(kd, ch, what, r->id, r->type, KT_ERR_PROTO);
	else
		kt_malformed(kd, ch, what, r->id, r->type);
	if (ch)
		kt_chan_put(ch);
}

/**
 * kt_rx_buf() - handle one used rx buffer
 * @p: the pair whose rx queue it came from (its rx_mutex held)
 * @buf: the buffer, rx_buf_size bytes
 * @used: the used length the device reported, at most rx_buf_size
 *
 * Return: true if a message kept @buf (the caller posts another), false
 * if @buf may be posted again.
 */
bool kt_rx_buf(struct kt_pair *p, void *buf, u32 used)
{
	const u8 *payload = (const u8 *)buf + KT_HDR_SIZE;
	struct kt_rx_hdr r;

	if (used < KT_HDR_SIZE) {
		kt_reasm_abort(p, true);
		kt_malformed(p->kd, NULL, "buffer shorter than a header", 0, 0);
		return false;
	}
	kt_decode(buf, &r);

	if (p->reasm.ch) {
		if (r.type == KT_MSG_DATA && r.id == p->reasm.ch->id &&
		    r.flags == (r.flags & KT_HDR_F_KNOWN) &&
		    r.len == used - KT_HDR_SIZE)
			return kt_rx_fragment(p, &r, buf);
		/* Anything else between fragments breaks the message. */
		kt_reasm_abort(p, true);
	}

	if (r.flags & ~KT_HDR_F_KNOWN) {
		kt_rx_bad(p, &r, "unknown flags", false);
		return false;
	}
	if (r.type < KT_MSG_OPEN || r.type > KT_MSG_RESET) {
		kt_rx_bad(p, &r, "unknown type", false);
		return false;
	}
	if (r.type == KT_MSG_RESET) {
		kt_rx_bad(p, &r, "RESET outside the event queue", false);
		return false;
	}
	if (r.len != used - KT_HDR_SIZE) {
		kt_rx_bad(p, &r, "len does not match the used length", true);
		return false;
	}
	if (r.type != KT_MSG_DATA) {
		if (r.flags) {
			kt_rx_bad(p, &r, "MORE on a non-DATA message", false);
			return false;
		}
		if (r.msg_len != r.len) {
			kt_rx_bad(p, &r, "msg_len differs from len", false);
			return false;
		}
		if (r.len && r.type != KT_MSG_OPEN) {
			kt_rx_bad(p, &r, "payload on a type without one",
				  false);
			return false;
		}
	}

	switch (r.type) {
	case KT_MSG_OPEN:
		kt_rx_open(p, &r, payload);
		break;
	case KT_MSG_OPEN_OK:
	case KT_MSG_OPEN_ERR:
		kt_rx_open_answer(p, &r);
		break;
	case KT_MSG_DATA:
		return kt_rx_data(p, &r, buf);
	case KT_MSG_CLOSE:
		kt_rx_close(p, &r);
		break;
	case KT_MSG_CREDIT_UPDATE:
	case KT_MSG_CREDIT_REQUEST:
		kt_rx_credit(p, &r);
		break;
	}
	return false;
}

/**
 * kt_rx_event_is_reset() - is this used event buffer a valid RESET?
 * @hdr: the buffer (one header)
 * @used: the used length the device reported
 *
 * Return: true if kt_rx_event() would reset the transport for it.
 */
bool kt_rx_event_is_reset(const struct kt_hdr *hdr, u32 used)
{
	struct kt_rx_hdr r;

	if (used < KT_HDR_SIZE || used > sizeof(*hdr))
		return false;
	kt_decode(hdr, &r);
	return r.type == KT_MSG_RESET && r.id == KT_CHAN_TRANSPORT && !r.len &&
	       !r.flags && !r.msg_len;
}

/**
 * kt_rx_event() - handle one used event buffer
 * @kd: the device (rx_sem held for writing)
 * @hdr: the buffer (one header)
 * @used: the used length the device reported
 *
 * A RESET ends the channels of every pair (SPEC 1.4, 6).
 */
void kt_rx_event(struct kt_dev *kd, const struct kt_hdr *hdr, u32 used)
{
	struct kt_rx_hdr r;
	unsigned int i;

	if (used < KT_HDR_SIZE || used > sizeof(*hdr)) {
		kt_malformed(kd, NULL, "event of wrong size", 0, 0);
		return;
	}
	if (!kt_rx_event_is_reset(hdr, used)) {
		kt_decode(hdr, &r);
		kt_malformed(kd, NULL, "unknown event", r.id, r.type);
		return;
	}
	atomic64_inc(&kd->stats.resets);
	dev_info_ratelimited(&kd->vdev->dev,
			     "transport reset: failing open channels\n");
	for (i = 0; i < kd->npairs; i++)
		kt_reasm_abort(&kd->pairs[i], false);
	kt_chans_reset(kd, false);
	/* The new device knows no listeners either. */
	kt_listen_announce(kd);
}
