/* SPDX-License-Identifier: (GPL-2.0 WITH Linux-syscall-note) OR BSD-3-Clause */
/*
 * kerntransport wire protocol and user-space ABI.
 *
 * This header owns the byte layout shared by the device (kt-vhost-device),
 * the guest driver (kerntransport.ko) and guest user space: the virtio
 * device ID, feature bits, queue numbers, config space, the message header,
 * message types, error codes, limits, and the /dev/kerntransport ioctls.
 * proto/SPEC.md is normative; the Rust crate kt-proto mirrors every value
 * here and a test (proto/tests/c_layout.rs) proves that they agree.
 *
 * It builds in the kernel and, through <linux/types.h> and <linux/ioctl.h>,
 * in user space.
 */
#ifndef _UAPI_LINUX_KERNTRANSPORT_H
#define _UAPI_LINUX_KERNTRANSPORT_H

#include <linux/types.h>
#include <linux/ioctl.h>

/* virtio device ID (unassigned in virtio 1.4); PCI device ID 0x1040 + 60. */
#define KT_VIRTIO_ID			60

/* Device-specific feature bits (virtio bits 0..23). */
/* The device may open channels towards the driver (host-initiated). */
#define KT_F_GUEST_LISTEN		0
/* The driver announces its listeners' names (KT_MSG_LISTEN/UNLISTEN). */
#define KT_F_LISTEN_NOTIFY		1
/* More than one rx/tx queue pair (struct kt_config.max_queue_pairs). */
#define KT_F_MULTIQUEUE			2
#define KT_MAX_QUEUE_PAIRS		16

/* Virtqueues. */
#define KT_VQ_RX			0	/* device -> driver data */
#define KT_VQ_TX			1	/* driver -> device data */
#define KT_VQ_EVENT			2	/* device -> driver events */
#define KT_NUM_VQS			3	/* without KT_F_MULTIQUEUE */
/* Pair k >= 1 (KT_F_MULTIQUEUE): rx is queue 2k + 1, tx is 2k + 2. */
#define KT_VQ_RX_PAIR(k)		((k) ? 2 * (k) + 1 : KT_VQ_RX)
#define KT_VQ_TX_PAIR(k)		((k) ? 2 * (k) + 2 : KT_VQ_TX)
#define KT_NUM_VQS_PAIRS(n)		(1 + 2 * (n))

/* Limits. */
#define KT_HDR_SIZE			32
#define KT_NAME_MAX			63	/* service name bytes, no NUL */
#define KT_MIN_RX_BUF_SIZE		256	/* smallest rx buffer a driver posts */
#define KT_MAX_RX_BUF_SIZE		65536	/* largest rx_buf_size honoured */
#define KT_MAX_MSG_SIZE_LIMIT		(1U << 20) /* largest max_msg_size */
#define KT_DEFAULT_MAX_MSG_SIZE		65536
#define KT_DEFAULT_RX_BUF_SIZE		4096
#define KT_DEFAULT_MAX_CHANNELS		1024
/* Guest listener names a device keeps (KT_F_LISTEN_NOTIFY). */
#define KT_MAX_GUEST_LISTENERS		1024
/* Credit charged per message on top of its payload bytes. */
#define KT_MSG_OVERHEAD			KT_HDR_SIZE

/* Channel IDs: 0 is the transport itself; bit 31 set = opened by device. */
#define KT_CHAN_TRANSPORT		0U
#define KT_CHAN_DEVICE_BIT		0x80000000U

/* Message types (struct kt_hdr.type). */
#define KT_MSG_OPEN			1	/* payload: service name */
#define KT_MSG_OPEN_OK			2
#define KT_MSG_OPEN_ERR			3	/* arg: KT_ERR_* */
#define KT_MSG_DATA			4	/* payload: message (fragment) */
#define KT_MSG_CLOSE			5	/* arg: KT_ERR_* or 0 */
#define KT_MSG_CREDIT_UPDATE		6
#define KT_MSG_CREDIT_REQUEST		7
#define KT_MSG_RESET			8	/* event queue only, channel 0 */
#define KT_MSG_LISTEN			9	/* tx, channel 0; payload: name */
#define KT_MSG_UNLISTEN			10	/* tx, channel 0; payload: name */

/* Header flags (struct kt_hdr.flags). */
#define KT_HDR_F_MORE			0x0001	/* more fragments follow (rx) */
#define KT_HDR_F_KNOWN			KT_HDR_F_MORE

/* Error codes carried in kt_hdr.arg: Linux errno values. */
#define KT_ERR_OK			0
#define KT_ERR_NOENT			2	/* no such service */
#define KT_ERR_NOMEM			12	/* out of resources */
#define KT_ERR_ACCES			13	/* refused by policy */
#define KT_ERR_EXIST			17	/* channel id already in use */
#define KT_ERR_INVAL			22	/* malformed message */
#define KT_ERR_MFILE			24	/* too many channels */
#define KT_ERR_MSGSIZE			90	/* message larger than max_msg_size */
#define KT_ERR_PROTO			71	/* protocol violation */
#define KT_ERR_CONNRESET		104	/* peer went away */
#define KT_ERR_CONNREFUSED		111	/* nobody serves that name */

/*
 * Every message on rx and tx starts with this header, little-endian.
 * Event-queue buffers carry one header and no payload.
 */
