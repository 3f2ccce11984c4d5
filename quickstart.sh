#!/bin/sh
# Set up pykho in ./.venv and decode the bundled real Linux 7.2.13 handover.
set -e
cd "$(dirname "$0")"
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -e '.[fast]'
.venv/bin/kho inspect "$@"
echo
.venv/bin/kho validate
