/* SPDX-License-Identifier: GPL-2.0 */
/*
 * kerntransport driver internals: the device, channel, service and message
 * objects shared by the driver's files, their locking rules, and the
 * functions each file exports to the others. Nothing here is visible to
 * other modules (see include/linux/kerntransport_api.h for that).
 *
 * Queue pairs (SPEC 1.4): the rx and tx state of each rx/tx queue pair is
 * a struct kt_pair; a channel lives on one pair (ch->pair) and all its
 * messages, both directions, use that pair's queues. Channels, counters,
 * the event queue and recovery are the device's.
 *
 * Locking (outermost first; never take them the other way round):
 *   kd->rx_sem (rw_semaphore) read: one pair's rx run (then p->rx_mutex);
 *                             write: the event queue and queue start/stop,
 *                             which may touch every pair's rx state
 *   p->rx_mutex (mutex)       one pair's rx virtqueue, reassembly state,
 *                             channels to wake after its rx run (rx_notify)
 *   kt_services_lock (mutex)  global listener/service registry, and the
 *                             device listeners are announced to
 *   p->tx_lock (spinlock)     one pair's tx virtqueue, pending tx lists
 *                             (the pair's and its channels'), tx_live;
 *                             senders reap tx completions under it
 *   kd->chans xa_lock         channel id table
 *   svc->lock (spinlock)      a service's accept queue / channel list
 *   ch->lock (spinlock)       one channel's state, queue, credit, counters
 *   kt_rx_pool_lock (spinlock) spare rx buffers (kt_vq.c); innermost
 * All paths run in process context: virtqueue callbacks only queue work
 * (the tx callback also turns tx callbacks off, which virtqueue_disable_cb()
 * allows without serialisation; tx_work turns them on again).
 */
#ifndef KT_PRIV_H
#define KT_PRIV_H

#include <linux/atomic.h>
#include <linux/kref.h>
#include <linux/list.h>
#include <linux/mutex.h>
#include <linux/rwsem.h>
#include <linux/scatterlist.h>
#include <linux/smp.h>
#include <linux/spinlock.h>
#include <linux/types.h>
#include <linux/wait.h>
#include <linux/workqueue.h>
#include <linux/xarray.h>

#include "kerntransport.h"
#include <linux/kerntransport_api.h>

struct virtio_device;
struct virtqueue;

#define KT_EV_BUFS		8	/* buffers kept posted on the event queue */
#define KT_ACCEPT_BACKLOG	64	/* channels waiting in one listener */
#define KT_REPLY_PENDING_MAX	256	/* per pair: queued replies, no channel */
#define KT_CTRL_PENDING_MAX	1024	/* per pair: queued control messages */
#define KT_MAX_CHANNELS_CAP	65536	/* upper clamp for config max_channels */
#define KT_RX_BUF_SIZE_MAX	65536

/*
 * One event-queue buffer. Each has its own cache line: the device writes
 * them while the driver reads others (DMA on non-coherent systems).
 */
struct kt_ev_buf {
	struct kt_hdr hdr;
} ____cacheline_aligned;

/*
 * One received message, queued on a channel until read: copied into a
 * right-sized allocation (@data is @buf), or, when one rx buffer held it
 * all and it fills enough of that buffer (kt_rx.c), the rx buffer itself
 * (@rxbuf): this struct then lies over the buffer's header, which was
 * decoded before, and @data points at the payload after it; or, for a
 * user-space channel's message too large for one buffer, the chain of
 * @nbufs rx buffers it came in (kt_msg_bufs(); each buffer's payload
 * length is in its first bytes, kt_msg_buf_len(); @data is NULL). Free it
 * with kt_msg_free().
 */
struct kt_msg {
	struct list_head node;
	u8 *data;
	u32 len;
	bool rxbuf;
	u16 nbufs;
	u8 buf[] __aligned(8);
};

/* The rx buffers of a chained message (nbufs != 0). */
static inline void **kt_msg_bufs(struct kt_msg *msg)
{
	return (void **)msg->buf;
}

