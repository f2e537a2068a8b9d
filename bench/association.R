# Per-cell guided tests at scale (issue: guided analysis): 100k cells x 64 samples.
#   Rscript bench/association.R [N_CELLS N_SAMPLES]
# Synthetic fit (bench/helpers.R: a model with S samples, cells replaced by
# N cells with u ~ N(0, I)); a balanced binary covariate. Runs in its own process;
# peak RSS is its VmHWM. Baseline in the same run: R computing the same tests for
# the first 500 cells from sampleDistances(cells =) and ks.test(), extrapolated.
# Both for the default (normalised distances, 10 draws) and raw posterior-mean distances.
args <- commandArgs(trailingOnly = TRUE)
n <- if (length(args)) as.numeric(args[1]) else 1e5
S <- if (length(args) > 1) as.integer(args[2]) else 64L
suppressMessages(library(mrvi))
source("bench/helpers.R")
set.seed(1)
fit <- synthetic_fit(n, S)
y <- setNames(rep(c("a", "b"), length.out = S), fit@samples)
same <- outer(y, y, "==")
up <- upper.tri(same)
# raw distances at the posterior mean, then the default (distances normalised by
# each cell's posterior noise, 10 draws); in this order, each peak RSS is its own
# (the process's high-water mark only grows)
configs <- list(raw = list(normalize = FALSE, mc_samples = 0),
                normalised = list(normalize = TRUE, mc_samples = 10))
rows <- lapply(names(configs), function(name) {
  cfg <- configs[[name]]
  m <- measure(cellAssociation(fit, y, normalize = cfg$normalize, mc_samples = cfg$mc_samples))
  # baseline: the same tests in R for 500 cells, extrapolated
  t1 <- proc.time()[["elapsed"]]
  d <- sampleDistances(fit, cells = 1:500, normalize = cfg$normalize, mc_samples = cfg$mc_samples)
  # (the KS statistic: the p-value is a permutation test's since 2026-12-05)
  ks_r <- vapply(1:500, function(i) suppressWarnings(
    ks.test(d[i, , ][up & same], d[i, , ][up & !same], alternative = "greater")$statistic), numeric(1))
  r_secs <- (proc.time()[["elapsed"]] - t1) / 500 * n
  stopifnot(isTRUE(all.equal(unname(ks_r), m$value$statistic[1:500], tolerance = 1e-5)))
  data.frame(distances = name, mc_samples = cfg$mc_samples, cells = n, samples = S,
             pairs = S * (S - 1) / 2, seconds = round(m$seconds, 1), cells_per_s = round(n / m$seconds),
             peak_rss_mb = round(m$peak), rss_before_mb = round(m$before),
             baseline_R_seconds_extrapolated = round(r_secs), speedup = round(r_secs / m$seconds, 1),
             threads = mrviBackend()$threads)
})
out <- do.call(rbind, rows)
print(out)
dir.create("bench/results", showWarnings = FALSE, recursive = TRUE)
if (!length(args)) write.csv(out, "bench/results/association.csv", row.names = FALSE)
