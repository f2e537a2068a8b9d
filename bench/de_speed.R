# differentialExpression() with its defaults (50 posterior draws, normalised
# tests), this build against a baseline build, alternating in one run.
#   MRVI_BASELINE_LIB=<library with the baseline mrvi> Rscript bench/de_speed.R [CELLS [ROUNDS]]
# The fit: the realistic training set (bench/helpers.R: 20,000 cells x 2,000
# genes x 32 samples in 2 sites), the default (attention) flavour, 15 epochs,
# saved once under MRVI_BENCH_DATA (default: a temporary folder). Covariates: a
# numeric and a two-level per-sample covariate. CELLS (default 5,000) cells are
# tested; each measurement runs in its own process (peak RSS is its VmHWM); the
# libraries alternate ROUNDS (default 2) times. The CPU model is printed and
# written into bench/results/de_speed.csv.
args <- commandArgs(trailingOnly = TRUE)
source("bench/helpers.R")
cells <- if (length(args) >= 1) as.integer(args[1]) else 5000L
rounds <- if (length(args) >= 2) as.integer(args[2]) else 2L
current <- Sys.getenv("R_LIBS", file.path(getwd(), ".Rlib"))
baseline <- Sys.getenv("MRVI_BASELINE_LIB")
if (!nzchar(baseline)) stop("Set MRVI_BASELINE_LIB to a library holding the baseline build of mrvi.")
cpu <- cpu_info()
cat("CPU:", cpu$model, "|", cpu$cores, "cores | vector extensions:", cpu$extensions, "\n")

dir <- Sys.getenv("MRVI_BENCH_DATA", file.path(tempdir(), "mrvi-bench"))
dir.create(dir, showWarnings = FALSE, recursive = TRUE)
fit_file <- file.path(dir, "de_speed_fit.rds")
if (!file.exists(fit_file)) {
  data_file <- realistic_data(20000, dir, lib = current)
  invisible(run_measurement(sprintf('
    d <- readRDS("%s")
    fit <- mrvi(d$counts, sample = d$sample, batch = d$site, max_epochs = 15, seed = 1, verbose = FALSE)
    saveRDS(fit, "%s")
    result(epochs = nrow(fit@history))', data_file, fit_file), lib = current))
}

one <- function(lib, build) {
  res <- run_measurement(sprintf('
    fit <- readRDS("%s")
    set.seed(2)
    S <- length(fit@samples)
    cov <- data.frame(sample = fit@samples, dose = rnorm(S), group = rep(c("a", "b"), length.out = S))
    invisible(mrvi:::native_model(fit))
    m <- measure(differentialExpression(fit, cov, cells = seq_len(%d)))
    result(seconds = round(m$seconds, 2), cells_per_s = round(%d / m$seconds), peak_rss_mb = round(m$peak))',
    fit_file, cells, cells), lib = lib)
  cat(build, paste0(names(res), "=", unlist(res)), "\n")
  data.frame(build = build, cells = cells, seconds = as.numeric(res$seconds),
             cells_per_s = as.numeric(res$cells_per_s), peak_rss_mb = as.numeric(res$peak_rss_mb),
             threads = as.numeric(res$threads))
}

res <- do.call(rbind, lapply(seq_len(rounds), function(r) rbind(one(baseline, "baseline"), one(current, "current"))))
res$ratio_to_baseline_median <- round(median(res$seconds[res$build == "baseline"]) / res$seconds, 2)
res$cpu <- cpu$model
print(res)
dir.create("bench/results", showWarnings = FALSE, recursive = TRUE)
write.csv(res, "bench/results/de_speed.csv", row.names = FALSE)
