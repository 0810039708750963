// SPDX-License-Identifier: GPL-2.0
/*
 * TCP-ENO option reading and writing for eno.bpf.c: the option kind and sizes, the
 * bounded buffer index, writing an option into the header being built, finding the one
 * ENO option in a TCP header and the structural check of a SYN-form option (RFC 8547
 * §4.1, §4.4). Nothing here touches a map.
 */
#ifndef ENO_OPTIONS_H
#define ENO_OPTIONS_H

#include <linux/bpf.h>
#include <linux/types.h>
#include <bpf/bpf_helpers.h>

#define ENO_KIND 69		/* RFC 8547 §4.1: TCP option kind 69 */
#define OPT_MAX 40		/* TCP option space */
#define HDR_MAX 60		/* largest TCP header */
#define BUF 64			/* buffer size: indices are masked with BUF - 1 */

/* Index into a BUF-sized buffer. The empty asm keeps clang from dropping the mask the
 * verifier needs to bound a loop-carried index. */
#define AT(x) ({ __u32 _v = (x); asm volatile("" : "+r"(_v)); _v & (BUF - 1); })

/* Store @len bytes of option @buf; the barrier keeps both bounds visible to the verifier
 * (clang would otherwise fold them into one unsigned compare on a copy of @len). */
static __always_inline void store(struct bpf_sock_ops *skops, const __u8 *buf, __u64 len)
{
	asm volatile("" : "+r"(len));
	if (len < 2)
		return;
	if (len > OPT_MAX)
		return;
	bpf_store_hdr_opt(skops, buf, len, 0);
}

#define V_BIT 0x80		/* §4.1 Table 1 */
#define GLT_MASK 0x7f
#define TEP_MIN 0x20
#define LEN_MASK 0x1f		/* §4.4 Figure 6: length byte 100nnnnn */
#define AFTER_LEN_MIN 0xa0	/* §4.4: a length byte is followed by a v = 1 TEP id */
#define GLOBAL_B 0x01		/* §4.2 */
#define GLOBAL_A 0x02

/* peer_status: why the peer's SYN-form option is unusable (mirrors FallbackReason) */
#define PEER_OK 0
#define PEER_ABSENT 1
#define PEER_MULTIPLE 2
#define PEER_MALFORMED 3

/* Loops run through bpf_loop(): the verifier checks one step once instead of every path
 * through an unrolled option parser. */

struct find_ctx {
	__u8 hdr[BUF];
	__u32 i, len, at, found, status;
};

static long find_step(__u32 n, void *c)
{
	struct find_ctx *x = c;
	__u8 kind, len;

	if (x->i >= x->len || x->i >= HDR_MAX)
		return 1;
	kind = x->hdr[AT(x->i)];
	if (kind == 0)
		return 1;
	if (kind == 1) {
		x->i++;
		return 0;
	}
	if (x->i + 1 >= x->len)
		return 1;
	len = x->hdr[AT(x->i + 1)];
	if (len < 2 || x->i + len > x->len)
		return 1;	/* a malformed option list: stop reading */
	if (kind == ENO_KIND) {
		if (x->found) {
			x->status = PEER_MULTIPLE;	/* §4.1: several count as none */
			return 1;
		}
		x->found = 1;
		x->at = x->i;
	}
	x->i += len;
	return 0;
}

/* Find the one ENO option in the TCP header @hdr (@hdr_len bytes) and copy it into @out.
 * Returns PEER_*; the option length goes to @out_len. */
static __always_inline int find_eno(const __u8 *hdr, __u32 hdr_len, __u8 *out, __u8 *out_len)
{
	struct find_ctx x = { .i = 20, .len = hdr_len };
	__u32 len;

	__builtin_memcpy(x.hdr, hdr, BUF);
	bpf_loop(OPT_MAX, find_step, &x, 0);
	if (x.status)
		return x.status;
	if (!x.found)
		return PEER_ABSENT;
	len = x.hdr[AT(x.at + 1)];
	if (len > OPT_MAX)
		return PEER_MALFORMED;
	for (int k = 0; k < OPT_MAX; k++) {
		if (k >= len)
			break;
		out[AT(k)] = x.hdr[AT(x.at + k)];
	}
	*out_len = len;
	return PEER_OK;
}

struct scan_ctx {
	__u8 opt[BUF];
	__u8 ids[16];		/* out: TEP ids seen */
	__u8 dups[16];		/* out: TEP ids seen more than once */
	__u8 want[16];		/* in: ids whose last occurrence is reported */
	/* out: where the data of TEP id t's suboption starts, at pos[t & 63] (0: none),
	 * | POS_LB when a length byte gives its length (else it runs to the end, §4.4).
	 * Indexed by a value from the network, so the verifier tracks no contents (no
	 * state per position); ids t and t + 64 share a slot, which the reader checks. */
	__u8 pos[64];
	__u32 i, len;
	__u8 glob, last, bad, pad;
};
#define POS_LB 0x80

static long scan_step(__u32 n, void *c)
{
	struct scan_ctx *x = c;
	__u32 at = 0, size;
	__u8 first, glt, tep, bit;

	if (x->i >= x->len)
		return 1;
	first = x->opt[AT(x->i)];
	glt = first & GLT_MASK;
	if (!(first & V_BIT)) {
		x->i++;
		if (glt < TEP_MIN) {
			x->glob = glt;	/* global suboption (§4.2) */
			return 0;
		}
		tep = glt;
	} else if (glt >= TEP_MIN) {
		tep = glt;		/* data runs to the end of the option (§4.4) */
		at = x->i + 1;
		x->i = x->len;
	} else {
		size = (first & LEN_MASK) + 1;
		/* §4.4: a length byte needs a v = 1 TEP id after it and its data inside */
		if (x->i + 1 >= x->len || x->opt[AT(x->i + 1)] < AFTER_LEN_MIN ||
		    x->i + 2 + size > x->len) {
			x->bad = 1;
			return 1;
		}
		tep = x->opt[AT(x->i + 1)] & GLT_MASK;
		at = (x->i + 2) | POS_LB;
		x->i += 2 + size;
	}
	bit = 1 << (tep & 7);
	x->dups[(tep >> 3) & 15] |= x->ids[(tep >> 3) & 15] & bit;	/* §4.5 condition 3 */
	x->ids[(tep >> 3) & 15] |= bit;
	if (x->want[(tep >> 3) & 15] & bit)
		x->last = tep;
	if (at)
		x->pos[tep & 63] = at;
	return 0;
}

/* Structural check of a SYN-form option @opt (kind, length, contents; §4.1, §4.4), the
 * same reading as option.py's strict parser. Fills @x->ids, @x->glob (0x00 when implicit,
 * §4.2) and @x->last (the last TEP id also set in @x->want). Returns -1 if ill-formed. */
static __always_inline int scan_syn_form(struct scan_ctx *x, const __u8 *opt, __u32 len)
{
	if (len < 2 || len > OPT_MAX)
		return -1;
	__builtin_memcpy(x->opt, opt, BUF);
	x->i = 2;
	x->len = len;
	bpf_loop(OPT_MAX, scan_step, x, 0);
	return x->bad ? -1 : 0;
}

#endif /* ENO_OPTIONS_H */
