#' The fitted MrVI model
#'
#' `mrvi()` returns a `MrVIFit`. It holds everything needed to use the model
#' again, in this or another R session: the configuration, the weights as raw
#' safetensors bytes, the sample table, the training history, the names of
#' genes, samples, batches and cells, and the posterior of u for the training
#' cells. The native (libtorch) model is a cache, rebuilt from the weights on
#' first use, so `saveRDS()`/`readRDS()` and parallel workers just work.
#'
#' @slot config list: `model_json` (the architecture, JSON), `train` (training
#'   settings), `nuisance` (the nuisance covariates: `factors`, the levels of
#'   each categorical one, and `continuous`, the name, center and scale of each
#'   continuous one), `added` (after [mrviAddSamples()]: the samples added and
#'   their training history), `columns` (the cell metadata columns that gave
#'   `sample`, a single `batch` and `labels`), `assay` (the assay the counts were read from, and
#'   `seurat_assay`, the Seurat assay, for a Seurat object), `flavour`, `prior`, `n_threads` (the
#'   threads training used), `n_input_cells` (the cells given, dropped ones included), `device`, `seed`,
#'   `best_epoch`, `stopped_early`, `interrupted`,
#'   `mrvi_version`, `weights_hash` (a checksum of `weights`; fits made before it
#'   existed lack it and still load).
#' @slot weights raw: the weights in safetensors format.
#' @slot sample_table data.frame: one row per sample with its covariates.
#' @slot history data.frame: per epoch, train and validation ELBO,
#'   reconstruction loss and KL (per-cell means; the ELBO is minus reconstruction
#'   minus the whole KL, whatever the warm-up), KL weight (at the epoch's last
#'   step), seconds, cells/s,
#'   and where the seconds went (`seconds_batches`, `seconds_forward`,
#'   `seconds_backward`, `seconds_optimizer`; the rest is validation).
#' @slot genes,samples,batches,labels character: level names (`labels` empty
#'   when none were given; `batches`, with several categorical nuisance
#'   covariates, `"covariate:level"` for each).
#' @slot cell_data data.frame: per training cell: `sample`, `batch` (or, with
#'   several nuisance covariates, one column for each, under its name, and the
#'   continuous ones' values), `labels` and the cell metadata of the input
#'   (every per-cell column, so that analyses can group by any of them; QC
#'   columns included, which can be half of a fit's size: drop those not needed
#'   before fitting; a column named as one of mrvi's own but holding other
#'   values is kept as `<name>.1`); row names are the cell names.
#' @slot u_mean,u_sd matrix: cells x dim(u) posterior mean and sd of u (`n_latent_u`
#'   columns for the attention flavour; L, `n_latent`, for the linear one).
#' @slot cache environment: the native model, rebuilt when missing. Copies of a
#'   fit share this environment, so models are kept under the checksum of the
#'   weights they were built from: a copy with other weights gets its own.
#' @return `summary()`: a list of class `summary_MrVIFit` (printed as three
#'   lines): `n_cells`, `n_genes`, `n_samples`, `n_batches`, `n_latent` (z's
#'   dimension), `n_latent_u` (u's), `epochs`, `best_epoch` (the epoch whose
#'   weights the fit holds), `stopped_early`, `train_elbo` and `validation_elbo`
#'   at that epoch (per cell), `seconds`, `device`.
#' @examples
#' sim <- mrvi:::example_counts()
#' fit <- mrvi(sim$counts, sample = sim$sample, max_epochs = 2, verbose = FALSE)
#' fit
#' summary(fit)$epochs
#' f <- tempfile(fileext = ".rds")
#' saveRDS(fit, f)
#' identical(mrviLatent(readRDS(f)), mrviLatent(fit))
#' @exportClass MrVIFit
setClass("MrVIFit", representation(
  config = "list",
  weights = "raw",
  sample_table = "data.frame",
  history = "data.frame",
  genes = "character",
  samples = "character",
  batches = "character",
  labels = "character",
  cell_data = "data.frame",
  u_mean = "matrix",
  u_sd = "matrix",
  cache = "environment"
))

