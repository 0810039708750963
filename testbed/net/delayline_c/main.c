/* tcpinc-delayline: the compiled per-packet path of the userspace delay line.
 *
 *   tcpinc-delayline --if-a IF0 --if-b IF1 --a2b SHAPE --b2a SHAPE [--seed N] [--stats PATH]
 *       [--spin-budget F] [--lead-us N] [--batch N] [--rt-priority N] [--parent-pid N]
 *       [--rx-ring on|off]
 *   tcpinc-delayline --trace --a2b SHAPE --b2a SHAPE [--seed N] < events   (see trace.c)
 *   tcpinc-delayline --limits
 * SHAPE: delay_ns=N,jitter_ns=N,loss=F,rate_bps=N,queue_packets=N,queue_bytes=N (0 = none).
 *
 * Same contract as testbed/net/delayline.py: prints "ready" once the sockets are bound;
 * SIGTERM/SIGINT stop it and write --stats atomically (exit 0); SIGUSR1 writes the stats and
 * continues; bad input is one line on stderr and exit 2; a runtime OS error exits 1, and so
 * does an interface that disappears (its veth peer's namespace died): the line never outlives
 * its link spinning on the socket error.
 *
 * Timing: the loop sleeps in ppoll() until `lead` before the earliest due time, then polls
 * without sleeping until it is due. `lead` is the wake-up latency measured on this machine:
 * every timed sleep's overshoot is recorded and lead = the largest of the last 32 plus a 20 us
 * margin, so a machine that wakes idle processes slowly gets a longer spin, a quick one a short
 * one. Polling is capped to --spin-budget of wall time per 100 ms window (the endpoints share
 * the CPUs); past the cap frames go out at ppoll()'s precision until the window ends.
 *
 * --rx-ring on: read each port through a PACKET_RX_RING (ring.c: no system call per frame; 16 MB
 * of slots per port, set up before the port is bound so no frame is missed or read twice); off
 * (the default): recvmmsg. The network builder turns it on for a network of few lines
 * (testbed/net/delayhelper.py): a hundred idle lines need no 32 MB each. A ring that cannot be
 * set up is recorded in the stats and the port reads with recvmmsg.
 *
 * --parent-pid N: SIGTERM when process N (the network that started it, whose child it must be)
 * dies, even by SIGKILL (prctl PR_SET_PDEATHSIG); already gone: exit 1 at once. The starter then
 * needs no code between fork and exec, so a hundred lines start without a hundred forks of it.
 */

#include <errno.h>
#include <malloc.h>
#include <net/if.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "io.h"
#include "model.h"
#include "stats.h"
#include "trace.h"

#define MAX_SLEEP_NS 5000000ULL  /* ppoll slack is timeout/1000 for non-RT tasks: <= 5 us */
#define LEAD_MARGIN_NS 20000ULL
#define LEAD_MAX_NS 2000000ULL
#define WINDOW_NS 100000000ULL
#define TX_BLOCKED_NS 50000ULL

static volatile sig_atomic_t stop_sig, dump_req;
static long parent_pid;  /* --parent-pid: 0 = none */
static void on_stop(int s) { stop_sig = s; }
static void on_usr1(int s) { (void)s; dump_req = 1; }

static int usage_error(const char *msg)
{
	fprintf(stderr, "delayline: error: %s\n", msg);
	return 2;
}

static void limits(void)
{
	printf("{\"max_delay_ns\": %llu, \"min_rate_bps\": %llu, \"max_rate_bps\": %llu, "
	       "\"max_queue_packets\": %llu, \"max_queue_bytes\": %llu, \"max_frame\": %d, "
	       "\"max_held_frames\": %u, \"max_held_bytes\": %llu}\n",
	       (unsigned long long)DL_MAX_DELAY_NS, (unsigned long long)DL_MIN_RATE_BPS,
	       (unsigned long long)DL_MAX_RATE_BPS, (unsigned long long)DL_MAX_QUEUE_PACKETS,
	       (unsigned long long)DL_MAX_QUEUE_BYTES, DL_MAX_FRAME, DL_MAX_HELD_FRAMES,
	       (unsigned long long)DL_MAX_HELD_BYTES);
}

