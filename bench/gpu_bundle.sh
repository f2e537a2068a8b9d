#!/usr/bin/env bash
# The GPU machine lent to some sessions (the `device` tool) has PyTorch with CUDA but no R,
# no Rust and no network, so bench/gpu.sh cannot set up and build there. This script
# prepares, on a Debian machine with the package's usual set-up (tools/setup.sh), what
# travels to it instead, and unpacks it there:
#
#   bash bench/gpu_bundle.sh pack      here: build mrvi (HEAD: commit first) against the
#                                      device's libtorch (default 2.11.0+cu130,
#                                      MRVI_GPU_TORCH) and write
#                                      .gpubundle/bundle.tar.xz: this machine's R, the R
#                                      packages mrvi and its tests need, their shared
#                                      libraries, and mrvi linked to libtorch_cuda
#   source bench/gpu_bundle.sh unpack  there (as root): R into /usr/lib/R, the environment
#                                      (R_LIBS, LD_LIBRARY_PATH to the device's own torch
#                                      and CUDA libraries); then bash bench/gpu.sh --skip-build
#
# tch 0.26 expects libtorch 2.13; an older libtorch lacks a few generated operators. The
# pack step stubs those out in a copy of torch-sys (they throw if called; mrvi calls none)
# and sets LIBTORCH_BYPASS_VERSION_CHECK: the CPU/GPU agreement tests in bench/gpu.sh are
# what vouches for that build. .gpubundle/ is git-ignored; `device run` takes it with
# carry: [".gpubundle"] (it must stay under the tree's 64 MiB).
set -uo pipefail

