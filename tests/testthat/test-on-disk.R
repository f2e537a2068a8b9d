# Counts on disk (R/on-disk.R): checked and trained on block by block, never
# read whole; the block shuffle gives the same fit from disk and from memory.

# The child processes of this R process, zombies included (Linux /proc; NULL
# elsewhere).
child_pids <- function() {
  if (!dir.exists("/proc/self")) return(NULL)
  me <- Sys.getpid()
  stats <- list.files("/proc", "^[0-9]+$", full.names = TRUE)
  parent <- vapply(stats, function(d) {
    line <- tryCatch(readLines(file.path(d, "stat"), warn = FALSE)[1], error = function(e) NA_character_)
    as.integer(strsplit(sub("^.*\\) ", "", line), " ")[[1]][2])  # after "pid (name) ": state, ppid
  }, 0L)
  as.integer(basename(stats[parent %in% me]))
}

h5_counts <- function(counts, chunk_cells = 37) {
  HDF5Array::writeHDF5Array(counts, tempfile(fileext = ".h5"), "counts",
                            chunkdim = c(nrow(counts), chunk_cells), with.dimnames = TRUE)
}

test_that("counts on disk stay on disk, with the same checks and totals as in memory", {
  skip_if_not_installed("HDF5Array")
  sim <- mrvi:::example_counts()
  counts <- sim$counts
  counts[, 5] <- 0  # an empty cell and an empty gene are dropped, as in memory
  counts[7, ] <- 0
  h5 <- h5_counts(counts)
  expect_message(on_disk <- mrviData(h5, sample = sim$sample), "Dropping 1 cell")
  in_memory <- suppressMessages(mrviData(counts, sample = sim$sample))
  expect_s4_class(on_disk$counts, "DelayedArray")
  expect_identical(on_disk$library_size, in_memory$library_size)
  expect_identical(on_disk$dropped, in_memory$dropped)
  expect_identical(as.matrix(on_disk$counts), as.matrix(in_memory$counts))
  # bad values are found in whichever block they are, and named
  bad <- sim$counts
  bad[3, 250] <- 2.5
  expect_error(mrviData(h5_counts(bad), sample = sim$sample), "1 value is not whole.*c0250", class = "mrvi_error")
})

test_that("bad counts on disk are counted up to where the check stopped, and said to be a lower bound", {
  skip_if_not_installed("HDF5Array")
  sim <- mrvi:::example_counts()
  bad <- sim$counts
  bad[1:2, 20] <- 0.5  # the second of 20 blocks of 15 cells
  bad[1:3, 250] <- 0.5
  expect_error(mrviData(h5_counts(bad), sample = sim$sample),
               "at least 2 values are not whole numbers.*Counted up to cell \"c0030\"", class = "mrvi_error")
  # in memory, all are counted
  expect_error(mrviData(bad, sample = sim$sample), "must hold raw counts: 5 values", class = "mrvi_error")
})

test_that("counts on disk whose file is gone, or that are logical, are classed errors naming `x`", {
  skip_if_not_installed("HDF5Array")
  sim <- mrvi:::example_counts()
  h5 <- h5_counts(sim$counts)
  # a file rewritten with other dimensions since `x` was made
  path <- HDF5Array::path(h5)
  unlink(path)
  HDF5Array::writeHDF5Array(as.matrix(sim$counts[1:10, ]), path, "counts")
  expect_error(mrvi(h5, sample = sim$sample, max_epochs = 1, n_threads = 1, verbose = FALSE),
               "no longer has the dimensions.*make `x` again", class = "mrvi_io_error")
  unlink(path)
  expect_error(mrvi(h5, sample = sim$sample, max_epochs = 1, n_threads = 1, verbose = FALSE),
               "Reading the counts of `x` from disk failed.*does not exist", class = "mrvi_io_error")
  lgl <- DelayedArray::DelayedArray(as.matrix(sim$counts) > 0)
  expect_error(mrviData(lgl, sample = sim$sample), "`x` must hold numeric counts.*type logical", class = "mrvi_error")
  # an HDF5-backed SingleCellExperiment whose folder moved (assay() said "invalid subscript")
  skip_if_not_installed("SingleCellExperiment")
  dir <- tempfile()
  sce <- HDF5Array::saveHDF5SummarizedExperiment(
    SingleCellExperiment::SingleCellExperiment(list(counts = sim$counts), colData = S4Vectors::DataFrame(donor = sim$sample)),
    dir = dir)
  file.rename(dir, paste0(dir, "_moved"))
  on.exit(unlink(paste0(dir, "_moved"), recursive = TRUE))
  expect_error(mrviData(sce, sample = "donor"), "Reading the counts of `x` from disk failed.*does not exist",
               class = "mrvi_io_error")
})

