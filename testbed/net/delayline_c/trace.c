/* --trace: the delay line's model and frame path on a virtual clock, for exact tests.
 *
 * Input, one event per line (blank lines and '#' comments skipped), times non-decreasing:
 *     T_NS DIR HEX       a frame (vnet header + Ethernet frame, hex) arrives at T_NS
 *     T_NS DIR len=N     a plain frame of N Ethernet bytes (zero vnet header, zero payload)
 * DIR is a2b or b2a. Output, one line per frame, in the order the helper would act:
 *     drop T_NS DIR ID loss|queue|trunc|runt|overflow
 *     tx DUE_NS DIR ID WIRE SEGS HEX|-   (the frame exactly as it would be sent)
 * Before an arrival at T every frame due by T is released (both directions, earliest first,
 * a2b first on a tie); at end of input everything still held is released.
 */
#include "trace.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct tdir {
	const char *name;
	struct dl_sched sched;
	struct dl_fifo fifo;
	uint32_t next_id;
};

static int hexval(int c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* Decodes hex into a new buffer; -1 on odd length or a non-hex digit. */
static long decode(const char *hex, uint8_t **out)
{
	size_t n = strlen(hex);
	if (n % 2)
		return -1;
	uint8_t *buf = malloc(n / 2 + 1);
	if (!buf)
		return -1;
	for (size_t i = 0; i < n / 2; i++) {
		int hi = hexval(hex[2 * i]), lo = hexval(hex[2 * i + 1]);
		if (hi < 0 || lo < 0) {
			free(buf);
			return -1;
		}
		buf[i] = (uint8_t)(hi << 4 | lo);
	}
	*out = buf;
	return (long)(n / 2);
}

static void emit_tx(FILE *out, struct tdir *d, const struct dl_held *h, int synthetic)
{
	uint32_t wire, segs;
	dl_wire_bytes(h->data, h->len, &wire, &segs);
	fprintf(out, "tx %llu %s %u %u %u ", (unsigned long long)h->due, d->name, h->id, wire, segs);
	if (synthetic) {
		fputs("-\n", out);
		return;
	}
	for (uint32_t i = 0; i < h->len; i++)
		fprintf(out, "%02x", h->data[i]);
	fputc('\n', out);
}

/* Release every frame due by `now` (UINT64_MAX: all), earliest first, a2b first on a tie. */
static void release(FILE *out, struct tdir *dirs, uint64_t now, const uint8_t *synthetic_mark)
{
	for (;;) {
		struct dl_held *a = dl_fifo_peek(&dirs[0].fifo), *b = dl_fifo_peek(&dirs[1].fifo);
		int pick;
		if (a && a->due <= now && (!b || a->due <= b->due))
			pick = 0;
		else if (b && b->due <= now)
			pick = 1;
		else
			return;
		struct dl_held h = *dl_fifo_peek(&dirs[pick].fifo);
		dl_fifo_pop(&dirs[pick].fifo);
		/* synthetic frames carry a marker byte after their declared length */
		emit_tx(out, &dirs[pick], &h, h.data[h.len] == *synthetic_mark);
		free(h.data);
	}
}

static int fail(const char *msg, unsigned long line)
{
	fprintf(stderr, "delayline: error: trace line %lu: %s\n", line, msg);
	return 2;
}

static int event(FILE *out, struct tdir *dirs, uint64_t t, struct tdir *d, uint8_t *data, long n,
		 int synthetic)
{
	uint32_t id = d->next_id++;
	const char *why = NULL;
	if (n > DL_MAX_FRAME)
		why = "trunc";
	else if (n <= VNET_HDR_LEN)
		why = "runt";
	uint64_t due = 0;
	if (!why) {
		uint32_t wire, segs;
		dl_wire_bytes(data, (size_t)n, &wire, &segs);
		enum dl_verdict v = dl_admit(&d->sched, t, wire, segs, &due);
		why = v == DL_DROP_LOSS ? "loss" : v == DL_DROP_QUEUE ? "queue" : NULL;
	}
	if (!why) {
		data[n] = synthetic ? 0xA5 : 0x00;
		struct dl_held h = {.due = due, .arrived = t, .data = data, .len = (uint32_t)n,
				    .id = id};
		if (dl_fifo_push(&d->fifo, &h) == 0)
			return 0;
		why = "overflow";
	}
	fprintf(out, "drop %llu %s %u %s\n", (unsigned long long)t, d->name, id, why);
	(void)dirs;
	free(data);
	return 0;
}

int dl_trace_main(const struct dl_shape *a2b, const struct dl_shape *b2a, uint64_t seed,
		  FILE *in, FILE *out)
{
	struct tdir dirs[2] = {{.name = "a2b"}, {.name = "b2a"}};
	if (dl_sched_init(&dirs[0].sched, a2b, seed, 0) || dl_sched_init(&dirs[1].sched, b2a, seed, 1))
		return fail("out of memory", 0);
	static const uint8_t mark = 0xA5;
	char *line = NULL;
	size_t cap = 0;
	unsigned long lineno = 0;
	uint64_t last = 0;
	int rc = 0;
	while (getline(&line, &cap, in) > 0) {
		lineno++;
		char *save = NULL, *ts = strtok_r(line, " \t\r\n", &save);
		if (!ts || *ts == '#')
			continue;
		char *dn = strtok_r(NULL, " \t\r\n", &save), *payload = strtok_r(NULL, " \t\r\n", &save);
		char *end;
		unsigned long long t = strtoull(ts, &end, 10);
		if (*end || !dn || !payload || strtok_r(NULL, " \t\r\n", &save)) {
			rc = fail("expected 'T_NS DIR HEX' or 'T_NS DIR len=N'", lineno);
			break;
		}
		if (t < last) {
			rc = fail("time goes backwards", lineno);
			break;
		}
		last = t;
		struct tdir *d = !strcmp(dn, "a2b") ? &dirs[0] : !strcmp(dn, "b2a") ? &dirs[1] : NULL;
		if (!d) {
			rc = fail("direction must be a2b or b2a", lineno);
			break;
		}
		release(out, dirs, t, &mark);
		uint8_t *data = NULL;
		long n;
		int synthetic = !strncmp(payload, "len=", 4);
		if (synthetic) {
			unsigned long long l2 = strtoull(payload + 4, &end, 10);
			n = (*end || l2 > 4 * DL_MAX_FRAME) ? -1 : (long)l2 + VNET_HDR_LEN;
			if (n >= 0 && !(data = calloc((size_t)n + 1, 1)))
				n = -1;
		} else {
			n = decode(payload, &data);
		}
		if (n < 0) {
			rc = fail("bad frame (odd-length or non-hex, or bad len=N)", lineno);
			break;
		}
		/* one spare byte past the frame holds the synthetic marker */
		uint8_t *grown = realloc(data, (size_t)n + 1);
		if (!grown) {
			free(data);
			rc = fail("out of memory", lineno);
			break;
		}
		event(out, dirs, t, d, grown, n, synthetic);
	}
	if (rc == 0)
		release(out, dirs, UINT64_MAX, &mark);
	free(line);
	for (int i = 0; i < 2; i++) {
		dl_fifo_free(&dirs[i].fifo);
		dl_sched_free(&dirs[i].sched);
	}
	return rc;
}
