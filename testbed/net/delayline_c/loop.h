#ifndef DL_LOOP_H
#define DL_LOOP_H
#include <pthread.h>
#include <stdint.h>

#include "stats.h"

/* One thread of the line: the directions it serves (both, or one each with --threads 2), its
 * own timing state (lead, spin budget) and an eventfd that wakes it to stop. See loop.c. */
struct dl_worker {
	struct dl_line *l;
	int dirs[2], ndirs;
	int wake_fd;
	double spin_budget;  /* this thread's share of the line's */
	uint64_t lead_ns, spin_left, spin_ns, window_end;
	uint64_t recent_late[32];
	unsigned recent_i;
	pthread_t thread;
	/* Held by the worker while it touches its directions (not while it waits), so the stats
	 * written meanwhile by the main thread, which takes it, see them whole. */
	pthread_mutex_t lock;
	char error[160];  /* why the worker stopped the line ("" when it did not) */
};

/* The worker's loop (a pthread start routine): runs until l->stop is set or a port fails, then
 * sets l->stop itself. */
void *dl_worker_run(void *worker);
#endif
