/* AF_PACKET I/O of the compiled delay line: batched receive (recvmmsg) and send (sendmmsg) of
 * frames with their virtio-net header (PACKET_VNET_HDR), so GSO super-frames and partial
 * checksums pass unchanged. A frame's arrival time is its kernel receive timestamp
 * (SO_TIMESTAMPNS), so the time it waited for us to wake up is part of its delay, not added. */

#include "io.h"

#include <arpa/inet.h>
#include <errno.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#ifndef PACKET_IGNORE_OUTGOING
#define PACKET_IGNORE_OUTGOING 23
#endif
#define MAX_RX_AGE_NS 10000000000LL

uint64_t dl_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

int dl_packet_socket(const char *ifname, const struct dl_sockopt *opts, size_t nopts,
		     const char *role, unsigned *ifindex, char *err, size_t errlen)
{
	*ifindex = if_nametoindex(ifname);
	if (!*ifindex) {
		snprintf(err, errlen, "unknown interface '%s' in this namespace", ifname);
		return -2;
	}
	/* Protocol 0 until bind: ETH_P_ALL would queue frames of every interface meanwhile. */
	int fd = socket(AF_PACKET, SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		snprintf(err, errlen, "socket(AF_PACKET) %s: %s", role, strerror(errno));
		return -1;
	}
	for (size_t i = 0; i < nopts; i++) {
		if (setsockopt(fd, opts[i].level, opts[i].name, &opts[i].value, sizeof(int))) {
			snprintf(err, errlen, "setsockopt %s on %s (%s): %s", opts[i].what, ifname,
				 role, strerror(errno));
			close(fd);
			return -1;
		}
	}
	return fd;
}

int dl_open_port(const char *ifname, struct dl_ring *ring, char *ring_err, size_t ring_errlen,
		 char *err, size_t errlen)
{
	static const struct dl_sockopt opts[] = {
		{SOL_PACKET, PACKET_VNET_HDR, 1, "PACKET_VNET_HDR"},
		{SOL_PACKET, PACKET_IGNORE_OUTGOING, 1, "PACKET_IGNORE_OUTGOING"},
		{SOL_PACKET, PACKET_QDISC_BYPASS, 1, "PACKET_QDISC_BYPASS"},
		{SOL_SOCKET, SO_RCVBUFFORCE, DL_SOCKET_BUFFER, "SO_RCVBUFFORCE"},
		{SOL_SOCKET, SO_SNDBUFFORCE, DL_SOCKET_BUFFER, "SO_SNDBUFFORCE"},
		{SOL_SOCKET, SO_TIMESTAMPNS, 1, "SO_TIMESTAMPNS"},
	};
	unsigned idx;
	int fd = dl_packet_socket(ifname, opts, sizeof(opts) / sizeof(opts[0]), "to read", &idx,
				  err, errlen);
	if (fd < 0)
		return fd;
	if (ring && dl_ring_open(ring, fd, ring_err, ring_errlen))
		ring->map = NULL;  /* recorded by the caller; recvmmsg instead */
	struct sockaddr_ll sll = {.sll_family = AF_PACKET, .sll_protocol = htons(ETH_P_ALL),
				  .sll_ifindex = (int)idx};
	if (bind(fd, (struct sockaddr *)&sll, sizeof(sll))) {
		snprintf(err, errlen, "bind to %s: %s", ifname, strerror(errno));
		if (ring)
			dl_ring_close(ring);
		close(fd);
		return -1;
	}
	return fd;
}

int dl_dir_init(struct dl_dir *d, const char *name, int rx, int tx, const struct dl_shape *shape,
		uint64_t seed, int direction, unsigned batch)
{
	memset(d, 0, sizeof(*d));
	d->name = name;
	d->rx = rx;
	d->tx = tx;
	d->batch = batch;
	/* Anonymous mapping: pages are touched (resident) only as frames fill them. */
	size_t slot = DL_MAX_FRAME + 1;
	void *mem = mmap(NULL, slot * batch, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
			 -1, 0);
	if (mem == MAP_FAILED)
		return -1;
	d->bufs = mem;
	for (unsigned i = 0; i < batch; i++) {
		d->riov[i] = (struct iovec){d->bufs + i * slot, slot};
		d->rmsg[i].msg_hdr.msg_iov = &d->riov[i];
		d->rmsg[i].msg_hdr.msg_iovlen = 1;
		d->smsg[i].msg_hdr.msg_iov = &d->siov[i];
		d->smsg[i].msg_hdr.msg_iovlen = 1;
	}
	dl_reservoir_init(&d->delay, seed * 4 + (uint64_t)direction);
	dl_reservoir_init(&d->lateness, seed * 4 + 2 + (uint64_t)direction);
	dl_reservoir_init(&d->send_call, seed * 4 + 1000 + (uint64_t)direction);
	dl_reservoir_init(&d->to_device, seed * 4 + 2000 + (uint64_t)direction);
	dl_reservoir_init(&d->device_late, seed * 4 + 3000 + (uint64_t)direction);
	return dl_sched_init(&d->sched, shape, seed, direction);
}

