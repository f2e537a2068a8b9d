#' Simulate multi-sample single-cell counts with a known sample structure
#'
#' Nested designs with ground truth, for benchmarks and tests.
#'
#' * `design = "tree"` (the paper's Supplement B.2): in each of the first
#'   `n_affected` cell types, a random binary tree over the samples (balanced
#'   random splits) gives every edge its own set of genes (a random partition of
#'   all genes among the edges); a cell of
#'   sample s in that type has the expression of every gene on the root-to-leaf
#'   path of s doubled. The tree is the truth: clustering the samples' distances
#'   in an affected type should recover it, while the other types carry no sample
#'   structure.
#' * `design = "covariates"` (the paper's §4.1): three binary sample covariates
#'   (`cov1`, `cov2`, `cov3`: "no"/"yes", balanced across samples) each multiply their own gene
#'   set by 3, 2 and 1.5 in the affected cell types; other types are uniform. The
#'   three sets are drawn independently, so they may share genes, whose effects
#'   then multiply.
#'
#' Samples are nested in sites (each sample in one site); every site multiplies
#' each gene by its own factor (log-normal, sd 0.3). Counts are negative binomial
#' (size 5) around library sizes of about `library_size` UMIs. (With `base`, the
#' sites are labels only: real counts get no site effect.)
#'
#' Further nuisance covariates, for models with several: `n_chemistries > 1`
#' adds a second categorical one, `chemistry`, crossed with the sites (each
#' sample in one chemistry, assigned independently of its site), which again
#' multiplies each gene by its own log-normal factor (sd 0.3); `technical > 0`
#' adds a continuous per-cell covariate `mito` (uniform on 0-0.2) that
#' multiplies a random tenth of the genes by \eqn{exp(technical \cdot m)}, m the
#' standardised `mito`. Both are drawn from their own random stream (seeded from
#' `seed`), so the samples, trees and sites of a seed stay those drawn without
#' them, and the defaults reproduce earlier versions exactly.
#'
#' The defaults make an easy problem (every gene carries an edge effect). Real
#' studies are harder; the paper's Supplement B.2 at realistic scale is
#' `simulateNested(20000, 2000, genes_per_edge = 10, expression = "skewed",
#' library_size = 3000)`: few genes per edge, most of them lowly expressed.
#' With `edge_lengths = "ultrametric"` the tree has random node heights, every
#' edge gets a number of genes proportional to its length, and the true
#' distance (the path length) is ultrametric, so average linkage on it recovers
#' the tree exactly.
#'
#' @param n_cells,n_genes size (ignored when `base` is given).
#' @param n_samples number of samples.
#' @param n_sites number of sites (samples are spread over them).
#' @param n_cell_types number of cell types (ignored when `base` is given).
#' @param n_affected number of cell types carrying the sample structure (the
#'   first ones).
#' @param design `"tree"` or `"covariates"`.
#' @param genes_per_edge tree design: `NULL` (all genes partitioned among the
#'   edges) or the number of genes per edge (with `edge_lengths =
#'   "ultrametric"`, the mean number: each edge gets a share proportional to its
#'   length, at least one).
#' @param edge_lengths tree design: `"equal"` (every edge length 1; the true
#'   distance counts edges) or `"ultrametric"` (see Details).
#' @param expression `"gamma"` (gene means Gamma(2, 2): few low genes) or
#'   `"skewed"` (log-normal gene means, sd 1.5 on the log scale: most genes low,
#'   a few high, as in real data). Fully synthetic counts only.
#' @param library_size mean UMIs per cell (fully synthetic counts only).
#' @param n_chemistries levels of a second categorical nuisance covariate
#'   crossed with the sites (1: none).
#' @param technical strength of a continuous technical covariate (0: none; at
#'   most 5).
#' @param base `NULL` (fully synthetic counts), or real counts to build on
#'   (semi-synthetic): a `SingleCellExperiment` with a `cell_type` column, or a
#'   list with `counts` (genes x cells) and `cell_type`. Its cells are assigned to
#'   samples at random; in affected types the effect is applied by keeping the
#'   counts of the cell's genes with the largest effect and thinning each other
#'   gene binomially by its effect over that largest one (halving them where the
#'   effects are 2s, as in the tree design), which raises the effect genes'
#'   relative expression by their effect. The result is new data: its cells are
#'   named `cell00001`, ... in the base's order, and of the base's cell metadata only
#'   `cell_type` is kept.
#' @param seed random seed, one whole number: the same seed gives the same data
#'   whatever the session's `RNGkind()` (the data are drawn with R's default
#'   generators; the session's generator and its state are restored afterwards,
#'   except the second value of a Box-Muller pair that R may hold back, which
#'   no R code can save).
#'   `NULL` draws a fresh seed, so that every call gives other data; the seed
#'   used is returned in `metadata()$seed` either way.
#' @return a `SingleCellExperiment` with assay `counts`, colData `sample`,
#'   `site`, `cell_type` (and `cov1`-`cov3` for the covariates design,
#'   `chemistry` and `mito` when asked for), and in
#'   `metadata()$truth`: `affected` (cell types), `sample_table`, and per
#'   affected type (tree design) `trees` (Newick strings), `phylo` (ape trees,
#'   when ape is installed), `distances` (true sample x sample path lengths) and
#'   `edges` (per edge: the samples `below` it, its `length` and its planted `genes`);
#'   for the covariates design `effects` (the gene sets and strengths); and
#'   `metadata()$seed`, the seed used.
#' @examples
#' if (requireNamespace("SingleCellExperiment", quietly = TRUE)) {
#'   sce <- simulateNested(600, 200, n_samples = 8, n_cell_types = 3, n_affected = 1)
#'   S4Vectors::metadata(sce)$truth$trees
#' }
#' @export
simulateNested <- function(n_cells, n_genes, n_samples = 32, n_sites = 2, n_cell_types = 5,
                           n_affected = 2, design = c("tree", "covariates"), base = NULL, seed = 1,
                           genes_per_edge = NULL, edge_lengths = c("equal", "ultrametric"),
                           expression = c("gamma", "skewed"), library_size = 1500,
                           n_chemistries = 1, technical = 0) {
  call <- sys.call()
  check_full_names(call, names(formals(sys.function())))
  # the sizes come from `base` when it is given (the documented use leaves them out)
  if (is.null(base) && (missing(n_cells) || missing(n_genes))) {
    abort_arg(c("{.arg n_cells} and {.arg n_genes} are required without {.arg base}: they have no default.",
                "i" = "Give both, or counts to build on as {.arg base}."), call = call)
  }
  design <- match_choice(design, c("tree", "covariates"), "design", call)
  edge_lengths <- match_choice(edge_lengths, c("equal", "ultrametric"), "edge_lengths", call)
  expression <- match_choice(expression, c("gamma", "skewed"), "expression", call)
  if (!is.null(genes_per_edge)) genes_per_edge <- check_count(genes_per_edge, "genes_per_edge", call)
  library_size <- check_count(library_size, "library_size", call)
  if (!requireNamespace("SingleCellExperiment", quietly = TRUE)) {
    abort_arg("simulateNested() returns a SingleCellExperiment: install {.pkg SingleCellExperiment}.", call = call)
  }
  n_samples <- check_count(n_samples, "n_samples", call)
  n_sites <- check_count(n_sites, "n_sites", call)
  n_chemistries <- check_count(n_chemistries, "n_chemistries", call)
  # (the affected genes are scaled by up to exp(1.7 technical): at 1e12 their means
  # were infinite and their counts NA)
  if (!is.numeric(technical) || length(technical) != 1 || !is.finite(technical) || technical < 0 || technical > 5) {
    abort_arg("{.arg technical} must be one number in [0, 5].", call = call)
  }
  if (n_samples < 2) abort_arg("{.arg n_samples} must be at least 2.", call = call)
  if (n_sites > n_samples) abort_arg("{.arg n_sites} cannot exceed {.arg n_samples}.", call = call)
  restore <- preserve_rng()
  on.exit(restore())
  # NULL: a fresh seed, not drawn from (nor advancing) the session's stream
  if (is.null(seed)) {
    set.seed(NULL)
    seed <- sample.int(.Machine$integer.max, 1)
  }
  # (a fraction used to be truncated silently, NA and text were base R errors)
  seed <- check_whole(seed, "seed", call)
  # the default generators, so that a seed gives the same data whatever the
  # session's RNGkind() (preserve_rng() gives the session its own back)
  fixed_rng(seed)

  if (is.null(base)) {
    n_cells <- check_count(n_cells, "n_cells", call)
    n_genes <- check_count(n_genes, "n_genes", call)
    n_cell_types <- check_count(n_cell_types, "n_cell_types", call)
    # every cell type gets at least one marker gene (and each covariate of the
    # covariates design 5 genes): fewer failed as "subscript out of bounds"
    # (and each of a tree's 2 (S - 1) edges a gene of its own, by default)
    n_edges <- if (design == "tree" && is.null(genes_per_edge) && isTRUE(n_affected > 0)) 2L * (n_samples - 1L) else 0L
    min_genes <- max(n_cell_types, if (design == "covariates") 5L else 1L, n_edges)
    # the cells' means (genes x cells, dense while drawn), each sample's means per
    # cell type and the true distances (samples x samples per affected type, at most every type)
    n_samples_d <- as.numeric(n_samples)
    check_size(8 * (as.numeric(n_genes) * n_cells + n_genes * n_samples_d * n_cell_types +
                      n_samples_d^2 * (n_cell_types + 1)),
               "simulateNested()", call,
               hint = "Ask for fewer {.arg n_cells}, {.arg n_genes} or {.arg n_samples}, or raise {.code options(mrvi.max_bytes = )}.")
    if (n_genes < min_genes) {
      needs <- c(sprintf("each of the %d cell types a marker gene", n_cell_types),
                 if (design == "covariates") "each covariate 5 effect genes",
                 if (n_edges > 0) sprintf("each of the trees' %d edges a gene", n_edges))
      abort_arg(c("{.arg n_genes} must be at least {min_genes} here, not {n_genes}.",
                  "i" = "Needed: {paste(needs, collapse = '; ')}."), call = call)
    }
    cell_type <- factor(sprintf("type%d", sample.int(n_cell_types, n_cells, replace = TRUE)),
                        levels = sprintf("type%d", seq_len(n_cell_types)))
    genes <- sprintf("gene%04d", seq_len(n_genes))
  } else {
    base <- read_base(base, call)
    cell_type <- droplevels(as.factor(base$cell_type))
    n_cells <- ncol(base$counts)
    n_genes <- nrow(base$counts)
    n_cell_types <- nlevels(cell_type)
    genes <- rownames(base$counts) %||% sprintf("gene%04d", seq_len(n_genes))
    if (design == "covariates" && n_genes < 5) {
      abort_arg("{.arg base$counts} has {n_genes} gene{?s}: the covariates design needs at least 5 (each covariate's effect genes).",
                call = call)
    }
  }
  n_affected <- check_whole(n_affected, "n_affected", call)
  if (n_affected > n_cell_types) abort_arg("{.arg n_affected} cannot exceed the number of cell types.", call = call)
  samples <- sprintf("s%02d", seq_len(n_samples))
  sample <- factor(samples[sample.int(n_samples, n_cells, replace = TRUE)], levels = samples)
  site_of_sample <- sprintf("site%d", rep_len(seq_len(n_sites), n_samples)[sample.int(n_samples)])
  names(site_of_sample) <- samples
  site <- factor(site_of_sample[as.character(sample)])
  affected <- levels(cell_type)[seq_len(n_affected)]

  # multiplicative effect per (gene, cell) from the design
  effect <- matrix(1, n_genes, n_samples, dimnames = list(NULL, samples))
  effects <- list()
  truth <- list(affected = affected)
  sample_table <- data.frame(sample = samples, site = unname(site_of_sample), row.names = samples)
  cell_effect <- matrix(1, n_genes, n_cells)
  if (design == "tree") {
    truth$trees <- truth$distances <- truth$phylo <- truth$edges <- list()
    for (t in affected) {
      tree <- random_tree(samples, ultrametric = edge_lengths == "ultrametric")
      eff <- matrix(1, n_genes, n_samples, dimnames = list(NULL, samples))
      genes_of_edge <- edge_genes(tree, n_genes, genes_per_edge, call,
                                  genes_arg = if (is.null(base)) "n_genes" else "base$counts")
      for (k in seq_along(tree$edges)) {
        below <- tree$edges[[k]]$below
        g <- genes_of_edge[[k]]
        eff[g, below] <- eff[g, below] * 2
      }
      hit <- which(cell_type == t)
      cell_effect[, hit] <- eff[, as.character(sample[hit])]
      truth$edges[[t]] <- lapply(seq_along(tree$edges), function(k) {
        list(below = tree$edges[[k]]$below, length = tree$edges[[k]]$length, genes = genes[genes_of_edge[[k]]])
      })
      truth$trees[[t]] <- tree$newick
      truth$distances[[t]] <- tree$path_length
      if (requireNamespace("ape", quietly = TRUE)) truth$phylo[[t]] <- ape::read.tree(text = tree$newick)
    }
  } else {
    strength <- c(cov1 = 3, cov2 = 2, cov3 = 1.5)
    for (k in names(strength)) {
      value <- sample(rep_len(c("no", "yes"), n_samples))
      sample_table[[k]] <- value
      genes_k <- sample.int(n_genes, max(5L, n_genes %/% 20))
      effects[[k]] <- list(genes = genes[genes_k], strength = strength[[k]])
      eff <- matrix(1, n_genes, n_samples)
      eff[genes_k, value == "yes"] <- strength[[k]]
      hit <- which(cell_type %in% affected)
      cell_effect[, hit] <- cell_effect[, hit] * eff[, as.integer(sample[hit])]
    }
    truth$effects <- effects
  }
  extra <- nuisance_effects(seed, samples, sample, n_genes, n_chemistries, technical)
  cell_effect <- cell_effect * extra$effect
  if (!is.null(extra$chemistry)) sample_table$chemistry <- extra$chemistry
  truth$sample_table <- sample_table

  counts <- if (is.null(base)) {
    synthetic_counts(cell_type, site, cell_effect, n_genes, expression, library_size)
  } else {
    thin_counts(base$counts, cell_effect)
  }
  dimnames(counts) <- list(genes, sprintf("cell%05d", seq_len(n_cells)))
  col <- S4Vectors::DataFrame(sample = sample, site = site, cell_type = cell_type,
                              row.names = colnames(counts))
  if (design == "covariates") {
    for (k in c("cov1", "cov2", "cov3")) col[[k]] <- sample_table[[k]][as.integer(sample)]
  }
  if (!is.null(extra$chemistry)) col$chemistry <- factor(unname(extra$chemistry[as.integer(sample)]))
  if (!is.null(extra$mito)) col$mito <- extra$mito
  SingleCellExperiment::SingleCellExperiment(list(counts = counts), colData = col,
                                             metadata = list(truth = truth, seed = seed))
}

