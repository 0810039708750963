// SPDX-License-Identifier: GPL-2.0
/*
 * The maps of eno.bpf.c and how the program reaches them (layouts mirrored in
 * testbed/eno/bpf/maps.py):
 *   eno_sk      SK_STORAGE, keyed by socket fd from userspace: offer in, transcript out
 *   eno_listen  HASH port -> the SYN-ACK options a listener may answer with, best first
 *   eno_synack  LRU HASH 4-tuple -> what a request socket sent and received, moved into
 *               the child's eno_sk when the connection is established
 *   eno_answers LRU HASH (port, TEP, key) -> a single-use SYN-ACK option answering a SYN
 *               whose suboption data for that TEP begins with the key (RFC 8548 §3.5
 *               resumption: key = the identifier half the peer will send, answer = ours)
 */
#ifndef ENO_MAPS_H
#define ENO_MAPS_H

#include <linux/bpf.h>
#include <linux/types.h>
#include <bpf/bpf_helpers.h>

#include "eno_options.h"

#define MAX_CANDS 8
#define KEY_MAX 16		/* longest answer key (tcpcrypt's identifier half: 9, §3.5) */

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

#endif /* ENO_MAPS_H */
