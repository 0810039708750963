/* The per-packet loop of the compiled delay line, run by each of its worker threads.
 *
 * A turn: release what is due, wait (sleep or poll) for the next due time or a frame, read.
 * The loop sleeps in ppoll() until `lead` before the earliest release time (a frame's due time,
 * less the send lead of txstamp.c when that is on), then polls without sleeping until then. `lead` is the wake-up latency measured on this machine: every timed
 * sleep's overshoot is recorded and lead = the largest of the last 32 plus a 20 us margin, so a
 * machine that wakes idle processes slowly gets a longer spin, a quick one a short one. Polling
 * is capped to the worker's share of --spin-budget of wall time per 100 ms window (the endpoints
 * share the CPUs); past the cap frames go out at ppoll()'s precision until the window ends.
 *
 * With every port a worker reads on a ring, a frame waiting is seen in the ring itself: a busy
 * line makes no ppoll() while frames keep coming, and the spin before a due time watches the
 * rings, not ppoll(). Signals never reach a worker (main.c takes them); a worker stops when
 * l->stop is set and its eventfd is written.
 */
#include "loop.h"

#include <errno.h>
#include <net/if.h>
#include <poll.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

#define MAX_SLEEP_NS 5000000ULL  /* ppoll slack is timeout/1000 for non-RT tasks: <= 5 us */
#define LEAD_MARGIN_NS 20000ULL
#define LEAD_MAX_NS 2000000ULL
#define WINDOW_NS 100000000ULL
#define TX_BLOCKED_NS 50000ULL

static int64_t real_minus_mono(void)
{
	struct timespec r, m;
	clock_gettime(CLOCK_REALTIME, &r);
	clock_gettime(CLOCK_MONOTONIC, &m);
	return ((int64_t)r.tv_sec - m.tv_sec) * 1000000000LL + (r.tv_nsec - m.tv_nsec);
}

static void note_wakeup(struct dl_worker *w, uint64_t late)
{
	pthread_mutex_lock(&w->l->lock);
	dl_reservoir_add(&w->l->wake_late, (double)late);
	pthread_mutex_unlock(&w->l->lock);
	w->recent_late[w->recent_i++ % 32] = late;
	uint64_t worst = 0;
	for (int i = 0; i < 32; i++)
		worst = w->recent_late[i] > worst ? w->recent_late[i] : worst;
	uint64_t lead = worst + LEAD_MARGIN_NS;
	w->lead_ns = lead > LEAD_MAX_NS ? LEAD_MAX_NS : lead;
}

static struct dl_dir *dir_of(struct dl_worker *w, int k) { return &w->l->dir[w->dirs[k]]; }

static uint64_t earliest(struct dl_worker *w)
{
	uint64_t t = UINT64_MAX;
	for (int k = 0; k < w->ndirs; k++) {
		struct dl_dir *d = dir_of(w, k);
		struct dl_held *h = dl_fifo_peek(&d->fifo);
		uint64_t at = h ? dl_release_at(d, h) : UINT64_MAX;
		t = at < t ? at : t;
	}
	return t;
}

/* Every port this worker reads on a ring: whether a frame waits is one look at each ring's next
 * slot; while spinning toward a due time (spin_until, 0: not spinning) keep looking until a
 * frame comes or spin_until passes. Returns the ports ready (their revents set), 0 when the
 * spin ended with none, or -1: ppoll() must wait (a port without a ring, or no frame, no spin). */
static int rings_ready(struct dl_worker *w, struct pollfd *pfd, uint64_t spin_until)
{
	for (int k = 0; k < w->ndirs; k++)
		if (!dir_of(w, k)->ring.map)
			return -1;
	for (;;) {
		int n = 0;
		for (int k = 0; k < w->ndirs; k++) {
			if (dl_ring_ready(&dir_of(w, k)->ring)) {
				pfd[k].revents = POLLIN;
				n++;
			}
		}
		if (n)
			return n;
		if (!spin_until)
			return -1;
		if (dl_now() >= spin_until)
			return 0;
#if defined(__x86_64__) || defined(__i386__)
		__builtin_ia32_pause();
#endif
	}
}

/* A socket error on a port: read it (which clears it, so ppoll() does not report it again and
 * again) and count it. A link that went down comes back; an interface that no longer exists
 * (its veth peer's namespace died) never does: the line has nothing left to do. */
static int port_gone(struct dl_worker *w, int k)
{
	struct dl_dir *d = dir_of(w, k);
	int soerr = 0;
	socklen_t len = sizeof(soerr);
	getsockopt(d->rx, SOL_SOCKET, SO_ERROR, &soerr, &len);
	d->rx_errors++;
	const char *name = w->dirs[k] ? w->l->cfg.if_b : w->l->cfg.if_a;
	return if_nametoindex(name) == 0;
}

/* How long to sleep before the next due time (*tsp NULL: until a frame comes), and whether the
 * turn spins instead (the due time is within lead and the spin budget is not spent). */
