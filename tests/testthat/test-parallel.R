# Every analysis with a BPPARAM gives the serial result bit for bit on other
# back-ends (workers rebuild the model from the fit's bytes).
test_that("SnowParam(2), MulticoreParam(2) and BatchtoolsParam give the SerialParam results", {
  skip_if_not_installed("batchtools")
  sim <- mrvi:::example_counts()
  fit <- mrvi(sim$counts, sample = sim$sample, labels = sim$cell_type, max_epochs = 2, n_threads = 1,
              verbose = FALSE)
  # several tasks on 300 cells, and blocks that cut through samples and groups
  old <- options(mrvi.task_cells = 70)
  on.exit(options(old))
  grp <- stats::setNames(c("a", "a", "b", "b"), fit@samples)
  cov <- data.frame(sample = fit@samples, grp = grp)
  run_all <- function(bp) {
    set.seed(5)
    without_power_warnings(list(
      z = mrviLatent(fit, which = "z", use_mean = FALSE, BPPARAM = bp),
      new = mrviLatent(fit, x = sim$counts[, 1:100], sample = sim$sample[1:100], which = "z", BPPARAM = bp),
      cf = counterfactualLatent(fit, cells = 1:100, mc_samples = 2, BPPARAM = bp),
      groups = sampleDistances(fit, groups = "labels", mc_samples = 3, BPPARAM = bp),
      cells = sampleDistances(fit, cells = 1:150, mc_samples = 3, BPPARAM = bp),
      cell_assoc = cellAssociation(fit, grp, mc_samples = 3, BPPARAM = bp),
      ks = groupAssociation(fit, grp, groups = "labels", permutations = 19, mc_samples = 3, statistic = "ks",
                            BPPARAM = bp),
      effect = groupAssociation(fit, grp, groups = "labels", permutations = 19, mc_samples = 3, BPPARAM = bp),
      pseudo_f = groupAssociation(fit, grp, groups = "labels", permutations = 19, statistic = "pseudo_f",
                                  mc_samples = 3, BPPARAM = bp),
      de = differentialExpression(fit, cov, mc_samples = 3, lfc = TRUE, chunk_size = 80, BPPARAM = bp),
      da = differentialAbundance(fit, grp, max_cells_per_sample = 40, BPPARAM = bp),
      adm = admissibility(fit, max_cells_per_sample = 40, BPPARAM = bp),
      support = sampleTreeSupport(fit, groups = "labels", B = 10, mc_samples = 3, normalize = FALSE, BPPARAM = bp)
    ))
  }
  serial <- run_all(BiocParallel::SerialParam())
  snow <- BiocParallel::SnowParam(2)
  BiocParallel::bpstart(snow)
  expect_identical(run_all(snow), serial)
  BiocParallel::bpstop(snow)
  # forked workers would hang in libtorch's OpenMP: they run as socket workers,
  # which is said once per session (rlang's verbosity option says it every time)
  old <- options(rlib_message_verbosity = "verbose")
  expect_message(forked <- sampleDistances(fit, groups = "labels", mc_samples = 3,
                                           BPPARAM = BiocParallel::MulticoreParam(2)),
                 class = "mrvi_unforked")
  options(old)
  expect_identical(forked, serial$groups)
  # work too small to spread runs here, and says nothing of workers
  expect_no_message(one <- mrvi:::bp_map(list(3), sqrt, BPPARAM = BiocParallel::MulticoreParam(2)),
                    class = "mrvi_unforked")
  expect_equal(one, list(sqrt(3)))
  # the replacement keeps the user's settings
  snowed <- suppressMessages(mrvi:::unforked(BiocParallel::MulticoreParam(2, timeout = 77L, progressbar = TRUE), 2L))
  expect_s4_class(snowed, "SnowParam")
  expect_equal(BiocParallel::bptimeout(snowed), 77)
  expect_true(BiocParallel::bpprogressbar(snowed))
  # batchtools starts its jobs anew for every call (~20 s each here): two analyses
  batch <- BiocParallel::BatchtoolsParam(2, cluster = "socket", registryargs =
    BiocParallel::batchtoolsRegistryargs(file.dir = tempfile("registry")))
  expect_identical(sampleDistances(fit, groups = "labels", mc_samples = 3, BPPARAM = batch), serial$groups)
  expect_identical(without_power_warnings(differentialExpression(fit, cov, mc_samples = 3, lfc = TRUE, chunk_size = 80, BPPARAM = batch)),
                   serial$de)
  # one task for everything: the same numbers (libtorch's products may round
  # differently for other block sizes; the Rust kernels do not)
  options(mrvi.task_cells = 20000)
  one_task <- run_all(BiocParallel::SerialParam())
  expect_identical(one_task$groups, serial$groups)
  expect_identical(one_task$cells, serial$cells)
  expect_equal(one_task, serial, tolerance = 1e-6)
})

test_that("BPPARAM must be a BiocParallel back-end", {
  sim <- mrvi:::example_counts()
  fit <- mrvi(sim$counts, sample = sim$sample, max_epochs = 1, n_threads = 1, verbose = FALSE)
  expect_error(sampleDistances(fit, BPPARAM = 2), class = "mrvi_error")
  expect_error(mrviLatent(fit, BPPARAM = "snow"), "BiocParallel back-end")
})

test_that("an error in a worker keeps its class, as in a serial run", {
  skip_if_not_installed("BiocParallel")
  fit <- small_fit()$fit
  bad <- fit
  bad@weights[200] <- as.raw(bitwXor(as.integer(bad@weights[200]), 1L))
  bad@cache <- new.env()
  expect_error(sampleDistances(bad, groups = "labels", mc_samples = 0), class = "mrvi_damaged_error")
  expect_error(sampleDistances(bad, groups = "labels", mc_samples = 0, BPPARAM = BiocParallel::SnowParam(2)),
               class = "mrvi_damaged_error")
})

test_that("warnings raised in workers are said in this session, in task order, as in a serial run", {
  skip_if_not_installed("BiocParallel")
  warned <- function(bp) {
    seen <- character()
    res <- withCallingHandlers(
      mrvi:::bp_map(1:3, function(i) { if (i != 2) warning(sprintf("task %d", i)); i * 10 }, BPPARAM = bp),
      warning = function(w) { seen <<- c(seen, conditionMessage(w)); invokeRestart("muffleWarning") })
    list(res = res, seen = seen)
  }
  serial <- warned(BiocParallel::SerialParam())
  expect_identical(serial$seen, c("task 1", "task 3"))
  expect_identical(warned(BiocParallel::SnowParam(2)), serial)
})

test_that("bp_map(payload =) hands each task its own data, made round by round", {
  made <- integer()
  got <- list()
  mrvi:::bp_map(list(1:2, 3:5, 6L), function(b, offset) sum(b$values) + offset, offset = 100,
                BPPARAM = BiocParallel::SerialParam(), each = function(v, i) got[[i]] <<- v,
                payload = function(j) {
                  made <<- c(made, length(j))
                  list(values = j * 10)
                })
  expect_equal(unlist(got), c(130, 220, 160))
  expect_equal(made, c(2L, 3L, 1L))
})
