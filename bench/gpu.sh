#!/usr/bin/env bash
# The GPU path, end to end (issue 21): on a machine with an NVIDIA GPU,
#   1. install the CUDA build of libtorch    (MRVI_CUDA=1 bash tools/setup.sh)
#   2. build and install mrvi linking libtorch_cuda (MRVI_CUDA=1 bash tools/install.sh)
#   3. run the CPU/GPU agreement tests          (tests/testthat/test-gpu.R, MRVI_GPU_REQUIRE=1)
#   4. time, on the GPU and on the CPU in the same run: grouped distances
#      (1,000,000 cells x 1,000 samples x 20 groups on the GPU; the CPU on 100,000
#      cells, extrapolated and labelled so), training (both flavours, 100k cells x
#      2,000 genes, ~40% non-zero, a few epochs) and per-cell guided tests.
# Results: bench/results/gpu.csv (one row per measurement, per step and for the
# machine); with $OUT set (the device runner) the CSV and the log go to $OUT too.
#
#   bash bench/gpu.sh              the whole run (needs an NVIDIA GPU; fails clearly without one)
#   bash bench/gpu.sh --dry-run    print each step's command and time limit, run nothing
#   bash bench/gpu.sh --cpu-only   the CPU half (no setup, no build: uses the installed
#                                  package from R_LIBS, default ./.Rlib), for checks
#                                  without a GPU; writes bench/results/gpu_cpu_only.csv
#   bash bench/gpu.sh --skip-build a rerun on a machine where steps 1-2 already ran
#                                  (the project's device machine has no R, Rust or network:
#                                  there, source bench/gpu_bundle.sh unpack, then --skip-build)
# Environment:
#   MRVI_GPU_BENCH_SCALE    multiplies every cell count (default 1; 0.01 for a quick check)
#   MRVI_GPU_BENCH_THREADS  CPU threads for the "all cores" CPU rows (default: all cores)
#   MRVI_GPU_BUDGET_S       the whole script's time limit in seconds (default 580); each
#                           step runs under min(its own limit, the time left), and a step
#                           with under 15 s left is skipped and recorded as such
#   MRVI_GPU_CSV            where the CSV goes (default above)
#   MRVI_GPU_STEPS          run only these steps (comma-separated names, as printed), e.g.
#                           tests,association-gpu,association-cpu for a rerun of those
# Exit status: 0 when every step ran and passed; 1 when the machine has no GPU, the
# setup, the build or a test failed, or a step failed, timed out or was skipped.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

DRY=0; CPU_ONLY=0; SKIP_BUILD=0
for a in "$@"; do
  case "$a" in
    --dry-run) DRY=1 ;;
    --cpu-only) CPU_ONLY=1 ;;
    --skip-build) SKIP_BUILD=1 ;;
    -h|--help) sed -n '2,31p' "$0"; exit 0 ;;
    *) echo "[gpu] unknown option: $a (see --help)" >&2; exit 2 ;;
  esac
done

START=$(date +%s)
BUDGET=${MRVI_GPU_BUDGET_S:-580}
SCALE=${MRVI_GPU_BENCH_SCALE:-1}
NCORES=$(nproc 2>/dev/null || echo 1)
THREADS=${MRVI_GPU_BENCH_THREADS:-$NCORES}
THREADS2=$(( THREADS < 2 ? THREADS : 2 ))
if [ "$CPU_ONLY" = 1 ]; then CSV=${MRVI_GPU_CSV:-bench/results/gpu_cpu_only.csv}; else CSV=${MRVI_GPU_CSV:-bench/results/gpu.csv}; fi
DATA_DIR=${MRVI_BENCH_DATA:-${TMPDIR:-/tmp}/mrvi-gpu-bench}
OUTDIR=${OUT:-}

# sizes, times SCALE (at least a handful of cells)
sz() { awk -v n="$1" -v s="$SCALE" -v m="${2:-20}" 'BEGIN { v = int(n * s + 0.5); if (v < m) v = m; print v }'; }
TRAIN_CELLS=$(sz 100000 500)
DIST_CELLS=$(sz 1000000)
DIST_CELLS_SMALL=$(sz 100000)
DIST_CELLS_CPU=$(sz 100000)
ASSOC_CELLS=$(sz 100000)
ASSOC_CELLS_ATT=$(sz 500)
DATA="$DATA_DIR/train_${TRAIN_CELLS}x2000_40pct.rds"

say() { printf '[gpu] %s\n' "$*"; }
elapsed() { echo $(( $(date +%s) - START )); }

if [ "$DRY" = 0 ]; then
  mkdir -p "$(dirname "$CSV")" "$DATA_DIR"
  rm -f "$CSV"
  if [ -n "$OUTDIR" ]; then
    mkdir -p "$OUTDIR"
    exec > >(tee -a "$OUTDIR/gpu.log") 2>&1
  fi
