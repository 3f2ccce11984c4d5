#!/bin/bash
# vmtest/setup.sh - prepare a Debian machine for the real-kernel KHO tests.
#
# Run as root. Idempotent: running it again only does what is missing.
#   * adds Debian's unstable suite (sid) and trixie-backports to apt, each
#     pinned so that nothing but linux-source-7.* can ever come from it
#     (priority -1 for everything else);
#   * installs QEMU, busybox-static, the kernel build tools and mmdebstrap
#     (the live guest's Debian root, vmtest/rootfs.py) from the
#     machine's own release, and for the arm64 kernel the cross compiler
#     (gcc-aarch64-linux-gnu), qemu-system-arm and, with arm64 added as a
#     foreign dpkg architecture, busybox-static:arm64 (downloaded, not
#     installed: unpacked into $VMTEST_CACHE/busybox-arm64/);
#   * downloads the kernel sources the builds use and unpacks each into
#     $VMTEST_CACHE/src-<debian version>/:
#       linux-source-7.2 from sid (or, when sid no longer has it, the newest
#         linux-source-7.x it has): $VMTEST_CACHE/current.env and source-7.2.env
#       linux-source-7.3 from trixie-backports: source-7.3.env
#     A source that no suite carries is reported and skipped (its kernels
#     cannot be built; build.sh says so).
#
# Environment:
#   VMTEST_CACHE        cache folder (default: <repo>/.vmcache)
#   VMTEST_KSRC_PKG     source package to prefer for current.env (default: linux-source-7.2)
#   VMTEST_APT_UPDATE   0 = skip 'apt-get update' when the lists look fresh
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
cache=${VMTEST_CACHE:-$repo/.vmcache}
want_pkg=${VMTEST_KSRC_PKG:-linux-source-7.2}

log() { printf '[setup] %s\n' "$*" >&2; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }

t0=$(date +%s)
[ "$(id -u)" = 0 ] || die "must run as root (apt-get install, apt sources)"
[ -r /etc/os-release ] || die "no /etc/os-release"
. /etc/os-release
[ "${ID:-}" = debian ] || die "only Debian is supported (found ID=${ID:-?})"
codename=${VERSION_CODENAME:-}
[ -n "$codename" ] || die "no VERSION_CODENAME in /etc/os-release"
[ "$codename" != sid ] || die "this machine already runs sid; the pinning below would make no sense"
export DEBIAN_FRONTEND=noninteractive

# ---------------------------------------------------------------- apt sources
changed=0

# Is SUITE (or one of its other names) already configured somewhere other
# than FILE (by hand)?   have_suite_elsewhere FILE 'sid|unstable'
have_suite_elsewhere() {
    local own=$1 names=$2 f
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        grep -Eqs "^[[:space:]]*deb[[:space:]]+(\[[^]]*\][[:space:]]+)?[^[:space:]]+[[:space:]]+($names)([[:space:]]|\$)" "$f" && return 0
    done
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        [ "$f" = "$own" ] && continue
        # deb822: an enabled stanza whose Suites line names the suite
        awk -v names="$names" 'BEGIN{RS=""; IGNORECASE=1}
             $0 ~ ("(^|\n)Suites:[^\n]*[[:space:]](" names ")([[:space:]]|\n|$)") &&
             !/(^|\n)Enabled:[[:space:]]*no/ {found=1}
             END{exit found?0:1}' "$f" && return 0
    done
    return 1
}

# add_suite SUITE OTHER-NAMES: a deb822 source for Debian's SUITE (unless it is
# configured already) and its pinning.  Pinning: the suite at -1 (never
# installed, never upgraded to), except the kernel source packages
# linux-source-7.* (500).  A package-specific pin (this glob) takes precedence
# over the general 'Package: *' one; 500 also lifts a backports suite's
# NotAutomatic default.
add_suite() {
    local suite=$1 names=$2
    local src_file=/etc/apt/sources.list.d/pykho-vmtest-$suite.sources
    local pref_file=/etc/apt/preferences.d/pykho-vmtest-$suite
    if have_suite_elsewhere "$src_file" "$names"; then
        log "$suite is already in apt's sources (not adding $src_file)"
        [ ! -f "$src_file" ] || { rm -f "$src_file"; changed=1; }
    else
        local want_src="Types: deb
URIs: http://deb.debian.org/debian
Suites: $suite
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg"
        if [ "$(cat "$src_file" 2>/dev/null || true)" != "$want_src" ]; then
            log "adding Debian $suite to apt sources: $src_file"
            printf '%s\n' "$want_src" > "$src_file"
            changed=1
        fi
    fi
    local want_pref="# Written by pykho vmtest/setup.sh: only linux-source-7.* may come from $suite.
Package: *
Pin: release n=$suite
Pin-Priority: -1

Package: linux-source-7.*
Pin: release n=$suite
Pin-Priority: 500"
    if [ "$(cat "$pref_file" 2>/dev/null || true)" != "$want_pref" ]; then
        log "writing apt pinning: $pref_file"
        printf '%s\n' "$want_pref" > "$pref_file"
        changed=1
    fi
}
add_suite sid 'sid|unstable'
# arm64 package lists too: the arm64 guest's busybox-static:arm64 comes from them
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    log "adding arm64 as a foreign dpkg architecture (for busybox-static:arm64)"
    dpkg --add-architecture arm64
    changed=1
