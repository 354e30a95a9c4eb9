/*
 * Prints the layout and constants of proto/include/kerntransport.h as
 * "key value" lines, plus golden bytes of one header and one config built
 * field by field, for c_layout.rs to compare with the Rust side.
 */
#include <endian.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include "kerntransport.h"

#define P(name, val) printf("%s %llu\n", name, (unsigned long long)(val))
#define OFF(s, f) P("off." #s "." #f, offsetof(struct s, f))

static void dump(const char *name, const void *p, size_t n)
{
	const unsigned char *b = p;
	size_t i;

	printf("%s ", name);
	for (i = 0; i < n; i++)
		printf("%02x", b[i]);
	printf("\n");
}

int main(void)
{
	struct kt_hdr h;
	struct kt_config c;

	P("size.kt_hdr", sizeof(struct kt_hdr));
	P("size.kt_config", sizeof(struct kt_config));
	P("size.kt_ioc_name", sizeof(struct kt_ioc_name));
	P("size.kt_ioc_info", sizeof(struct kt_ioc_info));
	P("size.kt_ioc_next", sizeof(struct kt_ioc_next));
	P("size.kt_ioc_msg", sizeof(struct kt_ioc_msg));
	P("size.kt_ioc_msgvec", sizeof(struct kt_ioc_msgvec));
	OFF(kt_hdr, channel); OFF(kt_hdr, type); OFF(kt_hdr, flags);
	OFF(kt_hdr, len); OFF(kt_hdr, msg_len); OFF(kt_hdr, seq);
	OFF(kt_hdr, buf_alloc); OFF(kt_hdr, fwd_cnt); OFF(kt_hdr, arg);
	OFF(kt_config, max_msg_size); OFF(kt_config, max_channels);
	OFF(kt_config, rx_buf_size); OFF(kt_config, guest_id);
	OFF(kt_config, max_queue_pairs); OFF(kt_config, reserved);
	OFF(kt_ioc_info, max_msg_size); OFF(kt_ioc_info, channel);
	OFF(kt_ioc_info, state); OFF(kt_ioc_info, guest_id);

	P("KT_VIRTIO_ID", KT_VIRTIO_ID);
	P("KT_F_GUEST_LISTEN", KT_F_GUEST_LISTEN);
	P("KT_F_LISTEN_NOTIFY", KT_F_LISTEN_NOTIFY);
	P("KT_F_MULTIQUEUE", KT_F_MULTIQUEUE);
	P("KT_MAX_QUEUE_PAIRS", KT_MAX_QUEUE_PAIRS);
	P("KT_MAX_GUEST_LISTENERS", KT_MAX_GUEST_LISTENERS);
	P("KT_VQ_RX", KT_VQ_RX); P("KT_VQ_TX", KT_VQ_TX);
	P("KT_VQ_EVENT", KT_VQ_EVENT); P("KT_NUM_VQS", KT_NUM_VQS);
	P("KT_HDR_SIZE", KT_HDR_SIZE); P("KT_NAME_MAX", KT_NAME_MAX);
	P("KT_MIN_RX_BUF_SIZE", KT_MIN_RX_BUF_SIZE);
	P("KT_MAX_RX_BUF_SIZE", KT_MAX_RX_BUF_SIZE);
	P("KT_MAX_MSG_SIZE_LIMIT", KT_MAX_MSG_SIZE_LIMIT);
	P("KT_DEFAULT_MAX_MSG_SIZE", KT_DEFAULT_MAX_MSG_SIZE);
	P("KT_DEFAULT_RX_BUF_SIZE", KT_DEFAULT_RX_BUF_SIZE);
	P("KT_DEFAULT_MAX_CHANNELS", KT_DEFAULT_MAX_CHANNELS);
	P("KT_MSG_OVERHEAD", KT_MSG_OVERHEAD);
	P("KT_CHAN_TRANSPORT", KT_CHAN_TRANSPORT);
	P("KT_CHAN_DEVICE_BIT", KT_CHAN_DEVICE_BIT);
	P("KT_MSG_OPEN", KT_MSG_OPEN); P("KT_MSG_OPEN_OK", KT_MSG_OPEN_OK);
	P("KT_MSG_OPEN_ERR", KT_MSG_OPEN_ERR); P("KT_MSG_DATA", KT_MSG_DATA);
	P("KT_MSG_CLOSE", KT_MSG_CLOSE);
	P("KT_MSG_CREDIT_UPDATE", KT_MSG_CREDIT_UPDATE);
	P("KT_MSG_CREDIT_REQUEST", KT_MSG_CREDIT_REQUEST);
	P("KT_MSG_RESET", KT_MSG_RESET);
	P("KT_MSG_LISTEN", KT_MSG_LISTEN);
	P("KT_MSG_UNLISTEN", KT_MSG_UNLISTEN);
	P("KT_HDR_F_MORE", KT_HDR_F_MORE); P("KT_HDR_F_KNOWN", KT_HDR_F_KNOWN);
	P("KT_ERR_OK", KT_ERR_OK); P("KT_ERR_NOENT", KT_ERR_NOENT);
	P("KT_ERR_NOMEM", KT_ERR_NOMEM); P("KT_ERR_ACCES", KT_ERR_ACCES);
	P("KT_ERR_EXIST", KT_ERR_EXIST); P("KT_ERR_INVAL", KT_ERR_INVAL);
	P("KT_ERR_MFILE", KT_ERR_MFILE); P("KT_ERR_PROTO", KT_ERR_PROTO);
	P("KT_ERR_MSGSIZE", KT_ERR_MSGSIZE);
	P("KT_ERR_CONNRESET", KT_ERR_CONNRESET);
	P("KT_ERR_CONNREFUSED", KT_ERR_CONNREFUSED);
	P("KT_STATE_IDLE", KT_STATE_IDLE);
	P("KT_STATE_CONNECTING", KT_STATE_CONNECTING);
	P("KT_STATE_OPEN", KT_STATE_OPEN);
	P("KT_STATE_LISTENING", KT_STATE_LISTENING);
	P("KT_STATE_CLOSED", KT_STATE_CLOSED);
	P("KT_IOC_CONNECT", KT_IOC_CONNECT); P("KT_IOC_LISTEN", KT_IOC_LISTEN);
	P("KT_IOC_ACCEPT", KT_IOC_ACCEPT); P("KT_IOC_INFO", KT_IOC_INFO);
	P("KT_IOC_NEXT", KT_IOC_NEXT);
	P("KT_IOC_SENDV", KT_IOC_SENDV);
	P("KT_IOC_RECVV", KT_IOC_RECVV);
	P("KT_IOC_VEC_MAX", KT_IOC_VEC_MAX);
	P("KT_MSG_F_TRUNC", KT_MSG_F_TRUNC);
	P("KT_NEXT_F_MSG", KT_NEXT_F_MSG); P("KT_NEXT_F_ENDED", KT_NEXT_F_ENDED);
	printf("KT_KERNEL_NAME_PREFIX %s\n", KT_KERNEL_NAME_PREFIX);
	printf("KT_DEVICE_NAME_PREFIX %s\n", KT_DEVICE_NAME_PREFIX);
	printf("KT_SERVICES_NAME %s\n", KT_SERVICES_NAME);
	P("KT_LISTING_CHUNK_MAX", KT_LISTING_CHUNK_MAX);

	memset(&h, 0, sizeof(h));
	h.channel = htole32(0x80000005);
	h.type = htole16(KT_MSG_DATA);
	h.flags = htole16(KT_HDR_F_MORE);
	h.len = htole32(1000);
	h.msg_len = htole32(70000);
	h.seq = htole32(0x01020304);
	h.buf_alloc = htole32(262144);
	h.fwd_cnt = htole32(0xfffffff0);
	h.arg = htole32(KT_ERR_CONNRESET);
	dump("golden.kt_hdr", &h, sizeof(h));

	c.max_msg_size = htole32(65536);
	c.max_channels = htole32(1024);
	c.rx_buf_size = htole32(4096);
	c.guest_id = htole32(0x11223344);
	c.max_queue_pairs = htole16(2);
	c.reserved = 0;
	dump("golden.kt_config", &c, sizeof(c));
	return 0;
}
