test_that("expression under the cell's own sample is the fitted mean, recomputed in R from the weights", {
  sim <- mrvi:::simulate_counts(n_cells = 300, n_genes = 40, n_samples = 4, n_sites = 2, seed = 8)
  fit <- mrvi(sim$counts, flavour = "linear", sim$sample, batch = sim$site, max_epochs = 10, verbose = FALSE)
  w <- read_safetensors(fit@weights)
  cells <- c(1, 50, 123)
  own <- as.character(fit@cell_data$sample[cells])
  e <- counterfactualExpression(fit, cells, sample = own)
  expect_identical(counterfactualExpression(fit, cells, sample = own, average = FALSE), e)  # (no averaging, as NULL)
  expect_equal(dim(e), c(40L, 3L))
  expect_equal(unname(colSums(e)), rep(1, 3), tolerance = 1e-6)
  for (k in seq_along(cells)) {
    s <- match(own[k], fit@samples)
    b <- as.integer(fit@cell_data$batch[cells[k]])
    u <- fit@u_mean[cells[k], ]
    z <- u + w[["sample_effect.A"]][s, , ] %*% u + w[["sample_effect.a"]][s, ]
    logits <- w[["decoder.C.weight"]] %*% z + w[["decoder.C_b"]][b, , ] %*% z + w[["decoder.c_b"]][b, ]
    rho <- exp(logits - max(logits)) / sum(exp(logits - max(logits)))
    expect_equal(unname(e[, k]), as.vector(rho), tolerance = 1e-5)
  }
  # another sample changes the expression; bad arguments name themselves
  other <- counterfactualExpression(fit, cells, sample = fit@samples[1], batch = fit@batches[2])
  expect_false(isTRUE(all.equal(other, e)))
  expect_error(counterfactualExpression(fit, cells, sample = "zz"), "`sample` has value")
  expect_error(counterfactualExpression(fit, cells, sample = own, batch = c("a", "b")), "`batch` must be one value")
})

test_that("a fit's one batch covariate, given as a column, answers to the column's name in `average`", {
  skip_if_not_installed("SingleCellExperiment")
  sim <- simulateNested(300, 40, n_samples = 4, seed = 2)
  fit <- mrvi(sim, sample = "sample", batch = "site", max_epochs = 2, n_threads = 1, verbose = FALSE)
  by_column <- counterfactualExpression(fit, 1:3, sample = 1, average = "site")
  expect_identical(by_column, counterfactualExpression(fit, 1:3, sample = 1, average = "batch"))
  expect_identical(by_column, counterfactualExpression(fit, 1:3, sample = 1, average = TRUE))
  expect_identical(counterfactualExpression(fit, 1:3, sample = 1, batch = list(site = "site2")),
                   counterfactualExpression(fit, 1:3, sample = 1, batch = "site2"))
})

test_that("a batch for a fit without one is refused as such, and cells may be a factor of names", {
  fit <- small_fit()$fit
  expect_error(counterfactualExpression(fit, 1:3, sample = fit@samples[1], batch = "plate2"),
               "`batch` must be `NULL`: the fit has no batch", class = "mrvi_error")
  cells <- rownames(fit@u_mean)[c(5, 2)]
  expect_identical(counterfactualExpression(fit, factor(cells), sample = fit@samples[1]),
                   counterfactualExpression(fit, cells, sample = fit@samples[1]))
})
