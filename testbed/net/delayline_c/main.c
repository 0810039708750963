/* tcpinc-delayline: the compiled per-packet path of the userspace delay line.
 *
 *   tcpinc-delayline --if-a IF0 --if-b IF1 --a2b SHAPE --b2a SHAPE [--seed N] [--stats PATH]
 *       [--spin-budget F] [--lead-us N] [--batch N] [--rt-priority N] [--parent-pid N]
 *       [--rx-ring on|off] [--threads 1|2] [--send-lead auto|off] [--cpus N[,M]]
 *   tcpinc-delayline --trace --a2b SHAPE --b2a SHAPE [--seed N] < events   (see trace.c)
 *   tcpinc-delayline --lead-trace < sends   (the send lead's bookkeeping: see txstamp.c)
 *   tcpinc-delayline --limits
 * SHAPE: delay_ns=N,jitter_ns=N,loss=F,rate_bps=N,queue_packets=N,queue_bytes=N (0 = none).
 *
 * Same contract as testbed/net/delayline.py: prints "ready" once the sockets are bound;
 * SIGTERM/SIGINT stop it and write --stats atomically (exit 0); SIGUSR1 writes the stats and
 * continues; bad input is one line on stderr and exit 2; a runtime OS error exits 1, and so
 * does an interface that disappears (its veth peer's namespace died): the line never outlives
 * its link spinning on the socket error.
 *
 * Threads: the per-packet loop (loop.c: timing, spin, rings) runs in worker threads, one for
 * both directions (--threads 1, the default) or one per direction (--threads 2: a direction's
 * frames, and the kernel work their sends cause in the receiving host, run beside the other
 * direction's, on another CPU when there is one). Each direction's frames are only ever touched
 * by one thread, so order and the model are as with one. The main thread takes the signals.
 *
 * --rx-ring on: read each port through a PACKET_RX_RING (ring.c: no system call per frame; 16 MB
 * of slots per port, set up before the port is bound so no frame is missed or read twice); off
 * (the default): recvmmsg. The network builder turns rings and two threads on for a network of
 * few lines (testbed/net/delayhelper.py): a hundred idle lines need no 32 MB each. A ring that
 * cannot be set up is recorded in the stats and the port reads with recvmmsg.
 *
 * --send-lead auto: a send call after idleness starts early by the time the kernel's send path
 * was measured to take to the device after such idleness, so the frame reaches the device at
 * its due time (txstamp.c); off (the default): the call starts at the due time. Either way each
 * direction sends on a socket of its own and stamps such frames at the device.
 *
 * --cpus N[,M]: worker i runs on the i-th CPU listed only (modulo the list), from its creation;
 * without, the scheduler moves the workers freely. A send into a veth queues the frame on the
 * sending CPU's input backlog (net/core/dev.c, enqueue_to_backlog), which that CPU drains in its
 * own softirq, or later in its ksoftirqd when a busy machine deferred it. A worker that moved to
 * another CPU meanwhile delivers its next frames first, so the receiving host sees segments out
 * of order that the line sent in order. Measured with two busy loops beside 40 runs of three
 * 8 MB transfers (tests/emulation/test_delay_helper.py, test_rx_ring_forwards_every_frame_intact,
 * the client's sends all from one CPU): the server counted segments out of order in 2 runs with
 * the workers free, in none with each on its CPU. One CPU per worker is what a NIC receive queue
 * with its interrupt bound to a CPU does. The network builder assigns the CPUs
 * (testbed/net/delayhelper.py, line_cpus); a CPU this process may not use is bad input.
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
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "io.h"
#include "loop.h"
#include "model.h"
#include "stats.h"
#include "trace.h"
#include "txstamp.h"

#define LEAD_MAX_NS 2000000ULL
#define SIGNAL_WAIT_NS 50000000L  /* how soon the main thread notices a worker that stopped */

static long parent_pid;  /* --parent-pid: 0 = none */

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

