#!/usr/bin/env bash
# R CMD build (which renders the vignette) and R CMD check --no-manual on the
# tarball, as a user or CRAN-like check would; fails on any WARNING or ERROR.
# Run after tools/setup.sh; the cargo target folder is shared with tools/install.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
export PYTHON="$PWD/.venv/bin/python"
export MRVI_CARGO_TARGET_DIR="$PWD/src/rust/target"
export R_LIBS="$PWD/.Rlib"
export OMP_WAIT_POLICY=PASSIVE
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
version=$(sed -n 's/^Version: //p' DESCRIPTION)
( cd "$work" && R CMD build "$OLDPWD" >build.log 2>&1 ) ||
  { tail -40 "$work/build.log"; echo "[check] R CMD build failed"; exit 1; }
( cd "$work" && _R_CHECK_FORCE_SUGGESTS_=false R CMD check --no-manual "mrvi_${version}.tar.gz" >check.log 2>&1 ) ||
  { tail -60 "$work/check.log"
    [ -f "$work/mrvi.Rcheck/00install.out" ] && tail -40 "$work/mrvi.Rcheck/00install.out"
    echo "[check] R CMD check failed"; exit 1; }
status=$(grep '^Status:' "$work/mrvi.Rcheck/00check.log" || true)
grep -E "^\* .*(NOTE|WARNING|ERROR)$" -A6 "$work/mrvi.Rcheck/00check.log" || true
echo "[check] R CMD check: $status"
case "$status" in *WARNING*|*ERROR*) exit 1 ;; esac