# The effects (genes x cells) of a chemistry crossed with the sites and of a
# continuous technical covariate, drawn from a stream of their own (seed + 7919)
# so that the caller's stream, and with it everything else a seed draws, is the
# one without them.
nuisance_effects <- function(seed, samples, sample, n_genes, n_chemistries, technical) {
  out <- list(effect = 1)
  if (n_chemistries < 2 && technical == 0) return(out)
  state <- get(".Random.seed", envir = globalenv())
  on.exit(assign(".Random.seed", state, envir = globalenv()))
  fixed_rng((seed + 7919) %% .Machine$integer.max)  # (seed + 7919L overflowed near the maximum)
  effect <- matrix(1, n_genes, length(sample))
  if (n_chemistries > 1) {
    chem <- sprintf("chem%d", rep_len(seq_len(n_chemistries), length(samples))[sample.int(length(samples))])
    out$chemistry <- stats::setNames(chem, samples)
    per_chem <- matrix(exp(stats::rnorm(n_genes * n_chemistries, sd = 0.3)), n_genes)
    effect <- effect * per_chem[, match(chem[as.integer(sample)], sprintf("chem%d", seq_len(n_chemistries)))]
  }
  if (technical > 0) {
    out$mito <- stats::runif(length(sample), 0, 0.2)
    genes <- sample.int(n_genes, max(1L, n_genes %/% 10))
    # (one cell: no spread to standardise by, and no effect)
    m <- if (length(out$mito) > 1) (out$mito - mean(out$mito)) / stats::sd(out$mito) else 0
    effect[genes, ] <- effect[genes, ] * rep(exp(technical * m), each = length(genes))
  }
  out$effect <- effect
  out
}

