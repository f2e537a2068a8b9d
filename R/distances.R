#' Sample x sample distances per cell group, or per cell
#'
#' MrVI's sample distances (paper eq. 3-4): for a cell n, a distance
#' \eqn{D(n)[a, b]} between its counterfactual representations as if from
#' sample a and from sample b (below); for a group of cells C,
#' \eqn{D(C)} is the mean of \eqn{D(n)} over the cells of C. Group means are
#' streamed over chunks of K cells (`chunk_size`) in Rust (memory \eqn{O(G S^2 + K S L)}):
#' the cells x samples x samples array is never formed. Per-cell matrices are
#' returned only for the cells asked for.
#'
#' Distances are measured in expression space by default (`space =
#' "expression"`): between the counterfactual expression profiles that the
#' decoder gives for \eqn{z_n^a} and \eqn{z_n^b}, as the Aitchison distance
#' of compositions, \eqn{D(n)[a, b] = \| clr(x_n^a) - clr(x_n^b) \|_2} with
#' \eqn{x_n^s} the log2 expected expression (levels of categorical nuisance
#' covariates averaged in log space, continuous ones at their means) and clr
#' the centring over genes: the norm of the log2 fold changes between the cell
#' as if from sample a and as if from sample b, relative to their mean over
#' genes. Every gene counts by its fold change, whatever its expression level.
#' The decoder's expected expression is a softmax of a linear map of L numbers,
#' so this distance is computed exactly in L dimensions, at the cost of a
#' latent distance (plus, for the attention flavour, the decoder's attention
#' block per cell and sample); no profile over genes is formed.
#'
#' `space = "latent"` gives the paper's distances between the counterfactual
#' z's. They depend on how the decoder spends z on genes, which the likelihood
#' does not pin down (the decoder can absorb any re-scaling of z's directions),
#' and they drift with training. On simulations at realistic scale (20,000
#' cells x 2,000 genes, 32 samples, about 10 planted genes per tree edge;
#' `bench/README.md`, "Validity"), on the same six default fits, expression-space
#' distances followed the planted trees with Spearman correlation 0.76-0.91
#' (at least 0.8 in 11 of 12 trees) against 0.48-0.86 in latent space (3 of 12),
#' and separated affected from unaffected cell types 15-44x against 6-12x.
#' Per-cell tests ([cellAssociation()]) measure in expression space too, against
#' a minimum effect in log2 units.
#'
#' Where samples are nested in sites (each sample in one site), a fit can carry
#' part of the site effect in its sample effects, which then separate the
#' samples of different sites in every cell type. Expression space shows this
#' more than latent space, since a site effect touches every gene: on one of
#' five fits of the reduced validity design (4,000 cells, 16 samples in 2 sites)
#' the unaffected types' distances were 15 log2 units across sites against 0.4
#' within (latent: 0.46 against 0.09). Comparing distances across and within
#' sites in cell types without expected structure shows whether a fit did this.
#'
#' @param fit a [MrVIFit-class].
#' @param groups `NULL` (one group of all cells), a column name of the fitted cell
#'   data (`fit@cell_data`: `sample`, `batch`, `labels` and the input's cell
#'   metadata), or a factor/character vector over the fitted cells (matched by
#'   name when named by the fitted cells). Cells with `NA` belong to no group.
#' @param cells indices or names of cells whose own matrices \eqn{D(n)} are
#'   wanted (instead of group means); `groups` must then be `NULL`.
#' @param min_cells a sample with fewer cells than this in a group is left out of
#'   that group's matrix (its row and column are `NA`); which samples were left
#'   out where is recorded in `attr(, "excluded")`. D(C) itself needs no cells of a sample
#'   in C (every cell of C is placed in every sample); the exclusion guards
#'   against samples whose effect on C was learned from too few of its cells.
#'   `min_cells = 0` keeps every sample (as scvi-tools' MRVI does).
#' @param normalize `FALSE`: plain distances. `TRUE`: distances in units of the
#'   cell's own posterior noise, as the later MrVI normalises them. For cell n,
#'   let \eqn{b_n} be the distances \eqn{\| z_n^{s_n}(u') - z_n^{s_n}(u'') \|}
#'   between all pairs of its `mc_samples` posterior draws of u, in its own
#'   sample, with mean \eqn{\mu_n} and standard deviation \eqn{\sigma_n}. Each
#'   draw's distance d becomes \eqn{\max(d - \mu_n, 0) / \sigma_n} before the
#'   mean over draws: a difference between samples smaller than the spread of
#'   the cell's own representation counts as 0, and the rest is measured in
#'   units of that spread, comparable across cells. In expression space the same
#'   is done with the cell's expression coordinates in place of z. Needs `mc_samples >= 3`.
#' @param mc_samples posterior draws of u per cell over which \eqn{D(n)} is
#'   averaged; 0 uses the posterior mean (fastest, deterministic). Draws are made
#'   per cell from `seed`, so results do not depend on `chunk_size`.
#' @param chunk_size cells per chunk (default: from the number of samples, fewer where a chunk's
#'   draws (`mc_samples`) would take more than `getOption("mrvi.max_bytes")`; draws that one cell's
#'   would are an error).
#' @param admissible mask counterfactuals that extrapolate: `NULL` (none),
#'   `TRUE` (computed with [admissibility()] defaults, under this call's `seed`
#'   and `BPPARAM`) or a logical matrix of
#'   cells x samples (all fitted cells, or the `cells` asked for), as
#'   `admissibility(fit)$admissible` (or [admissibility()]'s result itself;
#'   rows named by cell are matched to the
#'   cells by name). A cell then contributes to
#'   \eqn{D(C)[a, b]} only when both samples are admissible for it, and each
#'   pair is the mean over the cells that contributed (`NA` if none); with
#'   `cells`, inadmissible pairs are `NA`.
#' @param seed seed of the posterior draws (default: the fit's seed, `fit@config$seed`).
#'   Draw m of cell i depends on the seed, i and m alone, so a cell's draws are
#'   the same whichever cells are asked for, in whatever chunks, in every
#'   function that draws u.
#' @param BPPARAM a BiocParallel back-end (default serial) over which the work
#'   is spread: one task per group, or per block of `cells`; results are identical to serial ones whatever the back-end and
#'   number of workers (see [mrvi-parallel]).
#' @param space `"expression"` (default: Aitchison distances between the
#'   counterfactual expression profiles) or `"latent"` (the paper's distances
#'   between the counterfactual z's); see Details.
#' @param max_cells at most this many cells per group, evenly spaced in the
#'   fit's cell order (no random numbers are drawn); a group's mean is then over
#'   those cells. `NULL` (default) or `Inf`: every cell.
#' @param verbose with `groups`: show a progress bar over the groups, once the
#'   work takes more than 2 s.
#' @return with `groups`: an array `[S, S, G]` with dimnames (sample, sample,
#'   group) and attributes `n_cells` (cells per group that the means are
#'   over), `excluded` (per group, the samples left out), `min_cells`,
#'   `sample_table`, `space` and `normalize` (the last two set the unit of
#'   [groupAssociation()]'s default `min_effect`; `[` drops them all: select
#'   groups with `groups` instead). With `cells`: an array `[cells, S, S]`.
#' @examples
#' sim <- mrvi:::example_counts()
#' fit <- mrvi(sim$counts, sample = sim$sample, labels = sim$cell_type,
#'             max_epochs = 2, verbose = FALSE)
#' d <- sampleDistances(fit, groups = "labels", mc_samples = 0)
#' dim(d)
#' d[, , 1]
#' @export
sampleDistances <- function(fit, groups = NULL, cells = NULL, min_cells = 5, normalize = FALSE,
                            mc_samples = 10, chunk_size = NULL, admissible = NULL, seed = fit@config$seed,
                            BPPARAM = BiocParallel::SerialParam(), space = c("expression", "latent"),
                            max_cells = NULL, verbose = TRUE) {
  call <- sys.call()
  check_required(call)
  check_fit(fit, call)
  check_bpparam(BPPARAM, call)
  min_cells <- check_whole(min_cells, "min_cells", call)
  seed <- check_whole(seed, "seed", call)
  mc_samples <- check_whole(mc_samples, "mc_samples", call)
  check_normalize_draws(normalize, mc_samples, call)
  space <- match_choice(space, c("expression", "latent"), "space", call)
  expression <- space == "expression"
  max_cells <- if (is.null(max_cells) || identical(max_cells, Inf)) Inf else check_count(max_cells, "max_cells", call)
  check_flag(verbose, "verbose", call)
  S <- length(fit@samples)
  block <- resolve_chunk_size(fit, chunk_size, call, mc_samples, normalize)
  apply_threads(call = call)
  own <- as.integer(fit@cell_data$sample) - 1L
  if (!is.null(cells)) {
    if (!is.null(groups)) abort_arg("Give {.arg groups} or {.arg cells}, not both.", call = call)
    idx <- resolve_cells(fit, cells, call)
    check_size(8 * length(idx) * S * S, "sampleDistances(cells = )", call)
    mask <- resolve_admissible(fit, admissible, idx, call, seed, BPPARAM)
    d <- bp_rows(c(length(idx), S, S), function(rows) {
      mrvi_cell_distances(native_model(fit), fit@u_mean, fit@u_sd, nrow(fit@u_mean), own,
                          idx[rows] - 1L, mc_samples, normalize, seed, block, expression)
    }, BPPARAM = BPPARAM, what = "the per-cell distances", call = call)
    dimnames(d) <- list(rownames(fit@u_mean)[idx], fit@samples, fit@samples)
    if (!is.null(mask)) {
      out <- mask[, rep(seq_len(S), S)] & mask[, rep(seq_len(S), each = S)]
      d[!out] <- NA
    }
    return(d)
  }
  group <- resolve_groups(fit, groups, call)
  G <- nlevels(group)
  # each group's S x S means, as they come back and in the result
  check_size(2 * 8 * S * S * G, sprintf("sampleDistances(groups = ) with %d groups", G), call,
             hint = "Group cells coarsely (cell types or clusters, not single cells), or raise {.code options(mrvi.max_bytes = )}.")
  mask <- resolve_admissible(fit, admissible, seq_len(nrow(fit@u_mean)), call, seed, BPPARAM)
  # one task per group: a group's sums run over its cells in the same order
  # whether the other groups are computed in the same call or not
  # (the groups' cells are split once: per-group vectors as long as the fit
  # would be garbage that piles up over the groups of a large fit)
  by_group <- lapply(split(seq_along(group), group), thin_cells, max_cells)
  mask_values <- if (is.null(mask)) integer() else as.integer(mask)
  res <- vector("list", G)
  bp_map(unname(by_group), function(members) {
    mrvi_group_distances(native_model(fit), fit@u_mean, fit@u_sd, nrow(fit@u_mean), own,
                         members - 1L, mc_samples, normalize, seed, block, mask_values, expression)
  }, BPPARAM = BPPARAM, each = function(v, i) res[[i]] <<- v, progress = if (verbose) "Sample distances")
  # the [S, S, G] array filled group by group, each group's result released once
  # copied (at 1,000 samples and 20 groups the array is 160 MB)
  out <- array(NA_real_, c(S, S, G), dimnames = list(fit@samples, fit@samples, levels(group)))
  n_cells <- stats::setNames(vapply(res, `[[`, numeric(1), "n_cells"), levels(group))
  per_group <- table(factor(group, levels(group)), fit@cell_data$sample)
  excluded <- stats::setNames(vector("list", G), levels(group))
  damaged <- character()
  for (g in seq_len(G)) {
    d <- matrix(res[[g]]$mean, S, S)
    # a pair no admissible cell compared: a mean over no cells, NA (a NaN
    # without a mask is damage, which the kernels carry through as NaN)
    if (!is.null(mask)) d[is.nan(d)] <- NA
    if (any(is.nan(d))) damaged <- c(damaged, levels(group)[g])
    res[g] <- list(NULL)
    diag(d) <- 0
    few <- per_group[g, ] < min_cells
    # a sample that no admissible cell compared with any other is left out too
    if (!is.null(mask) && nrow(d) > 1) few <- few | rowSums(!is.na(d)) == 1
    excluded[[g]] <- fit@samples[few]
    d[few, ] <- NA
    d[, few] <- NA
    out[, , g] <- d
  }
  warn_if_all_excluded(excluded, S, min_cells, call, masked = !is.null(mask))
  warn_nonfinite_distances(damaged, call)
  attr(out, "n_cells") <- n_cells
  attr(out, "excluded") <- excluded
  attr(out, "min_cells") <- min_cells
  attr(out, "sample_table") <- fit@sample_table
  attr(out, "space") <- space
  attr(out, "normalize") <- normalize
  out
}

