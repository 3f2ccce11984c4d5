/*
 * luo-memfd - exercise LUO (Live Update Orchestrator) memfd preservation
 * through /dev/liveupdate, for the pykho vmtest initramfs.
 *
 *   luo-memfd preserve STAGE   create session "vmtest-memfd-STAGE", put a memfd
 *                              with known content into it (token below) and keep
 *                              the session open in a background holder process
 *                              (closing the session fd would unpreserve it)
 *   luo-memfd check STAGE      retrieve session "vmtest-memfd-STAGE" (made by
 *                              boot STAGE), retrieve the memfd, compare every
 *                              byte with the expected content, finish the session
 *
 * The ioctl structures are declared here (from the documented uAPI layout) so
 * that the helper builds against any libc headers.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define LU_TYPE 0xBA
#define LU_CREATE_SESSION _IO(LU_TYPE, 0x00)
#define LU_RETRIEVE_SESSION _IO(LU_TYPE, 0x01)
#define LU_SESSION_PRESERVE_FD _IO(LU_TYPE, 0x40)
#define LU_SESSION_RETRIEVE_FD _IO(LU_TYPE, 0x41)
#define LU_SESSION_FINISH _IO(LU_TYPE, 0x42)
#define LU_NAME_LEN 64

struct lu_session_req {		/* create / retrieve session */
	uint32_t size;
	int32_t fd;
	uint8_t name[LU_NAME_LEN];
};

struct lu_fd_req {		/* preserve / retrieve fd */
	uint32_t size;
	int32_t fd;
	uint64_t token __attribute__((aligned(8)));
};

struct lu_finish_req {
	uint32_t size;
	uint32_t reserved;
};

#define DEV "/dev/liveupdate"
#define TOKEN_BASE 0x766d74657374ULL	/* "vmtest" */
#define CONTENT_SIZE (3 * 4096 + 123)	/* spans 4 pages, not page aligned */

static uint64_t token_for(int stage) { return TOKEN_BASE + (uint64_t)stage; }

static void fill(unsigned char *buf, size_t n, int stage)
{
	int hdr = snprintf((char *)buf, n, "pykho vmtest LUO memfd, written by boot %d\n", stage);
	uint32_t x = 0x9e3779b9u * (uint32_t)(stage + 1);

	for (size_t i = (size_t)hdr; i < n; i++) {
		x ^= x << 13;
		x ^= x >> 17;
		x ^= x << 5;
		buf[i] = (unsigned char)(x >> 24);
	}
}

static uint32_t checksum(const unsigned char *buf, size_t n)
{
	uint32_t h = 2166136261u;	/* FNV-1a */

	for (size_t i = 0; i < n; i++)
		h = (h ^ buf[i]) * 16777619u;
	return h;
}

static int die(const char *what)
{
	printf("luo-memfd: FAIL: %s: %s (errno %d)\n", what, strerror(errno), errno);
	return 1;
}

