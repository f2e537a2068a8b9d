test_that("mrviBackend reports libtorch and devices", {
  b <- mrviBackend()
  expect_match(b$libtorch_version, "^2\\.13\\.0")
  expect_type(b$cuda_available, "logical")
  expect_true(b$threads >= 1)
  expect_true(b$deepbind)
  # how libtorch was loaded, not what the variable says now
  before <- Sys.getenv("MRVI_NO_DEEPBIND", unset = NA)
  Sys.setenv(MRVI_NO_DEEPBIND = "1")
  expect_true(mrviBackend()$deepbind)
  if (is.na(before)) Sys.unsetenv("MRVI_NO_DEEPBIND") else Sys.setenv(MRVI_NO_DEEPBIND = before)
  expect_output(print(b), "libtorch")
})

test_that("training's large products run on oneDNN on AMD CPUs with AVX-512, on MKL elsewhere", {
  skip_if_not(file.exists("/proc/cpuinfo"))
  skip_if(nzchar(Sys.getenv("MRVI_MATMUL")), "MRVI_MATMUL overrides the choice")
  cpuinfo <- readLines("/proc/cpuinfo")
  vendor <- sub(".*:\\s*", "", grep("^vendor_id", cpuinfo, value = TRUE)[1])
  avx512 <- grepl("\\bavx512f\\b", grep("^flags", cpuinfo, value = TRUE)[1])
  expected <- switch(vendor, GenuineIntel = "MKL", AuthenticAMD = if (avx512) "oneDNN" else "MKL", NA)
  skip_if(is.na(expected), paste("CPU vendor", vendor))
  expect_equal(mrviBackend()$matrix_products, expected)
  expect_output(print(mrviBackend()), expected)
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
  # NULL returns to the default: the idle cores, between 1 and all of them
  n <- mrviSetThreads(NULL)
  expect_null(getOption("mrvi.threads"))
  expect_true(n >= 1 && n <= parallel::detectCores())
  expect_equal(mrviBackend()$threads, n)
})

test_that("the default thread count uses idle cores only, and one thread in a forked worker", {
  skip_on_os("windows")
  cores <- parallel::detectCores()
  idle <- mrvi:::idle_cores(cores)
  expect_true(idle >= 1 && idle <= cores)
  # a busy process takes a core away (on a machine with 2 or more cores)
  if (cores >= 2 && identical(.Platform$OS.type, "unix")) {
    busy <- parallel::mcparallel({ end <- Sys.time() + 3; while (Sys.time() < end) NULL })
    Sys.sleep(0.3)
    expect_lte(mrvi:::idle_cores(cores), cores - 1)
    tools::pskill(busy$pid)
    suppressWarnings(parallel::mccollect(busy, wait = TRUE))  # killed: no result
  }
  old <- options(mrvi.threads = NULL)
  on.exit(options(old))
  child <- parallel::mccollect(parallel::mcparallel(mrvi:::apply_threads()))[[1]]
  expect_equal(child, 1L)
  fit <- mrvi(small_counts(), small_samples(), flavour = "linear", max_epochs = 1, verbose = FALSE)
  expect_true(fit@config$n_threads >= 1 && fit@config$n_threads <= cores)
  expect_equal(mrvi(small_counts(), small_samples(), flavour = "linear", max_epochs = 1, verbose = FALSE,
                    n_threads = 1)@config$n_threads, 1L)
  # a core reserved for other work of the call (a forked reader of counts on
  # disk) is taken from the idle ones, never below one, and never from an
  # explicit count
  state <- mrvi:::thread_state
  kept <- mget(c("idle_cores", "idle_at"), envir = state, ifnotfound = list(NULL, NULL))
  on.exit(list2env(kept, envir = state), add = TRUE)
  assign("idle_at", proc.time()[["elapsed"]], envir = state)
  for (idle in 1:3) {
    assign("idle_cores", idle, envir = state)
    expect_equal(mrvi:::apply_threads(reserved = 1L), max(1L, idle - 1L))
  }
  expect_equal(mrvi:::apply_threads(1L, reserved = 1L), 1L)
  # OMP_NUM_THREADS bounds the default
  assign("idle_cores", 3L, envir = state)
  withr_env <- Sys.getenv("OMP_NUM_THREADS", unset = NA)
  Sys.setenv(OMP_NUM_THREADS = "1")
  expect_equal(mrvi:::automatic_threads(), 1L)
  if (is.na(withr_env)) Sys.unsetenv("OMP_NUM_THREADS") else Sys.setenv(OMP_NUM_THREADS = withr_env)
})

test_that("every function that computes applies the option, not the count the last call left", {
  old <- getOption("mrvi.threads")
  on.exit(mrviSetThreads(old))
  fit <- small_fit()$fit
  sim <- small_fit()$sim
  mrviSetThreads(1)
  for (compute in list(function() mrviLatent(fit), function() counterfactualLatent(fit, cells = 1:2),
                       function() counterfactualExpression(fit, cells = 1:2, sample = fit@samples[1]),
                       function() sampleSplitGenes(fit, fit@samples[1:2], cells = 1:2, mc_samples = 0),
                       function() sampleTreeSupport(fit, "labels", B = 2, mc_samples = 0, normalize = FALSE, min_cells = 1))) {
    mrvi:::mrvi_set_threads(2L)  # as mrvi(n_threads = 2) leaves libtorch
    compute()
    expect_equal(mrviBackend()$threads, 1L)
  }
})

test_that("a forked worker computes on one thread whatever count is asked for", {
  state <- mrvi:::thread_state
  pid <- state$pid
  on.exit(assign("pid", pid, envir = state))
  assign("pid", -1L, envir = state)  # as seen from a forked child
  if (parallel::detectCores() >= 2) {
    expect_message(n <- mrvi:::apply_threads(2L), class = "mrvi_forked_threads")
    expect_equal(n, 1L)
  }
  expect_no_message(mrvi:::apply_threads(1L))
})

test_that("the cores the process may run on bound the thread counts", {
  skip_if_not(file.exists("/proc/self/status"))
  allowed <- mrvi:::allowed_cpus()
  expect_true(allowed >= 1)
  expect_lte(mrvi:::default_threads(), allowed)
})

test_that("a cgroup's CPU quota (v2 cpu.max, v1 cfs quota) bounds the cores, rounded up", {
  root <- tempfile("cgroup")
  dir.create(file.path(root, "cpu"), recursive = TRUE)
  expect_true(is.na(mrvi:::cgroup_cpus(root)))
  writeLines(c("-1"), file.path(root, "cpu", "cpu.cfs_quota_us"))
  writeLines(c("100000"), file.path(root, "cpu", "cpu.cfs_period_us"))
  expect_true(is.na(mrvi:::cgroup_cpus(root)))  # v1 without a quota
  writeLines(c("250000"), file.path(root, "cpu", "cpu.cfs_quota_us"))
  expect_equal(mrvi:::cgroup_cpus(root), 3L)
  writeLines("max 100000", file.path(root, "cpu.max"))
  expect_true(is.na(mrvi:::cgroup_cpus(root)))  # v2 without a quota
  writeLines("50000 100000", file.path(root, "cpu.max"))
  expect_equal(mrvi:::cgroup_cpus(root), 1L)
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
