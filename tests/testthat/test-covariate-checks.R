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
                 "Covariate d is of class .*Date.*as.numeric", class = "mrvi_error")
    expect_error(de(rbind(tab, data.frame(sample = "zzz", grp = "x"))), "not fitted on: \"zzz\"", class = "mrvi_error")
    expect_error(de(data.frame(tab, grp = tab$grp, check.names = FALSE)), "more than once", class = "mrvi_error")
    expect_s4_class(de(transform(tab, d = as.numeric(as.Date("2020-01-01") + c(1, 50, 90, 3, 200, 7)))), "DataFrame")
  })

  test_that("counterfactualExpression() refuses a covariate given twice in batch", {
    expect_error(counterfactualExpression(fit, cells = 1, sample = 1, batch = list(chem = "v2", chem = "v3")),
                 "`batch` names covariate \"chem\" more than once", class = "mrvi_error")
  })
})
