#' Bootstrap support of the clades of a sample tree
#'
#' How sure is each split of a group's sample tree? Each of `B` replicates
#' resamples the group's cells with replacement within each sample (every
#' sample keeps its number of cells; the cells of samples left out of the tree
#' by `min_cells` too, as they count in \eqn{D(C)}), takes a posterior draw of u for every
#' cell, recomputes the group's mean distance matrix \eqn{D(C)}, and clusters
#' it. A clade of the point-estimate tree (the tree of [sampleDistances()] with
#' the same `mc_samples`, `normalize` and `space`) gets as support the share of replicate trees that
#' contain it (the same set of samples below one node).
#'
#' Support measures how stable a clade is under resampling of cells and of u,
#' given the fitted model: not whether the model is right. With thousands of
#' cells per group, raw mean distances are precise, so a clade the model
#' consistently gets wrong (or sample shifts a whole-data model carries into a
#' cell type without structure of its own) can still get support near 1. Hence
#' the default `normalize = TRUE`: differences below each cell's own posterior
#' noise count as 0, and clades that rest on them lose their support: in
#' `bench/tree_support.R` (the default attention model, realistic simulations)
#' clades of cell types without sample structure get a mean support of 0.16
#' (raw distances: 0.91) while the true clades of the structured types keep
#' 1.00 (`bench/README.md`). The point-estimate tree is then that of the
#' normalised expression-space distances (`sampleDistances(normalize = TRUE)`). Samples are put in a new random order in every
#' replicate, so that clades resting on tied distances are not supported by the
#' order of the samples.
#'
#' Streamed like [sampleDistances()]: each cell's \eqn{D(n)} is computed once
#' per posterior draw, in blocks, and added with its bootstrap multiplicity to
#' every replicate that uses that draw (replicate r uses draw
#' r modulo `mc_samples`); memory is \eqn{O(B S^2)} plus the multiplicities
#' (cells of the group x `B`), never cells x S x S.
#'
#' @param fit a [MrVIFit-class].
#' @param groups the cell groups, as in [sampleDistances()]: `NULL` (all cells),
#'   a column name of `fit@cell_data` or a vector over the fitted cells.
#' @param group `NULL` (every group) or the names of the groups to assess.
#' @param B number of bootstrap replicates.
#' @param method agglomeration method of [stats::hclust()], as in [sampleHclust()].
#' @param seed seed of the resampling (R's generator is restored afterwards) and
#'   of the posterior draws (default: the fit's seed, `fit@config$seed`); draw m
#'   of cell i depends on the seed, i and m alone, as in [sampleDistances()].
#' @param ... further settings: `mc_samples` (distinct posterior draws of u,
#'   cycled over the replicates; default 10; 0 keeps the posterior mean and
#'   resamples cells only; with `normalize`, at least 3), `normalize` (default
#'   `TRUE`: distances in units of each cell's posterior noise, clipped at its
#'   noise floor, as in [sampleDistances()]; `FALSE`: raw distances), `min_cells` (default 5:
#'   samples with fewer cells in the group are left out, as in
#'   [sampleDistances()]), `chunk_size` (cells per chunk) and `space` (default
#'   `"expression"`, as in [sampleDistances()]; `"latent"`: distances between
#'   counterfactual z).
#' @param BPPARAM a BiocParallel back-end (default serial): one task per group;
#'   results are identical to serial ones whatever the back-end (see
#'   [mrvi-parallel]).
#' @return for one group, an `ape::phylo` (the point-estimate tree, with branch
#'   lengths from the linkage heights) whose `node.label` holds the support of
#'   each internal node's clade, in \[0, 1\] (the root's is 1); for several, a
#'   named list of them. Each tree carries attributes `B`, `excluded` (samples
#'   left out) and `sample_table`. [plotSampleTree()] draws it with the values.
#'   Among several groups, one with fewer than 3 samples (of `min_cells` cells)
#'   is left out with a warning (the list is kept, even of one tree); asked for
#'   alone, it is an error. A group whose
#'   distances are all 0 (normalised distances of samples the fit does not
#'   separate) gets an arbitrary tree, with a warning (`mrvi_flat_tree`).
#' @examples
#' if (requireNamespace("ape", quietly = TRUE)) {
#'   sim <- mrvi:::example_counts()
#'   fit <- mrvi(sim$counts, sample = sim$sample, max_epochs = 2, verbose = FALSE)
#'   # (raw distances: after 2 epochs the normalised ones are all 0)
#'   tree <- sampleTreeSupport(fit, groups = NULL, B = 20, normalize = FALSE)
#'   tree$node.label
#'   plotSampleTree(tree)
#' }
#' @export
sampleTreeSupport <- function(fit, groups, group = NULL, B = 100, method = "average", seed = fit@config$seed, ...,
                              BPPARAM = BiocParallel::SerialParam()) {
  call <- sys.call()
  check_required(call)
  check_fit(fit, call)
  apply_threads(call = call)  # (options(mrvi.threads), and one thread in a forked worker)
  check_bpparam(BPPARAM, call)
  if (!requireNamespace("ape", quietly = TRUE)) abort_arg("sampleTreeSupport() returns ape trees: install {.pkg ape}.", call = call)
  B <- check_count(B, "B", call)
  seed <- check_whole(seed, "seed", call)
  method <- match_choice(method, c("average", "complete", "single", "ward.D", "ward.D2", "mcquitty", "median", "centroid"),
                         "method", call)
  opts <- support_options(list(...), call)
  grouping <- resolve_groups(fit, groups, call)
  chosen <- if (is.null(group)) levels(grouping) else {
    if (is.factor(group)) group <- as.character(group)
    if (!is.character(group) || anyNA(group) || !all(group %in% levels(grouping))) {
      abort_arg(c("{.arg group} must name groups of {.arg groups}.", "i" = "Groups: {show_some(levels(grouping), 8)}."),
                call = call)
    }
    unique(group)
  }
  # only the groups asked for (cells of the others in no group); a group without
  # enough samples is an error or a warning below, in this function's own words
  point <- suppress_all_excluded(with_call(sampleDistances(fit, groups = factor(grouping, levels = chosen), min_cells = opts$min_cells, mc_samples = opts$mc_samples,
                                     normalize = opts$normalize, chunk_size = opts$chunk_size, seed = seed,
                                     space = opts$space, BPPARAM = BPPARAM), call))
  S <- length(fit@samples)
  block <- resolve_chunk_size(fit, opts$chunk_size, call, opts$mc_samples, opts$normalize)
  restore <- preserve_rng()
  on.exit(restore())
  trees <- bp_map(chosen, function(g) {
    m <- point[, , g]
    kept <- fit@samples[!apply(is.na(m), 1, all)]
    if (length(kept) < 3) {
      # one group asked for: an error; among several, it is left out (with a warning below)
      if (length(chosen) == 1) {
        abort_arg("Group {.val {g}} has {length(kept)} sample{?s} with at least {opts$min_cells} cells: a tree needs 3.",
                  call = call)
      }
      return(NULL)
    }
    flat <- flat_reason(m[kept, kept], opts$normalize)
    if (!is.null(flat)) {
      cli::cli_warn(c("Group {.val {g}}: {flat}, so the tree's shape is arbitrary.",
                      "i" = if (opts$normalize) "Try {.code normalize = FALSE}, or a fit trained longer." else "The fit separates none of these samples."),
                    class = c("mrvi_flat_tree", "mrvi_warning"), call = call)
    }
    hc <- stats::hclust(stats::as.dist(m[kept, kept]), method = method)
    # every cell of the group, as in the point estimate's D(C) (a sample left
    # out by min_cells still has cells whose counterfactuals count)
    cells <- which(grouping == g)
    # the replicates' S x S means (in Rust and in R) and the cells' bootstrap weights
    check_size(16 * S * S * B + 8 * length(cells) * B, "sampleTreeSupport()", call,
               hint = "Ask for fewer replicates ({.arg B}), or raise {.code options(mrvi.max_bytes = )}.")
    fixed_rng(seed)
    weights <- bootstrap_multiplicities(fit@cell_data$sample[cells], B)
    reps <- array(mrvi_replicate_distances(native_model(fit), fit@u_mean, fit@u_sd, nrow(fit@u_mean),
                                           as.integer(fit@cell_data$sample) - 1L, cells - 1L, weights, B,
                                           opts$mc_samples, opts$normalize, seed, block, opts$space == "expression"),
                  c(S, S, B), dimnames = list(fit@samples, fit@samples, NULL))
    # samples in a new random order per replicate: hclust() resolves tied
    # distances by order, so a clade that rests on ties is not supported by chance
    replicate_clades <- lapply(seq_len(B), function(r) {
      order <- sample(kept)
      hclust_clades(stats::hclust(stats::as.dist(reps[order, order, r]), method = method))
    })
    support <- vapply(hclust_clades(hc), function(k) mean(vapply(replicate_clades, function(cl) k %in% cl, logical(1))),
                      numeric(1))
    phy <- ape::as.phylo(hc)
    phy$node.label <- unname(support[phylo_clades(phy)])
    attr(phy, "hclust") <- hc  # drawn by plotSampleTree() at the linkage heights
    attr(phy, "B") <- B
    attr(phy, "excluded") <- setdiff(fit@samples, kept)
    attr(phy, "sample_table") <- fit@sample_table
    phy
  }, BPPARAM = BPPARAM)
  names(trees) <- chosen
  treeless <- names(trees)[vapply(trees, is.null, logical(1))]
  if (length(treeless)) {
    if (length(treeless) == length(trees)) {
      abort_arg("No group has 3 samples with at least {opts$min_cells} cells: a tree needs 3.", call = call)
    }
    cli::cli_warn("{cli::qty(length(treeless))}Group{?s} {.val {treeless}} left out: fewer than 3 samples with at least {opts$min_cells} cells, and a tree needs 3.",
                  class = "mrvi_warning", call = call)
    trees <- trees[setdiff(names(trees), treeless)]
  }
  if (length(chosen) == 1) trees[[1]] else trees
}

