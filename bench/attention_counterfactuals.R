# Counterfactual analyses of the attention flavour (the default), this build
# against a baseline build in the same run.
#   MRVI_BENCH_BASELINE_LIB=/path/to/baseline/library Rscript bench/attention_counterfactuals.R
# The baseline is a library with another build of mrvi installed (e.g. the commit
# before the closed-form sample effect, c624ba8^); without it only this build runs.
# Synthetic attention fit (bench/helpers.R: 64 samples, cells replaced by
# 20,000 cells with u ~ N(0, I), posterior sd 0.1), 1 thread (MRVI_BENCH_THREADS),
# each measurement in its own process (peak RSS is that process's VmHWM):
#   counterfactualLatent() for all cells (1.28M cell x sample pairs),
#   sampleDistances(groups = 10 groups) with its default 10 normalised draws,
#   differentialExpression() with its defaults (50 draws, noise floor) for 5,000 cells.
source("bench/helpers.R")
lib <- Sys.getenv("R_LIBS", file.path(getwd(), ".Rlib"))
baseline <- Sys.getenv("MRVI_BENCH_BASELINE_LIB")
threads <- as.integer(Sys.getenv("MRVI_BENCH_THREADS", "1"))
cpu <- cpu_info()
cat(sprintf("CPU: %s (%d cores; %s)\n", cpu$model, cpu$cores, cpu$extensions))

setup <- sprintf('
  options(mrvi.threads = %d)
  set.seed(1)
  fit <- synthetic_fit(20000, 64, flavour = "attention")
  fit@cell_data$group <- factor(sprintf("g%%02d", sample.int(10, 20000, replace = TRUE)))
  cov <- data.frame(sample = fit@samples, group = rep(c("a", "b"), length.out = 64), dose = rnorm(64))
  invisible(mrvi:::native_model(fit))', threads)
tasks <- list(
  counterfactual_latent = "counterfactualLatent(fit)",
  grouped_distances = 'sampleDistances(fit, groups = "group")',
  differential_expression = "differentialExpression(fit, cov, cells = 1:5000)"
)
cells <- c(counterfactual_latent = 20000, grouped_distances = 20000, differential_expression = 5000)

one <- function(task, build, build_lib) {
  res <- run_measurement(sprintf('%s
    m <- measure(%s)
    result(seconds = round(m$seconds, 2), peak_rss_mb = round(m$peak), rss_before_mb = round(m$before))',
    setup, tasks[[task]]), build_lib)
  data.frame(task = task, build = build, cells = cells[[task]], samples = 64, seconds = as.numeric(res$seconds),
             cells_per_s = round(cells[[task]] / as.numeric(res$seconds)), peak_rss_mb = as.numeric(res$peak_rss_mb),
             rss_before_mb = as.numeric(res$rss_before_mb), threads = as.integer(res$threads), cpu = cpu$model)
}

rows <- list()
for (task in names(tasks)) {
  rows[[length(rows) + 1]] <- one(task, "current", lib)
  if (nzchar(baseline)) rows[[length(rows) + 1]] <- one(task, "baseline", paste(baseline, lib, sep = ":"))
}
res <- do.call(rbind, rows)
if (nzchar(baseline)) {
  base <- res[res$build == "baseline", ]
  res$speedup <- ifelse(res$build == "current", round(base$seconds[match(res$task, base$task)] / res$seconds, 1), NA)
}
print(res[, setdiff(names(res), "cpu")], row.names = FALSE)
dir.create("bench/results", showWarnings = FALSE, recursive = TRUE)
write.csv(res, "bench/results/attention_counterfactuals.csv", row.names = FALSE)
