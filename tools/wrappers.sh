#!/usr/bin/env bash
# Regenerate R/extendr-wrappers.R from the installed package (rextendr is not in
# Debian; extendr can print the wrappers itself), then the docs and NAMESPACE.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install.sh
{
  sed -n '1,7p' R/extendr-wrappers.R
  R_LIBS=.Rlib Rscript -e 'suppressMessages(library(mrvi)); cat(.Call("wrap__make_mrvi_wrappers", TRUE, "mrvi", PACKAGE = "mrvi"))' |
    sed -n '/^#. libtorch facts/,$p' |
    # every call into Rust through rust() (R/conditions.R): classed errors
    sed 's/^\(mrvi_[a-z_0-9]* <- function(.*)\) \(\.Call(.*)\)$/\1 rust(\2)/'
} > R/extendr-wrappers.R.new
mv R/extendr-wrappers.R.new R/extendr-wrappers.R
Rscript -e 'roxygen2::roxygenise(load_code = "source")'
bash tools/install.sh
