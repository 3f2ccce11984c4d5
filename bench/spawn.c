/*
 * spawn.c - run one command and report its own resource usage (bench/proc.py).
 *
 * A process's peak RSS (ru_maxrss) includes the memory it had before exec:
 * a command forked from a benchmark process of 50 MiB "peaks" at 50 MiB
 * even if it never uses more than 2.  This wrapper is small, so a command
 * it forks starts from its 1-2 MiB; it waits for the command with wait4 and
 * writes that child's figures alone.
 *
 * usage: spawn REPORT CMD [ARG...]
 * REPORT gets one line once the command has exited:
 *   pid wait_status maxrss_kib user_s sys_s wall_s
 * (wall: CLOCK_MONOTONIC from before fork to the return of wait4).
 * Exit status 0 when REPORT was written, 127 otherwise.
 */
#include <errno.h>
#include <stdio.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double secs(struct timespec t)
{
	return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(int argc, char **argv)
{
	struct timespec t0, t1;
	struct rusage ru;
	int status;
	pid_t pid;
	FILE *f;

	if (argc < 3) {
		fprintf(stderr, "usage: %s REPORT CMD [ARG...]\n", argv[0]);
		return 127;
	}
	clock_gettime(CLOCK_MONOTONIC, &t0);
	pid = fork();
	if (pid < 0) {
		perror("fork");
		return 127;
	}
	if (pid == 0) {
		execvp(argv[2], argv + 2);
		perror(argv[2]);
		_exit(127);
	}
	while (wait4(pid, &status, 0, &ru) < 0)
		if (errno != EINTR) {
			perror("wait4");
			return 127;
		}
	clock_gettime(CLOCK_MONOTONIC, &t1);
	f = fopen(argv[1], "w");
	if (!f) {
		perror(argv[1]);
		return 127;
	}
	fprintf(f, "%d %d %ld %ld.%06ld %ld.%06ld %.9f\n", (int)pid, status, ru.ru_maxrss,
		(long)ru.ru_utime.tv_sec, (long)ru.ru_utime.tv_usec, (long)ru.ru_stime.tv_sec,
		(long)ru.ru_stime.tv_usec, secs(t1) - secs(t0));
	return fclose(f) ? 127 : 0;
}
