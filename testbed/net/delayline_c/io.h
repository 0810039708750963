#ifndef DL_IO_H
#define DL_IO_H
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "model.h"
#include "ring.h"
#include "txstamp.h"

#define DL_BATCH_MAX 64
#define DL_SOCKET_BUFFER (32 * 1024 * 1024)  /* bytes: each port socket's buffers */


/* One direction: reads rx, holds the FIFO, writes tx, keeps counters. */
struct dl_dir {
	const char *name;
	int rx, tx;
	struct dl_sched sched;
	struct dl_fifo fifo;
	struct dl_reservoir delay, lateness;  /* ns */
	/* ns a send call of one frame took: with receive steering off the receiving host's input
	 * runs inside it, so it bounds from above how long after its release the frame reached
	 * that host (and includes what the host did with it) */
	struct dl_reservoir send_call;
	/* Frames stamped at the device (txstamp.c): ns from the send call to the device (first
	 * frame of a call after idleness), and device time minus due time (negative: early). */
	struct dl_reservoir to_device, device_late;
	struct dl_txstamp stamp;
	unsigned batch;
	uint8_t *bufs;                        /* batch slots of DL_MAX_FRAME + 1 bytes */
	struct mmsghdr rmsg[DL_BATCH_MAX], smsg[DL_BATCH_MAX];
	struct iovec riov[DL_BATCH_MAX], siov[DL_BATCH_MAX];
	char ctrl[DL_BATCH_MAX][64];
	uint64_t frames_in, bytes_in, wire_bytes_in, frames, bytes, gso_frames, gso_frames_lossy;
	uint64_t dropped_tx, dropped_trunc, dropped_runt, dropped_rcvbuf, dropped_overflow;
	uint64_t rx_ts_fallback, tx_busy, rx_errors;
	int tx_blocked;  /* the last send found the socket full: wait before retrying */
	struct dl_ring ring;  /* map NULL: read with recvmmsg */
	uint64_t ring_frames, ring_copied;
	char ring_error[96];  /* why the ring could not be set up */
	uint64_t tx_errno[4];  /* EINVAL, ENETDOWN, EMSGSIZE, other */
};

/* One int-valued socket option of a port's socket. */
struct dl_sockopt { int level, name, value; const char *what; };
/* An AF_PACKET socket (not yet bound) with opts set, for ifname (its index into *ifindex);
 * role names it in errors. The fd, -2 for an unknown interface, or -1 (the cause in err). */
int dl_packet_socket(const char *ifname, const struct dl_sockopt *opts, size_t nopts,
		     const char *role, unsigned *ifindex, char *err, size_t errlen);
/* With ring: a PACKET_RX_RING is set up before the bind (so no frame is ever read twice or
 * missed); if that fails the port reads with recvmmsg and ring_err says why. */
int dl_open_port(const char *ifname, struct dl_ring *ring, char *ring_err, size_t ring_errlen,
		 char *err, size_t errlen);
/* tx: the direction's own send socket (dl_open_tx), closed by dl_dir_free. */
int dl_dir_init(struct dl_dir *d, const char *name, int rx, int tx, const struct dl_shape *shape,
		uint64_t seed, int direction, unsigned batch);
void dl_dir_free(struct dl_dir *d);
/* Read one batch; returns frames read (0 when none was waiting). */
int dl_drain(struct dl_dir *d, uint64_t now_mono, int64_t real_minus_mono);
/* Send what may start by now (dl_release_at); returns the time after the last send. */
uint64_t dl_release(struct dl_dir *d, uint64_t now);
/* When the send call of held frame h may start: its due time less the send lead (txstamp.c). */
uint64_t dl_release_at(const struct dl_dir *d, const struct dl_held *h);
void dl_poll_kernel_drops(struct dl_dir *d);
uint64_t dl_now(void);
#endif
