// SPDX-License-Identifier: GPL-2.0
/*
 * kerntransport virtqueues: setup and teardown of the event queue and of
 * the rx/tx queue pairs (SPEC 1.4: as many as the device offers, the CPUs
 * can use and the transport provides; one without KT_F_MULTIQUEUE),
 * rx/event buffer posting and refill (and the pool of rx buffers readers
 * hand back, kt_msg_free()), the disable-cb / drain / enable-cb loops run
 * from work items (one rx work per pair, so pairs are received in
 * parallel; one for the event queue), and each pair's tx path (pending
 * messages kept per channel and pushed into the ring as room appears, the
 * channels in turn, each held to a share of the ring while others send
 * too; completions reaped by the senders themselves, an interrupt armed
 * only for someone waiting).
 *
 * It moves buffers; it does not interpret them: every received buffer goes
 * to kt_rx.c, and the credit fields of outgoing headers are filled from the
 * channel at the moment a message enters the ring.
 */
#include <linux/error-injection.h>
#include <linux/jiffies.h>
#include <linux/mm.h>
#include <linux/moduleparam.h>
#include <linux/slab.h>
#include <linux/virtio.h>
#include <linux/virtio_config.h>
#include <linux/virtio_ring.h>
#include <linux/vmalloc.h>

#include "kt_priv.h"

/* Keep at most this much memory posted as rx buffers. */
#define KT_RX_POSTED_BYTES	(4U << 20)
#define KT_RX_POSTED_MAX	256U
/* Kick the rx queue at least this often while draining a long burst. */
#define KT_RX_KICK_BATCH	32
/* rx/event buffers handled per run of the rx work item. */
#define KT_RX_BUDGET		64U
/* Retry posting rx buffers after an allocation failure. */
#define KT_RX_RETRY_DELAY	(HZ / 10)
/* Retry a tx add that failed for another reason than a full ring. */
#define KT_TX_RETRY_DELAY	(HZ / 10)
/* Reap-and-re-arm rounds on one tx path run before leaving it to tx_work. */
#define KT_TX_ARM_ROUNDS	4
/* Reap completions nobody waits for at the latest after this long. */
#define KT_TX_LAZY_DELAY	msecs_to_jiffies(20)
/* A tx ring is contended this long after the channel sending changed. */
#define KT_TX_CONTENDED		msecs_to_jiffies(20)
/* Bounds of tx_share, and the fewest ring entries a share leaves. */
#define KT_TX_SHARE_MAX		64U
#define KT_TX_SHARE_MIN_ENTRIES	8U

/*
 * While a tx ring is contended (another channel has messages in it or
 * waiting, or sent within KT_TX_CONTENDED), one channel's messages fill
 * at most 1/tx_share of it (at least KT_TX_SHARE_MIN_ENTRIES entries):
 * a message of another channel then waits behind at most that many of a
 * flooding channel's. A channel alone has the whole ring. 1: no share.
 */
static unsigned int tx_share = 8;

static int kt_tx_share_set(const char *val, const struct kernel_param *kp)
{
	unsigned int n;
	int err;

	err = kstrtouint(val, 0, &n);
	if (err)
		return err;
	if (n < 1 || n > KT_TX_SHARE_MAX)
		return -EINVAL;
	WRITE_ONCE(*(unsigned int *)kp->arg, n);
	return 0;
}

static const struct kernel_param_ops kt_tx_share_ops = {
	.set = kt_tx_share_set,
	.get = param_get_uint,
};

module_param_cb(tx_share, &kt_tx_share_ops, &tx_share, 0644);
MODULE_PARM_DESC(tx_share,
		 "While others send too, one channel fills at most 1/N of a tx ring (1..64, 1: no limit)");

static void kt_rx_work(struct work_struct *work);
static void kt_rx_retry_work(struct work_struct *work);
static void kt_tx_work(struct work_struct *work);
static void kt_tx_retry_work(struct work_struct *work);

/* The pair a queue of index @index (not the event queue) belongs to. */
static struct kt_pair *kt_vq_pair(struct kt_dev *kd, unsigned int index)
{
	return &kd->pairs[index <= KT_VQ_TX ? 0 : (index - 1) / 2];
}

/*
 * kt_wq is a per-CPU workqueue: the work runs on the CPU that took the
 * interrupt, so pairs whose interrupts go to different CPUs are received
 * in parallel.
 */
static void kt_rx_done(struct virtqueue *vq)
{
	struct kt_dev *kd = vq->vdev->priv;

	queue_work(kt_wq, &kt_vq_pair(kd, vq->index)->rx_work);
}

static void kt_ev_done(struct virtqueue *vq)
{
	struct kt_dev *kd = vq->vdev->priv;

	queue_work(kt_wq, &kd->ev_work);
}

/*
 * tx completions are reaped by senders; this interrupt comes only when the
 * ring is mostly consumed or a sender waits (kt_tx_arm_locked()). Turning
 * callbacks off needs no serialisation with the tx path; tx_work turns
 * them on again.
 */
static void kt_tx_done(struct virtqueue *vq)
{
	struct kt_dev *kd = vq->vdev->priv;

	virtqueue_disable_cb(vq);
	queue_work(kt_wq, &kt_vq_pair(kd, vq->index)->tx_work);
}

/*
 * Finds the event queue and the queues of @n pairs, in the SPEC's order.
 * The one place that knows virtio_find_vqs() changed in 6.11 (it takes
 * struct virtqueue_info[]); Kbuild defines KT_HAVE_VQ_INFO from the kernel
 * version being built against.
 */
static int kt_find_vqs_n(struct kt_dev *kd, unsigned int n)
{
	unsigned int i, total = KT_NUM_VQS_PAIRS(n);
	struct virtqueue *vqs[KT_NUM_VQS_PAIRS(KT_MAX_QUEUE_PAIRS)];
	int err;
#ifdef KT_HAVE_VQ_INFO
	struct virtqueue_info info[KT_NUM_VQS_PAIRS(KT_MAX_QUEUE_PAIRS)] = {};

	for (i = 0; i < n; i++) {
		info[KT_VQ_RX_PAIR(i)].name = "rx";
		info[KT_VQ_RX_PAIR(i)].callback = kt_rx_done;
		info[KT_VQ_TX_PAIR(i)].name = "tx";
		info[KT_VQ_TX_PAIR(i)].callback = kt_tx_done;
	}
	info[KT_VQ_EVENT].name = "event";
	info[KT_VQ_EVENT].callback = kt_ev_done;
	err = virtio_find_vqs(kd->vdev, total, vqs, info, NULL);
#else
	vq_callback_t *cbs[KT_NUM_VQS_PAIRS(KT_MAX_QUEUE_PAIRS)] = {};
	const char *names[KT_NUM_VQS_PAIRS(KT_MAX_QUEUE_PAIRS)] = {};

	for (i = 0; i < n; i++) {
		names[KT_VQ_RX_PAIR(i)] = "rx";
		cbs[KT_VQ_RX_PAIR(i)] = kt_rx_done;
		names[KT_VQ_TX_PAIR(i)] = "tx";
		cbs[KT_VQ_TX_PAIR(i)] = kt_tx_done;
	}
	names[KT_VQ_EVENT] = "event";
	cbs[KT_VQ_EVENT] = kt_ev_done;
	err = virtio_find_vqs(kd->vdev, total, vqs, cbs, names, NULL);
#endif
	if (err)
		return err;
	kd->ev_vq = vqs[KT_VQ_EVENT];
	for (i = 0; i < n; i++) {
		kd->pairs[i].rx_vq = vqs[KT_VQ_RX_PAIR(i)];
		kd->pairs[i].tx_vq = vqs[KT_VQ_TX_PAIR(i)];
	}
	WRITE_ONCE(kd->npairs, n);
	return 0;
}

