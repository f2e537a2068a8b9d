# Package options are checked where they are read: a bad value is a classed
# error naming the option, never a silent wrong result (an NA task size gave
# all-NA distances; a string switch counted as TRUE).
local({
  m <- small_counts()
  s <- small_samples()
  fit <- mrvi(m, flavour = "linear", s, max_epochs = 1, n_threads = 1, seed = 1, verbose = FALSE)
  with_opt <- function(opt, expr) {
    old <- options(opt)
    on.exit(options(old))
    tryCatch(suppressMessages(expr), error = identity)
  }

  test_that("options(mrvi.task_cells) must be a positive whole number", {
    for (v in list(NA, "a", 0, -1, 1.5, c(10, 20))) {
      e <- with_opt(list(mrvi.task_cells = v), sampleDistances(fit, cells = 1:5, mc_samples = 0))
      expect_s3_class(e, "mrvi_error")
      expect_match(conditionMessage(e), "options(mrvi.task_cells)", fixed = TRUE)
    }
    d <- with_opt(list(mrvi.task_cells = 2), sampleDistances(fit, cells = 1:5, mc_samples = 0))
    expect_false(anyNA(d))
    # also in a call whose work is one task (a typo must not wait for larger data)
    for (e in list(with_opt(list(mrvi.task_cells = 0), mrviLatent(fit)),
                   with_opt(list(mrvi.worker_threads = "a"), sampleDistances(fit, cells = 1:2, mc_samples = 0)))) {
      expect_s3_class(e, "mrvi_error")
      expect_match(conditionMessage(e), "options(mrvi.", fixed = TRUE)
    }
  })

  test_that("options(mrvi.worker_threads) is checked in this process, before the workers", {
    skip_if_not_installed("BiocParallel")
    for (v in list("a", NA, 0, -1, 1.5)) {
      e <- with_opt(list(mrvi.task_cells = 2, mrvi.worker_threads = v),
                    sampleDistances(fit, cells = 1:5, mc_samples = 0,
                                    BPPARAM = BiocParallel::SnowParam(2)))
      expect_s3_class(e, "mrvi_error")
      expect_match(conditionMessage(e), "options(mrvi.worker_threads)", fixed = TRUE)
    }
    # a huge count is capped at the worker's cores (libgomp failed to allocate for 1e9)
    huge <- with_opt(list(mrvi.task_cells = 2, mrvi.worker_threads = 1e9),
                     sampleDistances(fit, cells = 1:5, mc_samples = 0, BPPARAM = BiocParallel::SnowParam(2)))
    expect_identical(huge, sampleDistances(fit, cells = 1:5, mc_samples = 0))
  })

  test_that("the mrvi() switches must be TRUE or FALSE", {
    for (opt in c("mrvi.sample_context", "mrvi.nuisance_context", "mrvi.sample_hidden_term")) {
      for (v in list("x", NA, 0, "FALSE")) {
        e <- with_opt(stats::setNames(list(v), opt),
                      mrvi(m, s, max_epochs = 1, n_threads = 1, verbose = FALSE))
        expect_s3_class(e, "mrvi_error")
        expect_match(conditionMessage(e), sprintf("options(%s)", opt), fixed = TRUE)
      }
    }
    # read only for counts on disk: checked where it is read
    for (v in list("x", NA, 0)) {
      e <- with_opt(list(mrvi.disk_prefetch = v), mrvi:::disk_prefetch())
      expect_s3_class(e, "mrvi_error")
      expect_match(conditionMessage(e), "options(mrvi.disk_prefetch)", fixed = TRUE)
    }
    f <- with_opt(list(mrvi.sample_hidden_term = FALSE), mrvi(m, s, max_epochs = 1, n_threads = 1, verbose = FALSE))
    expect_false(grepl("\"sample_hidden_term\":true", f@config$model, fixed = TRUE))
  })
})
