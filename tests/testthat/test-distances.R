# D(n) by brute force in R from counterfactualLatent(): tolerance 1e-5 (float32 in Rust)
brute_force <- function(fit, cells) {
  z <- counterfactualLatent(fit, cells = cells)
  S <- dim(z)[2]
  out <- array(0, c(length(cells), S, S))
  for (i in seq_along(cells)) out[i, , ] <- as.matrix(dist(z[i, , ]))
  out
}

test_that("per-cell and group distances equal a brute-force computation", {
  f <- small_fit()
  fit <- f$fit
  cells <- c(1, 17, 250)
  d <- sampleDistances(fit, cells = cells, mc_samples = 0, space = "latent")
  expect_equal(dim(d), c(3L, 5L, 5L))
  expect_equal(dimnames(d)[[2]], fit@samples)
  expect_equal(unname(d), brute_force(fit, cells), tolerance = 1e-5)
  g <- sampleDistances(fit, groups = "labels", mc_samples = 0, min_cells = 0, space = "latent")
  type <- fit@cell_data$labels
  for (k in levels(type)) {
    idx <- which(type == k)
    want <- apply(brute_force(fit, idx), c(2, 3), mean)
    expect_equal(unname(g[, , k]), want, tolerance = 1e-5)
  }
  expect_equal(unname(attr(g, "n_cells")), as.vector(table(type)))
})

test_that("Monte Carlo group means are means of the per-cell matrices, whatever the chunk size", {
  fit <- small_fit()$fit
  a <- sampleDistances(fit, groups = "labels", mc_samples = 3, min_cells = 0, chunk_size = 7)
  b <- sampleDistances(fit, groups = "labels", mc_samples = 3, min_cells = 0, chunk_size = 100)
  expect_identical(a, b)
  idx <- which(fit@cell_data$labels == "type2")
  cells <- sampleDistances(fit, cells = idx, mc_samples = 3)
  expect_equal(unname(a[, , "type2"]), unname(apply(cells, c(2, 3), mean)), tolerance = 1e-5)
  m0 <- sampleDistances(fit, groups = "labels", mc_samples = 0, chunk_size = 3)
  expect_identical(m0, sampleDistances(fit, groups = "labels", mc_samples = 0, chunk_size = 64))
  # a memory limit that holds five cells' draws shrinks the default chunk to five, same result
  per_cell <- 4 * length(fit@samples) * dim(counterfactualLatent(fit, cells = 1))[3] * 3
  old <- options(mrvi.max_bytes = 5.5 * per_cell)
  on.exit(options(old))
  expect_identical(mrvi:::resolve_chunk_size(fit, NULL, NULL, mc_samples = 3), 5L)
  options(mrvi.max_bytes = 1e15)  # room for more cells than an integer holds: the default chunk
  expect_identical(mrvi:::resolve_chunk_size(fit, NULL, NULL, mc_samples = 3), mrvi:::resolve_chunk_size(fit, NULL, NULL))
  options(mrvi.max_bytes = 5.5 * per_cell)
  expect_identical(sampleDistances(fit, groups = "labels", mc_samples = 3, min_cells = 0), a)
})

test_that("normalised distances count only differences beyond the cell's posterior noise", {
  # the exact formula is checked against libtorch in cargo test (tests/distances.rs)
  fit <- small_fit()$fit
  expect_error(sampleDistances(fit, normalize = TRUE, mc_samples = 2), "`normalize`.*`mc_samples` >= 3")
  a <- covariates_fit()
  d <- sampleDistances(a$fit, groups = "cell_type", normalize = TRUE, mc_samples = 10, space = "latent")
  off <- function(m) m[upper.tri(m)]
  expect_true(all(d >= 0))
  # the planted effects act on type1 only: its samples are set apart by several
  # noise units, while type2's are within the noise of its cells
  expect_gt(mean(off(d[, , "type1"])), 0.5)
  expect_lt(mean(off(d[, , "type2"])), 0.01 * mean(off(d[, , "type1"])))
  raw <- sampleDistances(a$fit, groups = "cell_type", mc_samples = 10, space = "latent")
  expect_gt(mean(off(raw[, , "type2"])), 0.2 * mean(off(raw[, , "type1"])))
  # the same in expression space (the default): type2 at 0.3-1.6% of type1 over fit
  # seeds 1-5 (tools/threshold_audit.R, Intel Xeon, session 22)
  e <- sampleDistances(a$fit, groups = "cell_type", normalize = TRUE, mc_samples = 10)
  expect_gt(mean(off(e[, , "type1"])), 0.5)
  expect_lt(mean(off(e[, , "type2"])), 0.05 * mean(off(e[, , "type1"])))
})

