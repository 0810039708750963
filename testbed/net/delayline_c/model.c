/* See model.h. Mirrors testbed/net/delayline_sched.py in integer nanoseconds. */
#include "model.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define GSO_NONE 0x00
#define GSO_TCPV4 0x01
#define GSO_TCPV6 0x04
#define GSO_UDP_L4 0x05
#define GSO_ECN 0x80
#define F_NEEDS_CSUM 0x01

static int parse_u64(const char *key, const char *val, uint64_t max, uint64_t *out, char *err,
		     size_t errlen)
{
	char *end;
	errno = 0;
	if (*val < '0' || *val > '9') {
		snprintf(err, errlen, "%s must be a non-negative integer, got '%s'", key, val);
		return -1;
	}
	unsigned long long v = strtoull(val, &end, 10);
	if (errno || *end || v > max) {
		snprintf(err, errlen, "%s must be an integer in 0..%llu, got '%s'", key,
			 (unsigned long long)max, val);
		return -1;
	}
	*out = v;
	return 0;
}

static int set_key(struct dl_shape *s, const char *key, const char *val, char *err, size_t errlen)
{
	if (!strcmp(key, "delay_ns"))
		return parse_u64(key, val, DL_MAX_DELAY_NS, &s->delay_ns, err, errlen);
	if (!strcmp(key, "jitter_ns"))
		return parse_u64(key, val, DL_MAX_DELAY_NS, &s->jitter_ns, err, errlen);
	if (!strcmp(key, "queue_packets"))
		return parse_u64(key, val, DL_MAX_QUEUE_PACKETS, &s->queue_packets, err, errlen);
	if (!strcmp(key, "queue_bytes"))
		return parse_u64(key, val, DL_MAX_QUEUE_BYTES, &s->queue_bytes, err, errlen);
	if (!strcmp(key, "rate_bps")) {
		if (parse_u64(key, val, DL_MAX_RATE_BPS, &s->rate_bps, err, errlen))
			return -1;
		if (s->rate_bps && s->rate_bps < DL_MIN_RATE_BPS) {
			snprintf(err, errlen, "rate_bps must be 0 (unlimited) or >= %llu, got %s",
				 (unsigned long long)DL_MIN_RATE_BPS, val);
			return -1;
		}
		return 0;
	}
	if (!strcmp(key, "loss")) {
		char *end;
		errno = 0;
		double v = strtod(val, &end);
		if (errno || *end || end == val || !(v >= 0.0 && v <= 1.0)) {
			snprintf(err, errlen, "loss must be a fraction in [0, 1], got '%s'", val);
			return -1;
		}
		s->loss = v;
		return 0;
	}
	snprintf(err, errlen, "unknown shape key '%s'", key);
	return -1;
}

int dl_parse_shape(const char *text, struct dl_shape *out, char *err, size_t errlen)
{
	char buf[512];
	memset(out, 0, sizeof(*out));
	if (strlen(text) >= sizeof(buf)) {
		snprintf(err, errlen, "shape too long");
		return -1;
	}
	strcpy(buf, text);
	for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok;
	     tok = strtok_r(NULL, ",", &save)) {
		char *eq = strchr(tok, '=');
		if (!eq) {
			snprintf(err, errlen, "shape item '%s' is not key=value", tok);
			return -1;
		}
		*eq = '\0';
		if (set_key(out, tok, eq + 1, err, errlen))
			return -1;
	}
	return 0;
}

void dl_rng_seed(struct dl_rng *r, uint64_t seed) { r->s = seed; }

