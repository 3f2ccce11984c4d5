#!/bin/bash
# vmtest/setup.sh - prepare a Debian machine for the real-kernel KHO tests.
#
# Run as root. Idempotent: running it again only does what is missing.
#   * adds Debian's unstable suite (sid) to apt, pinned so that nothing but
#     linux-source-7.* can ever come from it (priority -1 for everything else);
#   * installs QEMU, busybox-static and the kernel build tools from the
#     machine's own release;
#   * downloads linux-source-7.2 (or, when sid no longer has it, the newest
#     linux-source-7.x it has) and unpacks it into $VMTEST_CACHE/src-<version>/.
#
# Environment:
#   VMTEST_CACHE        cache folder (default: <repo>/.vmcache)
#   VMTEST_KSRC_PKG     source package to prefer (default: linux-source-7.2)
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
src_file=/etc/apt/sources.list.d/pykho-vmtest-sid.sources
pref_file=/etc/apt/preferences.d/pykho-vmtest-sid

# Is sid/unstable already configured somewhere (by this script or by hand)?
have_sid_elsewhere() {
    local f
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        grep -Eqs '^[[:space:]]*deb[[:space:]]+(\[[^]]*\][[:space:]]+)?[^[:space:]]+[[:space:]]+(sid|unstable)([[:space:]]|$)' "$f" && return 0
    done
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        [ "$f" = "$src_file" ] && continue
        # deb822: an enabled stanza whose Suites line names sid or unstable
        awk 'BEGIN{RS=""; IGNORECASE=1}
             /(^|\n)Suites:[^\n]*[[:space:]](sid|unstable)([[:space:]]|\n|$)/ &&
             !/(^|\n)Enabled:[[:space:]]*no/ {found=1}
             END{exit found?0:1}' "$f" && return 0
    done
    return 1
}

if have_sid_elsewhere; then
    log "sid is already in apt's sources (not adding $src_file)"
    [ ! -f "$src_file" ] || { rm -f "$src_file"; changed=1; }
else
    want_src="Types: deb
URIs: http://deb.debian.org/debian
Suites: sid
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg"
    if [ "$(cat "$src_file" 2>/dev/null || true)" != "$want_src" ]; then
        log "adding Debian sid to apt sources: $src_file"
        printf '%s\n' "$want_src" > "$src_file"
        changed=1
    fi
fi

# Pinning: sid at -1 (never installed, never upgraded to), except the kernel
# source packages linux-source-7.*.  A package-specific pin (this glob) takes
# precedence over the general 'Package: *' one.
want_pref="# Written by pykho vmtest/setup.sh: only linux-source-7.* may come from sid.
Package: *
Pin: release n=sid
Pin-Priority: -1

Package: linux-source-7.*
Pin: release n=sid
Pin-Priority: 500"
if [ "$(cat "$pref_file" 2>/dev/null || true)" != "$want_pref" ]; then
    log "writing apt pinning: $pref_file"
    printf '%s\n' "$want_pref" > "$pref_file"
    changed=1
fi

mkdir -p "$cache"
apt_stamp=$cache/.apt-updated
lists_fresh() {
    # an 'apt-get update' by this script less than 6 hours ago, and sid's lists present
    [ -n "$(find "$apt_stamp" -mmin -360 2>/dev/null)" ] || return 1
    ls /var/lib/apt/lists/*_dists_sid_* >/dev/null 2>&1
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
      cpio xz-utils zstd gzip python3)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    # Safety net: simulate first; nothing (dependencies included) may come from sid.
    sim=$(apt-get install -s -q --no-install-recommends "${missing[@]}") || die "apt-get cannot install: ${missing[*]}"
    if printf '%s\n' "$sim" | grep -E '^Inst ' | grep -Eiq '[ (/](unstable|sid)[] /)]'; then
        printf '%s\n' "$sim" | grep -E '^Inst ' | grep -Ei '(unstable|sid)' >&2
        die "these packages would come from sid: the pinning in $pref_file is not effective"
    fi
    log "installing from $codename: ${missing[*]}"
    apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
else
    log "all packages already installed"
fi
for p in qemu-system-x86 busybox-static gcc; do
    log "  $p $(dpkg-query -W -f='${Version}' "$p")"
done

# ------------------------------------------------------------- kernel source
# Which linux-source-7.x?  Prefer $want_pkg; otherwise the newest 7.x in sid.
pkg_version() {  # candidate version of $1 if it comes from sid, else empty
    apt-cache madison "$1" 2>/dev/null | awk -F'|' '$3 ~ / sid\// {gsub(/ /,"",$2); print $2}' | head -n1
}
pkg=$want_pkg
ver=$(pkg_version "$pkg")
if [ -z "$ver" ]; then
    best=""
    for p in $(apt-cache pkgnames linux-source-7. | grep -E '^linux-source-7\.[0-9]+$' | sort -V); do
        [ -n "$(pkg_version "$p")" ] && best=$p
    done
    [ -n "$best" ] || die "sid carries neither $want_pkg nor any linux-source-7.x"
    pkg=$best
    ver=$(pkg_version "$pkg")
    log "NOTE: sid no longer carries $want_pkg; using the newest 7.x it has: $pkg $ver"
fi
log "kernel source: $pkg $ver"

mkdir -p "$cache"
srcdir="$cache/src-$ver"
series=${pkg#linux-source-}
if [ -f "$srcdir/.complete" ]; then
    log "already unpacked: $srcdir"
else
    rm -rf "$srcdir" "$cache/dl-$ver"
    mkdir -p "$cache/dl-$ver"
    # let apt's unprivileged download user write there (no "unsandboxed" warning)
    ! id _apt >/dev/null 2>&1 || chown _apt "$cache/dl-$ver"
    log "downloading $pkg=$ver"
    (cd "$cache/dl-$ver" && apt-get download -q "$pkg=$ver" >&2)
    deb=$(ls "$cache/dl-$ver"/*.deb)
    log "unpacking $deb"
    mkdir -p "$srcdir"
    dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$cache/dl-$ver" "./usr/src/linux-source-$series.tar.xz"
    tar -xf "$cache/dl-$ver/usr/src/linux-source-$series.tar.xz" -C "$srcdir"
    [ -f "$srcdir/linux-source-$series/Makefile" ] || die "unexpected layout in $deb"
    rm -rf "$cache/dl-$ver"
    touch "$srcdir/.complete"
fi
ksrc="$srcdir/linux-source-$series"
kver=$(make -s -C "$ksrc" kernelversion 2>/dev/null || true)

# Record what build.sh should use.
cat > "$cache/current.env" <<EOT
VMTEST_KSRC_PKG=$pkg
VMTEST_KSRC_DEBVER=$ver
VMTEST_KSRC=$ksrc
VMTEST_KERNELVERSION=$kver
EOT
log "source tree: $ksrc (kernel $kver)"
log "wrote $cache/current.env"
log "setup done in $(( $(date +%s) - t0 )) s"
