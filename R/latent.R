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
#' @param BPPARAM a BiocParallel back-end (default serial) over which the work
#'   is spread in blocks of cells; results are identical to serial ones whatever the back-end and
#'   number of workers (see [mrvi-parallel]).
#' @return a cells x L matrix with dimnames.
#' @examples
#' sim <- mrvi:::example_counts()
#' fit <- mrvi(sim$counts, sample = sim$sample, max_epochs = 2, verbose = FALSE)
#' dim(mrviLatent(fit, which = "z"))
#' @export
mrviLatent <- function(fit, x = NULL, which = c("u", "z"), use_mean = TRUE, sample = NULL,
                       BPPARAM = BiocParallel::SerialParam()) {
  call <- sys.call()
  check_fit(fit, call)
  check_bpparam(BPPARAM, call)
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
    post <- bp_map(bp_split(seq_len(ncol(counts))), function(j) {
      block <- counts[, j, drop = FALSE]
      p <- mrvi_encode(native_model(fit), nrow(block), ncol(block), block@p, block@i, block@x, codes[j])
      list(mean = matrix(p$mean, length(j)), sd = matrix(p$sd, length(j)))
    }, BPPARAM = BPPARAM)
    cells <- colnames(counts)
    mean <- latent_matrix(do.call(rbind, lapply(post, `[[`, "mean")), cells, "u")
    sd <- latent_matrix(do.call(rbind, lapply(post, `[[`, "sd")), cells, "u")
  }
  # draws come from R's generator here, in this process, before the work is spread
  u <- if (use_mean) mean else mean + sd * stats::rnorm(length(sd))
  if (which == "u") return(u)
  z <- bp_map(bp_split(seq_len(nrow(u))), function(r) {
    matrix(mrvi_z_from_u(native_model(fit), u[r, , drop = FALSE], codes[r]), length(r))
  }, BPPARAM = BPPARAM)
  latent_matrix(do.call(rbind, z), cells, "z")
}

# Read new cells for a fitted model: known samples, the fitted genes in order.
new_cells <- function(fit, x, sample, call) {
  if (is.null(sample)) {
    abort_arg("{.arg sample} is required with new cells {.arg x}: one of the fitted samples per cell.",
              call = call)
  }
  # new cells need only known samples, not two of them
  data <- with_call(suppressMessages(mrviData(x, sample = sample, min_samples = 1)), call)
  unknown <- setdiff(levels(data$sample), fit@samples)
  if (length(unknown)) {
    abort_arg(c("{.arg sample} has sample{?s} the model was not fitted on: {show_some(unknown)}.",
                "i" = "Fitted samples: {show_some(fit@samples)}."), call = call)
  }
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
#' @param BPPARAM a BiocParallel back-end (default serial) over which the work
#'   is spread in blocks of cells; results are identical to serial ones whatever the back-end and
#'   number of workers (see [mrvi-parallel]).
#' @return an array `[cells, samples, L]` (or `[cells, samples, L, draw]`) with
#'   dimnames.
#' @examples
#' sim <- mrvi:::example_counts()
#' fit <- mrvi(sim$counts, sample = sim$sample, max_epochs = 2, verbose = FALSE)
#' dim(counterfactualLatent(fit, cells = 1:10))
#' @export
counterfactualLatent <- function(fit, cells = NULL, samples = NULL, use_mean = TRUE, mc_samples = 0,
                                 BPPARAM = BiocParallel::SerialParam()) {
  call <- sys.call()
  check_fit(fit, call)
  check_bpparam(BPPARAM, call)
  check_flag(use_mean, "use_mean", call)
  mc_samples <- check_whole(mc_samples, "mc_samples", call)
  cell_idx <- resolve_cells(fit, cells, call)
  sample_idx <- resolve_samples(fit, samples, call)
  L <- z_dim(fit)
  bytes <- 8 * length(cell_idx) * length(sample_idx) * L * max(1, mc_samples)
  check_size(bytes, "counterfactualLatent()", call)
  mean <- fit@u_mean[cell_idx, , drop = FALSE]
  sd <- fit@u_sd[cell_idx, , drop = FALSE]
  # draws come from R's generator in this process; only z is computed in tasks
  one <- function(u) {
    v <- bp_map(bp_split(seq_len(nrow(u))), function(r) {
      matrix(mrvi_counterfactual_z(native_model(fit), u[r, , drop = FALSE], length(r), sample_idx - 1L), length(r))
    }, BPPARAM = BPPARAM)
    array(do.call(rbind, v), c(nrow(u), length(sample_idx), L),
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
