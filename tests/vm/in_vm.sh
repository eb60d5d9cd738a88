#!/bin/bash
# Runs inside a matrix VM (scripts/vm/run.sh), chrooted into the host's root (read-only 9p).
ROOT=$1 BUILD=$2
mkdir -p /run/nstmp
export CI=$3 NETSTEER_IN_VM=1 NETSTEER_BUILD=$BUILD PYTHONDONTWRITEBYTECODE=1 HOME=/run/nstmp TMPDIR=/run/nstmp PATH=/usr/sbin:/usr/bin:/sbin:/bin
cd "$ROOT" || { echo "NETSTEER_VM_RESULT cannot enter $ROOT rc=1"; exit 1; }
/usr/bin/python3 -m pytest -p no:cacheprovider -q -s -rfE --durations=0 tests/vm/test_kernel.py >/run/nstmp/out 2>&1
rc=$?
tail -n 40 /run/nstmp/out
path=$(grep -o 'tc attach path [a-z]*' /run/nstmp/out | head -n1)
echo "NETSTEER_VM_RESULT ${path:-tc attach path ?}; $(grep -E '[0-9]+ (passed|failed)' /run/nstmp/out | tail -n1 | tr -d '=') rc=$rc"