static int plan_wait(struct dl_worker *w, uint64_t now, uint64_t due, struct timespec *ts,
		     struct timespec **tsp, uint64_t *target)
{
	if (now >= w->window_end) {
		w->window_end = now + WINDOW_NS;
		w->spin_left = (uint64_t)(w->spin_budget * WINDOW_NS);
	}
	*tsp = NULL;
	if (due == UINT64_MAX)
		return 0;
	uint64_t lead = w->spin_left ? w->lead_ns : 0;
	uint64_t wait = due > now ? due - now : 0;
	uint64_t sleep = wait > lead ? wait - lead : 0;
	/* A full send buffer: give the kernel a moment instead of retrying in a hot loop (at
	 * real-time priority that would starve everything else on the CPU). */
	int blocked = 0;
	for (int k = 0; k < w->ndirs; k++)
		blocked |= dir_of(w, k)->tx_blocked;
	if (blocked && sleep < TX_BLOCKED_NS)
		sleep = TX_BLOCKED_NS;
	if (sleep > MAX_SLEEP_NS)
		sleep = MAX_SLEEP_NS;
	*target = now + sleep;
	ts->tv_sec = (time_t)(sleep / 1000000000ULL);
	ts->tv_nsec = (long)(sleep % 1000000000ULL);
	*tsp = ts;
	return sleep == 0 && wait > 0;
}

static int after_wait(struct dl_worker *w, struct pollfd *pfd, int r, int e, int spinning,
		      uint64_t now, uint64_t target);

/* One turn; 0, -1 (ppoll failed: errno) or -2 (a port's interface is gone). The worker's lock
 * is held except while it waits. */
static int turn(struct dl_worker *w)
{
	pthread_mutex_lock(&w->lock);
	uint64_t now = dl_now();
	for (int k = 0; k < w->ndirs; k++)
		now = dl_release(dir_of(w, k), now);
	uint64_t due = earliest(w), target = 0;
	struct timespec ts, *tsp;
	int spinning = plan_wait(w, now, due, &ts, &tsp, &target);
	struct pollfd pfd[3];
	for (int k = 0; k < w->ndirs; k++)
		pfd[k] = (struct pollfd){dir_of(w, k)->rx, POLLIN, 0};
	pfd[w->ndirs] = (struct pollfd){w->wake_fd, POLLIN, 0};
	uint64_t spin_until = spinning ? (due < now + w->spin_left ? due : now + w->spin_left) : 0;
	pthread_mutex_unlock(&w->lock);
	int r = rings_ready(w, pfd, spin_until);
	if (r < 0)
		r = ppoll(pfd, (nfds_t)w->ndirs + 1, tsp, NULL);
	int e = errno;
	pthread_mutex_lock(&w->lock);
	r = after_wait(w, pfd, r, e, spinning, now, tsp ? target : 0);
	pthread_mutex_unlock(&w->lock);
	return r;
}

/* The rest of a turn, once the wait returned r (errno e): spin and wake-up accounting, reading
 * the ports that have frames, noticing a port whose interface is gone. */
static int after_wait(struct dl_worker *w, struct pollfd *pfd, int r, int e, int spinning,
		      uint64_t now, uint64_t target)
{
	uint64_t after = dl_now();
	if (spinning) {
		uint64_t spent = after - now;
		w->spin_left = spent >= w->spin_left ? 0 : w->spin_left - spent;
		w->spin_ns += spent;
	}
	if (r < 0) {
		errno = e;
		return e == EINTR ? 0 : -1;
	}
	if (r == 0 && target > now)
		note_wakeup(w, after > target ? after - target : 0);
	int64_t off = r > 0 ? real_minus_mono() : 0;
	for (int k = 0; k < w->ndirs; k++) {
		if (pfd[k].revents & POLLIN)
			dl_drain(dir_of(w, k), after, off);
		if ((pfd[k].revents & (POLLERR | POLLHUP | POLLNVAL)) && port_gone(w, k))
			return -2;
	}
	return 0;
}

/* Real-time priority where permitted (recorded either way): wake-ups preempt ordinary work.
 * Per thread, in the thread: SCHED_RESET_ON_FORK would not let a new thread inherit it. */
static void set_priority(struct dl_worker *w)
{
	struct dl_line *l = w->l;
	prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
	char policy[sizeof(l->sched_policy)];
	if (!l->cfg.rt_priority) {
		snprintf(policy, sizeof(policy), "SCHED_OTHER (not requested)");
	} else {
		struct sched_param sp = {.sched_priority = l->cfg.rt_priority};
		if (sched_setscheduler(0, SCHED_FIFO | SCHED_RESET_ON_FORK, &sp) == 0)
			snprintf(policy, sizeof(policy), "SCHED_FIFO:%d", l->cfg.rt_priority);
		else
			snprintf(policy, sizeof(policy), "SCHED_OTHER (SCHED_FIFO: %s)",
				 strerror(errno));
	}
	pthread_mutex_lock(&l->lock);
	memcpy(l->sched_policy, policy, sizeof(policy));
	pthread_mutex_unlock(&l->lock);
}

void *dl_worker_run(void *arg)
{
	struct dl_worker *w = arg;
	struct dl_line *l = w->l;
	set_priority(w);
	w->lead_ns = l->cfg.lead_ns;
	while (!__atomic_load_n(&l->stop, __ATOMIC_ACQUIRE)) {
		int t = turn(w);
		if (t == -2)
			snprintf(w->error, sizeof(w->error), "interface %s or %s is gone",
				 l->cfg.if_a, l->cfg.if_b);
		else if (t)
			snprintf(w->error, sizeof(w->error), "ppoll: %s", strerror(errno));
		if (t) {
			__atomic_store_n(&l->stop, 1, __ATOMIC_RELEASE);
			break;
		}
	}
	return NULL;
}
