/*
 * tcpinc-nshold: hold N emulated hosts' namespaces with one exec.
 *
 * Usage: tcpinc-nshold [--die-with-parent] N
 *
 * Forks N children; each makes its own network and mount namespaces exactly as
 * `mnexec -n` does (unshare(CLONE_NEWNET|CLONE_NEWNS), mark / recursively private
 * so its mounts do not propagate, mount a sysfs that shows its own interfaces),
 * prints its pid on stdout as one line once that is done, and then sleeps until
 * killed. Processes are later started in a host with `mnexec -da <pid>` (see
 * testbed/net/hosts.py). Forking one small process N times replaces N fork+exec
 * round trips from the (large) Python process, which dominated the start of a
 * network of a few hundred hosts.
 *
 * Lifetime: with --die-with-parent the holder gets SIGKILL when its parent (the
 * Python thread that started it) dies, and every child gets SIGKILL when the holder dies (prctl PR_SET_PDEATHSIG), so a
 * killed run leaves no namespace. On SIGTERM the holder kills every child and
 * reaps it before exiting: when it has exited, every namespace is gone.
 *
 * A child that cannot make its namespaces prints "error <errno> <step>" instead
 * of its pid and exits; the holder then exits 1 after killing the others.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_HOSTS 4096

static pid_t children[MAX_HOSTS];
static int count;

static void say(const char *line)
{
	/* One write per line: lines from concurrent children never interleave (PIPE_BUF). */
	ssize_t n = write(STDOUT_FILENO, line, strlen(line));
	(void)n;
}

static void child(pid_t holder)
{
	char line[64];
	const char *step = NULL;

	sigset_t all;

	/* The holder blocks the signals it waits for; a host must die of them (tcpinc clean). */
	sigfillset(&all);
	sigprocmask(SIG_UNBLOCK, &all, NULL);
	if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0)
		step = "prctl";
	else if (getppid() != holder)
		_exit(1);
	else if (unshare(CLONE_NEWNET | CLONE_NEWNS) != 0)
		step = "unshare";
	else if (mount("none", "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0)
		step = "mount-private";
	else if (mount("sysfs", "/sys", "sysfs", 0, NULL) != 0)
		step = "mount-sysfs";
	if (step) {
		snprintf(line, sizeof line, "error %d %s\n", errno, step);
		say(line);
		_exit(1);
	}
	snprintf(line, sizeof line, "%d\n", (int)getpid());
	say(line);
	close(STDOUT_FILENO);
	for (;;)
		pause();
}

static void stop_all(void)
{
	for (int i = 0; i < count; i++)
		kill(children[i], SIGKILL);
	for (int i = 0; i < count; i++)
		while (waitpid(children[i], NULL, 0) < 0 && errno == EINTR)
			;
}

int main(int argc, char **argv)
{
	int tie = argc == 3 && strcmp(argv[1], "--die-with-parent") == 0;
	char *end = NULL;
	long n = argc == 2 + tie ? strtol(argv[1 + tie], &end, 10) : -1;
	pid_t parent = getppid();
	sigset_t set;
	int sig = 0;

	if (n < 1 || n > MAX_HOSTS || !end || *end) {
		fprintf(stderr, "usage: tcpinc-nshold [--die-with-parent] N (N in 1..%d)\n",
			MAX_HOSTS);
		return 2;
	}
	if (tie && (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0 || getppid() != parent))
		return 1;
	/* Its own session, like `mnexec -d`: a Ctrl-C meant for the run does not reach it. */
	setsid();
	/* Block the signals we wait for before any child exists (children inherit the mask
	 * but only pause(): SIGKILL still ends them). */
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGCHLD);
	sigprocmask(SIG_BLOCK, &set, NULL);
	for (count = 0; count < n; count++) {
		pid_t pid = fork();
		if (pid < 0) {
			fprintf(stderr, "tcpinc-nshold: fork: %s\n", strerror(errno));
			stop_all();
			return 1;
		}
		if (pid == 0)
			child(getppid());
		children[count] = pid;
	}
	close(STDOUT_FILENO);
	for (;;) {
		if (sigwait(&set, &sig) != 0)
			continue;
		if (sig == SIGCHLD) {
			/* A host died (killed by someone, or failed to start): the network is broken;
			 * the Python side sees the missing pid or the "error" line. Keep the others. */
			int status;
			while (waitpid(-1, &status, WNOHANG) > 0)
				;
			continue;
		}
		stop_all();
		return 0;
	}
}
