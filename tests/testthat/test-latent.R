# R/latent.R: mrviLatent() and counterfactualLatent().

test_that("mrviLatent on new cells matches the training cells' latents", {
  nf <- nested_fit()
  fit <- nf$fit
  sim <- nf$sim
  cells <- 1:50
  u_new <- mrviLatent(fit, x = sim$counts[, cells], sample = sim$sample[cells])
  expect_equal(u_new, mrviLatent(fit)[cells, ], tolerance = 1e-5)
  expect_error(mrviLatent(fit, x = sim$counts[, cells]), "`sample` is required")
  expect_error(mrviLatent(fit, x = sim$counts[, cells], sample = rep("zz", 50)),
               "`sample` has sample.*not fitted")
})

test_that("new cells of a single sample are read (mrviData(min_samples = 1))", {
  f <- small_fit()
  fit <- f$fit
  one <- which(f$sim$sample == fit@samples[1])[1:20]
  u <- mrviLatent(f$fit, x = f$sim$counts[, one], sample = rep(fit@samples[1], 20))
  expect_equal(u, mrviLatent(fit)[colnames(f$sim$counts)[one], ], tolerance = 1e-5)
  expect_error(mrviData(f$sim$counts[, one], sample = rep("A", 20)), "at least 2 samples", class = "mrvi_error")
  expect_s3_class(mrviData(f$sim$counts[, one], sample = rep("A", 20), min_samples = 1), "mrvi_data")
  expect_error(mrviData(f$sim$counts, f$sim$sample, min_samples = 0), "`min_samples`", class = "mrvi_error")
})

test_that("counterfactual z is u + A_s u + a_s, recomputed in R from the weights", {
  fit <- small_fit()$fit
  w <- read_safetensors(fit@weights)
  cells <- c(2, 77, 301)
  z <- counterfactualLatent(fit, cells = cells)
  expect_equal(dimnames(z), list(rownames(fit@u_mean)[cells], fit@samples, paste0("z", 1:10)))
  for (k in seq_along(cells)) {
    u <- fit@u_mean[cells[k], ]
    for (s in seq_along(fit@samples)) {
      expect_equal(unname(z[k, s, ]), as.vector(u + w[["sample_effect.A"]][s, , ] %*% u + w[["sample_effect.a"]][s, ]),
                   tolerance = 1e-5)
    }
  }
  # mrviLatent's z is the counterfactual under the cell's own sample
  own <- as.integer(fit@cell_data$sample[cells])
  zl <- mrviLatent(fit, which = "z")
  for (k in seq_along(cells)) expect_equal(unname(z[k, own[k], ]), unname(zl[cells[k], ]), tolerance = 1e-6)
})

test_that("posterior draws of u are mean + sd * N(0, 1), and counterfactual draws average to the mean's", {
  fit <- small_fit()$fit
  u <- mrviLatent(fit, use_mean = FALSE)
  std <- (u - fit@u_mean) / fit@u_sd
  # 4,000 standard normal values: mean within 5 standard errors, sd within 8%
  # (seed = 1:5, the core's draws, gave at most 0.19 of the first bound and
  # |sd - 1| <= 0.022)
  expect_lt(abs(mean(std)), 5 / sqrt(length(std)))
  expect_lt(abs(sd(std) - 1), 0.08)
  # the linear flavour's z is affine in u: the mean over draws converges to z at
  # the posterior mean (every entry within 5 Monte Carlo standard errors)
  M <- 200
  draws <- counterfactualLatent(fit, cells = 1:3, mc_samples = M)
  expect_equal(dim(draws), c(3L, 5L, 10L, M))
  at_mean <- counterfactualLatent(fit, cells = 1:3)
  se <- apply(draws, 1:3, sd) / sqrt(M)
  expect_lt(max(abs(apply(draws, 1:3, mean) - at_mean) / se), 5)
})

test_that("counterfactualLatent checks the size before allocating", {
  fit <- small_fit()$fit
  z <- counterfactualLatent(fit, cells = 1:3, samples = fit@samples[2:3])
  expect_equal(dim(z), c(3L, 2L, 10L))
  own <- fit@cell_data$sample[1:3]
  zz <- counterfactualLatent(fit, cells = 1:3)
  for (i in 1:3) expect_equal(unname(zz[i, as.character(own[i]), ]), unname(mrviLatent(fit, which = "z")[i, ]), tolerance = 1e-6)
  expect_equal(dim(counterfactualLatent(fit, cells = 1:2, mc_samples = 3)), c(2L, 5L, 10L, 3L))
  old <- options(mrvi.max_bytes = 1000)
  on.exit(options(old))
  expect_error(counterfactualLatent(fit), "would allocate.*`cells`")
  expect_error(sampleDistances(fit, cells = 1:400), "would allocate")
})

