# Training throughput and peak memory of mrvi(): this build against a baseline build
# (issue 15 item 3), both measured in the same run.
#   R_LIBS=$PWD/.Rlib Rscript bench/train_throughput.R [THREADS [BASELINE]]
# (from the repository root, after tools/install.sh; quiet machine only)
# THREADS: libtorch threads of every fit (default 1, so that runs are comparable);
# BASELINE: a git commit (default dea840e, the last commit before issue 15's work).
# The baseline is built from `git archive BASELINE` and installed into its own library
# under MRVI_BENCH_CACHE (default ~/.cache/mrvi-bench), once per commit; its cargo
# target folder is shared between baselines and seeded from src/rust/target, so that
# libtorch's bindings are not compiled again. MRVI_BASELINE_LIB=/path/to/library
# uses an already installed baseline instead.
# Data (written once to MRVI_BENCH_DATA, default a temporary folder):
#   * realistic: simulateNested(N, 2000, n_samples = 32, n_sites = 2, genes_per_edge = 10,
#     expression = "skewed", library_size = 3000), ~40% non-zero as real data;
#   * make_data: bench/make_data.R (N, 2000 genes, 32 samples, 2 sites), ~19.5% non-zero.
# N is MRVI_BENCH_CELLS (default 20000); every fit trains MRVI_BENCH_EPOCHS epochs
# (default 4), batch size 256, 10% validation. Each configuration trains in its own
# process (bench/train_one.R): cells/s = training cells per second of an epoch
# (validation included), mean over the epochs after the first; peak RSS = the
# process's VmHWM (R, the loaded data and training). The two builds alternate, so
# that drift of the machine touches both alike. Writes bench/results/train_throughput.csv.
source("bench/helpers.R")
args <- commandArgs(trailingOnly = TRUE)
threads <- if (length(args) > 0) as.integer(args[1]) else 1L
baseline <- if (length(args) > 1) args[2] else "dea840e"
n_cells <- as.integer(Sys.getenv("MRVI_BENCH_CELLS", "20000"))
epochs <- as.integer(Sys.getenv("MRVI_BENCH_EPOCHS", "4"))
lib <- Sys.getenv("R_LIBS", file.path(getwd(), ".Rlib"))
cache <- path.expand(Sys.getenv("MRVI_BENCH_CACHE", "~/.cache/mrvi-bench"))
data_dir <- Sys.getenv("MRVI_BENCH_DATA", file.path(tempdir(), "mrvi-bench"))
dir.create(data_dir, showWarnings = FALSE, recursive = TRUE)
dir.create(cache, showWarnings = FALSE, recursive = TRUE)
dir.create("bench/results", showWarnings = FALSE, recursive = TRUE)
rscript <- file.path(R.home("bin"), "Rscript")
git <- function(...) system2("git", c(...), stdout = TRUE)

# The library holding the baseline build of `commit` (built and installed on first use).
baseline_library <- function(commit) {
  given <- Sys.getenv("MRVI_BASELINE_LIB")
  if (nzchar(given)) return(given)
  hash <- git("rev-parse", "--verify", paste0(commit, "^{commit}"))
  out <- file.path(cache, paste0("lib-", substr(hash, 1, 12)))
  if (file.exists(file.path(out, "mrvi", "DESCRIPTION"))) return(out)
  src <- file.path(cache, paste0("src-", substr(hash, 1, 12)))  # a fixed path: cargo reuses its build
  unlink(src, recursive = TRUE)
  dir.create(src)
  # -m: files dated now, not at the commit; with the commit's older dates cargo would take
  # the shared target's newer build of the workspace crates as fresh and link it instead
  if (system(sprintf("git archive %s | tar -x -m -C %s", hash, shQuote(src))) != 0) stop("git archive ", hash, " failed")
  target <- file.path(cache, "target")
  if (!dir.exists(target) && dir.exists("src/rust/target")) system2("cp", c("-a", "src/rust/target", shQuote(target)))
  partial <- paste0(out, ".partial")
  unlink(partial, recursive = TRUE)
  dir.create(partial)
  python <- file.path(getwd(), ".venv", "bin", "python")
  env <- c(paste0("MRVI_CARGO_TARGET_DIR=", target),
           paste0("PATH=", path.expand("~/.cargo/bin"), ":", Sys.getenv("PATH")),
           if (file.exists(python)) paste0("PYTHON=", python))
  log <- file.path(cache, paste0("install-", substr(hash, 1, 12), ".log"))
  cat("Building the baseline", hash, "into", out, "(log:", log, ")\n")
  status <- system2(file.path(R.home("bin"), "R"), c("CMD", "INSTALL", "--no-test-load", "--strip", "-l", shQuote(partial), shQuote(src)),
                    stdout = log, stderr = log, env = env)
  if (status != 0) stop("installing the baseline failed; see ", log)
  file.rename(partial, out)
  out
}

