# Covariates given twice, of a class that is neither numeric nor categorical,
# or for samples the fit does not have are refused by name (they were reported
# as collinear, or ignored silently).
local({
  m <- small_counts(n_cells = 48)
  s <- rep(paste0("s", 1:6), length.out = 48)
  site <- rep(c("a", "b"), length.out = 48)
  chem <- rep(c("v2", "v2", "v3", "v3"), length.out = 48)
  fit <- mrvi(m, s, batch = data.frame(site = site, chem = chem), max_epochs = 1, n_threads = 1,
              seed = 1, verbose = FALSE)
  tab <- data.frame(sample = fit@samples, grp = rep(c("x", "y"), 3))

  test_that("differentialExpression() names a duplicated covariate, a Date and an unknown sample", {
    de <- function(cv) differentialExpression(fit, cv, cells = 1:3, mc_samples = 0, normalize = FALSE)
    expect_error(de(c("grp", "grp")), "more than once", class = "mrvi_error")
    expect_error(de(data.frame(tab, d = as.Date("2020-01-01") + c(1, 50, 90, 3, 200, 7))),
                 "`covariates`: covariate d is of class .*Date.*as.numeric", class = "mrvi_error")
    expect_error(de(rbind(tab, data.frame(sample = "zzz", grp = "x"))), "not fitted on: \"zzz\"", class = "mrvi_error")
    expect_error(de(data.frame(tab, grp = tab$grp, check.names = FALSE)), "more than once", class = "mrvi_error")
    expect_s4_class(de(transform(tab, d = as.numeric(as.Date("2020-01-01") + c(1, 50, 90, 3, 200, 7)))), "DataFrame")
    # a factor grp with level "y" and a covariate grpy would share coefficient "grpy"
    expect_error(de(data.frame(tab, grpy = c(1, 2, 3, 1, 5, 2))),
                 "Covariates grp and grpy give coefficients of the same name: \"grpy\"", class = "mrvi_error")
  })

  test_that("unused levels of a batch covariate are left out with several covariates, as with one", {
    site_f <- factor(site, levels = c("a", "b", "zz"))
    d <- mrviData(m, s, batch = data.frame(site = site_f, chem = chem))
    expect_identical(levels(d$nuisance$factors$site), c("a", "b"))
    expect_identical(levels(mrviData(m, s, batch = site_f)$batch), c("a", "b"))
    f2 <- mrvi(m, s, batch = data.frame(site = site_f, chem = chem), max_epochs = 1, n_threads = 1, seed = 1, verbose = FALSE)
    expect_identical(f2@batches, fit@batches)
    expect_identical(f2@weights, fit@weights)
  })

  test_that("covariate names that are not syntactic are kept as given", {
    f3 <- mrvi(m, s, batch = data.frame(`my site` = site, chem = chem, check.names = FALSE),
               continuous_covariates = list(`pct mito` = seq_len(48) / 48), max_epochs = 1, n_threads = 1,
               seed = 1, verbose = FALSE)
    expect_true(all(c("my site", "pct mito") %in% names(f3@cell_data)))
    e <- counterfactualExpression(f3, cells = 1:2, sample = 1, batch = list(`my site` = "b"), average = "chem")
    expect_true(all(is.finite(e)))
  })

  test_that("counterfactualExpression() refuses a covariate given twice in batch", {
    expect_error(counterfactualExpression(fit, cells = 1, sample = 1, batch = list(chem = "v2", chem = "v3")),
                 "`batch` names covariate \"chem\" more than once", class = "mrvi_error")
  })
})