static int parse_args(int argc, char **argv, struct dl_config *c, int *trace, char *err,
		      size_t errlen)
{
	const char *a2b = NULL, *b2a = NULL;
	for (int i = 1; i < argc; i++) {
		const char *k = argv[i];
		if (!strcmp(k, "--trace")) {
			*trace = 1;
			continue;
		}
		if (i + 1 >= argc) {
			snprintf(err, errlen, "argument %s needs a value (or is unknown)", k);
			return -1;
		}
		const char *v = argv[++i];
		char *end = NULL;
		if (!strcmp(k, "--if-a")) c->if_a = v;
		else if (!strcmp(k, "--if-b")) c->if_b = v;
		else if (!strcmp(k, "--a2b")) a2b = v;
		else if (!strcmp(k, "--b2a")) b2a = v;
		else if (!strcmp(k, "--stats")) c->stats = v;
		else if (!strcmp(k, "--seed")) c->seed = strtoull(v, &end, 10);
		else if (!strcmp(k, "--spin-budget")) c->spin_budget = strtod(v, &end);
		else if (!strcmp(k, "--lead-us")) c->lead_ns = strtoull(v, &end, 10) * 1000;
		else if (!strcmp(k, "--batch")) c->batch = (unsigned)strtoul(v, &end, 10);
		else if (!strcmp(k, "--rt-priority")) c->rt_priority = (int)strtol(v, &end, 10);
		else if (!strcmp(k, "--parent-pid")) parent_pid = strtol(v, &end, 10);
		else if (!strcmp(k, "--rx-ring")) {
			c->rx_ring = !strcmp(v, "on") ? 1 : !strcmp(v, "off") ? 0 : -1;
			if (c->rx_ring < 0) {
				snprintf(err, errlen, "--rx-ring must be on or off, got '%s'", v);
				return -1;
			}
		}
		else {
			snprintf(err, errlen, "unknown argument %s", k);
			return -1;
		}
		if (end && (*end || end == v)) {
			snprintf(err, errlen, "%s: bad number '%s'", k, v);
			return -1;
		}
	}
	if (!a2b || !b2a) {
		snprintf(err, errlen, "--a2b and --b2a are required");
		return -1;
	}
	if (dl_parse_shape(a2b, &c->a2b, err, errlen) || dl_parse_shape(b2a, &c->b2a, err, errlen))
		return -1;
	if (c->batch < 1 || c->batch > DL_BATCH_MAX || !(c->spin_budget >= 0 && c->spin_budget <= 1)
	    || c->rt_priority < 0 || c->rt_priority > 99 || c->lead_ns > LEAD_MAX_NS) {
		snprintf(err, errlen, "need 1 <= --batch <= %d, 0 <= --spin-budget <= 1, "
			 "0 <= --rt-priority <= 99, --lead-us <= 2000", DL_BATCH_MAX);
		return -1;
	}
	if (*trace)
		return 0;
	if (!c->if_a || !c->if_b || !strcmp(c->if_a, c->if_b)) {
		snprintf(err, errlen, "--if-a and --if-b are required and must differ");
		return -1;
	}
	return 0;
}

/* Real-time priority where permitted (recorded either way): wake-ups preempt ordinary work. */
static void set_priority(struct dl_line *l)
{
	prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
	if (!l->cfg.rt_priority) {
		snprintf(l->sched_policy, sizeof(l->sched_policy), "SCHED_OTHER (not requested)");
		return;
	}
	struct sched_param sp = {.sched_priority = l->cfg.rt_priority};
	if (sched_setscheduler(0, SCHED_FIFO | SCHED_RESET_ON_FORK, &sp) == 0)
		snprintf(l->sched_policy, sizeof(l->sched_policy), "SCHED_FIFO:%d",
			 l->cfg.rt_priority);
	else
		snprintf(l->sched_policy, sizeof(l->sched_policy), "SCHED_OTHER (SCHED_FIFO: %s)",
			 strerror(errno));
}

static int64_t real_minus_mono(void)
{
	struct timespec r, m;
	clock_gettime(CLOCK_REALTIME, &r);
	clock_gettime(CLOCK_MONOTONIC, &m);
	return ((int64_t)r.tv_sec - m.tv_sec) * 1000000000LL + (r.tv_nsec - m.tv_nsec);
}

static void note_wakeup(struct dl_line *l, uint64_t late)
{
	dl_reservoir_add(&l->wake_late, (double)late);
	l->recent_late[l->recent_i++ % 32] = late;
	uint64_t worst = 0;
	for (int i = 0; i < 32; i++)
		worst = l->recent_late[i] > worst ? l->recent_late[i] : worst;
	uint64_t lead = worst + LEAD_MARGIN_NS;
	l->lead_ns = lead > LEAD_MAX_NS ? LEAD_MAX_NS : lead;
}

static uint64_t earliest(struct dl_line *l)
{
	uint64_t t = UINT64_MAX;
	for (int i = 0; i < 2; i++) {
		struct dl_held *h = dl_fifo_peek(&l->dir[i].fifo);
		if (h && h->due < t)
			t = h->due;
	}
	return t;
}

