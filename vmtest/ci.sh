#!/bin/bash
# vmtest/ci.sh - the whole vm stage, as CI runs it: setup (root), kernel build
# (cached), then the vm tests.  Prints how long each step took.
#
#   PYTHON=.venv/bin/python bash vmtest/ci.sh [extra pytest args]
#
# CI=true makes every vm test fail (not skip) when something it needs is missing.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
py=${PYTHON:-python3}
cd "$repo"

t0=$(date +%s)
bash "$here/setup.sh"
t1=$(date +%s)
bash "$here/build.sh" >/dev/null
python3 -m vmtest.rootfs >/dev/null     # the live guest's Debian root (cached)
t2=$(date +%s)
rc=0
"$py" -m pytest -m vm -v -p no:cacheprovider tests/vm "$@" || rc=$?
t3=$(date +%s)
printf '[vmtest] timings: setup %ss, build %ss, vm tests %ss, total %ss (rc %s)\n' \
    $((t1 - t0)) $((t2 - t1)) $((t3 - t2)) $((t3 - t0)) "$rc" >&2
exit "$rc"
