// SPDX-License-Identifier: GPL-2.0
/*
 * kerntransport counters in sysfs: the "kerntransport" attribute group
 * under the virtio device (/sys/bus/virtio/devices/virtioN/kerntransport/):
 * one file per device counter or config value, and "channels", one line
 * per listed channel, bounded to PAGE_SIZE. Read-only; owns no state.
 */
#include <linux/device.h>
#include <linux/sysfs.h>
#include <linux/virtio.h>

#include "kt_priv.h"

static struct kt_dev *kt_dev_of(struct device *dev)
{
	return dev_to_virtio(dev)->priv;
}

static ssize_t kt_emit_stat(char *buf, atomic64_t *v)
{
	return sysfs_emit(buf, "%lld\n", (long long)atomic64_read(v));
}

static ssize_t tx_msgs_show(struct device *dev, struct device_attribute *attr,
			    char *buf)
{
	return kt_emit_stat(buf, &kt_dev_of(dev)->stats.tx_msgs);
}
static DEVICE_ATTR_RO(tx_msgs);

static ssize_t tx_bytes_show(struct device *dev, struct device_attribute *attr,
			     char *buf)
{
	return kt_emit_stat(buf, &kt_dev_of(dev)->stats.tx_bytes);
}
static DEVICE_ATTR_RO(tx_bytes);

static ssize_t rx_msgs_show(struct device *dev, struct device_attribute *attr,
			    char *buf)
{
	return kt_emit_stat(buf, &kt_dev_of(dev)->stats.rx_msgs);
}
static DEVICE_ATTR_RO(rx_msgs);

static ssize_t rx_bytes_show(struct device *dev, struct device_attribute *attr,
			     char *buf)
{
	return kt_emit_stat(buf, &kt_dev_of(dev)->stats.rx_bytes);
}
static DEVICE_ATTR_RO(rx_bytes);

static ssize_t credit_stalls_show(struct device *dev, struct device_attribute *attr,
				  char *buf)
{
	return kt_emit_stat(buf, &kt_dev_of(dev)->stats.credit_stalls);
}
static DEVICE_ATTR_RO(credit_stalls);

static ssize_t malformed_show(struct device *dev, struct device_attribute *attr,
			      char *buf)
{
	return kt_emit_stat(buf, &kt_dev_of(dev)->stats.malformed);
}
static DEVICE_ATTR_RO(malformed);

static ssize_t rx_discarded_show(struct device *dev, struct device_attribute *attr,
				 char *buf)
{
	return kt_emit_stat(buf, &kt_dev_of(dev)->stats.rx_discarded);
}
static DEVICE_ATTR_RO(rx_discarded);

static ssize_t tx_dropped_show(struct device *dev, struct device_attribute *attr,
			       char *buf)
{
	return kt_emit_stat(buf, &kt_dev_of(dev)->stats.tx_dropped);
}
static DEVICE_ATTR_RO(tx_dropped);

static ssize_t resets_show(struct device *dev, struct device_attribute *attr,
			   char *buf)
{
	return kt_emit_stat(buf, &kt_dev_of(dev)->stats.resets);
}
static DEVICE_ATTR_RO(resets);

static ssize_t opens_in_show(struct device *dev, struct device_attribute *attr,
			     char *buf)
{
	return kt_emit_stat(buf, &kt_dev_of(dev)->stats.opens_in);
}
static DEVICE_ATTR_RO(opens_in);

static ssize_t opens_out_show(struct device *dev, struct device_attribute *attr,
			      char *buf)
{
	return kt_emit_stat(buf, &kt_dev_of(dev)->stats.opens_out);
}
static DEVICE_ATTR_RO(opens_out);

static ssize_t rings_broken_show(struct device *dev,
				 struct device_attribute *attr, char *buf)
{
	return kt_emit_stat(buf, &kt_dev_of(dev)->stats.rings_broken);
}
static DEVICE_ATTR_RO(rings_broken);

