#' Sample distances from cell-state composition (the CompositionPCA baseline)
#'
#' The baseline of the MrVI paper (Supplement C.1): within each group of cells,
#' cluster the cells (Leiden on a k-nearest-neighbour graph of a PCA of
#' log-normalised counts, or of a given embedding), compute each sample's
#' proportions over those subclusters, and take Euclidean distances between the
#' samples' proportion vectors. Same output shape as [sampleDistances()], so the
#' two compare directly.
#'
#' @inheritParams mrviData
#' @param groups a column name of the cell metadata or a vector over cells: the
#'   groups within which to cluster.
#' @param embedding `NULL` (PCA of log1p counts per 10,000 over the 2,000 most
#'   variable genes), or a cells x dimensions matrix of finite values (for
#'   example `mrviLatent(fit)`), its rows named by the cells or unnamed (then
#'   in the cells' order).
#' @param n_pcs number of principal components.
#' @param resolution Leiden resolution (modularity).
#' @param k neighbours in the kNN graph.
#' @param seed seed for the clustering (R's generator is restored afterwards).
#' @param transform `"none"` (Euclidean distances of proportions, as the paper)
#'   or `"clr"`: centred log-ratios of the subcluster counts plus 0.5 (the
#'   Aitchison distance, which weighs rare subclusters as much as common ones).
#'   For cell-type proportions without subclustering see [proportionDistances()].
#' @return an array `[S, S, G]` with dimnames and attributes `n_cells`,
#'   `excluded` (per group, the samples without cells in it: their rows and
#'   columns are `NA`), `n_clusters` (subclusters per group) and `sample_table`.
#' @examples
#' if (requireNamespace("igraph", quietly = TRUE)) {
#'   sim <- mrvi:::example_counts()
#'   d <- compositionDistances(sim$counts, sim$sample, groups = sim$cell_type, n_pcs = 10)
#'   dim(d)
#' }
#' @export
compositionDistances <- function(x, sample, groups, embedding = NULL, n_pcs = 50, resolution = 1,
                                 k = 15, seed = 1, transform = c("none", "clr")) {
  call <- sys.call()
  check_required(call)
  transform <- match_choice(transform, c("none", "clr"), "transform", call)
  if (!requireNamespace("igraph", quietly = TRUE)) {
    abort_arg("compositionDistances() clusters with Leiden: install {.pkg igraph}.", call = call)
  }
  data <- baseline_data(x, sample, groups, call)
  n_pcs <- check_count(n_pcs, "n_pcs", call)
  k <- check_count(k, "k", call)
  seed <- check_whole(seed, "seed", call)
  check_positive(resolution, "resolution", call)
  emb <- if (is.null(embedding)) pca_embedding(in_memory_counts(data, call), n_pcs) else {
    # named rows are matched to the cells below (mrviLatent(fit) lacks the cells
    # that mrviData() dropped); unnamed ones must be every cell, in order
    if (!is.matrix(embedding) || !is.numeric(embedding) || is.null(rownames(embedding)) && nrow(embedding) != ncol(x)) {
      abort_arg(c("{.arg embedding} must be a numeric matrix with one row per cell ({ncol(x)}), or rows named by the cells.",
                  "x" = if (is.matrix(embedding) && is.numeric(embedding)) "It has {nrow(embedding)} unnamed row{?s}." else "You gave {.obj_type_friendly {embedding}}."),
                call = call)
    }
    if (!all(is.finite(embedding))) {
      abort_arg("{.arg embedding} has {sum(!is.finite(embedding))} missing or infinite value{?s}: the neighbour graph needs finite coordinates.",
                call = call)
    }
    # rows follow the cells kept by mrviData() (by name when the rows are named)
    # unnamed rows are the cells of `x` in order, less those dropped without counts
    named <- !is.null(rownames(embedding))
    rows <- if (named) colnames(data$counts) else setdiff(seq_len(ncol(x)), data$dropped$cell_positions)
    unknown <- if (named) setdiff(rows, rownames(embedding)) else character()
    if (length(unknown)) {
      abort_arg(c("The row names of {.arg embedding} must be the cell names: {length(unknown)} cell{?s} {?is/are} not among them, e.g. {show_some(unknown, 3)}.",
                  "i" = "Name its rows by the cells ({.code colnames(x)}), or leave them unnamed to follow the cells' order."),
                call = call)
    }
    embedding[rows, , drop = FALSE]
  }
  restore <- preserve_rng()
  on.exit(restore())
  fixed_rng(seed)
  group <- data$labels
  S <- nlevels(data$sample)
  out <- array(NA_real_, c(S, S, nlevels(group)),
               dimnames = list(levels(data$sample), levels(data$sample), levels(group)))
  n_clusters <- integer(nlevels(group))
  excluded <- stats::setNames(vector("list", nlevels(group)), levels(group))
  for (g in seq_len(nlevels(group))) {
    idx <- which(group == levels(group)[g])
    cl <- leiden_clusters(emb[idx, , drop = FALSE], k, resolution)
    n_clusters[g] <- nlevels(cl)
    tab <- table(data$sample[idx], cl)
    prop <- if (transform == "clr") clr(unclass(tab) + 0.5) else prop.table(tab, 1)
    d <- as.matrix(stats::dist(prop))
    # a sample without cells in the group has no proportions: its row and
    # column NA, diagonal included, as in sampleDistances()
    absent <- rowSums(tab) == 0
    d[absent, ] <- NA
    d[, absent] <- NA
    excluded[[g]] <- levels(data$sample)[absent]
    out[, , g] <- d
  }
  attr(out, "n_cells") <- stats::setNames(as.vector(table(group)), levels(group))
  attr(out, "excluded") <- excluded
  attr(out, "n_clusters") <- stats::setNames(n_clusters, levels(group))
  attr(out, "sample_table") <- data$sample_table
  out
}

