#' Differential abundance of cell states between groups of samples
#'
#' For each cell n and each level A of a sample covariate, the log density of the
#' cell's u under the aggregated posterior of the samples in A:
#' \eqn{\log q_A(u_n) = \log \frac{1}{|A|}\sum_{s \in A} q_s(u_n)} with
#' \eqn{q_s(u) = \frac{1}{|M_s|}\sum_{m \in M_s} N(u; \mu_m, diag\,\sigma_m^2)}.
#' A state enriched in the samples of A has a higher \eqn{\log q_A} than under the
#' other levels.
#'
#' Approximations (documented choices): \eqn{q_s} uses a random subsample
#' \eqn{M_s} of at most `max_cells_per_sample` cells of sample s (cost
#' O(cells x samples x max_cells_per_sample x L): quadratic in the cells while
#' samples have fewer than `max_cells_per_sample` cells, 20 s for 60,000 cells
#' in 100 samples on one core; lower it for large data); densities are evaluated at each cell's
#' posterior mean; a cell never counts in its own sample's reference; with
#' `exclude_own_sample = TRUE` the cell's own sample is left out of its level's
#' average, so that a cell does not vote for its own sample.
#'
#' @param fit a [MrVIFit-class].
#' @param covariate a sample-table column name or a vector named by sample
#'   (categorical).
#' @param cells `NULL` (all fitted cells), indices or names.
#' @param exclude_own_sample see Details.
#' @param max_cells_per_sample reference subsample size per sample.
#' @param seed seed of the subsample (default: the fit's seed, `fit@config$seed`;
#'   R's generator is restored afterwards).
#' @param BPPARAM a BiocParallel back-end (default serial) over which the work
#'   is spread in blocks of cells; results are identical to serial ones whatever the back-end and
#'   number of workers (see [mrvi-parallel]).
#' @return a `DataFrame`, one row per cell: `log_q_<level>` for every level and,
#'   for every level, `log_ratio_<level>` = its log density minus the log of the
#'   mean density of the other levels. A level with no sample left for a cell (a
#'   level of one sample, the cell's own, under `exclude_own_sample`) is `NA`
#'   for that cell, and the other levels' means are over the levels defined.
#' @examples
#' sim <- mrvi:::example_counts()
#' fit <- mrvi(sim$counts, sample = sim$sample, max_epochs = 2, verbose = FALSE)
#' grp <- setNames(c("a", "a", "b", "b"), fit@samples)
#' head(differentialAbundance(fit, grp))
#' @export
differentialAbundance <- function(fit, covariate, cells = NULL, exclude_own_sample = TRUE,
                                  max_cells_per_sample = 5000, seed = fit@config$seed,
                                  BPPARAM = BiocParallel::SerialParam()) {
  call <- sys.call()
  check_required(call)
  check_fit(fit, call)
  check_bpparam(BPPARAM, call)
  check_flag(exclude_own_sample, "exclude_own_sample", call)
  max_cells_per_sample <- check_count(max_cells_per_sample, "max_cells_per_sample", call)
  seed <- check_whole(seed, "seed", call)
  # (a level of one sample has a density: no pairs are needed)
  y <- sample_covariate(covariate, fit@sample_table, fit@samples, call, fit@cell_data,
                        label = covariate_label(substitute(covariate)), need_pairs = FALSE)
  idx <- resolve_cells(fit, cells, call)
  apply_threads(call = call)
  # log q_A per cell and level, over blocks of cells: the cells x samples densities
  # are reduced to levels in the kernel and never held whole
  ref <- reference_cells(fit, max_cells_per_sample, seed)
  own <- as.integer(fit@cell_data$sample[idx])
  level <- ifelse(is.na(y), 0L, as.integer(y)) - 1L
  lq <- bp_rows(c(length(idx), nlevels(y)), function(rows) {
    mrvi_log_level_densities(fit@u_mean, fit@u_sd, nrow(fit@u_mean), ncol(fit@u_mean), idx[rows] - 1L, own[rows] - 1L,
                             ref$cells - 1L, ref$sample - 1L, level, nlevels(y), exclude_own_sample)
  }, BPPARAM = BPPARAM, what = "the level densities", call = call)
  # a level with no reference sample left for a cell (a level of one sample, the
  # cell's own, left out): its density there is undefined, NA (not -Inf, a density of 0)
  ref_n <- tabulate(ref$sample, length(fit@samples))
  own_ref <- ref_n[own] - (idx %in% ref$cells)  # the own sample's reference without the cell
  for (k in seq_len(nlevels(y))) {
    in_k <- which(level == k - 1L & ref_n > 0)
    n_k <- length(in_k) - (own %in% in_k & (exclude_own_sample | own_ref == 0))
    lq[n_k == 0, k] <- NA
  }
  colnames(lq) <- paste0("log_q_", levels(y))
  out <- as.list(as.data.frame(lq))
  for (k in seq_along(levels(y))) {
    others <- log_mean_exp(lq[, -k, drop = FALSE])
    out[[paste0("log_ratio_", levels(y)[k])]] <- lq[, k] - others
  }
  res <- S4Vectors::DataFrame(out, row.names = rownames(fit@u_mean)[idx], check.names = FALSE)
  S4Vectors::metadata(res)$covariate <- attr(y, "name")
  res
}

