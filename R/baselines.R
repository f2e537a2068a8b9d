#' Baseline sample distances: pseudobulk expression and cell-type proportions
#'
#' Simple sample representations to put beside MrVI's distances (see
#' [compareSampleDistances()]). `pseudobulkDistances()`: within each group, the
#' counts of each sample's cells are summed, turned into log-CPM
#' (\eqn{\log_2(\mathrm{CPM} + 1)}), restricted to the `n_genes` genes whose
#' log-CPM varies most across the group's samples, and compared by correlation
#' distance (\eqn{1 - r}, Pearson) or Euclidean distance.
#' `proportionDistances()`: each sample's proportions over the groups (e.g.
#' cell types), centred-log-ratio transformed (with `pseudocount` added to the
#' counts), compared by Euclidean distance (the Aitchison distance); with
#' `transform = "none"`, plain Euclidean distances of proportions.
#'
#' Cells without counts (over the rows of `x` given) are left out of both, with
#' a message, as [mrvi()] leaves them out of a fit.
#'
#' Both return the shape of [sampleDistances()] (`[S, S, G]` with dimnames and
#' attribute `sample_table`), so [sampleHclust()], [plotSampleDistances()],
#' [plotSampleMDS()] and [compareSampleDistances()] take them as they are.
#' `proportionDistances()` has one "group", `proportions`.
#'
#' @inheritParams mrviData
#' @param groups a column name of the cell metadata or a vector over cells
#'   (`pseudobulkDistances()`: `NULL` for one group of all cells).
#' @param metric `"correlation"` or `"euclidean"`.
#' @param n_genes number of most variable genes (per group) used; at least 2
#'   for `metric = "correlation"`. Only genes that vary across the group's
#'   samples are used; samples with identical profiles are at distance 0, and
#'   where a correlation is undefined (a sample's profile constant over the
#'   genes) the distance is `NA` with a warning.
#' @param min_cells a sample with fewer cells than this in a group (or none) is
#'   left out of that group's matrix (`NA` row and column; listed in
#'   `attr(, "excluded")`).
#' @return an array `[S, S, G]` with dimnames and attributes `n_cells`,
#'   `excluded` and `sample_table` (and `genes`, per group the genes used, for
#'   pseudobulk).
#' @examples
#' sim <- mrvi:::example_counts()
#' p <- pseudobulkDistances(sim$counts, sim$sample, groups = sim$cell_type)
#' sampleHclust(p, group = 1)
#' proportionDistances(sim$counts, sim$sample, groups = sim$cell_type)[, , 1]
#' @export
pseudobulkDistances <- function(x, sample, groups = NULL, metric = c("correlation", "euclidean"), n_genes = 2000,
                                min_cells = 5) {
  call <- sys.call()
  check_required(call)
  metric <- match_choice(metric, c("correlation", "euclidean"), "metric", call)
  n_genes <- check_count(n_genes, "n_genes", call)
  if (metric == "correlation" && n_genes < 2) {
    abort_arg(c("{.arg n_genes} must be at least 2 with {.code metric = \"correlation\"}: a correlation over one gene is undefined.",
                "i" = "Give more genes, or {.code metric = \"euclidean\"}."), call = call)
  }
  min_cells <- check_whole(min_cells, "min_cells", call)
  data <- baseline_data(x, sample, groups, call, required = FALSE)
  data$counts <- in_memory_counts(data, call)
  group <- if (is.null(data$labels)) factor(rep("all", ncol(data$counts))) else data$labels
  samples <- levels(data$sample)
  S <- length(samples)
  out <- array(NA_real_, c(S, S, nlevels(group)), dimnames = list(samples, samples, levels(group)))
  excluded <- genes <- stats::setNames(vector("list", nlevels(group)), levels(group))
  for (g in levels(group)) {
    idx <- which(group == g)
    n <- table(factor(data$sample[idx], samples))
    # (a sample without cells in the group has no profile, whatever min_cells)
    kept <- samples[n >= max(1, min_cells)]
    excluded[[g]] <- samples[n < max(1, min_cells)]
    # a sample alone in the group: at distance 0 from itself, as in sampleDistances()
    if (length(kept) == 1) out[kept, kept, g] <- 0
    if (length(kept) < 2) next
    bulk <- data$counts[, idx, drop = FALSE] %*% Matrix::sparseMatrix(seq_along(idx), match(data$sample[idx], samples),
                                                                      x = 1, dims = c(length(idx), S))
    bulk <- as.matrix(bulk)[, match(kept, samples), drop = FALSE]
    log_cpm <- log2(t(t(bulk) / colSums(bulk)) * 1e6 + 1)
    variance <- apply(log_cpm, 1, stats::var)
    top <- order(variance, decreasing = TRUE)[seq_len(min(n_genes, sum(variance > 0)))]
    genes[[g]] <- rownames(data$counts)[top]
    if (!length(top)) {
      # (identical profiles are at distance 0; here that is all there is to say)
      cli::cli_warn(c("Group {.val {g}}: no gene's log-CPM varies across its samples' pseudobulks, so every distance is 0.",
                      "i" = "Their profiles are the same over every gene (as with one gene, whose proportion is 1 in every pseudobulk)."),
                    class = "mrvi_warning", call = call)
    }
    v <- log_cpm[top, , drop = FALSE]
    d <- if (metric == "correlation") 1 - suppressWarnings(stats::cor(v)) else as.matrix(stats::dist(t(v)))
    # a sample is at distance 0 from itself, and so are identical profiles where
    # the correlation is undefined (constant profiles; only those rows hold NA)
    diag(d) <- 0
    undefined <- which(rowSums(is.na(d)) > 0)
    for (a in undefined) for (b in undefined) if (identical(v[, a], v[, b])) d[a, b] <- 0
    if (anyNA(d)) {
      flat <- kept[apply(v, 2, function(p) all(p == p[1]))]
      cli::cli_warn(c("Group {.val {g}}: the correlation of sample{?s} {.val {flat}} with others is undefined (a constant profile over the genes used): {.code NA}.",
                      "i" = "Use {.code metric = \"euclidean\"} or more {.arg n_genes}."),
                    class = "mrvi_warning", call = call)
    }
    out[kept, kept, g] <- d
  }
  warn_if_all_excluded(excluded, S, min_cells, call)
  attr(out, "n_cells") <- stats::setNames(as.vector(table(group)), levels(group))
  attr(out, "excluded") <- excluded
  attr(out, "genes") <- genes
  attr(out, "metric") <- metric
  attr(out, "sample_table") <- data$sample_table
  out
}

