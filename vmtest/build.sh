#!/bin/bash
# vmtest/build.sh - build the vmtest kernel and initramfs (cached).
#
#   vmtest/build.sh [--force] [--print-dir]
#
# Uses the source tree recorded by setup.sh in $VMTEST_CACHE/current.env.
# Kernel: tinyconfig + vmtest/kernel.config, built out of tree into
#   $VMTEST_CACHE/build-<debian version>-<sha256(kernel.config)[:12]>/
# and skipped when that folder already holds a finished build.
# Initramfs (rebuilt when init, helpers, busybox or bzImage change):
#   busybox-static, kx (kexec_file_load/reboot), luo-memfd (LUO memfd test),
#   /init, and /kernel (the bzImage itself, so every stage can kexec it again).
# The last line printed on stdout is the build folder.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
cache=${VMTEST_CACHE:-$repo/.vmcache}
force=0 print_dir=0
for a in "$@"; do
    case $a in
        --force) force=1 ;;
        --print-dir) print_dir=1 ;;
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        *) echo "unknown argument: $a" >&2; exit 2 ;;
    esac
done

log() { printf '[build] %s\n' "$*" >&2; }
die() { printf '[build] ERROR: %s\n' "$*" >&2; exit 1; }

[ -f "$cache/current.env" ] || die "no $cache/current.env: run vmtest/setup.sh first (as root)"
. "$cache/current.env"
[ -f "$VMTEST_KSRC/Makefile" ] || die "kernel source missing: $VMTEST_KSRC (run vmtest/setup.sh)"

frag=$here/kernel.config
key=$(sha256sum "$frag" | cut -c1-12)
bdir=$cache/build-$VMTEST_KSRC_DEBVER-$key
if [ "$print_dir" = 1 ]; then echo "$bdir"; exit 0; fi
kbuild=$bdir/kbuild
jobs=${VMTEST_JOBS:-$(nproc)}
t0=$(date +%s)

# ------------------------------------------------------------------ kernel
if [ "$force" = 0 ] && [ -f "$bdir/.kernel-complete" ]; then
    log "kernel: cached build $bdir"
