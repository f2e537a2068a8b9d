# Every function that takes fitted samples reads them by one rule: names are
# names, numbers are positions in fit@samples. With sample names that look like
# numbers, the same 2 used to pick "10" in counterfactualLatent() and "2" in
# counterfactualExpression(), and sampleSplitGenes() refused numbers.
local({
  m <- small_counts(n_cells = 40)
  ids <- rep(c("10", "9", "1", "2"), length.out = 40)
  fit <- mrvi(m, ids, max_epochs = 1, n_threads = 1, seed = 1, verbose = FALSE)

  test_that("a number is a position in fit@samples everywhere", {
    expect_identical(fit@samples, c("1", "10", "2", "9"))
    expect_identical(dimnames(counterfactualLatent(fit, cells = 1, samples = 2))[[2]], "10")
    expect_identical(counterfactualExpression(fit, cells = 1:2, sample = 2),
                     counterfactualExpression(fit, cells = 1:2, sample = "10"))
    expect_identical(counterfactualExpression(fit, cells = 1:2, sample = c(4, 2)),
                     counterfactualExpression(fit, cells = 1:2, sample = c("9", "10")))
    expect_identical(counterfactualExpression(fit, cells = 1, sample = factor("2")),
                     counterfactualExpression(fit, cells = 1, sample = 3))
    g <- sampleSplitGenes(fit, 1:2, cells = 1:10, mc_samples = 0)
    expect_identical(attr(g, "samples_a"), c("1", "10"))
    expect_identical(attr(g, "samples_b"), c("2", "9"))
    expect_identical(attr(sampleSplitGenes(fit, 1, 4, cells = 1:10, mc_samples = 0), "samples_b"), "9")
  })

  test_that("positions out of range, fractions and unknown names are refused by name", {
    expect_error(counterfactualExpression(fit, cells = 1, sample = 5), "`sample` must be .*1..4", class = "mrvi_error")
    expect_error(counterfactualExpression(fit, cells = 1, sample = 1.5), "`sample` must be", class = "mrvi_error")
    expect_error(counterfactualExpression(fit, cells = 1:3, sample = 1:2), "one value or one per cell", class = "mrvi_error")
    expect_error(counterfactualExpression(fit, cells = 1, sample = "zz"), "`sample` has value.*not fitted on", class = "mrvi_error")
    expect_error(sampleSplitGenes(fit, 7), "`samples_a`", class = "mrvi_error")
    expect_error(sampleSplitGenes(fit, 1, 9), "`samples_b`", class = "mrvi_error")
    # cutree()'s clusters (numbers named by sample) are not positions
    clusters <- stats::setNames(c(1L, 1L, 2L, 1L), fit@samples)
    expect_error(sampleSplitGenes(fit, clusters), "like `cutree\\(\\)`'s clusters.*== 1", class = "mrvi_error")
    # which() on a vector named by sample: positions, each named by its own sample
    picked <- which(stats::setNames(c(TRUE, FALSE, TRUE, FALSE), fit@samples))
    expect_identical(attr(sampleSplitGenes(fit, picked, cells = 1:10, mc_samples = 0), "samples_a"), fit@samples[c(1, 3)])
    expect_error(counterfactualLatent(fit, cells = 1, samples = "zz"), "`samples` has value", class = "mrvi_error")
  })
})