#' Which counterfactuals are supported by the data (admissibility)
#'
#' A counterfactual of cell n in sample s extrapolates when no cell of sample s is
#' like n. The pair (n, s) is admissible when \eqn{\log q_s(u_n)} (the aggregated
#' posterior of sample s, see [differentialAbundance()]) is at least the
#' `quantile` of the same log density over sample s's own cells (each left out of
#' its own reference). Use the flags to mask counterfactuals, for example
#' distances of inadmissible pairs. A sample with fewer than 2 cells has no
#' threshold (`NA`): no cell is admissible in it (`admissible` is `FALSE`,
#' `log_ratio` is `NA`), and so it is for every function that takes
#' `admissible = TRUE`.
#'
#' @param fit a [MrVIFit-class].
#' @param max_cells_per_sample reference cells per sample (a random subsample
#'   of at most this many, at least 2), as in [differentialAbundance()]; the
#'   cost is that function's, twice (the thresholds, then the cells).
#' @param quantile the per-sample threshold quantile.
#' @param cells `NULL` (all fitted cells), indices or names.
#' @param seed seed of the subsample (default: the fit's seed, `fit@config$seed`).
#' @param subsample deprecated: the former name of `max_cells_per_sample`.
#' @param BPPARAM a BiocParallel back-end (default serial) over which the work
#'   is spread in blocks of cells; results are identical to serial ones whatever the back-end and
#'   number of workers (see [mrvi-parallel]).
#' @return a list with `admissible` (logical cells x samples, never `NA`), `log_ratio`
#'   (\eqn{\log q_s(u_n)} minus the sample's threshold) and `threshold` (per
#'   sample).
#' @examples
#' sim <- mrvi:::example_counts()
#' fit <- mrvi(sim$counts, sample = sim$sample, max_epochs = 2, verbose = FALSE)
#' a <- admissibility(fit)
#' colMeans(a$admissible)
#' @export
admissibility <- function(fit, max_cells_per_sample = 5000, quantile = 0.05, cells = NULL,
                          seed = fit@config$seed, subsample = NULL, BPPARAM = BiocParallel::SerialParam()) {
  call <- sys.call()
  check_required(call)
  check_fit(fit, call)
  check_bpparam(BPPARAM, call)
  size_arg <- "max_cells_per_sample"
  if (!is.null(subsample)) {
    if (!missing(max_cells_per_sample)) {
      abort_arg("Give {.arg max_cells_per_sample} only: {.arg subsample} is its former name.", call = call)
    }
    max_cells_per_sample <- renamed_arg(subsample, "subsample", "max_cells_per_sample", call)
    size_arg <- "subsample"
  }
  max_cells_per_sample <- check_count(max_cells_per_sample, size_arg, call)
  seed <- check_whole(seed, "seed", call)
  if (!is.numeric(quantile) || length(quantile) != 1 || is.na(quantile) || quantile <= 0 || quantile >= 1) {
    abort_arg("{.arg quantile} must be one number in (0, 1).", call = call)
  }
  if (max_cells_per_sample < 2) {
    abort_arg(c("{.arg {size_arg}} must be at least 2 for {.fn admissibility}.",
                "x" = "A sample's threshold comes from its reference cells each left out of its own reference: one cell leaves none."),
              call = call)
  }
  idx <- resolve_cells(fit, cells, call)
  apply_threads(call = call)
  ref <- reference_cells(fit, max_cells_per_sample, seed)
  # thresholds from each sample's own reference cells (leave-one-out)
  own_logq <- sample_log_densities(fit, ref$cells, max_cells_per_sample, seed, ref, BPPARAM)
  threshold <- vapply(seq_along(fit@samples), function(s) {
    v <- own_logq[ref$sample == s, s]
    v <- v[is.finite(v)]
    if (length(v)) stats::quantile(v, quantile, names = FALSE) else NA_real_
  }, numeric(1))
  logq <- sample_log_densities(fit, idx, max_cells_per_sample, seed, ref, BPPARAM)
  log_ratio <- sweep(logq, 2, threshold)
  dimnames(log_ratio) <- list(rownames(fit@u_mean)[idx], fit@samples)
  # a pair that cannot be judged (NA: the sample has no threshold) is not
  # admissible, so that every caller of the mask reads it the same way
  list(admissible = !is.na(log_ratio) & log_ratio >= 0, log_ratio = log_ratio,
       threshold = stats::setNames(threshold, fit@samples))
}

reference_cells <- function(fit, max_per_sample, seed) {
  restore <- preserve_rng()
  on.exit(restore())
  fixed_rng(seed)
  sample <- as.integer(fit@cell_data$sample)
  cells <- unlist(lapply(seq_along(fit@samples), function(s) {
    idx <- which(sample == s)
    if (length(idx) > max_per_sample) sort(idx[sample.int(length(idx), max_per_sample)]) else idx
  }))
  list(cells = cells, sample = sample[cells])
}

# Log densities of the cells `idx` (rows) under each sample's reference cells
# (columns), over BPPARAM in blocks of cells.
sample_log_densities <- function(fit, idx, max_per_sample, seed, ref = reference_cells(fit, max_per_sample, seed),
                                 BPPARAM = BiocParallel::SerialParam()) {
  force(ref)  # drawn here, not in each task
  parts <- bp_map(bp_split(idx), function(cells) {
    v <- mrvi_log_sample_densities(fit@u_mean, fit@u_sd, nrow(fit@u_mean), ncol(fit@u_mean), cells - 1L,
                                   ref$cells - 1L, ref$sample - 1L, length(fit@samples))
    matrix(v, nrow = length(cells))
  }, BPPARAM = BPPARAM)
  do.call(rbind, parts)
}

# Per row, the log of the mean of exp() over the defined (non-NA) entries; NA
# when none is.
log_mean_exp <- function(m) {
  k <- rowSums(!is.na(m))
  mx <- do.call(pmax, c(unname(as.data.frame(m)), na.rm = TRUE))
  mx[!is.finite(mx)] <- 0
  out <- mx + log(rowSums(exp(m - mx), na.rm = TRUE)) - log(pmax(k, 1))
  out[k == 0] <- NA
  out
}
