#!/bin/bash
# ic.sh VARIANT PHASE UNITS -> callgrind instructions per record: (I(UNITS) - I(0)) / records
V=$1; P=$2; N=$3; PY=${PY:-python}; HERE=$(cd "$(dirname "$0")" && pwd)
case $P in batch) PER=1000;; read) PER=20000;; spread) PER=1000;; esac
run() { PYTHONHASHSEED=0 valgrind --tool=callgrind --callgrind-out-file=/dev/null $PY "$HERE/layouts.py" $V $P $1 2>&1 | grep -o "Collected : [0-9]*" | grep -o "[0-9]*"; }
A=$(run 0); B=$(run $N)
python3 -c "print('$V $P', round(($B-$A)/($N*$PER)))"