# Groups with NaN distances (damage: non-finite latents or counterfactuals),
# said once for them all; `untested`, by a test that left them out.
warn_nonfinite_distances <- function(groups, call, untested = FALSE) {
  if (!length(groups)) return(invisible())
  cli::cli_warn(c(paste0("{cli::qty(length(groups))}Group{?s} {.val {groups}}",
                         if (untested) " {?was/were} not tested: some of {?its/their} distances" else ": some distances",
                         " are NaN, a numerical failure (non-finite latent values or counterfactuals)."),
                  "i" = "Check the fit: {.code all(is.finite(fit@u_mean))} and its training history; refit if it diverged."),
                class = c("mrvi_nonfinite_distances", "mrvi_warning"), call = call)
}

# Groups whose matrix is all NA are recorded in attr(, "excluded"); when that
# is every group, the whole result is NA and the user must hear why.
warn_if_all_excluded <- function(excluded, n_samples, min_cells, call, masked = FALSE) {
  if (all(n_samples - lengths(excluded) < 2)) {
    cli::cli_warn(c(if (masked) "No group has 2 samples with at least {.arg min_cells} = {min_cells} cell{?s} that admissible cells compared: every distance is {.code NA}." else
                      "No group has 2 samples with at least {.arg min_cells} = {min_cells} cell{?s}: every distance is {.code NA}.",
                    "i" = "Lower {.arg min_cells} ({.code min_cells = 0} keeps every sample){if (masked) ', mask less' else ''}, or group cells more coarsely."),
                  class = c("mrvi_all_excluded", "mrvi_warning"), call = call)
  }
}

