test_that("mrviBackend reports libtorch and devices", {
  b <- mrviBackend()
  expect_match(b$libtorch_version, "^2\\.13\\.0")
  expect_type(b$cuda_available, "logical")
  expect_true(b$threads >= 1)
  expect_true(b$deepbind)
  expect_output(print(b), "libtorch")
})

test_that("threads are set through libtorch and follow the option", {
  old <- getOption("mrvi.threads")
  on.exit(mrviSetThreads(old))
  expect_equal(mrviSetThreads(1), 1L)
  expect_equal(mrviBackend()$threads, 1L)
  expect_equal(getOption("mrvi.threads"), 1L)
  mrviSetThreads(2)
  expect_equal(mrviBackend()$threads, 2L)
  expect_error(mrviSetThreads(0), "`n`")
})

test_that("a Rust panic is an R error and R keeps running", {
  expect_error(mrvi:::mrvi_debug_panic(), "index out of bounds")
  expect_equal(1 + 1, 2)
})

test_that("CUDA where there is none is a clear error", {
  skip_if(mrviBackend()$cuda_available, "a GPU is present")
  expect_error(mrvi(small_counts(), small_samples(), device = "cuda", verbose = FALSE),
               "`device`.*CUDA was requested")
  expect_equal(mrvi:::mrvi_resolve_device("auto"), "cpu")
})
