#' Which cells' sample distances follow a sample covariate (guided analysis)
#'
#' For each cell n, the distances \eqn{D(n)[a, b]} between pairs of samples
#' with the same value of a categorical sample covariate are compared with those
#' between samples with different values (H1: within-category distances are
#' smaller). Two effect sizes: `effect`, the mean between-category minus the
#' mean within-category distance (in expression space, the default: log2
#' units, see [sampleDistances()]), and `statistic`, the one-sided two-sample
#' Kolmogorov-Smirnov statistic, exactly that of
#' `ks.test(within, between, alternative = "greater")`. The p-value is Mantel's
#' test (Mantel 1967) of \eqn{T = \sum_{a < b} D'(n)[a, b] [y_a = y_b]}, the sum
#' of within-category distances, by permutation: \eqn{(1 + \#\{T^* \le T\}) / (1 +
#' B)} over B = `permutations` random relabelings of the samples (the same ones
#' for every cell, drawn from `seed`), where \eqn{D'(n)} is \eqn{D(n)} with
#' `min_effect` = \eqn{\delta} taken off every between-category pair. The null
#' is thus "the covariate moves samples apart by at most \eqn{\delta}": when
#' between-category distances are exchangeable ones plus exactly \eqn{\delta},
#' \eqn{D'(n)} is exchangeable and the p-value exact; with a smaller effect it
#' is conservative (a test against a threshold, as TREAT for fold changes;
#' \eqn{\delta = 0} is Mantel's null of no association, whatever other
#' structure the distances have). `z` is \eqn{(E[T] - T) / sd(T)} with the
#' exact mean and variance of T over all relabelings; `permutations = 0` takes
#' the p-value from its normal upper tail instead (no cost, but T's distribution
#' is skewed when the cell's distances have structure, and its small p-values
#' are then too small). The pairs of samples are not independent (each sample
#' is in S - 1 of them), and a KS p-value, which treats them as independent,
#' is far too small when a cell's distances have structure of their own. For a
#' cell whose distances follow a planted split of 12 samples, under 200 random
#' balanced covariates: KS p < 0.01 for 6.5\% of them and p < 0.001 for 1-3\%;
#' the normal approximation 4.5-6.5\% and 1\%; the permutation p-values
#' 0.5-1\% and 0\% (`bench/README.md`, session 21). \eqn{D(n)} is
#' formed one cell at a time in Rust and dropped. Benjamini-Hochberg q-values
#' are taken across the tested cells (`p.adjust(method = "BH")`).
#'
#' **Why a minimum effect.** A fitted model carries small covariate-aligned
#' shifts into cell types the covariate does not affect (part of one type's
#' sample effect is shared by all cells). The shifts are real in the fitted
#' distances, so a test of "no association" finds them, the more surely the
#' more samples there are. The default, half a log2 unit, is one gene changed
#' 1.41-fold, or 25 genes changed by 0.1 (log2) each (Aitchison distance). On
#' the six default fits of the realistic simulation of `bench/validity.R`
#' (20,000 cells, 32 samples, the root split of one affected type's tree as the
#' covariate) the affected type's cells had an `effect` of 3.9-10.3 log2
#' units, the other types' mostly below 0.5 (single cells up to 2.2); the default
#' flagged the affected type fully (TPR 1.00) at an FDR of 0-0.018, where
#' `min_effect = 0` flagged every unaffected type (FDR 0.63-0.75) and the
#' previous default (latent space, normalised distances) gave FDR 0.003-0.69.
#' On the paper's covariates design (`bench/guided_min_effect.R`: three
#' covariates of strength 3, 2 and 1.5, 16 samples, seeds 1-5) the default
#' found the strongest in every affected cell on every seed and the second on
#' 4 of 5 seeds, at FDR 0 (`min_effect = 1`: the second on 1 of 5;
#' `min_effect = 0`: FDR 0.46-0.51). A covariate whose effect is not well above
#' `min_effect`, or which shares the cells with a stronger one (whose
#' structure widens the permutation distribution), can be missed: lower
#' `min_effect` for such effects, and read flags outside the cell types you
#' expect with the affected / unaffected contrast of [sampleDistances()] in
#' mind.
#' The linear flavour leaks more: on the test suite's covariates fit (12
#' samples) its unaffected type's cells reached about 0.55 log2 units, and the
#' default's FDR was 0.02-0.09 over 5 fit seeds, where normalised latent
#' distances (`space = "latent", normalize = TRUE`) kept it at most 0.01.
#'
#' Normalised distances (`normalize = TRUE`, see [sampleDistances()]) count a
#' difference only by how far it exceeds the spread of the cell's own
#' posterior representation; they have no unit shared across cells, so
#' `min_effect` is 0 with them unless set, and so it is in latent space.
#'
#' The permutations cost B S^2 / 2 to B S^2 multiply-adds per cell (S samples), as
#' matrix products in double precision: 20,000 cells of 64 samples took 6.2 s
#' with the defaults (expression space, 10 draws, 999 permutations) and 4.3 s
#' with `permutations = 0` (2 threads, AMD EPYC Zen 2). With hundreds of samples consider
#' fewer permutations (the smallest p-value is 1 / (B + 1), which
#' Benjamini-Hochberg must reach) or `permutations = 0`.
#' For a test per cell group use [groupAssociation()].
#'
#' @param fit a [MrVIFit-class].
#' @param covariate a column name of the sample table (`fit@sample_table`), a
#'   vector named by sample, or a table with a `sample` column and one covariate
#'   column (as [differentialExpression()] takes them). Categorical (character, factor or logical); a numeric
#'   covariate is refused: bin it first (for example with [cut()]). Samples with
#'   `NA` take no part.
#' @param cells `NULL` (all fitted cells), indices or cell names, each cell once
#'   (a repeat would be tested, and counted in the q-values, twice).
#' @param normalize raw distances (default), or in units of the cell's
#'   posterior noise, clipped at 0; as in [sampleDistances()].
#' @param mc_samples posterior draws per cell for \eqn{D(n)} (0: posterior mean;
#'   at least 3 with `normalize = TRUE`).
#' @param permutations relabelings of the samples for the p-values (0: Mantel's
#'   normal approximation).
#' @param seed seed of the posterior draws and the relabelings (default: the fit's seed, `fit@config$seed`).
#'   Draw m of cell i depends on the seed, i and m alone, so a cell's draws are
#'   the same whichever cells are asked for, in whatever chunks, in every
#'   function that draws u.
#' @param BPPARAM a BiocParallel back-end (default serial) over which the work
#'   is spread in blocks of cells; results are identical to serial ones whatever the back-end and
#'   number of workers (see [mrvi-parallel]).
#' @param space `"expression"` (default) or `"latent"`: where \eqn{D(n)} is
#'   measured (see [sampleDistances()]).
#' @param min_effect the between-minus-within distance the null allows
#'   (\eqn{\delta} above), >= 0, in the distances' units. `NULL` (default): 0.5
#'   log2 units for raw distances in expression space, else 0. Where samples are
#'   nested in sites, a fit can carry a little of the site effect in its sample
#'   effects (see [sampleDistances()]): a covariate that follows the sites was
#'   flagged with `min_effect = 0` in 3 of 7 simulated fits without any sample
#'   effect (shifts of 0.12-0.15 log2), never with the default.
#' @param block `NULL`, or a sample-table column name or a vector named by
#'   sample giving each sample's block: samples that are not exchangeable
#'   with the others under the null, such as the samples of one donor. A
#'   covariate constant within every block (a donor's sex) is then permuted
#'   with whole blocks; one that varies within blocks (the treatment in a
#'   paired design) is permuted within each block (blocks where it is constant
#'   then keep their categories; a message says so). Without it, a donor-level
#'   covariate of a study with several samples per donor is tested as if each
#'   sample were a donor: the donor's own effect makes it look associated.
#'   Where whole blocks of unequal sizes move, the categories' sizes change
#'   between relabelings, and the test compares the mean between- minus mean
#'   within-category distance (of \eqn{D'(n)}) instead of Mantel's sum, which
#'   would follow the number of within-category pairs. `metadata()` records the
#'   scheme (`relabeling`: `"whole blocks"` or `"within blocks"`). Without
#'   `block`, a covariate constant within each level of another sample-table
#'   column with more levels than it has (several samples to a level) gets a
#'   message naming that column
#'   (class `mrvi_nested_covariate`).
#' @param verbose show a progress bar over blocks of cells
#'   (`options(mrvi.task_cells)`, 20,000 by default), once the work takes more than 2 s.
#' @return a `DataFrame`, one row per cell (a warning of class
#'   `mrvi_coarse_permutations` when the relabelings cannot give a p-value
#'   below 0.05, as with 6 samples in two categories of 3: 10 partitions):
#'   `statistic` (KS), `effect`
#'   (mean between- minus mean within-category distance), `z` (Mantel, of
#'   \eqn{D'(n)}), `p_value`, `q_value`, `n_within`, `n_between` (pair counts);
#'   row names are the cells; `metadata()` holds the covariate's name (a vector's: that of the variable passed, else "covariate") and
#'   `min_effect` (and `block`, `relabeling`). `z` is `NA` with fewer than 4 samples with a value (Mantel's
#'   moments need 4) or with `block` (its moments are those of free relabelings),
#'   and so is `p_value` unless `permutations` > 0; when no
#'   relabeling changes T (every distance the same, or one category) `z` is 0
#'   and `p_value` 1 (no evidence); a cell with a non-finite distance gets `NA`
#'   for both.
#' @examples
#' sce <- simulateNested(400, 60, n_samples = 8, n_cell_types = 2, n_affected = 1, seed = 1)
#' fit <- mrvi(sce, sample = "sample", max_epochs = 2, verbose = FALSE)
#' grp <- setNames(rep(c("a", "b"), 4), fit@samples)
#' head(cellAssociation(fit, grp))
#' @export
cellAssociation <- function(fit, covariate, cells = NULL, normalize = FALSE, mc_samples = 10,
                            permutations = 999, seed = fit@config$seed, BPPARAM = BiocParallel::SerialParam(),
                            space = c("expression", "latent"), min_effect = NULL, verbose = TRUE, block = NULL) {
  call <- sys.call()
  check_required(call)
  check_fit(fit, call)
  check_bpparam(BPPARAM, call)
  check_flag(verbose, "verbose", call)
  seed <- check_whole(seed, "seed", call)
  mc_samples <- check_whole(mc_samples, "mc_samples", call)
  permutations <- check_whole(permutations, "permutations", call)
  check_normalize_draws(normalize, mc_samples, call)
  space <- match_choice(space, c("expression", "latent"), "space", call)
  min_effect <- resolve_min_effect(min_effect, space, normalize, call)
  y <- sample_covariate(covariate, fit@sample_table, fit@samples, call, fit@cell_data,
                        label = covariate_label(substitute(covariate)))
  design <- permutation_design(y, block, fit@sample_table, fit@samples, call)
  blocks <- design$blocks
  if (!is.null(blocks) && permutations == 0) {
    abort_arg(c("{.arg block} needs {.arg permutations} > 0.",
                "i" = "Mantel's normal approximation (permutations = 0) holds for freely exchangeable samples only."), call = call)
  }
  taking_part <- !is.na(y)
  n_relabelings <- exp(log_relabelings(y[taking_part], blocks[taking_part]))
  # (Mantel's normal approximation, permutations = 0, gives smaller p-values than
  # the exact floor: no better)
  if (n_relabelings <= 20) warn_coarse_relabelings(n_relabelings, blocks, call)
  # the relabelings (each sample's category under each)
  check_size(4 * sum(!is.na(y)) * (permutations + 1),
             sprintf("cellAssociation() with %d permutations", permutations), call,
             hint = "Ask for fewer {.arg permutations} (999 give p-values down to 0.001), or raise {.code options(mrvi.max_bytes = )}.")
  idx <- resolve_cells(fit, cells, call, tested = TRUE)
  apply_threads(call = call)
  chunk <- resolve_chunk_size(fit, NULL, call, mc_samples, normalize)
  block_codes <- if (is.null(blocks)) integer() else as.integer(blocks) - 1L
  tasks <- bp_split(idx)
  parts <- vector("list", length(tasks))
  bp_map(tasks, function(cells) {
    mrvi_cell_association(native_model(fit), fit@u_mean, fit@u_sd, nrow(fit@u_mean),
                          as.integer(fit@cell_data$sample) - 1L, cells - 1L,
                          ifelse(is.na(y), -1L, as.integer(y) - 1L), block_codes, mc_samples,
                          normalize, seed, permutations, min_effect, chunk, space == "expression")
  }, BPPARAM = BPPARAM, each = function(v, i) parts[[i]] <<- v, progress = if (verbose) "Guided tests")
  res <- lapply(stats::setNames(nm = names(parts[[1]])), function(k) unlist(lapply(parts, `[[`, k)))
  # (too few samples with a value, or no permutations: undefined, documented as NA)
  for (k in c("z", "p_value")) res[[k]][is.nan(res[[k]])] <- NA
  # (z's moments are those of free relabelings)
  if (!is.null(blocks)) res$z[] <- NA_real_
  out <- S4Vectors::DataFrame(statistic = res$statistic, effect = res$effect, z = res$z, p_value = res$p_value,
                              q_value = stats::p.adjust(res$p_value, method = "BH"),
                              n_within = res$n_within, n_between = res$n_between,
                              row.names = rownames(fit@u_mean)[idx])
  S4Vectors::metadata(out)$covariate <- attr(y, "name")
  S4Vectors::metadata(out)$min_effect <- min_effect
  if (!is.null(blocks)) S4Vectors::metadata(out)[c("block", "relabeling")] <- list(blocks, design$scheme)
  out
}