static int port_gone(struct dl_line *l, int i);

/* One turn: release what is due, wait (sleep or poll) for the next due time or a frame, read. */
static int turn(struct dl_line *l, const sigset_t *waitmask)
{
	uint64_t now = dl_now();
	for (int i = 0; i < 2; i++)
		now = dl_release(&l->dir[i], now);
	uint64_t due = earliest(l);
	if (now >= l->window_end) {
		l->window_end = now + WINDOW_NS;
		l->spin_left = (uint64_t)(l->cfg.spin_budget * WINDOW_NS);
	}
	uint64_t lead = l->spin_left ? l->lead_ns : 0;
	struct timespec ts, *tsp = NULL;
	uint64_t target = 0;
	int spinning = 0;
	if (due != UINT64_MAX) {
		uint64_t wait = due > now ? due - now : 0;
		uint64_t sleep = wait > lead ? wait - lead : 0;
		/* A full send buffer: give the kernel a moment instead of retrying in a hot loop
		 * (at real-time priority that would starve everything else on the CPU). */
		if ((l->dir[0].tx_blocked || l->dir[1].tx_blocked) && sleep < TX_BLOCKED_NS)
			sleep = TX_BLOCKED_NS;
		if (sleep > MAX_SLEEP_NS)
			sleep = MAX_SLEEP_NS;
		spinning = sleep == 0 && wait > 0;
		target = now + sleep;
		ts.tv_sec = (time_t)(sleep / 1000000000ULL);
		ts.tv_nsec = (long)(sleep % 1000000000ULL);
		tsp = &ts;
	}
	struct pollfd pfd[2] = {{l->dir[0].rx, POLLIN, 0}, {l->dir[1].rx, POLLIN, 0}};
	int r = ppoll(pfd, 2, tsp, waitmask);
	uint64_t after = dl_now();
	if (spinning) {
		uint64_t spent = after - now;
		l->spin_left = spent >= l->spin_left ? 0 : l->spin_left - spent;
		l->spin_ns += spent;
	}
	if (r < 0)
		return errno == EINTR ? 0 : -1;
	if (r == 0 && tsp && target > now)
		note_wakeup(l, after > target ? after - target : 0);
	int64_t off = r > 0 ? real_minus_mono() : 0;
	for (int i = 0; i < 2; i++) {
		if (pfd[i].revents & POLLIN)
			dl_drain(&l->dir[i], after, off);
		if ((pfd[i].revents & (POLLERR | POLLHUP | POLLNVAL)) && port_gone(l, i))
			return -2;
	}
	return 0;
}

/* A socket error on a port: read it (which clears it, so ppoll() does not report it again and
 * again) and count it. A link that went down comes back; an interface that no longer exists
 * (its veth peer's namespace died) never does: the line has nothing left to do. */
static int port_gone(struct dl_line *l, int i)
{
	int soerr = 0;
	socklen_t len = sizeof(soerr);
	getsockopt(l->dir[i].rx, SOL_SOCKET, SO_ERROR, &soerr, &len);
	l->dir[i].rx_errors++;
	const char *name = i ? l->cfg.if_b : l->cfg.if_a;
	return if_nametoindex(name) == 0;
}

/* ppoll() delivers a signal only when it returns EINTR: one that arrives while a frame is
 * ready stays pending. Take it here, so a busy line still stops on SIGTERM. Called every turn:
 * one sigpending() and a look at the three signals the line handles. */
static void take_pending_signals(void)
{
	static const int handled[] = {SIGTERM, SIGINT, SIGUSR1};
	sigset_t pending;
	if (sigpending(&pending))
		return;
	for (size_t i = 0; i < sizeof(handled) / sizeof(handled[0]); i++) {
		int s = handled[i];
		if (!sigismember(&pending, s))
			continue;
		sigset_t one;
		sigemptyset(&one);
		sigaddset(&one, s);
		struct timespec zero = {0, 0};
		if (sigtimedwait(&one, NULL, &zero) == s) {
			if (s == SIGUSR1)
				dump_req = 1;
			else
				stop_sig = s;
		}
	}
}

