test_that("on nested data the ELBO improves, u separates cell types and mixes sites", {
  nf <- nested_fit()
  fit <- nf$fit
  sim <- nf$sim
  h <- fit@history
  expect_gt(max(h$validation_elbo), h$validation_elbo[1] + 50)
  u <- mrviLatent(fit)
  expect_equal(dim(u), c(2000L, 10L))
  expect_equal(rownames(u), colnames(sim$counts))
  d <- dist(u)
  # thresholds: cell types well separated (average silhouette width >= 0.4),
  # sites mixed (|average silhouette width| <= 0.1). Simulation seeds 1-6 of this
  # design gave 0.47-0.57 and at most 0.006.
  sil_type <- summary(cluster::silhouette(as.integer(sim$cell_type), d))$avg.width
  sil_site <- summary(cluster::silhouette(as.integer(sim$site), d))$avg.width
  expect_gte(sil_type, 0.4)
  expect_lte(abs(sil_site), 0.1)
})

test_that("counterfactual z varies across samples only in the affected cell type", {
  nf <- nested_fit()
  fit <- nf$fit
  sim <- nf$sim
  u <- mrviLatent(fit)
  ptr <- mrvi:::native_model(fit)
  S <- length(fit@samples)
  # z of every cell under every sample, then per cell type the mean distance
  # between samples of different programme groups minus that within groups
  zs <- lapply(seq_len(S), function(s) {
    matrix(mrvi:::mrvi_z_from_u(ptr, u, rep(s - 1L, nrow(u))), nrow(u))
  })
  group <- as.character(sim$sample_group)
  between <- outer(group, group, "!=")
  within <- !between & !diag(S)
  gap <- sapply(levels(sim$cell_type), function(type) {
    idx <- sim$cell_type == type
    D <- matrix(0, S, S)
    for (a in seq_len(S)) for (b in seq_len(S)) {
      D[a, b] <- mean(sqrt(rowSums((zs[[a]][idx, ] - zs[[b]][idx, ])^2)))
    }
    mean(D[between]) - mean(D[within])
  })
  unaffected <- setdiff(names(gap), sim$affected)
  # thresholds: a clear group structure in the affected type (gap > 0.3; seeds
  # 1-6 gave 0.53-0.63), at least 3 times any structure in the others (seen >= 24)
  expect_gt(gap[[sim$affected]], 0.3)
  expect_gt(gap[[sim$affected]], 3 * max(abs(gap[unaffected])))
})

test_that("saveRDS/readRDS in a new R process gives identical latents", {
  fit <- nested_fit()$fit
  f <- tempfile(fileext = ".rds")
  out <- tempfile(fileext = ".rds")
  saveRDS(fit, f)
  script <- sprintf(
    "suppressMessages(library(mrvi)); fit <- readRDS('%s'); saveRDS(list(u = mrviLatent(fit), z = mrviLatent(fit, which = 'z')), '%s')",
    f, out)
  status <- system2(file.path(R.home("bin"), "Rscript"), c("-e", shQuote(script)),
                    env = paste0("R_LIBS=", paste(.libPaths(), collapse = ":")))
  expect_equal(status, 0)
  back <- readRDS(out)
  expect_identical(back$u, mrviLatent(fit))
  expect_identical(back$z, mrviLatent(fit, which = "z"))
})

test_that("a fixed seed gives identical weights and latents on CPU", {
  m <- small_counts(40, 90)
  s <- rep(c("A", "B", "C"), 30)
  # the default thread count follows the idle cores: a repeat passes the recorded one
  f1 <- mrvi(m, flavour = "linear", s, max_epochs = 3, seed = 11, verbose = FALSE)
  f2 <- mrvi(m, flavour = "linear", s, max_epochs = 3, seed = 11, verbose = FALSE,
             n_threads = f1@config$n_threads)
  f3 <- mrvi(m, flavour = "linear", s, max_epochs = 3, seed = 12, verbose = FALSE,
             n_threads = f1@config$n_threads)
  expect_identical(f1@weights, f2@weights)
  expect_identical(mrviLatent(f1, which = "z"), mrviLatent(f2, which = "z"))
  expect_false(identical(f1@weights, f3@weights))
})