static ssize_t rx_len_clamped_show(struct device *dev,
				   struct device_attribute *attr, char *buf)
{
	return kt_emit_stat(buf, &kt_dev_of(dev)->stats.rx_len_clamped);
}
static DEVICE_ATTR_RO(rx_len_clamped);

static ssize_t opens_refused_show(struct device *dev,
				  struct device_attribute *attr, char *buf)
{
	return kt_emit_stat(buf, &kt_dev_of(dev)->stats.opens_refused);
}
static DEVICE_ATTR_RO(opens_refused);

static ssize_t config_changes_show(struct device *dev,
				   struct device_attribute *attr, char *buf)
{
	return kt_emit_stat(buf, &kt_dev_of(dev)->stats.config_changes);
}
static DEVICE_ATTR_RO(config_changes);

static ssize_t wrong_pair_show(struct device *dev,
			       struct device_attribute *attr, char *buf)
{
	return kt_emit_stat(buf, &kt_dev_of(dev)->stats.wrong_pair);
}
static DEVICE_ATTR_RO(wrong_pair);

static ssize_t queue_pairs_show(struct device *dev,
				struct device_attribute *attr, char *buf)
{
	return sysfs_emit(buf, "%u\n", READ_ONCE(kt_dev_of(dev)->npairs));
}
static DEVICE_ATTR_RO(queue_pairs);

static ssize_t max_queue_pairs_show(struct device *dev,
				    struct device_attribute *attr, char *buf)
{
	return sysfs_emit(buf, "%u\n", kt_dev_of(dev)->max_queue_pairs);
}
static DEVICE_ATTR_RO(max_queue_pairs);

static ssize_t max_msg_size_show(struct device *dev, struct device_attribute *attr,
				 char *buf)
{
	return sysfs_emit(buf, "%u\n", kt_dev_of(dev)->max_msg_size);
}
static DEVICE_ATTR_RO(max_msg_size);

static ssize_t max_channels_show(struct device *dev, struct device_attribute *attr,
				 char *buf)
{
	return sysfs_emit(buf, "%u\n", kt_dev_of(dev)->max_channels);
}
static DEVICE_ATTR_RO(max_channels);

static ssize_t rx_buf_size_show(struct device *dev, struct device_attribute *attr,
				char *buf)
{
	return sysfs_emit(buf, "%u\n", kt_dev_of(dev)->rx_buf_size);
}
static DEVICE_ATTR_RO(rx_buf_size);

static ssize_t guest_id_show(struct device *dev, struct device_attribute *attr,
			     char *buf)
{
	return sysfs_emit(buf, "%u\n", kt_dev_of(dev)->guest_id);
}
static DEVICE_ATTR_RO(guest_id);

static ssize_t buf_alloc_show(struct device *dev, struct device_attribute *attr,
			      char *buf)
{
	return sysfs_emit(buf, "%u\n", kt_dev_of(dev)->buf_alloc);
}
static DEVICE_ATTR_RO(buf_alloc);

static ssize_t open_channels_show(struct device *dev,
				  struct device_attribute *attr, char *buf)
{
	return sysfs_emit(buf, "%d\n", atomic_read(&kt_dev_of(dev)->nchan));
}
static DEVICE_ATTR_RO(open_channels);

/* Messages waiting for ring room, all pairs together. */
static ssize_t tx_pending_show(struct device *dev,
			       struct device_attribute *attr, char *buf)
{
	struct kt_dev *kd = kt_dev_of(dev);
	unsigned int i, n = 0;

	for (i = 0; i < kd->max_pairs; i++)
		n += READ_ONCE(kd->pairs[i].tx_queued);
	return sysfs_emit(buf, "%u\n", n);
}
static DEVICE_ATTR_RO(tx_pending);

