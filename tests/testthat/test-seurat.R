# R/seurat.R: counts out of Seurat v4 and v5 objects.

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

test_that("on-disk v5 layers stay on disk and fit as the same counts in memory (layer functions mocked)", {
  skip_if_not_installed("HDF5Array")
  # an Assay5 whose counts are split by sample into HDF5-backed layers, one with
  # fewer features, stored in an order other than the object's cells
  sim <- mrvi:::example_counts()
  m <- sim$counts
  s <- as.character(sim$sample)
  parts <- lapply(split(seq_len(ncol(m)), s), function(j) m[, rev(j), drop = FALSE])
  m[1:2, s == levels(sim$sample)[2]] <- 0
  parts[[2]] <- parts[[2]][-(1:2), ]
  on_disk <- lapply(parts, function(p) {
    HDF5Array::writeHDF5Array(as.matrix(p), tempfile(fileext = ".h5"), "counts", with.dimnames = TRUE)
  })
  fake <- structure(list(layers = paste0("counts.", names(parts)), features = rownames(m)), class = "fake_assay5")
  registerS3method("dimnames", "fake_assay5", function(x) list(x$features, NULL))
  got <- mrvi:::assay5_counts(fake, "counts", "RNA", colnames(m), call = NULL, layers = function(a) a$layers,
                              layer_data = function(a, layer) on_disk[[sub("counts.", "", layer, fixed = TRUE)]])
  expect_s4_class(got, "DelayedArray")
  expect_identical(dimnames(got), dimnames(m))
  expect_equal(as.matrix(got), as.matrix(m))
  fit <- function(x) mrvi(x, sample = s, max_epochs = 2, n_threads = 1, block_cells = 40, verbose = FALSE)
  expect_identical(fit(got)@weights, fit(m)@weights)
})

test_that("a Seurat assay name reads that assay's counts; a bad one is named", {
  skip_if_not_installed("SeuratObject")
  m <- small_counts()
  so <- suppressWarnings(SeuratObject::CreateSeuratObject(counts = m))
  so$donor <- small_samples()
  expect_identical(mrviData(so, sample = "donor", assay = "RNA")$counts, mrviData(m, small_samples())$counts)
  expect_error(mrviData(so, sample = "donor", assay = "spliced"), "`assay`", class = "mrvi_error")
  expect_error(mrviData(so, sample = "donor", assay = c("a", "b")), "`assay` must be one string", class = "mrvi_error")
  # normalised values: the error names the layer read, not only `x`
  so <- SeuratObject::SetAssayData(so, slot = "data", new.data = log1p(m))
  expect_error(mrviData(so, sample = "donor", assay = "data"),
               "`x`'s assay \"data\" must hold raw counts: .* not whole numbers", class = "mrvi_error")
})

test_that("a fit read from another layer of a Seurat assay reads that layer again for new cells and write-back", {
  skip_if_not_installed("SeuratObject")
  m <- small_counts()
  so <- suppressWarnings(SeuratObject::CreateSeuratObject(counts = m))
  so$donor <- small_samples()
  # other whole-number counts in the "data" slot (downsampled)
  set.seed(3)
  down <- m
  down@x <- as.numeric(stats::rbinom(length(down@x), as.integer(down@x), 0.5))
  so <- SeuratObject::SetAssayData(so, slot = "data", new.data = down)
  fit <- mrvi(so, sample = "donor", assay = "data", flavour = "linear", max_epochs = 2, n_threads = 1, verbose = FALSE)
  again <- mrviLatent(fit, x = so, sample = so$donor)
  kept <- rownames(fit@u_mean)
  expect_equal(unname(again[kept, ]), unname(fit@u_mean), tolerance = 1e-5)
  expect_s4_class(addMrVI(so, fit), "Seurat")
})