test_that("early stopping stops and restores the best epoch", {
  m <- small_counts(40, 200)
  s <- rep(c("A", "B"), 100)
  fit <- mrvi(m, flavour = "linear", s, max_epochs = 400, n_epochs_kl_warmup = 2, patience = 3, seed = fit_seed(1),
              verbose = FALSE)
  h <- fit@history
  expect_lt(nrow(h), 400)
  expect_true(fit@config$stopped_early)
  expect_equal(fit@config$best_epoch, which.max(h$validation_elbo))
  # not before min_epochs (by default half of max_epochs)
  expect_equal(fit@config$train$min_epochs, 200)
  expect_gte(nrow(h), 200)
  eager <- mrvi(m, flavour = "linear", s, max_epochs = 400, n_epochs_kl_warmup = 2, patience = 3,
                min_epochs = 0, seed = fit_seed(1), verbose = FALSE)
  expect_true(eager@config$stopped_early)
  expect_lt(nrow(eager@history), 200)
  # the same training up to the earlier stop
  expect_identical(eager@history$validation_elbo, h$validation_elbo[seq_len(nrow(eager@history))])
})

test_that("Ctrl-C stops training between minibatches and R keeps running", {
  skip_on_os("windows")
  res <- interrupted_run(
    before = "sim <- mrvi:::simulate_counts(n_cells = 4000, n_genes = 200, seed = 1)",
    during = paste(
      "res <- withCallingHandlers(",
      "  tryCatch(mrvi(sim$counts, sim$sample, flavour = 'linear', max_epochs = 2000, early_stopping = FALSE,",
      "                n_threads = 1, verbose = FALSE),",
      "           error = function(e) e),",
      "  mrvi_interrupted = function(w) invokeRestart('muffleWarning'));",
      "after <- sum(1:10);",
      # without early stopping: the weights of the last complete epoch, not part-trained ones
      "again <- mrvi(sim$counts, sim$sample, flavour = 'linear', max_epochs = nrow(res@history), early_stopping = FALSE,",
      "              n_threads = 1, verbose = FALSE)"),
    saved = paste("list(class = class(res), epochs = nrow(res@history), after = after,",
                  "interrupted = res@config$interrupted, same_weights = identical(res@weights, again@weights))"))
  expect_false(is.null(res))
  expect_true("MrVIFit" %in% res$class)
  expect_true(res$interrupted)
  expect_gte(res$epochs, 1)
  expect_lt(res$epochs, 2000)
  expect_equal(res$after, 55)  # the session went on after the interrupt
  expect_true(res$same_weights)
})

test_that("Ctrl-C that R sees between epochs or after the last one never loses the epochs trained", {
  skip_on_os("windows")
  sim <- mrvi:::simulate_counts(n_cells = 200, n_genes = 40, seed = 1)
  fit_with <- function(...) mrvi(sim$counts, sim$sample, flavour = "linear", n_threads = 1, verbose = FALSE, seed = 3, ...)
  # (the package's function `fun` with `exit` run at its end, while `expr` runs)
  with_trace <- function(fun, exit, expr) {
    trace(fun, where = asNamespace("mrvi"), print = FALSE, exit = exit)
    on.exit(untrace(fun, where = asNamespace("mrvi")))
    expr
  }
  # an interrupt R signals itself after epoch 3's checkpoint (as in the progress
  # bar's drawing): the run stops after that epoch, with its weights
  saves <- new.env()
  saves$n <- 0
  expect_warning(fit <- with_trace("mrvi_trainer_save",
                                   bquote({assign("n", get("n", .(saves)) + 1, envir = .(saves)); if (get("n", .(saves)) == 3) rlang::interrupt()}),
                                   fit_with(max_epochs = 20, early_stopping = FALSE, checkpoint = tempfile(fileext = ".ckpt"))),
                 "interrupted at epoch 4", class = "mrvi_interrupted")
  expect_equal(nrow(fit@history), 3)
  expect_true(fit@config$interrupted)
  expect_identical(fit@weights, fit_with(max_epochs = 3, early_stopping = FALSE)@weights)
  # ... in the last epoch's: training had ended, and the warning says so
  saves$n <- -1
  expect_warning(last <- with_trace("mrvi_trainer_save",
                                    bquote({assign("n", get("n", .(saves)) + 1, envir = .(saves)); if (get("n", .(saves)) == 1) rlang::interrupt()}),
                                    fit_with(max_epochs = 2, early_stopping = FALSE, checkpoint = tempfile(fileext = ".ckpt"))),
                 "after its last epoch", class = "mrvi_interrupted")
  expect_equal(nrow(last@history), 2)
  # a second Ctrl-C stops at once, as Ctrl-C does
  twice <- 0
  expect_error(withCallingHandlers(
    mrvi:::through_interrupts({rlang::interrupt(); rlang::interrupt(); "finished"}, function() twice <<- twice + 1),
    interrupt = function(cnd) stop("interrupted")), "interrupted")
  expect_equal(twice, 1)
  # ... also where they nest (training's within mrvi()'s): the inner one takes
  # the first, the second stops both
  inner <- outer <- 0
  expect_error(withCallingHandlers(
    mrvi:::through_interrupts(
      mrvi:::through_interrupts({rlang::interrupt(); rlang::interrupt(); "finished"}, function() inner <<- inner + 1),
      function() outer <<- outer + 1),
    interrupt = function(cnd) stop("interrupted")), "interrupted")
  expect_equal(c(inner, outer), c(1, 0))
  expect_null(mrvi:::interrupts$seen)
  # an interrupt while the fit is put together after the last epoch: the whole fit
  expect_warning(late <- with_trace("mrvi_trainer_finish", quote(rlang::interrupt()), fit_with(max_epochs = 4, early_stopping = FALSE)),
                 "after its last epoch", class = "mrvi_interrupted")
  expect_false(late@config$interrupted)
  expect_identical(late@u_mean, fit_with(max_epochs = 4, early_stopping = FALSE)@u_mean)
})

