#ifndef DL_RING_H
#define DL_RING_H
#include <stddef.h>
#include <stdint.h>

/* A PACKET_RX_RING (TPACKET_V2) on a port: the kernel writes each frame into a shared slot, so
 * reading a frame costs no system call. See ring.c. */
struct dl_ring {
	uint8_t *map;
	size_t map_len;
	unsigned slot_size, slots, head;
};

#define DL_RING_SLOT 2048u            /* an MTU frame and its headers; larger ones: TP_STATUS_COPY */
#define DL_RING_BYTES (16u << 20)    /* 8192 slots per port: ~75 ms of 1500-byte frames at 1.3 Gbit/s */

/* Attach a ring to a bound PACKET_VNET_HDR socket; 0, or -1 with the cause in err. */
int dl_ring_open(struct dl_ring *r, int fd, char *err, size_t errlen);
void dl_ring_close(struct dl_ring *r);

/* The next filled slot, or NULL. *frame: vnet header + Ethernet frame (*len bytes, *wire_len
 * the frame's length before any truncation); *copied: the whole frame waits on the socket's
 * queue instead (too big for a slot); *ts_ns: the kernel's receive time (CLOCK_REALTIME). */
void *dl_ring_next(struct dl_ring *r, uint8_t **frame, uint32_t *len, uint32_t *full_len,
		   int *copied, uint64_t *ts_ns);
/* Whether the next slot holds a frame (dl_ring_next would return it): no system call. */
int dl_ring_ready(const struct dl_ring *r);
/* Give the slot returned by dl_ring_next back to the kernel. */
void dl_ring_release(struct dl_ring *r, void *slot);
#endif