/* Payload bytes of one buffer of a chained message, after its header. */
static inline u32 kt_msg_buf_len(const void *rxbuf)
{
	return *(const u32 *)rxbuf;
}

/* Credit bytes a message of @len payload bytes costs (SPEC section 5). */
static inline u32 kt_msg_cost(u32 len)
{
	return KT_MSG_OVERHEAD + len;
}

/*
 * Channel life cycle (docs/guest-driver.md has the table). Every change of
 * ch->state goes through kt_chan_transition(), under ch->lock. A channel
 * is listed in kd->chans exactly while in CONNECTING .. CLOSE_RCVD
 * (kt_ch_listed()); whoever moves it out of those states removes it.
 */
enum kt_ch_state {
	KT_CH_NEW,		/* allocated, no id yet */
	KT_CH_CONNECTING,	/* OPEN sent (or a host OPEN being accepted) */
	KT_CH_ABANDONED,	/* CONNECTING, opener gone: OPEN_OK gets CLOSE */
	KT_CH_OPEN,
	KT_CH_CLOSE_SENT,	/* our CLOSE queued, the peer's not seen */
	KT_CH_CLOSE_RCVD,	/* the peer's CLOSE seen, ours not yet queued */
	KT_CH_CLOSED,		/* both CLOSEs, an OPEN_ERR, or forgotten */
	KT_CH_RESET,		/* failed by a transport reset or removal */
};

/* What moves a channel from one state to another. */
enum kt_ch_event {
	KT_EV_LIST,		/* got an id in kd->chans */
	KT_EV_UNLIST,		/* gave it up without (more) CLOSEs */
	KT_EV_ABANDON,		/* the opener gave up waiting */
	KT_EV_ACCEPT,		/* we queued OPEN_OK for the host's OPEN */
	KT_EV_CLOSE,		/* we queue our CLOSE */
	KT_EV_RESET,		/* transport reset or device removal */
	KT_EV_RX_OPEN_OK,	/* device input from here on */
	KT_EV_RX_OPEN_ERR,
	KT_EV_RX_DATA,
	KT_EV_RX_CLOSE,
};

/* Waiting for the answer to an OPEN (ours, or the host's we accept). */
static inline bool kt_ch_connecting(enum kt_ch_state s)
{
	return s == KT_CH_NEW || s == KT_CH_CONNECTING || s == KT_CH_ABANDONED;
}

/* Holds an id in kd->chans (and the table's reference). */
static inline bool kt_ch_listed(enum kt_ch_state s)
{
	return s >= KT_CH_CONNECTING && s <= KT_CH_CLOSE_RCVD;
}

/* Over for the reader: queued data, then EOF or ch->err. */
static inline bool kt_ch_ended(enum kt_ch_state s)
{
	return s >= KT_CH_CLOSE_SENT;
}

struct kt_chan_stats {
	u64 tx_msgs;
	u64 tx_bytes;
	u64 rx_msgs;
	u64 rx_bytes;
	u64 credit_stalls;
	u64 malformed;
};

struct kt_dev;
struct kt_service;

struct kt_chan {
	struct kref ref;
	struct kt_dev *kd;		/* device reference held for our life */
	spinlock_t lock;		/* the fields marked "under @lock" */
	wait_queue_head_t wq;		/* readers, writers, connect, poll */
	struct mutex rd_mutex;		/* one reader at a time (peek, copy) */
	u32 id;
	char name[KT_NAME_MAX + 1];
	bool kernel;			/* a kernel user's: set before listed */
	struct kt_pair *pair;		/* its queue pair: set before listed */
	unsigned long gen;		/* kd->chan_gen when listed (xa_lock) */

	/* Everything below is under @lock. */
	enum kt_ch_state state;	/* kt_chan_transition() changes it */
	int err;			/* errno reported when rxq is empty */
	int open_err;			/* why our OPEN failed, 0 if it did not */
	bool credit_update_queued;
	bool credit_req_queued;
	bool closed_notified;		/* kernel ops->closed was called */