# For callers that report too few samples in their own words.
suppress_all_excluded <- function(expr) {
  withCallingHandlers(expr, mrvi_all_excluded = function(w) invokeRestart("muffleWarning"))
}

# At most k of a group's cells, evenly spaced in the fit's cell order (no random
# numbers: the caller's random state stays untouched, and the choice is the same
# in every call).
thin_cells <- function(cells, k) {
  if (length(cells) <= k) return(cells)
  cells[unique(round(seq(1, length(cells), length.out = k)))]
}

#' Hierarchical clustering of samples from MrVI distances
#'
#' @param d the result of [sampleDistances()] (an `[S, S, G]` array), one
#'   `S x S` matrix, or a `dist`. A matrix must be symmetric and non-negative
#'   with a zero diagonal (`NA` allowed); one without names gets the samples
#'   "1".."S", as `as.matrix()` names a `dist`.
#' @param group for an array, the group (one name, or one whole number in
#'   1..G); may be omitted when there is one group.
#' @param method agglomeration method of [stats::hclust()] (default average
#'   linkage; `"ward.D2"` and the others work too).
#' @details Samples left out of the group (`NA` rows, see `min_cells`) are
#'   dropped with a message. So are samples with some `NA` distances (pairs
#'   that no cell could compare, with `admissible`): the sample with the most
#'   `NA`s is dropped until none remain. The result is a real `hclust`: [as.dendrogram()],
#'   [cutree()] and `ape::as.phylo()` work on it. For the distances themselves as
#'   a `dist`, use `sampleDist()` (or `as.dist(d[, , group])` when no sample is
#'   missing).
#' @return an `hclust` object with the sample names as labels.
#' @examples
#' sim <- mrvi:::example_counts()
#' fit <- mrvi(sim$counts, sample = sim$sample, max_epochs = 2, verbose = FALSE)
#' hc <- sampleHclust(sampleDistances(fit, mc_samples = 0))
#' plot(hc)
#' @export
sampleHclust <- function(d, group = NULL, method = "average") {
  call <- sys.call()
  check_required(call)
  methods <- c("average", "complete", "single", "ward.D", "ward.D2", "mcquitty", "median", "centroid")
  method <- match_choice(method, methods, "method", call)
  dd <- with_call(sampleDist(d, group), call)
  flat <- flat_reason(as.matrix(dd), attr(d, "normalize"))
  if (!is.null(flat)) {
    cli::cli_warn(c("The tree's shape is arbitrary: {flat}.",
                    "i" = "The distances separate none of these samples."),
                  class = c("mrvi_flat_tree", "mrvi_warning"), call = call)
  }
  hc <- stats::hclust(dd, method = method)
  hc$call <- call
  hc$dist.method <- "MrVI sample distance"
  hc
}

