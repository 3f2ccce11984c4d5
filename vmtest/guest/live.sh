# live.sh - the live guest's part of /init (sourced by it when vmtest_live=1).
#
# The root of the Debian image (virtio-blk, read-only ext4, vmtest/rootfs.py)
# is mounted at /live; pykho runs in it through chroot, with proc, sysfs,
# debugfs and devtmpfs mounted anew, the initramfs' /tmp (a tmpfs: the kexec
# initrd is written there) bound over /live/tmp, and the initramfs root
# bound at /live/mnt (pykho's checkout at /mnt/pykho/src,
# the wrapper and the kho launcher at /mnt/pykho/bin, the next kernel at
# /mnt/kernel*).  Nothing on the disk is written.
#
# Command line words (the kernel ignores them):
#   vmtest_live=1            this file runs
#   vmtest_live_validate=1   boot N < last: 'kho validate --mem live -j' (no PATH: the
#                            running kernel's outgoing handover) right before the kexec,
#                            against the image about to be loaded (--target-image);
#                            boot N > 1: 'kho validate /sys/kernel/debug/kho/in --mem live -j'
#   vmtest_live_missing=1    boot 1: the same without drgn and without /proc/kcore (exit 2)
#   vmtest_live_kexec=wrapper   the kexec goes through contrib/kexec-preflight
#                            (kho preflight, then kexec-tools' kexec -s -l and kexec -e)
#                            in place of kx; vmtest_live_target=GEN gives it --target GEN
# Every result is a @@KHO-TEXT block (name live_*); 'time' lines give seconds.

LIVE_ROOT=/live

lparam() { param "$1" "$2"; }
# uptime in 1/100 s
centis() { read -r _up _ < /proc/uptime; echo "${_up%.*}${_up#*.}" | sed 's/^0*//;s/^$/0/'; }

live_setup() {
	mkdir -p $LIVE_ROOT
	# the disk's node in /tmp: the initramfs' own /dev (console, null) is
	# handed to the next boot and must stay as it is
	_dev=""
	for b in /sys/block/vd*; do
		[ -r "$b/dev" ] || continue
		IFS=: read -r _maj _min < "$b/dev"
		_dev=/tmp/.${b##*/}
		mknod "$_dev" b "$_maj" "$_min"
		break
	done
	if [ -z "$_dev" ] || ! mount -t ext4 -o ro "$_dev" $LIVE_ROOT; then
		note live_error=no-root-disk
		return 1
	fi
	mount -t proc proc $LIVE_ROOT/proc
	mount -t sysfs sysfs $LIVE_ROOT/sys
	mount -t debugfs debugfs $LIVE_ROOT/sys/kernel/debug 2>/dev/null
	mount -t devtmpfs devtmpfs $LIVE_ROOT/dev
	mount --bind /tmp $LIVE_ROOT/tmp
	mount --bind / $LIVE_ROOT/mnt
	note live_root=$_dev
	# the interpreter's start with pykho's CLI imported, alone (TCG is slow at it)
	live_run live_startup kho --version
	text live_versions chroot $LIVE_ROOT sh -c 'python3 --version; python3 -c "import drgn, numpy, libfdt; print(\"drgn\", drgn.__version__, \"numpy\", numpy.__version__)"; /mnt/pykho/bin/kho --version'
}

# live_run NAME CMD...: CMD in the Debian root, its output and its time
live_run() {
	_n=$1; shift
	echo "@@KHO-TEXT-BEGIN stage=$STAGE name=$_n"
	_t0=$(centis)
	chroot $LIVE_ROOT env PATH=/mnt/pykho/bin:/usr/sbin:/usr/bin:/sbin:/bin VMTEST_STAGE=$STAGE "$@" 2>/tmp/.live.err
	_rc=$?
	_t1=$(centis)
	echo "@@KHO-TEXT-RC stage=$STAGE name=$_n rc=$_rc"
	echo "@@KHO-TEXT-END stage=$STAGE name=$_n"
	echo "@@KHO-TEXT-BEGIN stage=$STAGE name=${_n}_stderr"
	cat /tmp/.live.err
	echo "@@KHO-TEXT-RC stage=$STAGE name=${_n}_stderr rc=0"
	echo "@@KHO-TEXT-END stage=$STAGE name=${_n}_stderr"
	rm -f /tmp/.live.err
	note "${_n}_ms=$(( (_t1 - _t0) * 10 ))"
}

# boot N < last, right before the jump
live_before() {
	# the next boot's image (/init's KERNEL) and command line, as kx / kexec
	# will hand them over
	[ "$(lparam vmtest_live_validate 0)" = 1 ] &&
		live_run live_validate_out kho validate --mem live -j --blocks --target-image "/mnt/${KERNEL#/}" \
			--cmdline "$NEXT"
	if [ "$(lparam vmtest_live_missing 0)" = 1 ]; then
		# drgn hidden: a drgn package that cannot be imported, first on the path
		mkdir -p /tmp/nodrgn/drgn
		echo 'raise ImportError("hidden by the vmtest guest")' > /tmp/nodrgn/drgn/__init__.py
		live_run live_missing_drgn env PYTHONPATH=/tmp/nodrgn kho validate --mem live -j
		rm -rf /tmp/nodrgn
		# /proc/kcore hidden: an empty file bound over it
		: > /tmp/.nokcore
		mount --bind /tmp/.nokcore $LIVE_ROOT/proc/kcore
		live_run live_missing_kcore kho validate --mem live -j
		umount $LIVE_ROOT/proc/kcore
		rm -f /tmp/.nokcore
	fi
	return 0
}

# boot N > 1, after the dumps: what arrived
live_after() {
	[ "$(lparam vmtest_live_validate 0)" = 1 ] &&
		live_run live_validate_in kho validate /sys/kernel/debug/kho/in --mem live -j
	return 0
}

# live_kexec KERNEL INITRD CMDLINE: the kexec through the wrapper; returns
# only when the wrapper refused (or the kexec failed).  Its output goes to
# files that kexec-marked prints right before 'kexec -e' (a go), or that are
# printed here (a no-go)
live_kexec() {
	_tgt=$(lparam vmtest_live_target "")
	_rel=${1#/}
	_t0=$(centis)
	chroot $LIVE_ROOT env PATH=/mnt/pykho/bin:/usr/sbin:/usr/bin:/sbin:/bin VMTEST_STAGE=$STAGE \
		KEXEC=/mnt/pykho/bin/kexec-marked \
		kexec-preflight -e ${_tgt:+--target $_tgt} --cmdline "$3" "/mnt/$_rel" --initrd="$2" \
		> /tmp/.live_preflight 2> /tmp/.live_preflight_stderr
	_rc=$?
	_t1=$(centis)
	for _n in live_preflight live_preflight_stderr; do
		echo "@@KHO-TEXT-BEGIN stage=$STAGE name=$_n"
		cat /tmp/.$_n
		echo "@@KHO-TEXT-RC stage=$STAGE name=$_n rc=$_rc"
		echo "@@KHO-TEXT-END stage=$STAGE name=$_n"
	done
	note "live_preflight_ms=$(( (_t1 - _t0) * 10 ))"
	text live_kexec_loaded cat /sys/kernel/kexec_loaded
}