# Balanced random binary tree over samples: splits, edges (the samples below
# each edge and the edge's length), Newick text and the true distance (the
# summed lengths of the edges on the path between two samples). Equal lengths
# are 1; ultrametric ones come from node heights (root 1, leaves 0, each inner
# node a random 30-90% of its parent's height), so every leaf is at depth 1.
random_tree <- function(samples, ultrametric = FALSE) {
  edges <- list()
  build <- function(set, height) {
    if (length(set) == 1) return(set)
    set <- sample(set)
    half <- length(set) %/% 2
    parts <- list(set[seq_len(half)], set[-seq_len(half)])
    texts <- vapply(parts, function(p) {
      child <- if (length(p) == 1) 0 else if (ultrametric) height * stats::runif(1, 0.3, 0.9) else height - 1
      len <- if (ultrametric) height - child else 1
      edges[[length(edges) + 1]] <<- list(below = p, length = len)
      # (every edge with its length, to the last digit: the tree's cophenetic
      # distances are the true distances)
      paste0(build(p, child), ":", format(len, digits = 17))
    }, character(1))
    paste0("(", paste(texts, collapse = ","), ")")
  }
  newick <- paste0(build(samples, if (ultrametric) 1 else length(samples)), ";")
  member <- sapply(edges, function(e) samples %in% e$below)
  rownames(member) <- samples
  lengths <- vapply(edges, function(e) e$length, numeric(1))
  # path length between a and b: the edges above exactly one of them
  path <- outer(seq_along(samples), seq_along(samples),
                Vectorize(function(a, b) sum(lengths[member[a, ] != member[b, ]])))
  dimnames(path) <- list(samples, samples)
  list(edges = edges, newick = newick, path_length = path)
}