static int preserve(int stage)
{
	struct lu_session_req sreq;
	struct lu_fd_req freq;
	unsigned char buf[CONTENT_SIZE];
	int dev, mfd;
	pid_t pid;

	dev = open(DEV, O_RDWR | O_CLOEXEC);
	if (dev < 0)
		return die("open " DEV);

	memset(&sreq, 0, sizeof(sreq));
	sreq.size = sizeof(sreq);
	snprintf((char *)sreq.name, sizeof(sreq.name), "vmtest-memfd-%d", stage);
	if (ioctl(dev, LU_CREATE_SESSION, &sreq) < 0)
		return die("LIVEUPDATE_IOCTL_CREATE_SESSION");

	mfd = memfd_create("vmtest-luo", 0);
	if (mfd < 0)
		return die("memfd_create");
	fill(buf, sizeof(buf), stage);
	if (write(mfd, buf, sizeof(buf)) != (ssize_t)sizeof(buf))
		return die("write memfd");

	memset(&freq, 0, sizeof(freq));
	freq.size = sizeof(freq);
	freq.fd = mfd;
	freq.token = token_for(stage);
	if (ioctl(sreq.fd, LU_SESSION_PRESERVE_FD, &freq) < 0)
		return die("LIVEUPDATE_SESSION_PRESERVE_FD");
	close(dev);	/* /dev/liveupdate allows one opener at a time */

	printf("luo-memfd: preserved session=%s token=0x%llx size=%d fnv1a=0x%08x\n",
	       (char *)sreq.name, (unsigned long long)freq.token, CONTENT_SIZE,
	       checksum(buf, sizeof(buf)));
	fflush(stdout);

	/* The session must stay open until the kexec: leave a holder behind. */
	pid = fork();
	if (pid < 0)
		return die("fork");
	if (pid == 0) {
		int null = open("/dev/null", O_RDWR);

		if (null >= 0) {
			dup2(null, 0);
			dup2(null, 1);
			dup2(null, 2);
		}
		setsid();
		signal(SIGHUP, SIG_IGN);
		for (;;)
			pause();
	}
	printf("luo-memfd: holder pid %d keeps the session open\n", (int)pid);
	return 0;
}

static int check(int stage)
{
	struct lu_session_req sreq;
	struct lu_fd_req freq;
	struct lu_finish_req fin;
	unsigned char want[CONTENT_SIZE], got[CONTENT_SIZE + 1];
	struct stat st;
	ssize_t n;
	int dev, bad = 0;

	dev = open(DEV, O_RDWR | O_CLOEXEC);
	if (dev < 0)
		return die("open " DEV);

	memset(&sreq, 0, sizeof(sreq));
	sreq.size = sizeof(sreq);
	snprintf((char *)sreq.name, sizeof(sreq.name), "vmtest-memfd-%d", stage);
	if (ioctl(dev, LU_RETRIEVE_SESSION, &sreq) < 0)
		return die("LIVEUPDATE_IOCTL_RETRIEVE_SESSION");

	memset(&freq, 0, sizeof(freq));
	freq.size = sizeof(freq);
	freq.fd = -1;
	freq.token = token_for(stage);
	if (ioctl(sreq.fd, LU_SESSION_RETRIEVE_FD, &freq) < 0)
		return die("LIVEUPDATE_SESSION_RETRIEVE_FD");

	if (fstat(freq.fd, &st) < 0)
		return die("fstat");
	n = pread(freq.fd, got, sizeof(got), 0);
	if (n < 0)
		return die("pread");
	fill(want, sizeof(want), stage);
	if (st.st_size != CONTENT_SIZE || n != CONTENT_SIZE) {
		printf("luo-memfd: FAIL: size %lld (read %zd), expected %d\n",
		       (long long)st.st_size, n, CONTENT_SIZE);
		bad = 1;
	} else {
		for (size_t i = 0; i < sizeof(want); i++) {
			if (got[i] != want[i]) {
				printf("luo-memfd: FAIL: content differs at offset %zu\n", i);
				bad = 1;
				break;
			}
		}
	}
	if (!bad)
		printf("luo-memfd: retrieved session=%s token=0x%llx size=%d fnv1a=0x%08x content OK\n",
		       (char *)sreq.name, (unsigned long long)freq.token, CONTENT_SIZE,
		       checksum(got, CONTENT_SIZE));

	close(freq.fd);
	memset(&fin, 0, sizeof(fin));
	fin.size = sizeof(fin);
	if (ioctl(sreq.fd, LU_SESSION_FINISH, &fin) < 0)
		return die("LIVEUPDATE_SESSION_FINISH");
	close(sreq.fd);
	close(dev);
	printf("luo-memfd: session finished\n");
	return bad;
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc == 3 && strcmp(argv[1], "preserve") == 0)
		return preserve(atoi(argv[2]));
	if (argc == 3 && strcmp(argv[1], "check") == 0)
		return check(atoi(argv[2]));
	fprintf(stderr, "usage: luo-memfd preserve|check STAGE\n");
	return 2;
}