test_that("a checkpointed fit stopped after epoch k and resumed equals an uninterrupted one", {
  sim <- mrvi:::example_counts()
  path <- tempfile(fileext = ".safetensors")
  on.exit(unlink(path))
  fit_with <- function(max_epochs, checkpoint = NULL, counts = sim$counts, seed = 3, flavour = "attention") {
    mrvi(counts, sample = sim$sample, flavour = flavour, max_epochs = max_epochs,
         n_epochs_kl_warmup = 2, patience = 2, n_threads = 1, seed = seed, verbose = FALSE,
         checkpoint = checkpoint)
  }
  elbos <- c("train_elbo", "validation_elbo", "kl_weight")
  for (flavour in c("attention", "linear")) {
    whole <- fit_with(6, flavour = flavour)
    unlink(path)
    first <- fit_with(2, path, flavour = flavour)
    expect_true(file.exists(path))
    expect_equal(nrow(first@history), 2)
    resumed <- fit_with(6, path, flavour = flavour)
    expect_identical(resumed@weights, whole@weights)
    expect_identical(resumed@history[elbos], whole@history[elbos])
    expect_identical(resumed@config$best_epoch, whole@config$best_epoch)
    expect_identical(resumed@u_mean, whole@u_mean)
  }
  # a finished run's checkpoint gives the same fit again without training
  again <- fit_with(6, path, flavour = "linear")
  expect_identical(again@weights, whole@weights)
  # only the checkpoint is left in its folder (the temporary file was renamed)
  expect_identical(list.files(dirname(path), pattern = basename(path)), basename(path))
  # other arguments or other data are refused, saying which differ
  expect_error(fit_with(6, path, seed = 4, flavour = "linear"), "other\\s+settings\\s+than\\s+this\\s+call", class = "mrvi_checkpoint_error")
  changed <- sim$counts
  changed[1, 1] <- changed[1, 1] + 1
  err <- expect_error(fit_with(6, path, counts = changed, flavour = "linear"), class = "mrvi_checkpoint_error")
  expect_match(conditionMessage(err), "other data than this call")
  expect_match(conditionMessage(err), "checkpoint")
  # and so are other continuous covariates (they resumed silently): one value
  # changed, two cells' values swapped; the same values scaled are the same fit
  mito <- seq_along(sim$sample) %% 7 / 7
  with_mito <- function(values) {
    mrvi(sim$counts, sample = sim$sample, flavour = "linear", max_epochs = 2, continuous_covariates = list(mito = values),
         n_threads = 1, seed = 3, verbose = FALSE, checkpoint = path)
  }
  unlink(path)
  with_mito(mito)
  for (other in list(replace(mito, 1, 5), replace(mito, 1:2, mito[c(3, 1)]))) {
    expect_error(with_mito(other), "other\\s+data\\s+than\\s+this\\s+call", class = "mrvi_checkpoint_error")
  }
  expect_s4_class(with_mito(mito * 2 + 1), "MrVIFit")
  writeLines("not a checkpoint", path)
  expect_error(fit_with(6, path), class = "mrvi_checkpoint_error")
  expect_error(fit_with(6, tempdir()), class = "mrvi_error")
  expect_error(fit_with(6, file.path(tempfile(), "x")), "existing folder")
})

