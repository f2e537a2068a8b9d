#' Add new samples to a trained model
#'
#' Atlases are trained once and new donors arrive later. `mrviAddSamples()`
#' learns the new samples' own parameters -- their sample effect (linear
#' flavour: \eqn{A_s, a_s}; attention flavour: the sample embedding of the
#' attention block) and their encoder conditioning (the per-sample scales and
#' shifts of the encoder's normalisations and its sample embedding) -- with
#' every other weight frozen, on the new cells alone, and returns a fit that
#' covers the old and the new samples. Distances between new and reference
#' samples then come without retraining.
#'
#' @details
#' Each new sample's parameters start as a copy of those of the reference
#' sample under which its cells have the highest ELBO (its nearest reference
#' sample in the model's eyes). Training maximises the same ELBO as [mrvi()] (Adam, the fit's
#' minibatch size, learning rate, validation share and early stopping) without
#' a KL warm-up: with the decoder and prior fixed there is no collapse to avoid.
#' The reference samples are untouched: their parameters, the weights shared by
#' all samples and the posterior of their cells are exactly those of `fit`, so
#' every per-cell distance between reference samples ([sampleDistances()] with
#' `cells`), and every group distance over the reference cells, is unchanged:
#' bit for bit for the linear flavour; for the attention flavour up to
#' single-precision rounding (relative differences of ~1e-6), since its
#' counterfactuals are interpolated from a table whose grid spans every sample's
#' embedding, the new ones' included. Group distances over all cells also
#' average over the new cells.
#'
#' To compare new samples with the reference ones, use expression space
#' ([sampleDistances()]'s default): on simulated data (two datasets, four
#' samples added to each), the added samples' rows agreed with those of a fit on
#' all samples at Spearman 0.72-0.93 (at least 0.8 for 7 of 8) in expression
#' space, against 0.06-0.81 in latent space, where each fit's own latent noise
#' dominates (`bench/README.md`).
#'
#' The new cells must have the fitted genes (genes with no counts in them are
#' fine; genes the fit does not have, such as genes without counts in the
#' reference that [mrvi()] dropped, are left out, with a message) and, for every nuisance covariate of the fit, a level the
#' fit knows (new levels would need the shared decoder to learn, which stays
#' frozen) or a finite value. With a mixture prior biased by labels, the new
#' cells use the mixture weights without a label (`labels`, if given, are only
#' kept for grouping). Cells without counts are left
#' out, with a message. When the fit's `validation_fraction` holds out none of
#' the new cells, validation is off (a message says so) and early stopping
#' watches the training ELBO.
#'
#' @param fit a [MrVIFit-class].
#' @param x counts of the new cells (any input [mrviData()] accepts).
#' @param sample their samples (a column name or a vector): names the fit does
#'   not have.
#' @param batch their categorical nuisance covariates, as in [mrvi()]; `NULL` when
#'   the fit has none.
#' @param max_epochs maximum number of epochs; `NULL` uses the heuristic of
#'   [mrvi()] for the number of new cells.
#' @param seed integer seed (default: the fit's seed, `fit@config$seed`): a fixed
#'   seed gives the same fit on the same machine with the same thread count
#'   (`n_threads`; the count used is recorded, see Value).
#' @param n_threads CPU threads for libtorch, as in [mrvi()]: `NULL` uses
#'   `getOption("mrvi.threads")`, and when that is unset the idle cores. The
#'   minibatches are split over the threads, so the count changes the fit in its
#'   last bits.
#' @param assay for a `SingleCellExperiment` or Seurat `x`: the assay holding
#'   the new cells' raw counts; `NULL` (default): the fit's, as in [mrviLatent()].
#' @param continuous_covariates their continuous nuisance covariates, as in
#'   [mrvi()] (with the fit's names). Values more than 10 standard deviations from the fitted cells' mean give a
#'   warning (`mrvi_extrapolation`): the decoder saw no cells there.
#' @param verbose print the set-up and a progress bar.
#' @param labels optional labels of the new cells (a column name or a vector),
#'   kept in `fit@cell_data$labels` so that analyses grouped by `"labels"`
#'   include them; they do not enter training. Without them the new cells'
#'   labels are `NA` (a message says so when the fit has labels).
#' @return a [MrVIFit-class] over the fit's samples followed by the new ones.
#'   `fit@config$added` records each addition (`samples`, `history`,
#'   `best_epoch`, `seed`, `n_threads`); `fit@history` stays the training of the reference.
#' @examples
#' sim <- mrvi:::example_counts()
#' old <- sim$sample != "s04"
#' fit <- mrvi(sim$counts[, old], sample = droplevels(sim$sample[old]), max_epochs = 2, verbose = FALSE)
#' fit2 <- mrviAddSamples(fit, sim$counts[, !old], sample = sim$sample[!old], max_epochs = 2)
#' fit2@samples
#' @export
mrviAddSamples <- function(fit, x, sample, batch = NULL, max_epochs = NULL, seed = fit@config$seed,
                           continuous_covariates = NULL, verbose = FALSE, labels = NULL, n_threads = NULL,
                           assay = NULL) {
  call <- sys.call()
  check_required(call)
  check_fit(fit, call)
  # (n_threads or options(mrvi.threads), and one thread in a forked worker)
  threads <- apply_threads(n_threads, call = call)
  if (!is.null(max_epochs)) max_epochs <- check_count(max_epochs, "max_epochs", call)
  seed <- check_whole(seed, "seed", call)
  check_flag(verbose, "verbose", call)
  if (missing(sample) || is.null(sample)) {
    abort_arg("{.arg sample} is required: the new sample of every cell.", call = call)
  }
  data <- read_new_cells(fit, x, assay, sample = sample, batch = batch, labels = labels,
                         continuous_covariates = continuous_covariates, call = call)
  # (read_new_cells() keeps mrviData()'s messages about genes, padded back below, quiet)
  if (length(data$dropped$cells)) {
    inform(c("i" = "Leaving out {length(data$dropped$cells)} cell{?s} of {.arg x} without counts ({show_some(data$dropped$cells, 3)}): the model cannot learn from them."))
  }
  taken <- intersect(levels(data$sample), fit@samples)
  if (length(taken)) {
    abort_arg(c("{.arg sample} names {cli::qty(length(taken))}{?a sample/samples} the fit already has: {.val {taken}}.",
                "i" = "New samples need new names; to use fitted samples, see {.fn mrviLatent} with {.arg x}."),
              call = call)
  }
  clash <- intersect(colnames(data$counts), rownames(fit@cell_data))
  if (length(clash)) {
    unnamed <- is.null(colnames(x))
    abort_arg(c("{.arg x} has cell names the fit already has: {show_some(clash, 3)}.",
                "i" = if (unnamed) "{.arg x} has no cell names, so its cells were named {.val cell1}, ... as the fit's were.",
                "i" = "Give the new cells names of their own: {.code colnames(x) <- paste0(\"new_\", seq_len(ncol(x)))}."),
              call = call)
  }
  check_same_genes(fit, data, call, tell = TRUE)
  data <- align_genes(fit, data, call)
  nuisance <- new_cells_nuisance(fit, data, batch, continuous_covariates, call)

  counts <- data$counts
  s_old <- length(fit@samples)
  new_samples <- levels(data$sample)
  codes <- as.integer(data$sample) - 1L + s_old
  train <- fit@config$train
  model <- native_model(fit)
  # the fit's training settings; no KL warm-up (see Details); early stopping may
  # end the run at any epoch (min_epochs 0, as measured in bench/README.md)
  settings <- list(max_epochs = max_epochs, batch_size = train$batch_size, lr = train$lr,
                   n_epochs_kl_warmup = 0L, early_stopping = train$early_stopping,
                   patience = train$patience, min_epochs = 0L, validation_fraction = train$validation_fraction,
                   seed = seed, fused_likelihood = fused_likelihood_option(call))
  note_no_validation(train$validation_fraction, ncol(counts), hint = FALSE,
                     given = "The fit's {.arg validation_fraction} = {fraction}")
  trainer <- mrvi_trainer_add_samples(
    model, nrow(counts), ncol(counts), counts@p, counts@i, counts@x, codes, nuisance$site,
    nuisance$continuous, length(new_samples), settings)
  info <- mrvi_trainer_info(trainer)
  if (verbose) {
    inform(c("i" = paste0("Adding {length(new_samples)} sample{?s} ({ncol(counts)} cells) to the fit; ",
                          "up to {info$max_epochs} epoch{?s}.")))
  }
  # (Ctrl-C from here on never loses the epochs trained: through_interrupts())
  late <- FALSE
  through_interrupts({
    trained <- train_to_end(trainer, info, verbose, call)
    native <- cached_model(info$model_config, trained$done$weights, info$device)
    post <- mrvi_encode(native$model, nrow(counts), ncol(counts), counts@p, counts@i, counts@x, codes)
  }, function() late <<- TRUE)
  all_samples <- c(fit@samples, new_samples)
  old_cells <- fit@cell_data
  old_cells$sample <- factor(as.character(old_cells$sample), levels = all_samples)
  new_cells <- fit_cell_data(data)
  if (!is.null(fit@cell_data$labels) && is.null(labels)) {
    inform(c("i" = paste("The new cells have no {.arg labels}: analyses grouped by {.code \"labels\"} leave them out.",
                         "Give {.arg labels} to keep them in.")))
  }
  new_cells$sample <- factor(as.character(new_cells$sample), levels = all_samples)
  for (nm in names(nuisance$values)) new_cells[[nm]] <- nuisance$values[[nm]]
  # the metadata columns the fit's sample, batch and labels came from, for new
  # cells given as vectors (so that groups = "cell_type" keeps them)
  new_table <- data$sample_table
  for (role in names(fit@config$columns)) {
    column <- fit@config$columns[[role]]
    if (!column %in% names(new_cells)) new_cells[[column]] <- new_cells[[role]]
    # and in the sample table, where the fit's samples have it under the column's
    # name (the new samples' site was NA there, and their tests left them out)
    if (role != "sample" && role %in% names(new_table) && !column %in% names(new_table) && column %in% names(fit@sample_table)) {
      names(new_table)[names(new_table) == role] <- column
    }
  }
  config <- fit@config
  config$model_json <- info$model_config
  config$weights_hash <- native$hash
  config$added <- c(config$added, list(list(
    samples = new_samples, history = trained$history, seed = seed, n_threads = threads,
    interrupted = trained$run$interrupted,
    best_epoch = if (isTRUE(train$early_stopping)) trained$done$best_epoch else nrow(trained$history))))
  warn_interrupted(trained$run$interrupted, late || trained$run$late, nrow(trained$history) + 1, utils::tail(config$added, 1)[[1]]$best_epoch,
                   what = "Training of the new samples")
  new("MrVIFit", fit,
    config = config,
    weights = trained$done$weights,
    sample_table = bind_rows_fill(fit@sample_table, new_table),
    samples = all_samples,
    # (new cells may bring new label levels)
    labels = union(fit@labels, levels(data$labels)),
    cell_data = bind_rows_fill(old_cells, new_cells),
    u_mean = rbind(fit@u_mean, latent_matrix(post$mean, colnames(counts), "u")),
    u_sd = rbind(fit@u_sd, latent_matrix(post$sd, colnames(counts), "u")),
    cache = native$cache
  )
}

