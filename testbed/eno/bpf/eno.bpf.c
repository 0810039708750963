// SPDX-License-Identifier: GPL-2.0
/*
 * TCP-ENO (RFC 8547) header-option mechanism for kernel TCP sockets: a cgroup sock_ops
 * program. Userspace (testbed/eno/bpf/datapath.py) is the authority on what an option
 * says: it builds every option this program writes with the pure core (testbed/eno) and
 * judges the result from the raw options this program records per socket. The program
 * only puts those bytes on the wire at the right segments, picks the passive opener's
 * TEP from prepared answers, and never lets a malformed option from the network do more
 * than disable ENO for that connection (RFC 8547 §4.4, §4.6).
 *
 * Maps and their accessors: eno_maps.h (layouts mirrored in testbed/eno/bpf/maps.py).
 * Option reading and writing: eno_options.h.
 */
#include <linux/bpf.h>
#include <linux/types.h>
#include <bpf/bpf_helpers.h>

#define SOL_TCP 6

#include "eno_options.h"
#include "eno_maps.h"

/* -- passive opener ------------------------------------------------------------------ */

/* RFC 8548 §3.5 passive resumption: a pushed answer whose key begins A's suboption data
 * for @tep (at @x->data_at in @peer) replaces the fresh answer in @rec, and is used up.
 * Keys are tried shortest first, as the NFQUEUE hook does (testbed/eno/engine.py).
 * Data shorter than every key never matches: §3.5 reads it as a fresh offer. */
static __always_inline void take_answer(struct eno_listen *l, struct scan_ctx *x,
					 struct scratch *s, __u32 port, __u8 tep)
{
	struct answer_key *key = &s->key;
	struct eno_rec *rec = &s->rec;
	struct eno_answer *ans;
	__u8 len;
	__u32 lens = l->key_lens, pos = x->pos[tep & 63], at = pos & ~POS_LB, size;

	/* v = 0 (a fresh offer), or the slot holds the data of TEP id tep +/- 64: answer
	 * fresh, as §3.5 allows */
	if (!at || (rec->peer[AT(at - 1)] & GLT_MASK) != tep)
		return;
	__builtin_memset(key, 0, sizeof(*key));
	key->port = port;
	key->tep = tep;
	if (pos & POS_LB)
		size = (rec->peer[AT(at - 2)] & LEN_MASK) + 1;
	else
		size = x->len - at;
	for (int n = 1; n <= KEY_MAX; n++) {
		if (n > size)
			break;
		key->key[(n - 1) & (KEY_MAX - 1)] = rec->peer[AT(at + n - 1)];
		if (!(lens & (1U << n)))
			continue;
		key->len = n;
		ans = bpf_map_lookup_elem(&eno_answers, key);
		if (!ans)
			continue;
		len = ans->len;
		if (ans->deadline_ns <= bpf_ktime_get_ns() || len < 2 || len > OPT_MAX) {
			bpf_map_delete_elem(&eno_answers, key);	/* expired: fresh exchange */
			return;
		}
		__builtin_memcpy(s->hdr, ans->opt, BUF);	/* the SYN header is read */
		/* Single use: of two SYNs racing for one answer, only the one whose delete
		 * succeeds sends it; the other keeps the fresh answer. */
		if (bpf_map_delete_elem(&eno_answers, key) == 0) {
			__builtin_memcpy(rec->mine, s->hdr, BUF);
			rec->mine_len = len;
		}
		return;
	}
}

/* Decide B's SYN-ACK option from A's SYN (§4.5: B's most preferred TEP that A offered)
 * and remember both options for the child socket. Returns the length to write, or 0. */
