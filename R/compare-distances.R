#' How well do sample distance matrices separate known sample covariates?
#'
#' Puts MrVI's distances beside baselines ([pseudobulkDistances()],
#' [proportionDistances()], [compositionDistances()]) on the user's own data:
#' per method, group and covariate,
#' * `r2`: PERMANOVA \eqn{R^2}, the share of the total sum of squared distances
#'   between the covariate's categories (\eqn{1 - SS_W / SS_T}); for distances
#'   that are not Euclidean (correlation distances, normalised distances) it
#'   can be negative;
#' * `anosim_r`: ANOSIM R, \eqn{(\bar r_B - \bar r_W) / (M / 2)} with
#'   \eqn{\bar r_B}, \eqn{\bar r_W} the mean ranks of between- and
#'   within-category distances and \eqn{M = n(n-1)/2} (1: every within-category
#'   pair closer than every between pair; about 0: no separation);
#' * `nearest_agreement`: the share of samples whose nearest other sample has
#'   the same category, over the samples that have another of their category
#'   (a sample alone in its category cannot agree, whatever the method); a
#'   sample with several nearest samples at one distance counts the share of
#'   them in its category;
#' * `replicate_rank`: how close samples of the same category (replicates) sit:
#'   for each sample, the share of (replicate, other-category sample) pairs in
#'   which the other-category sample is the closer one, averaged over the
#'   samples that have a replicate and a sample of another category (0: replicates are always nearer than any other sample; about 0.5: no
#'   better than chance).
#' Distances are scale-free in all four, so methods compare directly. No
#' p-values: for tests use [groupAssociation()].
#'
#' @param distances a named list of distance results: arrays `[S, S, G]` (as
#'   [sampleDistances()]), `S x S` matrices or `dist` objects. An entry with one
#'   group (or a matrix) is compared in every group of the others.
#' @param sample_table a data.frame with one row per sample: a `sample` column
#'   or row names giving the samples (e.g. `attr(d, "sample_table")`).
#' @param covariates column names of `sample_table` (categorical).
#' @return a data.frame with one row per method, group and covariate: `method`,
#'   `group`, `covariate`, `n_samples` (samples with distances and a category),
#'   `r2`, `anosim_r`, `nearest_agreement`, `replicate_rank`. Samples left
#'   out of the distances (`NA` rows) and, as in [sampleDist()], samples of
#'   pairs no admissible cell compared (`NA` pairs; with a message) take no part.
#'   Scores that cannot be computed are `NA`, and a warning lists those rows and
#'   why (fewer than 3 samples or 2 categories, no category with 2 samples,
#'   every distance 0). Distances must carry sample names; each method one name.
#' @examples
#' sim <- mrvi:::example_counts()
#' fit <- mrvi(sim$counts, sample = sim$sample, labels = sim$cell_type,
#'             max_epochs = 2, verbose = FALSE)
#' d <- sampleDistances(fit, groups = "labels", mc_samples = 0)
#' p <- pseudobulkDistances(sim$counts, sim$sample, groups = sim$cell_type)
#' table <- data.frame(sample = fit@samples, arm = c("x", "x", "y", "y"))
#' compareSampleDistances(list(mrvi = d, pseudobulk = p), table, "arm")
#' @export
compareSampleDistances <- function(distances, sample_table, covariates) {
  call <- sys.call()
  check_required(call)
  if (!is.list(distances) || !length(distances) || is.null(names(distances)) || any(names(distances) == "") ||
      is.array(distances) || inherits(distances, "dist")) {
    abort_arg(c("{.arg distances} must be a named list of distance results.",
                "i" = "For example {.code list(mrvi = d, pseudobulk = p)}."), call = call)
  }
  if (anyDuplicated(names(distances))) {
    abort_arg("{.arg distances} names {.val {unique(names(distances)[duplicated(names(distances))])}} more than once: give each method one name.",
              call = call)
  }
  matrices <- lapply(names(distances), function(k) as_group_matrices(distances[[k]], k, call))
  names(matrices) <- names(distances)
  if (!is.data.frame(sample_table)) abort_arg("{.arg sample_table} must be a data.frame with one row per sample.", call = call)
  rows <- table_samples(sample_table)
  if (!is.character(covariates) || !length(covariates) || !all(covariates %in% names(sample_table))) {
    abort_arg(c("{.arg covariates} must be column names of {.arg sample_table}.",
                "i" = "Columns: {show_some(names(sample_table), 12)}."), call = call)
  }
  # a sample absent from the table would leave the scores silently (NA covariate)
  samples <- unique(unlist(lapply(matrices, function(ms) lapply(ms, rownames))))
  absent <- setdiff(samples, rows)
  if (length(absent)) {
    abort_arg(c("{.arg sample_table} has no row for sample{?s} {.val {absent}} of {.arg distances}.",
                "i" = "Give one row per sample (for example {.code attr(d, \"sample_table\")}); a sample with an unknown covariate value has {.code NA} in its row."),
              call = call)
  }
  # each covariate holds categories, "" not among them (as in the tests of association)
  for (cov in covariates) {
    v <- sample_table[[cov]]
    if (is.list(v) || !is.null(dim(v))) {
      abort_arg(c("{.arg sample_table}'s column {.field {cov}} is not a vector of categories.",
                  "i" = "Give a factor, character or logical column."), call = call)
    }
    if (any(as.character(v[rows %in% samples]) == "", na.rm = TRUE)) {
      abort_arg(c("{.arg sample_table}'s column {.field {cov}} has an empty value ({.val {''}}).",
                  "i" = "Name every category; a sample without a value has {.code NA}."), call = call)
    }
  }
  # a sample's rows must agree (match() below takes the first)
  kept <- sample_table[rows %in% samples, c(covariates), drop = FALSE]
  kept_rows <- rows[rows %in% samples]
  distinct <- !duplicated(cbind(data.frame(.sample = kept_rows), kept))
  conflicting <- unique(kept_rows[distinct][duplicated(kept_rows[distinct])])
  if (length(conflicting)) {
    abort_arg(c("{.arg sample_table} has conflicting rows for sample{?s} {.val {conflicting}}.",
                "i" = "Give one row per sample."), call = call)
  }
  # the groups of the multi-group entries; without any, each entry is its own group
  groups <- unique(unlist(lapply(matrices, function(m) if (length(m) > 1) names(m))))
  out <- list()
  unscored <- character()
  for (method in names(matrices)) {
    for (g in if (length(groups)) groups else names(matrices[[method]])) {
      m <- if (length(matrices[[method]]) == 1) matrices[[method]][[1]] else matrices[[method]][[g]]
      if (is.null(m)) next
      for (cov in covariates) {
        y <- stats::setNames(sample_table[[cov]][match(rownames(m), rows)], rownames(m))
        # samples left out and then those of pairs no admissible cell compared
        # leave the scores, as they leave the trees
        keep <- !is.na(y) & !left_out_samples(m)
        scored <- drop_partial_samples(m[keep, keep, drop = FALSE])
        keep <- rownames(m) %in% rownames(scored)
        scores <- separation_scores(scored, droplevels(factor(y[rownames(scored)])))
        if (!is.null(attr(scores, "reason"))) unscored <- c(unscored, sprintf("%s / %s / %s: %s", method, g, cov,
                                                                               attr(scores, "reason")))
        out[[length(out) + 1]] <- data.frame(method = method, group = g, covariate = cov, n_samples = sum(keep),
                                             as.list(scores))
      }
    }
  }
  if (length(unscored)) {
    cli::cli_warn(c("{length(unscored)} row{?s} of scores {?is/are} NA (method / group / covariate):",
                    stats::setNames(unscored, rep("*", length(unscored)))),
                  class = "mrvi_warning", call = call)
  }
  res <- do.call(rbind, out)
  rownames(res) <- NULL
  res
}

