# New samples added to a trained model (issue 20).

# the cells not held out, without the held-out samples' levels
reference_part <- function(sce, held) {
  ref <- sce[, !held]
  ref$sample <- droplevels(ref$sample)
  ref
}

test_that("added samples get distances to the reference, which stays exactly as it was", {
  sce <- crossed_data()
  held <- sce$sample %in% c("s02", "s05")
  for (flavour in c("linear", "attention")) {
    ref <- mrvi(reference_part(sce, held), sample = "sample", batch = c("site", "chemistry"), continuous_covariates = "mito",
                flavour = flavour, max_epochs = 3, n_threads = 1, verbose = FALSE)
    added <- mrviAddSamples(ref, sce[, held], sample = "sample", batch = c("site", "chemistry"),
                            continuous_covariates = "mito", max_epochs = 3)
    s_ref <- ref@samples
    expect_equal(added@samples, c(s_ref, "s02", "s05"))
    expect_equal(nrow(added@cell_data), ncol(sce))
    expect_identical(added@u_mean[rownames(ref@u_mean), ], ref@u_mean)
    # bit for bit (linear); up to single-precision rounding where the attention
    # means are read from a table whose grid spans the new samples too
    same <- if (flavour == "linear") expect_identical else function(a, b) expect_equal(a, b, tolerance = 1e-5)
    same(sampleDistances(added, cells = 1:20)[, s_ref, s_ref], sampleDistances(ref, cells = 1:20))
    in_ref <- rownames(added@cell_data) %in% rownames(ref@cell_data)
    values <- function(d) array(d, dim(d), dimnames(d))
    same(values(sampleDistances(added, groups = ifelse(in_ref, as.character(added@cell_data$cell_type), NA),
                                mc_samples = 0)[s_ref, s_ref, ]),
         values(sampleDistances(ref, groups = "cell_type", mc_samples = 0)))
    d <- sampleDistances(added, groups = "cell_type", mc_samples = 0)
    expect_true(all(is.finite(d[c("s02", "s05"), s_ref, "type1"])))
    expect_equal(unname(d["s02", "s02", "type1"]), 0)
    # the new samples' parameters were learned: their z differs from that of
    # their starting point, which is the same for both new samples
    z <- counterfactualLatent(added, cells = 1)
    expect_gt(max(abs(z[1, "s02", ] - z[1, "s05", ])), 0)
    expect_output(show(added), "added:   2 samples by mrviAddSamples\\(\\) \\('s02', 's05'\\)")
    expect_equal(added@config$added[[1]]$samples, c("s02", "s05"))
    f <- tempfile(fileext = ".rds")
    saveRDS(added, f)
    back <- readRDS(f)
    expect_identical(sampleDistances(back, cells = 1:5), sampleDistances(added, cells = 1:5))
    expect_identical(mrviLatent(back, which = "z"), mrviLatent(added, which = "z"))
  }
})

test_that("mrviAddSamples() refuses what it cannot learn", {
  sce <- crossed_data()
  held <- sce$sample %in% c("s02", "s05")
  ref <- mrvi(reference_part(sce, held), sample = "sample", batch = "site", flavour = "linear", max_epochs = 2,
              n_threads = 1, verbose = FALSE)
  new <- sce[, held]
  expect_error(mrviAddSamples(ref, sce[, sce$sample == "s01"], sample = "sample", batch = "site"),
               "already has.*s01", class = "mrvi_error")
  expect_error(mrviAddSamples(ref, new, sample = "sample"), "batch.*required", class = "mrvi_error")
  lev <- as.character(new$site)
  lev[1] <- "site3"
  expect_error(mrviAddSamples(ref, new, sample = "sample", batch = lev), "site3", class = "mrvi_error")
  expect_error(mrviAddSamples(ref, new[-1, ], sample = "sample", batch = "site"), "missing", class = "mrvi_error")
  extra <- SummarizedExperiment::assay(new)
  extra <- rbind(extra, novel = 1)
  # a gene the fit does not have (one without counts in the reference, which
  # mrvi() dropped) plays no part: left out, with a message
  expect_message(with_novel <- mrviAddSamples(ref, extra, sample = new$sample, batch = new$site, max_epochs = 1),
                 "1 gene of `x` with counts is not in the fit and left out: .novel.")
  expect_identical(with_novel@u_mean, mrviAddSamples(ref, new, sample = "sample", batch = "site", max_epochs = 1)@u_mean)
  renamed <- new
  colnames(renamed) <- colnames(sce)[!held][seq_len(ncol(new))]
  expect_error(mrviAddSamples(ref, renamed, sample = "sample", batch = "site"), "cell names", class = "mrvi_error")
  expect_error(mrviAddSamples(ref, new, sample = "sample", batch = "site", continuous_covariates = "mito"),
               "continuous_covariates", class = "mrvi_error")
  expect_error(mrviAddSamples(ref, new, sample = "sample", batch = "site", seed = -1), "seed", class = "mrvi_error")
  expect_error(mrviAddSamples("fit", new, sample = "sample"), "MrVIFit", class = "mrvi_error")
})

