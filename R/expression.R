#' Counterfactual expression: cells as if they came from another sample
#'
#' The decoder's expected normalised expression (\eqn{\rho}, proportions over
#' genes that sum to 1 per cell) of the chosen cells had they come from `sample`
#' (and `batch`), from each cell's posterior mean of u. Under the cell's own
#' sample and batch this is the model's fitted mean divided by the library size.
#'
#' @param fit a [MrVIFit-class].
#' @param cells indices or names of fitted cells.
#' @param sample one fitted sample for all cells, or one per cell: names, or
#'   positions in `fit@samples` (a number is always a position, also when the
#'   sample names look like numbers).
#' @param batch `NULL` (each cell's own levels), or the levels to decode
#'   under: for a fit with one categorical nuisance covariate, one level for all
#'   cells or one per cell; in general a named list with, for some of the fit's
#'   covariates (`names(fit@config$nuisance$factors)`), one level or one per
#'   cell (the others stay the cell's own).
#' @param continuous `NULL` (each cell's own values), or a named list (or
#'   named numeric vector) with, for some continuous covariates, one value or one
#'   per cell, in the covariate's own units. Values more than 10 standard deviations from the fitted cells' mean give a
#'   warning (`mrvi_extrapolation`): the decoder saw no cells there.
#' @param average names of categorical covariates whose levels are averaged
#'   over: the expression is the mean over every combination of their levels
#'   (equal weights); `TRUE` for all of them; `NULL` or `FALSE`, none. Not together with `batch` for the
#'   same covariate. A fit's one categorical covariate is called `"batch"`, or by
#'   the metadata column it was given as.
#' @return a genes x cells matrix.
#' @examples
#' sim <- mrvi:::example_counts()
#' fit <- mrvi(sim$counts, sample = sim$sample, max_epochs = 2, verbose = FALSE)
#' e <- counterfactualExpression(fit, cells = 1:5, sample = fit@samples[2])
#' colSums(e)
#' @export
counterfactualExpression <- function(fit, cells, sample, batch = NULL, continuous = NULL, average = NULL) {
  call <- sys.call()
  check_required(call)
  check_fit(fit, call)
  apply_threads(call = call)  # (options(mrvi.threads), and one thread in a forked worker)
  idx <- resolve_cells(fit, cells, call)
  n <- length(idx)
  per_cell <- function(value, levels, arg) {
    if (length(value) == 1) value <- rep(value, n)
    if (length(value) != n) abort_arg("{.arg {arg}} must be one value or one per cell ({n}).", call = call)
    codes <- match(as.character(value), levels)
    if (anyNA(codes) && arg == "batch" && !fit_has_batch(fit)) {
      abort_arg("{.arg batch} must be {.code NULL}: the fit has no batch.", call = call)
    }
    if (anyNA(codes)) {
      abort_arg(c("{.arg {arg}} has value{?s} the model was not fitted on: {.val {unique(value[is.na(codes)])}}.",
                  "i" = "Fitted: {show_some(levels)}."), call = call)
    }
    codes - 1L
  }
  spec <- fit_nuisance(fit)
  factors <- names(spec$factors)
  # a fit's one categorical covariate is "batch"; it answers to its column's name too
  one_column <- fit@config$columns$batch
  as_batch <- function(nms) if (identical(factors, "batch") && !is.null(one_column)) replace(nms, nms == one_column, "batch") else nms
  # numbers are positions in fit@samples, as in every function that takes samples
  if (length(sample) != 1 && length(sample) != n) {
    abort_arg("{.arg sample} must be one value or one per cell ({n}).", call = call)
  }
  s <- rep_len(resolve_samples(fit, sample, call, "sample"), n) - 1L
  own <- cell_nuisance(fit, idx)
  site <- own$site
  if (!is.null(batch)) {
    # one covariate's levels as a vector (`batch` in messages), or a named list
    arg <- function(k) paste0("batch$", factors[k])
    if (!is.list(batch)) {
      if (length(factors) > 1) {
        abort_arg(c("{.arg batch} must be a named list: the fit has several nuisance covariates.",
                    "i" = "For example {.code batch = list({factors[1]} = ...)}; covariates: {.val {factors}}."), call = call)
      }
      batch <- stats::setNames(list(batch), factors)
      arg <- function(k) "batch"
    }
    if (!is.null(names(batch))) names(batch) <- as_batch(names(batch))
    k <- covariates_named(batch, factors, "batch", call)
    offsets <- cumsum(c(0L, lengths(spec$factors)))
    for (j in seq_along(k)) {
      site[, k[j]] <- per_cell(batch[[j]], spec$factors[[k[j]]], arg(k[j])) + offsets[k[j]]
    }
  }
  x <- own$continuous
  if (!is.null(continuous)) {
    if (!is.list(continuous) && !is.numeric(continuous)) {
      abort_arg("{.arg continuous} must be a named list or named numeric vector.", call = call)
    }
    k <- covariates_named(as.list(continuous), spec$continuous$name, "continuous", call)
    for (j in seq_along(k)) {
      v <- continuous[[j]]
      if (length(v) == 1) v <- rep(v, n)
      if (!is.numeric(v) || length(v) != n || any(!is.finite(v))) {
        abort_arg("{.arg continuous${spec$continuous$name[k[j]]}} must be one finite number or one per cell ({n}).", call = call)
      }
      x[, k[j]] <- check_standardised(matrix((v - spec$continuous$center[k[j]]) / spec$continuous$scale[k[j]]),
                                      spec$continuous$name[k[j]], "continuous", call)
    }
  }
  if (isTRUE(average)) average <- factors
  if (isFALSE(average)) average <- NULL  # (no averaging, as NULL)
  if (is.character(average)) average <- as_batch(average)
  if (!is.null(average)) {
    if (!is.character(average) || !all(average %in% factors)) {
      abort_arg(c("{.arg average} must name categorical nuisance covariates of the fit, or be {.code TRUE}.",
                  "i" = "Covariates: {.val {factors}}."), call = call)
    }
    both <- intersect(average, if (is.list(batch)) as_batch(names(batch)))
    if (length(both)) {
      # (named as the user named it: the fit's one covariate answers to its column's name)
      shown <- if (!is.null(one_column) && identical(factors, "batch")) replace(both, both == "batch", one_column) else both
      abort_arg("{.arg average} and {.arg batch} both set {.val {shown}}: choose one.", call = call)
    }
  }
  check_size(8 * n * length(fit@genes), "counterfactualExpression()", call)
  u <- fit@u_mean[idx, , drop = FALSE]
  v <- mean_over_levels(fit, site, as.character(average), function(site) {
    mrvi_counterfactual_expression(native_model(fit), u, s, site, x)
  })
  matrix(v, nrow = length(fit@genes), dimnames = list(fit@genes, rownames(fit@u_mean)[idx]))
}