test_that("10x HDF5 counts are read straight from the file and fit as in memory", {
  skip_if_not_installed("HDF5Array")
  skip_if_not_installed("callr")
  # In a fresh R session: this rhdf5 (Debian's) cannot open a 10x group once the
  # process has written other HDF5 files, as earlier tests do.
  res <- callr::r(function() {
    library(mrvi)
    sim <- mrvi:::example_counts()
    counts <- sim$counts
    # the 10x Genomics layout (CSC: data, indices, indptr, shape)
    path <- tempfile(fileext = ".h5")
    rhdf5::h5createFile(path)
    rhdf5::h5createGroup(path, "matrix")
    rhdf5::h5write(as.integer(counts@x), path, "matrix/data")
    rhdf5::h5write(counts@i, path, "matrix/indices")
    rhdf5::h5write(counts@p, path, "matrix/indptr")
    rhdf5::h5write(dim(counts), path, "matrix/shape")
    x <- HDF5Array::TENxMatrix(path, "matrix")
    block <- mrvi:::read_cells(mrvi:::disk_source(x), c(1, 101), c(40, 250))
    fit <- function(x) mrvi(x, sample = sim$sample, max_epochs = 2, n_threads = 1, block_cells = 40, verbose = FALSE)
    list(tenx = mrvi:::is_tenx(x), delayed = mrvi:::is_tenx(x[, 1:10]),
         block = identical(unname(block), unname(counts[, c(1:40, 101:250)])),
         fit = identical(fit(x)@weights, fit(counts)@weights))
  })
  expect_true(res$tenx)
  expect_false(res$delayed)  # delayed operations go through DelayedArray
  expect_true(res$block)
  expect_true(res$fit)
})

test_that("training from disk reads blocks, equals the same block shuffle in memory, and differs from a full shuffle", {
  skip_if_not_installed("HDF5Array")
  sim <- mrvi:::example_counts()
  h5 <- h5_counts(sim$counts)
  fit <- function(x, ...) mrvi(x, sample = sim$sample, max_epochs = 3, n_threads = 1, verbose = FALSE, ...)
  from_disk <- fit(h5, block_cells = 40)
  in_memory <- fit(sim$counts, block_cells = 40)
  expect_identical(from_disk@weights, in_memory@weights)
  expect_identical(from_disk@u_mean, in_memory@u_mean)
  expect_identical(from_disk@u_sd, in_memory@u_sd)
  expect_identical(from_disk@history$validation_elbo, in_memory@history$validation_elbo)
  # the posterior too, bit for bit: cells are encoded in the same blocks (a cell's
  # sd depended in its last bits on the cells encoded with it; a linear fit showed it)
  linear <- lapply(list(h5, sim$counts), function(x) fit(x, block_cells = 15, flavour = "linear", seed = 4))
  expect_identical(linear[[1]]@u_sd, linear[[2]]@u_sd)
  expect_identical(sampleDistances(linear[[1]], mc_samples = 3, verbose = FALSE),
                   sampleDistances(linear[[2]], mc_samples = 3, verbose = FALSE))
  expect_false(identical(fit(sim$counts)@weights, in_memory@weights))
  # the default block size for counts on disk is a 20th of the cells here; the fit
  # keeps it, so that the same fit can be made in memory
  default <- fit(h5)
  expect_identical(default@config$train[c("block_cells", "buffer_blocks")], list(block_cells = 15L, buffer_blocks = 8L))
  expect_identical(default@weights, fit(sim$counts, block_cells = default@config$train$block_cells)@weights)
  expect_null(fit(sim$counts)@config$train$block_cells)
  expect_true(all(is.finite(from_disk@history$validation_elbo)))
  # a buffer of blocks larger than the data (the option is any count) holds all of it
  old <- options(mrvi.buffer_blocks = .Machine$integer.max)
  on.exit(options(old), add = TRUE)
  expect_no_warning(all_buffered <- mrvi(h5, sample = sim$sample, max_epochs = 1, verbose = FALSE))
  expect_true(all(is.finite(all_buffered@history$train_elbo)))
})