test_that("a new sample from one site, with one value of a continuous covariate, can be added", {
  # fitting needs covariates that vary; new cells need not (a new donor from one site)
  sce <- crossed_data()
  held <- sce$sample == "s02"
  ref <- mrvi(reference_part(sce, held), sample = "sample", batch = c("site", "chemistry"), continuous_covariates = "mito",
              flavour = "linear", max_epochs = 2, n_threads = 1, verbose = FALSE)
  new <- sce[, held]
  expect_length(unique(new$site), 1)
  batch <- data.frame(site = as.character(new$site), chemistry = as.character(new$chemistry))  # one level each
  added <- mrviAddSamples(ref, new, sample = "sample", batch = batch,
                          continuous_covariates = list(mito = rep(mean(new$mito), ncol(new))), max_epochs = 2)
  expect_equal(added@samples, c(ref@samples, "s02"))
  expect_true(all(is.finite(sampleDistances(added, cells = which(added@cell_data$sample == "s02")[1:3], mc_samples = 0))))
  # one cell alone
  one <- mrviAddSamples(ref, new[, 1], sample = "sample", batch = batch[1, ], continuous_covariates = "mito", max_epochs = 2)
  expect_equal(nrow(one@cell_data), nrow(ref@cell_data) + 1)
  # a fit still refuses covariates that do not vary
  expect_error(mrvi(new, sample = rep(c("a", "b"), length.out = ncol(new)), batch = batch, verbose = FALSE),
               "batch\\$site.*constant", class = "mrvi_error")
})

test_that("added samples land where the planted tree puts them", {
  # 12 samples with a tree planted in type1; s03 and s08 held out, the rest
  # fitted, then the two added. Over fit seeds 1..5 on this simulation, and over
  # simulation and fit seeds 1..5 (Intel Xeon, 1 thread): each added sample's
  # nearest reference sample in D(type1) was one of its nearest in the tree in
  # all 18 cases, and Spearman of its row with the true distances was 0.43-0.94.
  sce <- simulateNested(2000, 200, n_samples = 12, n_sites = 2, n_cell_types = 2, n_affected = 1, seed = 1)
  held <- sce$sample %in% c("s03", "s08")
  ref <- mrvi(reference_part(sce, held), sample = "sample", batch = "site", labels = "cell_type",
              max_epochs = 150, seed = fit_seed(1), n_threads = 1, verbose = FALSE)
  added <- mrviAddSamples(ref, sce[, held], sample = "sample", batch = "site", seed = fit_seed(1))
  d <- sampleDistances(added, groups = "cell_type", mc_samples = 0)[, , "type1"]
  truth <- S4Vectors::metadata(sce)$truth$distances$type1
  r <- ref@samples
  for (s in c("s03", "s08")) {
    nearest <- names(which.min(d[s, r]))
    expect_equal(truth[s, nearest], min(truth[s, r]), info = s)
    expect_gt(stats::cor(d[s, r], truth[s, r], method = "spearman"), 0.2)
  }
})

