# One posterior module draws u for every function (src/rust/mrvi-core/src/posterior.rs):
# draw m of cell i under seed s depends on (s, i, m) alone.
draws_fit <- local({
  cache <- NULL
  function() {
    if (is.null(cache)) {
      sim <- mrvi:::example_counts()
      cache <<- mrvi(sim$counts, sample = sim$sample, flavour = "linear", max_epochs = 3, seed = 4,
                     n_threads = 1, verbose = FALSE)
    }
    cache
  }
})

test_that("one seed reproduces the draws and the fit's seed is the default", {
  fit <- draws_fit()
  a <- mrviLatent(fit, use_mean = FALSE, seed = 11)
  expect_identical(a, mrviLatent(fit, use_mean = FALSE, seed = 11))
  expect_false(identical(a, mrviLatent(fit, use_mean = FALSE, seed = 12)))
  expect_identical(mrviLatent(fit, use_mean = FALSE), mrviLatent(fit, use_mean = FALSE, seed = fit@config$seed))
  expect_identical(dimnames(a), dimnames(fit@u_mean))
  z <- counterfactualLatent(fit, cells = 1:6, mc_samples = 2, seed = 11)
  expect_identical(z, counterfactualLatent(fit, cells = 1:6, mc_samples = 2, seed = 11))
  expect_identical(counterfactualLatent(fit, cells = 1:6, mc_samples = 2),
                   counterfactualLatent(fit, cells = 1:6, mc_samples = 2, seed = fit@config$seed))
  genes <- sampleSplitGenes(fit, fit@samples[1:2], cells = 1:40, mc_samples = 3, seed = 11)
  expect_identical(genes, sampleSplitGenes(fit, fit@samples[1:2], cells = 1:40, mc_samples = 3, seed = 11))
  expect_false(identical(genes$lfc, sampleSplitGenes(fit, fit@samples[1:2], cells = 1:40, mc_samples = 3, seed = 12)$lfc))
  expect_error(mrviLatent(fit, use_mean = FALSE, seed = -1), "`seed`")
  expect_error(counterfactualLatent(fit, cells = 1, seed = 1.5), "`seed`")
})

test_that("a cell's draws do not depend on the other cells or the chunk size", {
  fit <- draws_fit()
  all <- counterfactualLatent(fit, cells = 1:300, mc_samples = 3, seed = 5)
  some <- counterfactualLatent(fit, cells = c(250, 7, 31), mc_samples = 3, seed = 5)
  expect_identical(unname(some), unname(all[c(250, 7, 31), , , , drop = FALSE]))
  u <- mrviLatent(fit, use_mean = FALSE, seed = 5)
  # the first draw of counterfactualLatent() is mrviLatent()'s draw (z under the own sample)
  own <- as.integer(fit@cell_data$sample)
  z_own <- t(vapply(1:300, function(i) all[i, own[i], , 1], numeric(dim(all)[3])))
  expect_equal(unname(z_own), unname(mrviLatent(fit, which = "z", use_mean = FALSE, seed = 5)), tolerance = 1e-5)
  d1 <- sampleDistances(fit, cells = c(250, 7, 31), mc_samples = 3, seed = 5, chunk_size = 1)
  d2 <- sampleDistances(fit, cells = 1:300, mc_samples = 3, seed = 5)[c(250, 7, 31), , ]
  expect_identical(d1, d2)
  # and they are the draws of counterfactualLatent(): D(n) by brute force from them
  brute <- apply(some, c(1, 4), function(zc) as.matrix(stats::dist(zc)))  # [S * S, cells, draws]
  expect_equal(as.vector(aperm(apply(brute, 1:2, mean), c(2, 1))), as.vector(d1), tolerance = 1e-5)
  cov <- data.frame(sample = fit@samples, g = c("a", "a", "b", "b"))
  de1 <- differentialExpression(fit, cov, cells = c(250, 7, 31), mc_samples = 2, lfc = TRUE, chunk_size = 1, seed = 5)
  de2 <- differentialExpression(fit, cov, cells = 1:300, mc_samples = 2, lfc = TRUE, chunk_size = 128, seed = 5)
  expect_equal(S4Vectors::metadata(de1)$lfc$gb, S4Vectors::metadata(de2)$lfc$gb[c(250, 7, 31), ], tolerance = 1e-4)
})

test_that("draws have the posterior's mean and standard deviation", {
  # (u - mean) / sd over 300 cells x 10 dimensions: mean and sd within 0.1 of 0
  # and 1 (~5 standard errors); seeds 1..5 gave |mean| <= 0.024, |sd - 1| <= 0.015
  fit <- draws_fit()
  for (s in 1:5) {
    eps <- (mrviLatent(fit, use_mean = FALSE, seed = s) - fit@u_mean) / fit@u_sd
    expect_lt(abs(mean(eps)), 0.1)
    expect_lt(abs(stats::sd(eps) - 1), 0.1)
  }
})
