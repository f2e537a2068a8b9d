# R/write-back.R: addMrVI() into SingleCellExperiment and Seurat objects.

test_that("addMrVI writes u and z into a SingleCellExperiment and a Seurat object", {
  nf <- small_fit()
  skip_if_not_installed("SingleCellExperiment")
  sce <- SingleCellExperiment::SingleCellExperiment(list(counts = nf$sim$counts))
  sce <- addMrVI(sce, nf$fit)
  expect_equal(SingleCellExperiment::reducedDimNames(sce), c("MrVI_u", "MrVI_z"))
  expect_equal(SingleCellExperiment::reducedDim(sce, "MrVI_u"), mrviLatent(nf$fit))
  expect_s4_class(S4Vectors::metadata(sce)$mrvi, "MrVIFit")
  skip_if_not_installed("SeuratObject")
  so <- suppressWarnings(SeuratObject::CreateSeuratObject(counts = nf$sim$counts))
  so <- addMrVI(so, nf$fit)
  expect_true(all(c("mrvi_u", "mrvi_z") %in% SeuratObject::Reductions(so)))
  emb <- SeuratObject::Embeddings(so, "mrvi_z")
  expect_equal(unname(emb), unname(mrviLatent(nf$fit, which = "z")))
  expect_s4_class(SeuratObject::Tool(so, slot = "addMrVI"), "MrVIFit")
})

test_that("distances are written back with addMrVI", {
  skip_if_not_installed("SingleCellExperiment")
  f <- small_fit()
  d <- sampleDistances(f$fit, groups = "labels", mc_samples = 0)
  sce <- SingleCellExperiment::SingleCellExperiment(list(counts = f$sim$counts))
  sce <- addMrVI(sce, f$fit, distances = d)
  expect_identical(S4Vectors::metadata(sce)$mrvi_distances, d)
  skip_if_not_installed("SeuratObject")
  so <- suppressWarnings(SeuratObject::CreateSeuratObject(counts = f$sim$counts))
  so <- addMrVI(so, f$fit, distances = d)
  expect_identical(SeuratObject::Misc(so, "mrvi_distances"), d)
})

test_that("a new fit's write-back removes the results of the fit stored before", {
  skip_if_not_installed("SingleCellExperiment")
  f <- small_fit()
  d <- sampleDistances(f$fit, groups = "labels", mc_samples = 0)
  res <- without_power_warnings(cellAssociation(f$fit, stats::setNames(c("a", "a", "b", "b", "b"), f$fit@samples),
                                                cells = 1:20, permutations = 0, mc_samples = 0))
  other <- mrvi(f$sim$counts, flavour = "linear", sample = f$sim$sample, max_epochs = 1, seed = 99, n_threads = 1,
                verbose = FALSE)
  sce <- SingleCellExperiment::SingleCellExperiment(list(counts = f$sim$counts))
  sce <- addMrVI(sce, f$fit, distances = d, association = res)
  expect_message(again <- addMrVI(sce, f$fit), NA)  # the same fit: nothing removed
  expect_identical(S4Vectors::metadata(again)$mrvi_distances, d)
  SummarizedExperiment::colData(sce)$mrvi_arm_q <- 1
  S4Vectors::metadata(sce)$mrvi <- other
  expect_message(sce <- addMrVI(sce, f$fit), "held results of another fit, now removed", class = "mrvi_replaced_columns")
  expect_null(S4Vectors::metadata(sce)$mrvi_distances)
  expect_false(any(grepl("^mrvi_.*_q$", names(SummarizedExperiment::colData(sce)))))
  skip_if_not_installed("SeuratObject")
  so <- suppressWarnings(SeuratObject::CreateSeuratObject(counts = f$sim$counts))
  so <- addMrVI(so, f$fit, distances = d, association = res)
  tools <- methods::slot(so, "tools")
  tools[["addMrVI"]] <- other
  methods::slot(so, "tools") <- tools
  expect_message(so <- addMrVI(so, f$fit), "now removed", class = "mrvi_replaced_columns")
  expect_null(SeuratObject::Misc(so, "mrvi_distances"))
  expect_false(any(grepl("^mrvi_.*_q$", names(so[[]]))))
  # a cell column named as a reduction would make Seurat skip it: refused
  fresh <- suppressWarnings(SeuratObject::CreateSeuratObject(counts = f$sim$counts))
  fresh$mrvi_u <- "mine"
  expect_error(addMrVI(fresh, f$fit), "cell column \"mrvi_u\"", class = "mrvi_error")
  # duplicated cell names cannot be matched
  dup <- sce
  colnames(dup)[2] <- colnames(dup)[1]
  expect_error(addMrVI(dup, f$fit), "1 duplicated cell name", class = "mrvi_error")
})

