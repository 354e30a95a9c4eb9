// SPDX-License-Identifier: GPL-2.0
/*
 * kerntransport: module entry and the virtio driver binding.
 *
 * Owns the device object's life: probe and remove, which share queue setup
 * and teardown (kt_vqs_start/kt_vqs_stop) with freeze and restore; reading
 * and clamping the untrusted config space; and the "active device" that
 * /dev/kerntransport and the in-kernel API use. Queue handling is in
 * kt_vq.c, the protocol in kt_rx.c and kt_chan.c.
 */
#include <linux/module.h>
#include <linux/random.h>
#include <linux/slab.h>
#include <linux/virtio.h>
#include <linux/virtio_config.h>

#include "kt_priv.h"

static unsigned int window = 256 * 1024;
module_param(window, uint, 0444);
MODULE_PARM_DESC(window,
		 "Receive window per channel in bytes (at least 2 * (max_msg_size + 32))");

static unsigned int max_pairs;
module_param(max_pairs, uint, 0444);
MODULE_PARM_DESC(max_pairs,
		 "Most rx/tx queue pairs to use (0: one per possible CPU, up to what the device offers)");

/*
 * kt_wq runs the virtqueue work (rx, tx); kt_cb_wq runs kernel endpoints'
 * callbacks, which may sleep in kt_send() waiting for the host's credit:
 * however many of them block, receiving never waits behind them.
 */
struct workqueue_struct *kt_wq;
struct workqueue_struct *kt_cb_wq;

/* The one device /dev/kerntransport and kt_open() use. */
static DEFINE_MUTEX(kt_active_lock);
static struct kt_dev *kt_active;

/**
 * kt_dev_get_active() - reference the device new channels go to
 *
 * Return: the device with a reference held (drop it with kt_dev_put()), or
 * NULL if no kerntransport device is bound.
 */
struct kt_dev *kt_dev_get_active(void)
{
	struct kt_dev *kd;

	mutex_lock(&kt_active_lock);
	kd = kt_active;
	if (kd)
		kref_get(&kd->ref);
	mutex_unlock(&kt_active_lock);
	return kd;
}

static void kt_dev_release(struct kref *ref)
{
	struct kt_dev *kd = container_of(ref, struct kt_dev, ref);

	xa_destroy(&kd->chans);
	kfree(kd->pairs);
	kfree(kd->ev_bufs);
	kfree(kd);
}

void kt_dev_put(struct kt_dev *kd)
{
	kref_put(&kd->ref, kt_dev_release);
}

/**
 * kt_vq_broken() - a virtqueue is broken: schedule recovery
 * @kd: the device
 *
 * The virtio core marks a queue broken when the device hands back an id
 * the driver did not post (or already got back): nothing more comes out
 * of it, so no buffer is parsed twice. Every channel then fails at once
 * and the device is reset and restarted, from a work item. Any context.
 */
void kt_vq_broken(struct kt_dev *kd)
{
	if (READ_ONCE(kd->stopping) || atomic_xchg(&kd->recover_queued, 1))
		return;
	atomic64_inc(&kd->stats.rings_broken);
	kref_get(&kd->ref);
	get_device(&kd->vdev->dev);
	queue_work(kt_wq, &kd->recover_work);
}

/*
 * A device that breaks its rings again after every reset is not reset
 * for ever: past KT_RECOVER_MAX resets within KT_RECOVER_WINDOW_S seconds
 * it is left stopped (every channel failed) until it is unbound and bound
 * again (or the system resumes: kt_restore() starts it).
 */
#define KT_RECOVER_MAX		8
#define KT_RECOVER_WINDOW_S	10

/* May @kd be reset once more? Device lock held. */
static bool kt_recover_allowed(struct kt_dev *kd)
{
	if (!kd->recoveries ||
	    time_after(jiffies, kd->recover_start + KT_RECOVER_WINDOW_S * HZ)) {
		kd->recover_start = jiffies;
		kd->recoveries = 0;
	}
	return ++kd->recoveries <= KT_RECOVER_MAX;
}