# The minimum effect of cellAssociation(): NULL is half a log2 unit for raw
# expression-space distances, the only ones with a unit of their own, else 0.
resolve_min_effect <- function(min_effect, space, normalize, call) {
  if (is.null(min_effect)) return(if (space == "expression" && !isTRUE(normalize)) 0.5 else 0)
  # (distances are single precision in Rust: a larger threshold overflowed there into NA p-values)
  if (!is.numeric(min_effect) || length(min_effect) != 1 || is.na(min_effect) || !is.finite(min_effect) ||
      min_effect < 0 || min_effect > 3.4e38) {
    abort_arg("{.arg min_effect} must be one finite number >= 0 (at most 3.4e38, single precision's range; or {.code NULL} for the default).",
              call = call)
  }
  as.numeric(min_effect)
}

#' A calibrated test per cell group: do sample distances follow a covariate?
#'
#' For each group of cells C, a statistic of how well the sample distances
#' follow the covariate, with a p-value from permuting the covariate across
#' samples (`permutations` = B times): \eqn{(1 + \#\{T^* \ge T\}) / (1 + B)},
#' valid whatever the dependence between pairs of samples. Benjamini-Hochberg
#' across groups. Three statistics:
#'
#' * `"effect"` (the default): the group's mean `effect` of [cellAssociation()],
#'   the mean between-category minus the mean within-category distance of the
#'   group's mean distance matrix \eqn{D(C)} (in expression space, the
#'   default: log2 units), tested as [cellAssociation()] tests one cell: by
#'   permutation of \eqn{D(C)} with `min_effect` taken off every
#'   between-category pair (Mantel's test; the null "the covariate moves samples
#'   apart by at most `min_effect`", exact at that boundary). \eqn{D(C)} is an
#'   average over many cells, so a test of "no association" finds even the
#'   small shifts a fit carries into cell types the covariate does not affect;
#'   the minimum effect keeps them out. On the six default fits of
#'   `bench/validity.R` (root split of one affected type's tree) the affected
#'   type had q = 0.005 and every other type q = 1, where the previous default
#'   (`"ks"` on normalised latent distances) also flagged 1-4 unaffected types on
#'   five of six fits (`bench/README.md`, session 23).
#' * `"ks"`: the mean over the group's cells of the per-cell KS statistic of
#'   [cellAssociation()] (its `statistic`) of within- against between-category
#'   distances in \eqn{D(n)}. Each permutation relabels the samples and
#'   recomputes every cell's statistic, so the test asks whether the group's
#'   cells, one by one, separate the categories. Groups larger than `max_cells`
#'   are represented by a random subset of that many cells (drawn from `seed`),
#'   which bounds the cost at \eqn{B \cdot max\_cells \cdot S^2 / 2}. Needs the
#'   fit. Its default before was on normalised latent distances
#'   (`normalize = TRUE, space = "latent"`).
#' * `"pseudo_f"`: PERMANOVA's pseudo-F (Anderson 2001) of \eqn{D(C)}:
#'   \eqn{F = (SS_B / (k - 1)) / (SS_W / (N - k))} with
#'   \eqn{SS_T = \frac{1}{N}\sum_{i<j} d_{ij}^2} and
#'   \eqn{SS_W = \sum_g \frac{1}{n_g}\sum_{i<j \in g} d_{ij}^2}; no minimum
#'   effect, so leaks into other cell types are flagged too.
#'
#' @param fit_or_distances a [MrVIFit-class], or the result of
#'   [sampleDistances()] (then `statistic` is `"effect"` or `"pseudo_f"`).
#' @param covariate a column name of the sample table, a vector named by
#'   sample or a table of `sample` and one covariate; categorical, as in
#'   [cellAssociation()].
#' @param groups with a fit: as `groups` of [sampleDistances()]; with distances:
#'   the groups to test (`NULL`: all).
#' @param permutations number of permutations B.
#' @param seed seed of the permutations, of the cell subsets (R's generator is
#'   restored afterwards) and, with a fit, of the posterior draws (as in
#'   [sampleDistances()]). `NULL`: the fit's seed (`fit@config$seed`), or 1 with
#'   distances.
#' @param statistic `"effect"` (default), `"ks"` or `"pseudo_f"`.
#' @param normalize,mc_samples,space how distances are computed from a fit, as
#'   in [cellAssociation()] (raw, 10 posterior draws, expression space by
#'   default; see [sampleDistances()] for the spaces).
#' @param max_cells with `"ks"`: at most this many cells per group.
#' @param min_cells a sample with fewer cells than this in a group is left out
#'   of that group's test, with every statistic (as in [sampleDistances()]).
#' @param BPPARAM a BiocParallel back-end (default serial) over which the work
#'   is spread: one task per group; results are identical to serial ones whatever the back-end and
#'   number of workers (see [mrvi-parallel]).
#' @param min_effect with `"effect"`: the between-minus-within distance the null
#'   allows, >= 0, in the distances' units; `NULL` (default): 0.5 log2 units
#'   for raw expression-space distances, else 0 (so also for distances not made
#'   by [sampleDistances()]).
#' @param block as in [cellAssociation()]: the blocks of samples (a donor's
#'   samples) that are not exchangeable; the relabelings respect them, each
#'   group's on the samples it tests (after `min_cells`). The `effect`
#'   statistic is a difference of means, valid whatever the blocks' sizes;
#'   `pseudo_f` with whole blocks of unequal sizes is approximate (7\% of
#'   p-values below 0.05 under the null in a simulation of donors of 1 and 4
#'   samples).
#' @return a `DataFrame`, one row per group (warnings of class
#'   `mrvi_coarse_permutations` for groups whose relabelings cannot give a
#'   p-value below 0.05, and `mrvi_untested_groups` for groups left untested):
#'   `n_samples`, `n_cells` (cells
#'   whose statistics entered; `NA` on distances), `statistic`,
#'   `p_value`, `q_value`, `permutations`; `metadata()` names the covariate and
#'   the statistic (and `min_effect`, `block`, `relabeling`).
#' @examples
#' sce <- simulateNested(400, 60, n_samples = 8, n_cell_types = 2, n_affected = 1, seed = 1)
#' fit <- mrvi(sce, sample = "sample", labels = "cell_type", max_epochs = 2, verbose = FALSE)
#' grp <- setNames(rep(c("a", "b"), 4), fit@samples)
#' groupAssociation(fit, grp, groups = "cell_type", permutations = 99)
#' @export
groupAssociation <- function(fit_or_distances, covariate, groups = NULL, permutations = 999, seed = NULL,
                             statistic = c("effect", "ks", "pseudo_f"), normalize = FALSE, mc_samples = 10,
                             max_cells = 500, BPPARAM = BiocParallel::SerialParam(),
                             space = c("expression", "latent"), min_effect = NULL, min_cells = 5, block = NULL) {
  call <- sys.call()
  check_required(call)
  space <- match_choice(space, c("expression", "latent"), "space", call)
  check_bpparam(BPPARAM, call)
  permutations <- check_count(permutations, "permutations", call)
  mc_samples <- check_whole(mc_samples, "mc_samples", call)
  check_normalize_draws(normalize, mc_samples, call)
  max_cells <- check_count(max_cells, "max_cells", call)
  min_cells <- check_whole(min_cells, "min_cells", call)
  is_fit <- methods::is(fit_or_distances, "MrVIFit")
  if (!is_fit && !(is.array(fit_or_distances) && length(dim(fit_or_distances)) == 3)) {
    abort_arg("{.arg fit_or_distances} must be a {.cls MrVIFit} or the result of {.fn sampleDistances}.",
              call = call)
  }
  if (is_fit) check_fit(fit_or_distances, call)
  if (!is_fit) {
    check_not_per_cell(fit_or_distances, "fit_or_distances", call)
    samples <- dimnames(fit_or_distances)[1:2]
    if (is.null(samples[[1]]) || !identical(samples[[1]], samples[[2]])) {
      abort_arg(c("{.arg fit_or_distances} has no sample names: its rows and columns must be named by the same samples.",
                  "i" = "Pass {.fn sampleDistances}'s result as it came, or set {.code dimnames()} to the samples."),
                call = call)
    }
    # (an infinite distance made a NaN statistic; negative or asymmetric ones, p-values)
    for (g in seq_len(dim(fit_or_distances)[3])) check_distance_matrix(fit_or_distances[, , g], call, "fit_or_distances")
  }
  seed <- check_whole(seed %||% (if (is_fit) fit_or_distances@config$seed else 1), "seed", call)
  statistic <- match_choice(statistic %||% "effect", c("effect", "ks", "pseudo_f"), "statistic", call)
  if (!is.null(min_effect) && statistic != "effect") {
    abort_arg("{.arg min_effect} applies to {.code statistic = \"effect\"} only.", call = call)
  }
  if (statistic == "ks" && !is_fit) {
    abort_arg(c("{.arg statistic} = \"ks\" needs the fit: it recomputes per-cell distances.",
                "i" = "Pass the {.cls MrVIFit}, or use {.code statistic = \"pseudo_f\"} with distances."),
              call = call)
  }
  # the covariate and the minimum effect first: bad ones fail before any distances
  if (is_fit) {
    fit <- fit_or_distances
    y <- sample_covariate(covariate, fit@sample_table, fit@samples, call, fit@cell_data,
                          label = covariate_label(substitute(covariate)))
    table <- fit@sample_table
  } else {
    table <- attr(fit_or_distances, "sample_table")
    y <- sample_covariate(covariate, table, dimnames(fit_or_distances)[[1]], call,
                          label = covariate_label(substitute(covariate)))
  }
  design <- permutation_design(y, block, table, names(y), call)
  blocks <- design$blocks
  # the permutations' statistics (with "ks", the relabelings too)
  check_size(8 * (permutations + 1) * (1 + if (statistic == "ks") length(y) else 0),
             sprintf("groupAssociation() with %d permutations", permutations), call,
             hint = "Ask for fewer {.arg permutations} (999 give p-values down to 0.001), or raise {.code options(mrvi.max_bytes = )}.")
  if (statistic == "effect") {
    # distances made elsewhere have no known unit: no default threshold
    unit <- if (is_fit) list(space, normalize) else
      list(attr(fit_or_distances, "space") %||% "latent", attr(fit_or_distances, "normalize") %||% TRUE)
    # a sampleDistances() array subset with `[` has lost its unit: its default
    # threshold would change silently
    # (the baselines' arrays keep their n_cells; `[` drops every attribute)
    if (!is_fit && is.null(min_effect) && is.null(attr(fit_or_distances, "space")) &&
        is.null(attr(fit_or_distances, "n_cells")) && length(dim(fit_or_distances)) == 3) {
      cli::cli_warn(c("{.arg fit_or_distances} carries no unit ({.fn sampleDistances}'s attributes, which {.code [} drops): {.arg min_effect} = 0.",
                      "i" = "Pick groups with {.arg groups} on the whole result, or give {.arg min_effect}."),
                    class = c("mrvi_no_distance_unit", "mrvi_warning"), call = call,
                    .frequency = "once", .frequency_id = "mrvi_no_distance_unit")
    }
    min_effect <- resolve_min_effect(min_effect, unit[[1]], unit[[2]], call)
  }
  restore <- preserve_rng()
  on.exit(restore())
  if (statistic == "ks") {
    group <- resolve_groups(fit, groups, call)
    rows <- bp_map(levels(group), function(g) {
      cells <- which(group == g)
      enough <- tabulate(match(fit@cell_data$sample[cells], fit@samples), length(fit@samples)) >= min_cells
      ks_group_test(fit, y, blocks, cells, enough, g, permutations, seed, normalize, mc_samples, max_cells, space, call)
    }, BPPARAM = BPPARAM)
  } else {
    d <- if (is_fit) {
      # (NaN distances are said below, per group, as untested)
      withCallingHandlers(
        with_call(sampleDistances(fit, groups = groups, min_cells = min_cells, normalize = normalize,
                                  mc_samples = mc_samples, seed = seed, BPPARAM = BPPARAM, space = space), call),
        mrvi_nonfinite_distances = function(w) invokeRestart("muffleWarning"))
    } else fit_or_distances
    if (is_fit) groups <- NULL
    if (is.null(dimnames(d)[[3]])) {
      abort_arg(c("{.arg fit_or_distances} has no group names (the third dimension of the array).",
                  "i" = "Give the result of {.fn sampleDistances}, or name the groups: {.code dimnames(d)[[3]] <- ...}."), call = call)
    }
    tested <- if (is.null(groups)) dimnames(d)[[3]] else if (is.factor(groups)) as.character(groups) else groups
    if (!length(tested) || !is.character(tested)) {
      abort_arg("{.arg groups} must name groups of the distances ({show_some(dimnames(d)[[3]])}), or be {.code NULL} for all.",
                call = call)
    }
    # (each group once: a repeat would be tested again and counted again in the
    # q-values; one value per cell is what `groups` means with a fit, not here)
    if (anyDuplicated(tested)) {
      abort_arg(c("{.arg groups} names group{?s} {.val {unique(tested[duplicated(tested)])}} more than once.",
                  "i" = "With distances, {.arg groups} lists the groups to test, each once (not one value per cell)."), call = call)
    }
    unknown <- setdiff(tested, dimnames(d)[[3]])
    if (length(unknown)) abort_arg("{.arg groups} not in the distances: {.val {unknown}}.", call = call)
    n_cells <- attr(d, "n_cells")
    rows <- bp_map(tested, function(g) {
      # pseudo-F reads squared distances: squared once, not per permutation
      row <- if (statistic == "effect") matrix_group_test(d[, , g], y, blocks, g, permutations, seed, effect_statistic, min_effect)
             else matrix_group_test(d[, , g]^2, y, blocks, g, permutations, seed, pseudo_f)
      row$n_cells <- if (is_fit && !is.null(n_cells)) as.integer(n_cells[[g]]) else NA_integer_
      row
    }, BPPARAM = BPPARAM)
  }
  res <- do.call(rbind, rows)
  coarse <- res$relabelings <= 20 & res$permutations > 0
  warn_coarse_relabelings(stats::setNames(res$relabelings[coarse], res$group[coarse]), blocks, call)
  warn_nonfinite_distances(res$group[is.nan(res$statistic)], call, untested = TRUE)
  untested <- res$group[is.na(res$statistic) & !is.nan(res$statistic)]
  if (length(untested)) {
    cli::cli_warn(c("Group{?s} {.val {untested}} {?was/were} not tested: {?its/their} samples with a covariate value (and at least {.arg min_cells} cells) leave no two in one category, or one category only.",
                    "i" = "Lower {.arg min_cells}, or group cells more coarsely."),
                  class = c("mrvi_untested_groups", "mrvi_warning"), call = call)
  }
  out <- S4Vectors::DataFrame(n_samples = res$n_samples, n_cells = res$n_cells, statistic = res$statistic,
                              p_value = res$p_value,
                              q_value = stats::p.adjust(res$p_value, method = "BH"),
                              permutations = res$permutations, row.names = res$group)
  S4Vectors::metadata(out)$covariate <- attr(y, "name")
  S4Vectors::metadata(out)$statistic <- statistic
  if (statistic == "effect") S4Vectors::metadata(out)$min_effect <- min_effect
  if (!is.null(blocks)) S4Vectors::metadata(out)[c("block", "relabeling")] <- list(blocks, design$scheme)
  out
}

