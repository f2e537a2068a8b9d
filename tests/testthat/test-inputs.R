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
  # (and not again as a copy named "batch")
  expect_false("batch" %in% names(d3$sample_table))
  expect_equal(as.character(mrviData(m, sample = s, batch = rep(c("x", "y", "x"), length.out = 24))$sample_table$batch),
               c("x", "y", "x"))
  expect_error(mrviData(sce, sample = "donor", assay = "logcounts"), "`assay`")
  # an assay of normalised values: the error names it
  SummarizedExperiment::assay(sce, "logcounts") <- log1p(m)
  expect_error(mrviData(sce, sample = "donor", assay = "logcounts"),
               "`x`'s assay \"logcounts\" must hold raw counts: .* not whole numbers", class = "mrvi_error")
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
  # addMrVI()'s results of an earlier fit are not covariates, even when constant within samples
  sce$mrvi_age_q <- 1
  sce$mrvi_de_age_effect <- c(A = 1, B = 2, C = 3)[s]
  expect_false(any(c("mrvi_age_q", "mrvi_de_age_effect") %in% names(mrviData(sce, sample = "donor")$sample_table)))
  # metadata columns named as the table's own are kept, renamed, with a message
  sce$sample <- c(A = "P1", B = "P1", C = "P2")[s]
  sce$n_cells <- c(A = 1, B = 2, C = 2)[s]
  expect_message(tab <- mrviData(sce, sample = "donor")$sample_table, "kept as \"sample.1\" and \"n_cells.1\"")
  expect_equal(tab$sample.1, c("P1", "P1", "P2"))
  expect_equal(tab$n_cells.1, c(1, 2, 2))
  expect_equal(tab$n_cells, c(8L, 8L, 8L))
})

