# Per-cell guided tests at scale (issue: guided analysis): 100k cells x 64 samples.
#   Rscript bench/association.R [N_CELLS N_SAMPLES]
# Synthetic fit (bench/helpers.R: a model with S samples, cells replaced by
# N cells with u ~ N(0, I)); a balanced binary covariate. Runs in its own process;
# peak RSS is its VmHWM. Baseline in the same run: R computing the same tests for
# the first 500 cells from sampleDistances(cells =) and ks.test(), extrapolated.
args <- commandArgs(trailingOnly = TRUE)
n <- if (length(args)) as.numeric(args[1]) else 1e5
S <- if (length(args) > 1) as.integer(args[2]) else 64L
suppressMessages(library(mrvi))
source("bench/helpers.R")
set.seed(1)
fit <- synthetic_fit(n, S)
y <- setNames(rep(c("a", "b"), length.out = S), fit@samples)
m <- measure(cellAssociation(fit, y))
res <- m$value
secs <- m$seconds
# baseline: the same tests in R for 500 cells
t1 <- proc.time()[["elapsed"]]
d <- sampleDistances(fit, cells = 1:500, mc_samples = 0)
same <- outer(y, y, "==")
up <- upper.tri(same)
p_r <- vapply(1:500, function(i) suppressWarnings(
  ks.test(d[i, , ][up & same], d[i, , ][up & !same], alternative = "greater")$p.value), numeric(1))
r_secs <- (proc.time()[["elapsed"]] - t1) / 500 * n
stopifnot(isTRUE(all.equal(p_r, res$p_value[1:500], tolerance = 1e-5)))
out <- data.frame(cells = n, samples = S, pairs = S * (S - 1) / 2, seconds = round(secs, 1),
                  cells_per_s = round(n / secs), peak_rss_mb = round(m$peak), rss_before_mb = round(m$before),
                  baseline_R_seconds_extrapolated = round(r_secs), speedup = round(r_secs / secs, 1),
                  threads = mrviBackend()$threads)
print(out)
dir.create("bench/results", showWarnings = FALSE, recursive = TRUE)
if (!length(args)) write.csv(out, "bench/results/association.csv", row.names = FALSE)
