#!/bin/bash
# ab.sh ROUNDS N SRC_A SRC_B: w2cpu.py alternating A and B in fresh processes, round after
# round; prints each round and the medians of CPU µs per append.
R=$1; N=$2; A=$3; B=$4; PY=${PY:-python}; HERE=$(cd "$(dirname "$0")" && pwd)
ra=(); rb=()
for i in $(seq $R); do
  a=$($PY "$HERE/w2cpu.py" $A $N); b=$($PY "$HERE/w2cpu.py" $B $N)
  echo "round $i: A $a | B $b"; ra+=(${a% *}); rb+=(${b% *})
done
python3 -c "
import statistics as st; a=[float(x) for x in '${ra[*]}'.split()]; b=[float(x) for x in '${rb[*]}'.split()]
print(f'median CPU us/append A {st.median(a):.2f} B {st.median(b):.2f} B/A {st.median(b)/st.median(a):.3f}')"
