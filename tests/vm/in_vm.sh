#!/bin/bash
# Runs inside a matrix VM (scripts/vm/run.sh), chrooted into the host's root (read-only 9p).
ROOT=$1 BUILD=$2
export CI=$3 NETSTEER_BUILD=$BUILD PYTHONDONTWRITEBYTECODE=1 HOME=/tmp PATH=/usr/sbin:/usr/bin:/sbin:/bin
cd "$ROOT" || exit 1
/usr/bin/python3 -m pytest -p no:cacheprovider -q -s -rfE tests/vm/test_kernel.py >/tmp/out 2>&1
rc=$?
tail -n 40 /tmp/out
path=$(grep -o 'tc attach path [a-z]*' /tmp/out | head -n1)
echo "NETSTEER_VM_RESULT ${path:-tc attach path ?}; $(grep -E '[0-9]+ (passed|failed)' /tmp/out | tail -n1 | tr -d '=') rc=$rc"