# New cells must carry the fitted genes (genes that mrviData() dropped for
# having no counts in them count as present): a missing gene is not a gene
# without counts. Genes the fit does not have play no part (the encoder and the
# frozen decoder know none of them): align_genes() leaves them out, and with
# `tell` a message says so when they hold counts of the new cells (genes the
# reference had no counts in, for example, which mrvi() dropped).
check_same_genes <- function(fit, data, call, tell = FALSE) {
  given <- c(rownames(data$counts), data$dropped$genes)
  missing <- setdiff(fit@genes, given)
  if (length(missing) == length(fit@genes)) {
    abort_arg(c("{.arg x} shares no gene names with the fit.",
                "i" = "Use the same gene identifiers as at fitting time ({show_some(fit@genes, 3)})."), call = call)
  }
  if (length(missing)) {
    abort_arg(c("{.arg x} must have the fitted genes.",
                "x" = "{length(missing)} fitted gene{?s} missing: {show_some(missing, 3)}.",
                "i" = "Give {.arg x} every gene of {.code fit@genes}: a gene left out is not a gene without counts."),
              call = call)
  }
  extra <- setdiff(rownames(data$counts), fit@genes)
  if (tell && length(extra)) {
    inform(c("i" = "{length(extra)} gene{?s} of {.arg x} with counts {?is/are} not in the fit and left out: {show_some(extra, 3)}."))
  }
}