gpu_bundle_pack() {
  set -e
  local root; root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  local torch_version=${MRVI_GPU_TORCH:-2.11.0}
  local work=${MRVI_GPU_BUNDLE_WORK:-${TMPDIR:-/tmp}/mrvi-gpu-bundle}
  local out="$root/.gpubundle"
  mkdir -p "$work" "$out"
  export PATH="$HOME/.cargo/bin:$PATH"

  # 1. the device's libtorch (headers and libraries to build against; the device has its own)
  if [ ! -f "$work/torch/version.py" ]; then
    echo "[bundle] fetching torch==$torch_version (the CUDA wheel from PyPI)"
    "$root/.venv/bin/python" -m pip download -q --no-deps --only-binary=:all: \
      "torch==$torch_version" -d "$work/wheel"
    (cd "$work" && unzip -q -o wheel/torch-"$torch_version"-*.whl 'torch/lib/*' 'torch/include/*' 'torch/version.py')
  fi
  echo "[bundle] libtorch $(sed -n "s/^__version__ = '\(.*\)'/\1/p" "$work/torch/version.py")"

  # 2. torch-sys with the operators this libtorch lacks stubbed out, found by compiling
  #    (MRVI_GPU_BUNDLE_KEEP_BUILD=1 keeps the last build and only repacks)
  if [ "${MRVI_GPU_BUNDLE_KEEP_BUILD:-0}" != 1 ] || [ ! -d "$work/Rlib/mrvi" ]; then
  local tsys; tsys=$(ls -d "$HOME"/.cargo/registry/src/*/torch-sys-0.26.0 | head -1)
  rm -rf "$work/src" "$work/torch-sys" && cp -r "$tsys" "$work/torch-sys"
  mkdir -p "$work/src" && (cd "$root" && git archive HEAD | tar -x -m -C "$work/src")
  printf '\n[patch.crates-io]\ntorch-sys = { path = "%s" }\n' "$work/torch-sys" >>"$work/src/src/rust/Cargo.toml"
  rm -rf "$work/Rlib" && mkdir -p "$work/Rlib"
  local try
  for try in 1 2 3; do
    if (cd "$work/src" && LIBTORCH="$work/torch" LIBTORCH_BYPASS_VERSION_CHECK=1 MRVI_CUDA=1 \
          MRVI_CARGO_TARGET_DIR="$work/target" R CMD INSTALL --no-test-load --strip -l "$work/Rlib" . \
          >"$work/build.log" 2>&1); then
      break
    fi
    grep -q 'torch_api_generated.cpp:[0-9]*:[0-9]*: error' "$work/build.log" ||
      { tail -30 "$work/build.log"; echo "[bundle] build failed: $work/build.log"; return 1; }
    python3 - "$work/build.log" "$work/torch-sys/libtch/torch_api_generated.cpp" <<'PY'
import re, sys
log, path = sys.argv[1], sys.argv[2]
bad = {int(n) for n in re.findall(r'torch_api_generated\.cpp:(\d+):\d+: error', open(log).read())}
src = open(path).read().split('\n')
starts = set()
for n in bad:
    i = n - 1
    while not src[i].startswith('void atg_'):
        i -= 1
    starts.add(i)
for i in sorted(starts, reverse=True):
    j = i
    while src[j] != '}':
        j += 1
    src[i + 1:j] = ['  PROTECT(throw std::runtime_error("not in this libtorch version");)']
open(path, 'w').write('\n'.join(src))
print(f"[bundle] stubbed {len(starts)} operators missing from this libtorch")
PY
  done
  [ -d "$work/Rlib/mrvi" ] || { echo "[bundle] mrvi did not build: $work/build.log"; return 1; }
  fi

  # 3. R, the packages mrvi and its GPU tests load, and the shared libraries they need
  local stage="$work/stage"; rm -rf "$stage"; mkdir -p "$stage/R" "$stage/share" "$stage/lib" "$stage/Rlib"
  (cd /usr/lib/R && tar -ch bin etc lib modules) | tar -x -C "$stage/R"
  mkdir -p "$stage/R/library"
  cp -rL /usr/share/R/share/. "$stage/share/"
  # base R's packages and those the GPU run loads: not ggplot2, which mrvi uses only
  # for plots (no help, docs, tests or translations)
  local pkgs; pkgs=$(Rscript -e 'ip <- installed.packages(); need <- c("BiocParallel", "cli", "Matrix", "S4Vectors", "testthat")
    d <- unique(c(need, unlist(tools::package_dependencies(need, db = ip, recursive = TRUE, which = c("Depends", "Imports")))))
    d <- union(setdiff(rownames(ip)[ip[, "Priority"] %in% "base"], c("tcltk", "translations")), d); cat(paste(ip[d, "LibPath"], d, sep = "/"))')
  local p
  for p in $pkgs; do
    (cd "$(dirname "$p")" && tar -ch --exclude='*/html' --exclude='*/doc' --exclude='*/help' --exclude='*/tests' \
       --exclude='*/po' "$(basename "$p")") | tar -x -C "$stage/R/library"
  done
  cp -r "$work/Rlib/mrvi" "$stage/Rlib/"
  # the shared libraries R and the packages' code link to, except the C library itself
  # (not those of the graphics devices and the internet module, which the run never
  # loads); the device's own copies win at run time (R's ldpaths puts the system folder first)
  { ls "$stage"/R/lib/*.so* "$stage"/R/modules/lapack.so; find "$stage/R/library" -path '*/libs/*.so' ! -name cairo.so ! -name tcltk.so; } |
    xargs ldd 2>/dev/null | awk '/=> \//{print $3}' | sort -u |
    grep -v -E '/(libc|libm|libdl|libpthread|librt|libresolv|ld-linux[^/]*)\.so' |
    while read -r f; do cp -L "$f" "$stage/lib/"; done
  tar -C "$stage" -cf - . | xz -T0 -6 >"$out/bundle.tar.xz"
  echo "[bundle] $out/bundle.tar.xz: $(du -h "$out/bundle.tar.xz" | cut -f1)"
}

gpu_bundle_unpack() {
  local root; root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  local dest=/opt/mrvi-bundle
  rm -rf "$dest" && mkdir -p "$dest" && xz -dc "$root/.gpubundle/bundle.tar.xz" | tar -x -C "$dest" || return 1
  # R's scripts have its Debian paths built in
  rm -rf /usr/lib/R /usr/share/R/share && mkdir -p /usr/share/R
  ln -s "$dest/R" /usr/lib/R && ln -s "$dest/share" /usr/share/R/share
  mkdir -p /usr/local/bin && ln -sf /usr/lib/R/bin/R /usr/local/bin/R && ln -sf /usr/lib/R/bin/Rscript /usr/local/bin/Rscript
  local torch; torch=$(python3 -c 'import importlib.util as u, os; print(os.path.dirname(u.find_spec("torch").origin))')
  # libtorch_cuda finds the CUDA libraries through its own rpath; R finds libtorch here
  export LD_LIBRARY_PATH="$torch/lib:$dest/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export R_LIBS="$dest/Rlib"
  echo "[bundle] R $(Rscript -e 'cat(R.version.string)' 2>&1); libtorch from $torch"
}

case "${1:-}" in
  pack) gpu_bundle_pack ;;
  unpack) gpu_bundle_unpack ;;
  *) sed -n '2,21p' "${BASH_SOURCE[0]}"; [ -n "${1:-}" ] && false ;;
esac