# The decoder's expected expression (genes x rows) of latent states z (rows x L),
# averaged over every combination of the levels of the categorical nuisance
# covariates (equal weights), continuous covariates at their means: the expression
# that differential expression and expression-space distances compare.
decode_expression <- function(fit, z) {
  n <- nrow(z)
  spec <- fit_nuisance(fit)
  site <- matrix(0L, n, length(spec$factors))
  at_mean <- matrix(0, n, nrow(spec$continuous))
  rho <- mean_over_levels(fit, site, names(spec$factors),
                          function(site) mrvi_decode_z(native_model(fit), z, site, at_mean))
  matrix(rho, ncol = n)
}

# Positions among `known` of the names of `values` (a named list), which must
# all be known.
covariates_named <- function(values, known, arg, call) {
  nms <- names(values)
  if (is.null(nms) || any(!nzchar(nms)) || !all(nms %in% known)) {
    abort_arg(c("{.arg {arg}} must be named by the fit's covariates.",
                "i" = if (length(known)) "Covariates: {.val {known}}." else "The fit has none."), call = call)
  }
  # a covariate given twice: only one of the values could be used
  if (anyDuplicated(nms)) {
    abort_arg("{.arg {arg}} names covariate{?s} {.val {unique(nms[duplicated(nms)])}} more than once: give each once.",
              call = call)
  }
  match(nms, known)
}