test_that("added cells without counts are left out with a message", {
  sce <- crossed_data()
  held <- sce$sample %in% "s05"
  ref <- mrvi(reference_part(sce, held), sample = "sample", batch = c("site", "chemistry"), continuous_covariates = "mito",
              flavour = "linear", max_epochs = 1, n_threads = 1, verbose = FALSE)
  new <- sce[, held]
  SummarizedExperiment::assay(new, "counts")[, 1] <- 0
  expect_message(added <- mrviAddSamples(ref, new, sample = "sample", batch = c("site", "chemistry"),
                                         continuous_covariates = "mito", max_epochs = 1),
                 "Leaving out 1 cell of `x` without counts")
  expect_equal(nrow(added@cell_data), nrow(ref@cell_data) + sum(held) - 1)
})

test_that("labels of the added cells are kept for grouping, and their absence is said", {
  sim <- mrvi:::simulate_counts(n_cells = 300, n_genes = 60, n_samples = 4, seed = 2)
  old <- sim$sample != "s04"
  fit <- mrvi(sim$counts[, old], sample = droplevels(sim$sample[old]), labels = sim$cell_type[old],
              max_epochs = 2, n_threads = 1, verbose = FALSE)
  expect_message(without <- mrviAddSamples(fit, sim$counts[, !old], sample = sim$sample[!old], max_epochs = 1),
                 "new cells have no `labels`")
  expect_true(all(is.na(without@cell_data$labels[!rownames(without@cell_data) %in% rownames(fit@cell_data)])))
  with <- mrviAddSamples(fit, sim$counts[, !old], sample = sim$sample[!old], max_epochs = 1,
                         labels = sim$cell_type[!old])
  new_cells <- colnames(sim$counts)[!old]
  expect_equal(as.character(with@cell_data[new_cells, "labels"]), as.character(sim$cell_type[!old]))
  # labels only group: the fit is the one without them
  expect_identical(with@u_mean, without@u_mean)
  d <- sampleDistances(with, groups = "labels", mc_samples = 0)
  expect_false(anyNA(d[, "s04", ]))
  # a label level only the new cells have is among the fit's labels
  relabelled <- replace(as.character(sim$cell_type[!old]), 1:5, "type_new")
  more <- mrviAddSamples(fit, sim$counts[, !old], sample = sim$sample[!old], max_epochs = 1, labels = relabelled)
  expect_identical(sort(more@labels), sort(levels(more@cell_data$labels)))
  expect_true("type_new" %in% more@labels)
})

test_that("cells added with vectors fill the metadata columns the fit's sample, batch and labels came from", {
  sce <- simulateNested(600, 60, n_samples = 6, n_sites = 2, n_cell_types = 2, n_affected = 1, seed = 1)
  sce$donor <- sce$sample
  held <- sce$donor == "s06"
  ref <- reference_part(sce, held)
  ref$donor <- droplevels(ref$donor)
  fit <- mrvi(ref, sample = "donor", batch = "site", labels = "cell_type", flavour = "linear", max_epochs = 2,
              n_threads = 1, verbose = FALSE)
  expect_equal(fit@config$columns, list(sample = "donor", batch = "site", labels = "cell_type"))
  new <- sce[, held]
  added <- mrviAddSamples(fit, SingleCellExperiment::counts(new), sample = as.character(new$donor),
                          batch = as.character(new$site), labels = as.character(new$cell_type), max_epochs = 1)
  rows <- added@cell_data[colnames(new), ]
  expect_equal(as.character(rows$site), as.character(new$site))
  expect_equal(as.character(rows$cell_type), as.character(new$cell_type))
  expect_equal(as.character(rows$donor), as.character(new$donor))
  d <- sampleDistances(added, groups = "cell_type", mc_samples = 0, space = "latent")
  expect_false(anyNA(d["s06", fit@samples, ]))
  # and the sample table, where the fit's samples have their site
  table <- as.data.frame(added@sample_table)
  expect_false("batch" %in% names(table))
  expect_equal(as.character(table$site[table$sample == "s06"]), unique(as.character(new$site)))
})