#ifdef CONFIG_PM_SLEEP
/* Reset, renegotiate, kt_freeze() + kt_restore(). */
static int kt_reset_device(struct kt_dev *kd)
{
	int err = virtio_device_freeze(kd->vdev);

	return err ? err : virtio_device_restore(kd->vdev);
}
#else
/* virtio_device_freeze() needs PM_SLEEP: channels fail, rebind to recover. */
static int kt_reset_device(struct kt_dev *kd)
{
	kt_vqs_stop(kd);
	return 0;
}
#endif

void kt_recover_work(struct work_struct *work)
{
	struct kt_dev *kd = container_of(work, struct kt_dev, recover_work);
	struct virtio_device *vdev = kd->vdev;
	int err;

	/* Excludes remove, probe, freeze and restore; we are still bound? */
	device_lock(&vdev->dev);
	if (vdev->priv == kd && kd->vqs_up && !kt_recover_allowed(kd)) {
		dev_err_ratelimited(&vdev->dev,
				    "virtqueues broken %d times in %d s: device left stopped, rebind it to retry\n",
				    KT_RECOVER_MAX + 1, KT_RECOVER_WINDOW_S);
		kt_vqs_stop(kd);
	} else if (vdev->priv == kd && kd->vqs_up) {
		dev_warn_ratelimited(&vdev->dev,
				     "virtqueue broken by the device: resetting it\n");
		err = kt_reset_device(kd);
		if (err)
			dev_err_ratelimited(&vdev->dev,
					    "device reset failed: %d\n", err);
	}
	atomic_set(&kd->recover_queued, 0);
	/*
	 * A break the device made while we reset it was seen with
	 * recover_queued still set and dropped: the queue would stay dead
	 * with nobody to recover it. Look again now that a new break queues
	 * work (seen under load: breakstorm in run.sh's hostile scenario).
	 */
	if (vdev->priv == kd && kt_vqs_broken(kd))
		kt_vq_broken(kd);
	device_unlock(&vdev->dev);
	put_device(&vdev->dev);
	kt_dev_put(kd);
}

/* SPEC 1.3: config values are untrusted; clamp them into range. */
static void kt_read_config(struct kt_dev *kd)
{
	struct virtio_device *vdev = kd->vdev;
	u32 v;

	virtio_cread_le(vdev, struct kt_config, max_msg_size, &v);
	if (v == 0 || v > KT_MAX_MSG_SIZE_LIMIT) {
		dev_warn(&vdev->dev, "max_msg_size %u out of range, clamped\n",
			 v);
		v = clamp_t(u32, v, 1, KT_MAX_MSG_SIZE_LIMIT);
	}
	kd->max_msg_size = v;

	virtio_cread_le(vdev, struct kt_config, max_channels, &v);
	if (v == 0 || v > KT_MAX_CHANNELS_CAP) {
		dev_warn(&vdev->dev, "max_channels %u out of range, clamped\n",
			 v);
		v = clamp_t(u32, v, 1, KT_MAX_CHANNELS_CAP);
	}
	kd->max_channels = v;

	virtio_cread_le(vdev, struct kt_config, rx_buf_size, &v);
	if (v < KT_MIN_RX_BUF_SIZE || v > KT_RX_BUF_SIZE_MAX) {
		dev_warn(&vdev->dev, "rx_buf_size %u out of range, clamped\n",
			 v);
		v = clamp_t(u32, v, KT_MIN_RX_BUF_SIZE, KT_RX_BUF_SIZE_MAX);
	}
	kd->rx_buf_size = v;

	virtio_cread_le(vdev, struct kt_config, guest_id, &v);
	kd->guest_id = v;

	/* Read only with the bit: the device may expose 16 bytes (SPEC 1.3). */
	kd->max_queue_pairs = 1;
	if (virtio_has_feature(vdev, KT_F_MULTIQUEUE)) {
		u16 n;

		virtio_cread_le(vdev, struct kt_config, max_queue_pairs, &n);
		if (n == 0 || n > KT_MAX_QUEUE_PAIRS) {
			dev_warn(&vdev->dev,
				 "max_queue_pairs %u out of range, clamped\n",
				 n);
			n = clamp_t(u16, n, 1, KT_MAX_QUEUE_PAIRS);
		}
		kd->max_queue_pairs = n;
	}

	/*
	 * SPEC 5 needs buf_alloc >= max_msg_size + 32 so any message fits.
	 * Twice that guarantees progress without CREDIT_REQUEST: a sender
	 * blocked on a largest message has more than half the window in
	 * flight, so draining it crosses the half-window update threshold.
	 */
	/* A peer that never answers CLOSE may pin at most this many ids. */
	kd->max_closing = max(1U, kd->max_channels / 4);

	kd->buf_alloc = max_t(u32, window,
			      2 * (kd->max_msg_size + KT_MSG_OVERHEAD));
}