struct kt_hdr {
	__le32 channel;		/* channel id */
	__le16 type;		/* KT_MSG_* */
	__le16 flags;		/* KT_HDR_F_* */
	__le32 len;		/* payload bytes after this header, this buffer */
	__le32 msg_len;		/* DATA: total message bytes; else == len */
	__le32 seq;		/* DATA: per-channel, per-direction message number */
	__le32 buf_alloc;	/* sender's receive window for this channel */
	__le32 fwd_cnt;		/* bytes of credit the sender has freed */
	__le32 arg;		/* OPEN_ERR/CLOSE: KT_ERR_*; else 0 */
};

/* Device configuration space, read-only, little-endian. */
struct kt_config {
	__le32 max_msg_size;	/* largest DATA message, either direction */
	__le32 max_channels;	/* channels open at once */
	__le32 rx_buf_size;	/* rx buffer size the driver should post */
	__le32 guest_id;	/* host-assigned id of this guest */
	__le16 max_queue_pairs;	/* KT_F_MULTIQUEUE: pairs the device serves */
	__le16 reserved;
};

/* ---- /dev/kerntransport user-space ABI ---- */

/* Service names that only guest kernel code may listen on. */
#define KT_KERNEL_NAME_PREFIX		"k."
/* Service names the device implements itself; policies cannot name them. */
#define KT_DEVICE_NAME_PREFIX		"kt."
/* The device's listing of the services this guest may open (SPEC 3.3). */
#define KT_SERVICES_NAME		"kt.services"
#define KT_LISTING_CHUNK_MAX		4096

struct kt_ioc_name {
	char name[KT_NAME_MAX + 1];	/* NUL-terminated service name */
};

struct kt_ioc_info {
	__u32 max_msg_size;	/* negotiated largest message */
	__u32 channel;		/* this endpoint's channel id, 0 if none */
	__u32 state;		/* KT_STATE_* */
	__u32 guest_id;
};

#define KT_STATE_IDLE			0
#define KT_STATE_CONNECTING		1
#define KT_STATE_OPEN			2
#define KT_STATE_LISTENING		3
#define KT_STATE_CLOSED			4

/*
 * KT_IOC_NEXT: what the next read() on a channel will return, without
 * waiting or consuming anything. Tells an empty message (KT_NEXT_F_MSG,
 * len 0) from end-of-channel (KT_NEXT_F_ENDED without KT_NEXT_F_MSG).
 */
struct kt_ioc_next {
	__u32 flags;		/* KT_NEXT_F_* */
	__u32 len;		/* KT_NEXT_F_MSG: the next message's length */
	__u32 error;		/* KT_NEXT_F_ENDED: errno read() reports once
				 * the queue is empty, 0 for EOF */
	__u32 reserved;		/* 0 */
};

#define KT_NEXT_F_MSG			0x1	/* a message is queued */
#define KT_NEXT_F_ENDED			0x2	/* no more messages will come */

/*
 * KT_IOC_SENDV / KT_IOC_RECVV: several messages per system call, in the
 * order of the array. One entry per message; @buf and @len are user
 * supplied, @flags is 0 on the way in.
 */
struct kt_ioc_msg {
	__u64 buf;		/* user pointer to the payload or buffer */
	__u32 len;		/* SENDV: message length; RECVV: in: buffer
				 * size, out: the message's length */
	__u32 flags;		/* in: 0; RECVV out: KT_MSG_F_* */
};

/* RECVV: the buffer was too small; len is the message's length, nothing
 * was copied and the message stays queued (read() would fail EMSGSIZE).
 */
#define KT_MSG_F_TRUNC			0x1

struct kt_ioc_msgvec {
	__u64 msgs;		/* user pointer to count struct kt_ioc_msg */
	__u32 count;		/* 1 .. KT_IOC_VEC_MAX */
	__u32 flags;		/* 0 */
};

/* Largest count of one KT_IOC_SENDV / KT_IOC_RECVV. */
#define KT_IOC_VEC_MAX			64

#define KT_IOC_MAGIC			'k'
/* Connect this file to a host service; blocks until OPEN_OK/OPEN_ERR. */
#define KT_IOC_CONNECT		_IOW(KT_IOC_MAGIC, 1, struct kt_ioc_name)
/* Listen on a name for host-initiated channels. */
#define KT_IOC_LISTEN		_IOW(KT_IOC_MAGIC, 2, struct kt_ioc_name)
/*
 * On a listening file: returns a new fd for the next incoming channel. The
 * argument is accept4()-style flags (O_CLOEXEC, O_NONBLOCK; pass 0).
 */
#define KT_IOC_ACCEPT		_IO(KT_IOC_MAGIC, 3)
#define KT_IOC_INFO		_IOR(KT_IOC_MAGIC, 4, struct kt_ioc_info)
/* On a channel: fills struct kt_ioc_next; ENOTCONN on other files. */
#define KT_IOC_NEXT		_IOR(KT_IOC_MAGIC, 5, struct kt_ioc_next)
/*
 * On a channel: sends the messages in order, as write() would each, and
 * returns how many were sent. Only the first may wait for credit (unless
 * O_NONBLOCK); the call stops at the first later message that does not
 * fit, or that fails. An error is returned only if no message was sent.
 */
#define KT_IOC_SENDV		_IOW(KT_IOC_MAGIC, 6, struct kt_ioc_msgvec)
/*
 * On a channel: receives up to count messages, waiting (unless O_NONBLOCK)
 * only for the first, and returns how many entries it filled: len is each
 * message's length; an entry with KT_MSG_F_TRUNC (always the last) did not
 * receive its message. 0 is end-of-channel; the close reason and other
 * errors, as read() reports them, only when no entry was filled.
 */
#define KT_IOC_RECVV		_IOW(KT_IOC_MAGIC, 7, struct kt_ioc_msgvec)

#endif /* _UAPI_LINUX_KERNTRANSPORT_H */