test_that("the next blocks are read in a forked process while the model trains, and the fit is the same", {
  skip_if_not_installed("HDF5Array")
  skip_on_os("windows")  # no fork(): every read is direct
  # (forked whatever the size: unset, reads of this data's size are direct)
  unset <- options(mrvi.disk_prefetch = TRUE)
  on.exit(options(unset), add = TRUE)
  expect_false(local({ options(mrvi.disk_prefetch = NULL); on.exit(options(mrvi.disk_prefetch = TRUE)); mrvi:::disk_prefetch(4e7) }))
  expect_true(local({ options(mrvi.disk_prefetch = NULL); on.exit(options(mrvi.disk_prefetch = TRUE)); mrvi:::disk_prefetch(5e7) }))
  sim <- mrvi:::example_counts()
  h5 <- h5_counts(sim$counts)
  disk <- mrvi:::disk_source(h5)
  # the prefetcher: the announced ranges come from the forked read, others are
  # read directly (the forked read stopped), and close() leaves no process behind
  reader <- mrvi:::block_prefetcher(disk)
  direct <- function(first, last) unname(mrvi:::read_cells(disk, first, last))
  expect_identical(unname(reader$get(1L, 40L, c(81L, 161L), c(120L, 200L))), direct(1L, 40L))
  if (!is.null(child_pids())) expect_length(child_pids(), 1)
  expect_identical(reader$get(c(81L, 161L), c(120L, 200L), 41L, 80L), direct(c(81L, 161L), c(120L, 200L)))
  expect_identical(unname(reader$get(1L, 10L, 11L, 20L)), direct(1L, 10L))  # not the announced 41:80
  reader$close()
  expect_length(child_pids(), 0)
  expect_length(list.files(tempdir(), "^mrvi_[nix]"), 0)  # its files removed
  # training: reads in this process (counted; the forked ones are not) drop to
  # one per epoch and its validation, the weights are the same as reading directly
  reads <- new.env()
  reads$n <- 0
  trace("read_cells", where = asNamespace("mrvi"), print = FALSE,
        tracer = substitute(assign("n", get("n", envir = r) + 1, envir = r), list(r = reads)))
  on.exit(untrace("read_cells", where = asNamespace("mrvi")), add = TRUE)
  fit <- function() mrvi(h5, sample = sim$sample, max_epochs = 3, n_threads = 1, verbose = FALSE, block_cells = 40)
  count <- function(expr) {
    reads$n <- 0
    force(expr)
    reads$n
  }
  n_prefetched <- count(prefetched <- fit())
  options(mrvi.disk_prefetch = FALSE)
  n_direct <- count(direct <- fit())
  expect_identical(prefetched@weights, direct@weights)
  expect_identical(prefetched@u_mean, direct@u_mean)
  # mrviData() checks the cells in 20 blocks; training reads blocks of 40 in
  # buffers of 8 (the default; no validation block at this size), 2 reads per
  # epoch; then the training blocks of 40 are encoded (the fit's blocks, as from
  # memory). Prefetched, only each pass's first read is direct.
  expect_equal(n_direct, 20 + 3 * 2 + ceiling(ncol(sim$counts) / 40))
  expect_equal(n_prefetched, 20 + 3 + 1)
  expect_length(child_pids(), 0)
  expect_length(list.files(tempdir(), "^mrvi_[nix]"), 0)
})

test_that("a forked reader reports success or failure and is reaped, whatever SIGCHLD handler is installed", {
  skip_on_os("windows")
  skip_if(is.null(child_pids()), "no /proc to list child processes")
  status <- function(f) mrvi:::wait_child(mrvi:::mrvi_fork_call(f))
  expect_true(status(function() TRUE))
  expect_false(status(function() FALSE))
  expect_false(status(function() stop("a read failed")))
  expect_false(status(function() 1))
  sleeper <- mrvi:::mrvi_fork_call(function() {
    Sys.sleep(30)
    TRUE
  })
  expect_true(is.na(mrvi:::mrvi_child_status(sleeper, stop = FALSE)))  # still running
  expect_false(mrvi:::mrvi_child_status(sleeper, stop = TRUE))  # killed
  expect_length(child_pids(), 0)
  # processx (callr) installs its own SIGCHLD handler, after which parallel's
  # forked children were never reaped: the readers must not be left as zombies
  skip_if_not_installed("HDF5Array")
  skip_if_not_installed("callr")
  expect_equal(callr::r(function() 1), 1)
  sim <- mrvi:::example_counts()
  fit <- mrvi(h5_counts(sim$counts), sample = sim$sample, max_epochs = 2, n_threads = 1, verbose = FALSE,
              block_cells = 40)
  expect_true(all(is.finite(fit@history$elbo)))
  expect_length(child_pids(), 0)
})

test_that("a checkpointed fit from disk resumes to the uninterrupted fit", {
  skip_if_not_installed("HDF5Array")
  sim <- mrvi:::example_counts()
  h5 <- h5_counts(sim$counts)
  path <- tempfile(fileext = ".ckpt")
  fit <- function(epochs, ...) mrvi(h5, sample = sim$sample, max_epochs = epochs, n_threads = 1,
                                    verbose = FALSE, ...)
  fit(2, checkpoint = path)
  resumed <- fit(4, checkpoint = path)
  expect_identical(resumed@weights, fit(4)@weights)
  # other counts with the same cells and samples: refused
  other <- h5_counts(sim$counts + 1)
  expect_error(mrvi(other, sample = sim$sample, max_epochs = 4, n_threads = 1, verbose = FALSE,
                    checkpoint = path), class = "mrvi_checkpoint_error")
  # the same library sizes, genes reordered or values moved between two genes: refused
  # too (the library sizes alone stood in for counts on disk)
  swapped <- sim$counts
  swapped[1:2, ] <- sim$counts[2:1, ]
  for (counts in list(sim$counts[nrow(sim$counts):1, ], swapped)) {
    expect_error(mrvi(h5_counts(counts), sample = sim$sample, max_epochs = 4, n_threads = 1, verbose = FALSE,
                      checkpoint = path), "other\\s+data", class = "mrvi_checkpoint_error")
  }
})