/*
 * As many pairs as wanted (kd->max_pairs); if the transport has fewer
 * queues than that needs (SPEC 1.4: a VMM configured with fewer), one.
 * Pair k's interrupts are steered to CPU k where the transport can (its
 * channels are opened there): best effort, as virtio-net does.
 */
static int kt_find_vqs(struct kt_dev *kd)
{
	unsigned int i;
	int err;

	err = kt_find_vqs_n(kd, kd->max_pairs);
	if (err && kd->max_pairs > 1) {
		dev_info(&kd->vdev->dev,
			 "%u queue pairs not available (%d): using one\n",
			 kd->max_pairs, err);
		err = kt_find_vqs_n(kd, 1);
	}
	if (err)
		return err;
	for (i = 0; kd->npairs > 1 && i < kd->npairs; i++) {
		if (!cpu_online(i))
			continue;
		virtqueue_set_affinity(kd->pairs[i].rx_vq, cpumask_of(i));
		virtqueue_set_affinity(kd->pairs[i].tx_vq, cpumask_of(i));
	}
	return 0;
}

/**
 * kt_pair_init() - initialise a queue pair's state at probe
 * @kd: the device
 * @p: the pair
 * @index: its number
 */
void kt_pair_init(struct kt_dev *kd, struct kt_pair *p, unsigned int index)
{
	p->kd = kd;
	p->index = index;
	mutex_init(&p->rx_mutex);
	INIT_LIST_HEAD(&p->rx_notify);
	INIT_WORK(&p->rx_work, kt_rx_work);
	INIT_DELAYED_WORK(&p->rx_retry, kt_rx_retry_work);
	spin_lock_init(&p->tx_lock);
	INIT_LIST_HEAD(&p->tx_pending);
	INIT_LIST_HEAD(&p->tx_active);
	p->tx_switch = jiffies - KT_TX_CONTENDED - 1;
	INIT_WORK(&p->tx_work, kt_tx_work);
	INIT_DELAYED_WORK(&p->tx_retry, kt_tx_retry_work);
	atomic_set(&p->tx_waiters, 0);
}

/*
 * Spare rx buffers: those handed to readers inside a message (struct
 * kt_msg rxbuf) come back here when read, for kt_rx_fill() to post again
 * without allocating and zeroing. Any kerntransport device's pool.
 */
static DEFINE_SPINLOCK(kt_rx_pool_lock);

/*
 * rx buffers one pair keeps posted: KT_RX_POSTED_BYTES is shared by all
 * pairs, so the memory the device can make us pin does not grow with them.
 */
static unsigned int kt_rx_target(struct kt_pair *p)
{
	struct kt_dev *kd = p->kd;
	unsigned int n = KT_RX_POSTED_BYTES / kd->rx_buf_size / kd->npairs;

	n = clamp(n, 1U, KT_RX_POSTED_MAX);
	return min(n, virtqueue_get_vring_size(p->rx_vq));
}

static int kt_rx_post(struct kt_pair *p, void *buf)
{
	struct scatterlist sg;

	sg_init_one(&sg, buf, p->kd->rx_buf_size);
	return virtqueue_add_inbuf(p->rx_vq, &sg, 1, buf, GFP_KERNEL);
}

/* Returns an rx buffer a message held to the pool, or frees it. */
static void kt_rx_buf_put(struct kt_dev *kd, void *buf)
{
	struct list_head *spare = buf;

	spin_lock(&kt_rx_pool_lock);
	if (kd->rx_pool_open && kd->rx_pool_len < kd->rx_pool_max) {
		list_add(spare, &kd->rx_pool);
		kd->rx_pool_len++;
		spare = NULL;
	}
	spin_unlock(&kt_rx_pool_lock);
	kfree(spare);
}

/**
 * kt_msg_free() - free a received message
 * @kd: the device it came from
 * @msg: the message
 *
 * Its rx buffers go back to the device's pool while its queues are up (up
 * to what it keeps posted), else they are freed. They hold what the device
 * wrote and, over the header, our struct kt_msg or a chained buffer's
 * length: kt_rx_pool_take() clears that part before a buffer is posted
 * again.
 */
void kt_msg_free(struct kt_dev *kd, struct kt_msg *msg)
{
	unsigned int i;

	if (msg->rxbuf) {
		kt_rx_buf_put(kd, msg);
		return;
	}
	for (i = 0; i < msg->nbufs; i++)
		kt_rx_buf_put(kd, kt_msg_bufs(msg)[i]);
	kvfree(msg);
}

/* A spare rx buffer from the pool, its header area cleared; or NULL. */
static void *kt_rx_pool_take(struct kt_dev *kd)
{
	struct list_head *spare;

	spin_lock(&kt_rx_pool_lock);
	spare = list_empty(&kd->rx_pool) ? NULL : kd->rx_pool.next;
	if (spare) {
		list_del(spare);
		kd->rx_pool_len--;
	}
	spin_unlock(&kt_rx_pool_lock);
	if (spare)
		memset(spare, 0, KT_HDR_SIZE);
	return spare;
}

/* Opens (queues coming up) or closes and empties (going down) the pool. */
static void kt_rx_pool_set(struct kt_dev *kd, bool open)
{
	struct list_head *spare, *tmp;
	LIST_HEAD(gone);

	unsigned int i, max = 0;

	for (i = 0; open && i < kd->npairs; i++)
		max += kt_rx_target(&kd->pairs[i]);
	spin_lock(&kt_rx_pool_lock);
	if (open) {
		INIT_LIST_HEAD(&kd->rx_pool);
		kd->rx_pool_max = max;
	} else {
		list_splice_init(&kd->rx_pool, &gone);
	}
	kd->rx_pool_len = 0;
	kd->rx_pool_open = open;
	spin_unlock(&kt_rx_pool_lock);
	list_for_each_safe(spare, tmp, &gone)
		kfree(spare);
}

/*
 * A new rx buffer, zeroed. Not inlined, and open to fail_function fault
 * injection, so that tests can make refills fail (run.sh's refill
 * scenario, debug kernel only).
 */
static noinline void *kt_rx_buf_alloc(struct kt_dev *kd)
{
	return kzalloc(kd->rx_buf_size, GFP_KERNEL);
}
ALLOW_ERROR_INJECTION(kt_rx_buf_alloc, NULL);

/*
 * A buffer to post: a spare one, or a new one, zeroed, so that a device
 * lying about a used length can only ever show a reader bytes it wrote
 * itself, never stale kernel memory.
 */
static void *kt_rx_buf_get(struct kt_dev *kd)
{
	void *buf = kt_rx_pool_take(kd);

	return buf ?: kt_rx_buf_alloc(kd);
}

/*
 * Tops a pair's rx queue up to its target. Called with its rx_mutex (or
 * rx_sem for writing) held, or before the device is live.
 */
static void kt_rx_fill(struct kt_pair *p)
{
	unsigned int target = kt_rx_target(p);
	void *buf;

	while (p->rx_posted < target) {
		buf = kt_rx_buf_get(p->kd);
		if (!buf)
			break;
		if (kt_rx_post(p, buf)) {
			kfree(buf);
			break;
		}
		p->rx_posted++;
	}
}

