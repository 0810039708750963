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
 * Maps (layouts mirrored in testbed/eno/bpf/maps.py):
 *   eno_sk      SK_STORAGE, keyed by socket fd from userspace: offer in, transcript out
 *   eno_listen  HASH port -> the SYN-ACK options a listener may answer with, best first
 *   eno_synack  LRU HASH 4-tuple -> what a request socket sent and received, moved into
 *               the child's eno_sk when the connection is established
 *   eno_answers LRU HASH (port, TEP, key) -> a single-use SYN-ACK option answering a SYN
 *               whose suboption data for that TEP begins with the key (RFC 8548 §3.5
 *               resumption: key = the identifier half the peer will send, answer = ours)
 */
#include <linux/bpf.h>
#include <linux/types.h>
#include <bpf/bpf_helpers.h>

#define SOL_TCP 6
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
#define MAX_CANDS 8
#define KEY_MAX 16		/* longest answer key (tcpcrypt's identifier half: 9, §3.5) */

#define V_BIT 0x80		/* §4.1 Table 1 */
#define GLT_MASK 0x7f
#define TEP_MIN 0x20
#define LEN_MASK 0x1f		/* §4.4 Figure 6: length byte 100nnnnn */
#define AFTER_LEN_MIN 0xa0	/* §4.4: a length byte is followed by a v = 1 TEP id */
#define GLOBAL_B 0x01		/* §4.2 */
#define GLOBAL_A 0x02

/* eno_sk.state */
#define ST_OFFER 1		/* active: userspace wrote the SYN option, connect() pending */
#define ST_ECHO 2		/* active: valid SYN-ACK; ENO on every segment until one arrives */
#define ST_DONE 3		/* nothing more to write */
#define ST_PASSIVE 4		/* passive child: transcript copied in */

/* eno_sk.flags */
#define F_ACK_ENO 0x01		/* passive: the first ACK segment carried ENO (§4.6 rule 1) */
#define F_ENO_LATER 0x02	/* passive: ENO seen after a first ACK without it (split path) */
#define F_SYN_DROPPED 0x04	/* active: ENO left off a SYN retransmission (§4.6) */
#define F_SYNACK_ENO 0x08	/* active: the SYN-ACK's option passed the structural checks */

/* peer_status: why the peer's SYN-form option is unusable (mirrors FallbackReason) */
#define PEER_OK 0
#define PEER_ABSENT 1
#define PEER_MULTIPLE 2
#define PEER_MALFORMED 3

struct eno_sk {
	__u8 state;
	__u8 mine_len;		/* our SYN-form option: kind, length, contents (§4.8) */
	__u8 peer_len;		/* the peer's SYN-form option as received */
	__u8 flags;
	__u8 syn_limit;		/* active: SYNs that carry ENO (first + retransmissions); 0 = all */
	__u8 syns;		/* active: SYNs sent */
	__u8 peer_status;
	__u8 pad;
	__u32 segs_in;		/* active: segments received when the SYN-ACK arrived */
	__u8 offered[16];	/* active: bitmap of the TEP ids in our SYN */
	__u8 mine[BUF];
	__u8 peer[BUF];
};

struct eno_cand {
	__u8 tep;		/* TEP id this answer selects */
	__u8 len;		/* SYN-ACK option length */
	__u8 opt[BUF];		/* the SYN-ACK option the pure core builds for it (§4.5) */
};

struct eno_listen {
	__u8 count;
	__u8 need_a;		/* §4.2 mandatory application-aware: peer must send a = 1 */
	__u8 pad[2];
	__u32 key_lens;		/* bit n: eno_answers holds answers with n-byte keys */
	struct eno_cand cands[MAX_CANDS];
};

struct answer_key {
	__u32 port;		/* listener port, host order */
	__u8 tep;		/* TEP id (v bit clear) */
	__u8 len;		/* key bytes used; the rest of key[] is zero */
	__u8 pad[2];
	__u8 key[KEY_MAX];	/* prefix of the peer's suboption data */
};

struct eno_answer {
	__u64 deadline_ns;	/* CLOCK_MONOTONIC (bpf_ktime_get_ns); unusable from then on */
	__u8 len;
	__u8 pad[7];
	__u8 opt[BUF];		/* the SYN-ACK option the pure core sends with this answer */
};

struct conn_key {
	__u32 local_ip;
	__u32 remote_ip;
	__u32 local_port;	/* host order */
	__u32 remote_port;	/* network order, as sock_ops gives it */
};

struct eno_rec {
	__u8 mine_len;
	__u8 peer_len;
	__u8 peer_status;
	__u8 pad;
	__u8 mine[BUF];
	__u8 peer[BUF];
};

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct eno_sk);
} eno_sk SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, struct eno_listen);
} eno_listen SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, struct conn_key);
	__type(value, struct eno_rec);
} eno_synack SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);	/* full: the least recently pushed goes first */
	__uint(max_entries, 8192);
	__type(key, struct answer_key);
	__type(value, struct eno_answer);
} eno_answers SEC(".maps");

/* Scratch space: a TCP header copy does not fit beside the rest on the 512-byte stack. */
struct scratch {
	__u8 hdr[BUF];
	struct eno_rec rec;
	struct answer_key key;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct scratch);
} eno_scratch SEC(".maps");

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

static __always_inline void key_of(struct bpf_sock_ops *skops, struct conn_key *key)
{
	key->local_ip = skops->local_ip4;
	key->remote_ip = skops->remote_ip4;
	key->local_port = skops->local_port;
	key->remote_port = skops->remote_port;
}

/* The socket's storage; NULL for request sockets (skops->sk is then not a full socket). */
static __always_inline struct eno_sk *storage(struct bpf_sock_ops *skops, __u64 flags)
{
	struct bpf_sock *sk = skops->sk;

	if (!sk)
		return 0;
	return bpf_sk_storage_get(&eno_sk, sk, 0, flags);
}

static __always_inline struct scratch *scratch(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&eno_scratch, &zero);
}

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
