#!/usr/bin/env bash
# Install everything mrvi needs on Debian 12, idempotently:
#   1. R and the R packages it uses, from Debian's packages (there is no CRAN here);
#   2. libtorch 2.13.0 (what the pinned tch 0.26 expects), from PyPI's `torch` wheel,
#      into the project-local virtual environment .venv/ (CPU part only: 517 MB);
#   3. a Rust toolchain check (cargo >= 1.89).
# A second run finds everything in place and takes a few seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_VERSION=2.13.0
# libtorch_cpu.so of the cu130 wheel needs only these two CUDA runtime libraries.
TORCH_CUDA_DEPS="nvidia-cuda-runtime==13.0.96 nvidia-cuda-cupti==13.0.85"
# Set MRVI_CUDA=1 to install the full CUDA wheel (GPU machines; 2.6 GB); the same
# variable at install time (tools/install.sh, configure) links libtorch_cuda.
MRVI_CUDA="${MRVI_CUDA:-0}"

DEB_PACKAGES="r-base-dev r-cran-matrix r-cran-testthat r-cran-cli r-cran-ggplot2
  r-bioc-singlecellexperiment r-cran-seurat r-cran-seuratobject
  r-cran-ape r-cran-cluster r-cran-igraph r-cran-uwot r-cran-knitr r-cran-rmarkdown r-bioc-biocstyle r-bioc-hdf5array
  r-bioc-biocparallel r-cran-batchtools
  pandoc python3 python3-venv"

say() { printf '[setup] %s\n' "$*"; }

missing=""
for p in $DEB_PACKAGES; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
# python3 may come from elsewhere (pyenv); then its venv module is all we need.
if [ -n "$missing" ] && command -v python3 >/dev/null && python3 -c 'import venv, ensurepip' 2>/dev/null; then
  missing=$(echo "$missing" | tr ' ' '\n' | grep -vx -e python3 -e python3-venv | tr '\n' ' ' || true)
fi
missing=$(echo $missing)
if [ -n "$missing" ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  say "installing Debian packages: $missing"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  # apt's temporary folder has been seen to vanish mid-run here: retry once in a private one.
  $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null ||
    { say "apt-get failed once; retrying"; tmp=$(mktemp -d); TMPDIR="$tmp" $SUDO -E apt-get install -y -qq --no-install-recommends $missing >/dev/null; }
else
  say "Debian packages: all present"
fi

# --- libtorch from PyPI into .venv ---------------------------------------------------
VENV="$PWD/.venv"
torch_ok() {
  [ -x "$VENV/bin/python" ] || return 1
  "$VENV/bin/python" - "$TORCH_VERSION" <<'PY' 2>/dev/null
import importlib.util as u, os, re, sys
s = u.find_spec("torch")
d = os.path.dirname(s.origin)
v = re.search(r"__version__ = '([^']+)'", open(os.path.join(d, "version.py")).read()).group(1)
sys.exit(0 if v.split("+")[0] == sys.argv[1] and os.path.exists(os.path.join(d, "lib", "libtorch_cpu.so")) else 1)
PY
}
if torch_ok; then
  say "libtorch $TORCH_VERSION: present in .venv"
else
  say "installing torch==$TORCH_VERSION (libtorch) into .venv"
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  if [ "$MRVI_CUDA" = 1 ]; then
    "$VENV/bin/pip" install -q --disable-pip-version-check "torch==$TORCH_VERSION"
  else
    "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps "torch==$TORCH_VERSION" $TORCH_CUDA_DEPS
  fi
  torch_ok || { say "torch was installed but libtorch_cpu.so was not found"; exit 1; }
fi

# --- Rust ----------------------------------------------------------------------------
export PATH="$HOME/.cargo/bin:$PATH"
if ! command -v cargo >/dev/null; then
  say "cargo not found. Install Rust >= 1.89 (https://rustup.rs), then run this again."
  exit 1
fi
say "ready: $(R --version | head -1); $(cargo --version)"
