/* When a released frame reaches the device, and the send lead learned from it.
 *
 * A frame leaves the line by a send call on its AF_PACKET socket. The call runs the kernel's
 * send path (packet_snd, dev_direct_xmit) up to the device's transmit routine; for a veth that
 * routine hands the frame to the peer's input (the receiving host stamps it there). When the
 * line has sent nothing for a while that path is cold: from the call to the device took about
 * 1 us warm and 8 / 13 / 18 us after 5 / 10 / 100 ms of idleness on the 2-vCPU VM of the README
 * (the spin before the release keeps the CPU awake, not its caches). A round trip crosses the
 * line twice, so the error grew with the idle time whatever the release timer did.
 *
 * The line measures it: a send call that follows at least 0.25 ms of the direction's idleness
 * asks for a software transmit timestamp on its first frame (SO_TIMESTAMPING, taken by the
 * device's transmit routine: skb_tx_timestamp) and reads it from the socket's error queue right
 * after the call. Each idle class keeps its last DL_LEAD_SAMPLES call-to-device times. With
 * --send-lead auto a send of that class starts earlier than the frame's due time by the
 * smallest of them (the lead), so the frame reaches the device at its due time. Every frame
 * released before its due time is stamped too, so the delay recorded for it is the device's
 * time, never the call's; one that reached the device before its due time (the path was faster
 * than the smallest of the last eight) is counted (early) with the largest such margin. Warm
 * sends (class -1) are never led nor stamped: a busy line pays nothing for this.
 */
#include "txstamp.h"

#include "io.h"

#include <arpa/inet.h>
#include <errno.h>
#include <linux/errqueue.h>
#include <linux/if_packet.h>
#include <linux/net_tstamp.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>


int dl_open_tx(const char *ifname, int *stamps, char *serr, size_t serrlen, char *err,
	       size_t errlen)
{
	*stamps = 0;
	static const struct dl_sockopt opts[] = {
		{SOL_PACKET, PACKET_VNET_HDR, 1, "PACKET_VNET_HDR"},
		{SOL_PACKET, PACKET_QDISC_BYPASS, 1, "PACKET_QDISC_BYPASS"},
		{SOL_SOCKET, SO_SNDBUFFORCE, DL_SOCKET_BUFFER, "SO_SNDBUFFORCE"},
	};
	unsigned idx;
	int fd = dl_packet_socket(ifname, opts, sizeof(opts) / sizeof(opts[0]), "to send", &idx,
				  err, errlen);
	if (fd < 0)
		return -1;
	/* Protocol 0: bound for sending only, no frame is ever queued to it. */
	struct sockaddr_ll sll = {.sll_family = AF_PACKET, .sll_protocol = 0, .sll_ifindex = (int)idx};
	if (bind(fd, (struct sockaddr *)&sll, sizeof(sll))) {
		snprintf(err, errlen, "bind the send socket to %s: %s", ifname, strerror(errno));
		close(fd);
		return -1;
	}
	/* Report software stamps, payload-free (OPT_TSONLY), numbered (OPT_ID); which frames get one
	 * is asked per frame by a control message (SO_TIMESTAMPING with TX_SOFTWARE). */
	int flags = SOF_TIMESTAMPING_SOFTWARE | SOF_TIMESTAMPING_OPT_TSONLY | SOF_TIMESTAMPING_OPT_ID;
	if (setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPING, &flags, sizeof(flags)))
		snprintf(serr, serrlen, "SO_TIMESTAMPING on %s: %s", ifname, strerror(errno));
	else
		*stamps = 1;
	return fd;
}

void dl_txstamp_init(struct dl_txstamp *t, int on, int lead, const char *error)
{
	memset(t, 0, sizeof(*t));
	t->on = on;
	t->lead = lead;
	snprintf(t->error, sizeof(t->error), "%s", error ? error : "");
	struct msghdr m = {.msg_control = t->cmsg, .msg_controllen = sizeof(t->cmsg)};
	struct cmsghdr *c = CMSG_FIRSTHDR(&m);
	c->cmsg_level = SOL_SOCKET;
	c->cmsg_type = SO_TIMESTAMPING;
	c->cmsg_len = CMSG_LEN(sizeof(uint32_t));
	uint32_t ask = SOF_TIMESTAMPING_TX_SOFTWARE;
	memcpy(CMSG_DATA(c), &ask, sizeof(ask));
	t->cmsg_len = CMSG_SPACE(sizeof(uint32_t));
}