# The one way to make a MrVIFit from trained weights and the data they were
# trained on (mrvi(), and anything else that trains). The native model is built
# (and cached under the weights' checksum) before the fit, so that the fit is
# complete when new() runs the validity method below; the posterior of u of the
# training cells comes from that model. `config` holds the training settings and
# outcome (seed, flavour, prior, train, best_epoch, ...).
new_mrvi_fit <- function(data, weights, model_json, device, history, config) {
  native <- cached_model(model_json, weights, device)
  counts <- data$counts
  post <- encode_blocks(native$model, data, config$train$block_cells)
  # weights finite but huge (a too large lr in the last steps) give NaN latents
  if (!all(is.finite(post$mean)) || !all(is.finite(post$sd))) {
    abort_arg(c("Training diverged with {.arg lr} = {config$train$lr}: the fitted cells' latents are not finite.",
                "i" = divergence_hint()),
              class = "mrvi_divergence_error", call = user_call())
  }
  nuisance <- nuisance_design(data)$spec
  new("MrVIFit",
    config = c(list(model_json = model_json, device = device), config,
               list(nuisance = nuisance, mrvi_version = as.character(utils::packageVersion("mrvi")),
                    weights_hash = native$hash)),
    weights = weights,
    sample_table = data$sample_table,
    history = history,
    genes = rownames(counts),
    samples = levels(data$sample),
    batches = nuisance_level_names(nuisance),
    labels = if (is.null(data$labels)) character() else levels(data$labels),
    cell_data = fit_cell_data(data),
    u_mean = latent_matrix(post$mean, colnames(counts), "u"),
    u_sd = latent_matrix(post$sd, colnames(counts), "u"),
    cache = native$cache
  )
}

# The native model of `weights`, built before the fit and cached under their
# checksum, so that the fit is complete, and valid, when new() checks it.
cached_model <- function(model_json, weights, device) {
  hash <- mrvi_weights_hash(weights)
  cache <- new.env(parent = emptyenv())
  model <- build_model(model_json, weights, device)
  assign(paste0("model_", hash), model, envir = cache)
  list(model = model, cache = cache, hash = hash)
}

# The native model behind a fit: built from the weights on first use, and again
# after saveRDS()/readRDS() (the external pointer is then NULL). It is cached
# under the checksum of the weights, so it always answers for the bytes in
# fit@weights, whatever other copies of the fit (which share the cache) hold.
native_model <- function(fit) {
  hash <- weights_checksum(fit)
  key <- paste0("model_", hash)
  ptr <- get0(key, envir = fit@cache, inherits = FALSE)
  if (is.null(ptr) || !mrvi_model_valid(ptr)) {
    device <- fit@config$device
    if (!identical(device, "cpu") && !mrvi_backend_info()$cuda_available) device <- "cpu"
    ptr <- build_model(fit@config$model_json, fit@weights, device)
    assign(key, ptr, envir = fit@cache)
    # (copies of the fit with edited weights each add a model: the cache keeps
    # the last few built, whose memory, on a GPU too, is held while they are)
    built <- c(setdiff(get0("built", envir = fit@cache, inherits = FALSE), key), key)
    gone <- utils::head(built, -cached_models)
    if (length(gone)) rm(list = gone, envir = fit@cache)
    assign("built", utils::tail(built, cached_models), envir = fit@cache)
  }
  ptr
}

# How many native models a fit's cache (shared by its copies) keeps.
cached_models <- 3L

build_model <- function(model_json, weights, device) {
  tryCatch(mrvi_model_new(model_json, weights, device),
           mrvi_io_error = function(e) damaged_weights(e),
           mrvi_version_error = function(e) newer_fit(e))
}

# A fit whose model has parts this version does not know: made by a newer mrvi.
# Building the model without them would give wrong numbers without a word.
newer_fit <- function(e) {
  abort_arg(c("The fit was made by a newer version of mrvi than the one installed ({utils::packageVersion('mrvi')}).",
              "x" = "{conditionMessage(e)}",
              "i" = "Install the version of mrvi that made the fit, or a later one, to use it."),
            class = "mrvi_version_error", call = user_call())
}

# The checksum of fit@weights, after checking it against the one stored when the
# fit was made (fits from before checksums have none: nothing to compare).
weights_checksum <- function(fit) {
  hash <- mrvi_weights_hash(fit@weights)
  stored <- fit@config$weights_hash
  if (!is.null(stored) && !identical(hash, stored)) damaged_weights()
  hash
}

damaged_weights <- function(e = NULL) {
  abort_arg(c("The fit's weights are damaged; re-read or refit.",
              "x" = if (is.null(e)) "{.code fit@weights} does not match the checksum stored when the fit was made." else
                conditionMessage(e),
              "i" = "Read the fit again from its file ({.fn readRDS}), or fit the model again with {.fn mrvi}."),
            class = "mrvi_damaged_error", call = user_call())
}