test_that("an interrupted mrviAddSamples() says so with mrvi_interrupted, as mrvi() does", {
  skip_on_os("windows")
  res <- interrupted_run(
    before = paste("sim <- mrvi:::simulate_counts(n_cells = 4000, n_genes = 200, seed = 1);",
                   "old <- sim$sample != levels(sim$sample)[1];",
                   "fit <- mrvi(sim$counts[, old], droplevels(sim$sample[old]), flavour = 'linear', max_epochs = 1,",
                   "            early_stopping = FALSE, n_threads = 1, verbose = FALSE)"),
    during = paste("warned <- FALSE;",
                   "res <- withCallingHandlers(",
                   "  mrviAddSamples(fit, sim$counts[, !old], sample = as.character(sim$sample[!old]), max_epochs = 5000, n_threads = 1),",
                   "  mrvi_interrupted = function(w) { warned <<- TRUE; invokeRestart('muffleWarning') })"),
    saved = "list(class = class(res), warned = warned, interrupted = res@config$added[[1]]$interrupted)")
  expect_false(is.null(res))
  expect_true("MrVIFit" %in% res$class)
  expect_true(res$interrupted)
  expect_true(res$warned)
})

test_that("mrviAddSamples() trains under the fit's seed by default", {
  sim <- mrvi:::simulate_counts(n_cells = 300, n_genes = 60, n_samples = 4, seed = 2)
  old <- sim$sample != "s04"
  fit <- mrvi(sim$counts[, old], sample = droplevels(sim$sample[old]), flavour = "linear", max_epochs = 2,
              seed = 7, n_threads = 1, verbose = FALSE)
  add <- function(...) mrviAddSamples(fit, sim$counts[, !old], sample = sim$sample[!old], max_epochs = 2, ...)
  default <- add()
  expect_equal(default@config$added[[1]]$seed, 7)
  expect_identical(default@u_mean, add(seed = 7)@u_mean)
  expect_false(identical(default@u_mean, add(seed = 1)@u_mean))
  # the thread count is an argument, recorded, and the same count repeats the fit
  two <- add(n_threads = 2)
  expect_equal(two@config$added[[1]]$n_threads, 2L)
  expect_equal(add(n_threads = 1)@config$added[[1]]$n_threads, 1L)
  expect_identical(add(n_threads = two@config$added[[1]]$n_threads)@weights, two@weights)
  expect_error(add(n_threads = 0), "`n_threads`", class = "mrvi_error")
})

test_that("continuous covariates for a fit without any are refused as such", {
  f <- small_fit()
  held <- f$sim$sample == f$fit@samples[1]
  fit <- suppressMessages(mrvi(f$sim$counts[, !held], sample = droplevels(factor(f$sim$sample[!held])), max_epochs = 2,
                               verbose = FALSE, n_threads = 1))
  expect_error(mrviAddSamples(fit, f$sim$counts[, held], sample = paste0("new_", f$sim$sample[held]), max_epochs = 1,
                              continuous_covariates = data.frame(a = seq_len(sum(held)))),
               "must be `NULL`: the fit has no continuous covariates", class = "mrvi_error")
  # nor a batch (not its internal level, "batch1", offered as a known one)
  expect_error(mrviAddSamples(fit, f$sim$counts[, held], sample = paste0("new_", f$sim$sample[held]), max_epochs = 1,
                              batch = rep("site1", sum(held))),
               "`batch` must be `NULL`: the fit has no batch", class = "mrvi_error")
  # unnamed cells are named cell1, ... in both: the clash says how to name them
  unnamed <- unname(as.matrix(f$sim$counts))
  rownames(unnamed) <- rownames(f$sim$counts)
  fit_unnamed <- suppressMessages(mrvi(unnamed[, !held], sample = droplevels(factor(f$sim$sample[!held])),
                                       max_epochs = 1, verbose = FALSE, n_threads = 1))
  expect_error(mrviAddSamples(fit_unnamed, unnamed[, held], sample = paste0("new_", f$sim$sample[held]), max_epochs = 1),
               "has no cell names.*colnames\\(x\\) <-", class = "mrvi_error")
})
