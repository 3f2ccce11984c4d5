#!/bin/sh
# Set up pykho in ./.venv (with numpy and matplotlib: fast walks, PNG maps) and decode,
# validate and draw the bundled real Linux 7.2.13 handover.
set -e
cd "$(dirname "$0")"
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -e '.[fast,plot]'
.venv/bin/kho inspect "$@"
echo
.venv/bin/kho validate
echo
.venv/bin/kho map --out kho-map.png