test_that("a metadata column named as one of the fit's own but holding other values is kept, renamed", {
  m <- small_counts()
  s <- small_samples()
  skip_if_not_installed("SingleCellExperiment")
  run <- rep(c("run1", "run2"), length.out = 24)
  sce <- SingleCellExperiment::SingleCellExperiment(
    list(counts = m), colData = S4Vectors::DataFrame(donor = s, site = rep(c("x", "y", "x"), length.out = 24), batch = run))
  expect_message(d <- mrviData(sce, sample = "donor", batch = "site"), "\"batch\" is kept as \"batch.1\"")
  expect_identical(d$cell_meta$batch.1, run)
  expect_identical(as.character(d$batch), sce$site)
  # the fit keeps both: `groups = "batch.1"` groups by the user's column
  fit <- suppressMessages(mrvi(sce, sample = "donor", batch = "site", max_epochs = 1, n_threads = 1, verbose = FALSE))
  expect_identical(fit@cell_data$batch.1, run)
  expect_identical(as.character(fit@cell_data$batch), sce$site)
  # the column the model uses, under its own name, is not renamed
  expect_no_message(d2 <- mrviData(sce, sample = "donor", batch = "batch"))
  expect_false("batch.1" %in% names(d2$cell_meta))
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


test_that("HDF5-backed counts (a matrix or a saved SummarizedExperiment) fit as the same counts in memory with the same block shuffle", {
  skip_if_not_installed("HDF5Array")
  sim <- mrvi:::example_counts()
  h5 <- HDF5Array::writeHDF5Array(sim$counts, tempfile(fileext = ".h5"), "counts")
  dimnames(h5) <- dimnames(sim$counts)
  dir <- tempfile("se")
  se <- SummarizedExperiment::SummarizedExperiment(list(counts = sim$counts),
                                                   colData = S4Vectors::DataFrame(donor = sim$sample))
  HDF5Array::saveHDF5SummarizedExperiment(se, dir)
  on_disk <- HDF5Array::loadHDF5SummarizedExperiment(dir)
  fit <- function(x, sample, ...) mrvi(x, sample = sample, max_epochs = 2, n_threads = 1, verbose = FALSE, ...)
  # counts on disk: blocks of a 20th of the 300 cells (R/on-disk.R)
  in_memory <- fit(sim$counts, sim$sample, block_cells = 15)
  expect_identical(fit(h5, sim$sample)@weights, in_memory@weights)
  expect_identical(fit(on_disk, "donor")@weights, in_memory@weights)
})

test_that("zeros stored explicitly in a dgCMatrix train as the zeros they are", {
  # (the likelihood read every stored entry as a count of at least 1: a panic,
  # or another gene's value)
  sim <- mrvi:::example_counts()
  set.seed(3)
  down <- sim$counts
  down@x <- as.numeric(stats::rbinom(length(down@x), as.integer(down@x), 0.5))
  expect_gt(sum(down@x == 0), 0)
  for (flavour in c("linear", "attention")) {
    fit <- function(x) mrvi(x, sim$sample, flavour = flavour, max_epochs = 2, n_threads = 1, verbose = FALSE)
    stored <- fit(down)
    expect_identical(stored@weights, fit(Matrix::drop0(down))@weights)
    expect_identical(stored@u_mean, fit(Matrix::drop0(down))@u_mean)
  }
})

test_that("logical and pattern matrices are refused as counts; a numeric diagonal matrix is read", {
  m <- small_counts()
  s <- small_samples()
  expect_error(mrviData(m > 0, sample = s), "`x` must hold numeric counts.*lgCMatrix", class = "mrvi_error")
  expect_error(mrviData(methods::as(m > 0, "nMatrix"), sample = s), "`x` must hold numeric counts.*ngCMatrix",
               class = "mrvi_error")
  expect_error(mrviData(as.matrix(m) > 0, sample = s), "`x` must be a numeric matrix", class = "mrvi_error")
  d <- Matrix::Diagonal(4, x = c(1, 2, 3, 4))
  dimnames(d) <- list(paste0("g", 1:4), paste0("c", 1:4))
  expect_identical(mrviData(d, sample = c("a", "a", "b", "b"))$counts, methods::as(as.matrix(d), "dgCMatrix"))
})

test_that("a 1-d array of samples, named by cell, is read as a named vector", {
  sim <- mrvi:::example_counts()
  v <- array(as.character(sim$sample), dim = ncol(sim$counts), dimnames = list(colnames(sim$counts)))
  expect_identical(unname(mrviData(sim$counts, sample = v[rev(seq_along(v))])$sample), mrviData(sim$counts, sample = sim$sample)$sample)
})

test_that("empty names are refused in sample, batch and labels", {
  m <- small_counts()
  s <- small_samples()
  expect_error(mrviData(m, sample = replace(s, 3, "")), "`sample` has 1 empty value.*cell3", class = "mrvi_error")
  expect_error(mrviData(m, sample = s, batch = factor(replace(rep("x", 24), 2, ""))), "`batch` has 1 empty value",
               class = "mrvi_error")
  expect_error(mrviData(m, sample = s, labels = replace(s, 1:2, "")), "`labels` has 2 empty values",
               class = "mrvi_error")
  # NA as a level of a factor (addNA()) is an NA value too
  with_na <- factor(replace(s, 4:5, NA), exclude = NULL)
  for (arg in c("sample", "batch", "labels")) {
    given <- list(sample = s, batch = NULL, labels = NULL)
    given[[arg]] <- with_na
    expect_error(do.call(mrviData, c(list(m), given)), sprintf("`%s` has 2 NA values.*cell4", arg), class = "mrvi_error")
  }
})

test_that("unused levels of a sample factor are left out as such", {
  m <- small_counts()
  s <- factor(small_samples(), levels = c("A", "B", "C", "Z"))
  expect_message(data <- mrviData(m, sample = s), "Leaving out sample \"Z\": a level of `sample` without cells")
  expect_equal(levels(data$sample), c("A", "B", "C"))
})

test_that("text ids are ordered in byte order, whatever the locale's collation", {
  m <- small_counts()
  ids <- c(A = "b", B = "B", C = "a")[small_samples()]
  old <- Sys.getlocale("LC_COLLATE")
  on.exit(Sys.setlocale("LC_COLLATE", old))
  orders <- lapply(c("C", "C.UTF-8", "en_US.UTF-8"), function(locale) {
    if (!nzchar(suppressWarnings(Sys.setlocale("LC_COLLATE", locale)))) return(NULL)
    levels(mrviData(m, sample = unname(ids))$sample)
  })
  for (o in Filter(Negate(is.null), orders)) expect_equal(o, c("B", "a", "b"))
})

test_that("numeric sample ids keep every digit, and distinct numbers stay distinct", {
  m <- small_counts()
  ids <- c(A = 2019010100000001, B = 2019010100000002, C = 100000)[small_samples()]
  data <- mrviData(m, sample = unname(ids))
  expect_equal(levels(data$sample), c("100000", "2019010100000001", "2019010100000002"))
  close <- c(A = 0.1 + 0.2, B = 0.3, C = 1.5)[small_samples()]
  expect_error(mrviData(m, sample = unname(close)), "`sample` has 3 distinct values that print as 2 names",
               class = "mrvi_error")
  expect_equal(levels(mrviData(m, sample = c(A = 0.25, B = 1, C = -2)[small_samples()])$sample),
               c("-2", "0.25", "1"))
})

test_that("the count of bad values agrees with it in number", {
  m <- small_counts()
  s <- small_samples()
  m[1, 1] <- 0.5
  expect_error(mrviData(m, sample = s), "1 value is not whole, e.g.", class = "mrvi_error")
  m[2, 1] <- 0.5
  expect_error(mrviData(m, sample = s), "2 values are not whole numbers, e.g.", class = "mrvi_error")
})

test_that("counts above 2^24 are refused, totals above the integer range are not", {
  m <- small_counts(n_genes = 200)
  s <- small_samples()
  for (big in c(1e300, 1e12, 2^24 + 1)) {
    m[5, 4] <- big
    expect_error(mrviData(m, sample = s), "`x` must hold raw counts: 1 value is above 16,777,216 .*\\(gene5, cell4\\)",
                 class = "mrvi_error")
  }
  m[, 4] <- 2^24
  expect_gt(sum(m[, 4]), .Machine$integer.max)
  expect_identical(unname(mrviData(m, sample = s)$library_size[4]), sum(m[, 4]))
})

test_that("covariates named by cell are matched by name: vectors, data.frame and matrix rows; partial names are refused", {
  m <- small_counts()
  s <- small_samples()
  site <- rep(c("x", "y"), 12)
  names(s) <- names(site) <- colnames(m)
  perm <- c(24:13, 1:12)
  d0 <- mrviData(m, sample = unname(s), batch = unname(site))
  # a data.frame whose row names are the cells, in another order
  df <- data.frame(site = site, row.names = colnames(m))[perm, , drop = FALSE]
  expect_identical(mrviData(m, sample = s[perm], batch = df)$nuisance, d0$nuisance)
  # a matrix of continuous covariates with cell row names, in another order
  age <- stats::setNames(seq(20, 66, by = 2), colnames(m))
  mm <- cbind(age = age, dose = rev(age))[perm, ]
  expect_identical(mrviData(m, sample = s, continuous_covariates = mm)$nuisance$continuous,
                   mrviData(m, sample = s, continuous_covariates = cbind(age = unname(age), dose = unname(rev(age))))$nuisance$continuous)
  # names that are some cells' but not each cell once
  s2 <- s[perm]
  names(s2)[1] <- "not_a_cell"
  expect_error(mrviData(m, sample = s2), "`sample` is named by cell, but not once by each cell.*1 name is not a cell: 'not_a_cell'",
               class = "mrvi_error")
  s3 <- s
  names(s3)[2] <- names(s3)[1]
  expect_error(mrviData(m, sample = s3), "1 name is given more than once: 'cell1'", class = "mrvi_error")
  # names that are no cell's: by position, as before
  expect_identical(unname(mrviData(m, sample = stats::setNames(unname(s), paste0("x", 1:24)))$sample), d0$sample)
  # so are the numbers R gives a subset's rows, whatever the cells are called
  meta <- data.frame(site = rep(unname(site), each = 2))[seq(2, 48, by = 2), , drop = FALSE]
  m_num <- m
  colnames(m_num) <- 1:24
  expect_identical(mrviData(m_num, sample = unname(s), batch = meta)$nuisance, d0$nuisance)
})

test_that("several batch covariates whose levels contain ':' keep their combinations apart", {
  m <- small_counts()
  k <- rep(1:2, 12)
  d <- mrviData(m, sample = small_samples(), batch = list(b1 = c("a:b", "a")[k], b2 = c("c", "b:c")[k]))
  expect_equal(nlevels(d$batch), 2)
  expect_identical(as.integer(d$batch), as.integer(interaction(d$nuisance$factors, drop = TRUE)))
})

test_that("odd covariate types and bad counts get errors that name the argument", {
  m <- small_counts()
  s <- small_samples()
  # an NA level no cell has is dropped; dates become levels as they print
  expect_identical(mrviData(m, sample = addNA(factor(s)))$sample, mrviData(m, sample = s)$sample)
  dates <- as.Date("2024-01-01") + match(s, c("A", "B", "C"))
  expect_identical(levels(mrviData(m, sample = dates)$sample), c("2024-01-02", "2024-01-03", "2024-01-04"))
  expect_error(mrviData(m, sample = s, batch = rep(c("x", "y"), 10)),
               "`batch` has 20 values: neither one per cell \\(24", class = "mrvi_error")
  expect_error(mrviData(m, sample = s, continuous_covariates = as.character(1:20)),
               "`continuous_covariates` has 20 values: neither one number per cell", class = "mrvi_error")
  # slots whose column pointers run past the non-zeros: a classed input error, not an internal one
  a <- Matrix::sparseMatrix(i = c(1, 2), j = c(2, 2), x = c(1, 1), dims = c(3, 2), dimnames = list(paste0("g", 1:3), c("a", "b")))
  a@p[2] <- 5L
  expect_error(mrviData(a, sample = c("x", "y")), "`x` is not a valid sparse matrix", class = "mrvi_input_error")
  skip_if_not_installed("SingleCellExperiment")
  sce <- SingleCellExperiment::SingleCellExperiment(list(m))
  expect_identical(mrviData(sce, sample = s, assay = 1)$counts, mrviData(m, sample = s)$counts)
  expect_error(mrviData(sce, sample = s), "which have no names: give a position", class = "mrvi_error")
  chr <- as.matrix(m)
  storage.mode(chr) <- "character"
  expect_error(mrviData(SingleCellExperiment::SingleCellExperiment(list(counts = chr)), sample = s),
               "`assay` must hold numeric counts.*character", class = "mrvi_error")
})
