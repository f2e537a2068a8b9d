# Counterfactual analyses at scale (issue: counterfactual analyses).
#   Rscript bench/counterfactual.R
# 1. differentialExpression() on a fit of 20k cells x 2,000 genes x 32 samples x
#    2 sites (bench/make_data.R; linear flavour, 30 epochs), covariates: a binary
#    and a numeric per-sample covariate. Tests for all cells; then log fold
#    changes (lfc = TRUE, 50 posterior draws) for 1,000 cells.
#    Baseline in the same run: lm() per cell in R on the same counterfactual z
#    (first 300 cells, extrapolated; F statistics compared).
# 2. differentialAbundance() for 100k cells x 32 samples (bench/helpers.R:
#    u ~ N(0, I), L = 10) with the default reference of at most
#    5,000 cells per sample. Baseline: the same log densities in vectorised R
#    for the first 200 cells, extrapolated.
# Each measurement runs in its own process; peak RSS is that process's VmHWM.
source("bench/helpers.R")
lib <- Sys.getenv("R_LIBS", file.path(getwd(), ".Rlib"))
work <- file.path(tempdir(), "mrvi-bench")
dir.create(work, showWarnings = FALSE)
data_file <- file.path(work, "d20k.rds")
fit_file <- file.path(work, "fit20k.rds")
if (!file.exists(data_file)) {
  system2(file.path(R.home("bin"), "Rscript"), c("bench/make_data.R", 20000, 2000, 32, 2, data_file), env = paste0("R_LIBS=", lib))
}
invisible(run_measurement(sprintf('
  d <- readRDS("%s")
  fit <- mrvi(d$counts, sample = d$sample, batch = d$site, max_epochs = 30, seed = 1, verbose = FALSE)
  saveRDS(fit, "%s")
  result(epochs = nrow(fit@history))', data_file, fit_file)))

covariates <- sprintf('
  set.seed(3)
  S <- length(fit@samples)
  cov <- data.frame(sample = fit@samples, group = rep(c("a", "b"), length.out = S), dose = rnorm(S))')

de_tests <- run_measurement(sprintf('
  fit <- readRDS("%s")
  %s
  invisible(mrvi:::native_model(fit))
  m <- measure(differentialExpression(fit, cov))
  de <- m$value
  secs <- m$seconds
  # baseline: lm() + anova() per cell on the same counterfactual z
  k <- 300
  t1 <- proc.time()[["elapsed"]]
  z <- counterfactualLatent(fit, cells = 1:k)
  X <- de@metadata$design
  f_r <- vapply(1:k, function(i) {
    rss_full <- sum(resid(lm(z[i, , ] ~ X - 1))^2)
    rss_reduced <- sum(resid(lm(z[i, , ] ~ X[, -2] - 1))^2)
    (rss_reduced - rss_full) / (rss_full / (S - ncol(X)))
  }, numeric(1))
  r_secs <- (proc.time()[["elapsed"]] - t1) / k * nrow(fit@u_mean)
  # lm() fits the plain F test on z at the posterior mean (the timed call uses the
  # defaults: posterior draws and the noise floor)
  plain <- differentialExpression(fit, cov, cells = 1:k, mc_samples = 0, normalize = FALSE)
  stopifnot(isTRUE(all.equal(f_r, plain$statistic[plain$covariate == "group"], tolerance = 1e-5)))
  result(task = "DE_tests", cells = nrow(fit@u_mean), samples = S, genes = length(fit@genes),
         draws = eval(formals(differentialExpression)$mc_samples),
         seconds = round(secs, 2), cells_per_s = round(nrow(fit@u_mean) / secs), peak_rss_mb = round(m$peak),
         rss_before_mb = round(m$before), baseline_seconds = round(r_secs, 1), speedup = round(r_secs / secs, 1))',
  fit_file, covariates))

de_lfc <- run_measurement(sprintf('
  fit <- readRDS("%s")
  %s
  invisible(mrvi:::native_model(fit))
  m <- measure(differentialExpression(fit, cov, cells = 1:1000, mc_samples = 50, lfc = TRUE))
  result(task = "DE_lfc", cells = 1000, samples = S, genes = length(fit@genes), draws = 50,
         seconds = round(m$seconds, 2), cells_per_s = round(1000 / m$seconds), peak_rss_mb = round(m$peak),
         rss_before_mb = round(m$before), baseline_seconds = NA, speedup = NA)', fit_file, covariates))

da <- run_measurement('
  set.seed(1)
  n <- 1e5
  S <- 32
  fit <- synthetic_fit(n, S, sd = function(k) exp(rnorm(k, -1, 0.2)))
  L <- ncol(fit@u_mean)
  y <- setNames(rep(c("a", "b"), length.out = S), fit@samples)
  m <- measure(differentialAbundance(fit, y))
  secs <- m$seconds
  # baseline: log q_s(u) for 200 cells in vectorised R, same reference cells
  k <- 200
  t1 <- proc.time()[["elapsed"]]
  ref <- mrvi:::reference_cells(fit, 5000, 1)
  mu <- fit@u_mean[ref$cells, ]
  sd <- fit@u_sd[ref$cells, ]
  logq <- t(vapply(1:k, function(i) {
    ld <- rowSums(dnorm(matrix(fit@u_mean[i, ], nrow(mu), L, byrow = TRUE), mu, sd, log = TRUE))
    ld[ref$cells == i] <- -Inf
    vapply(seq_len(S), function(s) mrvi:::log_mean_exp(matrix(ld[ref$sample == s], 1)), numeric(1))
  }, numeric(S)))
  r_secs <- (proc.time()[["elapsed"]] - t1) / k * n
  ours <- mrvi:::sample_log_densities(fit, 1:k, 5000, 1)
  stopifnot(isTRUE(all.equal(ours, logq, tolerance = 1e-6, check.attributes = FALSE)))
  result(task = "DA", cells = n, samples = S, genes = NA, draws = 0, seconds = round(secs, 2),
         cells_per_s = round(n / secs), peak_rss_mb = round(m$peak), rss_before_mb = round(m$before),
         baseline_seconds = round(r_secs, 1), speedup = round(r_secs / secs, 1))')

out <- do.call(rbind, lapply(list(de_tests, de_lfc, da), as.data.frame))
print(out)
dir.create("bench/results", showWarnings = FALSE, recursive = TRUE)
utils::write.csv(out, "bench/results/counterfactual.csv", row.names = FALSE)