#' @rdname pseudobulkDistances
#' @param transform `"clr"` (centred log-ratio, the default) or `"none"`.
#' @param pseudocount added to every sample's cell counts per group before the
#'   log-ratio (a group absent from a sample would otherwise give \eqn{\log 0}).
#' @export
proportionDistances <- function(x, sample, groups, transform = c("clr", "none"), pseudocount = 0.5) {
  call <- sys.call()
  check_required(call)
  transform <- match_choice(transform, c("clr", "none"), "transform", call)
  check_positive(pseudocount, "pseudocount", call)
  data <- baseline_data(x, sample, groups, call)
  counts <- unclass(table(data$sample, data$labels))
  values <- if (transform == "clr") clr(counts + pseudocount) else counts / rowSums(counts)
  samples <- rownames(counts)
  out <- array(as.matrix(stats::dist(values)), c(length(samples), length(samples), 1),
               dimnames = list(samples, samples, "proportions"))
  attr(out, "n_cells") <- c(proportions = ncol(data$counts))
  attr(out, "excluded") <- list(proportions = character())
  attr(out, "sample_table") <- data$sample_table
  out
}

# Centred log-ratio of each row of positive values.
clr <- function(m) {
  l <- log(m)
  l - rowMeans(l)
}

# The counts, samples and cell groups of a baseline, read as mrvi() reads its
# input (`groups` in the place of `labels`, and named so in errors; its messages,
# e.g. cells without counts left out, said as for a fit); `required`: the cells
# must come in groups (NULL gave an empty result or a base-R error).
baseline_data <- function(x, sample, groups, call, required = TRUE) {
  if (required && is.null(groups)) {
    abort_arg("{.arg groups} must give each cell's type or cluster (a column name or a vector), not {.code NULL}.", call = call)
  }
  with_call(mrviData(x, sample = sample, labels = groups), call, rename = c(labels = "groups"))
}