# One distance result as a named list of S x S matrices, one per group.
as_group_matrices <- function(d, name, call) {
  # samples are matched to the sample table by name (as.matrix() numbers an unlabelled dist)
  unnamed <- if (inherits(d, "dist")) is.null(attr(d, "Labels")) else
    (is.matrix(d) || is.array(d)) && (is.null(rownames(d)) || is.null(colnames(d)))
  if (inherits(d, "dist")) d <- as.matrix(d)
  if (is.array(d) && length(dim(d)) == 3) check_not_per_cell(d, paste0("distances$", name), call)
  if (unnamed) {
    abort_arg(c("{.arg distances}${name} has no sample names.",
                "i" = "Name its rows and columns (or the dist's labels) by the samples of {.arg sample_table}."), call = call)
  }
  # rows are matched to the table by name and columns taken in the same order:
  # a matrix whose columns are in another order would score wrongly
  arg <- paste0("distances$", name)
  if (is.matrix(d)) return(list(all = check_distance_matrix(d, call, arg)))
  if (!is.array(d) || length(dim(d)) != 3 || is.null(dimnames(d)[[1]])) {
    abort_arg("{.arg distances}${name} must be an [S, S, G] array with sample names (as {.fn sampleDistances}), a matrix or a dist.",
              call = call)
  }
  out <- lapply(seq_len(dim(d)[3]), function(g) check_distance_matrix(group_slice(d, g), call, arg))
  stats::setNames(out, dimnames(d)[[3]] %||% as.character(seq_len(dim(d)[3])))
}