test_that("samples with fewer than min_cells cells in a group are excluded and recorded", {
  f <- small_fit()
  fit <- f$fit
  groups <- as.character(fit@cell_data$labels)
  s1 <- fit@samples[1]
  in_type1_s1 <- which(groups == "type1" & fit@cell_data$sample == s1)
  groups[in_type1_s1[-(1:2)]] <- NA  # sample 1 keeps 2 cells in type1
  d <- sampleDistances(fit, groups = groups, min_cells = 5, mc_samples = 0)
  expect_true(all(is.na(d[s1, , "type1"])))
  expect_true(all(is.na(d[, s1, "type1"])))
  expect_false(anyNA(d[, , "type2"]))
  expect_equal(attr(d, "excluded")$type1, s1)
  expect_message(hc <- sampleHclust(d, "type1"), "Dropping sample")
  expect_false(s1 %in% hc$labels)
  # groups named by cell are matched by name, in any order
  named <- setNames(groups, rownames(fit@cell_data))
  expect_identical(sampleDistances(fit, groups = rev(named), min_cells = 5, mc_samples = 0), d)
})

test_that("sampleHclust gives a real hclust that the usual tools accept", {
  fit <- small_fit()$fit
  d <- sampleDistances(fit, groups = "labels", mc_samples = 0)
  hc <- sampleHclust(d, "type1")
  expect_s3_class(hc, "hclust")
  expect_setequal(hc$labels, fit@samples)
  expect_s3_class(as.dendrogram(hc), "dendrogram")
  expect_length(cutree(hc, 2), 5)
  ref <- hclust(as.dist(d[, , "type1"]), method = "average")
  expect_equal(hc$merge, ref$merge)
  expect_equal(hc$height, ref$height)
  expect_equal(sampleHclust(d, "type1", method = "ward.D2")$method, "ward.D2")
  expect_s3_class(sampleDist(d, "type1"), "dist")
  skip_if_not_installed("ape")
  expect_s3_class(ape::as.phylo(hc), "phylo")
  expect_error(sampleHclust(d), "`group` is required")
  expect_error(sampleHclust(d, "nope"), "`group` = \"nope\"")
})

test_that("sampleHclust() and sampleDist() take one group, and only distances", {
  fit <- small_fit()$fit
  d <- sampleDistances(fit, groups = "labels", mc_samples = 0)
  for (g in list(c("type1", "type2"), NA, TRUE, 1.5, 0)) {
    expect_error(sampleHclust(d, group = g), "`group` must be one group name of `d` or one whole number in 1\\.\\.",
                 class = "mrvi_error")
  }
  expect_no_message(try(sampleDist(d, group = NA), silent = TRUE))  # (it said "Dropping samples")
  m <- matrix(c(0, 1, 2, 5, 0, 3, 9, 9, 0), 3, dimnames = list(letters[1:3], letters[1:3]))
  expect_error(sampleHclust(m), "`d` must hold distances between samples: it is not symmetric", class = "mrvi_error")
  expect_error(sampleDist(matrix(c(0, -1, -1, 0), 2)), "negative values", class = "mrvi_error")
  # no pair compared (min_cells, or an admissibility mask): both causes are named
  uncompared <- matrix(c(0, NA, NA, 0), 2, dimnames = list(c("a", "b"), c("a", "b")))
  expect_error(suppressMessages(sampleDist(uncompared)), "no\\s+admissible\\s+cell\\s+compared", class = "mrvi_error")
  expect_error(sampleHclust(matrix(1:6, 2)), "it is 2 x 3", class = "mrvi_error")
  expect_error(sampleDist(as.matrix(dist(1:3)) + diag(3)), "diagonal is not 0", class = "mrvi_error")
  expect_error(sampleDist(`dimnames<-`(as.matrix(dist(1:3)), list(letters[1:3], LETTERS[1:3]))), "names differ",
               class = "mrvi_error")
  # NA rows (samples left out) pass, and unnamed matrices get the names a dist gets
  x <- d[, , 1]
  x[1, ] <- x[, 1] <- NA
  expect_equal(labels(suppressMessages(sampleDist(x))), fit@samples[-1])
  expect_equal(sampleHclust(unname(d[, , 1]))$labels, as.character(seq_len(5)))
})