#' @rdname sampleHclust
#' @return `sampleDist()`: a `dist` over the samples kept in the group.
#' @export
sampleDist <- function(d, group = NULL) {
  call <- sys.call()
  check_required(call)
  m <- group_matrix(d, group, call)
  keep <- !left_out_samples(m)
  if (any(!keep)) {
    inform(c("i" = "Dropping sample{?s} {.val {rownames(m)[!keep]}}: too few cells in this group."))
  }
  # hclust() cannot use NA distances (pairs no admissible cell compared)
  m <- drop_partial_samples(m[keep, keep, drop = FALSE])
  if (nrow(m) < 2) {
    abort_arg(c("Fewer than 2 samples of {.arg d} have distances in this group: there is nothing to compare.",
                "i" = paste("A sample with fewer than {.arg min_cells} cells in the group has NA distances, and so has a pair",
                            "that no admissible cell compared (with {.arg admissible}): lower {.arg min_cells} in {.fn sampleDistances}",
                            "({.code min_cells = 0} keeps every sample), mask less, or choose another group.")),
              call = call)
  }
  stats::as.dist(m)
}

# Why a group's distances separate no samples (all 0; for normalised distances,
# all below 0.05 of the cells' posterior noise, as after a short fit), as text;
# NULL when they do.
flat_reason <- function(m, normalize = NULL) {
  v <- m[upper.tri(m)]
  v <- v[!is.na(v)]
  if (!length(v)) return(NULL)
  if (all(v == 0)) return("every distance between its samples is 0")
  if (isTRUE(normalize) && max(v) < 0.05) {
    return("every distance between its samples is below 0.05 (in units of the cells' posterior noise)")
  }
  NULL
}