static int synack_decide(struct bpf_sock_ops *skops)
{
	struct scratch *s = scratch();
	struct scan_ctx x = {};
	struct eno_listen *l;
	struct conn_key key = {};
	__u32 port = skops->local_port;
	int got, status;
	__u8 chosen = 0;

	if (!s)
		return 0;
	l = bpf_map_lookup_elem(&eno_listen, &port);
	if (!l)
		return 0;
	key_of(skops, &key);
	got = bpf_getsockopt(skops, SOL_TCP, TCP_BPF_SYN, s->hdr, HDR_MAX);
	if (got < 20)
		return 0;
	__builtin_memset(&s->rec, 0, sizeof(s->rec));
	status = find_eno(s->hdr, got, s->rec.peer, &s->rec.peer_len);
	if (status == PEER_OK && scan_syn_form(&x, s->rec.peer, s->rec.peer_len))
		status = PEER_MALFORMED;
	s->rec.peer_status = status;
	/* §4.6 rule 3: A must have b = 0 (B sends b = 1); §4.2: mandatory a bit. */
	if (status == PEER_OK && !(x.glob & GLOBAL_B) && (!l->need_a || (x.glob & GLOBAL_A))) {
		for (int c = 0; c < MAX_CANDS; c++) {
			struct eno_cand *cand = &l->cands[c];
			__u8 byte = (cand->tep >> 3) & 15, bit = 1 << (cand->tep & 7);

			if (c >= l->count)
				break;
			/* §4.5: B's most preferred TEP that A offered exactly once */
			if (!(x.ids[byte] & bit) || (x.dups[byte] & bit))
				continue;
			if (cand->len < 2 || cand->len > OPT_MAX)
				break;
			__builtin_memcpy(s->rec.mine, cand->opt, BUF);
			s->rec.mine_len = cand->len;
			chosen = cand->tep;
			break;
		}
	}
	/* Outside the loop: the verifier then checks it once, not per candidate. */
	if (chosen && l->key_lens)
		take_answer(l, &x, s, port, chosen);
	bpf_map_update_elem(&eno_synack, &key, &s->rec, BPF_ANY);
	return s->rec.mine_len;
}

static void synack_write(struct bpf_sock_ops *skops)
{
	struct conn_key key = {};
	struct eno_rec *rec;

	key_of(skops, &key);
	rec = bpf_map_lookup_elem(&eno_synack, &key);
	if (!rec)
		return;
	store(skops, rec->mine, rec->mine_len);
}

/* The child is established: move the record into its storage and judge the first ACK
 * segment (§4.6 rule 1: it must carry ENO, else B disables encryption). */
static void passive_established(struct bpf_sock_ops *skops)
{
	struct conn_key key = {};
	struct eno_rec *rec;
	struct eno_sk *st;
	__u8 probe[4] = { ENO_KIND };

	key_of(skops, &key);
	rec = bpf_map_lookup_elem(&eno_synack, &key);
	/* Nothing to write on a child; watch for ENO only where it helps the split check. */
	bpf_sock_ops_cb_flags_set(skops, 0);
	if (!rec)
		return;
	st = storage(skops, BPF_SK_STORAGE_GET_F_CREATE);
	if (st) {
		st->state = ST_PASSIVE;
		st->mine_len = rec->mine_len;
		st->peer_len = rec->peer_len;
		st->peer_status = rec->peer_status;
		__builtin_memcpy(st->mine, rec->mine, BUF);
		__builtin_memcpy(st->peer, rec->peer, BUF);
		if (rec->mine_len && bpf_load_hdr_opt(skops, probe, sizeof(probe), 0) >= 2)
			st->flags |= F_ACK_ENO;
		else if (rec->mine_len)
			bpf_sock_ops_cb_flags_set(skops, BPF_SOCK_OPS_PARSE_UNKNOWN_HDR_OPT_CB_FLAG);
	}
	bpf_map_delete_elem(&eno_synack, &key);
}

/* -- active opener ------------------------------------------------------------------- */

/* The SYN-ACK arrived (skops->skb): record B's option and decide whether A's ACK carries
 * ENO. A sends it only for a usable option whose global has b = 1 and which selects a
 * TEP A offered (§4.5, §4.6); userspace re-judges the same bytes with the pure core. */
static void active_established(struct bpf_sock_ops *skops, struct eno_sk *st)
{
	struct scratch *s = scratch();
	struct scan_ctx x = {};
	__u8 *data = (__u8 *)(long)skops->skb_data;
	__u8 *end = (__u8 *)(long)skops->skb_data_end;
	__u32 hdr_len = 0, doff;
	int status;

	st->state = ST_DONE;
	st->segs_in = skops->segs_in;
	if (!s)
		goto off;
	for (int k = 0; k < HDR_MAX; k++) {
		if (data + k + 1 > end)
			break;
		s->hdr[AT(k)] = data[k];
		hdr_len = k + 1;
	}
	if (hdr_len < 20)
		goto off;
	doff = (s->hdr[12] >> 4) * 4;
	if (doff < hdr_len)
		hdr_len = doff;
	status = find_eno(s->hdr, hdr_len, st->peer, &st->peer_len);
	__builtin_memcpy(x.want, st->offered, sizeof(x.want));
	if (status == PEER_OK && scan_syn_form(&x, st->peer, st->peer_len))
		status = PEER_MALFORMED;
	st->peer_status = status;
	if (status == PEER_OK && (x.glob & GLOBAL_B) && x.last && !(st->flags & F_SYN_DROPPED)) {
		st->flags |= F_SYNACK_ENO;
		st->state = ST_ECHO;
		return;		/* keep WRITE: A's ENO goes on the third segment (§4.6) */
	}
off:
	bpf_sock_ops_cb_flags_set(skops, 0);
}