static int kt_ev_post(struct kt_dev *kd, struct kt_hdr *hdr)
{
	struct scatterlist sg;

	sg_init_one(&sg, hdr, sizeof(*hdr));
	return virtqueue_add_inbuf(kd->ev_vq, &sg, 1, hdr, GFP_KERNEL);
}

/*
 * Gives a DATA message's credit back to its channel's own in-flight bound
 * (the device is done with it, or it never reached the ring).
 */
static void kt_tx_uncharge(struct kt_txbuf *txb)
{
	struct kt_chan *ch = txb->ch;

	if (!ch || !txb->cost)
		return;
	spin_lock(&ch->lock);
	ch->tx_inflight -= txb->cost;
	if (ch->tx_wait) {
		/* kt_txbufs_complete() wakes it; it asks again if need be. */
		ch->tx_wait = false;
		atomic_dec(&ch->pair->tx_waiters);
	}
	spin_unlock(&ch->lock);
	txb->cost = 0;
}

/*
 * Finishes messages the device is done with (or that never reach it):
 * wakes the senders of DATA waiting for their in-flight bound, once per
 * run of one channel's messages, drops the references and frees. No locks
 * held.
 */
static void kt_txbufs_complete(struct list_head *done)
{
	struct kt_chan *ch, *woken = NULL;
	struct kt_txbuf *txb, *tmp;

	list_for_each_entry_safe(txb, tmp, done, node) {
		list_del(&txb->node);
		ch = txb->ch;
		if (ch) {
			kt_tx_uncharge(txb);
			/* Every message on @done holds its channel: no reuse. */
			if (ch != woken &&
			    txb->hdr.type == cpu_to_le16(KT_MSG_DATA)) {
				woken = ch;
				if (wq_has_sleeper(&ch->wq))
					wake_up_interruptible(&ch->wq);
			}
			kt_chan_put(ch);
		}
		kt_txbuf_free(txb);
	}
}

/*
 * @txb, offered to the ring before, is back from the device (or detached):
 * its channel has one message fewer there. tx_lock held.
 */
static void kt_tx_left_ring_locked(struct kt_pair *p, struct kt_txbuf *txb)
{
	if (!txb->ch)
		return;
	txb->ch->tx_ring--;
	p->tx_ring_chans--;
}

static void kt_vqs_free_bufs(struct kt_dev *kd)
{
	struct kt_txbuf *txb;
	struct kt_pair *p;
	unsigned int i;
	LIST_HEAD(done);
	void *buf;

	for (i = 0; i < kd->npairs; i++) {
		p = &kd->pairs[i];
		while ((buf = virtqueue_detach_unused_buf(p->rx_vq)))
			kfree(buf);
		p->rx_posted = 0;
		spin_lock(&p->tx_lock);
		while ((txb = virtqueue_detach_unused_buf(p->tx_vq))) {
			kt_tx_left_ring_locked(p, txb);
			list_add_tail(&txb->node, &done);
		}
		spin_unlock(&p->tx_lock);
	}
	/* Event buffers belong to kd->ev_bufs. */
	while (virtqueue_detach_unused_buf(kd->ev_vq))
		;
	kt_txbufs_complete(&done);
}

/**
 * kt_vqs_start() - set up the queues and make the device live
 * @kd: the device
 *
 * Shared by probe and restore. Posts rx and event buffers, then sets
 * DRIVER_OK before the first kick.
 *
 * Return: 0 or a negative errno (nothing left allocated).
 */
int kt_vqs_start(struct kt_dev *kd)
{
	struct kt_pair *p;
	unsigned int i;
	int err;

	err = kt_find_vqs(kd);
	if (err)
		return err;
	WRITE_ONCE(kd->stopping, false);

	kt_rx_pool_set(kd, true);
	for (i = 0; i < kd->npairs; i++) {
		p = &kd->pairs[i];
		kt_rx_fill(p);
		if (!p->rx_posted) {
			err = -ENOMEM;
			goto err_bufs;
		}
	}
	for (i = 0; i < KT_EV_BUFS; i++) {
		err = kt_ev_post(kd, &kd->ev_bufs[i].hdr);
		if (err)
			goto err_bufs;
	}

	down_write(&kd->rx_sem);
	kd->rx_live = true;
	up_write(&kd->rx_sem);
	for (i = 0; i < kd->npairs; i++) {
		p = &kd->pairs[i];
		spin_lock(&p->tx_lock);
		p->tx_live = true;
		spin_unlock(&p->tx_lock);
	}

	virtio_device_ready(kd->vdev);
	virtqueue_kick(kd->ev_vq);
	queue_work(kt_wq, &kd->ev_work);
	for (i = 0; i < kd->npairs; i++) {
		virtqueue_kick(kd->pairs[i].rx_vq);
		/* The device may have used buffers before callbacks were on. */
		queue_work(kt_wq, &kd->pairs[i].rx_work);
	}
	kd->vqs_up = true;
	/* A (re)activated device knows no listeners: tell it them all. */
	kt_listen_announce(kd);
	return 0;

err_bufs:
	kt_vqs_free_bufs(kd);
	kt_rx_pool_set(kd, false);
	kd->vdev->config->del_vqs(kd->vdev);
	return err;
}

/**
 * kt_vqs_broken() - has the device broken a queue in use?
 * @kd: the device (device lock held)
 *
 * Return: true if the queues are up and the virtio core marked one of
 * them broken (not by kt_vqs_stop(), which stops them on purpose).
 */
bool kt_vqs_broken(struct kt_dev *kd)
{
	unsigned int i;

	if (!kd->vqs_up || READ_ONCE(kd->stopping))
		return false;
	if (virtqueue_is_broken(kd->ev_vq))
		return true;
	for (i = 0; i < kd->npairs; i++)
		if (virtqueue_is_broken(kd->pairs[i].rx_vq) ||
		    virtqueue_is_broken(kd->pairs[i].tx_vq))
			return true;
	return false;
}

/**
 * kt_vqs_stop() - stop the device and tear the queues down
 * @kd: the device
 *
 * Shared by remove and freeze. The queues are marked broken first, so no
 * callback queues work any more and a drain running now finds nothing
 * (however fast the device completes buffers); then the device is reset,
 * work is cancelled and the queues are deleted. Every channel fails with
 * ECONNRESET: the device loses its channel state when it is reset. Does
 * nothing if the queues are not up (a failed restore).
 */
void kt_vqs_stop(struct kt_dev *kd)
{
	struct kt_pair *p;
	unsigned int i;

	if (!kd->vqs_up)
		return;
	kd->vqs_up = false;

	WRITE_ONCE(kd->stopping, true);
	virtio_break_device(kd->vdev);
	virtio_synchronize_cbs(kd->vdev);

	down_write(&kd->rx_sem);
	kd->rx_live = false;
	up_write(&kd->rx_sem);
	for (i = 0; i < kd->npairs; i++) {
		p = &kd->pairs[i];
		spin_lock(&p->tx_lock);
		p->tx_live = false;
		spin_unlock(&p->tx_lock);
	}
	kt_listen_forget(kd);

	virtio_reset_device(kd->vdev);
	cancel_work_sync(&kd->ev_work);
	for (i = 0; i < kd->npairs; i++) {
		p = &kd->pairs[i];
		cancel_work_sync(&p->rx_work);
		cancel_delayed_work_sync(&p->rx_retry);
		cancel_work_sync(&p->tx_work);
		cancel_delayed_work_sync(&p->tx_retry);
	}

	down_write(&kd->rx_sem);
	for (i = 0; i < kd->npairs; i++)
		kt_reasm_abort(&kd->pairs[i], false);
	up_write(&kd->rx_sem);
	kt_chans_reset(kd, true);

	kt_vqs_free_bufs(kd);
	/* Messages still queued free their buffers when read or closed. */
	kt_rx_pool_set(kd, false);
	kd->vdev->config->del_vqs(kd->vdev);
}

