#!/bin/bash
# ic.sh SRC VARIANT REPS -> per-record instructions: (I(reps) - I(0)) / (reps * records)
SRC=$1; V=$2; R=$3; PY=${PY:-python}; HERE=$(cd "$(dirname "$0")" && pwd)
case $V in read|batch) PER=20000;; read1) PER=200;; single|turns) PER=2000;; esac
run() { PYTHONHASHSEED=0 PYTHONPATH=$SRC valgrind --tool=callgrind --callgrind-out-file=/dev/null $PY "$HERE/ic.py" $V $1 2>&1 | grep -o "Collected : [0-9]*" | grep -o "[0-9]*"; }
A=$(run 0); B=$(run $R)
python3 -c "print('$SRC $V', round(($B-$A)/($R*$PER)))"
