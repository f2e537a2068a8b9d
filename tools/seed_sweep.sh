#!/usr/bin/env bash
# Do the statistical thresholds of the test suite hold beyond the seeds they were
# written with? Runs the test files that check fitted models against planted
# structure or calibration with every literal seed in them (`seed = N`,
# `set.seed(N)`) shifted by each of SHIFTS, on a copy of tests/testthat, and
# prints one line per file and shift. Needs tools/install.sh first (or MRVI_LIB,
# a library with mrvi installed).
#   bash tools/seed_sweep.sh "1 2 3 4" [test-files...]
# Slow (every fit of those files, once per shift): run it on a quiet machine.
set -euo pipefail
cd "$(dirname "$0")/.."
shifts=${1:-"1 2 3 4"}
shift || true
files=${*:-"test-fit.R test-distances.R test-attention.R test-association.R test-differential-expression.R test-abundance.R test-tree-support.R test-validity.R test-expression.R test-baselines.R test-latent.R test-simulate-nested.R"}
export OMP_WAIT_POLICY=PASSIVE
for k in $shifts; do
  root=$(mktemp -d)
  dir="$root/tests/testthat"
  mkdir -p "$dir"
  cp DESCRIPTION "$root"/  # testthat takes its edition from there
  cp tests/testthat/helper-*.R "$dir"/
  for f in $files; do [ -f "tests/testthat/$f" ] && cp "tests/testthat/$f" "$dir"/; done
  # shift literal seeds: seed = 12 -> seed = 12 + k; set.seed(3) -> set.seed(3 + k)
  sed -i -E "s/\bseed = ([0-9]+)\b/seed = \1 + $k/g; s/set\.seed\(([0-9]+)\)/set.seed(\1 + $k)/g" "$dir"/*.R
  for f in $files; do
    [ -f "$dir/$f" ] || continue
    R_LIBS="${MRVI_LIB:-$PWD/.Rlib}" Rscript -e '
      suppressMessages({library(testthat); library(mrvi)})
      args <- commandArgs(TRUE)
      res <- as.data.frame(test_file(args[1], reporter = "silent", stop_on_failure = FALSE))
      bad <- res$test[res$failed > 0 | res$error]
      cat(sprintf("shift %s %-36s %3d tests, %d failed%s\n", args[2], basename(args[1]), nrow(res), length(bad),
                  if (length(bad)) paste0(": ", paste(bad, collapse = " | ")) else ""))' "$dir/$f" "$k" 2>/dev/null ||
      echo "shift $k $f: the file did not run"
  done
  rm -rf "$root"
done