/*
 * Handles at most @budget used rx buffers of pair @p, posting each again
 * (or, if a message kept it, another one in its place); returns how many
 * it took. A buffer goes back as it is: it holds only zeros or bytes the
 * device wrote (see kt_rx_buf_get()), so nothing needs clearing. The
 * pair's rx_mutex (or rx_sem for writing) held.
 */
static unsigned int kt_rx_take(struct kt_pair *p, unsigned int budget)
{
	struct virtqueue *vq = p->rx_vq;
	struct kt_dev *kd = p->kd;
	unsigned int used, n = 0, batch = 0;
	void *buf;

	while (n < budget && (buf = virtqueue_get_buf(vq, &used))) {
		n++;
		p->rx_posted--;
		if (used > kd->rx_buf_size)
			kt_rx_bad_len(p, used);
		else if (kt_rx_buf(p, buf, used))
			buf = kt_rx_buf_get(kd);
		/* No buffer: rx_retry tops the ring up later. */
		if (buf && kt_rx_post(p, buf))
			kfree(buf);
		else if (buf)
			p->rx_posted++;
		if (++batch >= KT_RX_KICK_BATCH) {
			virtqueue_kick(vq);
			cond_resched();
			batch = 0;
		}
	}
	return n;
}

static void kt_ev_repost(struct kt_dev *kd, struct kt_hdr *hdr)
{
	memset(hdr, 0, sizeof(*hdr));
	if (kt_ev_post(kd, hdr))
		dev_warn_ratelimited(&kd->vdev->dev, "event buffer lost\n");
}

/*
 * Returns true if the budget ran out with events still waiting. Before a
 * RESET takes effect, the rx buffers the device used before it are
 * handled on every pair (SPEC 6: data first): they are among the buffers
 * posted now. rx_sem held for writing: no pair's rx run is under way.
 */
static bool kt_ev_drain(struct kt_dev *kd)
{
	struct virtqueue *vq = kd->ev_vq;
	unsigned int used, n = 0, i;
	struct kt_hdr *hdr;
	bool posted = false, reset;
	struct kt_pair *p;

	do {
		virtqueue_disable_cb(vq);
		while ((hdr = virtqueue_get_buf(vq, &used))) {
			reset = kt_rx_event_is_reset(hdr, used);
			for (i = 0; reset && i < kd->npairs; i++) {
				p = &kd->pairs[i];
				kt_rx_take(p, p->rx_posted);
				virtqueue_kick(p->rx_vq);
			}
			kt_rx_event(kd, hdr, used);
			kt_ev_repost(kd, hdr);
			posted = true;
			if (++n >= KT_EV_BUFS) {
				virtqueue_kick(vq);
				return true;
			}
		}
	} while (!virtqueue_enable_cb(vq));
	if (posted)
		virtqueue_kick(vq);
	return false;
}

/* Returns true if the budget ran out with buffers still used. */
static bool kt_rx_drain(struct kt_pair *p)
{
	struct virtqueue *vq = p->rx_vq;
	unsigned int budget = KT_RX_BUDGET;

	do {
		virtqueue_disable_cb(vq);
		budget -= kt_rx_take(p, budget);
		if (!budget) {
			virtqueue_kick(vq);
			return true;
		}
		kt_rx_fill(p);
	} while (!virtqueue_enable_cb(vq));
	virtqueue_kick(vq);
	return false;
}

/*
 * One pair's rx run. The drain is budgeted: a device that completes
 * buffers as fast as we post them gets the work requeued (behind other
 * work) instead of one work item that never ends and holds the locks.
 * Pairs run in parallel (rx_sem for reading); the event queue excludes
 * them all.
 */
static void kt_rx_run(struct kt_pair *p)
{
	struct kt_dev *kd = p->kd;

	down_read(&kd->rx_sem);
	mutex_lock(&p->rx_mutex);
	if (kd->rx_live) {
		if (kt_rx_drain(p))
			queue_work(kt_wq, &p->rx_work);
		if (p->rx_posted < kt_rx_target(p))
			mod_delayed_work(kt_wq, &p->rx_retry,
					 KT_RX_RETRY_DELAY);
		if (virtqueue_is_broken(p->rx_vq))
			kt_vq_broken(kd);
		kt_rx_notify_flush(p);
	}
	mutex_unlock(&p->rx_mutex);
	up_read(&kd->rx_sem);
}

static void kt_rx_work(struct work_struct *work)
{
	kt_rx_run(container_of(work, struct kt_pair, rx_work));
}

/* A pair's rx refill failed earlier (no memory): try again. */
static void kt_rx_retry_work(struct work_struct *work)
{
	struct kt_pair *p = container_of(to_delayed_work(work),
					 struct kt_pair, rx_retry);
	struct kt_dev *kd = p->kd;

	down_read(&kd->rx_sem);
	mutex_lock(&p->rx_mutex);
	if (kd->rx_live) {
		kt_rx_fill(p);
		virtqueue_kick(p->rx_vq);
	}
	mutex_unlock(&p->rx_mutex);
	up_read(&kd->rx_sem);
	kt_rx_run(p);
}

/*
 * The event queue: RESET and anything else the device says there. With
 * rx_sem held for writing, so a RESET sees every pair's rx state at rest.
 */
void kt_ev_work(struct work_struct *work)
{
	struct kt_dev *kd = container_of(work, struct kt_dev, ev_work);
	unsigned int i;

	down_write(&kd->rx_sem);
	if (kd->rx_live) {
		if (kt_ev_drain(kd))
			queue_work(kt_wq, &kd->ev_work);
		if (virtqueue_is_broken(kd->ev_vq))
			kt_vq_broken(kd);
		for (i = 0; i < kd->npairs; i++) {
			if (virtqueue_is_broken(kd->pairs[i].rx_vq))
				kt_vq_broken(kd);
			kt_rx_notify_flush(&kd->pairs[i]);
		}
	}
	up_write(&kd->rx_sem);
}

/* ---- tx ---- */

/* The next scatterlist entry's size at @p: one DMA segment, one page of vmalloc. */
static size_t kt_sg_chunk(const u8 *p, size_t left, size_t max_seg, bool vm)
{
	size_t chunk = min(left, max_seg);

	if (vm)
		chunk = min_t(size_t, chunk, PAGE_SIZE - offset_in_page(p));
	return chunk;
}

/**
 * kt_txbuf_alloc() - allocate a message to send
 * @kd: the device it goes to (for its largest DMA segment)
 * @len: payload bytes (the caller fills txb->data)
 * @gfp: allocation flags
 *
 * The scatterlist covers header and payload in entries no larger than
 * virtio_max_dma_size() (and one page each if vmalloc'd).
 *
 * Return: the buffer with its scatterlist set up, or NULL.
 */
