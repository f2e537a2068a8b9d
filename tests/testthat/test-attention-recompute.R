# The default model (attention flavour) recomputed in plain R from a fit's
# weights (helper-recompute.R), against what the package returns: z under every
# sample, the decoded expression under another sample and batch, one cell's
# sample distances in both spaces, and the encoder's posterior of u. Each fit is
# also checked with the parts that start at zero (direct paths, the samples'
# hidden terms, the continuous embedding) enlarged, so that every part moves
# the outputs by O(1): dropping any of them moves them by 1e-3 to 7, at least
# four orders above the agreement (float32 rounding).

expect_close <- function(pkg, ours, tolerance = 1e-5, info = NULL) {
  expect_lt(max(abs(as.vector(pkg) - as.vector(ours))) / max(abs(ours)), tolerance, label = info)
}

check_recomputed <- function(fit, counts, label) {
  w <- read_safetensors(fit@weights)
  cells <- c(1, 50, 123)
  own <- match(as.character(fit@cell_data$sample[cells]), fit@samples)
  z <- rc_z_all(fit, cells, w)
  expect_close(counterfactualLatent(fit, cells = cells, use_mean = TRUE), z, info = paste(label, "z"))
  expect_close(mrviLatent(fit, which = "z")[cells, ], t(sapply(seq_along(cells), function(i) z[i, own[i], ])),
               info = paste(label, "own z"))
  factors <- fit@config$nuisance$factors
  if (!length(factors)) factors <- list(batch = fit@batches)
  for (smp in fit@samples[c(1, length(fit@samples))]) {
    for (k in seq_along(factors)) {
      b <- stats::setNames(list(factors[[k]][length(factors[[k]])]), names(factors)[k])
      pkg <- counterfactualExpression(fit, cells, sample = smp, batch = if (length(factors) == 1) b[[1]] else b)
      ours <- rc_expression(fit, cells, smp, b, w)
      expect_close(pkg, ours, info = paste(label, "expression", smp, names(b)))
      kept <- ours > 1e-30
      expect_close(log(pkg[kept]), log(ours[kept]), info = paste(label, "log expression", smp, names(b)))
    }
  }
  d <- sampleDistances(fit, cells = cells, mc_samples = 0)
  dl <- sampleDistances(fit, cells = cells, mc_samples = 0, space = "latent")
  for (i in seq_along(cells)) {
    expect_close(d[i, , ], rc_distance(fit, cells[i], w = w), info = paste(label, "expression distances"))
    expect_close(dl[i, , ], rc_distance(fit, cells[i], "latent", w = w), info = paste(label, "latent distances"))
  }
  expect_close(fit@u_mean[cells, ], rc_u_mean(fit, counts, cells, w), info = paste(label, "u mean"))
  expect_close(fit@u_sd[cells, ], rc_u_sd(fit, counts, cells, w), info = paste(label, "u sd"))
}

test_that("the attention flavour's z, expression, distances and encoder are the model recomputed in R", {
  sim <- mrvi:::simulate_counts(n_cells = 300, n_genes = 40, n_samples = 4, n_sites = 2, seed = 8)
  fit <- mrvi(sim$counts, sim$sample, batch = sim$site, max_epochs = 5, n_threads = 1, seed = fit_seed(1), verbose = FALSE)
  check_recomputed(fit, sim$counts, "one batch")
  check_recomputed(rc_inflate(fit), sim$counts, "one batch, enlarged")
  # two categorical covariates and a continuous one (decoder context and d_x)
  set.seed(3)
  nuisance <- data.frame(site = sim$site, chem = sample(c("v2", "v3", "v3.1"), ncol(sim$counts), replace = TRUE))
  fit_c <- mrvi(sim$counts, sim$sample, batch = nuisance,
                continuous_covariates = data.frame(mito = runif(ncol(sim$counts), 0, 0.2)),
                max_epochs = 5, n_threads = 1, seed = fit_seed(1), verbose = FALSE)
  check_recomputed(fit_c, sim$counts, "two factors and a continuous covariate")
  check_recomputed(rc_inflate(fit_c), sim$counts, "two factors and a continuous covariate, enlarged")
})
