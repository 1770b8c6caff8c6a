#!/bin/bash
# ab.sh ROUNDS N SRC_A SRC_B: w2cpu.py alternating A and B in fresh processes, round after
# round; prints each round (process CPU, appending thread's CPU, its user CPU, load) and the medians
# of CPU µs per append.
R=$1; N=$2; A=$3; B=$4; shift 4; PY=${PY:-python}; HERE=$(cd "$(dirname "$0")" && pwd)
ra=(); rb=(); ta=(); tb=(); ua=(); ub=()
for i in $(seq $R); do
  a=$($PY "$HERE/w2cpu.py" $A $N); b=$($PY "$HERE/w2cpu.py" $B $N)
  echo "round $i: A $a | B $b"; set -- $a; ra+=($1); ta+=($2); ua+=($3); set -- $b; rb+=($1); tb+=($2); ub+=($3)
done
python3 -c "
import statistics as st
for what, a, b in (('process', '${ra[*]}', '${rb[*]}'), ('thread', '${ta[*]}', '${tb[*]}'), ('thread user', '${ua[*]}', '${ub[*]}')):
    a = st.median(map(float, a.split())); b = st.median(map(float, b.split()))
    print(f'median {what} CPU us/append A {a:.2f} B {b:.2f} B/A {b/a:.3f}')"