pca_embedding <- function(counts, n_pcs) {
  lib <- Matrix::colSums(counts)
  norm <- counts %*% Matrix::Diagonal(x = 1e4 / lib)
  norm@x <- log1p(norm@x)
  mean <- Matrix::rowMeans(norm)
  var <- Matrix::rowMeans(norm^2) - mean^2
  top <- order(var, decreasing = TRUE)[seq_len(min(2000, nrow(norm)))]
  m <- t(as.matrix(norm[top, , drop = FALSE]))
  n_pcs <- min(n_pcs, ncol(m) - 1, nrow(m) - 1)
  stats::prcomp(m, rank. = n_pcs, center = TRUE, scale. = FALSE)$x
}

leiden_clusters <- function(emb, k, resolution) {
  n <- nrow(emb)
  if (n < 3) return(factor(rep(1, n)))
  k <- min(k, n - 1)
  d <- as.matrix(stats::dist(emb))
  edges <- cbind(rep(seq_len(n), each = k), as.vector(t(nearest_others(d, k))))
  graph <- igraph::simplify(igraph::graph_from_edgelist(edges, directed = FALSE))
  cl <- igraph::cluster_leiden(graph, objective_function = "modularity",
                               resolution_parameter = resolution, n_iterations = 5)
  factor(igraph::membership(cl))
}

# Each cell's k nearest other cells (rows of a distance matrix), not itself,
# which ties with a duplicate cell at distance 0 may not put first.
nearest_others <- function(d, k) {
  matrix(vapply(seq_len(nrow(d)), function(i) {
    o <- order(d[i, ])
    o[o != i][seq_len(k)]
  }, integer(k)), ncol = k, byrow = TRUE)
}

#' Normalised Robinson-Foulds distance between two sample trees
#'
#' The number of bipartitions of the samples found in one tree but not the other,
#' divided by its maximum \eqn{2(n - 3)} for unrooted binary trees on n leaves:
#' 0 for the same topology, 1 for binary trees sharing no split (a tree with
#' unresolved nodes has fewer splits, so less than 1). Trees are compared
#' unrooted (ape's `dist.topo(method = "PH85")`) on their common leaves; leaves
#' of only one tree are named in a message. In Newick text an underscore
#' matches a space of the other tree's labels (`ape::write.tree()` writes spaces
#' as underscores).
#'
#' @param hc a tree: an `hclust` (for example from [sampleHclust()]), an ape
#'   `phylo`, or Newick text.
#' @param truth the true tree, in any of the same forms.
#' @return a number in \[0, 1\].
#' @examples
#' if (requireNamespace("ape", quietly = TRUE)) {
#'   treeDistance("((a,b),(c,d),e);", "((a,c),(b,d),e);")
#' }
#' @export
treeDistance <- function(hc, truth) {
  call <- sys.call()
  check_required(call)
  if (!requireNamespace("ape", quietly = TRUE)) abort_arg("treeDistance() needs {.pkg ape}.", call = call)
  a <- as_phylo(hc, "hc", call)
  b <- as_phylo(truth, "truth", call)
  if (is.character(hc)) a$tip.label <- spaces_for_underscores(a, b$tip.label)
  if (is.character(truth)) b$tip.label <- spaces_for_underscores(b, a$tip.label)
  common <- intersect(a$tip.label, b$tip.label)
  alone <- setdiff(union(a$tip.label, b$tip.label), common)
  if (length(alone)) {
    inform(c("i" = "Comparing the {length(common)} leaves the trees share; {cli::qty(length(alone))}lea{?f/ves} {.val {alone}} {?is/are} in one tree only."))
  }
  if (length(common) < 4) {
    abort_arg(c("{.arg hc} and {.arg truth} share {length(common)} lea{?f/ves}: a topology is compared on 4 or more.",
                "i" = "Give two trees over the same samples (their leaf labels)."), call = call)
  }
  a <- ape::unroot(ape::keep.tip(a, common))
  b <- ape::unroot(ape::keep.tip(b, common))
  as.numeric(ape::dist.topo(a, b, method = "PH85")) / (2 * (length(common) - 3))
}

