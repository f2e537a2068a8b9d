#' The genes behind a split of the samples
#'
#' What separates two sets of samples, for the chosen cells? Each cell's
#' counterfactual expression (as [counterfactualExpression()], in the cell's
#' own batch) is decoded under every sample of both sides, for `mc_samples`
#' posterior draws of u. Per draw, a gene's log2 fold change is the mean over
#' cells of (mean log2 expression over the samples of side a) minus (the same
#' over side b); the result reports its mean over draws, its standard
#' deviation over draws (posterior uncertainty), and ranks genes by the size
#' of the mean. On simulated sample trees (`bench/tree_support.R`, 12 trees) the
#' top genes of the root split are the genes planted on its two edges (AUC
#' 0.93-1.00), while a cell type without the tree gives fold changes near 0.
#'
#' @param fit a [MrVIFit-class].
#' @param samples_a one side: fitted sample names or positions in `fit@samples`
#'   (a number is always a position, as in [counterfactualLatent()]), or a
#'   named logical vector over samples whose `TRUE` entries form the side, e.g. a
#'   clade of a sample tree, `cutree(sampleHclust(d, "T cells"), k = 2) == 1`.
#' @param samples_b the other side: sample names or positions, or `NULL` for the rest (with
#'   a logical `samples_a`, its `FALSE` entries; otherwise every other fitted
#'   sample).
#' @param cells `NULL` (all fitted cells), or indices, names or a logical vector
#'   over the fitted cells (e.g. one cell type: `fit@cell_data$labels == "B"`).
#' @param mc_samples posterior draws of u (0: the posterior mean only; the
#'   standard deviation is then `NA`).
#' @param seed seed of the posterior draws (default: the fit's seed, `fit@config$seed`).
#'   Draw m of cell i depends on the seed, i and m alone, so a cell's draws are
#'   the same whichever cells are asked for, in whatever chunks, in every
#'   function that draws u.
#' @return a data.frame with one row per gene, sorted by `rank`: `gene`, `lfc`
#'   (mean log2 fold change, side a over side b), `lfc_sd` (its standard
#'   deviation over draws), `z` (`lfc / lfc_sd`), `rank` (1 = largest absolute
#'   `lfc`), `expression_a` and `expression_b` (mean normalised expression of
#'   each side, over the cells and the draws). Attributes `samples_a`, `samples_b` and `n_cells`.
#' @examples
#' sim <- mrvi:::example_counts()
#' fit <- mrvi(sim$counts, sample = sim$sample, max_epochs = 2, verbose = FALSE)
#' genes <- sampleSplitGenes(fit, fit@samples[1:2], cells = 1:50, mc_samples = 3)
#' head(genes)
#' @export
sampleSplitGenes <- function(fit, samples_a, samples_b = NULL, cells = NULL, mc_samples = 10,
                             seed = fit@config$seed) {
  call <- sys.call()
  check_required(call)
  check_fit(fit, call)
  apply_threads(call = call)  # (options(mrvi.threads), and one thread in a forked worker)
  sides <- split_sides(fit, samples_a, samples_b, call)
  idx <- resolve_cells(fit, cells, call)
  mc_samples <- check_whole(mc_samples, "mc_samples", call)
  seed <- check_whole(seed, "seed", call)
  n_genes <- length(fit@genes)
  draws <- max(1L, mc_samples)
  check_size(8 * n_genes * draws, "sampleSplitGenes()", call,
             hint = "Ask for fewer draws ({.arg mc_samples}; the default is 10), or raise {.code options(mrvi.max_bytes = )}.")
  lfc <- matrix(0, n_genes, draws)
  expression <- matrix(0, n_genes, 2)
  # blocks of cells keep the decoded genes x cells matrices small
  for (part in split(idx, ceiling(seq_along(idx) / 512))) {
    batch <- cell_nuisance(fit, part)
    for (m in seq_len(draws)) {
      u <- posterior_u(fit@u_mean, fit@u_sd, part, if (mc_samples == 0) 0L else m, seed)
      a <- side_sums(fit, u, batch, sides$a)
      b <- side_sums(fit, u, batch, sides$b)
      lfc[, m] <- lfc[, m] + a$log2 - b$log2
      expression <- expression + cbind(a$expression, b$expression)
    }
  }
  lfc <- lfc / length(idx)
  mean_lfc <- rowMeans(lfc)
  lfc_sd <- if (draws > 1) apply(lfc, 1, stats::sd) else rep(NA_real_, n_genes)
  out <- data.frame(gene = fit@genes, lfc = mean_lfc, lfc_sd = lfc_sd, z = mean_lfc / lfc_sd,
                    rank = rank(-abs(mean_lfc), ties.method = "first"),
                    expression_a = expression[, 1] / (length(idx) * draws), expression_b = expression[, 2] / (length(idx) * draws))
  out <- out[order(out$rank), , drop = FALSE]
  rownames(out) <- out$gene
  attr(out, "samples_a") <- fit@samples[sides$a]
  attr(out, "samples_b") <- fit@samples[sides$b]
  attr(out, "n_cells") <- length(idx)
  out
}

