#!/bin/bash
# ic.sh SRC VARIANT REPS -> instructions per append: (I(REPS) - I(0)) / (REPS * 200),
# counted inside builtin_all only (ic.py runs the appends in all(); TOGGLE= counts
# everything), for the main thread alone (callgrind --separate-threads: the background checkpointer's
# share moves with timing) and for all threads. PYTHONHASHSEED=0, user space only.
SRC=$1; V=$2; R=$3; PY=${PY:-python}; HERE=$(cd "$(dirname "$0")" && pwd)
OUT=$(mktemp -d)
run() {
  PYTHONHASHSEED=0 PYTHONPATH=$SRC valgrind --tool=callgrind --separate-threads=yes ${TOGGLE---toggle-collect=builtin_all} \
    --callgrind-out-file=$OUT/cg.$1 $PY "$HERE/ic.py" $V $1 >/dev/null 2>&1
  main=$(grep -h "^totals:" $OUT/cg.$1-01 | awk '{print $2}')
  all=$(cat $OUT/cg.$1-* | grep -h "^totals:" | awk '{s+=$2} END {print s}')
  echo "$main $all"
}
read A0 A1 <<<"$(run 0)"; read B0 B1 <<<"$(run $R)"
python3 -c "print('$SRC $V main', round(($B0-$A0)/($R*200)), 'all', round(($B1-$A1)/($R*200)))"
[ -n "$KEEP" ] && cp $OUT/cg.$R-01 "$KEEP"
rm -rf $OUT