test_that("bad arguments name themselves", {
  fit <- small_fit()$fit
  expect_error(sampleDistances(fit, groups = "nope"), "`groups` = \"nope\"")
  expect_error(sampleDistances(fit, groups = 1:3), "`groups` must have one value per fitted cell")
  expect_error(sampleDistances(fit, groups = "labels", cells = 1:3), "`groups` or `cells`")
  expect_error(sampleDistances(fit, cells = 1e6), "`cells`")
  expect_error(sampleDistances(fit, cells = c(TRUE, FALSE)), "logical `cells` must have one value per fitted cell",
               class = "mrvi_error")
  # a column named by cell over more cells than were fitted (cells without
  # counts) is read by name
  cells <- rownames(fit@cell_data)
  wider <- c(stats::setNames(as.character(fit@cell_data$labels), cells), dropped = "type1")
  expect_identical(sampleDistances(fit, groups = rev(wider), mc_samples = 0),
                   sampleDistances(fit, groups = "labels", mc_samples = 0))
  expect_error(sampleDistances(fit, groups = unname(wider)), "name it by cell", class = "mrvi_error")
  d <- sampleDistances(fit, groups = "labels", mc_samples = 0)
  expect_identical(sampleHclust(d, group = factor("type1"))$merge, sampleHclust(d, group = "type1")$merge)
  # a latent value that overflows the counterfactuals: NaN distances are named
  # as a numerical failure, never taken for samples left out
  broken <- fit
  broken@u_mean[5, ] <- 3e38
  expect_warning(nan <- sampleDistances(broken, groups = "labels", mc_samples = 0), "NaN, a numerical failure",
                 class = "mrvi_nonfinite_distances")
  g <- as.character(fit@cell_data$labels[5])
  expect_error(sampleHclust(nan, g), "NaN values", class = "mrvi_error")
  expect_error(sampleDistances(fit, min_cells = -1), "`min_cells`")
  expect_error(counterfactualLatent(fit, samples = "zz"), "`samples`")
})

test_that("CPU and GPU distances agree", {
  skip_if_not(mrviBackend()$cuda_available, "no CUDA device")
  fit <- small_fit()$fit
  cpu <- sampleDistances(fit, groups = "labels", mc_samples = 0)
  fit_gpu <- fit
  fit_gpu@config$device <- "cuda"
  fit_gpu@cache <- new.env()
  gpu <- sampleDistances(fit_gpu, groups = "labels", mc_samples = 0)
  expect_equal(gpu, cpu, tolerance = 1e-4)
})