/* --cpus: one or two CPU numbers, comma-separated, each one this process may run on. */
static int parse_cpus(const char *v, struct dl_config *c, char *err, size_t errlen)
{
	cpu_set_t allowed;
	CPU_ZERO(&allowed);
	if (sched_getaffinity(0, sizeof(allowed), &allowed) != 0) {
		snprintf(err, errlen, "--cpus: sched_getaffinity: %s", strerror(errno));
		return -1;
	}
	c->ncpus = 0;
	const char *p = v;
	for (;;) {
		char *end = NULL;
		errno = 0;
		long cpu = strtol(p, &end, 10);
		if (end == p || errno || cpu < 0 || cpu >= CPU_SETSIZE || (*end && *end != ',')
		    || c->ncpus == 2) {
			snprintf(err, errlen, "--cpus must be one or two CPU numbers (N or N,M), "
				 "got '%s'", v);
			return -1;
		}
		if (!CPU_ISSET((int)cpu, &allowed)) {
			snprintf(err, errlen, "--cpus: CPU %ld is not one this process may run on "
				 "(%d allowed)", cpu, CPU_COUNT(&allowed));
			return -1;
		}
		c->cpus[c->ncpus++] = (int)cpu;
		if (!*end)
			return 0;
		p = end + 1;
	}
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
		else if (!strcmp(k, "--threads")) c->threads = (unsigned)strtoul(v, &end, 10);
		else if (!strcmp(k, "--cpus")) {
			if (parse_cpus(v, c, err, errlen))
				return -1;
		}
		else if (!strcmp(k, "--send-lead")) {
			c->send_lead = !strcmp(v, "auto") ? 1 : !strcmp(v, "off") ? 0 : -1;
			if (c->send_lead < 0) {
				snprintf(err, errlen, "--send-lead must be auto or off, got '%s'", v);
				return -1;
			}
		}
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
	    || c->rt_priority < 0 || c->rt_priority > 99 || c->lead_ns > LEAD_MAX_NS
	    || c->threads < 1 || c->threads > 2) {
		snprintf(err, errlen, "need 1 <= --batch <= %d, 0 <= --spin-budget <= 1, "
			 "0 <= --rt-priority <= 99, --lead-us <= 2000, --threads 1 or 2",
			 DL_BATCH_MAX);
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

static void wake(struct dl_worker *w, unsigned n)
{
	uint64_t one = 1;
	for (unsigned i = 0; i < n; i++)
		if (write(w[i].wake_fd, &one, sizeof(one)) < 0)
			perror("delayline: eventfd");  /* cannot happen: 1 on a fresh counter */
}

/* Worker i's thread, on its --cpus CPU from the start (no frame is sent anywhere else); 0 or
 * an errno value. */
static int create_worker(struct dl_line *l, unsigned i, struct dl_worker *w)
{
	pthread_attr_t attr;
	int e = pthread_attr_init(&attr);
	if (e)
		return e;
	if (l->cfg.ncpus) {
		cpu_set_t one;
		CPU_ZERO(&one);
		CPU_SET(l->cfg.cpus[i % l->cfg.ncpus], &one);
		e = pthread_attr_setaffinity_np(&attr, sizeof(one), &one);
	}
	if (!e)
		e = pthread_create(&w->thread, &attr, dl_worker_run, w);
	pthread_attr_destroy(&attr);
	/* named for its directions before "ready", so /proc/PID/task shows which worker runs where */
	if (!e)
		pthread_setname_np(w->thread, w->ndirs == 2 ? "dl-both" : w->dirs[0] ? "dl-b2a"
				   : "dl-a2b");
	return e;
}

/* The worker threads (one for both directions, or one each), started with every signal
 * blocked; 0, or -1 with the cause in err. */
static int start_workers(struct dl_line *l, struct dl_worker *w, char *err, size_t errlen)
{
	unsigned n = l->cfg.threads;
	for (unsigned i = 0; i < n; i++) {
		w[i] = (struct dl_worker){.l = l, .ndirs = n == 1 ? 2 : 1,
					  .dirs = {n == 1 ? 0 : (int)i, 1},
					  .spin_budget = l->cfg.spin_budget / n};
		pthread_mutex_init(&w[i].lock, NULL);
		w[i].wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
		int e = w[i].wake_fd < 0 ? errno : create_worker(l, i, &w[i]);
		if (!e)
			continue;
		snprintf(err, errlen, "thread %u: %s", i, strerror(e));
		__atomic_store_n(&l->stop, 1, __ATOMIC_RELEASE);
		wake(w, i);
		for (unsigned j = 0; j < i; j++)
			pthread_join(w[j].thread, NULL);
		return -1;
	}
	return 0;
}

/* The threads' timing state, summed up for the stats. */
static void gather(struct dl_line *l, struct dl_worker *w)
{
	l->lead_ns = l->spin_ns = 0;
	for (unsigned i = 0; i < l->cfg.threads; i++) {
		l->lead_ns = w[i].lead_ns > l->lead_ns ? w[i].lead_ns : l->lead_ns;
		l->spin_ns += w[i].spin_ns;
	}
}

/* The main thread takes the signals (blocked everywhere, so never in the middle of a send):
 * SIGTERM/SIGINT stop, SIGUSR1 writes the stats; it also notices a worker that stopped the line
 * (within SIGNAL_WAIT_NS). Then it stops and joins the workers and writes the final stats. */
static int serve(struct dl_line *l)
{
	sigset_t sigs;
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGTERM);
	sigaddset(&sigs, SIGINT);
	sigaddset(&sigs, SIGUSR1);
	pthread_sigmask(SIG_BLOCK, &sigs, NULL);
	struct dl_worker w[2];
	char error[160] = "";
	if (start_workers(l, w, error, sizeof(error))) {
		fprintf(stderr, "delayline: error: %s\n", error);
		return 1;
	}
	printf("ready\n");
	fflush(stdout);
	while (!__atomic_load_n(&l->stop, __ATOMIC_ACQUIRE)) {
		struct timespec t = {0, SIGNAL_WAIT_NS};
		int s = sigtimedwait(&sigs, NULL, &t);
		if (s == SIGTERM || s == SIGINT)
			break;
		if (s != SIGUSR1)
			continue;
		for (unsigned i = 0; i < l->cfg.threads; i++)  /* each worker between two turns */
			pthread_mutex_lock(&w[i].lock);
		gather(l, w);
		dl_write_stats(l, 0, NULL);
		for (unsigned i = 0; i < l->cfg.threads; i++)
			pthread_mutex_unlock(&w[i].lock);
	}
	__atomic_store_n(&l->stop, 1, __ATOMIC_RELEASE);
	wake(w, l->cfg.threads);
	for (unsigned i = 0; i < l->cfg.threads; i++) {
		pthread_join(w[i].thread, NULL);
		if (w[i].error[0] && !error[0])
			memcpy(error, w[i].error, sizeof(error));
		close(w[i].wake_fd);
	}
	gather(l, w);
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
	char ring_err[2][96] = {"", ""}, stamp_err[2][96] = {"", ""};
	int fd[2] = {-1, -1}, tx[2] = {-1, -1}, stamps[2] = {0, 0};
	const char *name[2] = {c->if_a, c->if_b};
	for (int i = 0; i < 2; i++) {
		fd[i] = dl_open_port(name[i], c->rx_ring ? &ring[i] : NULL, ring_err[i],
				     sizeof(ring_err[i]), err, errlen);
		if (fd[i] >= 0)
			tx[i] = dl_open_tx(name[i], &stamps[i], stamp_err[i], sizeof(stamp_err[i]), err,
					   errlen);
		if (fd[i] >= 0 && tx[i] >= 0)
			continue;
		int bad_input = fd[i] == -2;
		for (int j = 0; j <= i; j++) {
			if (fd[j] >= 0) {
				dl_ring_close(&ring[j]);
				close(fd[j]);
			}
			if (tx[j] >= 0)
				close(tx[j]);
		}
		if (bad_input)
			return usage_error(err);
		fprintf(stderr, "delayline: error: %s\n", err);
		return 1;
	}
	/* a2b reads port a and sends on port b's send socket; b2a the reverse */
	if (dl_dir_init(&l->dir[0], "a2b", fd[0], tx[1], &c->a2b, c->seed, 0, c->batch) ||
	    dl_dir_init(&l->dir[1], "b2a", fd[1], tx[0], &c->b2a, c->seed, 1, c->batch)) {
		fprintf(stderr, "delayline: error: out of memory\n");
		return 1;
	}
	for (int i = 0; i < 2; i++) {
		int out = 1 - i;  /* the port direction i sends on */
		dl_txstamp_init(&l->dir[i].stamp, stamps[out], c->send_lead, stamp_err[out]);
		if (stamp_err[out][0])
			fprintf(stderr, "delayline: warning: %s; no device stamps, no send lead\n",
				stamp_err[out]);
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
	c->threads = 1;
	c->send_lead = 0;
	int trace = 0;
	char err[256];
	if (argc == 2 && !strcmp(argv[1], "--limits")) {
		limits();
		return 0;
	}
	if (argc == 2 && !strcmp(argv[1], "--lead-trace"))
		return dl_lead_trace_main(stdin, stdout);
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
	pthread_mutex_init(&line.lock, NULL);
	dl_reservoir_init(&line.wake_late, c->seed * 4 + 3);
	rc = serve(&line);
	dl_dir_free(&line.dir[0]);
	dl_dir_free(&line.dir[1]);
	dl_reservoir_free(&line.wake_late);
	close(line.dir[0].rx);
	close(line.dir[1].rx);
	return rc;
}