# The genes of each edge: all genes partitioned among the edges (Supplement B.2)
# when `per_edge` is NULL; otherwise `per_edge` genes per unit of mean edge length
# (at least one per edge), disjoint within the tree.
edge_genes <- function(tree, n_genes, per_edge, call, genes_arg = "n_genes") {
  n_edges <- length(tree$edges)
  lengths <- vapply(tree$edges, function(e) e$length, numeric(1))
  if (is.null(per_edge)) {
    # (an edge without genes would be in the truth but not in the counts)
    if (n_genes < n_edges) {
      abort_arg(c("{.arg {genes_arg}} has {n_genes} gene{?s}, too few for the tree's {n_edges} edges: each needs a gene of its own.",
                  "i" = "Give at least {n_edges} genes, or fewer samples."), call = call)
    }
    # equal edges: an equal share each; otherwise shares proportional to length
    # (largest remainders, at least one gene each), as the truth's path lengths count them
    per <- if (all(lengths == lengths[1])) tabulate(rep_len(seq_len(n_edges), n_genes), n_edges) else
      proportional_counts(n_genes, lengths)
    edge_of_gene <- sample(rep(seq_len(n_edges), per))
    return(lapply(seq_len(n_edges), function(k) which(edge_of_gene == k)))
  }
  counts <- pmax(1L, as.integer(round(per_edge * lengths / mean(lengths))))
  if (sum(counts) > n_genes) {
    abort_arg("{.arg genes_per_edge} = {per_edge} needs {sum(counts)} genes for {n_edges} edges; the data have {n_genes}.",
              call = call)
  }
  split(sample.int(n_genes, sum(counts)), rep(seq_len(n_edges), counts))
}