# A data file (a list: counts, sample, site), generated once with this build.
make_data <- function(kind) {
  if (kind != "make_data") return(realistic_data(n_cells, data_dir, lib))
  f <- file.path(data_dir, sprintf("%s_%d.rds", kind, n_cells))
  if (file.exists(f)) return(f)
  out <- system2(rscript, c("bench/make_data.R", n_cells, 2000, 32, 2, f), stdout = TRUE, stderr = TRUE,
                 env = paste0("R_LIBS=", lib))
  if (!is.null(attr(out, "status")) || !file.exists(f)) stop(paste(out, collapse = "\n"))
  f
}

run <- function(data, flavour, build, build_lib) {
  out <- system2(rscript, c("bench/train_one.R", data$file, epochs, flavour), stdout = TRUE, stderr = TRUE,
                 env = c(paste0("R_LIBS=", build_lib), paste0("MRVI_BENCH_THREADS=", threads)))
  v <- read_result(out)
  cat(sprintf("%-9s %-9s %-22s %s\n  %s\n", data$kind, flavour, build, grep("^RESULT", out, value = TRUE),
              grep("^PROFILE", out, value = TRUE)))
  data.frame(data = data$kind, flavour = flavour, build = build, cells = as.integer(v$cells),
             genes = as.integer(v$genes), nonzero_pct = as.numeric(v$nonzero_pct), epochs = as.integer(v$epochs),
             threads = as.integer(v$threads), cells_per_s = as.numeric(v$cells_per_s),
             epoch_s = as.numeric(v$epoch_s), peak_rss_mb = as.numeric(v$peak_rss_mb))
}

cpu <- cpu_info()
cat("CPU:", cpu$model, "|", cpu$cores, "cores | vector extensions:", cpu$extensions, "| threads per fit:", threads, "\n")
# the checkout's commit, "+changes" when its package code differs from it (the build
# measured is the one installed in R_LIBS: install the checkout first)
current <- paste0("current ", git("rev-parse", "--short", "HEAD"),
                  if (length(git("status", "--porcelain", "--untracked-files=no", "--", "R", "src", "DESCRIPTION"))) "+changes")
base_lib <- baseline_library(baseline)
base_name <- paste("baseline", if (nzchar(Sys.getenv("MRVI_BASELINE_LIB"))) Sys.getenv("MRVI_BASELINE_LIB") else baseline)
datasets <- lapply(c("realistic", "make_data"), function(k) list(kind = k, file = make_data(k)))
res <- do.call(rbind, lapply(datasets, function(d) do.call(rbind, lapply(c("linear", "attention"), function(fl) {
  pair <- rbind(run(d, fl, current, lib), run(d, fl, base_name, base_lib))
  pair$ratio_to_baseline <- round(pair$cells_per_s / pair$cells_per_s[2], 2)
  pair$rss_ratio_to_baseline <- round(pair$peak_rss_mb / pair$peak_rss_mb[2], 2)
  pair
}))))
res$cpu <- cpu$model
res$vector_extensions <- cpu$extensions
res$omp_wait_policy <- Sys.getenv("OMP_WAIT_POLICY", "unset")
print(res[, c("data", "flavour", "build", "cells", "nonzero_pct", "threads", "cells_per_s", "epoch_s",
              "peak_rss_mb", "ratio_to_baseline", "rss_ratio_to_baseline")], row.names = FALSE)
write.csv(res, "bench/results/train_throughput.csv", row.names = FALSE)