void dl_dir_free(struct dl_dir *d)
{
	if (d->bufs)
		munmap(d->bufs, (size_t)(DL_MAX_FRAME + 1) * d->batch);
	d->bufs = NULL;
	dl_ring_close(&d->ring);
	dl_fifo_free(&d->fifo);
	dl_sched_free(&d->sched);
	dl_reservoir_free(&d->delay);
	dl_reservoir_free(&d->lateness);
	dl_reservoir_free(&d->send_call);
	dl_reservoir_free(&d->to_device);
	dl_reservoir_free(&d->device_late);
	if (d->tx >= 0)
		close(d->tx);
	d->tx = -1;
}

/* A kernel receive time (CLOCK_REALTIME ns) on CLOCK_MONOTONIC; now when it cannot be one (a
 * clock step, a foreign timestamp, none at all: real_ns 0), counted in *fallback. */
static uint64_t arrival_at(uint64_t real_ns, uint64_t now, int64_t offset, uint64_t *fallback)
{
	int64_t t = (int64_t)real_ns - offset;
	if (real_ns && t <= (int64_t)now && t > (int64_t)now - MAX_RX_AGE_NS)
		return (uint64_t)t;
	(*fallback)++;
	return now;
}

static uint64_t arrival(struct msghdr *m, uint64_t now, int64_t offset, uint64_t *fallback)
{
	for (struct cmsghdr *c = CMSG_FIRSTHDR(m); c; c = CMSG_NXTHDR(m, c)) {
		if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SO_TIMESTAMPNS)
			continue;
		struct timespec ts;
		memcpy(&ts, CMSG_DATA(c), sizeof(ts));
		return arrival_at((uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec, now,
				  offset, fallback);
	}
	return arrival_at(0, now, offset, fallback);
}

/* Admit a frame: held in a copy, or (owned) in frame itself, a buffer from malloc that the
 * line then frees when the frame leaves or is dropped. */
static void admit_one(struct dl_dir *d, uint8_t *frame, unsigned n, uint64_t arrived, int owned)
{
	uint32_t wire, segs;
	dl_wire_bytes(frame, n, &wire, &segs);
	d->frames_in++;
	d->bytes_in += n - VNET_HDR_LEN;
	d->wire_bytes_in += wire;
	if (segs > 1) {
		d->gso_frames++;
		d->gso_frames_lossy += d->sched.shape.loss > 0.0;
	}
	uint64_t due;
	if (dl_admit(&d->sched, arrived, wire, segs, &due) != DL_PASS) {
		if (owned)
			free(frame);
		return;
	}
	struct dl_held h = {.due = due, .arrived = arrived, .len = n};
	h.data = owned ? frame : malloc(n);
	if (h.data) {
		if (!owned)
			memcpy(h.data, frame, n);
		if (dl_fifo_push(&d->fifo, &h) == 0)
			return;
		free(h.data);
	}
	d->dropped_overflow++;
}

/* One frame as read: dropped when cut or too short, else admitted (owned: see admit_one). */
static void take(struct dl_dir *d, uint8_t *frame, unsigned n, unsigned full, uint64_t arrived,
		 int owned)
{
	if (full > n || n > DL_MAX_FRAME || n <= VNET_HDR_LEN) {
		if (full > n || n > DL_MAX_FRAME)
			d->dropped_trunc++;  /* never forward a cut frame */
		else
			d->dropped_runt++;
		if (owned)
			free(frame);
		return;
	}
	admit_one(d, frame, n, arrived, owned);
}

static int drain_queue(struct dl_dir *d, uint64_t now, int64_t offset)
{
	for (unsigned i = 0; i < d->batch; i++) {
		d->rmsg[i].msg_hdr.msg_control = d->ctrl[i];
		d->rmsg[i].msg_hdr.msg_controllen = sizeof(d->ctrl[i]);
		d->rmsg[i].msg_hdr.msg_flags = 0;
	}
	int got = recvmmsg(d->rx, d->rmsg, d->batch, MSG_DONTWAIT | MSG_TRUNC, NULL);
	if (got < 0) {
		if (errno != EAGAIN && errno != EINTR)
			d->rx_errors++;  /* e.g. ENETDOWN on a link flap: counted, the socket lives on */
		return 0;
	}
	for (int i = 0; i < got; i++) {
		unsigned n = d->rmsg[i].msg_len;
		uint64_t arrived = arrival(&d->rmsg[i].msg_hdr, now, offset, &d->rx_ts_fallback);
		int cut = (d->rmsg[i].msg_hdr.msg_flags & MSG_TRUNC) != 0;
		take(d, d->riov[i].iov_base, n, cut ? n + 1 : n, arrived, 0);
	}
	return got;
}