# The nuisance covariates of new cells in the fit's coding: site codes, values
# standardised as at fitting time, and the per-cell columns for @cell_data.
new_cells_nuisance <- function(fit, data, batch, continuous, call) {
  spec <- fit_nuisance(fit)
  factors <- names(spec$factors)
  if (is.null(batch)) {
    if (length(factors) > 1 || length(spec$factors[[1]]) > 1) {
      abort_arg("{.arg batch} is required: the fit has the nuisance covariate{?s} {.val {factors}}.", call = call)
    }
    given <- data.frame(batch = data$batch)
  } else {
    if (!fit_has_batch(fit)) {
      abort_arg("{.arg batch} must be {.code NULL}: the fit has no batch.", call = call)
    }
    given <- data$nuisance$factors %||% data.frame(batch = data$batch)
    if (length(factors) == 1) names(given) <- factors
  }
  if (!setequal(names(given), factors)) {
    abort_arg(c("{.arg batch} must have the fit's nuisance covariates: {.val {factors}}.",
                "x" = "It has {.val {names(given)}}."), call = call)
  }
  for (nm in factors) {
    unknown <- setdiff(levels(given[[nm]]), spec$factors[[nm]])
    if (length(unknown)) {
      abort_arg(c("{.arg batch}{if (length(factors) > 1) paste0('$', nm) else ''} has level{?s} the fit does not know: {.val {unknown}}.",
                  "i" = "Known: {.val {spec$factors[[nm]]}}. New levels would need the frozen decoder to learn; fit the model again with them."),
                call = call)
    }
    given[[nm]] <- factor(as.character(given[[nm]]), levels = spec$factors[[nm]])
  }
  values <- data$nuisance$continuous
  if (!setequal(names(values), spec$continuous$name)) {
    abort_arg(c(if (length(spec$continuous$name)) "{.arg continuous_covariates} must have the fit's continuous covariates: {.val {spec$continuous$name}}." else
                  "{.arg continuous_covariates} must be {.code NULL}: the fit has no continuous covariates.",
                "x" = if (length(values)) "It has {.val {names(values)}}." else "It has none."), call = call)
  }
  given <- given[factors]
  list(site = site_codes(given, spec$factors),
       continuous = check_standardised(standardise(values, spec$continuous), spec$continuous$name,
                                  "continuous_covariates", call),
       values = if (is.null(values)) given else cbind(given, values[spec$continuous$name]))
}

# rbind() of two data.frames whose columns may differ: missing ones are NA.
bind_rows_fill <- function(a, b) {
  for (nm in setdiff(names(b), names(a))) a[[nm]] <- rep(NA, nrow(a))
  for (nm in setdiff(names(a), names(b))) b[[nm]] <- rep(NA, nrow(b))
  rbind(a, b[names(a)])
}
