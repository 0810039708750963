/* The stats JSON of the compiled delay line, written atomically (temp file, then rename). */
#include "stats.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

static void shape_json(FILE *f, const struct dl_shape *s)
{
	fprintf(f, "{\"delay_ms\": %.6f, \"jitter_ms\": %.6f, \"loss\": %.9g, ",
		(double)s->delay_ns / 1e6, (double)s->jitter_ns / 1e6, s->loss);
	if (s->rate_bps) fprintf(f, "\"rate_bps\": %llu, ", (unsigned long long)s->rate_bps);
	else fputs("\"rate_bps\": null, ", f);
	if (s->queue_packets)
		fprintf(f, "\"queue_packets\": %llu, ", (unsigned long long)s->queue_packets);
	else fputs("\"queue_packets\": null, ", f);
	if (s->queue_bytes)
		fprintf(f, "\"queue_bytes\": %llu}", (unsigned long long)s->queue_bytes);
	else fputs("\"queue_bytes\": null}", f);
}

/* "rx_ring": whether this direction's port reads through a ring, frames read from it and how
 * many of them were too big for a slot (read from the socket's queue); why it could not be set up. */
static void ring_json(FILE *f, const struct dl_dir *d)
{
	const char *state = d->ring.map ? "on" : d->ring_error[0] ? "failed" : "off";
	fprintf(f, "\"rx_ring\": {\"state\": \"%s\", \"frames\": %llu, \"copied\": %llu, "
		"\"error\": ", state, (unsigned long long)d->ring_frames,
		(unsigned long long)d->ring_copied);
	if (d->ring_error[0])
		fprintf(f, "\"%s\"}}", d->ring_error);  /* strerror() text: no quotes */
	else
		fputs("null}}", f);
}

/* "device_stamps": frames stamped at the device (txstamp.c) and the send lead learned from them:
 * per idle class (>= 0.25, 1, 4, 16 ms) the lead a send of that class would start early by now
 * (null: too few measurements, or leading off), and how often a frame got there early. */
static void stamp_json(FILE *f, struct dl_dir *d)
{
	const struct dl_txstamp *t = &d->stamp;
	char to_dev[320], late[320];
	dl_reservoir_json(&d->to_device, 1e-3, 1, to_dev, sizeof(to_dev));
	dl_reservoir_json(&d->device_late, 1e-3, 1, late, sizeof(late));
	fprintf(f, "\"device_stamps\": {\"state\": \"%s\", \"send_lead\": \"%s\", \"error\": ",
		t->on ? "on" : "off", t->lead ? "auto" : "off");
	if (t->error[0])
		fprintf(f, "\"%s\"", t->error);  /* strerror() text or our own: no quotes */
	else
		fputs("null", f);
	fprintf(f, ", \"asked\": %llu, \"stamped\": %llu, \"missing\": %llu, \"early\": %llu, "
		"\"early_max_us\": %.3f, \"to_device_us\": %s, \"device_lateness_us\": %s, "
		"\"lead_us\": [", (unsigned long long)t->asked, (unsigned long long)t->stamped,
		(unsigned long long)t->missing, (unsigned long long)t->early, t->early_max_ns / 1e3,
		to_dev, late);
	for (int c = 0; c < DL_IDLE_CLASSES; c++) {
		uint64_t lead;
		if (dl_class_lead(t, c, &lead))
			fprintf(f, "%s%.3f", c ? ", " : "", (double)lead / 1e3);
		else
			fprintf(f, "%snull", c ? ", " : "");
	}
	fputs("]}", f);
}

static void dir_json(FILE *f, struct dl_dir *d)
{
	char delay[320], late[320], send[320];
	dl_poll_kernel_drops(d);
	dl_reservoir_json(&d->send_call, 1e-3, 1, send, sizeof(send));
	dl_reservoir_json(&d->delay, 1e-6, 4, delay, sizeof(delay));
	dl_reservoir_json(&d->lateness, 1e-3, 1, late, sizeof(late));
	const struct dl_shape *s = &d->sched.shape;
	fprintf(f, "\"%s\": {\"shape\": ", d->name);
	shape_json(f, s);
	fputs(", \"warnings\": [", f);
	int first = 1;
	if (!s->rate_bps && (s->queue_packets || s->queue_bytes)) {
		fputs("\"queue limit ignored: no rate_bps, so nothing ever waits for serialization\"", f);
		first = 0;
	}
	if (d->gso_frames_lossy)
		fprintf(f, "%s\"%llu GSO super-frames on a lossy link: a loss drops all their segments "
			"at once (disable GSO on the sender)\"", first ? "" : ", ",
			(unsigned long long)d->gso_frames_lossy);
	fprintf(f, "], \"frames_in\": %llu, \"bytes_in\": %llu, \"wire_bytes_in\": %llu, "
		"\"frames\": %llu, \"bytes\": %llu, \"gso_frames\": %llu, \"gso_frames_lossy\": %llu, "
		"\"dropped_loss\": %llu, \"dropped_queue\": %llu, \"dropped_tx\": %llu, "
		"\"dropped_tx_errno\": {\"EINVAL\": %llu, \"ENETDOWN\": %llu, \"EMSGSIZE\": %llu, "
		"\"other\": %llu}, \"dropped_trunc\": %llu, \"dropped_runt\": %llu, "
		"\"dropped_rcvbuf\": %llu, \"dropped_overflow\": %llu, \"rx_errors\": %llu, "
		"\"rx_ts_fallback\": %llu, \"tx_busy\": %llu, \"in_flight\": %zu, "
		"\"delay_ms\": %s, \"lateness_us\": %s, \"send_call_us\": %s, ",
		(unsigned long long)d->frames_in, (unsigned long long)d->bytes_in,
		(unsigned long long)d->wire_bytes_in, (unsigned long long)d->frames,
		(unsigned long long)d->bytes, (unsigned long long)d->gso_frames,
		(unsigned long long)d->gso_frames_lossy, (unsigned long long)d->sched.dropped_loss,
		(unsigned long long)d->sched.dropped_queue, (unsigned long long)d->dropped_tx,
		(unsigned long long)d->tx_errno[0], (unsigned long long)d->tx_errno[1],
		(unsigned long long)d->tx_errno[2], (unsigned long long)d->tx_errno[3],
		(unsigned long long)d->dropped_trunc, (unsigned long long)d->dropped_runt,
		(unsigned long long)d->dropped_rcvbuf, (unsigned long long)d->dropped_overflow,
		(unsigned long long)d->rx_errors, (unsigned long long)d->rx_ts_fallback,
		(unsigned long long)d->tx_busy, d->fifo.len, delay, late, send);
	stamp_json(f, d);
	fputs(", ", f);
	ring_json(f, d);
}

