#!/usr/bin/env bash
# The main command: install what is missing, build the package, and run the main
# job on the bundled real data (a MrVI fit, a sample tree and a heatmap in out/).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
bash tools/install.sh
OMP_WAIT_POLICY=PASSIVE R_LIBS="$PWD/.Rlib" Rscript tools/demo.R