test_that("an unchecked checkpoint (format 1) with a nonsense state is refused as damaged", {
  sim <- mrvi:::example_counts()
  path <- tempfile(fileext = ".safetensors")
  on.exit(unlink(path))
  fit_with <- function() {
    mrvi(sim$counts, sample = sim$sample, flavour = "linear", max_epochs = 3, n_threads = 1, seed = 3,
         verbose = FALSE, checkpoint = path)
  }
  # the half-written file of a killed run (kill -9 between write and rename;
  # pid 2^22 + 1 is above Linux's largest) is removed, a live process's (init's) is not
  stale <- paste0(path, ".4194305.tmp")
  live <- paste0(path, ".1.tmp")
  file.create(stale, live)
  on.exit(unlink(live), add = TRUE)
  fit_with()
  if (dir.exists("/proc/self")) expect_false(file.exists(stale))
  expect_true(file.exists(live))
  intact <- readBin(path, "raw", file.size(path))
  n <- readBin(intact[1:8], "integer", size = 8)
  header <- rawToChar(intact[8 + seq_len(n)])
  data <- intact[-seq_len(8 + n)]
  # the header rewritten as format 1 (no checksum checked), its state edited;
  # in the header the state is a JSON string, its quotes escaped: best\":[score,epoch]
  write_unchecked <- function(pattern = "^", replacement = "") {
    h <- sub("mrvi training checkpoint 2", "mrvi training checkpoint 1", header, fixed = TRUE)
    h <- charToRaw(sub(pattern, replacement, h))
    h <- c(h, rep(charToRaw(" "), (8 - length(h) %% 8) %% 8))
    writeBin(c(packBits(intToBits(length(h)), "raw"), raw(4), h, data), path)
  }
  write_unchecked()
  expect_identical(nrow(fit_with()@history), 3L)
  edits <- list(
    c('(best\\\\":\\[[0-9]+,)[0-9]+', "\\14000000000000000000"),  # best epoch 4e18
    c('(best\\\\":\\[[0-9]+,)[0-9]+', "\\10"),                    # best epoch 0
    c('(best\\\\":\\[[0-9]+,)[0-9]+', "\\199"),                   # best epoch 99 of 3
    c('(best\\\\":\\[)[0-9]+', "\\19221120237041090560"),         # best score NaN
    c('(threads\\\\":\\[)[0-9]+', "\\14000000000000000000"),      # 4e18 threads
    c('(history\\\\":\\[\\[)[0-9]+', "\\19218868437227405312")    # epoch 1 numbered Inf
  )
  for (e in edits) {
    write_unchecked(e[1], e[2])
    expect_error(fit_with(), "not\\s+a\\s+whole\\s+mrvi\\s+training\\s+checkpoint", class = "mrvi_checkpoint_error")
  }
  # the devices are recorded: a file whose epochs ran on a GPU, resumed here, says so
  expect_match(header, 'devices\\":[\\"cpu\\"]', fixed = TRUE)
  write_unchecked('devices\\\\":\\[\\\\"cpu\\\\"', 'devices\\\\":[\\\\"cuda:0\\\\"')
  expect_warning(mrvi(sim$counts, sample = sim$sample, flavour = "linear", max_epochs = 4, n_threads = 1, seed = 3,
                      verbose = FALSE, checkpoint = path),
                 "ran on \"cuda:0\"; this call uses \"cpu\"", class = "mrvi_device_changed")
})