/* rx buffers in the rings, all pairs together (each tops up to a target). */
static ssize_t rx_posted_show(struct device *dev,
			      struct device_attribute *attr, char *buf)
{
	struct kt_dev *kd = kt_dev_of(dev);
	unsigned int i, n = 0;

	for (i = 0; i < kd->max_pairs; i++)
		n += READ_ONCE(kd->pairs[i].rx_posted);
	return sysfs_emit(buf, "%u\n", n);
}
static DEVICE_ATTR_RO(rx_posted);

/* The word for a channel state in "channels" (docs/guest-driver.md). */
static const char *kt_state_name(enum kt_ch_state s)
{
	switch (s) {
	case KT_CH_NEW:
	case KT_CH_CONNECTING:
	case KT_CH_ABANDONED:
		return "connecting";
	case KT_CH_OPEN:
		return "open";
	case KT_CH_CLOSE_SENT:
		return "closing";
	case KT_CH_CLOSE_RCVD:
	case KT_CH_CLOSED:
		return "closed";
	case KT_CH_RESET:
		return "reset";
	}
	return "?";
}

/*
 * One line per channel: id state tx_msgs tx_bytes rx_msgs rx_bytes
 * credit_stalls malformed rx_queued_bytes name. The name is last because it
 * may contain spaces. A final "..." line says the list was cut at PAGE_SIZE.
 */
static ssize_t channels_show(struct device *dev,
			     struct device_attribute *attr, char *buf)
{
	struct kt_dev *kd = kt_dev_of(dev);
	char line[256];
	struct kt_chan *ch;
	unsigned long id;
	int len = 0, n;

	xa_lock(&kd->chans);
	xa_for_each(&kd->chans, id, ch) {
		spin_lock(&ch->lock);
		n = scnprintf(line, sizeof(line),
			      "%#x %s %llu %llu %llu %llu %llu %llu %u %s\n",
			      ch->id, kt_state_name(ch->state), ch->stats.tx_msgs,
			      ch->stats.tx_bytes, ch->stats.rx_msgs,
			      ch->stats.rx_bytes, ch->stats.credit_stalls,
			      ch->stats.malformed, ch->rx_cnt - ch->fwd_cnt,
			      ch->name);
		spin_unlock(&ch->lock);
		if (len + n >= PAGE_SIZE - 4) {
			len += sysfs_emit_at(buf, len, "...\n");
			break;
		}
		len += sysfs_emit_at(buf, len, "%s", line);
	}
	xa_unlock(&kd->chans);
	return len;
}
static DEVICE_ATTR_RO(channels);

static struct attribute *kt_attrs[] = {
	&dev_attr_tx_msgs.attr,
	&dev_attr_tx_bytes.attr,
	&dev_attr_rx_msgs.attr,
	&dev_attr_rx_bytes.attr,
	&dev_attr_credit_stalls.attr,
	&dev_attr_malformed.attr,
	&dev_attr_rx_discarded.attr,
	&dev_attr_tx_dropped.attr,
	&dev_attr_resets.attr,
	&dev_attr_opens_in.attr,
	&dev_attr_opens_out.attr,
	&dev_attr_open_channels.attr,
	&dev_attr_rings_broken.attr,
	&dev_attr_tx_pending.attr,
	&dev_attr_rx_posted.attr,
	&dev_attr_rx_len_clamped.attr,
	&dev_attr_opens_refused.attr,
	&dev_attr_config_changes.attr,
	&dev_attr_wrong_pair.attr,
	&dev_attr_queue_pairs.attr,
	&dev_attr_max_queue_pairs.attr,
	&dev_attr_max_msg_size.attr,
	&dev_attr_max_channels.attr,
	&dev_attr_rx_buf_size.attr,
	&dev_attr_guest_id.attr,
	&dev_attr_buf_alloc.attr,
	&dev_attr_channels.attr,
	NULL,
};

const struct attribute_group kt_attr_group = {
	.name = "kerntransport",
	.attrs = kt_attrs,
};