# read_cells() traced to fail ("the disk is gone") on every read after the first
# `ok`, until untraced; the environment counts the reads.
failing_reads <- function(ok) {
  reads <- new.env()
  reads$n <- 0
  trace("read_cells", where = asNamespace("mrvi"), print = FALSE,
        tracer = substitute({
          assign("n", get("n", envir = r) + 1, envir = r)
          if (get("n", envir = r) > ok) stop("the disk is gone")
        }, list(r = reads, ok = ok)))
  reads
}

test_that("a read that fails during training is a classed error, and R carries on", {
  skip_if_not_installed("HDF5Array")
  sim <- mrvi:::example_counts()
  h5 <- h5_counts(sim$counts)
  # mrviData() reads the 20 blocks once; the second read of training fails
  reads <- failing_reads(21)
  on.exit(untrace("read_cells", where = asNamespace("mrvi")))
  expect_error(mrvi(h5, sample = sim$sample, max_epochs = 2, n_threads = 1, verbose = FALSE),
               "Reading the counts from disk failed.*the disk is gone", class = "mrvi_io_error")
  expect_gt(reads$n, 21)
})

test_that("a read that fails after the input check (the baselines' second pass) is a classed error naming `x`", {
  skip_if_not_installed("HDF5Array")
  sim <- mrvi:::example_counts()
  h5 <- h5_counts(sim$counts)
  # mrviData() reads the 20 blocks once; the counts' second read fails
  reads <- failing_reads(20)
  on.exit(untrace("read_cells", where = asNamespace("mrvi")))
  expect_error(pseudobulkDistances(h5, sim$sample, groups = sim$cell_type),
               "Reading the counts of `x` from disk failed.*the disk is gone", class = "mrvi_io_error")
  expect_gt(reads$n, 20)
})

test_that("analyses that need counts whole read them from disk block by block, dropped genes and cells left out", {
  skip_if_not_installed("HDF5Array")
  sim <- mrvi:::example_counts()
  counts <- sim$counts
  counts[, 5] <- 0
  counts[7, ] <- 0
  h5 <- h5_counts(counts)
  d <- suppressMessages(mrviData(h5, sample = sim$sample))
  expect_identical(mrvi:::in_memory_counts(d), suppressMessages(mrviData(counts, sample = sim$sample))$counts)
  expect_identical(suppressMessages(pseudobulkDistances(h5, sim$sample)),
                   suppressMessages(pseudobulkDistances(counts, sim$sample)))
  fit <- mrvi(sim$counts, sample = sim$sample, max_epochs = 2, n_threads = 1, verbose = FALSE)
  new_cells <- h5_counts(sim$counts[, 1:50])
  expect_identical(mrviLatent(fit, x = new_cells, sample = sim$sample[1:50]),
                   mrviLatent(fit, x = sim$counts[, 1:50], sample = sim$sample[1:50]))
})

test_that("a forked reader dies with its parent: a job killed by its scheduler leaves no reader behind", {
  skip_if_not(identical(Sys.info()[["sysname"]], "Linux"), "the parent-death signal is Linux's")
  dir <- tempfile("mrvi-orphan")
  dir.create(dir)
  on.exit(unlink(dir, recursive = TRUE), add = TRUE)
  flag <- file.path(dir, "flag")
  pids <- file.path(dir, "pids")
  # the reader writes `flag` 3 s after its start, unless it is gone by then
  script <- sprintf(paste("suppressMessages(library(mrvi));",
                          "child <- mrvi:::mrvi_fork_call(function() { Sys.sleep(3); writeLines('alive', '%s'); TRUE });",
                          "writeLines(as.character(c(Sys.getpid(), child)), '%s'); Sys.sleep(60)"), flag, pids)
  system2(file.path(R.home("bin"), "Rscript"), c("-e", shQuote(script)), wait = FALSE,
          env = paste0("R_LIBS=", paste(.libPaths(), collapse = ":")))
  for (i in 1:300) if (file.exists(pids) && length(readLines(pids)) == 2) break else Sys.sleep(0.1)
  parent <- as.integer(readLines(pids)[1])
  tools::pskill(parent, tools::SIGKILL)
  Sys.sleep(4)
  expect_false(file.exists(flag))
})