test_that("a damaged checkpoint, fewer max_epochs than it holds, or an unwritable one are refused by name", {
  sim <- mrvi:::example_counts()
  path <- tempfile(fileext = ".safetensors")
  on.exit(unlink(path))
  fit_with <- function(max_epochs, checkpoint = path, n_threads = 1) {
    mrvi(sim$counts, sample = sim$sample, flavour = "linear", max_epochs = max_epochs,
         n_threads = n_threads, seed = 3, verbose = FALSE, checkpoint = checkpoint)
  }
  fit_with(2)
  intact <- readBin(path, "raw", file.size(path))
  # one bit in the tensor data (after the 8-byte length and the JSON header):
  # resumed silently before, into an ELBO of -1e35
  header <- readBin(intact[1:8], "integer", size = 8)
  for (at in c(header + 108, length(intact))) {
    b <- intact
    b[at] <- as.raw(bitwXor(as.integer(b[at]), 0x40L))
    writeBin(b, path)
    err <- expect_error(fit_with(4), class = "mrvi_checkpoint_error")
    expect_match(conditionMessage(err), "damaged")
    expect_match(conditionMessage(err), "delete")
  }
  # asked for fewer epochs than the file holds: not returned under a false max_epochs
  writeBin(intact, path)
  err <- expect_error(fit_with(1), class = "mrvi_checkpoint_error")
  expect_match(conditionMessage(err), "holds 2 epochs, more than max_epochs = 1")
  expect_identical(nrow(fit_with(2)@history), 2L)
  # another thread count goes on, says so, and records both counts
  expect_warning(f <- fit_with(3, n_threads = 2), class = "mrvi_threads_changed")
  expect_identical(f@config$n_threads, c(1L, 2L))
  # a file whose epochs ran on two counts goes on too, on either (the warning's
  # plural made every later call an error), recording every count in order
  w <- expect_warning(f <- fit_with(4, n_threads = 1), class = "mrvi_threads_changed")
  expect_match(conditionMessage(w), "thread counts 1, 2; this call uses 1")
  expect_identical(f@config$n_threads, c(1L, 2L, 1L))
  # a finished run called again on another count trains nothing: no warning, the
  # checkpoint's counts, the same fit
  expect_no_warning(again <- fit_with(4, n_threads = 2))
  expect_identical(again@config$n_threads, c(1L, 2L, 1L))
  expect_identical(again@weights, f@weights)
  # a file that cannot be written: the hint is about the path, not deleting it
  # (a read-only folder is writable for root; /proc is not)
  locked <- tempfile()
  dir.create(locked)
  Sys.chmod(locked, "0500")
  on.exit(unlink(locked, recursive = TRUE), add = TRUE)
  writable <- function(dir) suppressWarnings(file.create(file.path(dir, "probe")) && file.remove(file.path(dir, "probe")))
  dirs <- Filter(function(d) dir.exists(d) && !writable(d), c(locked, "/proc"))
  skip_if(!length(dirs), "no unwritable folder")
  unwritable <- file.path(dirs[1], "mrvi.ckpt")
  # refused up front ("Cannot create files"), not after the first epoch's training
  err <- expect_error(fit_with(1, unwritable), "Cannot create files in", class = "mrvi_checkpoint_error")
  expect_match(conditionMessage(err), "folder you can write to")
  expect_no_match(conditionMessage(err), "delete")
})

test_that("settings that would train a degenerate or other model than asked are refused, naming the argument", {
  m <- small_counts()
  s <- small_samples()
  fit <- function(...) mrvi(m, s, verbose = FALSE, ...)
  # LayerNorm over one dimension is constant: every cell would get the same sample effect
  expect_error(fit(n_latent_u = 1, n_threads = 1), "`n_latent_u` must be at least 2", class = "mrvi_error")
  expect_error(fit(min_epochs = 5, max_epochs = 2, n_threads = 1), "`min_epochs` = 5 is more than `max_epochs` = 2",
               class = "mrvi_error")
  # also past the default max_epochs (400 for 24 cells), which the trainer knows
  expect_error(fit(min_epochs = 1000, n_threads = 1), "`min_epochs` = 1000 is more than the default `max_epochs` for 24 cells, 400",
               class = "mrvi_error")
  # prior passed on as the whole default vector (a wrapper's own default) is the default
  expect_identical(fit(flavour = "linear", prior = c("mog", "normal"), max_epochs = 1, n_threads = 1)@config$prior, "normal")
  # training that ends before the KL warm-up says so
  expect_message(mrvi(m, s, max_epochs = 2, n_threads = 1), "ends before the KL warm-up")
  # NA is not NULL (the default)
  expect_error(fit(n_threads = NA), "`n_threads`.*You gave `NA`", class = "mrvi_error")
  # what was given is shown as given, not rounded to the valid value it is not
  expect_error(fit(n_threads = 2.0000000001), "You gave 2.0000000001", class = "mrvi_error")
  # minibatches too large because of n_latent: n_latent is named, not batch_size
  expect_error(fit(n_latent = 1e6, n_threads = 1), "^`n_latent` = 1000000 .*makes a model", class = "mrvi_error")
})