struct kt_txbuf *kt_txbuf_alloc(struct kt_dev *kd, size_t len, gfp_t gfp)
{
	size_t bytes = KT_HDR_SIZE + len;
	size_t max_seg = kd->tx_max_seg;
	struct kt_txbuf *txb;
	unsigned int i, n;
	size_t total, left, chunk;
	bool vm;
	u8 *p;

	total = struct_size(txb, data, len);
	txb = len ? kvmalloc(total, gfp) : kmalloc(total, gfp);
	if (!txb)
		return NULL;
	memset(txb, 0, sizeof(*txb));
	INIT_LIST_HEAD(&txb->node);
	txb->len = len;
	vm = is_vmalloc_addr(txb);

	n = 0;
	p = (u8 *)&txb->hdr;
	for (left = bytes; left; left -= chunk, p += chunk, n++)
		chunk = kt_sg_chunk(p, left, max_seg, vm);

	if (n == 1) {
		txb->sg = &txb->sg_inline;
		txb->nsg = 1;
		sg_init_one(txb->sg, &txb->hdr, bytes);
		return txb;
	}
	txb->sg = kmalloc_array(n, sizeof(*txb->sg), gfp);
	if (!txb->sg) {
		kvfree(txb);
		return NULL;
	}
	sg_init_table(txb->sg, n);
	p = (u8 *)&txb->hdr;
	for (i = 0, left = bytes; i < n; i++, left -= chunk, p += chunk) {
		chunk = kt_sg_chunk(p, left, max_seg, vm);
		if (vm)
			sg_set_page(&txb->sg[i], vmalloc_to_page(p), chunk,
				    offset_in_page(p));
		else
			sg_set_buf(&txb->sg[i], p, chunk);
	}
	txb->nsg = n;
	return txb;
}

void kt_txbuf_free(struct kt_txbuf *txb)
{
	if (txb->sg != &txb->sg_inline)
		kfree(txb->sg);
	kvfree(txb);
}

/*
 * Fills the credit fields just before the message is offered to the ring
 * (SPEC 5), so a queued CREDIT_UPDATE is never stale. ch->lock held.
 */
static void kt_tx_fill_credit(struct kt_chan *ch, struct kt_txbuf *txb)
{
	txb->hdr.buf_alloc = cpu_to_le32(ch->buf_alloc);
	txb->hdr.fwd_cnt = cpu_to_le32(ch->fwd_cnt);
}

/*
 * The message is on the ring: the device can now see its fwd_cnt, and a
 * credit message of this kind may be queued again (at most one waits,
 * SPEC 8). ch->lock held since kt_tx_fill_credit().
 */
static void kt_tx_entered_ring(struct kt_chan *ch, struct kt_txbuf *txb)
{
	u16 type = le16_to_cpu(txb->hdr.type);

	ch->last_fwd_sent = le32_to_cpu(txb->hdr.fwd_cnt);
	if (type == KT_MSG_CREDIT_UPDATE)
		ch->credit_update_queued = false;
	else if (type == KT_MSG_CREDIT_REQUEST)
		ch->credit_req_queued = false;
}

/*
 * Offers @txb to the ring. A channel's message is filled and added under
 * the channel's lock, held until the add succeeded, so last_fwd_sent is
 * only ever what the device can see. tx_lock held.
 */
static int kt_tx_add(struct virtqueue *vq, struct kt_txbuf *txb)
{
	struct kt_chan *ch = txb->ch;
	int err;

	if (!ch)
		return virtqueue_add_outbuf(vq, txb->sg, txb->nsg, txb,
					    GFP_ATOMIC);
	spin_lock(&ch->lock);
	kt_tx_fill_credit(ch, txb);
	err = virtqueue_add_outbuf(vq, txb->sg, txb->nsg, txb, GFP_ATOMIC);
	if (!err)
		kt_tx_entered_ring(ch, txb);
	spin_unlock(&ch->lock);
	return err;
}

/* Is the channel whose messages wait here at its share of the ring? */
static bool kt_tx_capped(struct kt_pair *p, struct kt_chan *ch,
			 unsigned int cap)
{
	if (ch->tx_ring < cap)
		return false;
	/* Contended: others' messages in the ring or waiting, or lately. */
	return p->tx_ring_chans > ch->tx_ring ||
	       !list_is_singular(&p->tx_active) ||
	       time_before(jiffies, p->tx_switch + KT_TX_CONTENDED);
}

static bool kt_tx_is_credit(const struct kt_txbuf *txb)
{
	return txb->hdr.type == cpu_to_le16(KT_MSG_CREDIT_UPDATE) ||
	       txb->hdr.type == cpu_to_le16(KT_MSG_CREDIT_REQUEST);
}

/*
 * The next message to offer the ring: those of no channel (replies,
 * LISTEN) first, then the channels in turn, one message each, passing
 * over a channel at its share unless its next message is a credit
 * message (at most two per channel wait, SPEC 8, and the peer's sending
 * waits for them). Only a channel at its share is passed over, and the
 * shares add up to the ring: the walk is short. NULL if nothing may go
 * now. tx_lock held.
 */
static struct kt_txbuf *kt_tx_next_locked(struct kt_pair *p)
{
	unsigned int share = READ_ONCE(tx_share);
	unsigned int cap = UINT_MAX;
	struct kt_txbuf *txb;
	struct kt_chan *ch;

	txb = list_first_entry_or_null(&p->tx_pending, struct kt_txbuf, node);
	if (txb)
		return txb;
	if (share > 1)
		cap = max(virtqueue_get_vring_size(p->tx_vq) / share,
			  KT_TX_SHARE_MIN_ENTRIES);
	list_for_each_entry(ch, &p->tx_active, tx_node) {
		txb = list_first_entry(&ch->tx_pending, struct kt_txbuf, node);
		if (kt_tx_is_credit(txb) || !kt_tx_capped(p, ch, cap))
			return txb;
	}
	return NULL;
}

/*
 * @txb is on the ring: off its pending list, counted on the ring, and its
 * channel's turn passes to the next. tx_lock held.
 */
static void kt_tx_took_locked(struct kt_pair *p, struct kt_txbuf *txb)
{
	struct kt_chan *ch = txb->ch;

	list_del(&txb->node);
	p->tx_queued--;
	if (txb->hdr.type != cpu_to_le16(KT_MSG_DATA))
		p->ctrl_queued--;
	if (txb->reply)
		p->replies_pending--;
	if (!ch)
		return;
	ch->tx_ring++;
	p->tx_ring_chans++;
	if (ch->id != p->tx_last_id) {
		p->tx_last_id = ch->id;
		p->tx_switch = jiffies;
	}
	if (list_empty(&ch->tx_pending))
		list_del_init(&ch->tx_node);
	else
		list_move_tail(&ch->tx_node, &p->tx_active);
}

/* Do messages wait for the ring (room, or their channel's share)? */
static bool kt_tx_waiting(struct kt_pair *p)
{
	return !list_empty(&p->tx_pending) || !list_empty(&p->tx_active);
}

/*
 * Moves pending messages into the ring while it has room, in the order
 * kt_tx_next_locked() gives. tx_lock held. A message leaves its pending
 * list only once virtqueue_add_outbuf() took it: accepted data is never
 * dropped. If the add fails for another reason than a full ring (DMA
 * mapping, or a ring with no room even when empty), a retry is scheduled;
 * a broken ring is left to kt_vq_broken().
 */
