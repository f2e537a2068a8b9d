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
#'   set by 3, 2 and 1.5 in the affected cell types; other types are uniform.
#'
#' Samples are nested in sites (each sample in one site); every site multiplies
#' each gene by its own factor (log-normal, sd 0.3). Counts are negative binomial
#' (size 5) around library sizes of about 1,500 UMIs.
#'
#' @param n_cells,n_genes size (ignored when `base` is given).
#' @param n_samples number of samples.
#' @param n_sites number of sites (samples are spread over them).
#' @param n_cell_types number of cell types (ignored when `base` is given).
#' @param n_affected number of cell types carrying the sample structure (the
#'   first ones).
#' @param design `"tree"` or `"covariates"`.
#' @param base `NULL` (fully synthetic counts), or real counts to build on
#'   (semi-synthetic): a `SingleCellExperiment` with a `cell_type` column, or a
#'   list with `counts` (genes x cells) and `cell_type`. Its cells are assigned to
#'   samples at random; in affected types the effect is applied by keeping the
#'   counts of the effect genes and thinning the others binomially (halving them),
#'   which doubles the effect genes' relative expression.
#' @param seed random seed (R's generator is restored afterwards).
#' @return a `SingleCellExperiment` with assay `counts`, colData `sample`,
#'   `site`, `cell_type` (and `cov1`-`cov3` for the covariates design), and in
#'   `metadata()$truth`: `affected` (cell types), `sample_table`, and per
#'   affected type (tree design) `trees` (Newick strings), `phylo` (ape trees,
#'   when ape is installed) and `distances` (true sample x sample path lengths);
#'   for the covariates design `effects` (the gene sets and strengths).
#' @examples
#' if (requireNamespace("SingleCellExperiment", quietly = TRUE)) {
#'   sce <- simulateNested(600, 200, n_samples = 8, n_cell_types = 3, n_affected = 1)
#'   S4Vectors::metadata(sce)$truth$trees
#' }
#' @export
simulateNested <- function(n_cells, n_genes, n_samples = 32, n_sites = 2, n_cell_types = 5,
                           n_affected = 2, design = c("tree", "covariates"), base = NULL, seed = 1) {
  call <- sys.call()
  design <- match_choice(design, c("tree", "covariates"), "design", call)
  if (!requireNamespace("SingleCellExperiment", quietly = TRUE)) {
    abort_arg("simulateNested() returns a SingleCellExperiment: install {.pkg SingleCellExperiment}.", call = call)
  }
  n_samples <- check_count(n_samples, "n_samples", call)
  n_sites <- check_count(n_sites, "n_sites", call)
  if (n_samples < 2) abort_arg("{.arg n_samples} must be at least 2.", call = call)
  if (n_sites > n_samples) abort_arg("{.arg n_sites} cannot exceed {.arg n_samples}.", call = call)
  restore <- preserve_rng()
  on.exit(restore())
  set.seed(seed)

  if (is.null(base)) {
    n_cells <- check_count(n_cells, "n_cells", call)
    n_genes <- check_count(n_genes, "n_genes", call)
    n_cell_types <- check_count(n_cell_types, "n_cell_types", call)
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
    truth$trees <- truth$distances <- truth$phylo <- list()
    for (t in affected) {
      tree <- random_tree(samples)
      eff <- matrix(1, n_genes, n_samples, dimnames = list(NULL, samples))
      # the genes are randomly partitioned among the edges (Supplement B.2)
      edge_of_gene <- sample(rep_len(seq_along(tree$edges), n_genes))
      for (k in seq_along(tree$edges)) {
        g <- which(edge_of_gene == k)
        below <- tree$edges[[k]]$below
        eff[g, below] <- eff[g, below] * 2
      }
      hit <- which(cell_type == t)
      cell_effect[, hit] <- eff[, as.character(sample[hit])]
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
  truth$sample_table <- sample_table

  counts <- if (is.null(base)) {
    synthetic_counts(cell_type, site, cell_effect, n_genes)
  } else {
    thin_counts(base$counts, cell_effect)
  }
  dimnames(counts) <- list(genes, sprintf("cell%05d", seq_len(n_cells)))
  col <- S4Vectors::DataFrame(sample = sample, site = site, cell_type = cell_type,
                              row.names = colnames(counts))
  if (design == "covariates") {
    for (k in c("cov1", "cov2", "cov3")) col[[k]] <- sample_table[[k]][as.integer(sample)]
  }
  SingleCellExperiment::SingleCellExperiment(list(counts = counts), colData = col,
                                             metadata = list(truth = truth))
}

# Balanced random binary tree over samples: splits, edges (the samples below
# each edge), Newick text and the true distance (edges on the path between samples).
random_tree <- function(samples) {
  edges <- list()
  build <- function(set) {
    if (length(set) == 1) return(set)
    set <- sample(set)
    half <- length(set) %/% 2
    parts <- list(set[seq_len(half)], set[-seq_len(half)])
    texts <- vapply(parts, function(p) {
      edges[[length(edges) + 1]] <<- list(below = p)
      build(p)
    }, character(1))
    paste0("(", paste(texts, collapse = ","), ")")
  }
  newick <- paste0(build(samples), ";")
  member <- sapply(edges, function(e) samples %in% e$below)
  rownames(member) <- samples
  # path length between a and b = number of edges above exactly one of them
  path <- outer(seq_along(samples), seq_along(samples),
                Vectorize(function(a, b) sum(member[a, ] != member[b, ])))
  dimnames(path) <- list(samples, samples)
  list(edges = edges, newick = newick, path_length = path)
}

synthetic_counts <- function(cell_type, site, cell_effect, n_genes) {
  n_types <- nlevels(cell_type)
  base <- matrix(stats::rgamma(n_genes * n_types, shape = 2, rate = 2), n_genes)
  markers <- split(sample.int(n_genes), rep_len(seq_len(n_types), n_genes))
  for (k in seq_len(n_types)) {
    m <- markers[[k]][seq_len(max(1L, length(markers[[k]]) %/% 3))]
    base[m, k] <- base[m, k] * 4
  }
  site_effect <- matrix(exp(stats::rnorm(n_genes * nlevels(site), sd = 0.3)), n_genes)
  means <- base[, as.integer(cell_type)] * site_effect[, as.integer(site)] * cell_effect
  lib <- stats::rlnorm(ncol(means), log(1500), 0.3)
  means <- sweep(means, 2, colSums(means), "/") * rep(lib, each = n_genes)
  m <- matrix(stats::rnbinom(length(means), mu = means, size = 5), n_genes)
  methods::as(m, "CsparseMatrix")
}

# Semi-synthetic: in each cell, genes with an effect > 1 keep their counts and
# the others are thinned by binomial(x, 1 / effect) -- relative expression of the
# effect genes rises by the effect. (Effects are products of 2s.)
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
    return(list(counts = SummarizedExperiment::assay(base, "counts"), cell_type = base$cell_type))
  }
  if (is.list(base) && all(c("counts", "cell_type") %in% names(base))) return(base)
  abort_arg("{.arg base} must be a SingleCellExperiment with a cell_type column, or list(counts =, cell_type =).",
            call = call)
}

# Save R's random state and give back a function that restores it.
preserve_rng <- function() {
  had <- exists(".Random.seed", envir = globalenv(), inherits = FALSE)
  old <- if (had) get(".Random.seed", envir = globalenv())
  function() {
    if (had) assign(".Random.seed", old, envir = globalenv())
    else if (exists(".Random.seed", envir = globalenv(), inherits = FALSE)) rm(".Random.seed", envir = globalenv())
  }
}