test_that("a validation_fraction that holds out no cell turns validation off, as 0 does, and says so", {
  m <- small_counts()
  s <- small_samples()
  fit <- function(v) mrvi(m, s, validation_fraction = v, max_epochs = 2, n_threads = 1, verbose = FALSE)
  # floor(24 * 0.04) = 0 cells; 1/24 rounded up to 3 digits is 0.0417
  expect_message(tiny <- fit(0.04), "holds out none of the 24 cells.*smallest `validation_fraction`.*0.0417")
  expect_identical(tiny@weights, fit(0)@weights)
  expect_true(all(is.nan(tiny@history$validation_elbo)))
  expect_output(print(tiny), "training ELBO .* per cell \\(no validation cells\\)")
  expect_no_message(fit(0.0417))
  # blocks (counts read in blocks of cells): half a block rounds up, as the
  # trainer rounds it, so one block of 2 is held out at 0.25 (R's round() said none)
  expect_no_message(half <- mrvi(m, s, validation_fraction = 0.25, block_cells = 12, max_epochs = 1, n_threads = 1,
                                 verbose = FALSE), message = "holds out none")
  expect_true(is.finite(half@history$validation_elbo))
  expect_message(mrvi(m, s, validation_fraction = 0.24, block_cells = 12, max_epochs = 1, n_threads = 1, verbose = FALSE),
                 "holds out none of the 2 blocks.*smallest `validation_fraction`.*0.25")
})

test_that("n_latent = NULL (the default) is 30 for the attention flavour and 10 for the linear one", {
  sim <- mrvi:::example_counts()
  fit <- function(...) mrvi(sim$counts, sample = sim$sample, max_epochs = 1, n_threads = 1, verbose = FALSE, ...)
  expect_null(formals(mrvi)$n_latent)
  attention <- fit()
  expect_equal(attention@config$train$n_latent, 30)
  expect_equal(ncol(mrviLatent(attention, which = "z")), 30)
  expect_equal(fit(flavour = "linear")@config$train$n_latent, 10)
  expect_identical(fit(n_latent = NULL)@weights, attention@weights)
})

test_that("a Ctrl-C seen only after an epoch's last minibatch stops training after that epoch", {
  # (what mrvi_trainer_epoch() reports when the interrupt came during the epoch's
  # last minibatch or its validation pass; a real SIGINT cannot be placed there)
  sim <- mrvi:::example_counts()
  original <- mrvi:::mrvi_trainer_epoch
  epochs <- 0
  assignInNamespace("mrvi_trainer_epoch", function(h, read_blocks) {
    s <- original(h, read_blocks)
    epochs <<- epochs + 1
    if (epochs == 2) s$interrupted_after <- TRUE
    s
  }, "mrvi")
  on.exit(assignInNamespace("mrvi_trainer_epoch", original, "mrvi"))
  fit <- function(max_epochs) {
    mrvi(sim$counts, sample = sim$sample, flavour = "linear", max_epochs = max_epochs, early_stopping = FALSE,
         n_threads = 1, seed = 2, verbose = FALSE)
  }
  expect_warning(stopped <- fit(6), class = "mrvi_interrupted")
  expect_equal(nrow(stopped@history), 2)
  expect_true(stopped@config$interrupted)
  assignInNamespace("mrvi_trainer_epoch", original, "mrvi")
  # the second epoch is complete: its weights, as an uninterrupted 2-epoch run's
  expect_identical(stopped@weights, fit(2)@weights)
})