static void kt_tx_push_locked(struct kt_pair *p)
{
	struct virtqueue *vq = p->tx_vq;
	struct kt_txbuf *txb;
	bool added = false;
	int err;

	while ((txb = kt_tx_next_locked(p))) {
		err = kt_tx_add(vq, txb);
		if (err) {
			if (virtqueue_is_broken(vq)) {
				kt_vq_broken(p->kd);
				break;
			}
			if (err != -ENOSPC ||
			    vq->num_free == virtqueue_get_vring_size(vq))
				mod_delayed_work(kt_wq, &p->tx_retry,
						 KT_TX_RETRY_DELAY);
			break;
		}
		kt_tx_took_locked(p, txb);
		added = true;
	}
	if (added)
		virtqueue_kick(vq);
}

/*
 * Takes the messages the device is done with off the ring onto @done (for
 * kt_txbufs_complete() once tx_lock is dropped) and gives their credit
 * back at once, so a sender's bound check sees it. Callbacks must be off
 * (virtqueue_get_buf() would otherwise re-arm them for the next buffer).
 * tx_lock held, queues live. Returns how many it took.
 */
static unsigned int kt_tx_reap_locked(struct kt_pair *p,
				      struct list_head *done)
{
	struct kt_txbuf *txb;
	unsigned int used, n = 0;

	while ((txb = virtqueue_get_buf(p->tx_vq, &used))) {
		kt_tx_left_ring_locked(p, txb);
		kt_tx_uncharge(txb);
		list_add_tail(&txb->node, done);
		n++;
	}
	return n;
}

/*
 * Re-arms tx completion after a tx path run with callbacks off. Nobody
 * needs an interrupt per message: senders reap on their way. One is armed
 * only for someone waiting: at the next completion for a sender asleep on
 * its own in-flight bound (p->tx_waiters) while nothing waits for ring
 * room, else, for messages waiting for ring room, once about three
 * quarters of the ring are consumed (virtqueue_enable_cb_delayed(), as
 * virtio-net does; at the next completion without EVENT_IDX). With nobody
 * waiting, what is still in the ring is reaped by the next sender or at
 * the latest by tx_retry after KT_TX_LAZY_DELAY, so no buffer (nor the
 * channel and module it pins) is held for ever. If the device already
 * consumed past the mark, reaps and pushes again; after a few rounds
 * leaves the rest to tx_work. tx_lock held, queues live.
 */
static void kt_tx_arm_locked(struct kt_pair *p, struct list_head *done)
{
	struct virtqueue *vq = p->tx_vq;
	unsigned int round;
	bool waiters, armed;

	for (round = 0; round < KT_TX_ARM_ROUNDS; round++) {
		waiters = atomic_read(&p->tx_waiters);
		if (!kt_tx_waiting(p)) {
			if (!waiters) {
				if (vq->num_free < virtqueue_get_vring_size(vq))
					queue_delayed_work(kt_wq, &p->tx_retry,
							   KT_TX_LAZY_DELAY);
				return;
			}
			armed = virtqueue_enable_cb(vq);
		} else {
			armed = virtqueue_enable_cb_delayed(vq);
		}
		if (armed)
			return;
		virtqueue_disable_cb(vq);
		if (!kt_tx_reap_locked(p, done)) {
			/* Used but nothing to take: the ring is broken. */
			if (virtqueue_is_broken(vq))
				kt_vq_broken(p->kd);
			return;
		}
		kt_tx_push_locked(p);
	}
	queue_work(kt_wq, &p->tx_work);
}

/*
 * Starts a tx path run under tx_lock (queues live): callbacks off, the
 * messages the device is done with reaped onto @done.
 */
static void kt_tx_begin_locked(struct kt_pair *p, struct list_head *done)
{
	virtqueue_disable_cb(p->tx_vq);
	kt_tx_reap_locked(p, done);
}

/*
 * Where @txb goes in its channel's pending list: at the end, but a credit
 * message goes ahead of the DATA waiting there (its fields are filled when
 * it enters the ring, so it is never stale, and the peer should not wait
 * for credit behind our own data), still behind OPEN or OPEN_OK. At most
 * three control messages precede the first DATA (SPEC 8): the walk is
 * short.
 */
static struct list_head *kt_tx_slot(struct kt_chan *ch, struct kt_txbuf *txb)
{
	struct kt_txbuf *t;

	if (!kt_tx_is_credit(txb))
		return &ch->tx_pending;
	list_for_each_entry(t, &ch->tx_pending, node)
		if (t->hdr.type == cpu_to_le16(KT_MSG_DATA))
			return &t->node;
	return &ch->tx_pending;
}

/*
 * Queues @txb (header filled but for credit) behind its channel's earlier
 * messages (kt_tx_slot(); or the pair's, with no channel) and pushes what
 * fits into the ring. tx_lock held, queues live, and kt_tx_begin_locked()
 * done: the caller calls kt_tx_arm_locked().
 */
static void kt_tx_enqueue_locked(struct kt_pair *p, struct kt_txbuf *txb)
{
	struct kt_chan *ch = txb->ch;

	if (ch) {
		if (list_empty(&ch->tx_pending))
			list_add_tail(&ch->tx_node, &p->tx_active);
		/* Before the slot: the end, or the first DATA. */
		list_add_tail(&txb->node, kt_tx_slot(ch, txb));
	} else {
		list_add_tail(&txb->node, &p->tx_pending);
	}
	p->tx_queued++;
	if (txb->hdr.type != cpu_to_le16(KT_MSG_DATA))
		p->ctrl_queued++;
	kt_tx_push_locked(p);
}

/**
 * kt_pair_tx_live() - may messages be queued on a pair now?
 * @p: the pair
 *
 * Return: true between kt_vqs_start() and kt_vqs_stop() for the pairs in
 * use.
 */
bool kt_pair_tx_live(struct kt_pair *p)
{
	bool live;

	spin_lock(&p->tx_lock);
	live = p->tx_live;
	spin_unlock(&p->tx_lock);
	return live;
}

static void kt_hdr_init(struct kt_hdr *hdr, u32 id, u16 type, u32 len,
			u32 arg)
{
	hdr->channel = cpu_to_le32(id);
	hdr->type = cpu_to_le16(type);
	hdr->flags = 0;
	hdr->len = cpu_to_le32(len);
	hdr->msg_len = cpu_to_le32(len);
	hdr->seq = 0;
	hdr->buf_alloc = 0;
	hdr->fwd_cnt = 0;
	hdr->arg = cpu_to_le32(arg);
}

/**
 * kt_tx_queue_reply() - answer a message whose id is not one of our channels
 * @p: the pair the message came on (the answer goes on its tx queue)
 * @id: channel id from the device's message
 * @type: KT_MSG_OPEN_ERR, or KT_MSG_CLOSE for DATA/CREDIT_* on an unknown id
 * @arg: error code
 *
 * The number of such replies waiting for ring room is bounded so a device
 * that floods us while not consuming tx cannot grow our memory.
 *
 * Return: 0, or a negative errno if the reply was dropped.
 */