fi
add_suite trixie-backports 'trixie-backports|stable-backports'

mkdir -p "$cache"
apt_stamp=$cache/.apt-updated
lists_fresh() {
    # an 'apt-get update' by this script less than 6 hours ago, and both suites' lists present
    [ -n "$(find "$apt_stamp" -mmin -360 2>/dev/null)" ] || return 1
    ls /var/lib/apt/lists/*_dists_sid_* >/dev/null 2>&1 &&
        ls /var/lib/apt/lists/*_dists_trixie-backports_* >/dev/null 2>&1
}
if [ "$changed" = 1 ] || [ "${VMTEST_APT_UPDATE:-1}" != 0 ] || ! lists_fresh; then
    log "apt-get update"
    apt-get update -q >&2
    touch "$apt_stamp"
else
    log "apt lists are fresh (VMTEST_APT_UPDATE=0), skipping apt-get update"
fi

# ------------------------------------------------------------------- packages
pkgs=(qemu-system-x86 busybox-static
      gcc make libc6-dev flex bison bc libelf-dev libssl-dev
      cpio xz-utils zstd gzip python3
      mmdebstrap e2fsprogs    # the live guest's Debian root (vmtest/rootfs.py)
      gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-system-arm)   # the arm64 kernel and guest
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    # Safety net: simulate first; nothing (dependencies included) may come from
    # sid or trixie-backports.
    sim=$(apt-get install -s -q --no-install-recommends "${missing[@]}") || die "apt-get cannot install: ${missing[*]}"
    if printf '%s\n' "$sim" | grep -E '^Inst ' | grep -Eiq '[ (/](unstable|sid|trixie-backports|stable-backports)[] /)]'; then
        printf '%s\n' "$sim" | grep -E '^Inst ' | grep -Ei '(unstable|sid|backports)' >&2
        die "these packages would come from sid or trixie-backports: the pinning in /etc/apt/preferences.d/pykho-vmtest-* is not effective"
    fi
    log "installing from $codename: ${missing[*]}"
    apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
else
    log "all packages already installed"
fi
for p in qemu-system-x86 busybox-static gcc gcc-aarch64-linux-gnu qemu-system-arm; do
    log "  $p $(dpkg-query -W -f='${Version}' "$p")"
done

# the arm64 guest's busybox: Debian's static arm64 build of the machine's own
# release, unpacked into the cache (nothing of another architecture is installed)
bbver=$(apt-cache policy busybox-static:arm64 2>/dev/null | sed -n 's/^ *Candidate: //p')
[ -n "$bbver" ] && [ "$bbver" != "(none)" ] || die "apt knows no busybox-static:arm64 (apt-get update?)"
bbdir=$cache/busybox-arm64
if [ "$(cat "$bbdir/.version" 2>/dev/null)" = "$bbver" ] && [ -f "$bbdir/bin/busybox" ]; then
    log "busybox-static:arm64 $bbver already in $bbdir"
else
    log "downloading busybox-static:arm64=$bbver into $bbdir"
    rm -rf "$bbdir" "$cache/dl-busybox-arm64"
    mkdir -p "$cache/dl-busybox-arm64"
    ! id _apt >/dev/null 2>&1 || chown _apt "$cache/dl-busybox-arm64"
    (cd "$cache/dl-busybox-arm64" && apt-get download -q "busybox-static:arm64=$bbver" >&2)
    dpkg-deb -x "$cache"/dl-busybox-arm64/*.deb "$bbdir"
    rm -rf "$cache/dl-busybox-arm64"
    [ -f "$bbdir/bin/busybox" ] || die "busybox-static:arm64 $bbver has no bin/busybox"
    echo "$bbver" > "$bbdir/.version"
fi

# ------------------------------------------------------------- kernel source
# pkg_version PKG SUITE: the version of PKG that SUITE carries, else empty
pkg_version() {
    apt-cache madison "$1" 2>/dev/null | awk -F'|' -v s="$2" '$3 ~ (" " s "/") {gsub(/ /,"",$2); print $2}' | head -n1
}

# fetch_source PKG VERSION: download PKG=VERSION and unpack it into
# $cache/src-VERSION/ (once); prints the source tree
fetch_source() {
    local pkg=$1 ver=$2 series=${1#linux-source-}
    local srcdir="$cache/src-$ver"
    if [ -f "$srcdir/.complete" ]; then
        log "already unpacked: $srcdir"
    else
        rm -rf "$srcdir" "$cache/dl-$ver"
        mkdir -p "$cache/dl-$ver"
        # let apt's unprivileged download user write there (no "unsandboxed" warning)
        ! id _apt >/dev/null 2>&1 || chown _apt "$cache/dl-$ver"
        log "downloading $pkg=$ver"
        (cd "$cache/dl-$ver" && apt-get download -q "$pkg=$ver" >&2)
        local deb
        deb=$(ls "$cache/dl-$ver"/*.deb)
        log "unpacking $deb"
        mkdir -p "$srcdir"
        dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$cache/dl-$ver" "./usr/src/linux-source-$series.tar.xz"
        tar -xf "$cache/dl-$ver/usr/src/linux-source-$series.tar.xz" -C "$srcdir"
        [ -f "$srcdir/linux-source-$series/Makefile" ] || die "unexpected layout in $deb"
        rm -rf "$cache/dl-$ver"
        touch "$srcdir/.complete"
    fi
    echo "$srcdir/linux-source-$series"
}

# write_env FILE PKG VERSION SUITE TREE: what build.sh reads for a source
write_env() {
    local kver
    kver=$(make -s -C "$5" kernelversion 2>/dev/null || true)
    cat > "$1" <<EOT
VMTEST_KSRC_PKG=$2
VMTEST_KSRC_DEBVER=$3
VMTEST_KSRC_SUITE=$4
VMTEST_KSRC=$5
VMTEST_KERNELVERSION=$kver
EOT
    log "source tree: $5 (kernel $kver, $2 $3 from $4): $1"
}

mkdir -p "$cache"

# 1. linux-source-7.2 from sid (current.env: the default build).  Prefer
#    $want_pkg; otherwise the newest 7.x in sid.
pkg=$want_pkg suite=sid
ver=$(pkg_version "$pkg" sid)
if [ -z "$ver" ] && [ "$pkg" != linux-source-7.2 ]; then
    ver=$(pkg_version "$pkg" trixie-backports)
    [ -z "$ver" ] || suite=trixie-backports
fi
if [ -z "$ver" ]; then
    best=""
    for p in $(apt-cache pkgnames linux-source-7. | grep -E '^linux-source-7\.[0-9]+$' | sort -V); do
        [ -n "$(pkg_version "$p" sid)" ] && best=$p
    done
    [ -n "$best" ] || die "sid carries neither $want_pkg nor any linux-source-7.x"
    pkg=$best
    ver=$(pkg_version "$pkg" sid)
    log "NOTE: sid no longer carries $want_pkg; using the newest 7.x it has: $pkg $ver"
fi
log "kernel source: $pkg $ver ($suite)"
ksrc=$(fetch_source "$pkg" "$ver")
write_env "$cache/current.env" "$pkg" "$ver" "$suite" "$ksrc"
[ "$pkg" != linux-source-7.2 ] || cp "$cache/current.env" "$cache/source-7.2.env"

# 2. linux-source-7.3 from trixie-backports (the 7.3.4 build); sid as a
#    fallback.  When neither carries it, its kernels cannot be built.
pkg73=linux-source-7.3 suite73=trixie-backports
ver73=$(pkg_version "$pkg73" trixie-backports)
if [ -z "$ver73" ]; then
    ver73=$(pkg_version "$pkg73" sid)
    suite73=sid
fi
if [ -n "$ver73" ]; then
    log "kernel source: $pkg73 $ver73 ($suite73)"
    write_env "$cache/source-7.3.env" "$pkg73" "$ver73" "$suite73" "$(fetch_source "$pkg73" "$ver73")"
else
    log "WARNING: neither trixie-backports nor sid carries $pkg73: the 7.3 kernels cannot be built"
    log "         (apt-cache policy $pkg73: $(apt-cache policy "$pkg73" 2>&1 | tr '\n' ' '))"
    rm -f "$cache/source-7.3.env"
fi

# 3. every linux-source-7.x the two suites carry (vmtest warns about one newer
#    than any kernel pykho has a profile for)
: > "$cache/available.env.tmp"
for p in $(apt-cache pkgnames linux-source-7. | grep -E '^linux-source-7\.[0-9]+$' | sort -V); do
    for s in sid trixie-backports; do
        v=$(pkg_version "$p" "$s")
        [ -z "$v" ] || echo "$p $v $s" >> "$cache/available.env.tmp"
    done
done
mv "$cache/available.env.tmp" "$cache/available.txt"
log "linux-source-7.x in sid and trixie-backports: $(awk '{print $1 "=" $2 "(" $3 ")"}' "$cache/available.txt" | tr '\n' ' ')"
log "setup done in $(( $(date +%s) - t0 )) s"