# One posterior module draws u for every function (src/rust/mrvi-core/src/posterior.rs):
# draw m of cell i under seed s depends on (s, i, m) alone.
test_that("one seed reproduces the draws and the fit's seed is the default", {
  fit <- small_fit()$fit
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
  fit <- small_fit()$fit
  all <- counterfactualLatent(fit, cells = 1:400, mc_samples = 3, seed = 5)
  some <- counterfactualLatent(fit, cells = c(350, 7, 31), mc_samples = 3, seed = 5)
  expect_identical(unname(some), unname(all[c(350, 7, 31), , , , drop = FALSE]))
  u <- mrviLatent(fit, use_mean = FALSE, seed = 5)
  # the first draw of counterfactualLatent() is mrviLatent()'s draw (z under the own sample)
  own <- as.integer(fit@cell_data$sample)
  z_own <- t(vapply(1:400, function(i) all[i, own[i], , 1], numeric(dim(all)[3])))
  expect_equal(unname(z_own), unname(mrviLatent(fit, which = "z", use_mean = FALSE, seed = 5)), tolerance = 1e-5)
  d1 <- sampleDistances(fit, cells = c(350, 7, 31), mc_samples = 3, seed = 5, chunk_size = 1, space = "latent")
  d2 <- sampleDistances(fit, cells = 1:400, mc_samples = 3, seed = 5, space = "latent")[c(350, 7, 31), , ]
  expect_identical(d1, d2)
  # and they are the draws of counterfactualLatent(): D(n) by brute force from them
  brute <- apply(some, c(1, 4), function(zc) as.matrix(stats::dist(zc)))  # [S * S, cells, draws]
  expect_equal(as.vector(aperm(apply(brute, 1:2, mean), c(2, 1))), as.vector(d1), tolerance = 1e-5)
  cov <- data.frame(sample = fit@samples, g = c("a", "a", "b", "b", "b"))
  de1 <- differentialExpression(fit, cov, cells = c(350, 7, 31), mc_samples = 3, lfc = TRUE, chunk_size = 1, seed = 5)
  de2 <- differentialExpression(fit, cov, cells = 1:400, mc_samples = 3, lfc = TRUE, chunk_size = 128, seed = 5)
  expect_equal(de1$statistic, de2$statistic[c(350, 7, 31)])
  expect_equal(S4Vectors::metadata(de1)$lfc$gb, S4Vectors::metadata(de2)$lfc$gb[c(350, 7, 31), ], tolerance = 1e-4)
})

test_that("new cells must carry every fitted gene; genes the fit lacks are left out", {
  f <- small_fit()
  fit <- f$fit
  cells <- 1:20
  x <- f$sim$counts[, cells]
  s <- f$sim$sample[cells]
  # a missing gene is not a gene without counts (as in mrviAddSamples())
  expect_error(mrviLatent(fit, x = x[1:10, ], sample = s), "`x` must have the fitted genes.*50 fitted genes missing",
               class = "mrvi_error")
  extra <- rbind(x, other = 1)
  expect_identical(mrviLatent(fit, x = extra, sample = s), mrviLatent(fit, x = x, sample = s))
})