test_that("admissibility masks pairs in group means and per-cell matrices", {
  nf <- nested_fit()
  fit <- nf$fit
  n <- nrow(fit@u_mean)
  S <- length(fit@samples)
  set.seed(9)
  mask <- matrix(runif(n * S) > 0.2, n, S, dimnames = list(NULL, fit@samples))
  grp <- fit@cell_data$labels
  d <- sampleDistances(fit, groups = grp, mc_samples = 0, min_cells = 1, admissible = mask)
  cells <- which(grp == levels(grp)[2])
  per_cell <- sampleDistances(fit, cells = cells, mc_samples = 0)
  for (ab in list(c(1, 2), c(3, 7), c(5, 8))) {
    ok <- mask[cells, ab[1]] & mask[cells, ab[2]]
    expect_equal(d[ab[1], ab[2], 2], mean(per_cell[ok, ab[1], ab[2]]), tolerance = 1e-5)
  }
  masked_cells <- sampleDistances(fit, cells = cells[1:3], mc_samples = 0, admissible = mask[cells[1:3], ])
  first <- which(!mask[cells[1], ])[1]
  expect_true(all(is.na(masked_cells[1, first, ])))
  keep <- mask[cells[1], ]
  expect_equal(masked_cells[1, keep, keep], per_cell[1, keep, keep])
  expect_error(sampleDistances(fit, groups = grp, admissible = mask[1:3, ]), "admissible")
  # a pair no cell compared is NA (a mean over no cells), never NaN
  expect_warning(none <- sampleDistances(fit, groups = grp, mc_samples = 0, min_cells = 1, admissible = mask & FALSE),
                 "that\\s+admissible\\s+cells\\s+compared", class = "mrvi_all_excluded")
  expect_false(any(is.nan(none)))
  expect_true(all(is.na(none[1, 2, ])))
  # a sample no admissible cell compared with any other is left out, and recorded
  lone <- mask
  lone[, 3] <- FALSE
  d_lone <- sampleDistances(fit, groups = grp, mc_samples = 0, min_cells = 1, admissible = lone)
  for (g in levels(grp)) expect_true(fit@samples[3] %in% attr(d_lone, "excluded")[[g]])
  expect_true(all(is.na(d_lone[3, , ])))
  # admissibility()'s result is taken as it came
  a <- admissibility(fit, cells = cells[1:3])
  expect_identical(sampleDistances(fit, cells = cells[1:3], mc_samples = 0, admissible = a),
                   sampleDistances(fit, cells = cells[1:3], mc_samples = 0, admissible = a$admissible))
})

test_that("expression-space distances are Aitchison distances between profiles from counterfactualExpression()", {
  fit <- nested_fit()$fit  # two sites: the log expression is averaged over them
  cells <- c(5, 900)
  d <- sampleDistances(fit, cells = cells, mc_samples = 0)  # expression space is the default
  expect_equal(dim(d), c(2L, length(fit@samples), length(fit@samples)))
  for (i in seq_along(cells)) {
    x <- sapply(fit@samples, function(s) {
      lx <- rowMeans(sapply(fit@batches, function(b) log2(counterfactualExpression(fit, cells[i], s, batch = b))))
      lx - mean(lx)  # centred over genes
    })
    expect_equal(unname(d[i, , ]), unname(as.matrix(dist(t(x)))), tolerance = 1e-5)
  }
  expect_true(all(d >= 0))
  latent <- sampleDistances(fit, cells = cells, mc_samples = 0, space = "latent")
  expect_false(isTRUE(all.equal(d, latent)))
  # the noise floor works in expression space too
  nd <- sampleDistances(fit, cells = cells, mc_samples = 4, normalize = TRUE)
  expect_true(all(is.finite(nd)) && all(nd >= 0))
})