uint64_t dl_rng_next(struct dl_rng *r)
{
	uint64_t z = (r->s += 0x9e3779b97f4a7c15ULL);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

static double rng_unit(struct dl_rng *r) { return (double)(dl_rng_next(r) >> 11) * 0x1.0p-53; }

int dl_sched_init(struct dl_sched *s, const struct dl_shape *shape, uint64_t seed, int direction)
{
	memset(s, 0, sizeof(*s));
	s->shape = *shape;
	/* Separate streams: turning jitter on does not change which frames are lost. */
	dl_rng_seed(&s->loss_rng, seed * 4 + (uint64_t)direction);
	dl_rng_seed(&s->jitter_rng, seed * 4 + 2 + (uint64_t)direction);
	if (shape->rate_bps) {
		s->bl_cap = 1024;
		s->backlog = malloc(s->bl_cap * sizeof(*s->backlog));
		if (!s->backlog)
			return -1;
	}
	return 0;
}

void dl_sched_free(struct dl_sched *s)
{
	free(s->backlog);
	s->backlog = NULL;
}

static void expire(struct dl_sched *s, uint64_t now)
{
	while (s->bl_len) {
		struct dl_backlog_item *it = &s->backlog[s->bl_head];
		if (it->tx_end > now)
			break;
		s->bl_bytes -= it->wire;
		s->bl_packets -= it->segs;
		s->bl_head = (s->bl_head + 1) % s->bl_cap;
		s->bl_len--;
	}
}

static int fits(const struct dl_sched *s, uint32_t wire, uint32_t segs)
{
	if (!s->bl_len)  /* an empty link always takes a frame, even one above a limit */
		return 1;
	if (s->shape.queue_packets && s->bl_packets + segs > s->shape.queue_packets)
		return 0;
	return !s->shape.queue_bytes || s->bl_bytes + wire <= s->shape.queue_bytes;
}

static int reserve_backlog(struct dl_sched *s)
{
	if (s->bl_len == s->bl_cap) {
		size_t cap = s->bl_cap * 2;
		struct dl_backlog_item *nb = malloc(cap * sizeof(*nb));
		if (!nb)
			return -1;
		for (size_t i = 0; i < s->bl_len; i++)
			nb[i] = s->backlog[(s->bl_head + i) % s->bl_cap];
		free(s->backlog);
		s->backlog = nb;
		s->bl_cap = cap;
		s->bl_head = 0;
	}
	return 0;
}

static void push_backlog(struct dl_sched *s, uint64_t tx_end, uint32_t wire, uint32_t segs)
{
	s->backlog[(s->bl_head + s->bl_len) % s->bl_cap] =
		(struct dl_backlog_item){tx_end, wire, segs};
	s->bl_len++;
	s->bl_bytes += wire;
	s->bl_packets += segs;
}

enum dl_verdict dl_admit(struct dl_sched *s, uint64_t now, uint32_t wire, uint32_t segs,
			 uint64_t *due)
{
	const struct dl_shape *sh = &s->shape;
	if (sh->loss > 0.0 && rng_unit(&s->loss_rng) < sh->loss) {
		s->dropped_loss++;
		return DL_DROP_LOSS;
	}
	uint64_t tx_end = now;
	if (sh->rate_bps) {
		expire(s, now);
		if (!fits(s, wire, segs) || reserve_backlog(s)) {
			s->dropped_queue++;
			return DL_DROP_QUEUE;
		}
		uint64_t start = now > s->busy_until ? now : s->busy_until;
		/* Serialization time rounded up to whole nanoseconds. */
		tx_end = start + ((uint64_t)wire * 8ULL * 1000000000ULL + sh->rate_bps - 1) /
				 sh->rate_bps;
		s->busy_until = tx_end;
		push_backlog(s, tx_end, wire, segs);
	}
	int64_t delay = (int64_t)sh->delay_ns;
	if (sh->jitter_ns) {  /* uniform integer in [-jitter, +jitter] */
		uint64_t span = 2 * sh->jitter_ns + 1;
		delay += (int64_t)(dl_rng_next(&s->jitter_rng) % span) - (int64_t)sh->jitter_ns;
		if (delay < 0)
			delay = 0;
	}
	uint64_t d = tx_end + (uint64_t)delay;
	if (d < s->last_due)
		d = s->last_due;
	s->last_due = d;
	s->admitted++;
	*due = d;
	return DL_PASS;
}

static uint32_t le16(const uint8_t *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8; }

/* L2-L4 header bytes every segment of a GSO frame repeats. hdr_len is only a hint on receive
 * (skb_headlen), so with a partial checksum the header end comes from csum_start (the L4 offset)
 * and the TCP data offset (RFC 9293 section 3.1). */
static uint32_t segment_header_bytes(const uint8_t *f, size_t len, uint32_t l2)
{
	uint32_t gso = f[1] & ~GSO_ECN, l4 = le16(f + 6), hint = le16(f + 2);
	if ((f[0] & F_NEEDS_CSUM) && l4 > 0 && l4 < l2) {
		if (gso == GSO_TCPV4 || gso == GSO_TCPV6) {
			size_t doff_at = VNET_HDR_LEN + (size_t)l4 + 12;
			if (doff_at < len) {
				uint32_t h = l4 + (uint32_t)(f[doff_at] >> 4) * 4;
				return h < l2 ? h : l2;
			}
		} else if (gso == GSO_UDP_L4) {
			return l4 + 8 < l2 ? l4 + 8 : l2;
		}
	}
	return hint < l2 ? hint : l2;
}

void dl_wire_bytes(const uint8_t *f, size_t len, uint32_t *wire, uint32_t *segs)
{
	*segs = 1;
	if (len <= VNET_HDR_LEN) {
		*wire = 0;
		return;
	}
	uint32_t l2 = (uint32_t)(len - VNET_HDR_LEN);
	uint32_t gso_size = le16(f + 4);
	*wire = l2;
	if (f[1] == GSO_NONE || (f[1] & ~GSO_ECN) == GSO_NONE || gso_size == 0)
		return;
	uint32_t head = segment_header_bytes(f, len, l2);
	uint32_t n = (l2 - head + gso_size - 1) / gso_size;
	if (n < 1)
		n = 1;
	*segs = n;
	*wire = l2 + (n - 1) * head;
}

int dl_reservoir_init(struct dl_reservoir *r, uint64_t seed)
{
	memset(r, 0, sizeof(*r));
	r->min = INFINITY;
	r->max = -INFINITY;
	dl_rng_seed(&r->rng, seed);
	/* Grown by realloc up to DL_RESERVOIR: an idle line keeps no 256 KiB sample. */
	return 0;
}

void dl_reservoir_add(struct dl_reservoir *r, double v)
{
	r->count++;
	r->total += v;
	if (v < r->min)
		r->min = v;
	if (v > r->max)
		r->max = v;
	if (r->count <= DL_RESERVOIR) {
		uint64_t n = r->count;
		if ((n & (n - 1)) == 0) {  /* power of two: double the sample array */
			double *ns = realloc(r->sample, (size_t)(n * 2 < DL_RESERVOIR ? n * 2
							: DL_RESERVOIR) * sizeof(double));
			if (!ns) {
				r->count--;  /* keep count == sample size while filling */
				return;
			}
			r->sample = ns;
		}
		r->sample[n - 1] = v;
	} else {
		uint64_t j = dl_rng_next(&r->rng) % r->count;
		if (j < DL_RESERVOIR)
			r->sample[j] = v;
	}
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

static void fmt(char *out, size_t len, double v, double scale, int digits, int empty)
{
	if (empty)
		snprintf(out, len, "null");
	else
		snprintf(out, len, "%.*f", digits, v * scale);
}

void dl_reservoir_json(const struct dl_reservoir *r, double scale, int digits, char *buf,
		       size_t len)
{
	size_t n = r->count < DL_RESERVOIR ? r->count : DL_RESERVOIR;
	double med = 0, p99 = 0;
	if (n) {
		double *s = malloc(n * sizeof(double));
		if (s) {
			memcpy(s, r->sample, n * sizeof(double));
			qsort(s, n, sizeof(double), cmp_double);
			/* nearest rank, as Reservoir.quantile in delayline_sched.py */
			size_t rm = (size_t)ceil(0.5 * (double)n), rp = (size_t)ceil(0.99 * (double)n);
			med = s[rm ? rm - 1 : 0];
			p99 = s[rp ? rp - 1 : 0];
			free(s);
		}
	}
	char a[40], b[40], c[40], d[40], e[40];
	int empty = r->count == 0;
	fmt(a, sizeof(a), med, scale, digits, empty);
	fmt(b, sizeof(b), p99, scale, digits, empty);
	fmt(c, sizeof(c), empty ? 0 : r->total / (double)r->count, scale, digits, empty);
	fmt(d, sizeof(d), r->min, scale, digits, empty);
	fmt(e, sizeof(e), r->max, scale, digits, empty);
	snprintf(buf, len, "{\"count\": %llu, \"median\": %s, \"p99\": %s, \"mean\": %s, "
		 "\"min\": %s, \"max\": %s}", (unsigned long long)r->count, a, b, c, d, e);
}

void dl_reservoir_free(struct dl_reservoir *r)
{
	free(r->sample);
	r->sample = NULL;
}

int dl_fifo_push(struct dl_fifo *q, const struct dl_held *h)
{
	if (q->len >= DL_MAX_HELD_FRAMES || q->bytes + h->len > DL_MAX_HELD_BYTES)
		return -1;
	if (q->len == q->cap) {
		size_t cap = q->cap ? q->cap * 2 : 256;
		struct dl_held *nb = malloc(cap * sizeof(*nb));
		if (!nb)
			return -1;
		for (size_t i = 0; i < q->len; i++)
			nb[i] = q->items[(q->head + i) % q->cap];
		free(q->items);
		q->items = nb;
		q->cap = cap;
		q->head = 0;
	}
	q->items[(q->head + q->len) % q->cap] = *h;
	q->len++;
	q->bytes += h->len;
	return 0;
}

struct dl_held *dl_fifo_peek(struct dl_fifo *q) { return q->len ? &q->items[q->head] : NULL; }

void dl_fifo_pop(struct dl_fifo *q)
{
	q->bytes -= q->items[q->head].len;
	q->head = (q->head + 1) % q->cap;
	q->len--;
}

void dl_fifo_free(struct dl_fifo *q)
{
	while (q->len) {
		free(q->items[q->head].data);
		dl_fifo_pop(q);
	}
	free(q->items);
	q->items = NULL;
	q->cap = 0;
}
