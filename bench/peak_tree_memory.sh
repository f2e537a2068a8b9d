#!/bin/bash
# Runs a command and reports the peak memory of its whole process tree (the
# command and every process it forks, e.g. mrvi's prefetching readers): the sum
# of their proportional set sizes (PSS; pages shared between processes are split
# between them, so nothing is counted twice), sampled every second. Peak RSS of
# one process (/usr/bin/time -v, VmHWM) misses forked children.
#   bash bench/peak_tree_memory.sh Rscript bench/atlas.R train_disk
"$@" &
root=$!
peak=0
descendants() {
  ps -e -o pid=,ppid= | awk -v root="$1" '{ parent[$1] = $2 } END {
    for (p in parent) { q = p; while (q != "" && q != 0 && q != 1) { if (q == root) { print p; break } q = parent[q] } } }'
}
while kill -0 "$root" 2>/dev/null; do
  total=0
  for p in $(descendants "$root"); do
    kb=$(awk '/^Pss:/ { print $2 }' "/proc/$p/smaps_rollup" 2>/dev/null)
    total=$((total + ${kb:-0}))
  done
  [ "$total" -gt "$peak" ] && peak=$total
  sleep 1
done
wait "$root"
rc=$?
echo "peak_tree_memory: peak PSS of the process tree $((peak / 1024)) MB"
exit $rc
