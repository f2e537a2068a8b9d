# Every bad call gets an R error that names the argument at fault.
m <- small_counts()
s <- small_samples()
neg <- m; neg[1, 1] <- -1
frac <- m; frac[2, 3] <- 0.5
nonfinite <- m; nonfinite[3, 4] <- NA

bad_calls <- list(
  list(quote(mrviData(list(1), s)), "`x`.*class <list>"),
  list(quote(mrviData(letters, s)), "`x`"),
  list(quote(mrviData(matrix("a", 2, 2), 1:2)), "`x` must be a numeric matrix"),
  list(quote(mrviData(m)), "`sample` is required"),
  list(quote(mrviData(m, sample = "donor")), "`sample`.*column name"),
  list(quote(mrviData(m, sample = s[-1])), "`sample` must have one value per cell"),
  list(quote(mrviData(Matrix::t(m), sample = s)), "`sample`.*cells x genes"),
  list(quote(mrviData(m, sample = replace(s, 2, NA))), "`sample` has 1 NA"),
  list(quote(mrviData(m, sample = s, batch = replace(s, 3, NA))), "`batch` has 1 NA"),
  list(quote(mrviData(m, sample = s, labels = s[1:3])), "`labels` must have one value per cell"),
  list(quote(mrviData(m, sample = rep("A", 24))), "`sample` must have at least 2 samples"),
  list(quote(mrviData(neg, sample = s)), "`x` must hold raw counts: 1 value is negative.*gene1, cell1"),
  list(quote(mrviData(frac, sample = s)), "`x` must hold raw counts: 1 value is not whole.*gene2, cell3"),
  list(quote(mrviData(nonfinite, sample = s)), "`x` must hold raw counts: 1 value is missing"),
  list(quote(mrviData(m, sample = s, foo = 1)), "Unknown argument.*`foo`"),
  list(quote(mrvi(m, s, n_latent = 0)), "`n_latent`"),
  list(quote(mrvi(m, s, max_epochs = -1)), "`max_epochs`"),
  list(quote(mrvi(m, s, batch_size = 1)), "`batch_size`"),
  list(quote(mrvi(m, s, lr = -1)), "`lr`"),
  list(quote(mrvi(m, s, validation_fraction = 0.9)), "`validation_fraction`"),
  list(quote(mrvi(m, s, device = "tpu")), "`device`.*unknown device"),
  list(quote(mrvi(m, s, seed = 1.5)), "`seed`"),
  list(quote(mrvi(m, s, verbose = NA)), "`verbose`"),
  list(quote(mrvi(m, s, n_threads = 0)), "`n_threads`"),
  list(quote(mrviLatent("not a fit")), "`fit` must be a <MrVIFit>"),
  list(quote(mrviSetThreads("two")), "`n`")
)

test_that("bad input gives an error naming the argument, and leaves R running", {
  for (case in bad_calls) {
    expect_error(eval(case[[1]]), case[[2]], info = deparse(case[[1]]))
  }
  expect_equal(dim(m), c(30L, 24L))  # the user's object is untouched
})

test_that("errors from mrvi() report mrvi() and carry the class mrvi_error", {
  e <- tryCatch(mrvi(m, sample = s[-1], verbose = FALSE), error = identity)
  expect_s3_class(e, "mrvi_error")
  expect_match(deparse(conditionCall(e))[1], "^mrvi\\(")
})

test_that("a SingleCellExperiment with an unknown column names it", {
  skip_if_not_installed("SingleCellExperiment")
  sce <- SingleCellExperiment::SingleCellExperiment(list(counts = m))
  expect_error(mrvi(sce, sample = "donor", verbose = FALSE), "`sample` = \"donor\" is not a column")
})