# `total` split into whole shares proportional to `weights`, each at least 1
# (total >= length(weights)): floors, then the largest remainders.
proportional_counts <- function(total, weights) {
  share <- total * weights / sum(weights)
  out <- pmax(1L, as.integer(floor(share)))
  while (sum(out) > total) {  # (raised to 1 above their share: taken from the largest)
    k <- which.max(out)
    out[k] <- out[k] - 1L
  }
  rest <- total - sum(out)
  if (rest > 0) {
    extra <- order(share - out, decreasing = TRUE)[seq_len(rest)]
    out[extra] <- out[extra] + 1L
  }
  out
}

# Fully synthetic counts: per cell type gene means (Gamma(2, 2) or log-normal),
# one in `marker_one_in` of each type's (random) share of the genes up 4-fold, a
# log-normal site factor per gene, the design's `cell_effect` (genes x cells),
# log-normal library sizes and negative binomial counts (size 5).
synthetic_counts <- function(cell_type, site, cell_effect, n_genes, expression = "gamma", library_size = 1500,
                             marker_one_in = 3L) {
  n_types <- nlevels(cell_type)
  base <- if (expression == "gamma") {
    matrix(stats::rgamma(n_genes * n_types, shape = 2, rate = 2), n_genes)
  } else {
    # one log-normal level per gene (most genes low), varied per type
    exp(stats::rnorm(n_genes, 0, 1.5) + matrix(stats::rnorm(n_genes * n_types, 0, 0.3), n_genes))
  }
  markers <- split(sample.int(n_genes), rep_len(seq_len(n_types), n_genes))
  for (k in seq_len(n_types)) {
    m <- markers[[k]][seq_len(max(1L, length(markers[[k]]) %/% marker_one_in))]
    base[m, k] <- base[m, k] * 4
  }
  site_effect <- matrix(exp(stats::rnorm(n_genes * nlevels(site), sd = 0.3)), n_genes)
  means <- base[, as.integer(cell_type)] * site_effect[, as.integer(site)] * cell_effect
  lib <- stats::rlnorm(ncol(means), log(library_size), 0.3)
  means <- sweep(means, 2, colSums(means), "/") * rep(lib, each = n_genes)
  m <- matrix(stats::rnbinom(length(means), mu = means, size = 5), n_genes)
  methods::as(m, "CsparseMatrix")
}