static int kt_probe(struct virtio_device *vdev)
{
	struct kt_dev *kd;
	unsigned int i;
	int err;

	if (!virtio_has_feature(vdev, VIRTIO_F_VERSION_1)) {
		dev_err(&vdev->dev, "VIRTIO_F_VERSION_1 not offered\n");
		return -ENODEV;
	}
	if (!vdev->config->get) {
		dev_err(&vdev->dev, "config space access not supported\n");
		return -EINVAL;
	}

	/* Held for the whole probe: two devices may probe at once. */
	mutex_lock(&kt_active_lock);
	if (kt_active) {
		dev_err(&vdev->dev, "only one kerntransport device is supported\n");
		err = -EBUSY;
		goto err_unlock;
	}

	kd = kzalloc(sizeof(*kd), GFP_KERNEL);
	if (!kd) {
		err = -ENOMEM;
		goto err_unlock;
	}
	kref_init(&kd->ref);
	kd->vdev = vdev;
	init_rwsem(&kd->rx_sem);
	INIT_WORK(&kd->ev_work, kt_ev_work);
	INIT_WORK(&kd->recover_work, kt_recover_work);
	xa_init_flags(&kd->chans, XA_FLAGS_ALLOC);
	/* Ids are not predictable from the start (SPEC 3: any start). */
	kd->next_id = get_random_u32() & (KT_CHAN_DEVICE_BIT - 1);
	vdev->priv = kd;

	kd->ev_bufs = kcalloc(KT_EV_BUFS, sizeof(*kd->ev_bufs), GFP_KERNEL);
	if (!kd->ev_bufs) {
		err = -ENOMEM;
		goto err_put;
	}

	kt_read_config(kd);
	/* SPEC 1.4: a pair per CPU at most; fewer if the transport says so. */
	kd->max_pairs = min(kd->max_queue_pairs, num_possible_cpus());
	if (max_pairs)
		kd->max_pairs = min(kd->max_pairs, max_pairs);
	kd->max_pairs = max(kd->max_pairs, 1U);
	kd->pairs = kcalloc(kd->max_pairs, sizeof(*kd->pairs), GFP_KERNEL);
	if (!kd->pairs) {
		err = -ENOMEM;
		goto err_put;
	}
	for (i = 0; i < kd->max_pairs; i++)
		kt_pair_init(kd, &kd->pairs[i], i);
	kd->npairs = 1;
	/* DMA may limit segments (swiotlb); never below a page. */
	kd->tx_max_seg = max_t(size_t, virtio_max_dma_size(vdev), PAGE_SIZE);
	kd->guest_listen = virtio_has_feature(vdev, KT_F_GUEST_LISTEN);
	kd->listen_notify = virtio_has_feature(vdev, KT_F_LISTEN_NOTIFY);

	err = kt_vqs_start(kd);
	if (err)
		goto err_put;

	err = sysfs_create_group(&vdev->dev.kobj, &kt_attr_group);
	if (err)
		goto err_stop;

	kt_active = kd;
	mutex_unlock(&kt_active_lock);

	dev_info(&vdev->dev,
		 "guest %u: max_msg_size %u, max_channels %u, rx_buf_size %u, window %u, queue pairs %u%s\n",
		 kd->guest_id, kd->max_msg_size, kd->max_channels,
		 kd->rx_buf_size, kd->buf_alloc, kd->npairs,
		 kd->guest_listen ? ", host-initiated channels" : "");
	return 0;

err_stop:
	kt_vqs_stop(kd);
err_put:
	vdev->priv = NULL;
	kt_dev_put(kd);
err_unlock:
	mutex_unlock(&kt_active_lock);
	return err;
}

