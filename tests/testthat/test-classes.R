# R/classes.R: the MrVIFit class, its constructor, validity method, show() and summary().

test_that("show and summary report the fit", {
  fit <- small_fit()$fit
  out <- capture.output(show(fit))
  expect_match(out[1], "<MrVIFit> MrVI \\(linear flavour, normal prior\\), L = 10, trained on 400 cells x 60 genes")
  expect_match(out, "batches: 1", all = FALSE)
  s <- summary(fit)
  expect_equal(s$n_samples, 5)
  expect_equal(s$n_cells, nrow(fit@cell_data))
  expect_equal(s$epochs, nrow(fit@history))
  expect_equal(s$validation_elbo, fit@history$validation_elbo[fit@config$best_epoch])
  expect_equal(s$seconds, sum(fit@history$seconds))
  expect_equal(s$n_latent, 10)
  expect_s3_class(s, "summary_MrVIFit")
  printed <- capture.output(print(s))
  expect_length(printed, 3)
  # as show() says it: one dimension for the linear flavour
  expect_match(printed[1], "MrVI fit (linear flavour): 400 cells x 60 genes, 5 samples, 1 batch, L = 10", fixed = TRUE)
  expect_match(printed[2], " in [0-9.e-]+ s", all = FALSE)
  expect_no_match(printed[2], " in 0.0 s", fixed = TRUE)
  expect_match(printed[2], sprintf("best epoch %d", fit@config$best_epoch), fixed = TRUE)
  # a fit whose training never recorded a best epoch holds the last one's weights
  fit@config$best_epoch <- NA_integer_
  expect_equal(summary(fit)$best_epoch, nrow(fit@history))
  expect_equal(summary(fit)$train_elbo, fit@history$train_elbo[nrow(fit@history)])
  expect_match(capture.output(show(fit)), sprintf("best %d", nrow(fit@history)), all = FALSE)
})

test_that("the constructor rebuilds a fit from its weights and data", {
  f <- small_fit()
  fit <- f$fit
  data <- suppressMessages(mrviData(f$sim$counts, sample = f$sim$sample, labels = f$sim$cell_type))
  keep <- setdiff(names(fit@config), c("model_json", "device", "nuisance", "mrvi_version", "weights_hash"))
  again <- mrvi:::new_mrvi_fit(data, fit@weights, fit@config$model_json, "cpu", fit@history, fit@config[keep])
  expect_true(validObject(again))
  expect_identical(again@config, fit@config)
  expect_identical(again@u_mean, fit@u_mean)
  expect_identical(again@u_sd, fit@u_sd)
  expect_identical(again@cell_data, fit@cell_data)
  expect_identical(again@sample_table, fit@sample_table)
  # the model is cached under the weights' checksum before new() runs
  expect_true(exists(paste0("model_", fit@config$weights_hash), envir = again@cache, inherits = FALSE))
})

test_that("edited slots are caught by the validity method", {
  fit <- small_fit()$fit
  expect_true(validObject(fit))
  edits <- list(
    function(f) { f@u_mean <- f@u_mean[, 1:3]; f },
    function(f) { f@u_mean <- f@u_mean[-1, ]; f },
    function(f) { f@u_sd <- f@u_sd[, 1:2]; f },
    function(f) { f@cell_data <- f@cell_data[-1, ]; f },
    function(f) { f@samples <- f@samples[-1]; f },
    function(f) { f@sample_table <- f@sample_table[-1, ]; f },
    function(f) { f@weights <- raw(); f },
    function(f) { f@config$model_json <- NULL; f },
    # slots out of step with the model the weights were made for
    function(f) { f@genes <- f@genes[-1]; f },
    function(f) { f@config$train$n_latent <- f@config$train$n_latent + 1L; f },
    function(f) { f@cell_data$batch[2] <- NA; f },
    # damage that reached Rust's panics (index out of bounds, NA strings, integer latents)
    function(f) { f@cell_data$sample <- NULL; f },
    function(f) { storage.mode(f@u_mean) <- "integer"; f },
    function(f) { f@u_sd[1, 1] <- 0; f },
    function(f) { f@config$model_json <- NA_character_; f },
    function(f) { f@config$model_json <- sub('"n_genes":[0-9]+', '"n_genes":-5', f@config$model_json); f },
    function(f) { f@config$train <- NULL; f }
  )
  for (edit in edits) {
    g <- edit(fit)
    expect_error(validObject(g))
    expect_error(mrviLatent(g), "`fit` is inconsistent", class = "mrvi_invalid_fit")
    expect_error(sampleDistances(g), "`fit` is inconsistent", class = "mrvi_invalid_fit")
  }
})

test_that("non-finite weights, even under a matching checksum, are a damaged fit", {
  fit <- small_fit()$fit
  g <- fit
  w <- g@weights
  w[length(w) - 3:0] <- as.raw(c(0x00, 0x00, 0xc0, 0x7f))  # the last tensor's last value: NaN
  g@weights <- w
  g@config$weights_hash <- mrvi:::mrvi_weights_hash(w)
  g@cache <- new.env()
  expect_error(mrviLatent(g, which = "z"), "non-finite value", class = "mrvi_damaged_error")
})

test_that("a model configuration that cannot be built is a damaged fit, not a panic", {
  fit <- small_fit()$fit
  for (edit in c('"n_hidden":0', '"n_batches":-2', '"dropout_rate":5')) {
    g <- fit
    field <- sub(":.*", "", edit)
    g@config$model_json <- sub(paste0(field, ':[-0-9.]+'), edit, g@config$model_json)
    g@cache <- new.env()  # (a copy shares the cache of models built)
    expect_error(mrviLatent(g, which = "z"), "model configuration has", class = "mrvi_damaged_error")
  }
})

test_that("the model cache shared by copies of a fit keeps the last few models built", {
  fit <- small_fit()$fit
  g <- fit
  g@cache <- new.env()
  w <- g@weights
  keys <- character()
  for (k in 1:5) {
    # weights edited in their last value (a copy with other weights, checksum updated)
    w[length(w) - 3:0] <- writeBin(as.double(k) / 1e3, raw(), size = 4)
    g@weights <- w
    g@config$weights_hash <- mrvi:::mrvi_weights_hash(w)
    keys <- c(keys, paste0("model_", g@config$weights_hash))
    expect_true(is.matrix(mrviLatent(g, which = "z")))
  }
  models <- grep("^model_", ls(g@cache), value = TRUE)
  expect_setequal(models, utils::tail(keys, mrvi:::cached_models))
})