test_that("addMrVI refuses results that are not the fit's", {
  skip_if_not_installed("SingleCellExperiment")
  f <- small_fit()
  sce <- SingleCellExperiment::SingleCellExperiment(list(counts = f$sim$counts))
  cells <- sampleDistances(f$fit, cells = 1:3, mc_samples = 0)
  expect_identical(S4Vectors::metadata(addMrVI(sce, f$fit, distances = cells))$mrvi_distances, cells)
  expect_error(addMrVI(sce, f$fit, distances = 1:3), "`distances` must be the result of `sampleDistances\\(\\)`",
               class = "mrvi_error")
  expect_error(addMrVI(sce, f$fit, association = data.frame(a = 1)), "`association` must be the result of `cellAssociation\\(\\)`",
               class = "mrvi_error")
  expect_error(addMrVI(sce, f$fit, differential = list()), "`differential` must be the result of `differentialExpression\\(\\)`",
               class = "mrvi_error")
  # a groupAssociation() or differentialExpression() result has the columns but no cells
  # (all-NA columns were written); baseline distances are not the fit's
  cov <- stats::setNames(c("a", "a", "b", "b", "b"), f$fit@samples)
  grp <- without_power_warnings(groupAssociation(f$fit, cov, groups = "labels", permutations = 9, mc_samples = 0))
  expect_error(addMrVI(sce, f$fit, association = grp), "`association` must be the result of `cellAssociation\\(\\)` for `fit`",
               class = "mrvi_error")
  pb <- pseudobulkDistances(f$sim$counts, f$sim$sample, groups = f$sim$cell_type)
  expect_error(addMrVI(sce, f$fit, distances = pb), "not of a baseline", class = "mrvi_error")
  # a cellAssociation() result as a plain data.frame is still one
  ca <- without_power_warnings(cellAssociation(f$fit, cov, cells = 1:5, permutations = 9, mc_samples = 0))
  plain <- addMrVI(sce, f$fit, association = as.data.frame(ca))
  expect_equal(plain$mrvi_covariate_q[1:5], ca$q_value)
})