int kt_tx_queue_reply(struct kt_pair *p, u32 id, u16 type, u32 arg)
{
	struct kt_dev *kd = p->kd;
	struct kt_txbuf *txb;
	LIST_HEAD(done);
	int err = 0;

	txb = kt_txbuf_alloc(kd, 0, GFP_KERNEL);
	if (!txb) {
		atomic64_inc(&kd->stats.tx_dropped);
		return -ENOMEM;
	}
	kt_hdr_init(&txb->hdr, id, type, 0, arg);

	spin_lock(&p->tx_lock);
	if (!p->tx_live) {
		err = -ENODEV;
	} else {
		kt_tx_begin_locked(p, &done);
		if (p->replies_pending >= KT_REPLY_PENDING_MAX) {
			err = -ENOBUFS;
		} else {
			p->replies_pending++;
			txb->reply = true;
			kt_tx_enqueue_locked(p, txb);
		}
		kt_tx_arm_locked(p, &done);
	}
	spin_unlock(&p->tx_lock);
	kt_txbufs_complete(&done);

	if (err) {
		atomic64_inc(&kd->stats.tx_dropped);
		kt_txbuf_free(txb);
	}
	return err;
}

/**
 * kt_tx_queue_listen() - announce a listener to the device (SPEC 2.2)
 * @kd: the device
 * @type: KT_MSG_LISTEN or KT_MSG_UNLISTEN
 * @name: the listener's NUL-terminated name (checked when it was added)
 *
 * Nothing is sent unless KT_F_LISTEN_NOTIFY was negotiated. The message
 * waits for ring room like any control message; those waiting are bounded
 * (KT_CTRL_PENDING_MAX): past that the announcement is dropped and
 * counted (tx_dropped), so a device that stops completing tx never makes a
 * listener wait or the driver's memory grow. The device learns the whole
 * set again at its next (re)activation. Always on pair 0 (SPEC 1.4).
 *
 * Context: kt_services_lock held (announcements stay in order).
 * Return: 0, or a negative errno if nothing was queued.
 */
int kt_tx_queue_listen(struct kt_dev *kd, u16 type, const char *name)
{
	size_t len = strnlen(name, KT_NAME_MAX + 1);
	struct kt_pair *p = &kd->pairs[0];
	struct kt_txbuf *txb;
	LIST_HEAD(done);
	int err = 0;

	lockdep_assert_held(&kt_services_lock);
	if (!kd->listen_notify)
		return 0;
	if (len < 1 || len > KT_NAME_MAX)
		return -EINVAL;
	txb = kt_txbuf_alloc(kd, len, GFP_KERNEL);
	if (!txb) {
		atomic64_inc(&kd->stats.tx_dropped);
		return -ENOMEM;
	}
	kt_hdr_init(&txb->hdr, KT_CHAN_TRANSPORT, type, len, 0);
	memcpy(txb->data, name, len);

	spin_lock(&p->tx_lock);
	if (!p->tx_live) {
		err = -ENODEV;
	} else {
		kt_tx_begin_locked(p, &done);
		if (p->ctrl_queued >= KT_CTRL_PENDING_MAX) {
			err = -ENOBUFS;
		} else {
			kt_tx_enqueue_locked(p, txb);
			txb = NULL;
		}
		kt_tx_arm_locked(p, &done);
	}
	spin_unlock(&p->tx_lock);
	kt_txbufs_complete(&done);

	if (err == -ENOBUFS) {
		atomic64_inc(&kd->stats.tx_dropped);
		dev_warn_ratelimited(&kd->vdev->dev,
				     "tx queue full: listener announcement dropped\n");
	}
	if (txb)
		kt_txbuf_free(txb);
	return err;
}

/**
 * kt_tx_queue_ctrl() - queue a control message for a channel
 * @ch: the channel
 * @type: KT_MSG_OPEN, OPEN_OK, CLOSE, CREDIT_UPDATE or CREDIT_REQUEST
 *	(on the channel's pair, SPEC 1.4)
 * @arg: error code for CLOSE, else 0
 * @payload: OPEN: the service name; else NULL
 * @len: payload bytes
 *
 * CLOSE is queued only by whoever moved the channel with KT_EV_CLOSE
 * (so once); nothing is queued after it, and at most one
 * CREDIT_UPDATE and one CREDIT_REQUEST wait for ring room at a time (their
 * credit fields are filled when they enter the ring, so one is always
 * enough; the flag clears only once the message is on the ring). OPEN,
 * OPEN_OK and CLOSE are sent once per channel, so the messages waiting are
 * bounded by max_channels; credit messages are also bounded globally
 * (KT_CTRL_PENDING_MAX): past that they are dropped and counted, and sent
 * again when the reader or the peer next asks.
 *
 * Return: 0 if queued or coalesced, -ENOMEM, -ENOBUFS (credit message
 * dropped), or -ECONNRESET if the device is not live or the channel was
 * reset.
 */
int kt_tx_queue_ctrl(struct kt_chan *ch, u16 type, u32 arg,
		     const void *payload, u32 len)
{
	struct kt_dev *kd = ch->kd;
	struct kt_pair *p = ch->pair;
	bool credit = type == KT_MSG_CREDIT_UPDATE ||
		      type == KT_MSG_CREDIT_REQUEST;
	struct kt_txbuf *txb;
	bool skip = false;
	LIST_HEAD(done);
	int err = 0;

	txb = kt_txbuf_alloc(kd, len, GFP_KERNEL);
	if (!txb)
		return -ENOMEM;
	kt_hdr_init(&txb->hdr, ch->id, type, len, arg);
	if (len)
		memcpy(txb->data, payload, len);

	spin_lock(&p->tx_lock);
	if (p->tx_live)
		kt_tx_begin_locked(p, &done);
	spin_lock(&ch->lock);
	if (!p->tx_live || ch->state == KT_CH_RESET) {
		err = -ECONNRESET;
	} else if (type == KT_MSG_CLOSE) {
		/* The caller's KT_EV_CLOSE allowed exactly one. */
	} else if (ch->state == KT_CH_CLOSE_SENT ||
		   ch->state == KT_CH_CLOSED) {
		skip = true;		/* nothing after our CLOSE */
	} else if (credit && p->ctrl_queued >= KT_CTRL_PENDING_MAX) {
		err = -ENOBUFS;
	} else if (type == KT_MSG_CREDIT_UPDATE) {
		skip = ch->credit_update_queued;
		ch->credit_update_queued = true;
	} else if (type == KT_MSG_CREDIT_REQUEST) {
		skip = ch->credit_req_queued;
		ch->credit_req_queued = true;
	}
	spin_unlock(&ch->lock);
	if (!err && !skip) {
		kref_get(&ch->ref);
		txb->ch = ch;
		kt_tx_enqueue_locked(p, txb);
		txb = NULL;
	}
	if (p->tx_live)
		kt_tx_arm_locked(p, &done);
	spin_unlock(&p->tx_lock);
	kt_txbufs_complete(&done);

	if (err == -ENOBUFS) {
		atomic64_inc(&kd->stats.tx_dropped);
		dev_warn_ratelimited(&kd->vdev->dev,
				     "tx queue full: credit message dropped\n");
	}
	if (txb)
		kt_txbuf_free(txb);
	return err;
}

/*
 * May @ch send a message of @cost credit bytes? ch->lock held. Sets
 * *@peer_limited if the peer's credit is short, and *@arm if the channel
 * just started waiting for its own tx completions (the caller makes sure
 * their interrupt is armed).
 */