test_that("expression-space group means are means of the per-cell matrices, over at most max_cells cells", {
  fit <- small_fit()$fit
  a <- sampleDistances(fit, groups = "labels", mc_samples = 2, min_cells = 0, space = "expression", chunk_size = 7)
  b <- sampleDistances(fit, groups = "labels", mc_samples = 2, min_cells = 0, space = "expression")
  expect_identical(a, b)
  expect_identical(attr(a, "space"), "expression")
  idx <- which(fit@cell_data$labels == "type2")
  cells <- sampleDistances(fit, cells = idx, mc_samples = 2, space = "expression")
  # per-cell matrices come chunk_size cells at a time, with the same result
  expect_identical(sampleDistances(fit, cells = idx, mc_samples = 2, space = "expression", chunk_size = 3), cells)
  expect_equal(unname(a[, , "type2"]), unname(apply(cells, c(2, 3), mean)), tolerance = 1e-10)
  # max_cells: evenly spaced cells of each group, the same in both spaces
  thin <- idx[unique(round(seq(1, length(idx), length.out = 20)))]
  few <- sampleDistances(fit, groups = "labels", mc_samples = 0, min_cells = 0, space = "expression", max_cells = 20)
  expect_equal(unname(attr(few, "n_cells")), rep(20, 3))
  direct <- sampleDistances(fit, cells = thin, mc_samples = 0, space = "expression")
  expect_equal(unname(few[, , "type2"]), unname(apply(direct, c(2, 3), mean)), tolerance = 1e-10)
  latent <- sampleDistances(fit, groups = "labels", mc_samples = 0, min_cells = 0, max_cells = 20)
  expect_equal(unname(latent[, , "type2"]),
               unname(apply(sampleDistances(fit, cells = thin, mc_samples = 0), c(2, 3), mean)), tolerance = 1e-5)
  expect_identical(sampleDistances(fit, groups = "labels", mc_samples = 0, max_cells = Inf),
                   sampleDistances(fit, groups = "labels", mc_samples = 0))
  # admissibility masks pairs as in latent space
  set.seed(3)
  mask <- matrix(runif(nrow(fit@u_mean) * 5) > 0.3, ncol = 5)
  m <- sampleDistances(fit, groups = "labels", mc_samples = 0, min_cells = 0, space = "expression", admissible = mask)
  per <- sampleDistances(fit, cells = idx, mc_samples = 0, space = "expression")
  ok <- mask[idx, 1] & mask[idx, 4]
  expect_equal(m[1, 4, "type2"], mean(per[ok, 1, 4]), tolerance = 1e-10)
})

test_that("expression-space distances find the planted sample effect in the affected type only", {
  nf <- nested_fit()
  d <- sampleDistances(nf$fit, groups = "labels", mc_samples = 0, space = "expression")
  off <- function(m) m[upper.tri(m)]
  mean_d <- apply(d, 3, function(m) mean(off(m)))
  affected <- nf$sim$affected
  # (the linear flavour carries part of the effect into every type: latent-space
  # distances show a similar ratio, 2.3 against 2.1 here; fit seeds 1-5 of
  # tools/threshold_audit.R: 1.63-2.35)
  expect_gt(mean_d[[affected]] / max(mean_d[names(mean_d) != affected]), 1.3)
})

test_that("sampleDistances(admissible = TRUE) computes the mask under the call's seed and BPPARAM", {
  fit <- large_sample_fit()  # sample A has more cells than admissibility()'s reference subsample
  cells <- seed_dependent_cells(fit)
  expect_gt(length(cells), 0)
  per_cell <- function(seed, admissible) {
    sampleDistances(fit, cells = cells, mc_samples = 0, space = "latent", admissible = admissible, seed = seed)
  }
  by_group <- function(seed, admissible) {
    sampleDistances(fit, groups = rep("all", nrow(fit@u_mean)), mc_samples = 0, space = "latent",
                    admissible = admissible, seed = seed)
  }
  for (seed in c(1, 7)) {
    expect_identical(per_cell(seed, TRUE), per_cell(seed, admissibility(fit, cells = cells, seed = seed)$admissible))
    expect_identical(by_group(seed, TRUE), by_group(seed, admissibility(fit, seed = seed)$admissible))
  }
  expect_false(identical(is.na(per_cell(1, TRUE)), is.na(per_cell(7, TRUE))))
  expect_false(identical(by_group(1, TRUE), by_group(7, TRUE)))
  # the default is the fit's seed, as for the draws
  expect_identical(per_cell(fit@config$seed, TRUE),
                   sampleDistances(fit, cells = cells, mc_samples = 0, space = "latent", admissible = TRUE))
  # BPPARAM reaches admissibility() (one block of cells here: nothing is started)
  mc <- BiocParallel::MulticoreParam(2)
  n_mask <- multicore_spreads(admissibility(fit, cells = cells, seed = 7, BPPARAM = mc))
  n_plain <- multicore_spreads(sampleDistances(fit, cells = cells, mc_samples = 0, space = "latent", seed = 7, BPPARAM = mc))
  expect_gt(n_mask, 0)
  expect_equal(multicore_spreads(sampleDistances(fit, cells = cells, mc_samples = 0, space = "latent", admissible = TRUE,
                                                 seed = 7, BPPARAM = mc)),
               n_plain + n_mask)
})