# Permutation p-value: the observed statistic against B permuted ones.
permutation_p <- function(observed, permuted) {
  (1 + sum(permuted >= observed - 1e-12 * abs(observed))) / (1 + length(permuted))
}

# One group's permutation test on a matrix `m` over samples (its mean distances,
# or their squares): `stat(m, labels)` with `shift` taken off the pairs the
# observed labels put in different categories, against `permutations`
# relabelings of that matrix; the statistic reported is `stat` of `m` itself.
matrix_group_test <- function(m, y, blocks, g, permutations, seed, stat, shift = 0) {
  # NaN distances are damage (a non-finite latent), not samples left out: NaN
  if (any(is.nan(m))) {
    return(data.frame(group = g, n_samples = sum(!is.na(y)), statistic = NaN, p_value = NA_real_,
                      permutations = 0L, relabelings = NA_real_))
  }
  keep <- !is.na(y) & !left_out_samples(m)
  # NA pairs (no admissible cell compared them): their samples leave the test
  m <- drop_partial_samples(m[keep, keep, drop = FALSE])
  yy <- droplevels(y[keep][rownames(m)])
  if (nlevels(yy) < 2 || all(table(yy) < 2)) {
    return(data.frame(group = g, n_samples = length(yy), statistic = NA_real_, p_value = NA_real_,
                      permutations = 0L, relabelings = NA_real_))
  }
  bb <- blocks[names(yy)]
  fixed_rng(seed)
  tested <- m - shift * outer(yy, yy, "!=")
  observed <- stat(tested, yy)
  perm <- vapply(seq_len(permutations), function(i) stat(tested, relabel(yy, bb)), numeric(1))
  data.frame(group = g, n_samples = length(yy), statistic = stat(m, yy), p_value = permutation_p(observed, perm),
             permutations = permutations, relabelings = exp(log_relabelings(yy, bb)))
}

