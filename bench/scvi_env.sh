#!/usr/bin/env bash
# A virtual environment with scvi-tools' MRVI for bench/vs_scvi_tools.R (never a
# dependency of the package):  bash bench/scvi_env.sh [FOLDER]   (default bench/.venv-scvi)
# SCVI_TOOLS_VERSION (default 1.4.2: the release whose JAX and torch MRVI the issues compare).
set -euo pipefail
venv="${1:-bench/.venv-scvi}"
version="${SCVI_TOOLS_VERSION:-1.4.2}"
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --upgrade pip
"$venv/bin/pip" install --quiet "scvi-tools[jax]==$version"
"$venv/bin/python" -c "import scvi, jax, torch; print('scvi-tools', scvi.__version__, '| jax', jax.__version__, '| torch', torch.__version__)"