# Slots that must agree with each other; checked by new(), validObject() and
# check_fit() (every function that takes a fit), so that an edited fit stops
# with a clear error rather than giving wrong results.
setValidity("MrVIFit", function(object) {
  problems <- character()
  n <- nrow(object@cell_data)
  dims <- list(u_mean = dim(object@u_mean), u_sd = dim(object@u_sd))
  train <- object@config$train
  if (!is.list(train)) problems <- c(problems, "@config$train (the training settings) is missing")
  # (the analyses hand these to Rust as doubles; a standard deviation is positive)
  if (!is.double(object@u_mean) || !is.double(object@u_sd)) problems <- c(problems, "@u_mean or @u_sd is not a matrix of doubles")
  if (any(object@u_sd <= 0, na.rm = TRUE)) problems <- c(problems, "@u_sd has values <= 0")
  # (training never leaves them: a non-finite latent is an edit, which would give
  # NaN distances and refused analyses further on; the analyses compute in single
  # precision, where a double beyond its largest value is infinite too)
  largest <- 3.4028234663852886e38
  bad <- sum(!is.finite(object@u_mean) | abs(object@u_mean) > largest) +
    sum(!is.finite(object@u_sd) | object@u_sd > largest)
  if (bad) problems <- c(problems, sprintf("its latents (@u_mean, @u_sd) hold %d non-finite value%s (in single precision)", bad, if (bad > 1) "s" else ""))
  n_u <- if (identical(object@config$flavour, "attention")) train$n_latent_u else train$n_latent
  for (slot in names(dims)) {
    d <- dims[[slot]]
    if (d[1] != n) problems <- c(problems, sprintf("@%s has %d rows for %d cells in @cell_data", slot, d[1], n))
    if (!is.null(n_u) && d[2] != n_u) problems <- c(problems, sprintf("@%s has %d columns; the model's u has %d", slot, d[2], n_u))
  }
  if (!identical(dimnames(object@u_mean), dimnames(object@u_sd))) problems <- c(problems, "@u_mean and @u_sd have different dimnames")
  if (!identical(rownames(object@u_mean), rownames(object@cell_data))) problems <- c(problems, "the rows of @u_mean are not the cells of @cell_data")
  if (!is.factor(object@cell_data$sample)) {
    problems <- c(problems, "@cell_data lacks its sample column (a factor of the fitted samples)")
  } else if (!identical(levels(object@cell_data$sample), object@samples)) {
    problems <- c(problems, "the samples of @cell_data are not @samples")
  }
  if (nrow(object@sample_table) != length(object@samples)) {
    problems <- c(problems, sprintf("@sample_table has %d rows for %d samples", nrow(object@sample_table), length(object@samples)))
  } else if (!setequal(as.character(object@sample_table$sample), object@samples)) {
    # (rows in another order are fine: every reader matches them by this column)
    problems <- c(problems, "the column sample of @sample_table does not name @samples, one row each")
  }
  spec <- fit_nuisance(object)
  gone <- setdiff(c(names(spec$factors), spec$continuous$name), names(object@cell_data))
  if (length(gone)) problems <- c(problems, sprintf("@cell_data lacks the nuisance covariate%s %s", if (length(gone) > 1) "s" else "", paste(gone, collapse = ", ")))
  # (a continuous covariate is standardised by its scale: 0 made every output NaN)
  if (any(!(spec$continuous$scale > 0))) problems <- c(problems, "@config$nuisance$continuous has a scale that is not positive")
  for (nm in intersect(c(names(spec$factors), spec$continuous$name), names(object@cell_data))) {
    if (anyNA(object@cell_data[[nm]])) problems <- c(problems, sprintf("@cell_data$%s has NA values", nm))
  }
  if (!length(object@weights)) problems <- c(problems, "@weights is empty")
  json <- object@config$model_json
  if (!is.character(json) || length(json) != 1 || is.na(json)) {
    problems <- c(problems, "@config$model_json is missing")
  } else {
    # the sizes the weights were made for, against the slots that index them
    sizes <- list(n_genes = length(object@genes), n_samples = length(object@samples), n_latent = train$n_latent)
    for (k in names(sizes)) {
      fitted <- model_size(json, k)
      if (!is.na(fitted) && !is.null(sizes[[k]]) && !identical(as.integer(sizes[[k]]), fitted)) {
        problems <- c(problems, sprintf("the model has %s = %d, the fit's slots %d", k, fitted, as.integer(sizes[[k]])))
      }
    }
  }
  if (length(problems)) problems else TRUE
})

# An integer field of the model's JSON (`"n_genes":2000`), NA when absent.
model_size <- function(json, field) {
  hit <- regmatches(json, regexec(sprintf('"%s":(-?[0-9]+)', field), json))[[1]]
  if (length(hit)) as.integer(hit[2]) else NA_integer_
}