	struct list_head rxq;		/* struct kt_msg, oldest first */
	u32 rx_seq;			/* next expected DATA seq */
	u32 rx_cnt;			/* credit bytes received */
	u32 fwd_cnt;			/* credit bytes consumed by the reader */
	u32 last_fwd_sent;		/* fwd_cnt the peer last heard */
	u32 buf_alloc;			/* our receive window */

	u32 tx_seq;
	u32 tx_cnt;
	u32 peer_buf_alloc;
	u32 peer_fwd_cnt;
	u32 tx_inflight;		/* credit bytes queued, not yet completed */
	bool tx_wait;			/* a sender waits for tx_inflight to drop */
	u32 tx_want;			/* cost of the last send that had to wait */

	/* tx order on the pair (kt_vq.c), under pair->tx_lock. */
	struct list_head tx_pending;	/* struct kt_txbuf waiting for the ring */
	struct list_head tx_node;	/* pair->tx_active while tx_pending */
	unsigned int tx_ring;		/* its messages in the ring, not reaped */

	/* Kernel endpoints (kt_api.c). */
	const struct kt_chan_ops *ops;	/* NULL for user-space channels */
	struct module *owner;		/* pinned while the channel exists */
	void *priv;
	struct work_struct work;	/* delivers rxq to ops->recv */
	struct list_head notify_node;	/* pair->rx_notify, pair->rx_mutex */
	bool notify_queued;		/* on pair->rx_notify (pair->rx_mutex) */
	struct list_head svc_node;	/* a user listener's accept queue */

	struct kt_chan_stats stats;
};

/* A name a listener serves: a user-space file or a kernel service. */
struct kt_service {
	struct list_head node;		/* kt_services, under kt_services_lock */
	char name[KT_NAME_MAX + 1];
	const struct kt_service_ops *ops;	/* NULL: user-space listener */
	void *priv;
	spinlock_t lock;		/* chans, backlog */
	struct list_head chans;		/* user: the accept queue */
	unsigned int backlog;		/* user: channels in the accept queue */
	wait_queue_head_t wq;		/* user: accept() and poll() */
};

struct kt_dev_stats {
	atomic64_t tx_msgs;
	atomic64_t tx_bytes;
	atomic64_t rx_msgs;
	atomic64_t rx_bytes;
	atomic64_t credit_stalls;
	atomic64_t malformed;
	atomic64_t rx_discarded;	/* late data for a closing channel */
	atomic64_t tx_dropped;		/* replies dropped: tx queue stuck */
	atomic64_t resets;
	atomic64_t opens_in;		/* host-initiated channels accepted */
	atomic64_t opens_out;		/* guest-initiated channels opened */
	atomic64_t rings_broken;	/* virtqueues the device broke */
	atomic64_t rx_len_clamped;	/* used length beyond the rx buffer */
	atomic64_t opens_refused;	/* host OPENs answered with OPEN_ERR */
	atomic64_t config_changes;	/* config-change interrupts (ignored) */
	atomic64_t wrong_pair;		/* channel messages on another pair */
};

/* Reassembly of a fragmented DATA message (SPEC section 4). */
struct kt_reasm {
	struct kt_chan *ch;		/* NULL when idle; reference held */
	struct kt_msg *msg;
	unsigned int slots;		/* chained msg: room for this many bufs */
	u32 seq;
	u32 msg_len;
	u32 got;
	u32 buf_alloc;
	u32 fwd_cnt;
};

/*
 * One rx/tx queue pair (SPEC 1.4): its queues and everything about them
 * that a pair's rx run or tx path changes. Pair 0 is queues 0 and 1.
 */
struct kt_pair {
	struct kt_dev *kd;
	unsigned int index;
	struct virtqueue *rx_vq;
	struct virtqueue *tx_vq;

	struct mutex rx_mutex;		/* rx side: rx_posted .. unknown_answered */
	unsigned int rx_posted;		/* rx buffers in the ring */
	struct work_struct rx_work;	/* the rx queue */
	struct list_head rx_notify;	/* channels to wake after this rx run */
	struct delayed_work rx_retry;	/* rx buffers could not be posted */
	struct kt_reasm reasm;
	u32 unknown_answered;		/* last unknown id we sent CLOSE for */

