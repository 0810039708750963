#ifndef DL_TXSTAMP_H
#define DL_TXSTAMP_H
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/socket.h>

/* When a frame a direction sends reaches the device, and the send lead learned from it. See
 * txstamp.c. Idle classes: how long the direction sent nothing before a send call. */
#define DL_IDLE_CLASSES 4        /* >= 0.25 ms, >= 1 ms, >= 4 ms, >= 16 ms; warmer: class -1 */
#define DL_LEAD_SAMPLES 8        /* the last measurements a class keeps */
#define DL_LEAD_MIN_SAMPLES 4    /* a class leads only once it has this many */
#define DL_LEAD_CAP_NS 100000ULL /* a measurement above this (a preempted call) is not learned */
#define DL_STAMP_GIVE_UP 16      /* stamps asked for and none ever came: the device gives none */

struct dl_txstamp {
	int on;          /* stamps are asked for (the socket and device give them) */
	int lead;        /* --send-lead auto: release early by the class's learned lead */
	char error[96];  /* why stamps are off ("" when they are on or were never asked for) */
	uint32_t next_key;  /* SOF_TIMESTAMPING_OPT_ID of the next stamped frame */
	uint64_t last_send;  /* CLOCK_MONOTONIC ns when the last send call started (0: none yet) */
	uint64_t learned[DL_IDLE_CLASSES][DL_LEAD_SAMPLES];  /* ns from call to device */
	unsigned nlearned[DL_IDLE_CLASSES];
	uint64_t asked, stamped, missing, early;  /* frames; early: at the device before due */
	double early_max_ns;
	char cmsg[64];  /* the SO_TIMESTAMPING control message a stamped frame carries */
	size_t cmsg_len;
};

/* The direction's own send socket on ifname (PACKET_VNET_HDR, qdisc bypass, bound with protocol
 * 0, so it receives nothing and its error queue holds only its own stamps). *stamps: whether
 * SO_TIMESTAMPING could be set (if not, serr says why). The fd, or -1 (cause in err). */
int dl_open_tx(const char *ifname, int *stamps, char *serr, size_t serrlen, char *err,
	       size_t errlen);
void dl_txstamp_init(struct dl_txstamp *t, int on, int lead, const char *error);
/* Idle class of a send call at `at` (CLOCK_MONOTONIC ns): -1 when the direction sent within the
 * last 0.25 ms (or never: nothing learned applies to a first send). */
int dl_idle_class(const struct dl_txstamp *t, uint64_t at);
/* The lead of idle class cls into *lead: 1 when it leads, 0 when it does not (leading off, or
 * fewer than DL_LEAD_MIN_SAMPLES measurements: *lead 0). */
int dl_class_lead(const struct dl_txstamp *t, int cls, uint64_t *lead);
/* How much earlier than its due time a send call at `at` starts: 0 unless leading is on and
 * the class has DL_LEAD_MIN_SAMPLES measurements; else the smallest of them. */
uint64_t dl_lead_at(const struct dl_txstamp *t, uint64_t at);
/* A measured call-to-device time of the first frame of a send call of class cls. */
void dl_lead_learn(struct dl_txstamp *t, int cls, uint64_t to_device_ns);
/* Read every stamp waiting on fd's error queue: up to max (key, CLOCK_REALTIME ns) pairs;
 * returns how many were read. */
int dl_stamps_read(int fd, uint32_t *keys, uint64_t *real_ns, int max);
/* --lead-trace: send calls on a virtual clock in, class and lead per call out (txstamp.c). */
int dl_lead_trace_main(FILE *in, FILE *out);
/* Stamps per send call, at most. */
#define DL_STAMPS_MAX 64
#endif