/* A frame too big for a ring slot: the whole of it is the next one on the socket's queue.
 * Read straight into the buffer that holds it until its due time (no copy of a super-frame). */
static void take_copied(struct dl_dir *d, uint64_t arrived)
{
	size_t cap = DL_MAX_FRAME + 1;
	uint8_t *buf = malloc(cap);
	struct iovec iov = {buf, cap};
	struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1};
	ssize_t n = buf ? recvmsg(d->rx, &m, MSG_DONTWAIT | MSG_TRUNC) : -1;
	if (n < 0) {
		free(buf);
		/* the slot said the frame was queued: it was not, or no memory (counted) */
		d->rx_errors++;
		return;
	}
	d->ring_copied++;
	unsigned len = (unsigned)n, full = (m.msg_flags & MSG_TRUNC) ? len + 1 : len;
	if (len + 4096 < cap && len > 0) {  /* give back what a smaller frame left unused */
		uint8_t *fit = realloc(buf, len);
		buf = fit ? fit : buf;
	}
	take(d, buf, len, full, arrived, 1);
}

static int drain_ring(struct dl_dir *d, uint64_t now, int64_t offset)
{
	int got = 0;
	uint8_t *frame;
	uint32_t len, full;
	int copied;
	uint64_t ts;
	void *slot;
	while (got < (int)d->batch &&
	       (slot = dl_ring_next(&d->ring, &frame, &len, &full, &copied, &ts))) {
		uint64_t arrived = arrival_at(ts, now, offset, &d->rx_ts_fallback);
		if (copied)
			take_copied(d, arrived);
		else if (!frame)
			d->dropped_runt++;
		else
			take(d, frame, len, full, arrived, 0);
		dl_ring_release(&d->ring, slot);
		got++;
	}
	d->ring_frames += (uint64_t)got;
	return got;
}

int dl_drain(struct dl_dir *d, uint64_t now, int64_t offset)
{
	return d->ring.map ? drain_ring(d, now, offset) : drain_queue(d, now, offset);
}

/* The head frame left: its delay is counted from its arrival to the device (dev, when it was
 * stamped) or else to now, the time its send call was decided. Only a frame asked to be stamped
 * can have been released before its due time; if its stamp did not come (counted in
 * device_stamps.missing) its delay is counted to the call. rel: when its call was planned. */
static void account_sent(struct dl_dir *d, uint64_t now, uint64_t rel, uint64_t dev)
{
	struct dl_held *h = dl_fifo_peek(&d->fifo);
	dl_reservoir_add(&d->delay, (double)((dev ? dev : now) - h->arrived));
	dl_reservoir_add(&d->lateness, (double)(now >= rel ? now - rel : 0));
	if (dev) {
		double late = (double)dev - (double)h->due;
		dl_reservoir_add(&d->device_late, late);
		if (late < 0) {
			d->stamp.early++;
			d->stamp.early_max_ns = -late > d->stamp.early_max_ns ? -late : d->stamp.early_max_ns;
		}
	}
	d->frames++;
	d->bytes += h->len - VNET_HDR_LEN;
	free(h->data);
	dl_fifo_pop(&d->fifo);
}

uint64_t dl_release_at(const struct dl_dir *d, const struct dl_held *h)
{
	uint64_t lead = dl_lead_at(&d->stamp, h->due);
	return h->due > lead ? h->due - lead : 0;
}

static uint64_t real_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

/* Which of the n frames about to be sent ask for a device stamp (bit i: frame i): the first
 * one of a call after idleness (to learn the lead), and every one released before its due
 * time (its delay must be the device's time). */
static uint64_t ask_stamps(struct dl_dir *d, unsigned n, uint64_t call, int cls)
{
	uint64_t mask = 0;
	for (unsigned i = 0; i < n; i++) {
		struct dl_held *h = &d->fifo.items[(d->fifo.head + i) % d->fifo.cap];
		int ask = d->stamp.on && ((i == 0 && cls >= 0) || h->due > call);
		d->smsg[i].msg_hdr.msg_control = ask ? d->stamp.cmsg : NULL;
		d->smsg[i].msg_hdr.msg_controllen = ask ? d->stamp.cmsg_len : 0;
		mask |= (uint64_t)ask << i;
	}
	return mask;
}