# The mean between-category minus the mean within-category distance (the group's
# `effect`; tested with the minimum effect as `shift`, it is Mantel's test, as
# cellAssociation() per cell), each pair once (the upper triangle), from sums
# over categories (6x faster per permutation at 500 samples than comparing
# every pair's labels).
effect_statistic <- function(d, labels) {
  g <- as.integer(labels)
  up <- d * upper.tri(d)
  total <- sum(up)
  within <- sum(diag(rowsum(t(rowsum(up, g)), g)))
  n <- length(g)
  n_g <- tabulate(g, nlevels(labels))
  n_within <- sum(n_g * (n_g - 1)) / 2
  (total - within) / (n * (n - 1) / 2 - n_within) - within / n_within
}

# One group's test on the mean per-cell KS statistic: D(n) of (a subset of) the
# group's cells, one row of pair distances per cell, relabelled per permutation in
# Rust, over the samples with a covariate value and `enough` cells in the group.
ks_group_test <- function(fit, y, blocks, cells, enough, g, permutations, seed, normalize, mc_samples, max_cells, space, call) {
  fixed_rng(seed)
  if (length(cells) > max_cells) cells <- sort(cells[sample.int(length(cells), max_cells)])
  keep <- which(!is.na(y) & enough)
  yy <- droplevels(y[keep])
  if (nlevels(yy) < 2 || all(table(yy) < 2)) {
    return(data.frame(group = g, n_samples = length(keep), n_cells = length(cells), statistic = NA_real_,
                      p_value = NA_real_, permutations = 0L, relabelings = NA_real_))
  }
  bb <- blocks[names(yy)]
  S <- length(keep)
  pairs <- which(upper.tri(diag(S)), arr.ind = TRUE)
  check_size(8 * length(cells) * (length(fit@samples)^2 + nrow(pairs)), "groupAssociation(statistic = \"ks\")",
             call, hint = "Lower {.arg max_cells}.")
  d <- with_call(sampleDistances(fit, cells = cells, normalize = normalize, mc_samples = mc_samples,
                                 seed = seed, space = space), call)
  d <- d[, keep, keep, drop = FALSE]
  nc <- length(cells)
  values <- d[cbind(rep(seq_len(nc), nrow(pairs)), rep(pairs[, 1], each = nc), rep(pairs[, 2], each = nc))]
  labels <- cbind(as.integer(yy), vapply(seq_len(permutations), function(i) as.integer(relabel(yy, bb)), integer(S)))
  stats <- mrvi_mean_ks_statistics(values, nc, pairs[, 1] - 1L, pairs[, 2] - 1L, labels, S)
  data.frame(group = g, n_samples = S, n_cells = nc, statistic = stats[1],
             p_value = permutation_p(stats[1], stats[-1]), permutations = permutations,
             relabelings = exp(log_relabelings(yy, bb)))
}