/* kB of a /proc/self/status field. Not getrusage's ru_maxrss: that survives exec and would
 * report the forking parent's size. */
static long status_kb(const char *field)
{
	FILE *f = fopen("/proc/self/status", "r");
	char line[256];
	long kb = -1;
	size_t n = strlen(field);
	while (f && fgets(line, sizeof(line), f))
		if (!strncmp(line, field, n) && line[n] == ':') {
			kb = strtol(line + n + 1, NULL, 10);
			break;
		}
	if (f)
		fclose(f);
	return kb;
}

static void line_json(FILE *f, struct dl_line *l, int final, const char *error)
{
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	double user = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6;
	double sys = (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
	uint64_t frames = l->dir[0].frames_in + l->dir[1].frames_in;
	char wake[320], policy[sizeof(l->sched_policy)];
	pthread_mutex_lock(&l->lock);
	dl_reservoir_json(&l->wake_late, 1e-3, 1, wake, sizeof(wake));
	memcpy(policy, l->sched_policy, sizeof(policy));
	pthread_mutex_unlock(&l->lock);
	fprintf(f, "{\"version\": 1, \"helper\": \"c\", \"final\": %s, \"error\": ",
		final ? "true" : "false");
	if (error) fprintf(f, "\"%s\"", error);  /* strerror() text: no quotes or backslashes */
	else fputs("null", f);
	fprintf(f, ", \"pid\": %d, \"if_a\": \"%s\", \"if_b\": \"%s\", \"seed\": %llu, "
		"\"spin_budget\": %.3f, \"spin_s\": %.3f, \"batch\": %u, \"threads\": %u, \"rx_timestamps\": \"kernel\", "
		"\"timer_slack_1ns\": true, \"sched_policy\": \"%s\", \"lead_us\": %.1f, "
		"\"wakeup_late_us\": %s, \"wall_s\": %.6f, \"cpu_user_s\": %.3f, "
		"\"cpu_system_s\": %.3f, \"cpu_s\": %.3f, \"rss_kb\": %ld, \"max_rss_kb\": %ld, ",
		(int)getpid(), l->cfg.if_a, l->cfg.if_b, (unsigned long long)l->cfg.seed,
		l->cfg.spin_budget, (double)l->spin_ns / 1e9, l->cfg.batch, l->cfg.threads,
		policy,
		(double)l->lead_ns / 1e3, wake, (double)(dl_now() - l->started) / 1e9, user, sys,
		user + sys, status_kb("VmRSS"), status_kb("VmHWM"));
	/* --cpus as given: worker i on cpus[i % n]; null: the scheduler places the workers */
	if (l->cfg.ncpus) {
		fputs("\"cpus\": [", f);
		for (unsigned i = 0; i < l->cfg.ncpus; i++)
			fprintf(f, "%s%d", i ? ", " : "", l->cfg.cpus[i]);
		fputs("], ", f);
	} else {
		fputs("\"cpus\": null, ", f);
	}
	if (frames) fprintf(f, "\"cpu_us_per_frame\": %.3f, ", (user + sys) * 1e6 / (double)frames);
	else fputs("\"cpu_us_per_frame\": null, ", f);
	fputs("\"directions\": {", f);
	dir_json(f, &l->dir[0]);
	fputs(", ", f);
	dir_json(f, &l->dir[1]);
	fputs("}}\n", f);
}

void dl_write_stats(struct dl_line *l, int final, const char *error)
{
	if (!l->cfg.stats)
		return;
	char tmp[4096];
	snprintf(tmp, sizeof(tmp), "%s.tmp.%d", l->cfg.stats, (int)getpid());
	FILE *f = fopen(tmp, "w");
	if (!f) {
		fprintf(stderr, "delayline: warning: cannot write stats %s\n", tmp);
		return;
	}
	line_json(f, l, final, error);
	if (fclose(f) != 0 || rename(tmp, l->cfg.stats) != 0) {
		unlink(tmp);
		fprintf(stderr, "delayline: warning: cannot write stats %s\n", l->cfg.stats);
	}
}
