# Streamed sample distances at scale (issue: distances per cell group, streamed).
#   Rscript bench/distances.R [N_CELLS N_SAMPLES N_GROUPS MC_SAMPLES [SPACE]] ...
# Without arguments: 100k cells x 200 samples x 10 groups, then 1M x 1,000 x 20
# (posterior means, mc_samples = 0). SPACE: "expression" (sampleDistances()'s
# default since session 22) or "latent". The routine needs only u (posterior mean and
# sd per cell) and the sample-effect parameters, so the fit is synthetic
# (bench/helpers.R: a model with S samples trained for one epoch on small data,
# whose cells are then replaced by N cells with u ~ N(0, I)). Each configuration
# runs in its own process; peak RSS is that process's VmHWM; the CPU model is
# printed and kept. Baseline in the same run: the same group means from libtorch
# tensor operations (cdist + index_add, as on a GPU), at the first size.
args <- commandArgs(trailingOnly = TRUE)
source("bench/helpers.R")
cpu <- cpu_info()
cat("CPU:", cpu$model, "|", cpu$cores, "cores | vector extensions:", cpu$extensions, "\n")

one <- function(n, S, G, mc, tensor = FALSE, space = "expression") {
  res <- run_measurement(sprintf('
    set.seed(1)
    fit <- synthetic_fit(%d, %d)
    fit@cell_data$group <- factor(sprintf("g%%02d", sample.int(%d, %d, replace = TRUE)))
    m <- measure(if (%s) {
      own <- as.integer(fit@cell_data$sample) - 1L
      mrvi:::mrvi_group_tensor_distances(mrvi:::native_model(fit), fit@u_mean, fit@u_sd, %d, own,
                                         as.integer(fit@cell_data$group) - 1L, %d, 1024L)
    } else sampleDistances(fit, groups = "group", mc_samples = %d, space = "%s"))
    result(cells = %d, samples = %d, groups = %d, mc = %d, tensor = "%s", space = "%s", seconds = round(m$seconds, 1),
           cells_per_s = round(%d / m$seconds), peak_rss_mb = round(m$peak), rss_before_mb = round(m$before))
  ', n, S, G, n, tensor, n, G, mc, space, n, S, G, mc, tensor, if (tensor) "latent" else space, n))
  cat("RESULT", paste0(names(res), "=", unlist(res)), "\n")
  as.data.frame(res)
}

configs <- if (length(args) >= 4) list(as.numeric(args[1:4])) else
  list(c(1e5, 200, 10, 0), c(1e6, 1000, 20, 0))
space <- if (length(args) >= 5) args[5] else "expression"
res <- do.call(rbind, lapply(configs, function(x) one(x[1], x[2], x[3], x[4], space = space)))
if (length(args) < 4) res <- rbind(res, one(1e5, 200, 10, 0, tensor = TRUE))
res$cpu <- cpu$model
dir.create("bench/results", showWarnings = FALSE, recursive = TRUE)
print(res)
if (length(args) < 4) write.csv(res, "bench/results/distances.csv", row.names = FALSE)
