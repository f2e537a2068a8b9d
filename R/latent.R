#' Latent representations u and z of cells
#'
#' @param fit a [MrVIFit-class].
#' @param x `NULL` for the cells the model was trained on, or new cells with
#'   the same genes (any input [mrviData()] accepts; genes are matched by name).
#' @param which `"u"` (sample-free) or `"z"` (sample-aware, under each cell's
#'   own sample).
#' @param use_mean `TRUE`: the posterior mean of u; `FALSE`: one draw from the
#'   posterior per cell (from R's random generator: use [set.seed()]).
#' @param sample for new cells (`x` given): their samples, a column name or a
#'   vector; each must be one of the fitted samples.
#' @return a cells x L matrix with dimnames.
#' @examples
#' sim <- mrvi:::example_counts()
#' fit <- mrvi(sim$counts, sample = sim$sample, max_epochs = 2, verbose = FALSE)
#' dim(mrviLatent(fit, which = "z"))
#' @export
mrviLatent <- function(fit, x = NULL, which = c("u", "z"), use_mean = TRUE, sample = NULL) {
  call <- sys.call()
  check_fit(fit, call)
  which <- match_choice(which, c("u", "z"), "which", call)
  check_flag(use_mean, "use_mean", call)
  if (is.null(x)) {
    mean <- fit@u_mean
    sd <- fit@u_sd
    codes <- as.integer(fit@cell_data$sample) - 1L
    cells <- rownames(mean)
  } else {
    data <- new_cells(fit, x, sample, call)
    counts <- data$counts
    codes <- match(as.character(data$sample), fit@samples) - 1L
    post <- mrvi_encode(native_model(fit), nrow(counts), ncol(counts), counts@p, counts@i,
                        counts@x, codes)
    cells <- colnames(counts)
    mean <- latent_matrix(post$mean, cells, "u")
    sd <- latent_matrix(post$sd, cells, "u")
  }
  u <- if (use_mean) mean else mean + sd * stats::rnorm(length(sd))
  if (which == "u") return(u)
  z <- mrvi_z_from_u(native_model(fit), u, codes)
  latent_matrix(z, cells, "z")
}

# Read new cells for a fitted model: known samples, the fitted genes in order.
new_cells <- function(fit, x, sample, call) {
  if (is.null(sample)) {
    abort_arg("{.arg sample} is required with new cells {.arg x}: one of the fitted samples per cell.",
              call = call)
  }
  data <- read_new_cells(x, sample = sample, call = call)
  unknown <- setdiff(levels(data$sample), fit@samples)
  if (length(unknown)) {
    abort_arg(c("{.arg sample} has sample{?s} the model was not fitted on: {show_some(unknown)}.",
                "i" = "Fitted samples: {show_some(fit@samples)}."), call = call)
  }
  align_genes(fit, data, call)
}

# mrviData() for cells brought to a fitted model: one sample is enough, and a
# few new samples alone in their batches are no confounding (the fit has others).
read_new_cells <- function(x, ..., call) {
  with_call(suppressMessages(withCallingHandlers(mrviData(x, ..., min_samples = 1),
    mrvi_confounded = function(w) invokeRestart("muffleWarning"))), call)
}

# The counts of `data` on the fitted genes, in the fit's order.
align_genes <- function(fit, data, call) {
  counts <- data$counts
  missing <- setdiff(fit@genes, rownames(counts))
  if (length(missing) == length(fit@genes)) {
    abort_arg(c("{.arg x} shares no gene names with the fit.",
                "i" = "Use the same gene identifiers as at fitting time."), call = call)
  }
  if (length(missing)) {
    # genes with no counts in the new cells were dropped by mrviData(): put them back as zeros
    pad <- Matrix::sparseMatrix(i = integer(), j = integer(), x = numeric(),
                                dims = c(length(missing), ncol(counts)),
                                dimnames = list(missing, colnames(counts)))
    counts <- rbind(counts, pad)
  }
  data$counts <- methods::as(counts[fit@genes, , drop = FALSE], "CsparseMatrix")
  data
}

#' Counterfactual sample-aware representations
#'
#' For each cell n and sample s', \eqn{z_n^{s'}}: the cell's z had it come from
#' sample s' (paper §3.1), computed from the cell's posterior of u.
#'
#' @param fit a [MrVIFit-class].
#' @param cells `NULL` (all cells the model was trained on), indices or cell names.
#' @param samples `NULL` (all samples), indices or sample names.
#' @param use_mean `TRUE`: from the posterior mean of u; `FALSE`: from one
#'   posterior draw per cell (R's random generator: use [set.seed()]).
#' @param mc_samples 0, or a number of posterior draws: then the result gains a
#'   4th dimension, one slice per draw.
#' @details The array has `cells x samples x L` numbers (times `mc_samples`).
#'   Before allocating, its size is estimated; above `getOption("mrvi.max_bytes")`
#'   (default 2 GB) the call stops and says how to ask for less. For distances
#'   over many cells use [sampleDistances()], which streams.
#' @return an array `[cells, samples, L]` (or `[cells, samples, L, draw]`) with
#'   dimnames.
#' @examples
#' sim <- mrvi:::example_counts()
#' fit <- mrvi(sim$counts, sample = sim$sample, max_epochs = 2, verbose = FALSE)
#' dim(counterfactualLatent(fit, cells = 1:10))
#' @export
counterfactualLatent <- function(fit, cells = NULL, samples = NULL, use_mean = TRUE, mc_samples = 0) {
  call <- sys.call()
  check_fit(fit, call)
  check_flag(use_mean, "use_mean", call)
  mc_samples <- check_whole(mc_samples, "mc_samples", call)
  cell_idx <- resolve_cells(fit, cells, call)
  sample_idx <- resolve_samples(fit, samples, call)
  L <- z_dim(fit)
  bytes <- 8 * length(cell_idx) * length(sample_idx) * L * max(1, mc_samples)
  check_size(bytes, "counterfactualLatent()", call)
  mean <- fit@u_mean[cell_idx, , drop = FALSE]
  sd <- fit@u_sd[cell_idx, , drop = FALSE]
  one <- function(u) {
    v <- mrvi_counterfactual_z(native_model(fit), u, nrow(u), sample_idx - 1L)
    array(v, c(nrow(u), length(sample_idx), L),
          dimnames = list(rownames(fit@u_mean)[cell_idx], fit@samples[sample_idx], paste0("z", seq_len(L))))
  }
  if (mc_samples == 0) {
    return(one(if (use_mean) mean else mean + sd * stats::rnorm(length(sd))))
  }
  draws <- lapply(seq_len(mc_samples), function(m) one(mean + sd * stats::rnorm(length(sd))))
  out <- array(unlist(draws), c(dim(draws[[1]]), mc_samples))
  dimnames(out) <- c(dimnames(draws[[1]]), list(paste0("draw", seq_len(mc_samples))))
  out
}
