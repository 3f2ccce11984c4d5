#!/bin/bash
# vmtest/build.sh - build the vmtest kernels and their initramfs (cached).
#
#   vmtest/build.sh [--kernel NAME] [--force] [--print-dir] [--list]
#
# Kernels (the table below; NAME is the full name or its series form):
#   7.2.13           linux-source-7.2 from sid (setup.sh: current.env), kernel.config
#   7.2.13-unfixed   the same source with vmtest/patches/7.2-unfixed/*.patch
#                    (kho_populate without its preserved-memory-map check) and
#                    kernel.config + kernel-unfixed.config (memory debugging)
#   7.3.4            linux-source-7.3 from trixie-backports (source-7.3.env), kernel.config
#   7.2.13-arm64     the 7.2 source cross-compiled for arm64 (aarch64-linux-gnu-gcc),
#                    kernel-arm64.config on arm64's tinyconfig; an uncompressed Image
#                    (kexec_file_load on arm64 takes no other format) and an arm64
#                    busybox (busybox-static:arm64, setup.sh downloads it)
#   (the version part is whatever the source package holds: 7.2 / 7.2-unfixed /
#    7.3 name the same builds)
# No --kernel: every kernel whose source setup.sh unpacked, the default one
# (7.2) first; the last line on stdout is still the default kernel's folder.
# --kernel NAME: that kernel only; the last line is its folder.
#
# Each kernel: tinyconfig + its config fragments, built out of tree into
#   $VMTEST_CACHE/build-<debian version>-<key>/
#   key = sha256(config fragments, then patch files, concatenated)[:12]
# (with kernel.config alone and no patches this is sha256(kernel.config): the
# folder of the single-kernel harness), skipped when the folder holds a
# finished build.  Patched kernels build from a patched copy of the source
# (hard links, patched files replaced): $VMTEST_CACHE/src-<version>+<patch key>/.
# Initramfs (rebuilt when init, helpers, busybox or bzImage change):
#   busybox-static, kx (kexec_file_load/reboot), luo-memfd (LUO memfd test),
#   /init, and /kernel (the bzImage itself, so every stage can kexec it again).
# --list prints "name<TAB>folder<TAB>state" for every kernel (state: built,
# missing, no-source).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
cache=${VMTEST_CACHE:-$repo/.vmcache}
force=0 print_dir=0 list=0 want=""
while [ $# -gt 0 ]; do
    case $1 in
        --force) force=1 ;;
        --print-dir) print_dir=1 ;;
        --list) list=1 ;;
        --kernel) [ $# -ge 2 ] || { echo "--kernel needs a name" >&2; exit 2; }; want=$2; shift ;;
        --kernel=*) want=${1#--kernel=} ;;
        -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
    shift
done

log() { printf '[build] %s\n' "$*" >&2; }
die() { printf '[build] ERROR: %s\n' "$*" >&2; exit 1; }

# ------------------------------------------------------------ kernel table
# series-variant | source env | config fragments | patch folder (or -) [| arch, x86_64 if absent]
KERNELS="
7.2|current.env|kernel.config|-
7.2-unfixed|current.env|kernel.config kernel-unfixed.config|patches/7.2-unfixed
7.3|source-7.3.env|kernel.config|-
7.2-arm64|current.env|kernel-arm64.config|-|arm64
"
default_kernel=7.2

# resolve NAME -> table line ("7.2.13-unfixed", "7.2-unfixed" and "unfixed" variants)
resolve() {
    local name=$1 line series variant env ver
    while IFS= read -r line; do
        [ -n "$line" ] || continue
        series=${line%%|*}
        variant=${series#*-}; [ "$variant" != "$series" ] || variant=""
        [ "$name" = "$series" ] && { echo "$line"; return 0; }
        env=$(echo "$line" | cut -d'|' -f2)
        if [ -f "$cache/$env" ]; then
            ver=$(sed -n 's/^VMTEST_KERNELVERSION=//p' "$cache/$env")
            [ "$name" = "$ver${variant:+-$variant}" ] && { echo "$line"; return 0; }
        fi
    done <<< "$KERNELS"
    return 1
}

# kernel_vars LINE: sets series variant envf frags pdir name key bdir ksrc_env
kernel_vars() {
    local line=$1
    series=${line%%|*}
    variant=${series#*-}; [ "$variant" != "$series" ] || variant=""
    envf=$cache/$(echo "$line" | cut -d'|' -f2)
    frags=$(echo "$line" | cut -d'|' -f3)
    pdir=$(echo "$line" | cut -d'|' -f4)
    karch=$(echo "$line" | cut -d'|' -f5)
    [ -n "$karch" ] || karch=x86_64
    # per arch: cross compiler prefix, image target, image file, guest busybox
    case $karch in
        x86_64) cross="" ktarget=bzImage kimage=arch/x86/boot/bzImage imgname=bzImage
                guest_bb=/bin/busybox ;;
        arm64)  cross=aarch64-linux-gnu- ktarget=Image kimage=arch/arm64/boot/Image imgname=Image
                guest_bb=$cache/busybox-arm64/bin/busybox ;;
        *) die "unknown arch '$karch' in the kernel table" ;;
    esac
    local files=() f
    for f in $frags; do files+=("$here/$f"); done
    patches=()
    if [ "$pdir" != - ]; then
        for f in "$here/$pdir"/*.patch; do [ -f "$f" ] && patches+=("$f"); done
        [ "${#patches[@]}" -gt 0 ] || die "no patches in $here/$pdir"
    fi
    key=$(cat "${files[@]}" "${patches[@]}" | sha256sum | cut -c1-12)
    pkey=""
    [ "${#patches[@]}" = 0 ] || pkey=$(cat "${patches[@]}" | sha256sum | cut -c1-12)
    frag_files=("${files[@]}")
    if [ -f "$envf" ]; then
        # shellcheck disable=SC1090
        . "$envf"
        name=$VMTEST_KERNELVERSION${variant:+-$variant}
        bdir=$cache/build-$VMTEST_KSRC_DEBVER-$key
    else
        name=$series bdir=""
    fi
}

if [ "$list" = 1 ]; then
    while IFS= read -r line; do
        [ -n "$line" ] || continue
        kernel_vars "$line"
        if [ -z "$bdir" ]; then st=no-source; elif [ "$karch" != x86_64 ] && ! command -v "${cross}gcc" >/dev/null; then st=no-compiler
        elif [ -f "$bdir/.kernel-complete" ] && [ -f "$bdir/initramfs.cpio.gz" ]; then st=built; else st=missing; fi
        printf '%s\t%s\t%s\t%s\n' "$name" "$series" "${bdir:--}" "$st"
    done <<< "$KERNELS"
    exit 0
fi

if [ -n "$want" ]; then
    sel=$(resolve "$want") || die "unknown kernel '$want' (known: $(printf '%s\n' "$KERNELS" | cut -d'|' -f1 | tr '\n' ' ' | sed 's/^ *//'))"
else
    sel=$(resolve "$default_kernel")
fi

# ------------------------------------------------------------ one kernel
build_one() {
    local line=$1
    kernel_vars "$line"
    [ -f "$envf" ] || die "no $envf: run vmtest/setup.sh first (as root)"
    # shellcheck disable=SC1090
    . "$envf"
    [ -f "$VMTEST_KSRC/Makefile" ] || die "kernel source missing: $VMTEST_KSRC (run vmtest/setup.sh)"
    if [ "$print_dir" = 1 ]; then echo "$bdir"; return 0; fi
    local kbuild=$bdir/kbuild jobs=${VMTEST_JOBS:-$(nproc)} t0 ksrc=$VMTEST_KSRC
    t0=$(date +%s)

    # patched source: a hard-linked copy of the tree with the patches applied
    # (patch writes each file it changes anew, so the original stays intact)
    if [ -n "$pkey" ]; then
        local sroot=$cache/src-$VMTEST_KSRC_DEBVER+$pkey
        ksrc=$sroot/$(basename "$VMTEST_KSRC")
        if [ ! -f "$sroot/.complete" ]; then
            log "$name: patching a copy of $VMTEST_KSRC into $sroot"
            rm -rf "$sroot"; mkdir -p "$sroot"
            cp -al "$VMTEST_KSRC" "$ksrc"
            local p
            for p in "${patches[@]}"; do
                log "$name:   $(basename "$p")"
                (cd "$ksrc" && patch -p1 --no-backup-if-mismatch -s < "$p") || die "patch $p does not apply to $VMTEST_KSRC_PKG $VMTEST_KSRC_DEBVER"
            done
            touch "$sroot/.complete"
        fi
    fi

    # ---------------------------------------------------------------- kernel
    if [ "$force" = 0 ] && [ -f "$bdir/.kernel-complete" ]; then
        log "$name: cached build $bdir"
    else
        command -v "${cross}gcc" >/dev/null || die "no ${cross}gcc (run vmtest/setup.sh)"
        log "$name: $VMTEST_KSRC_PKG $VMTEST_KSRC_DEBVER, $karch, config $frags${pkey:+, patches $pdir}, key $key, -j$jobs"
        rm -f "$bdir/.kernel-complete"
        mkdir -p "$kbuild"
        mk() { make -s -C "$ksrc" O="$kbuild" ARCH="$karch" ${cross:+CROSS_COMPILE=$cross} "$@"; }
        mk tinyconfig >"$bdir/config.log" 2>&1
        cat "${frag_files[@]}" >> "$kbuild/.config"
        # (kconfig warns about every symbol the fragments reassign: that is expected)
        mk olddefconfig >>"$bdir/config.log" 2>&1
        # every line of the fragments must have survived olddefconfig
        local bad=0 sym
        while IFS= read -r cline; do
            case $cline in
                CONFIG_*=*) grep -qxF "$cline" "$kbuild/.config" || { log "config: wanted '$cline', got '$(grep -E "^(# )?${cline%%=*}[= ]" "$kbuild/.config" || echo unset)'"; bad=1; } ;;
                "# CONFIG_"*" is not set") sym=${cline#\# }; sym=${sym%% *}
                    ! grep -q "^$sym=" "$kbuild/.config" || { log "config: wanted '$cline', got '$(grep "^$sym=" "$kbuild/.config")'"; bad=1; } ;;
            esac
        done < <(cat "${frag_files[@]}")
        [ "$bad" = 0 ] || die "$frags is not satisfiable with this kernel ($VMTEST_KSRC_DEBVER); see above"
        log "$name: make $ktarget (a few minutes)"
        local tb
        tb=$(date +%s)
        mk -j"$jobs" "$ktarget" >"$bdir/make.log" 2>&1 || { tail -40 "$bdir/make.log" >&2; die "kernel build failed (log: $bdir/make.log)"; }
        log "$name: built in $(( $(date +%s) - tb )) s"
        cp "$kbuild/$kimage" "$bdir/$imgname"
        cp "$kbuild/System.map" "$bdir/System.map"
        cp "$kbuild/.config" "$bdir/config"
        local release compat mkx
        release=$(mk kernelrelease)
        compat=$(sed -n 's/^#define[[:space:]]\+KHO_FDT_COMPATIBLE[[:space:]]\+"\([^"]*\)".*/\1/p' \
                 "$ksrc/include/linux/kho/abi/kexec_handover.h" 2>/dev/null | head -n1)
        mkx=$(awk '$3=="machine_kexec"{print $1; exit}' "$bdir/System.map")
        [ -n "$mkx" ] || die "machine_kexec not in System.map"
        cat > "$bdir/build-info.env" <<EOT
VMTEST_KSRC_PKG=$VMTEST_KSRC_PKG
VMTEST_KSRC_DEBVER=$VMTEST_KSRC_DEBVER
VMTEST_KERNELRELEASE=$release
VMTEST_KHO_COMPATIBLE=${compat:-unknown}
VMTEST_MACHINE_KEXEC=0x$mkx
VMTEST_CONFIG_KEY=$key
VMTEST_GCC=$("${cross}gcc" -dumpfullversion)
VMTEST_ARCH=$karch
VMTEST_IMAGE=$imgname
VMTEST_BUILD_SECONDS=$(( $(date +%s) - tb ))
EOT
        touch "$bdir/.kernel-complete"
    fi
    # what the kernel is called and made of (also for builds made before the table)
    grep -q '^VMTEST_KERNEL_NAME=' "$bdir/build-info.env" || cat >> "$bdir/build-info.env" <<EOT
VMTEST_KERNEL_NAME=$name
VMTEST_KERNEL_SERIES=$series
VMTEST_CONFIG_FRAGMENTS=$frags
VMTEST_PATCHES=$( [ -n "$pkey" ] && (cd "$here" && ls "$pdir"/*.patch | tr '\n' ' ' | sed 's/ $//') )
EOT

    # ------------------------------------------------------------- initramfs
    local bb=$guest_bb ikey g
    [ "$karch" != x86_64 ] || [ -x "$bb" ] || bb=$(command -v busybox || true)
    [ -n "$bb" ] && [ -f "$bb" ] || die "no busybox for $karch at $guest_bb (run vmtest/setup.sh)"
    [ "$karch" != x86_64 ] || ! ldd "$bb" >/dev/null 2>&1 || die "$bb is dynamically linked: install busybox-static"
    ikey=$(cat "$here/guest/init" "$here/guest/kx.c" "$here/guest/luo_memfd.c" "$bb" "$bdir/$imgname" \
           "$ksrc/usr/gen_init_cpio.c" | sha256sum | cut -c1-16)
    if [ "$force" = 0 ] && [ "$(cat "$bdir/.initramfs-key" 2>/dev/null)" = "$ikey" ] && [ -f "$bdir/initramfs.cpio.gz" ]; then
        log "$name: initramfs cached ($bdir/initramfs.cpio.gz)"
    else
        log "$name: initramfs: building"
        rm -f "$bdir/.initramfs-key"
        g=$bdir/guest
        rm -rf "$g"; mkdir -p "$g"
        "${cross}gcc" -static -O2 -Wall -o "$g/kx" "$here/guest/kx.c"
        "${cross}gcc" -static -O2 -Wall -o "$g/luo-memfd" "$here/guest/luo_memfd.c"
        gcc -O2 -o "$g/gen_init_cpio" "$ksrc/usr/gen_init_cpio.c"
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
file /kernel $bdir/$imgname 644 0 0
EOT
        "$g/gen_init_cpio" "$g/files.txt" | gzip -n -6 > "$bdir/initramfs.cpio.gz.tmp"
        mv "$bdir/initramfs.cpio.gz.tmp" "$bdir/initramfs.cpio.gz"
        echo "$ikey" > "$bdir/.initramfs-key"
    fi
    log "$name: done in $(( $(date +%s) - t0 )) s: $bdir"
    cat "$bdir/build-info.env" >&2
    echo "$bdir"
}

if [ -n "$want" ] || [ "$print_dir" = 1 ]; then
    build_one "$sel"
    exit 0
fi

# no --kernel: every kernel with a source, the default first (its folder is the last line)
default_dir=$(build_one "$sel")
while IFS= read -r line; do
    [ -n "$line" ] || continue
    [ "$line" = "$sel" ] && continue
    envf=$cache/$(echo "$line" | cut -d'|' -f2)
    if [ ! -f "$envf" ]; then
        log "WARNING: ${line%%|*}: no $envf (setup.sh found no source package for it): not built"
        continue
    fi
    kernel_vars "$line"
    if [ "$karch" != x86_64 ] && ! command -v "${cross}gcc" >/dev/null; then
        log "WARNING: ${line%%|*}: no ${cross}gcc (setup.sh installs it): not built"
        continue
    fi
    build_one "$line" >/dev/null
done <<< "$KERNELS"
echo "$default_dir"
