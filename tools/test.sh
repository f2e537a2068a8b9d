#!/usr/bin/env bash
# The test command: install what is missing, build the package, then run every
# test: the Rust core's `cargo test`, the R package's testthat suite, and
# R CMD build + R CMD check on the tarball (which renders and checks the vignette).
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== machine: $(grep -m1 "model name" /proc/cpuinfo | sed "s/.*: //"), $(nproc) cores =="
bash tools/setup.sh
bash tools/install.sh
export PATH="$HOME/.cargo/bin:$PATH"
# OpenMP threads spin while waiting by default, which starves the other jobs of a
# 2-core machine; passive waiting is faster there.
export OMP_WAIT_POLICY=PASSIVE
LIBTORCH=$(.venv/bin/python -c 'import importlib.util as u, os; print(os.path.dirname(u.find_spec("torch").origin))')
export LIBTORCH
status=0
summary=$(mktemp)
echo "== cargo test (Rust core) =="
# Tests that seed libtorch's global random generator take a lock (tests/common), so they run in parallel.
# (--no-fail-fast: a failing test binary does not hide the ones after it)
cargo_line="cargo test: ok"
LD_LIBRARY_PATH="$LIBTORCH/lib" cargo test --release --no-fail-fast -p mrvi-core \
  --manifest-path src/rust/Cargo.toml --target-dir src/rust/target || { status=1; cargo_line="cargo test: FAILED (see above)"; }
echo "== testthat (R package) =="
R_LIBS="$PWD/.Rlib" Rscript -e '
  suppressMessages(library(testthat)); library(mrvi)
  res <- as.data.frame(test_dir("tests/testthat", reporter = "summary", stop_on_failure = FALSE))
  failed <- sum(res$failed) + sum(res$error)
  line <- sprintf("testthat: %d passed, %d failed, %d skipped",
                  sum(res$nb) - sum(res$failed) - sum(res$skipped), failed, sum(res$skipped))
  cat("\n", line, "\n", sep = "")
  writeLines(line, commandArgs(TRUE)[1])
  quit(status = if (failed > 0) 1 else 0)' "$summary" || status=1
echo "== R CMD build + R CMD check =="
bash tools/check.sh || status=1
# both tallies again, as the closing lines
echo "$cargo_line"
cat "$summary"
rm -f "$summary"
exit $status
