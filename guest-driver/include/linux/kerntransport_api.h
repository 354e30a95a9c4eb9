/* SPDX-License-Identifier: GPL-2.0 */
/*
 * kerntransport in-kernel API.
 *
 * Lets other guest kernel modules exchange messages with host programs over
 * the kerntransport virtio device: open a channel to a host service by name
 * (kt_open), or serve host-initiated channels on a reserved "k." name
 * (kt_register_service). Messages keep their boundaries; delivery is ordered
 * and credit flow controlled. The functions are documented (kernel-doc) where
 * they are defined, in kt_api.c.
 */
#ifndef _LINUX_KERNTRANSPORT_API_H
#define _LINUX_KERNTRANSPORT_API_H

#include <linux/types.h>

struct module;

struct kt_chan;
struct kt_service;

/**
 * struct kt_chan_ops - callbacks of a kernel channel endpoint
 * @owner: the module holding the callbacks (THIS_MODULE); it stays pinned
 *	while a channel using these ops exists.
 * @recv: one whole message arrived. Runs in process context (the driver's
 *	callback workqueue, not the one that receives), never concurrently
 *	with itself or @closed for the same channel. @data is valid only
 *	during the call; the message's credit is returned to the peer when
 *	@recv returns. May sleep, may call kt_send() and kt_close() on this
 *	channel. A sleeping callback holds one of the callback workqueue's
 *	workers (256 per CPU): while that many sleep, other kernel channels'
 *	messages wait for one (receiving itself never waits).
 * @closed: the channel ended: the peer closed it (@err 0 or a positive
 *	errno the peer gave), or the transport was reset or removed
 *	(ECONNRESET). Called once, after every queued message was passed to
 *	@recv. Same context rules as @recv. The owner still has to call
 *	kt_close() to release the channel.
 */
struct kt_chan_ops {
	struct module *owner;
	void (*recv)(struct kt_chan *ch, const void *data, size_t len);
	void (*closed)(struct kt_chan *ch, int err);
};

/**
 * struct kt_service_ops - a kernel service for host-initiated channels
 * @accept: a host program opened a channel to the service. Runs in process
 *	context and should not block for long (it holds up the receive path).
 *	Return 0 to accept (the channel then uses @chan_ops; kt_chan_priv()
 *	starts as the service's priv and may be changed with
 *	kt_chan_set_priv()), or a negative errno to refuse (the host sees
 *	that errno). The channel must not be sent on before @accept returns.
 * @chan_ops: callbacks used for every accepted channel.
 */
struct kt_service_ops {
	int (*accept)(struct kt_service *svc, struct kt_chan *ch);
	const struct kt_chan_ops *chan_ops;
};

/* kt_send() flag: fail with -EAGAIN instead of waiting for credit. */
#define KT_SEND_NONBLOCK	0x1

struct kt_chan *kt_open(const char *name, const struct kt_chan_ops *ops,
			void *priv);
int kt_send(struct kt_chan *ch, const void *data, size_t len,
	    unsigned int flags);
void kt_close(struct kt_chan *ch);
void *kt_chan_priv(const struct kt_chan *ch);
void kt_chan_set_priv(struct kt_chan *ch, void *priv);
u32 kt_chan_id(const struct kt_chan *ch);
size_t kt_chan_max_msg_size(const struct kt_chan *ch);

struct kt_service *kt_register_service(const char *name,
				       const struct kt_service_ops *ops,
				       void *priv);
void kt_unregister_service(struct kt_service *svc);
void *kt_service_priv(const struct kt_service *svc);

#endif /* _LINUX_KERNTRANSPORT_API_H */