static int serve(struct dl_line *l)
{
	sigset_t block, waitmask;
	sigemptyset(&block);
	sigaddset(&block, SIGTERM);
	sigaddset(&block, SIGINT);
	sigaddset(&block, SIGUSR1);
	/* Signals are delivered only inside ppoll(), never in the middle of a send. */
	sigprocmask(SIG_BLOCK, &block, &waitmask);
	sigdelset(&waitmask, SIGTERM);
	sigdelset(&waitmask, SIGINT);
	sigdelset(&waitmask, SIGUSR1);
	struct sigaction sa = {0};
	sa.sa_handler = on_stop;
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	sa.sa_handler = on_usr1;
	sigaction(SIGUSR1, &sa, NULL);
	printf("ready\n");
	fflush(stdout);
	char error[160] = "";
	while (!stop_sig) {
		int t = turn(l, &waitmask);
		if (t == -2) {
			snprintf(error, sizeof(error), "interface %s or %s is gone", l->cfg.if_a,
				 l->cfg.if_b);
			break;
		}
		if (t) {
			snprintf(error, sizeof(error), "ppoll: %s", strerror(errno));
			break;
		}
		take_pending_signals();
		if (dump_req) {
			dump_req = 0;
			dl_write_stats(l, 0, NULL);
		}
	}
	dl_write_stats(l, 1, *error ? error : NULL);
	if (*error) {
		fprintf(stderr, "delayline: error: %s\n", error);
		return 1;
	}
	return 0;
}

/* Both ports (with their rings when asked) and both directions; 0, or the exit code. An unknown
 * interface is bad input (exit 2); any other failure is the OS's (exit 1). */
static int open_line(struct dl_line *l, char *err, size_t errlen)
{
	struct dl_config *c = &l->cfg;
	struct dl_ring ring[2] = {{0}};
	char ring_err[2][96] = {"", ""};
	int fd[2] = {-1, -1};
	const char *name[2] = {c->if_a, c->if_b};
	for (int i = 0; i < 2; i++) {
		fd[i] = dl_open_port(name[i], c->rx_ring ? &ring[i] : NULL, ring_err[i],
				     sizeof(ring_err[i]), err, errlen);
		if (fd[i] >= 0)
			continue;
		if (i) {
			dl_ring_close(&ring[0]);
			close(fd[0]);
		}
		if (fd[i] == -2)
			return usage_error(err);
		fprintf(stderr, "delayline: error: %s\n", err);
		return 1;
	}
	if (dl_dir_init(&l->dir[0], "a2b", fd[0], fd[1], &c->a2b, c->seed, 0, c->batch) ||
	    dl_dir_init(&l->dir[1], "b2a", fd[1], fd[0], &c->b2a, c->seed, 1, c->batch)) {
		fprintf(stderr, "delayline: error: out of memory\n");
		return 1;
	}
	for (int i = 0; i < 2; i++) {
		l->dir[i].ring = ring[i];
		memcpy(l->dir[i].ring_error, ring_err[i], sizeof(ring_err[i]));
		if (ring_err[i][0])  /* also in the stats: rx_ring.state "failed" and its error */
			fprintf(stderr, "delayline: warning: %s on %s; reading with recvmmsg\n",
				ring_err[i], name[i]);
	}
	return 0;
}

int main(int argc, char **argv)
{
	struct dl_line line = {0};
	struct dl_config *c = &line.cfg;
	c->seed = 0;
	c->spin_budget = 0.25;
	c->lead_ns = 300000;
	c->batch = 32;
	c->rt_priority = 10;
	c->rx_ring = 0;
	int trace = 0;
	char err[256];
	if (argc == 2 && !strcmp(argv[1], "--limits")) {
		limits();
		return 0;
	}
	if (parse_args(argc, argv, c, &trace, err, sizeof(err)))
		return usage_error(err);
	if (trace)
		return dl_trace_main(&c->a2b, &c->b2a, c->seed, stdin, stdout);
	if (parent_pid < 0)
		return usage_error("--parent-pid must be a pid");
	if (parent_pid && (prctl(PR_SET_PDEATHSIG, SIGTERM, 0, 0, 0) != 0 || getppid() != parent_pid))
		return 1;
	int rc = open_line(&line, err, sizeof(err));
	if (rc)
		return rc;
	/* Held super-frames come and go by the thousand per second: keep freed heap memory for the
	 * next ones instead of giving it back and faulting it in again (pages are only touched by
	 * frames actually held, so an idle line stays small). */
	mallopt(M_MMAP_THRESHOLD, 4 << 20);
	mallopt(M_TRIM_THRESHOLD, 64 << 20);
	line.started = dl_now();
	line.lead_ns = c->lead_ns;
	dl_reservoir_init(&line.wake_late, c->seed * 4 + 3);
	set_priority(&line);
	rc = serve(&line);
	dl_dir_free(&line.dir[0]);
	dl_dir_free(&line.dir[1]);
	dl_reservoir_free(&line.wake_late);
	close(line.dir[0].rx);
	close(line.dir[1].rx);
	return rc;
}