	spinlock_t tx_lock;		/* tx side: tx_live .. tx_switch */
	bool tx_live;
	struct list_head tx_pending;	/* replies, LISTEN: no channel; first */
	struct list_head tx_active;	/* channels with ch->tx_pending, in turn */
	unsigned int tx_queued;		/* messages waiting, all lists */
	unsigned int replies_pending;	/* of them: replies without a channel */
	unsigned int ctrl_queued;	/* of them: not DATA (LISTEN too) */
	unsigned int tx_ring_chans;	/* channels' messages in the ring */
	u32 tx_last_id;			/* channel of the last message added */
	unsigned long tx_switch;	/* jiffies: the channel added changed */
	struct work_struct tx_work;	/* the tx interrupt came */
	struct delayed_work tx_retry;	/* lazy reaping; a failed add */
	atomic_t tx_waiters;		/* channels with tx_wait set */
};

struct kt_dev {
	struct kref ref;
	struct virtio_device *vdev;
	struct virtqueue *ev_vq;
	struct kt_pair *pairs;		/* max_pairs of them */
	unsigned int max_pairs;		/* pairs allocated (fixed at probe) */
	unsigned int npairs;		/* pairs in use: 1..max_pairs */

	/* Config space, read once at probe and clamped (SPEC 1.3). */
	u32 max_msg_size;
	u32 max_channels;
	u32 rx_buf_size;
	u32 guest_id;
	u32 max_queue_pairs;		/* 1 without KT_F_MULTIQUEUE */
	u32 buf_alloc;			/* receive window we give each channel */
	size_t tx_max_seg;		/* largest tx scatterlist entry */
	bool guest_listen;		/* KT_F_GUEST_LISTEN negotiated */
	bool listen_notify;		/* KT_F_LISTEN_NOTIFY negotiated */

	bool vqs_up;			/* between kt_vqs_start and _stop */
	bool stopping;			/* kt_vqs_stop broke the queues */
	atomic_t recover_queued;	/* recover_work queued, not finished */
	struct work_struct recover_work; /* a queue broke: reset the device */
	unsigned long recover_start;	/* jiffies: start of the window */
	unsigned int recoveries;	/* resets in the window */
	struct rw_semaphore rx_sem;	/* see Locking; guards rx_live */
	bool rx_live;
	struct kt_ev_buf *ev_bufs;	/* KT_EV_BUFS event buffers */
	struct work_struct ev_work;	/* the event queue */
	struct list_head rx_pool;	/* spare rx buffers, kt_rx_pool_lock */
	unsigned int rx_pool_len;
	unsigned int rx_pool_max;
	bool rx_pool_open;		/* between kt_vqs_start and _stop */

	struct xarray chans;		/* id -> struct kt_chan (holds a ref) */
	unsigned long chan_gen;		/* transport resets seen (xa_lock) */
	u32 next_id;
	atomic_t nchan;
	atomic_t nclosing;		/* channels in KT_CH_CLOSE_SENT */
	unsigned int max_closing;	/* bound on nclosing */

	struct kt_dev_stats stats;
};

/* The pair a channel the driver opens now goes on (SPEC 1.4). */
static inline struct kt_pair *kt_pair_local(struct kt_dev *kd)
{
	unsigned int n = READ_ONCE(kd->npairs);

	return &kd->pairs[raw_smp_processor_id() % max(n, 1U)];
}

/* One message to send: header followed by the payload. */
struct kt_txbuf {
	struct list_head node;		/* a pending list, or a done list */
	struct kt_chan *ch;		/* reference; NULL: reply or LISTEN */
	bool reply;			/* counted in kd->replies_pending */
	u32 cost;			/* DATA: credit charged to ch->tx_inflight */
	u32 len;			/* payload bytes */
	unsigned int nsg;
	struct scatterlist *sg;
	struct scatterlist sg_inline;
	struct kt_hdr hdr;
	u8 data[];
};