# PERMANOVA R^2, ANOSIM R, nearest-sample agreement and replicate rank of one
# distance matrix (without NA: see compareSampleDistances()) against a factor;
# NA where they cannot be computed, with the reason as attribute "reason".
separation_scores <- function(m, y) {
  n <- length(y)
  reason <- if (n < 3) "fewer than 3 samples with a distance and a category" else
    if (nlevels(y) < 2) "fewer than 2 categories" else
    if (all(table(y) < 2)) "no category with 2 samples (a continuous covariate?)" else
    if (all(m[upper.tri(m)] == 0)) "every distance between its samples is 0"
  if (!is.null(reason)) {
    return(structure(c(r2 = NA_real_, anosim_r = NA_real_, nearest_agreement = NA_real_, replicate_rank = NA_real_),
                     reason = reason))
  }
  ss <- permanova_ss(m^2, y)
  upper <- upper.tri(m)
  within <- outer(y, y, "==")[upper]
  r <- rank(m[upper])
  anosim <- (mean(r[!within]) - mean(r[within])) / (length(r) / 2)
  off <- m
  diag(off) <- Inf
  # (over the samples with a replicate, as replicate_rank: one alone in its
  # category counted as a miss for every method)
  has_mate <- tabulate(y, nlevels(y))[as.integer(y)] > 1
  # a sample's nearest samples, ties shared (which.min() would follow the order)
  agrees <- vapply(seq_len(n), function(i) mean(y[off[i, ] == min(off[i, ])] == y[i]), numeric(1))
  nearest <- mean(agrees[has_mate])
  # per sample: the share of (replicate, non-replicate) pairs where the
  # non-replicate is the closer one (a Mann-Whitney U statistic, scaled)
  ranks <- unlist(lapply(seq_len(n), function(i) {
    others <- setdiff(seq_len(n), i)
    rk <- rank(m[i, others])
    mates <- y[others] == y[i]
    k <- sum(mates)
    if (k > 0 && k < n - 1) (mean(rk[mates]) - (k + 1) / 2) / (n - 1 - k)
  }))
  c(r2 = 1 - ss[["within"]] / ss[["total"]], anosim_r = anosim, nearest_agreement = nearest,
    replicate_rank = mean(ranks))
}

# PERMANOVA sums of squares of squared distances `d2` against a factor.
permanova_ss <- function(d2, y) {
  within <- 0
  for (lev in levels(y)) {
    idx <- which(y == lev)
    if (length(idx) > 1) {
      sub <- d2[idx, idx]
      within <- within + sum(sub[upper.tri(sub)]) / length(idx)
    }
  }
  c(total = sum(d2[upper.tri(d2)]) / nrow(d2), within = within)
}