test_that("new cells without counts on the fitted genes get NA rows, in place, with a warning", {
  f <- small_fit()
  fit <- f$fit
  cells <- 1:20
  x <- f$sim$counts[, cells]
  s <- f$sim$sample[cells]
  full <- mrviLatent(fit, x = x, sample = s, use_mean = FALSE)
  x[, c(1, 5)] <- 0
  # cell 9's counts are all on a gene the fit does not have
  x <- rbind(x, other = c(rep(0, 8), 7, rep(0, 11)))
  x[seq_along(fit@genes), 9] <- 0
  expect_warning(u <- mrviLatent(fit, x = x, sample = s, use_mean = FALSE),
                 "3 cells of `x` have no counts on the fitted genes", class = "mrvi_empty_cells")
  expect_identical(rownames(u), colnames(x))
  expect_true(all(is.na(u[c(1, 5, 9), ])))
  # the other cells' draws are numbered by their position in x, as without the empty cells
  expect_equal(u[-c(1, 5, 9), ], full[-c(1, 5, 9), ], tolerance = 1e-6)
  z <- suppressWarnings(mrviLatent(fit, x = x, sample = s, which = "z"))
  expect_equal(dim(z), c(20L, ncol(fit@u_mean)))
  expect_equal(which(is.na(z[, 1])), c(1, 5, 9), ignore_attr = TRUE)
  expect_false(anyNA(z[-c(1, 5, 9), ]))
  # no new cell with counts on the fitted genes: the warning names them all
  x2 <- x[, c(1, 5, 9)]
  expect_warning(u2 <- mrviLatent(fit, x = x2, sample = s[c(1, 5, 9)]), paste(colnames(x2), collapse = ".*"),
                 class = "mrvi_empty_cells")
  expect_true(all(is.na(u2)))
})

test_that("new cells are read from the assay the fit read, or the one given", {
  skip_if_not_installed("SingleCellExperiment")
  f <- small_fit()
  counts <- f$sim$counts
  other <- counts
  other@x <- other@x * 3  # e.g. counts before ambient correction: other numbers
  sce <- SingleCellExperiment::SingleCellExperiment(list(counts = other, raw = counts),
                                                    colData = data.frame(donor = f$sim$sample))
  fit <- suppressMessages(mrvi(sce, sample = "donor", assay = "raw", max_epochs = 2, verbose = FALSE,
                               flavour = "linear", seed = 3, n_threads = 1))
  expect_identical(fit@config$assay, "raw")
  cells <- 1:10
  own <- mrviLatent(fit)[colnames(counts)[cells], ]
  expect_equal(mrviLatent(fit, x = sce[, cells], sample = "donor"), own, tolerance = 1e-5)
  # another assay when asked for: the encoder sees other counts
  asked <- mrviLatent(fit, x = sce[, cells], sample = "donor", assay = "counts")
  expect_gt(max(abs(asked - own)), 1e-3)
  expect_error(mrviLatent(fit, assay = "raw"), "`assay` is for new cells", class = "mrvi_error")
  # an object without the fit's assay is refused, saying where the name came from
  expect_error(mrviLatent(fit, x = SingleCellExperiment::SingleCellExperiment(list(counts = counts[, cells])), sample = f$sim$sample[cells]),
               "no assay \"raw\", the one the fit's cells were read from", class = "mrvi_error")
  # an assay given by position is recorded by name: an object with its assays in another order reads the same one
  by_position <- suppressMessages(mrvi(sce, sample = "donor", assay = 2, max_epochs = 2, verbose = FALSE,
                                       flavour = "linear", seed = 3, n_threads = 1))
  expect_identical(by_position@config$assay, "raw")
  reordered <- SingleCellExperiment::SingleCellExperiment(list(raw = counts, other = other), colData = data.frame(donor = f$sim$sample))
  expect_equal(mrviLatent(by_position, x = reordered[, cells], sample = "donor"), mrviLatent(by_position)[colnames(counts)[cells], ],
               tolerance = 1e-5)
  skip_if_not_installed("SeuratObject")
  so <- suppressWarnings(SeuratObject::CreateSeuratObject(counts = other,
                                                          meta.data = data.frame(donor = f$sim$sample, row.names = colnames(counts))))
  so[["ALT"]] <- suppressWarnings(SeuratObject::CreateAssayObject(counts = counts))
  sfit <- suppressMessages(mrvi(so, sample = "donor", assay = "ALT", max_epochs = 2, verbose = FALSE,
                                flavour = "linear", seed = 3, n_threads = 1))
  expect_identical(sfit@config$seurat_assay, "ALT")
  expect_equal(mrviLatent(sfit, x = so[, cells], sample = "donor"), mrviLatent(sfit)[colnames(counts)[cells], ],
               tolerance = 1e-5)
  # a Seurat object without the fit's Seurat assay: refused, not read from its default assay
  plain <- suppressWarnings(SeuratObject::CreateSeuratObject(counts = other[, cells],
                                                             meta.data = data.frame(donor = f$sim$sample[cells], row.names = colnames(counts)[cells])))
  expect_error(mrviLatent(sfit, x = plain, sample = "donor"), "no assay \"ALT\"", class = "mrvi_error")
})