fi

# one CSV row (the columns of bench/gpu_bench.R), written by the shell: machine and step rows
csv_q() { local v=${1//\"/\"\"}; printf '"%s"' "$v"; }
csv_row() { # part config device seconds status note
  [ "$DRY" = 1 ] && return 0
  if [ ! -f "$CSV" ]; then
    echo '"part","config","device","threads","cells","genes","samples","groups","epochs","seconds","cells_per_s","peak_device_mb","extrapolated","status","note"' >"$CSV"
  fi
  printf '%s,%s,%s,NA,NA,NA,NA,NA,NA,%s,NA,NA,FALSE,%s,%s\n' "$(csv_q "$1")" "$(csv_q "$2")" "$(csv_q "$3")" \
    "$4" "$(csv_q "$5")" "$(csv_q "$6")" >>"$CSV"
}
save_out() { [ "$DRY" = 0 ] && [ -n "$OUTDIR" ] && [ -f "$CSV" ] && cp "$CSV" "$OUTDIR/" 2>/dev/null; return 0; }

FAILED=""
# step NAME LIMIT_S COMMAND: run COMMAND under min(LIMIT_S, time left), record the outcome
step() {
  local name=$1 cap=$2 cmd=$3
  [ -n "${MRVI_GPU_STEPS:-}" ] && [[ ",$MRVI_GPU_STEPS," != *",$name,"* ]] && return 0
  local left=$(( BUDGET - $(elapsed) - 5 ))
  local limit=$(( cap < left ? cap : left ))
  if [ "$DRY" = 1 ]; then
    printf '\n== %s (limit %d s) ==\n%s\n' "$name" "$cap" "$cmd"
    return 0
  fi
  if [ "$limit" -lt 15 ]; then
    say "SKIPPED $name: $(elapsed) s of the ${BUDGET}-s budget used"
    csv_row step "$name" "" NA skipped "out of time (MRVI_GPU_BUDGET_S; after a build, rerun with --skip-build)"
    FAILED="$FAILED $name(skipped)"; save_out
    return 3
  fi
  printf '\n== %s (limit %d s, %d s elapsed) ==\n$ %s\n' "$name" "$limit" "$(elapsed)" "$cmd"
  local t0 rc secs status
  t0=$(date +%s)
  timeout -k 10 "$limit" bash -c "$cmd"
  rc=$?
  secs=$(( $(date +%s) - t0 ))
  case $rc in
    0) status=ok ;;
    124|137) status=timeout; say "TIMED OUT: $name after $limit s" ;;
    *) status="failed (exit $rc)"; say "FAILED: $name (exit $rc)" ;;
  esac
  csv_row step "$name" "" "$secs" "$status" "$(printf '%s' "$cmd" | tr '\n' ' ' | tr -s ' ' | cut -c1-200)"
  [ "$rc" = 0 ] || FAILED="$FAILED $name"
  save_out
  return $rc
}

finish() {
  save_out
  if [ "$DRY" = 1 ]; then echo; say "dry run: nothing was run"; exit 0; fi
  echo
  say "done in $(elapsed) s; results: $CSV"
  [ -f "$CSV" ] && Rscript -e 'options(width = 250); x <- read.csv(commandArgs(TRUE)[1]); x$note <- substr(x$note, 1, 60)
    print(x[, c("part", "config", "device", "threads", "cells", "samples", "groups", "seconds", "cells_per_s",
                "peak_device_mb", "extrapolated", "status", "note")], right = FALSE)' "$CSV" 2>/dev/null
  if [ -n "$FAILED" ]; then say "NOT OK:$FAILED"; exit 1; fi
  say "all steps passed"
  exit 0
}

# --- 0. the machine ------------------------------------------------------------------------
CPU_MODEL=$(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -1)
say "CPU: ${CPU_MODEL:-unknown} ($NCORES cores; CPU rows use $THREADS and $THREADS2 threads)"
csv_row machine cpu cpu NA ok "${CPU_MODEL:-unknown}; $NCORES cores"
if [ "$CPU_ONLY" = 1 ]; then
  say "--cpu-only: no GPU needed; setup, build and GPU steps are left out (scale $SCALE)"
  GPU_NAME=""
elif [ "$DRY" = 1 ]; then
  printf '\n== gpu check ==\nnvidia-smi --query-gpu=name --format=csv,noheader   (no GPU: exit 1 with a message)\n'
else
  GPU_NAME=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
  if [ -z "$GPU_NAME" ]; then
    say "ERROR: no NVIDIA GPU here (nvidia-smi is missing or lists no GPU)."
    say "This script measures the CUDA path; without a GPU run 'bash bench/gpu.sh --cpu-only' or '--dry-run'."
    csv_row machine gpu cuda NA "no GPU" "nvidia-smi found no GPU"
    save_out
    exit 1
  fi
  say "GPU: $GPU_NAME ($(nvidia-smi --query-gpu=driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1))"
  csv_row machine gpu cuda NA ok "$GPU_NAME; driver, memory: $(nvidia-smi --query-gpu=driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1)"