# Over the cells of `u` decoded under each of `samples` (in their own batches): per
# gene, the sum over cells of the mean over samples of log2 expression, and of
# expression.
side_sums <- function(fit, u, batch, samples) {
  n <- nrow(u)
  log2_sum <- expression_sum <- 0
  for (s in samples) {
    rho <- matrix(mrvi_counterfactual_expression(native_model(fit), u, rep(s - 1L, n), batch$site,
                                                 batch$continuous), length(fit@genes))
    log2_sum <- log2_sum + rowSums(log2(rho))
    expression_sum <- expression_sum + rowSums(rho)
  }
  list(log2 = log2_sum / length(samples), expression = expression_sum / length(samples))
}

# The two sides of a split as sample indices, disjoint and non-empty.
split_sides <- function(fit, samples_a, samples_b, call) {
  as_names <- function(v, arg) {
    # names or positions, as every function that takes samples reads them
    if (!is.character(v) && !is.factor(v) && !is.numeric(v)) {
      abort_arg(c("{.arg {arg}} must be fitted sample names or positions (or, for {.arg samples_a}, a logical vector named by sample).",
                  "i" = "Fitted samples: {show_some(fit@samples)}."), call = call)
    }
    # numbers named by sample are cutree()'s clusters, not positions (unless
    # each names its own position, as which() on a vector named by sample gives)
    own_positions <- all(v %in% seq_along(fit@samples)) && identical(unname(names(v)), fit@samples[v])
    if (is.numeric(v) && !is.null(names(v)) && all(names(v) %in% fit@samples) && !own_positions) {
      abort_arg(c("{.arg {arg}} is numbers named by sample, like {.fn cutree}'s clusters: numbers here are sample positions.",
                  "i" = "For the samples of cluster 1: {.code cutree(hc, k = 2) == 1}."), call = call)
    }
    v <- fit@samples[resolve_samples(fit, v, call, arg)]
    unique(v)
  }
  if (is.logical(samples_a)) {
    if (is.null(names(samples_a)) || anyNA(samples_a)) {
      abort_arg(c("A logical {.arg samples_a} must be named by sample, without NA.",
                  "i" = "For example {.code cutree(hc, k = 2) == 1}."), call = call)
    }
    if (is.null(samples_b)) {
      if (all(samples_a)) {
        abort_arg(c("A logical {.arg samples_a} needs FALSE samples: they are {.arg samples_b}, and it has none.",
                    "i" = "For example {.code cutree(hc, k = 2) == 1}, or give {.arg samples_b}."), call = call)
      }
      samples_b <- names(samples_a)[!samples_a]
    }
    samples_a <- names(samples_a)[samples_a]
  }
  if (!is.null(samples_b) && !length(samples_b)) {
    abort_arg("{.arg samples_b} is empty: give at least one sample, or {.code NULL} for every sample not in {.arg samples_a}.", call = call)
  }
  a <- as_names(samples_a, "samples_a")
  b <- if (is.null(samples_b)) setdiff(fit@samples, a) else as_names(samples_b, "samples_b")
  if (!length(b)) abort_arg("{.arg samples_b} is empty: {.arg samples_a} holds every sample.", call = call)
  if (length(intersect(a, b))) {
    abort_arg("{.arg samples_a} and {.arg samples_b} share sample{?s} {.val {intersect(a, b)}}.", call = call)
  }
  list(a = match(a, fit@samples), b = match(b, fit@samples))
}