/* kt_main.c */
extern struct workqueue_struct *kt_wq;
void kt_vq_broken(struct kt_dev *kd);
void kt_recover_work(struct work_struct *work);
extern struct workqueue_struct *kt_cb_wq;
struct kt_dev *kt_dev_get_active(void);
void kt_dev_put(struct kt_dev *kd);

/* kt_vq.c: virtqueues */
int kt_vqs_start(struct kt_dev *kd);
void kt_vqs_stop(struct kt_dev *kd);
bool kt_vqs_broken(struct kt_dev *kd);
void kt_pair_init(struct kt_dev *kd, struct kt_pair *p, unsigned int index);
void kt_ev_work(struct work_struct *work);
struct kt_txbuf *kt_txbuf_alloc(struct kt_dev *kd, size_t len, gfp_t gfp);
void kt_txbuf_free(struct kt_txbuf *txb);
bool kt_pair_tx_live(struct kt_pair *p);
int kt_tx_queue_reply(struct kt_pair *p, u32 id, u16 type, u32 arg);
int kt_tx_queue_listen(struct kt_dev *kd, u16 type, const char *name);
int kt_tx_queue_ctrl(struct kt_chan *ch, u16 type, u32 arg,
		     const void *payload, u32 len);
int kt_tx_queue_data(struct kt_chan *ch, struct kt_txbuf *txb, bool *stalled);
bool kt_chan_can_send(struct kt_chan *ch, u32 cost);
void kt_tx_purge(struct kt_dev *kd, unsigned long keep_gen);
void kt_msg_free(struct kt_dev *kd, struct kt_msg *msg);

/* kt_rx.c: validation and dispatch of device messages */
bool kt_rx_buf(struct kt_pair *p, void *buf, u32 used);
void kt_rx_bad_len(struct kt_pair *p, u32 used);
void kt_rx_event(struct kt_dev *kd, const struct kt_hdr *hdr, u32 used);
bool kt_rx_event_is_reset(const struct kt_hdr *hdr, u32 used);
void kt_reasm_abort(struct kt_pair *p, bool broken);
void kt_rx_notify_flush(struct kt_pair *p);

/* kt_chan.c: channels, credit, services */
extern struct mutex kt_services_lock;
struct kt_chan *kt_chan_new(struct kt_dev *kd, const char *name);
void kt_chan_put(struct kt_chan *ch);
bool kt_chan_transition(struct kt_chan *ch, enum kt_ch_event ev, int err);
const char *kt_ch_state_name(enum kt_ch_state s);
struct kt_chan *kt_chan_lookup(struct kt_dev *kd, u32 id);
int kt_chan_insert_local(struct kt_chan *ch);
int kt_chan_insert_remote(struct kt_chan *ch, u32 id);
void kt_chan_unlist(struct kt_chan *ch);
void kt_chan_table_drop(struct kt_chan *ch);
void kt_chan_notify(struct kt_chan *ch);
int kt_chan_connect(struct kt_chan *ch, bool nonblock);
int kt_chan_send(struct kt_chan *ch, struct kt_txbuf *txb, bool nonblock);
void kt_chan_consumed(struct kt_chan *ch, u32 cost);
void kt_chan_dequeue(struct kt_chan *ch, struct kt_msg *msg);
void kt_chan_shutdown(struct kt_chan *ch, u32 wire_err);
void kt_chan_release(struct kt_chan *ch);
void kt_chans_reset(struct kt_dev *kd, bool all);
int kt_errno_from_wire(u32 arg);
int kt_check_name(const char *name, size_t len);
struct kt_service *kt_service_find(const char *name);
int kt_service_add(struct kt_service *svc);
void kt_service_del(struct kt_service *svc);
void kt_listen_announce(struct kt_dev *kd);
void kt_listen_forget(struct kt_dev *kd);

/* kt_api.c */
void kt_chan_work(struct work_struct *work);

/* kt_cdev.c */
int kt_cdev_register(void);
void kt_cdev_unregister(void);

/* kt_sysfs.c */
extern const struct attribute_group kt_attr_group;

#endif /* KT_PRIV_H */