test_that("per-cell results land by cell name; cells the fit did not use get NA", {
  skip_if_not_installed("SingleCellExperiment")
  f <- small_fit()
  fit <- f$fit
  extra <- Matrix::Matrix(0, nrow(f$sim$counts), 2, dimnames = list(rownames(f$sim$counts), c("x1", "x2")),
                          sparse = TRUE)
  counts <- cbind(f$sim$counts, extra)[, c(401, 1:200, 402, 201:400)]
  cells <- rownames(fit@u_mean)
  tested <- cells[c(5, 10, 300)]
  association <- S4Vectors::DataFrame(statistic = c(0.1, 0.2, 0.3), p_value = c(0.01, 0.5, 0.9),
                                      q_value = c(0.03, 0.6, 0.9), row.names = tested)
  S4Vectors::metadata(association)$covariate <- "disease state"
  differential <- data.frame(covariate = rep(c("age", "sex"), each = 2), cell = cells[c(1, 2, 1, 3)],
                             effect_size = c(1, 2, 3, 4), q_value = c(0.1, 0.2, 0.3, 0.4))
  sce <- SingleCellExperiment::SingleCellExperiment(list(counts = counts))
  # a DE result of other cells (another fit's) would write all-NA columns
  foreign <- transform(differential, cell = paste0("other", seq_along(cell)))
  expect_error(suppressMessages(addMrVI(sce, fit, differential = foreign)), "none of its cells is the fit's", class = "mrvi_error")
  expect_message(sce <- addMrVI(sce, fit, association = association, differential = differential),
                 "2 cells of `object` are not in the fit", class = "mrvi_unfitted_cells")
  # an earlier result's columns (or the user's) of the same names are replaced, and said so
  expect_message(again <- addMrVI(sce, fit, association = association), "Replacing the cell columns",
                 class = "mrvi_replaced_columns")
  expect_identical(again$mrvi_disease.state_q, sce$mrvi_disease.state_q)
  u <- SingleCellExperiment::reducedDim(sce, "MrVI_u")
  expect_equal(rownames(u), colnames(counts))
  expect_true(all(is.na(u[c("x1", "x2"), ])))
  expect_equal(u[cells, ], mrviLatent(fit))
  expect_equal(sce$mrvi_disease.state_q[match(tested, colnames(sce))], c(0.03, 0.6, 0.9))
  expect_equal(sum(!is.na(sce$mrvi_disease.state_statistic)), 3)
  expect_equal(sce$mrvi_de_age_effect[match(cells[1:2], colnames(sce))], c(1, 2))
  expect_equal(sce$mrvi_de_sex_q[match(cells[c(1, 3)], colnames(sce))], c(0.3, 0.4))
  expect_true(is.na(sce$mrvi_de_sex_q[match(cells[2], colnames(sce))]))
  # names that coincide once syntactic ("arm x", "arm.x"; an association on
  # "de_x" and DE on "x") keep every result
  clashing <- data.frame(covariate = c("arm x", "arm.x", "x"), cell = cells[1], effect_size = 1:3,
                         q_value = c(0.1, 0.2, 0.3))
  de_x <- association
  S4Vectors::metadata(de_x)$covariate <- "de_x"
  expect_message(both <- addMrVI(SingleCellExperiment::SingleCellExperiment(list(counts = counts)), fit,
                                 association = de_x, differential = clashing), "renamed")
  first <- match(cells[1], colnames(both))
  expect_equal(c(both$mrvi_de_arm.x_effect[first], both$mrvi_de_arm.x.1_effect[first]), c(1, 2))
  expect_equal(both$mrvi_de_x_q.1[first], 0.3)
  expect_equal(both$mrvi_de_x_q[match(tested, colnames(both))], c(0.03, 0.6, 0.9))
  skip_if_not_installed("SeuratObject")
  so <- suppressWarnings(SeuratObject::CreateSeuratObject(counts = counts))
  so <- addMrVI(so, fit, association = association)
  expect_equal(unname(so$mrvi_disease.state_q[tested]), c(0.03, 0.6, 0.9))
  expect_true(is.na(so$mrvi_disease.state_q[["x1"]]))
  emb <- SeuratObject::Embeddings(so, "mrvi_u")
  expect_equal(rownames(emb), colnames(counts))
  expect_true(all(is.na(emb[c("x1", "x2"), ])))
  expect_equal(unname(emb[cells, ]), unname(mrviLatent(fit)))
})

test_that("addMrVI refuses objects that are not the fit's", {
  fit <- small_fit()$fit
  expect_error(addMrVI(list(), fit), "`object` shares no cell names", class = "mrvi_error")
  m <- small_counts()
  expect_error(addMrVI(m, fit), "`object` shares no cell names", class = "mrvi_error")
  colnames(m)[1] <- rownames(fit@u_mean)[1]
  expect_error(addMrVI(m, fit), "`object` must be a", class = "mrvi_error")
  expect_error(addMrVI(m, "fit"), "`fit` must be a", class = "mrvi_error")
})