static int active_len(struct bpf_sock_ops *skops, struct eno_sk *st)
{
	if (skops->skb_tcp_flags & 0x02) {	/* our SYN or a retransmission of it */
		if (st->state != ST_OFFER)
			return 0;
		st->syns++;
		if (st->syn_limit && st->syns > st->syn_limit) {
			st->flags |= F_SYN_DROPPED;	/* §4.6 exception */
			return 0;
		}
		return st->mine_len;
	}
	if (st->state != ST_ECHO)
		return 0;
	/* §4.6: A includes ENO until it has received a non-SYN segment from B. */
	if (skops->segs_in > st->segs_in) {
		st->state = ST_DONE;
		bpf_sock_ops_cb_flags_set(skops, 0);
		return 0;
	}
	return 2;
}

static void active_write(struct bpf_sock_ops *skops, struct eno_sk *st)
{
	__u8 non_syn[2] = { ENO_KIND, 2 };	/* §4.1 Figure 3, empty contents */
	__u32 len = st->mine_len;

	if (skops->skb_tcp_flags & 0x02) {
		if (st->state == ST_OFFER && !(st->flags & F_SYN_DROPPED))
			store(skops, st->mine, len);
		return;
	}
	if (st->state == ST_ECHO)
		store(skops, non_syn, sizeof(non_syn));
}

/* -- dispatch ------------------------------------------------------------------------ */

static int reserve(struct bpf_sock_ops *skops, __u32 len)
{
	if (len >= 2 && len <= OPT_MAX)
		bpf_reserve_hdr_opt(skops, len, 0);	/* -ENOSPC: sent without ENO */
	return 1;
}

/* A SYN-ACK whose option does not fit goes without ENO: the record says so, so that
 * userspace judges what was sent. */
static int reserve_synack(struct bpf_sock_ops *skops, __u32 len)
{
	struct conn_key key = {};
	struct eno_rec *rec;

	if (len < 2 || len > OPT_MAX || bpf_reserve_hdr_opt(skops, len, 0) == 0)
		return 1;
	key_of(skops, &key);
	rec = bpf_map_lookup_elem(&eno_synack, &key);
	if (rec)
		rec->mine_len = 0;
	return 1;
}

SEC("sockops")
int eno_sockops(struct bpf_sock_ops *skops)
{
	struct eno_sk *st = 0;
	__u8 probe[4] = { ENO_KIND };

	if (skops->family != 2)	/* AF_INET only, like the NFQUEUE hook */
		return 1;
	switch (skops->op) {
	case BPF_SOCK_OPS_TCP_LISTEN_CB:
		/* SYN-ACKs are written for the listener's request sockets. */
		bpf_sock_ops_cb_flags_set(skops, BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG);
		return 1;
	case BPF_SOCK_OPS_TCP_CONNECT_CB:
		st = storage(skops, 0);
		if (st && st->state == ST_OFFER)
			bpf_sock_ops_cb_flags_set(skops, BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG);
		return 1;
	case BPF_SOCK_OPS_HDR_OPT_LEN_CB:
		if ((skops->skb_tcp_flags & 0x12) == 0x12)	/* SYN-ACK: skops->sk is a request */
			return reserve_synack(skops, synack_decide(skops));
		st = storage(skops, 0);
		return st ? reserve(skops, active_len(skops, st)) : 1;
	case BPF_SOCK_OPS_WRITE_HDR_OPT_CB:
		if ((skops->skb_tcp_flags & 0x12) == 0x12) {
			synack_write(skops);
			return 1;
		}
		st = storage(skops, 0);
		if (st)
			active_write(skops, st);
		return 1;
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
		st = storage(skops, 0);
		if (st && st->state == ST_OFFER)
			active_established(skops, st);
		return 1;
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		passive_established(skops);
		return 1;
	case BPF_SOCK_OPS_PARSE_HDR_OPT_CB:
		/* Passive child after a first ACK without ENO: does A still send it? */
		st = storage(skops, 0);
		if (st && bpf_load_hdr_opt(skops, probe, sizeof(probe), 0) >= 2) {
			st->flags |= F_ENO_LATER;
			bpf_sock_ops_cb_flags_set(skops, 0);
		}
		return 1;
	}
	return 1;
}

char LICENSE[] SEC("license") = "GPL";