static void kt_remove(struct virtio_device *vdev)
{
	struct kt_dev *kd = vdev->priv;

	mutex_lock(&kt_active_lock);
	if (kt_active == kd)
		kt_active = NULL;
	mutex_unlock(&kt_active_lock);

	sysfs_remove_group(&vdev->dev.kobj, &kt_attr_group);
	kt_vqs_stop(kd);
	vdev->priv = NULL;
	/* Channels still held by files keep kd (not vdev) until closed. */
	kt_dev_put(kd);
}

/*
 * Config values are fixed at probe, so a change is only counted: a device
 * that storms us with config interrupts costs one atomic increment each.
 * Hard interrupt context.
 */
static void kt_config_changed(struct virtio_device *vdev)
{
	struct kt_dev *kd = vdev->priv;

	if (kd)
		atomic64_inc(&kd->stats.config_changes);
	dev_dbg_ratelimited(&vdev->dev,
			    "config change ignored: values are fixed at probe\n");
}

#ifdef CONFIG_PM_SLEEP
static int kt_freeze(struct virtio_device *vdev)
{
	kt_vqs_stop(vdev->priv);
	return 0;
}

static int kt_restore(struct virtio_device *vdev)
{
	return kt_vqs_start(vdev->priv);
}
#endif

static const struct virtio_device_id kt_id_table[] = {
	{ KT_VIRTIO_ID, VIRTIO_DEV_ANY_ID },
	{ 0 },
};
MODULE_DEVICE_TABLE(virtio, kt_id_table);

static const unsigned int kt_features[] = {
	KT_F_GUEST_LISTEN,
	KT_F_LISTEN_NOTIFY,
	KT_F_MULTIQUEUE,
};

static struct virtio_driver kt_driver = {
	.driver.name = KBUILD_MODNAME,
	.id_table = kt_id_table,
	.feature_table = kt_features,
	.feature_table_size = ARRAY_SIZE(kt_features),
	.probe = kt_probe,
	.remove = kt_remove,
	.config_changed = kt_config_changed,
#ifdef CONFIG_PM_SLEEP
	.freeze = kt_freeze,
	.restore = kt_restore,
#endif
};

static int __init kt_init(void)
{
	int err;

	kt_wq = alloc_workqueue("kerntransport", 0, 0);
	if (!kt_wq)
		return -ENOMEM;
	kt_cb_wq = alloc_workqueue("kerntransport_cb", 0, 0);
	if (!kt_cb_wq) {
		err = -ENOMEM;
		goto err_wq;
	}

	err = kt_cdev_register();
	if (err)
		goto err_wq;

	err = register_virtio_driver(&kt_driver);
	if (err)
		goto err_cdev;
	return 0;

err_cdev:
	kt_cdev_unregister();
err_wq:
	if (kt_cb_wq)
		destroy_workqueue(kt_cb_wq);
	destroy_workqueue(kt_wq);
	return err;
}

static void __exit kt_exit(void)
{
	unregister_virtio_driver(&kt_driver);
	kt_cdev_unregister();
	destroy_workqueue(kt_cb_wq);
	destroy_workqueue(kt_wq);
}

module_init(kt_init);
module_exit(kt_exit);

MODULE_DESCRIPTION("kerntransport: host <-> guest kernel message transport over virtio");
MODULE_LICENSE("GPL");