# The leaf labels of a tree read from Newick text, where an unquoted label's
# underscores stand for spaces of `other` (Newick's rule; quoted labels are
# taken as written).
spaces_for_underscores <- function(tree, other) {
  labels <- tree$tip.label
  spaced <- gsub("_", " ", labels, fixed = TRUE)
  swap <- !attr(tree, "quoted") & !labels %in% other & spaced %in% other
  labels[swap] <- spaced[swap]
  labels
}

as_phylo <- function(x, arg, call) {
  if (is.character(x) && length(x) == 1) {
    # read.tree() gives NULL (or an error) for text that is not a tree
    # (its warnings come with labels it cannot read: NA, refused below)
    tree <- tryCatch(suppressWarnings(ape::read.tree(text = x)), error = function(e) NULL)
    if (!inherits(tree, "phylo")) abort_arg("{.arg {arg}} is not a Newick tree (for example {.val ((a,b),(c,d));}).", call = call)
    if (anyNA(tree$tip.label)) {
      abort_arg(c("{.arg {arg}} has {sum(is.na(tree$tip.label))} leaf label{?s} that {.fn ape::read.tree} cannot read.",
                  "i" = "Write labels with quotes or other special characters as an {.cls hclust} or {.cls phylo} tree instead."), call = call)
    }
    # read.tree() keeps a quoted label's quotes ('s 1'): the label is what they
    # enclose
    quoted <- grepl("^'.*'$", tree$tip.label)
    tree$tip.label[quoted] <- substr(tree$tip.label[quoted], 2, nchar(tree$tip.label[quoted]) - 1)
    attr(tree, "quoted") <- quoted
  } else if (inherits(x, "hclust")) {
    tree <- ape::as.phylo(x)
  } else if (inherits(x, "phylo")) {
    tree <- x
  } else {
    abort_arg("{.arg {arg}} must be an hclust, a phylo or Newick text.", call = call)
  }
  # a leaf named twice has no place in a split of the samples
  twice <- unique(tree$tip.label[duplicated(tree$tip.label)])
  if (length(twice)) abort_arg("{.arg {arg}} has duplicated leaf label{?s} {.val {twice}}: each sample must be one leaf.", call = call)
  tree
}