fi

# --- 1-2. libtorch with CUDA, build ---------------------------------------------------------
if [ "$CPU_ONLY" = 0 ] && [ "$SKIP_BUILD" = 0 ]; then
  # What the build needs, said up front (the setup step installs R and the wheel when it can
  # reach Debian's mirror and PyPI; it cannot on a machine without network access).
  if [ "$DRY" = 0 ]; then
    for t in R cargo python3; do
      command -v "$t" >/dev/null || [ -x "$HOME/.cargo/bin/$t" ] || say "note: '$t' is not on PATH here; tools/setup.sh must install it (network needed)"
    done
  fi
  step setup 300 "MRVI_CUDA=1 bash tools/setup.sh && ls .venv/lib/python3*/site-packages/torch/lib/libtorch_cuda.so >/dev/null 2>&1 || { echo '[gpu] .venv holds no libtorch_cuda.so: a CPU-only torch is installed there (remove .venv and rerun) or the CUDA wheel could not be fetched'; exit 1; }" ||
    { say "setup failed: the CUDA wheel (torch==2.13.0, ~2.6 GB with its nvidia-* dependencies) and R must be installable here"; finish; }
  step build 300 "MRVI_CUDA=1 bash tools/install.sh" || { say "the build failed (log above)"; finish; }
  export R_LIBS="$ROOT/.Rlib${R_LIBS:+:$R_LIBS}"
else
  export R_LIBS="${R_LIBS:-$ROOT/.Rlib}"
fi
say "R_LIBS=$R_LIBS"
if [ "$CPU_ONLY" = 0 ]; then
  step cuda-check 60 "Rscript -e 'suppressMessages(library(mrvi)); b <- mrviBackend(); print(b); if (!isTRUE(b\$cuda_available)) { message(\"[gpu] mrvi sees no CUDA device: was it installed with MRVI_CUDA=1 against the CUDA wheel?\"); quit(status = 1) }'" ||
    finish
else
  step backend 60 "Rscript -e 'suppressMessages(library(mrvi)); print(mrviBackend())'" || finish
fi

# --- 3. agreement tests ---------------------------------------------------------------------
REQUIRE=$([ "$CPU_ONLY" = 1 ] && echo 0 || echo 1)
step tests 200 "MRVI_GPU_REQUIRE=$REQUIRE Rscript -e '
  suppressMessages(library(testthat)); suppressMessages(library(mrvi))
  res <- as.data.frame(test_file(\"tests/testthat/test-gpu.R\", reporter = \"summary\", stop_on_failure = FALSE))
  bad <- sum(res\$failed) + sum(res\$error)
  cat(sprintf(\"\\ntest-gpu.R: %d tests, %d failed or in error, %d skipped\\n\", nrow(res), bad, sum(res\$skipped)))
  quit(status = if (bad > 0) 1 else 0)'"

# --- 4. timings -------------------------------------------------------------------------------
B="Rscript bench/gpu_bench.R"
if [ "$CPU_ONLY" = 0 ]; then
  step distances-gpu-1M 150 "$B distances $CSV cuda $THREADS $DIST_CELLS 1000 20"
  step distances-gpu-100k 60 "$B distances $CSV cuda $THREADS $DIST_CELLS_SMALL 1000 20"
fi
step distances-cpu 90 "$B distances $CSV cpu $THREADS $DIST_CELLS_CPU 1000 20 $DIST_CELLS"
step data 120 "[ -f $DATA ] || Rscript bench/make_data.R $TRAIN_CELLS 2000 32 2 $DATA 7000 nocompress"
if [ "$CPU_ONLY" = 0 ]; then
  step train-gpu 150 "$B train $CSV $DATA cuda $THREADS 3 linear attention linear:2048"
fi
step train-cpu-${THREADS2}threads 150 "$B train $CSV $DATA cpu $THREADS2 2 linear attention"
[ "$THREADS" != "$THREADS2" ] && step train-cpu-${THREADS}threads 100 "$B train $CSV $DATA cpu $THREADS 2 linear attention"
if [ "$CPU_ONLY" = 0 ]; then
  step association-gpu 90 "$B association $CSV cuda $THREADS $ASSOC_CELLS 64 linear && $B association $CSV cuda $THREADS $ASSOC_CELLS_ATT 64 attention"
fi
step association-cpu 90 "$B association $CSV cpu $THREADS $ASSOC_CELLS 64 linear && $B association $CSV cpu $THREADS $ASSOC_CELLS_ATT 64 attention"
finish
