#ifndef DL_STATS_H
#define DL_STATS_H
#include <pthread.h>

#include "io.h"

struct dl_config {
	const char *if_a, *if_b, *stats;
	struct dl_shape a2b, b2a;
	uint64_t seed, lead_ns;
	double spin_budget;
	unsigned batch;
	int rt_priority;
	int rx_ring;  /* --rx-ring on: 1 */
	unsigned threads;  /* --threads: 1 (both directions in one thread) or 2 (one each) */
	int send_lead;  /* --send-lead auto: 1 */
	int cpus[2];  /* --cpus: worker i runs on cpus[i % ncpus] only; ncpus 0: anywhere */
	unsigned ncpus;
};

struct dl_line {
	struct dl_config cfg;
	struct dl_dir dir[2];
	struct dl_reservoir wake_late;  /* ns a timed sleep overshot its target (under lock) */
	pthread_mutex_t lock;           /* wake_late and sched_policy, written by the threads */
	int stop;                       /* set (atomically) to stop every thread */
	uint64_t lead_ns, spin_ns;      /* the threads' largest lead and their spin, summed */
	uint64_t started;
	char sched_policy[96];
};

/* Same layout as DelayLine.snapshot() in testbed/net/delayline.py, plus the compiled helper's
 * own fields (helper, sched_policy, lead_us, wakeup_late_us, dropped_runt/overflow, tx_busy). */
void dl_write_stats(struct dl_line *l, int final, const char *error);
#endif