#' Silhouette scores of a latent space (paper Supplement C.2)
#'
#' Average silhouette widths (`cluster::silhouette`, Euclidean distances) of an
#' embedding: for cell types, the average width rescaled to \[0, 1\] as
#' \eqn{(s + 1) / 2} (higher: types better separated); for batches, within each
#' cell type, the mean of \eqn{1 - |s|} over cells (higher: batches better mixed),
#' averaged over cell types (the scIB conventions).
#'
#' @param embedding cells x dimensions matrix (for example `mrviLatent(fit)`).
#' @param cell_type,batch vectors over cells (`batch` may be `NULL`): named by cell
#'   (matched to `embedding`'s row names), or in row order.
#' @param max_cells cells subsampled (distances are quadratic in cells).
#' @param seed seed of the subsample.
#' @return a named numeric vector: `cell_type` and `batch`. `batch` is `NA`
#'   without `batch`, and when no cell type has at least 3 cells from at
#'   least 2 batches (nothing to mix, for example a single batch); a cell type
#'   whose cells all come from different batches has no batch silhouette
#'   either, and is left out of the mean.
#' @examples
#' if (requireNamespace("cluster", quietly = TRUE)) {
#'   sim <- mrvi:::example_counts()
#'   fit <- mrvi(sim$counts, sample = sim$sample, batch = sim$site,
#'               max_epochs = 2, verbose = FALSE)
#'   silhouetteScores(mrviLatent(fit), sim$cell_type, sim$site)
#' }
#' @export
silhouetteScores <- function(embedding, cell_type, batch = NULL, max_cells = 5000, seed = 1) {
  call <- sys.call()
  check_required(call)
  if (!requireNamespace("cluster", quietly = TRUE)) abort_arg("silhouetteScores() needs {.pkg cluster}.", call = call)
  if (!is.numeric(embedding) || length(dim(embedding)) != 2 || nrow(embedding) < 2 || !all(is.finite(embedding))) {
    abort_arg(c("{.arg embedding} must be a numeric matrix (cells x dimensions) of finite values, with at least 2 cells.",
                "i" = "For example {.code mrviLatent(fit)}."), call = call)
  }
  n <- nrow(embedding)
  cell_type <- by_embedding_rows(cell_type, embedding, "cell_type", call)
  batch <- by_embedding_rows(batch, embedding, "batch", call)
  # (an NA level, addNA(), is NA: not a category)
  cell_type <- without_na_level(cell_type)
  batch <- without_na_level(batch)
  labels_ok <- function(x) is.atomic(x) && length(x) == n && !anyNA(x)
  if (!labels_ok(cell_type) || length(unique(cell_type)) < 2) {
    abort_arg("{.arg cell_type} must have one non-missing value per cell ({n} = {.code nrow(embedding)}), with at least 2 types.",
              call = call)
  }
  check_categorical(cell_type, "cell_type", call)
  if (!is.null(batch) && !labels_ok(batch)) {
    abort_arg("{.arg batch} must have one non-missing value per cell ({n}).", call = call)
  }
  max_cells <- check_count(max_cells, "max_cells", call)
  seed <- check_whole(seed, "seed", call)
  restore <- preserve_rng()
  on.exit(restore())
  fixed_rng(seed)
  idx <- if (n > max_cells) sort(sample.int(n, max_cells)) else seq_len(n)
  e <- embedding[idx, , drop = FALSE]
  ct <- droplevels(as.factor(cell_type)[idx])
  # (a silhouette needs two clusters, and a cluster with a second cell)
  if (nlevels(ct) < 2 || nlevels(ct) >= length(idx)) {
    abort_arg(c("{.arg max_cells} = {max_cells} keeps {length(idx)} cell{?s} of {nlevels(ct)} type{?s}: a silhouette needs 2 types or more, and more cells than types.",
                "i" = "Raise {.arg max_cells}."), call = call)
  }
  s <- cluster::silhouette(as.integer(ct), stats::dist(e))
  out <- c(cell_type = (mean(s[, "sil_width"]) + 1) / 2, batch = NA_real_)
  if (!is.null(batch)) {
    b <- as.factor(batch)[idx]
    per_type <- vapply(levels(ct), function(t) {
      j <- which(ct == t)
      # (silhouettes need 2 to n - 1 batches among the type's n cells)
      if (length(j) < 3 || !length(unique(b[j])) %in% seq(2, length(j) - 1)) return(NA_real_)
      sb <- cluster::silhouette(as.integer(droplevels(b[j])), stats::dist(e[j, , drop = FALSE]))
      mean(1 - abs(sb[, "sil_width"]))
    }, numeric(1))
    # NA (not NaN) when no cell type has 3 cells from 2 batches
    out[["batch"]] <- if (all(is.na(per_type))) NA_real_ else mean(per_type, na.rm = TRUE)
  }
  out
}

# Per-cell labels named by cell, put in the order of the embedding's named rows
# (the names are the pairing, as everywhere in the package); unnamed ones, and
# ones whose names are no cell's (from a lookup table), are taken in row order.
by_embedding_rows <- function(x, embedding, arg, call) {
  cells <- rownames(embedding)
  if (is.null(x) || is.null(names(x)) || is.null(cells) || !any(names(x) %in% cells)) return(x)
  at <- match(cells, names(x))
  if (anyNA(at) || length(x) != length(cells) || anyDuplicated(names(x))) {
    abort_arg(c("{.arg {arg}} is named, but its names are not the cells of {.arg embedding}'s rows, once each.",
                "i" = "Name it by cell as {.code rownames(embedding)}, or give it unnamed in row order."), call = call)
  }
  x[at]
}
