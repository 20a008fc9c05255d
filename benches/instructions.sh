#!/usr/bin/env bash
# Instructions per call of each named service of a bench binary, counted by cachegrind: the
# difference between N2 and N1 calls divided by N2 - N1, so start-up costs cancel out.
# Instruction counts do not move with the machine's load, unlike timings.
#
# Usage: benches/instructions.sh layers|circuit_breaker|observability|stack [name...]
# (builds the bench package first; valgrind must be installed)
set -euo pipefail
cd "$(dirname "$0")/.."
bench="$1"; shift
bin=$(cargo bench -p palisade-benches --bench "$bench" --no-run --message-format=json 2>/dev/null |
  sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -1)
case "$bench" in
  layers) var=LAYERS_COUNT calls=LAYERS_CALLS ;;
  circuit_breaker) var=BREAKER_COUNT calls=BREAKER_CALLS ;;
  observability) var=OBSERVE_COUNT calls=OBSERVE_CALLS ;;
  stack) var=STACK_COUNT calls=STACK_CALLS ;;
  *) echo "unknown bench $bench" >&2; exit 2 ;;
esac
n1=${N1:-1000}
n2=${N2:-11000}
count() {
  env "$var=$1" "$calls=$2" valgrind --tool=cachegrind --cache-sim=no \
    --cachegrind-out-file=/dev/null "$bin" 2>&1 | sed -n 's/.*I *refs: *//p' | tr -d ,
}
for name in "$@"; do
  a=$(count "$name" "$n1")
  b=$(count "$name" "$n2")
  printf '%-32s %8.1f\n' "$name" "$(echo "($b - $a) / ($n2 - $n1)" | bc -l)"
done