# PERMANOVA pseudo-F of squared distances `d2` against a factor.
pseudo_f <- function(d2, y) {
  n <- nrow(d2)
  k <- nlevels(y)
  ss <- permanova_ss(d2, y)
  # every distance 0: nothing to explain, F = 0 (p = 1, as the effect statistic gives), not 0/0
  if (ss[["total"]] == 0) return(0)
  ((ss[["total"]] - ss[["within"]]) / (k - 1)) / (ss[["within"]] / (n - k))
}

# A categorical sample covariate as a factor over `samples` (NA allowed).
# `cell_data` (the fit's per-cell columns, when known) tells a column that varies
# within samples from one that does not exist.
# A vector covariate is named after the variable it was passed as (`label`,
# from covariate_label()), so that results written back stay apart.
sample_covariate <- function(covariate, table, samples, call, cell_data = NULL, label = "covariate",
                             need_pairs = TRUE) {
  name <- label
  # a table with a sample column and one covariate, as differentialExpression() takes it
  if (is.data.frame(covariate) || methods::is(covariate, "DataFrame")) {
    covariate <- as.data.frame(covariate)
    other <- setdiff(names(covariate), "sample")
    if (!"sample" %in% names(covariate) || length(other) != 1 || anyDuplicated(as.character(covariate$sample))) {
      abort_arg(c("{.arg covariate} as a table must have a {.field sample} column and one covariate column, one row per sample.",
                  "i" = "It has columns {.val {names(covariate)}}{if (anyDuplicated(as.character(covariate$sample))) ' and repeated samples' else ''}."),
                call = call)
    }
    name <- other
    covariate <- stats::setNames(covariate[[other]], as.character(covariate$sample))
  }
  if (is.character(covariate) && length(covariate) == 1 && length(samples) != 1) {
    if (is.null(table) || !covariate %in% names(table)) {
      covs <- setdiff(names(table), c("sample", "n_cells"))
      abort_arg(c(if (covariate %in% names(cell_data))
                    "{.arg covariate} = {.val {covariate}} varies within samples, so it is not a sample covariate." else
                    "{.arg covariate} = {.val {covariate}} is not a column of the sample table.",
                  "i" = if (length(covs)) "Sample covariates (one value per sample): {show_some(covs, 12)}; or give a vector named by sample." else
                    if (is.null(table)) "There is no sample table (subsetting distances drops it: {.code attr(d, \"sample_table\")}); give a vector named by sample." else
                    "The sample table has no covariates (columns constant within each sample); give a vector named by sample."),
                call = call)
    }
    name <- covariate
    rows <- table_samples(table)
    values <- table[[covariate]][match(samples, rows)]
  } else {
    if (is.null(names(covariate))) {
      abort_arg(c("{.arg covariate} must be a sample-table column name, a table with a {.field sample} column, or a vector named by sample.",
                  "i" = "Names needed: {show_some(samples)}."), call = call)
    }
    missing <- setdiff(samples, names(covariate))
    if (length(missing)) {
      abort_arg(c("{.arg covariate} has no value for {length(missing)} fitted sample{?s}: {show_some(missing)}.",
                  "i" = "Give every fitted sample a value; {.code NA} leaves a sample out of the test."), call = call)
    }
    # a sample named twice with different values is a mistake, not something to
    # pick from (values for other samples, e.g. of the whole study, are not read)
    nms <- names(covariate)
    twice <- unique(nms[duplicated(nms) & nms %in% samples])
    conflicting <- twice[vapply(twice, function(k) length(unique(as.character(covariate[nms == k]))) > 1, logical(1))]
    if (length(conflicting)) {
      abort_arg(c("{.arg covariate} has conflicting values for sample{?s} {.val {conflicting}}.",
                  "i" = "Give one value per fitted sample."), call = call)
    }
    values <- covariate[samples]
  }
  if (is.list(values)) {
    abort_arg(c("{.arg covariate} is a list; the test needs one category per sample.",
                "i" = "Give a factor, character or logical vector (e.g. {.code unlist(x)})."), call = call)
  }
  # an NA level (addNA()) is NA: those samples leave the test
  values <- without_na_level(values)
  if (is.numeric(values) && !is.factor(values)) {
    abort_arg(c("{.arg covariate} is numeric; the test needs categories.",
                "i" = "Bin it first, e.g. {.code cut(age, breaks = 3)}, or pass {.code factor(x)} if its values are labels."),
              call = call)
  }
  # "" is no category (as for sample, batch and labels): a missing value is NA
  empty <- !is.na(values) & as.character(values) == ""
  if (any(empty)) {
    abort_arg(c("{.arg covariate} has an empty value for sample{?s} {.val {samples[empty]}}.",
                "i" = "Name every category; give samples without a value {.code NA} (they leave the test)."), call = call)
  }
  y <- droplevels(factor(values))
  if (nlevels(y) < 2) abort_arg("{.arg covariate} must have at least 2 categories among the samples.", call = call)
  if (need_pairs && all(table(y) < 2)) {
    abort_arg("{.arg covariate}: every category has one sample, so there are no within-category pairs.", call = call)
  }
  names(y) <- samples
  attr(y, "name") <- name
  y
}

# The covariate a cellAssociation() result records (NULL for a plain data.frame).
association_covariate <- function(res) if (methods::is(res, "Annotated")) S4Vectors::metadata(res)$covariate

# The name of a covariate passed as a variable (`grp` in f(fit, grp)), else "covariate".
covariate_label <- function(expr) if (is.symbol(expr)) as.character(expr) else "covariate"