else
    command -v gcc >/dev/null || die "no gcc (run vmtest/setup.sh)"
    log "kernel: $VMTEST_KSRC_PKG $VMTEST_KSRC_DEBVER, config key $key, -j$jobs"
    rm -f "$bdir/.kernel-complete"
    mkdir -p "$kbuild"
    mk() { make -s -C "$VMTEST_KSRC" O="$kbuild" ARCH=x86_64 "$@"; }
    mk tinyconfig >"$bdir/config.log" 2>&1
    cat "$frag" >> "$kbuild/.config"
    # (kconfig warns about every symbol the fragment reassigns: that is expected)
    mk olddefconfig >>"$bdir/config.log" 2>&1
    # every line of the fragment must have survived olddefconfig
    bad=0
    while IFS= read -r line; do
        case $line in
            CONFIG_*=*) grep -qxF "$line" "$kbuild/.config" || { log "config: wanted '$line', got '$(grep -E "^(# )?${line%%=*}[= ]" "$kbuild/.config" || echo unset)'"; bad=1; } ;;
            "# CONFIG_"*" is not set") sym=${line#\# }; sym=${sym%% *}
                ! grep -q "^$sym=" "$kbuild/.config" || { log "config: wanted '$line', got '$(grep "^$sym=" "$kbuild/.config")'"; bad=1; } ;;
        esac
    done < "$frag"
    [ "$bad" = 0 ] || die "kernel.config is not satisfiable with this kernel ($VMTEST_KSRC_DEBVER); see above"
    log "kernel: make bzImage (a few minutes)"
    tb=$(date +%s)
    mk -j"$jobs" bzImage >"$bdir/make.log" 2>&1 || { tail -40 "$bdir/make.log" >&2; die "kernel build failed (log: $bdir/make.log)"; }
    log "kernel: built in $(( $(date +%s) - tb )) s"
    cp "$kbuild/arch/x86/boot/bzImage" "$bdir/bzImage"
    cp "$kbuild/System.map" "$bdir/System.map"
    cp "$kbuild/.config" "$bdir/config"
    release=$(mk kernelrelease)
    compat=$(sed -n 's/^#define[[:space:]]\+KHO_FDT_COMPATIBLE[[:space:]]\+"\([^"]*\)".*/\1/p' \
             "$VMTEST_KSRC/include/linux/kho/abi/kexec_handover.h" 2>/dev/null | head -n1)
    mkx=$(awk '$3=="machine_kexec"{print $1; exit}' "$bdir/System.map")
    [ -n "$mkx" ] || die "machine_kexec not in System.map"
    cat > "$bdir/build-info.env" <<EOT
VMTEST_KSRC_PKG=$VMTEST_KSRC_PKG
VMTEST_KSRC_DEBVER=$VMTEST_KSRC_DEBVER
VMTEST_KERNELRELEASE=$release
VMTEST_KHO_COMPATIBLE=${compat:-unknown}
VMTEST_MACHINE_KEXEC=0x$mkx
VMTEST_CONFIG_KEY=$key
VMTEST_GCC=$(gcc -dumpfullversion)
EOT
    touch "$bdir/.kernel-complete"
fi

# --------------------------------------------------------------- initramfs
bb=/bin/busybox
[ -x "$bb" ] || bb=$(command -v busybox || true)
[ -n "$bb" ] && [ -x "$bb" ] || die "no busybox (apt-get install busybox-static)"
ldd "$bb" >/dev/null 2>&1 && die "$bb is dynamically linked: install busybox-static"
ikey=$(cat "$here/guest/init" "$here/guest/kx.c" "$here/guest/luo_memfd.c" "$bb" "$bdir/bzImage" \
       "$VMTEST_KSRC/usr/gen_init_cpio.c" | sha256sum | cut -c1-16)
if [ "$force" = 0 ] && [ "$(cat "$bdir/.initramfs-key" 2>/dev/null)" = "$ikey" ] && [ -f "$bdir/initramfs.cpio.gz" ]; then
    log "initramfs: cached ($bdir/initramfs.cpio.gz)"
else
    log "initramfs: building"
    rm -f "$bdir/.initramfs-key"
    g=$bdir/guest
    rm -rf "$g"; mkdir -p "$g"
    gcc -static -O2 -Wall -o "$g/kx" "$here/guest/kx.c"
    gcc -static -O2 -Wall -o "$g/luo-memfd" "$here/guest/luo_memfd.c"
    gcc -O2 -o "$g/gen_init_cpio" "$VMTEST_KSRC/usr/gen_init_cpio.c"
    cat > "$g/files.txt" <<EOT
dir /dev 755 0 0
nod /dev/console 600 0 0 c 5 1
nod /dev/null 666 0 0 c 1 3
dir /proc 755 0 0
dir /sys 755 0 0
dir /tmp 1777 0 0
dir /bin 755 0 0
dir /sbin 755 0 0
file /bin/busybox $bb 755 0 0
slink /bin/sh busybox 777 0 0
file /bin/kx $g/kx 755 0 0
file /bin/luo-memfd $g/luo-memfd 755 0 0
file /init $here/guest/init 755 0 0
file /kernel $bdir/bzImage 644 0 0
EOT
    "$g/gen_init_cpio" "$g/files.txt" | gzip -n -6 > "$bdir/initramfs.cpio.gz.tmp"
    mv "$bdir/initramfs.cpio.gz.tmp" "$bdir/initramfs.cpio.gz"
    echo "$ikey" > "$bdir/.initramfs-key"
fi

log "done in $(( $(date +%s) - t0 )) s: $bdir"
cat "$bdir/build-info.env" >&2
echo "$bdir"