/* After a call that sent `sent` frames: the device time (CLOCK_MONOTONIC) of each stamped one
 * into dev[] (0: not stamped, or its stamp did not come), learning the lead from the first. */
static void read_stamps(struct dl_dir *d, uint64_t mask, int sent, uint64_t call,
			uint64_t call_real, int cls, uint64_t *dev)
{
	uint32_t keys[DL_STAMPS_MAX];
	uint64_t ts[DL_STAMPS_MAX];
	int got = dl_stamps_read(d->tx, keys, ts, DL_STAMPS_MAX);
	uint32_t last = d->stamp.next_key;
	for (int i = 0; i < sent; i++) {
		dev[i] = 0;
		if (!(mask >> i & 1))
			continue;
		uint32_t key = d->stamp.next_key++;
		d->stamp.asked++;
		for (int j = 0; j < got; j++) {
			if (keys[j] != key)
				continue;
			uint64_t to_device = ts[j] > call_real ? ts[j] - call_real : 0;
			dev[i] = call + to_device;
			if (i == 0 && cls >= 0) {
				dl_reservoir_add(&d->to_device, (double)to_device);
				dl_lead_learn(&d->stamp, cls, to_device);
			}
		}
		if (dev[i])
			d->stamp.stamped++;
		else
			d->stamp.missing++;
	}
	/* A frame the kernel numbered but failed to send shifts the numbering: follow the kernel. */
	for (int j = 0; j < got; j++)
		if ((int32_t)(keys[j] + 1 - last) > 0)
			d->stamp.next_key = keys[j] + 1 > d->stamp.next_key ? keys[j] + 1 : d->stamp.next_key;
	if (d->stamp.on && !d->stamp.stamped && d->stamp.missing >= DL_STAMP_GIVE_UP) {
		d->stamp.on = 0;
		snprintf(d->stamp.error, sizeof(d->stamp.error),
			 "no transmit timestamp came for %d frames asked", DL_STAMP_GIVE_UP);
	}
}

uint64_t dl_release(struct dl_dir *d, uint64_t now)
{
	d->tx_blocked = 0;
	for (;;) {
		unsigned n = 0;
		uint64_t rel[DL_BATCH_MAX];
		for (size_t i = 0; i < d->fifo.len && n < d->batch; i++) {
			struct dl_held *h = &d->fifo.items[(d->fifo.head + i) % d->fifo.cap];
			rel[n] = dl_release_at(d, h);
			if (rel[n] > now)
				break;
			d->siov[n] = (struct iovec){h->data, h->len};
			n++;
		}
		if (!n)
			return now;
		uint64_t call = dl_now();
		int cls = dl_idle_class(&d->stamp, call);
		uint64_t mask = ask_stamps(d, n, call, cls);
		uint64_t call_real = mask ? real_now() : 0;
		int sent = sendmmsg(d->tx, d->smsg, n, MSG_DONTWAIT);
		d->stamp.last_send = call;
		if (sent == 1 && n == 1)
			dl_reservoir_add(&d->send_call, (double)(dl_now() - call));
		if (sent < 0) {
			if (errno == EAGAIN || errno == ENOBUFS || errno == EINTR) {
				d->tx_busy++;  /* kept, retried on the next turn of the loop */
				d->tx_blocked = 1;
				return dl_now();
			}
			/* the kernel refused this frame (e.g. EINVAL for a bad vnet header): a drop */
			int e = errno;
			d->tx_errno[e == EINVAL ? 0 : e == ENETDOWN ? 1 : e == EMSGSIZE ? 2 : 3]++;
			d->dropped_tx++;
			free(dl_fifo_peek(&d->fifo)->data);
			dl_fifo_pop(&d->fifo);
			continue;
		}
		uint64_t dev[DL_BATCH_MAX];  /* written by read_stamps, read only when it ran */
		if (mask)
			read_stamps(d, mask, sent, call, call_real, cls, dev);
		for (int i = 0; i < sent; i++)
			account_sent(d, now, rel[i], mask ? dev[i] : 0);
		now = dl_now();
	}
}

void dl_poll_kernel_drops(struct dl_dir *d)
{
	struct tpacket_stats st;
	socklen_t len = sizeof(st);
	if (getsockopt(d->rx, SOL_PACKET, PACKET_STATISTICS, &st, &len) == 0)
		d->dropped_rcvbuf += st.tp_drops;  /* resets on read: accumulated here */
}