#' @rdname MrVIFit-class
#' @param object a `MrVIFit`.
#' @export
setMethod("show", "MrVIFit", function(object) {
  h <- object@history
  fl <- object@config$flavour %||% "linear"
  dims <- if (fl == "attention") sprintf("L_u = %d, L_z = %d", ncol(object@u_mean), object@config$train$n_latent) else
    sprintf("L = %d", ncol(object@u_mean))
  cat(sprintf("<MrVIFit> MrVI (%s flavour, %s prior), %s, trained on %d cells x %d genes\n",
              fl, object@config$prior %||% "normal", dims, nrow(object@cell_data), length(object@genes)))
  cat(sprintf("  samples: %d (%s)\n", length(object@samples), show_some(object@samples, 4)))
  spec <- fit_nuisance(object)
  if (length(spec$factors) == 1 && !nrow(spec$continuous)) {
    cat(sprintf("  batches: %d\n", length(object@batches)))
  } else {
    cat(sprintf("  %s\n", describe_nuisance(spec)))
  }
  if (nrow(h)) {
    best <- best_epoch(object)
    # without validation cells (validation_fraction 0, or too small to hold one
    # out) the validation ELBO is NaN and early stopping watched the training ELBO
    elbo <- if (is.nan(h$validation_elbo[best])) sprintf("training ELBO %.2f per cell (no validation cells)", h$train_elbo[best]) else
      sprintf("validation ELBO %.2f per cell", h$validation_elbo[best])
    cat(sprintf("  epochs:  %d on %s, best %s%s; %s\n",
                nrow(h), object@config$device, best,
                if (isTRUE(object@config$stopped_early)) " (stopped early)" else
                  if (isTRUE(object@config$interrupted)) " (interrupted)" else "",
                elbo))
  }
  added <- unlist(lapply(object@config$added, `[[`, "samples"))
  if (length(added)) {
    cat(sprintf("  added:   %d sample%s by mrviAddSamples() (%s)\n", length(added),
                if (length(added) > 1) "s" else "", show_some(added, 4)))
  }
  covs <- setdiff(names(object@sample_table), c("sample", "n_cells"))
  cat(sprintf("  sample covariates: %s\n", if (length(covs)) paste(covs, collapse = ", ") else "none"))
  invisible(object)
})

#' @rdname MrVIFit-class
#' @param ... unused.
#' @export
setMethod("summary", "MrVIFit", function(object, ...) {
  h <- object@history
  best <- best_epoch(object)
  structure(list(
    n_cells = nrow(object@cell_data), n_genes = length(object@genes),
    n_samples = length(object@samples), n_batches = length(object@batches),
    n_latent = z_dim(object), n_latent_u = ncol(object@u_mean), epochs = nrow(h), best_epoch = best,
    stopped_early = isTRUE(object@config$stopped_early), interrupted = isTRUE(object@config$interrupted),
    train_elbo = if (nrow(h)) h$train_elbo[best] else NA_real_,
    validation_elbo = if (nrow(h)) h$validation_elbo[best] else NA_real_,
    seconds = sum(h$seconds), device = object@config$device,
    flavour = object@config$flavour %||% "linear", nuisance = describe_nuisance(fit_nuisance(object))
  ), class = "summary_MrVIFit")
})

#' @export
print.summary_MrVIFit <- function(x, ...) {
  # (as show() says them: one dimension for the linear flavour, each nuisance covariate)
  dims <- if (identical(x$flavour, "attention")) sprintf("L_u = %d, L_z = %d", x$n_latent_u, x$n_latent) else
    sprintf("L = %d", x$n_latent)
  cat(sprintf("MrVI fit (%s flavour): %d cells x %d genes, %d samples, %s, %s\n",
              x$flavour, x$n_cells, x$n_genes, x$n_samples, x$nuisance, dims))
  cat(sprintf("Training: %d epoch%s on %s in %s s%s; best epoch %s\n", x$epochs,
              if (x$epochs == 1) "" else "s", x$device, format(signif(x$seconds, 3)),
              if (x$stopped_early) " (stopped early)" else if (x$interrupted) " (interrupted)" else "",
              format(x$best_epoch)))
  cat(sprintf("ELBO per cell at the best epoch: training %s, validation %s\n",
              format(x$train_elbo, digits = 6),
              if (is.nan(x$validation_elbo)) "none (no validation cells)" else format(x$validation_elbo, digits = 6)))
  invisible(x)
}

# The epoch whose weights the fit holds: without early stopping's record (NA
# when nothing was watched) the last one.
best_epoch <- function(fit) {
  best <- fit@config$best_epoch
  if (is.null(best) || is.na(best)) nrow(fit@history) else best
}