# The samples of a distance matrix left out of it: NA rows (their diagonal
# aside, which a user's matrix may hold as 0). A pair no admissible cell
# compared is another matter (drop_partial_samples()).
left_out_samples <- function(m) {
  off <- m
  diag(off) <- NA
  apply(is.na(off), 1, all)
}

# Drop the sample with the most NA distances (pairs that no admissible cell
# compared) until none are left, saying which; the matrix left.
drop_partial_samples <- function(m) {
  dropped <- character()
  while (anyNA(m)) {
    worst <- which.max(rowSums(is.na(m)))
    dropped <- c(dropped, rownames(m)[worst])
    m <- m[-worst, -worst, drop = FALSE]
  }
  if (length(dropped)) {
    inform(c("i" = "Dropping sample{?s} {.val {dropped}}: {?its/their} distances to some samples are NA (no admissible cells)."))
  }
  m
}

# The S x S matrix to cluster or draw: `d` itself (a matrix or dist), or one
# group of a sampleDistances()-shaped array; checked to be distances (square,
# symmetric, non-negative, zero diagonal; NA allowed where samples were left
# out), and named ("1".."S" when unnamed, as as.matrix() names a dist).
group_matrix <- function(d, group, call) {
  m <- if (inherits(d, "dist")) as.matrix(d) else if (is.matrix(d)) d else {
    if (!is.array(d) || length(dim(d)) != 3) {
      abort_arg("{.arg d} must be the result of {.fn sampleDistances}, a matrix or a dist.", call = call)
    }
    check_not_per_cell(d, "d", call)
    structure(group_slice(d, resolve_group(d, group, call)), sample_table = attr(d, "sample_table"))
  }
  check_distance_matrix(m, call)
}

