#!/usr/bin/env bash
# Build and install the package into the project-local R library .Rlib/ (after
# tools/setup.sh). Re-running is quick: cargo keeps src/rust/target between installs.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
mkdir -p .Rlib
export PYTHON="$PWD/.venv/bin/python"
R CMD INSTALL --no-test-load --strip -l .Rlib . >out_install.log 2>&1 ||
  { tail -40 out_install.log; echo "[install] R CMD INSTALL failed; full log: out_install.log"; exit 1; }
rm -f out_install.log
echo "[install] mrvi installed into $PWD/.Rlib"