# Semi-synthetic: in each cell, genes with an effect > 1 keep their counts and
# the others are thinned by binomial(x, 1 / effect) -- relative expression of the
# effect genes rises by the effect (keep probability effect / the cell's largest).
thin_counts <- function(counts, cell_effect) {
  counts <- methods::as(counts, "CsparseMatrix")
  counts <- methods::as(counts, "generalMatrix")
  j <- rep(seq_len(ncol(counts)), diff(counts@p))
  i <- counts@i + 1L
  eff <- cell_effect[cbind(i, j)]
  # each cell's maximum effect sets the reference: genes below it are thinned
  top <- apply(cell_effect, 2, max)[j]
  keep_prob <- eff / top
  counts@x <- as.numeric(stats::rbinom(length(counts@x), counts@x, keep_prob))
  Matrix::drop0(counts)
}

read_base <- function(base, call) {
  if (methods::is(base, "SingleCellExperiment")) {
    if (!"cell_type" %in% names(SummarizedExperiment::colData(base))) {
      abort_arg("{.arg base} needs a {.val cell_type} column in its colData.", call = call)
    }
    if (!"counts" %in% SummarizedExperiment::assayNames(base)) {
      abort_arg(c("{.arg base} needs a {.val counts} assay of raw counts.",
                  "i" = "Its assays: {.val {SummarizedExperiment::assayNames(base)}}."), call = call)
    }
    return(check_base(list(counts = SummarizedExperiment::assay(base, "counts"), cell_type = base$cell_type), call))
  }
  if (is.list(base) && all(c("counts", "cell_type") %in% names(base))) return(check_base(base, call))
  abort_arg("{.arg base} must be a SingleCellExperiment with a cell_type column, or list(counts =, cell_type =).",
            call = call)
}

# Counts to build on must be raw counts, with a cell type for every cell (a
# fraction or a negative count made every thinned count NA; a short cell_type
# was recycled).
check_base <- function(base, call) {
  counts <- with_call(as_dgc(base$counts, arg = "base$counts", call = call), call)
  # (thinned in memory: counts on disk are read whole)
  if (is_on_disk(counts)) counts <- read_from_disk(methods::as(counts, "dgCMatrix"), call)
  # (names for the scan's messages only: "at (gene, cell) (, )" said nothing)
  named <- counts
  dimnames(named) <- list(rownames(counts) %||% sprintf("gene%04d", seq_len(nrow(counts))),
                          colnames(counts) %||% sprintf("cell%d", seq_len(ncol(counts))))
  with_call(scan_counts(named, call), call, rename = c(x = "base$counts"))
  if (length(base$cell_type) != ncol(counts) || anyNA(base$cell_type)) {
    abort_arg("{.arg base$cell_type} must have one non-missing value per cell of {.arg base$counts} ({ncol(counts)}), not {length(base$cell_type)}.",
              call = call)
  }
  list(counts = counts, cell_type = base$cell_type)
}