test_that("addMrVI refuses a fit of other cells under the same names, and allows renamed samples", {
  skip_if_not_installed("SingleCellExperiment")
  a <- simulateNested(n_cells = 300, n_genes = 40, n_samples = 6, n_sites = 2, n_cell_types = 2, seed = 1)
  b <- simulateNested(n_cells = 300, n_genes = 40, n_samples = 6, n_sites = 2, n_cell_types = 2, seed = 99)
  expect_identical(colnames(a), colnames(b))  # barcodes repeat between runs
  fit_b <- mrvi(b, sample = "sample", max_epochs = 2, verbose = FALSE, n_threads = 1)
  expect_error(addMrVI(a, fit_b), "not made from `object`", class = "mrvi_error")
  # other counts under the same names and the same samples ("<barcode>-<library>" names)
  same_samples <- a
  SummarizedExperiment::colData(same_samples) <- SummarizedExperiment::colData(b)
  expect_error(addMrVI(same_samples, fit_b), "not made from `object`", class = "mrvi_error")
  # the fit's own object with its samples renamed or merged since, or some missing: the same counts
  b$sample <- factor(paste0("donor_", b$sample))
  expect_s4_class(addMrVI(b, fit_b), "SingleCellExperiment")
  b$sample[1:20] <- NA
  b$sample[b$sample %in% c("donor_s01", "donor_s02")] <- "donor_s01"
  expect_s4_class(addMrVI(b, fit_b), "SingleCellExperiment")
})

test_that("an object without cell names is matched by position, as mrvi() named its cells", {
  skip_if_not_installed("SingleCellExperiment")
  sim <- mrvi:::example_counts()
  sce <- SingleCellExperiment::SingleCellExperiment(list(counts = unname(sim$counts)),
                                                    colData = data.frame(s = sim$sample))
  fit <- mrvi(sce, sample = "s", max_epochs = 2, n_threads = 1, verbose = FALSE)
  expect_message(out <- addMrVI(sce, fit), "matched to the fit's by position")
  expect_equal(unname(SingleCellExperiment::reducedDim(out, "MrVI_u")), unname(mrviLatent(fit)))
  # a fit of a subset names its cells by their positions in the subset: not the object's
  part <- mrvi(sce[, 11:ncol(sce)], sample = "s", max_epochs = 1, n_threads = 1, verbose = FALSE)
  expect_error(addMrVI(sce, part), "made from 290 cells and `object` has 300", class = "mrvi_error")
})

# addMrVI() stores the fit under Tool(so, slot = "addMrVI") however it is
# called (`Tool<-` named the slot after the call: "mrvi::addMrVI", "", "FUN").
test_that("the fit is in Tool(slot = \"addMrVI\") however addMrVI() is called", {
  skip_if_not_installed("SeuratObject")
  m <- small_counts()
  fit <- mrvi(m, small_samples(), max_epochs = 1, n_threads = 1, seed = 1, verbose = FALSE)
  so <- suppressWarnings(SeuratObject::CreateSeuratObject(counts = m))
  for (res in list(mrvi::addMrVI(so, fit), do.call(addMrVI, list(so, fit)),
                   lapply(list(so), addMrVI, fit = fit)[[1]])) {
    expect_s4_class(SeuratObject::Tool(res, slot = "addMrVI"), "MrVIFit")
    expect_identical(names(methods::slot(res, "tools")), "addMrVI")
  }
})

test_that("a Seurat object's reductions are tagged with the assay the fit read, not the default one", {
  skip_if_not_installed("SeuratObject")
  m <- small_counts()
  so <- suppressWarnings(SeuratObject::CreateSeuratObject(counts = m))
  so[["ADT"]] <- suppressWarnings(SeuratObject::CreateAssayObject(counts = m[1:10, ]))
  SeuratObject::DefaultAssay(so) <- "ADT"
  so$donor <- small_samples()
  fit <- mrvi(so, sample = "donor", assay = "RNA", max_epochs = 1, n_threads = 1, seed = 1, verbose = FALSE)
  expect_identical(fit@config$seurat_assay, "RNA")
  out <- addMrVI(so, fit)
  expect_identical(SeuratObject::DefaultAssay(out[["mrvi_u"]]), "RNA")
  expect_identical(SeuratObject::DefaultAssay(out), "ADT")
})