int dl_idle_class(const struct dl_txstamp *t, uint64_t at)
{
	if (!t->last_send || at <= t->last_send)
		return -1;
	uint64_t idle = at - t->last_send;
	if (idle < 250000)
		return -1;
	return idle < 1000000 ? 0 : idle < 4000000 ? 1 : idle < 16000000 ? 2 : 3;
}

int dl_class_lead(const struct dl_txstamp *t, int cls, uint64_t *lead)
{
	*lead = 0;
	if (!t->lead || !t->on || cls < 0 || t->nlearned[cls] < DL_LEAD_MIN_SAMPLES)
		return 0;
	unsigned n = t->nlearned[cls] < DL_LEAD_SAMPLES ? t->nlearned[cls] : DL_LEAD_SAMPLES;
	uint64_t least = UINT64_MAX;
	for (unsigned i = 0; i < n; i++)
		least = t->learned[cls][i] < least ? t->learned[cls][i] : least;
	*lead = least;
	return 1;
}

uint64_t dl_lead_at(const struct dl_txstamp *t, uint64_t at)
{
	uint64_t lead;
	dl_class_lead(t, dl_idle_class(t, at), &lead);
	return lead;
}

void dl_lead_learn(struct dl_txstamp *t, int cls, uint64_t to_device_ns)
{
	if (cls < 0 || cls >= DL_IDLE_CLASSES || to_device_ns > DL_LEAD_CAP_NS)
		return;
	t->learned[cls][t->nlearned[cls]++ % DL_LEAD_SAMPLES] = to_device_ns;
}

int dl_stamps_read(int fd, uint32_t *keys, uint64_t *real_ns, int max)
{
	int got = 0;
	for (;;) {
		char ctrl[256];
		struct msghdr m = {.msg_control = ctrl, .msg_controllen = sizeof(ctrl)};
		if (recvmsg(fd, &m, MSG_ERRQUEUE | MSG_DONTWAIT) < 0)
			return got;  /* EAGAIN: the queue is empty */
		uint64_t ts = 0;
		int keyed = 0;
		uint32_t key = 0;
		for (struct cmsghdr *c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c)) {
			if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SO_TIMESTAMPING) {
				struct timespec tss[3];
				memcpy(tss, CMSG_DATA(c), sizeof(tss));
				ts = (uint64_t)tss[0].tv_sec * 1000000000ULL + (uint64_t)tss[0].tv_nsec;
			} else if (c->cmsg_level == SOL_PACKET && c->cmsg_type == PACKET_TX_TIMESTAMP) {
				struct sock_extended_err ee;
				memcpy(&ee, CMSG_DATA(c), sizeof(ee));
				if (ee.ee_origin == SO_EE_ORIGIN_TIMESTAMPING &&
				    ee.ee_info == SCM_TSTAMP_SND) {
					key = ee.ee_data;
					keyed = 1;
				}
			}
		}
		if (ts && keyed && got < max) {
			keys[got] = key;
			real_ns[got] = ts;
			got++;
		}
	}
}

/* --lead-trace: the send lead's bookkeeping on a virtual clock, for exact tests. Input, one send
 * call per line (blank lines and '#' comments skipped), times increasing:
 *     T_NS TO_DEVICE_NS    a send call at T_NS whose first frame reached the device after
 *     T_NS -               TO_DEVICE_NS, or was not stamped (a warm call: never learned)
 * Output, one line per call, as decided before the call: "T_NS CLASS LEAD_NS" (CLASS -1: warm).
 * Bad input: one line on stderr, exit 2. */
int dl_lead_trace_main(FILE *in, FILE *out)
{
	struct dl_txstamp t;
	dl_txstamp_init(&t, 1, 1, NULL);
	char line[256];
	unsigned long long prev = 0;
	for (unsigned n = 1; fgets(line, sizeof(line), in); n++) {
		char *p = line + strspn(line, " \t");
		if (*p == '#' || *p == '\n' || !*p)
			continue;
		unsigned long long at, to_device = 0;
		char dev[32];
		if (sscanf(p, "%llu %31s", &at, dev) != 2 || at <= prev ||
		    (strcmp(dev, "-") && sscanf(dev, "%llu", &to_device) != 1)) {
			fprintf(stderr, "delayline: error: lead trace line %u: want 'T_NS TO_DEVICE_NS|-' "
				"with increasing times\n", n);
			return 2;
		}
		int cls = dl_idle_class(&t, at);
		fprintf(out, "%llu %d %llu\n", at, cls, (unsigned long long)dl_lead_at(&t, at));
		if (strcmp(dev, "-"))
			dl_lead_learn(&t, cls, to_device);
		t.last_send = at;
		prev = at;
	}
	return 0;
}
