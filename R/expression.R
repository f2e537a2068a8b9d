#' Counterfactual expression: cells as if they came from another sample
#'
#' The decoder's expected normalised expression (\eqn{\rho}, proportions over
#' genes that sum to 1 per cell) of the chosen cells had they come from `sample`
#' (and `batch`), from each cell's posterior mean of u. Under the cell's own
#' sample and batch this is the model's fitted mean divided by the library size.
#'
#' @param fit a [MrVIFit-class].
#' @param cells indices or names of fitted cells.
#' @param sample one fitted sample for all cells, or one per cell.
#' @param batch `NULL` (each cell's own batch), one batch for all cells, or one per cell.
#' @return a genes x cells matrix.
#' @examples
#' sim <- mrvi:::example_counts()
#' fit <- mrvi(sim$counts, sample = sim$sample, max_epochs = 2, verbose = FALSE)
#' e <- counterfactualExpression(fit, cells = 1:5, sample = fit@samples[2])
#' colSums(e)
#' @export
counterfactualExpression <- function(fit, cells, sample, batch = NULL) {
  call <- sys.call()
  check_fit(fit, call)
  idx <- resolve_cells(fit, cells, call)
  n <- length(idx)
  per_cell <- function(value, levels, arg) {
    if (length(value) == 1) value <- rep(value, n)
    if (length(value) != n) abort_arg("{.arg {arg}} must be one value or one per cell ({n}).", call = call)
    codes <- match(as.character(value), levels)
    if (anyNA(codes)) {
      abort_arg(c("{.arg {arg}} has value{?s} the model was not fitted on: {.val {unique(value[is.na(codes)])}}.",
                  "i" = "Fitted: {show_some(levels)}."), call = call)
    }
    codes - 1L
  }
  s <- per_cell(sample, fit@samples, "sample")
  b <- if (is.null(batch)) as.integer(fit@cell_data$batch[idx]) - 1L else per_cell(batch, fit@batches, "batch")
  check_size(8 * n * length(fit@genes), "counterfactualExpression()", call)
  v <- mrvi_counterfactual_expression(native_model(fit), fit@u_mean[idx, , drop = FALSE], n, s, b)
  matrix(v, nrow = length(fit@genes), dimnames = list(fit@genes, rownames(fit@u_mean)[idx]))
}
