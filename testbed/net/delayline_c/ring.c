/* PACKET_RX_RING (TPACKET_V2, Documentation/networking/packet_mmap.rst) for a busy port.
 *
 * TPACKET_V2, not V3: a V3 block is handed to user space only when full or when its retire
 * timer (whole milliseconds) expires, which would hold a lone frame past its due time on a
 * short link; a V2 slot is ours as soon as the kernel has written it, and poll() says so.
 * Slots are DL_RING_SLOT bytes; a larger frame (a GSO super-frame) goes whole to the socket's
 * queue (PACKET_COPY_THRESH) and its slot, truncated, says TP_STATUS_COPY, in arrival order.
 * The vnet header sits just before the Ethernet frame in the slot (tpacket_rcv). */
#include "ring.h"

#include <errno.h>
#include <linux/if_packet.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>

#include "model.h"

int dl_ring_open(struct dl_ring *r, int fd, char *err, size_t errlen)
{
	memset(r, 0, sizeof(*r));
	int version = TPACKET_V2, one = 1;
	unsigned block = 64u * 1024u;
	struct tpacket_req req = {.tp_block_size = block, .tp_block_nr = DL_RING_BYTES / block,
				  .tp_frame_size = DL_RING_SLOT,
				  .tp_frame_nr = DL_RING_BYTES / DL_RING_SLOT};
	if (setsockopt(fd, SOL_PACKET, PACKET_VERSION, &version, sizeof(version)) ||
	    setsockopt(fd, SOL_PACKET, PACKET_COPY_THRESH, &one, sizeof(one)) ||
	    setsockopt(fd, SOL_PACKET, PACKET_RX_RING, &req, sizeof(req))) {
		snprintf(err, errlen, "PACKET_RX_RING: %s", strerror(errno));
		return -1;
	}
	void *map = mmap(NULL, DL_RING_BYTES, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (map == MAP_FAILED) {
		snprintf(err, errlen, "mmap of the rx ring: %s", strerror(errno));
		struct tpacket_req none = {0};
		setsockopt(fd, SOL_PACKET, PACKET_RX_RING, &none, sizeof(none));
		return -1;
	}
	r->map = map;
	r->map_len = DL_RING_BYTES;
	r->slot_size = DL_RING_SLOT;
	r->slots = req.tp_frame_nr;
	return 0;
}

void dl_ring_close(struct dl_ring *r)
{
	if (r->map)
		munmap(r->map, r->map_len);
	r->map = NULL;
}

void *dl_ring_next(struct dl_ring *r, uint8_t **frame, uint32_t *len, uint32_t *full_len,
		   int *copied, uint64_t *ts_ns)
{
	struct tpacket2_hdr *h = (void *)(r->map + (size_t)r->head * r->slot_size);
	uint32_t status = __atomic_load_n(&h->tp_status, __ATOMIC_ACQUIRE);
	if (!(status & TP_STATUS_USER))
		return NULL;
	r->head = (r->head + 1) % r->slots;
	*copied = (status & TP_STATUS_COPY) != 0;
	*ts_ns = (uint64_t)h->tp_sec * 1000000000ULL + h->tp_nsec;
	*len = h->tp_snaplen + VNET_HDR_LEN;
	*full_len = h->tp_len + VNET_HDR_LEN;
	/* A slot too small even for the vnet header (cannot happen at DL_RING_SLOT) is a runt. */
	*frame = h->tp_mac >= VNET_HDR_LEN + TPACKET2_HDRLEN - sizeof(struct sockaddr_ll) &&
		 h->tp_mac + h->tp_snaplen <= r->slot_size ? (uint8_t *)h + h->tp_mac - VNET_HDR_LEN
							   : NULL;
	return h;
}

int dl_ring_ready(const struct dl_ring *r)
{
	const struct tpacket2_hdr *h = (const void *)(r->map + (size_t)r->head * r->slot_size);
	return (__atomic_load_n(&h->tp_status, __ATOMIC_ACQUIRE) & TP_STATUS_USER) != 0;
}

void dl_ring_release(struct dl_ring *r, void *slot)
{
	(void)r;
	__atomic_store_n(&((struct tpacket2_hdr *)slot)->tp_status, TP_STATUS_KERNEL,
			 __ATOMIC_RELEASE);
}