# The settings that sampleTreeSupport() takes through `...`.
support_options <- function(dots, call) {
  known <- c("mc_samples", "normalize", "min_cells", "chunk_size", "space")
  unknown <- setdiff(names(dots) %||% rep("", length(dots)), known)
  if (length(unknown)) {
    abort_arg(c("Unknown argument{?s} in {.arg ...}: {.val {unknown}}.", "i" = "{.arg ...} takes {.arg {known}}."),
              call = call)
  }
  setting <- function(name, default) dots[[name]] %||% default
  normalize <- setting("normalize", TRUE)
  mc_samples <- check_whole(setting("mc_samples", 10), "mc_samples", call)
  check_normalize_draws(normalize, mc_samples, call)
  list(mc_samples = mc_samples, normalize = normalize,
       min_cells = check_whole(setting("min_cells", 5), "min_cells", call),
       space = match_choice(setting("space", "expression"), c("expression", "latent"), "space", call),
       chunk_size = if (!is.null(dots$chunk_size)) check_count(dots$chunk_size, "chunk_size", call))
}

# Bootstrap multiplicities of cells (rows) in B replicates (columns): within
# each sample, as many draws with replacement as the sample has cells.
bootstrap_multiplicities <- function(sample, B) {
  w <- matrix(0, length(sample), B)
  for (idx in split(seq_along(sample), droplevels(as.factor(sample)))) {
    n <- length(idx)
    w[idx, ] <- vapply(seq_len(B), function(r) tabulate(sample.int(n, n, replace = TRUE), n), numeric(n))
  }
  w
}

# A clade as text: its sorted leaf labels. hclust_clades(): one per merge row.
clade_key <- function(labels) paste(sort(labels), collapse = "\r")

hclust_clades <- function(hc) {
  members <- vector("list", nrow(hc$merge))
  for (i in seq_len(nrow(hc$merge))) {
    members[[i]] <- unlist(lapply(hc$merge[i, ], function(k) if (k < 0) hc$labels[-k] else members[[k]]))
  }
  vapply(members, clade_key, character(1))
}

# One clade key per internal node of a phylo, in node order (ntip + 1, ...).
phylo_clades <- function(phy) {
  parts <- ape::prop.part(phy)
  vapply(parts, function(p) clade_key(attr(parts, "labels")[p]), character(1))
}