static int kt_chan_tx_check(struct kt_chan *ch, u32 cost, bool *peer_limited,
			    bool *arm)
{
	u32 in_flight;

	if (kt_ch_connecting(ch->state))
		return -ENOTCONN;
	if (ch->state == KT_CH_RESET ||
	    (kt_ch_ended(ch->state) && ch->err == ECONNRESET))
		return -ECONNRESET;
	if (ch->state != KT_CH_OPEN)
		return -EPIPE;
	in_flight = ch->tx_cnt - ch->peer_fwd_cnt;
	if ((u64)in_flight + cost > ch->peer_buf_alloc) {
		*peer_limited = true;
		return -EAGAIN;
	}
	/*
	 * Our own bound: never hold more than our window in flight. Only tx
	 * completions lift it: ask for an interrupt at the next one.
	 */
	if ((u64)ch->tx_inflight + cost > ch->kd->buf_alloc) {
		if (!ch->tx_wait) {
			ch->tx_wait = true;
			atomic_inc(&ch->pair->tx_waiters);
			*arm = true;
		}
		return -EAGAIN;
	}
	return 0;
}

/**
 * kt_chan_can_send() - wait condition for a sender
 * @ch: the channel
 * @cost: credit bytes of the message
 *
 * Return: true if a send attempt would not get -EAGAIN (it may still fail).
 */
bool kt_chan_can_send(struct kt_chan *ch, u32 cost)
{
	bool peer_limited = false, arm = false;
	int err;

	spin_lock(&ch->lock);
	err = kt_chan_tx_check(ch, cost, &peer_limited, &arm);
	spin_unlock(&ch->lock);
	if (arm) {
		/*
		 * tx_work reaps and arms the interrupt for the waiter; queued
		 * only while live, so kt_vqs_stop() cancels it.
		 */
		spin_lock(&ch->pair->tx_lock);
		if (ch->pair->tx_live)
			queue_work(kt_wq, &ch->pair->tx_work);
		spin_unlock(&ch->pair->tx_lock);
	}
	return err != -EAGAIN;
}

/**
 * kt_tx_queue_data() - queue one DATA message if credit allows
 * @ch: an open channel
 * @txb: the message (payload filled)
 * @stalled: set when the message had to wait for credit
 *
 * Assigns the sequence number and charges credit under the same locks that
 * order the channel's pending list, so messages leave in sequence order.
 *
 * Return: 0 (@txb now belongs to the queue), -EAGAIN (no credit yet), or
 * -EPIPE/-ECONNRESET/-ENOTCONN/-ENOBUFS.
 */
int kt_tx_queue_data(struct kt_chan *ch, struct kt_txbuf *txb, bool *stalled)
{
	struct kt_dev *kd = ch->kd;
	struct kt_pair *p = ch->pair;
	u32 len = txb->len;
	u32 cost = kt_msg_cost(len);
	bool peer_limited = false, arm = false;
	bool request = false;
	bool live;
	LIST_HEAD(done);
	int err;

	spin_lock(&p->tx_lock);
	/* Reaping first lets this message use the credit it frees. */
	live = p->tx_live;
	if (live)
		kt_tx_begin_locked(p, &done);
	spin_lock(&ch->lock);
	err = kt_chan_tx_check(ch, cost, &peer_limited, &arm);
	if (!err && !live)
		err = -ECONNRESET;
	if (!err && txb->nsg > virtqueue_get_vring_size(p->tx_vq) &&
	    !virtio_has_feature(kd->vdev, VIRTIO_RING_F_INDIRECT_DESC))
		err = -ENOBUFS;
	if (!err) {
		kt_hdr_init(&txb->hdr, ch->id, KT_MSG_DATA, len, 0);
		txb->hdr.seq = cpu_to_le32(ch->tx_seq++);
		ch->tx_cnt += cost;
		ch->tx_inflight += cost;
		ch->tx_want = 0;
		ch->stats.tx_msgs++;
		ch->stats.tx_bytes += len;
	} else if (err == -EAGAIN) {
		ch->tx_want = cost;
		if (!*stalled) {
			*stalled = true;
			ch->stats.credit_stalls++;
			atomic64_inc(&kd->stats.credit_stalls);
		}
		request = peer_limited && !ch->credit_req_queued;
	}
	spin_unlock(&ch->lock);
	if (!err) {
		kref_get(&ch->ref);
		txb->ch = ch;
		txb->cost = cost;
		kt_tx_enqueue_locked(p, txb);
		atomic64_inc(&kd->stats.tx_msgs);
		atomic64_add(len, &kd->stats.tx_bytes);
	}
	if (live)
		kt_tx_arm_locked(p, &done);
	spin_unlock(&p->tx_lock);
	kt_txbufs_complete(&done);

	if (request)
		kt_tx_queue_ctrl(ch, KT_MSG_CREDIT_REQUEST, 0, NULL, 0);
	return err;
}

/*
 * tx_work (the interrupt came, or a sender started waiting) and tx_retry
 * (lazy reaping, a failed add): reaps what the device is done with, moves
 * waiting messages into the ring and re-arms.
 */
static void kt_tx_reclaim(struct kt_pair *p)
{
	LIST_HEAD(done);

	spin_lock(&p->tx_lock);
	if (p->tx_live) {
		kt_tx_begin_locked(p, &done);
		if (virtqueue_is_broken(p->tx_vq)) {
			kt_vq_broken(p->kd);
		} else {
			kt_tx_push_locked(p);
			kt_tx_arm_locked(p, &done);
		}
	}
	spin_unlock(&p->tx_lock);

	kt_txbufs_complete(&done);
}

static void kt_tx_work(struct work_struct *work)
{
	kt_tx_reclaim(container_of(work, struct kt_pair, tx_work));
}

static void kt_tx_retry_work(struct work_struct *work)
{
	kt_tx_reclaim(container_of(to_delayed_work(work), struct kt_pair,
				   tx_retry));
}

/*
 * Moves the messages of @from, waiting on pair @p, to @done and takes them
 * off the pair's counts. tx_lock held.
 */
static void kt_tx_drop_locked(struct kt_pair *p, struct list_head *from,
			      struct list_head *done)
{
	struct kt_txbuf *txb;

	list_for_each_entry(txb, from, node) {
		p->tx_queued--;
		if (txb->hdr.type != cpu_to_le16(KT_MSG_DATA))
			p->ctrl_queued--;
		if (txb->reply)
			p->replies_pending--;
	}
	list_splice_tail_init(from, done);
}

/**
 * kt_tx_purge() - drop the messages still waiting for ring room
 * @kd: the device
 * @keep_gen: keep those of channels listed in this generation (0: none)
 *
 * After a transport reset nothing queued for the old channels may reach
 * the device, on any pair: their ids may be reused at once. Replies and
 * LISTENs go too (the listeners are announced again). Channels opened
 * since the reset keep theirs: the new device knows them.
 */
void kt_tx_purge(struct kt_dev *kd, unsigned long keep_gen)
{
	struct kt_chan *ch, *tmp;
	struct kt_pair *p;
	unsigned int i;
	LIST_HEAD(done);

	for (i = 0; i < kd->max_pairs; i++) {
		p = &kd->pairs[i];
		spin_lock(&p->tx_lock);
		kt_tx_drop_locked(p, &p->tx_pending, &done);
		list_for_each_entry_safe(ch, tmp, &p->tx_active, tx_node) {
			if (keep_gen && READ_ONCE(ch->gen) == keep_gen)
				continue;
			kt_tx_drop_locked(p, &ch->tx_pending, &done);
			list_del_init(&ch->tx_node);
		}
		spin_unlock(&p->tx_lock);
	}
	kt_txbufs_complete(&done);
}
