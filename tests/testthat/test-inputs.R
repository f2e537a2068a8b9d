test_that("dgCMatrix, matrix and SingleCellExperiment give the same data", {
  m <- small_counts()
  s <- small_samples()
  d1 <- mrviData(m, sample = s)
  d2 <- mrviData(as.matrix(m), sample = s)
  expect_identical(d1$counts, d2$counts)
  expect_equal(nlevels(d1$sample), 3)
  expect_equal(unname(d1$library_size), unname(Matrix::colSums(m)))
  expect_equal(d1$sample_table$n_cells, c(8L, 8L, 8L))
  skip_if_not_installed("SingleCellExperiment")
  sce <- SingleCellExperiment::SingleCellExperiment(
    list(counts = m), colData = S4Vectors::DataFrame(donor = s, site = rep(c("x", "y", "x"), length.out = 24)))
  d3 <- mrviData(sce, sample = "donor", batch = "site")
  expect_identical(d3$counts, d1$counts)
  expect_identical(d3$sample, d1$sample)
  # site is constant within each donor: a sample-level covariate, found automatically
  expect_equal(d3$sample_table$site, c("x", "y", "x"))
  expect_error(mrviData(sce, sample = "donor", assay = "logcounts"), "`assay`")
})

test_that("the sample table keeps only covariates constant within samples", {
  m <- small_counts()
  s <- small_samples()
  skip_if_not_installed("SingleCellExperiment")
  sce <- SingleCellExperiment::SingleCellExperiment(
    list(counts = m), colData = S4Vectors::DataFrame(
      donor = s, age = c(A = 30, B = 40, C = 50)[s], cell_type = rep(c("t1", "t2"), 12)))
  tab <- mrviData(sce, sample = "donor")$sample_table
  expect_equal(tab$age, c(30, 40, 50))
  expect_false("cell_type" %in% names(tab))
})

test_that("empty cells and genes are dropped with a message", {
  m <- small_counts()
  m[, 2] <- 0
  m[5, ] <- 0
  expect_message(d <- mrviData(m, sample = small_samples()), "Dropping 1 cell.*1 gene")
  expect_equal(dim(d$counts), c(29L, 23L))
  expect_equal(d$dropped$cells, "cell2")
  expect_equal(d$dropped$genes, "gene5")
  expect_length(d$sample, 23)
})

test_that("Seurat v4 objects are read through SeuratObject", {
  skip_if_not_installed("SeuratObject")
  m <- small_counts()
  so <- suppressWarnings(SeuratObject::CreateSeuratObject(counts = m))
  so$donor <- small_samples()
  d <- mrviData(so, sample = "donor")
  expect_identical(d$counts, mrviData(m, small_samples())$counts)
  expect_error(mrviData(so, sample = "nope"), "`sample`.*not a column")
})

test_that("Seurat v5 split layers are joined in cell order", {
  skip_if_not_installed("SeuratObject", minimum_version = "5.0.0")
  m <- small_counts()
  so <- SeuratObject::CreateSeuratObject(counts = m)
  so$donor <- small_samples()
  so[["RNA"]] <- split(so[["RNA"]], f = so$donor)
  d <- mrviData(so, sample = "donor")
  expect_identical(d$counts, mrviData(m, small_samples())$counts)
})

test_that("split v5 layers are joined in the object's cell order (SeuratObject's layer functions mocked)", {
  # A stand-in for an Assay5 with counts split by sample into layers "counts.A",
  # "counts.B", "counts.C" (as split(so[["RNA"]], f = so$donor) makes), one of
  # them holding fewer features, plus an unrelated "data" layer.
  m <- small_counts()
  s <- small_samples()
  parts <- lapply(split(seq_len(ncol(m)), s), function(j) m[, j, drop = FALSE])
  parts$B <- parts$B[-(1:3), ]  # a layer without the first three features (all zero there)
  m[1:3, s == "B"] <- 0
  fake <- structure(list(layers = c(paste0("counts.", names(parts)), "data"), features = rownames(m)),
                    class = "fake_assay5")
  layers <- function(a) a$layers
  layer_data <- function(a, layer) {
    if (layer == "data") stop("the data layer must not be read")
    parts[[sub("counts.", "", layer, fixed = TRUE)]]
  }
  dimnames.fake_assay5 <- function(x) list(x$features, NULL)
  registerS3method("dimnames", "fake_assay5", dimnames.fake_assay5)
  cells <- colnames(m)
  got <- mrvi:::assay5_counts(fake, "counts", "RNA", cells, call = NULL,
                              layers = layers, layer_data = layer_data)
  expect_identical(colnames(got), cells)
  expect_equal(as.matrix(got), as.matrix(m))
  expect_error(mrvi:::assay5_counts(fake, "raw", "RNA", cells, call = NULL, layers = layers,
                                    layer_data = layer_data), "no layer \"raw\"")
  expect_error(mrvi:::assay5_counts(fake, "counts", "RNA", c(cells, "extra"), call = NULL,
                                    layers = layers, layer_data = layer_data), "lack 1 cell")
})
