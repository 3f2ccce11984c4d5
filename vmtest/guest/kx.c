/*
 * kx - tiny front end for kexec_file_load(2) and reboot(LINUX_REBOOT_CMD_KEXEC),
 * used by the pykho vmtest initramfs (no kexec-tools in there).
 *
 *   kx load KERNEL INITRD|- CMDLINE    stage KERNEL (+ INITRD) for the next boot
 *   kx exec                            jump into the staged kernel
 *   kx unload                          drop a staged kernel
 *
 * Written for pykho; licensed like the rest of the project.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <linux/reboot.h>

#ifndef KEXEC_FILE_UNLOAD
#define KEXEC_FILE_UNLOAD 0x00000001
#endif
#ifndef KEXEC_FILE_NO_INITRAMFS
#define KEXEC_FILE_NO_INITRAMFS 0x00000004
#endif

static int usage(void)
{
	fprintf(stderr, "usage: kx load KERNEL INITRD|- CMDLINE | kx exec | kx unload\n");
	return 2;
}

static int do_load(const char *kernel, const char *initrd, const char *cmdline)
{
	unsigned long flags = 0;
	int kfd, ifd = -1;
	long rc;

	kfd = open(kernel, O_RDONLY | O_CLOEXEC);
	if (kfd < 0) {
		fprintf(stderr, "kx: open %s: %s\n", kernel, strerror(errno));
		return 1;
	}
	if (strcmp(initrd, "-") == 0) {
		flags |= KEXEC_FILE_NO_INITRAMFS;
	} else {
		ifd = open(initrd, O_RDONLY | O_CLOEXEC);
		if (ifd < 0) {
			fprintf(stderr, "kx: open %s: %s\n", initrd, strerror(errno));
			return 1;
		}
	}
	/* the length passed to the kernel includes the terminating NUL */
	rc = syscall(SYS_kexec_file_load, kfd, ifd, strlen(cmdline) + 1, cmdline, flags);
	if (rc != 0) {
		fprintf(stderr, "kx: kexec_file_load failed: %s (errno %d)\n", strerror(errno), errno);
		return 1;
	}
	printf("kx: kexec_file_load OK (kernel=%s initrd=%s cmdline_len=%zu)\n",
	       kernel, initrd, strlen(cmdline) + 1);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc < 2)
		return usage();
	if (strcmp(argv[1], "load") == 0 && argc == 5)
		return do_load(argv[2], argv[3], argv[4]);
	if (strcmp(argv[1], "unload") == 0 && argc == 2) {
		if (syscall(SYS_kexec_file_load, -1, -1, 0, NULL, KEXEC_FILE_UNLOAD) != 0) {
			fprintf(stderr, "kx: unload failed: %s\n", strerror(errno));
			return 1;
		}
		return 0;
	}
	if (strcmp(argv[1], "exec") == 0 && argc == 2) {
		fflush(NULL);
		sync();
		syscall(SYS_reboot, LINUX_REBOOT_MAGIC1, LINUX_REBOOT_MAGIC2,
			LINUX_REBOOT_CMD_KEXEC, NULL);
		/* only reached on failure */
		fprintf(stderr, "kx: reboot(KEXEC) failed: %s (errno %d)\n", strerror(errno), errno);
		return 1;
	}
	return usage();
}