test_that("groups and admissibility masks named by cell are matched by name; partial names and NA levels are handled", {
  fit <- small_fit()$fit
  cells <- rownames(fit@cell_data)
  lab <- stats::setNames(as.character(fit@cell_data$labels), cells)
  ref <- sampleDistances(fit, groups = unname(lab), mc_samples = 0, min_cells = 0)
  expect_equal(sampleDistances(fit, groups = rev(lab), mc_samples = 0, min_cells = 0), ref)
  stray <- rev(lab)
  names(stray)[1] <- "not_a_cell"
  expect_error(sampleDistances(fit, groups = stray, mc_samples = 0), "`groups` is named by cell, but not once by each cell",
               class = "mrvi_error")
  # an NA level (addNA()) leaves its cells out of every group, as NA does
  with_na <- addNA(factor(replace(unname(lab), 1:10, NA)))
  expect_equal(sampleDistances(fit, groups = with_na, mc_samples = 0, min_cells = 0),
               sampleDistances(fit, groups = replace(unname(lab), 1:10, NA), mc_samples = 0, min_cells = 0))
  # NaN is missing too (not a group "NaN"); "" is no group's name
  codes <- as.numeric(factor(lab))
  expect_equal(sampleDistances(fit, groups = replace(codes, 1:10, NaN), mc_samples = 0, min_cells = 0),
               sampleDistances(fit, groups = replace(codes, 1:10, NA), mc_samples = 0, min_cells = 0))
  expect_error(sampleDistances(fit, groups = replace(unname(lab), 1:3, ""), mc_samples = 0),
               "`groups` has 3 empty values", class = "mrvi_error")
  # a mask for the same cells in another order masks those cells, not the ones at its row positions
  idx <- c(10, 3, 250)
  mask <- admissibility(fit, cells = idx)$admissible
  mask[] <- TRUE
  mask[1, 2] <- FALSE  # cell 10, sample 2
  d <- sampleDistances(fit, cells = rev(idx), admissible = mask[3:1, , drop = FALSE], mc_samples = 0)
  d_rev <- sampleDistances(fit, cells = rev(idx), admissible = mask, mc_samples = 0)
  expect_identical(d_rev, d)
  expect_true(all(is.na(d[cells[10], 2, -2])))
  expect_false(anyNA(d[cells[3], , ]))
  # row names that are no cell's are positions, as before
  numbered <- mask
  rownames(numbered) <- c("1", "2", "3")
  expect_identical(sampleDistances(fit, cells = idx, admissible = numbered, mc_samples = 0),
                   sampleDistances(fit, cells = idx, admissible = mask, mc_samples = 0))
  other <- mask
  rownames(other)[1] <- cells[11]
  expect_error(sampleDistances(fit, cells = idx, admissible = other, mc_samples = 0), "rows of `admissible` must be the analysed cells",
               class = "mrvi_error")
})

test_that("sampleDistances(verbose =) shows a bar over the groups and changes nothing else", {
  fit <- small_fit()$fit
  old <- options(cli.progress_show_after = 0, cli.dynamic = FALSE)
  on.exit(options(old))
  shown <- utils::capture.output(with_bar <- sampleDistances(fit, groups = "labels", mc_samples = 0), type = "message")
  expect_true(any(grepl("Sample distances", shown)))
  quiet <- utils::capture.output(without <- sampleDistances(fit, groups = "labels", mc_samples = 0, verbose = FALSE),
                                 type = "message")
  expect_false(any(grepl("Sample distances", quiet)))
  expect_identical(with_bar, without)
  expect_error(sampleDistances(fit, groups = "labels", verbose = "yes"), "`verbose`", class = "mrvi_error")
})