# Per-cell distances ([cells, S, S], sampleDistances(cells = )) where group
# distances ([S, S, G]) are expected: said as such (they were read as groups).
check_not_per_cell <- function(d, arg, call) {
  dn <- dimnames(d)
  if (!is.null(dn[[2]]) && identical(dn[[2]], dn[[3]]) && !identical(dn[[1]], dn[[2]])) {
    abort_arg(c("{.arg {arg}} holds per-cell distances ([cells, samples, samples], {.fn sampleDistances} with {.arg cells}), not group distances ([samples, samples, groups]).",
                "i" = "Pass one cell's matrix ({.code d[1, , ]}), or group distances: {.code sampleDistances(fit, groups = ...)}."),
              call = call)
  }
}

# One group of an [S, S, G] array, as an index: a group name or a whole number in 1..G.
resolve_group <- function(d, group, call) pick_group(dimnames(d)[[3]], group, call)

# The position of `group` (a name or a number) among the names `groups`.
pick_group <- function(groups, group, call) {
  G <- length(groups)
  if (is.null(group)) {
    if (G != 1) {
      abort_arg(c("{.arg group} is required: {.arg d} has {G} groups.",
                  "i" = "Groups: {show_some(groups, 8)}."), call = call)
    }
    return(1L)
  }
  if (is.factor(group)) group <- as.character(group)  # a level is its name
  if (is.character(group) && length(group) == 1 && !is.na(group)) {
    if (!group %in% groups) {
      abort_arg(c("{.arg group} = {.val {group}} is not a group of {.arg d}.",
                  "i" = "Groups: {show_some(groups, 8)}."), call = call)
    }
    return(match(group, groups))
  }
  if (!is.numeric(group) || length(group) != 1 || is.na(group) || group != round(group) || group < 1 || group > G) {
    abort_arg(c("{.arg group} must be one group name of {.arg d} or one whole number in 1..{G}.",
                "x" = "You gave {given(group)}.",
                "i" = "Groups: {show_some(groups, 8)}."), call = call)
  }
  as.integer(group)
}

# Group g's S x S matrix of an [S, S, G] array, with the samples' names (d[, , g]
# would drop a one-sample group's matrix to a number).
group_slice <- function(d, g) matrix(d[, , g], dim(d)[1], dim(d)[2], dimnames = dimnames(d)[1:2])

check_distance_matrix <- function(m, call, arg = "d") {
  fail <- function(problem) {
    abort_arg(c("{.arg {arg}} must hold distances between samples: {problem}",
                "i" = "Give the result of {.fn sampleDistances}, a dist, or a symmetric matrix of non-negative distances with a zero diagonal."),
              call = call)
  }
  if (!is.numeric(m) || nrow(m) != ncol(m)) fail(sprintf("it is %s.", if (is.numeric(m)) paste(dim(m), collapse = " x ") else "not numeric"))
  labels <- rownames(m) %||% colnames(m)
  if (!is.null(rownames(m)) && !is.null(colnames(m)) && !identical(rownames(m), colnames(m))) {
    fail("its row and column names differ.")
  }
  if (is.null(labels)) labels <- as.character(seq_len(nrow(m)))
  if (anyDuplicated(labels)) fail(sprintf("sample %s appears twice.", show_some(unique(labels[duplicated(labels)]), 3)))
  dimnames(m) <- list(labels, labels)
  if (any(is.infinite(m))) fail("it has infinite values.")
  # NA marks samples left out; NaN is a numerical failure, never a distance
  if (any(is.nan(m))) fail("it has NaN values (a numerical failure, e.g. of a diverged fit, not samples left out).")
  # relative to the largest distance: rounding may leave tiny asymmetries
  tol <- sqrt(.Machine$double.eps) * max(abs(m[is.finite(m)]), 0)
  if (any(is.na(m) != is.na(t(m))) || any(abs(m - t(m)) > tol, na.rm = TRUE)) fail("it is not symmetric.")
  if (any(m < -tol, na.rm = TRUE)) fail("it has negative values.")
  if (any(abs(diag(m)) > tol, na.rm = TRUE)) fail("its diagonal is not 0.")
  m
}

# Dimension of z (that of u for the linear flavour).
z_dim <- function(fit) as.integer(fit@config$train$n_latent %||% ncol(fit@u_mean))
