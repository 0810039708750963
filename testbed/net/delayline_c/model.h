/* Pure core of the compiled delay line: link shape, virtio-net header math, scheduling, stats.
 *
 * Same model as testbed/net/delayline_sched.py, in integer nanoseconds: per direction, loss at the
 * link's entry (i.i.d., seeded RNG), serialization at rate_bps behind a drop-tail queue bounded in
 * packets and bytes (counting the frame in service; a GSO super-frame counts as its segments),
 * then propagation delay plus uniform jitter, never earlier than the previous frame's due time
 * (jitter keeps order). Nothing here reads a clock or touches a socket: trace.c drives it on a
 * virtual clock, delayline.c on CLOCK_MONOTONIC.
 */
#ifndef DL_MODEL_H
#define DL_MODEL_H

#include <stddef.h>
#include <stdint.h>

#define VNET_HDR_LEN 10
/* Largest frame read: 64 KiB GSO frames are the veth default (gso_max_size) plus headers. */
#define DL_MAX_FRAME (65536 + 1024)
/* Limits a configuration must respect (checked by the Python side before a network is built). */
#define DL_MAX_DELAY_NS 60000000000ULL   /* 60 s */
#define DL_MIN_RATE_BPS 1000ULL
#define DL_MAX_RATE_BPS 400000000000ULL  /* 400 Gbit/s */
#define DL_MAX_QUEUE_PACKETS 1000000ULL
#define DL_MAX_QUEUE_BYTES (1ULL << 30)
/* Frames held in one direction at once; beyond, a frame is dropped and counted (overflow). */
#define DL_MAX_HELD_FRAMES (1u << 20)
#define DL_MAX_HELD_BYTES (512ULL << 20)

enum dl_verdict { DL_PASS = 0, DL_DROP_LOSS = 1, DL_DROP_QUEUE = 2 };

struct dl_shape {
	uint64_t delay_ns, jitter_ns;
	double loss;
	uint64_t rate_bps;      /* 0: no rate limit */
	uint64_t queue_packets; /* 0: unbounded */
	uint64_t queue_bytes;   /* 0: unbounded */
};

struct dl_rng { uint64_t s; };  /* splitmix64: tiny, seedable, passes BigCrush */

struct dl_backlog_item { uint64_t tx_end; uint32_t wire, segs; };

struct dl_sched {
	struct dl_shape shape;
	struct dl_rng loss_rng, jitter_rng;
	uint64_t busy_until, last_due;
	struct dl_backlog_item *backlog; /* ring of frames admitted but not fully serialized */
	size_t bl_cap, bl_head, bl_len;
	uint64_t bl_bytes, bl_packets;
	uint64_t admitted, dropped_loss, dropped_queue;
};

/* Count/mean/min/max exactly, quantiles from a uniform sample (Algorithm R). */
#define DL_RESERVOIR 32768
struct dl_reservoir {
	uint64_t count;
	double total, min, max;
	double *sample;
	struct dl_rng rng;
};

int dl_parse_shape(const char *text, struct dl_shape *out, char *err, size_t errlen);
void dl_rng_seed(struct dl_rng *r, uint64_t seed);
uint64_t dl_rng_next(struct dl_rng *r);
int dl_sched_init(struct dl_sched *s, const struct dl_shape *shape, uint64_t seed, int direction);
void dl_sched_free(struct dl_sched *s);
/* Due time of a frame received at now (ns), or a drop verdict. */
enum dl_verdict dl_admit(struct dl_sched *s, uint64_t now, uint32_t wire, uint32_t segs,
			 uint64_t *due);
/* Wire bytes (Ethernet frame, headers repeated per segment) and segments of a vnet frame. */
void dl_wire_bytes(const uint8_t *frame, size_t len, uint32_t *wire, uint32_t *segs);
int dl_reservoir_init(struct dl_reservoir *r, uint64_t seed);
void dl_reservoir_add(struct dl_reservoir *r, double v);
/* Writes {"count":..,"median":..,"p99":..,"mean":..,"min":..,"max":..} scaled and rounded. */
void dl_reservoir_json(const struct dl_reservoir *r, double scale, int digits, char *buf,
		       size_t len);
void dl_reservoir_free(struct dl_reservoir *r);

/* Frames admitted and waiting for their due time, in due order (due times never decrease). */
struct dl_held {
	uint64_t due, arrived;
	uint8_t *data;  /* vnet header + Ethernet frame, owned */
	uint32_t len, id;
};
struct dl_fifo {
	struct dl_held *items;
	size_t cap, head, len;
	uint64_t bytes;
};
/* -1 when the direction already holds DL_MAX_HELD_FRAMES / _BYTES (or out of memory). */
int dl_fifo_push(struct dl_fifo *q, const struct dl_held *h);
struct dl_held *dl_fifo_peek(struct dl_fifo *q);
void dl_fifo_pop(struct dl_fifo *q);  /* does not free data */
void dl_fifo_free(struct dl_fifo *q);

#endif
