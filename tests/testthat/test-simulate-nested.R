# R/simulate-nested.R: simulateNested()'s ground truth and its one count generator.

# Relative expression of `genes` in `cells`: their share of the cells' counts.
rel_expr <- function(m, genes, cells) sum(m[genes, cells]) / sum(m[, cells])

test_that("the tree design: true distances sum the edges between samples, every gene sits on one edge", {
  skip_if_not_installed("SingleCellExperiment")
  skip_if_not_installed("ape")
  sce <- simulateNested(1200, 140, n_samples = 8, n_sites = 2, n_cell_types = 3, n_affected = 2, seed = 3)
  truth <- S4Vectors::metadata(sce)$truth
  samples <- sprintf("s%02d", 1:8)
  expect_identical(truth$affected, c("type1", "type2"))
  expect_identical(names(truth$edges), truth$affected)
  for (t in truth$affected) {
    edges <- truth$edges[[t]]
    expect_length(edges, 2 * 8 - 2)
    expect_true(all(vapply(edges, `[[`, numeric(1), "length") == 1))
    # Supplement B.2: the genes are partitioned among the edges
    genes <- unlist(lapply(edges, `[[`, "genes"))
    expect_setequal(genes, rownames(sce))
    expect_false(anyDuplicated(genes) > 0)
    # the distance counts the edges above exactly one of the two samples
    below <- vapply(edges, function(e) samples %in% e$below, logical(8))
    expected <- outer(1:8, 1:8, Vectorize(function(a, b) sum(below[a, ] != below[b, ])))
    dimnames(expected) <- list(samples, samples)
    expect_equal(truth$distances[[t]], expected)
    # 8 samples split in halves: every leaf at depth 3, so average linkage on the
    # truth recovers the planted tree
    hc <- stats::hclust(stats::as.dist(truth$distances[[t]]), "average")
    expect_equal(treeDistance(hc, truth$phylo[[t]]), 0)
    expect_identical(ape::read.tree(text = truth$trees[[t]])$tip.label, truth$phylo[[t]]$tip.label)
  }
  # the two affected types have their own trees
  expect_false(identical(truth$trees$type1, truth$trees$type2))
  # samples are nested in sites: one site per sample, every site used
  tab <- table(sce$sample, sce$site)
  expect_true(all(rowSums(tab > 0) == 1))
  expect_equal(ncol(tab), 2)
  expect_identical(truth$sample_table$site, as.character(sce$site[match(samples, sce$sample)]))
})

test_that("planted genes rise in the samples below their edge, in affected types only", {
  skip_if_not_installed("SingleCellExperiment")
  sce <- simulateNested(1200, 140, n_samples = 8, n_sites = 2, n_cell_types = 3, n_affected = 2, seed = 3)
  truth <- S4Vectors::metadata(sce)$truth
  m <- SummarizedExperiment::assay(sce, "counts")
  ratio <- function(type, e) {
    hit <- sce$cell_type == type
    rel_expr(m, e$genes, hit & sce$sample %in% e$below) / rel_expr(m, e$genes, hit & !sce$sample %in% e$below)
  }
  # thresholds: planted genes are doubled (median ratio over edges > 1.5); in the
  # unaffected type3 the same genes do not move (median within 0.8-1.25). Seeds
  # 1-6 of this call gave medians 1.93-2.07 (type1 and type2) and 0.96-1.03 (type3).
  for (t in truth$affected) expect_gt(median(vapply(truth$edges[[t]], function(e) ratio(t, e), numeric(1))), 1.5)
  flat <- median(vapply(truth$edges$type1, function(e) ratio("type3", e), numeric(1)))
  expect_gt(flat, 0.8)
  expect_lt(flat, 1.25)
})

test_that("ultrametric truth equals the tree's cophenetic distances (ape)", {
  skip_if_not_installed("SingleCellExperiment")
  skip_if_not_installed("ape")
  sce <- simulateNested(300, 200, n_samples = 7, n_cell_types = 2, n_affected = 1,
                        edge_lengths = "ultrametric", genes_per_edge = 6, seed = 4)
  truth <- S4Vectors::metadata(sce)$truth
  phy <- truth$phylo$type1
  coph <- ape::cophenetic.phylo(phy)
  samples <- rownames(truth$distances$type1)
  expect_equal(truth$distances$type1, coph[samples, samples], tolerance = 1e-12)
  # every leaf at depth 1: the root-to-tip lengths are all 1
  expect_equal(unname(ape::node.depth.edgelength(phy)[seq_along(phy$tip.label)]), rep(1, 7), tolerance = 1e-12)
  expect_equal(treeDistance(stats::hclust(stats::as.dist(truth$distances$type1), "average"), phy), 0)
  # equal edges: every edge of length 1, so the same holds
  equal <- S4Vectors::metadata(simulateNested(300, 200, n_samples = 7, n_cell_types = 2, n_affected = 1,
                                              genes_per_edge = 6, seed = 4))$truth
  coph <- ape::cophenetic.phylo(equal$phylo$type1)
  expect_equal(equal$distances$type1, coph[samples, samples], tolerance = 1e-12)
})

test_that("simulateNested's realistic regime: planted edges, ultrametric truth, skewed counts", {
  skip_if_not_installed("SingleCellExperiment")
  skip_if_not_installed("ape")
  sce <- simulateNested(1500, 500, n_samples = 8, n_cell_types = 2, n_affected = 1, genes_per_edge = 10,
                        edge_lengths = "ultrametric", expression = "skewed", library_size = 3000, seed = 2)
  truth <- S4Vectors::metadata(sce)$truth
  edges <- truth$edges$type1
  expect_length(edges, 2 * 8 - 2)
  # genes per edge proportional to length (mean 10, at least 1), disjoint within the tree
  n_genes <- vapply(edges, function(e) length(e$genes), integer(1))
  lengths <- vapply(edges, function(e) e$length, numeric(1))
  expect_equal(n_genes, pmax(1L, as.integer(round(10 * lengths / mean(lengths)))))
  expect_false(anyDuplicated(unlist(lapply(edges, `[[`, "genes"))) > 0)
  # the true distance is the summed length of the edges between two samples, and it
  # is ultrametric: average linkage recovers the tree exactly
  d <- truth$distances$type1
  a <- "s01"; b <- "s02"
  on_path <- vapply(edges, function(e) xor(a %in% e$below, b %in% e$below), logical(1))
  expect_equal(d[a, b], sum(lengths[on_path]))
  expect_equal(treeDistance(stats::hclust(stats::as.dist(d), "average"), truth$phylo$type1), 0)
  # counts: ~3,000 UMI per cell, most genes low
  m <- SummarizedExperiment::assay(sce, "counts")
  expect_equal(mean(Matrix::colSums(m)), 3000, tolerance = 0.1)
  gene_means <- Matrix::rowMeans(m)
  expect_lt(stats::median(gene_means), 0.5 * mean(gene_means))
  # a planted gene is doubled (relative to the rest) in the samples below its edge
  e <- edges[[which.max(n_genes)]]
  hit <- sce$cell_type == "type1"
  below <- hit & sce$sample %in% e$below
  above <- hit & !sce$sample %in% e$below
  rel <- function(cells) sum(m[e$genes, cells]) / sum(m[, cells])
  expect_gt(rel(below) / rel(above), 1.5)
  expect_error(simulateNested(100, 20, n_samples = 8, genes_per_edge = 10, seed = 1), "genes_per_edge",
               class = "mrvi_error")
  expect_error(simulateNested(100, 20, edge_lengths = "random"), "edge_lengths", class = "mrvi_error")
})

test_that("the covariates design plants three balanced covariates with strengths 3, 2 and 1.5", {
  skip_if_not_installed("SingleCellExperiment")
  sce <- simulateNested(1500, 200, n_samples = 12, n_sites = 2, n_cell_types = 2, n_affected = 1,
                        design = "covariates", seed = 6)
  truth <- S4Vectors::metadata(sce)$truth
  st <- truth$sample_table
  for (k in c("cov1", "cov2", "cov3")) {
    expect_equal(as.vector(table(st[[k]])), c(6L, 6L))
    expect_identical(sce[[k]], st[[k]][match(as.character(sce$sample), st$sample)])
    expect_length(truth$effects[[k]]$genes, 10)
  }
  expect_equal(vapply(truth$effects, `[[`, numeric(1), "strength"), c(cov1 = 3, cov2 = 2, cov3 = 1.5))
  m <- SummarizedExperiment::assay(sce, "counts")
  ratio <- function(k, type) {
    yes <- st$sample[st[[k]] == "yes"]
    hit <- sce$cell_type == type
    g <- truth$effects[[k]]$genes
    rel_expr(m, g, hit & sce$sample %in% yes) / rel_expr(m, g, hit & !sce$sample %in% yes)
  }
  # thresholds: seeds 1-6 of this call gave ratios 2.56-3.22 (cov1), 1.82-2.00
  # (cov2) in type1, and 0.89-1.17 for every covariate in the unaffected type2
  expect_gt(ratio("cov1", "type1"), 2.2)
  expect_gt(ratio("cov2", "type1"), 1.5)
  for (k in c("cov1", "cov2", "cov3")) {
    expect_gt(ratio(k, "type2"), 0.75)
    expect_lt(ratio(k, "type2"), 1.33)
  }
})

test_that("on real counts, unaffected cells are kept as they are and affected ones thinned", {
  skip_if_not_installed("SingleCellExperiment")
  set.seed(2)
  base <- list(counts = Matrix::Matrix(matrix(rpois(80 * 120, 6), 80, dimnames = list(paste0("g", 1:80), NULL)),
                                       sparse = TRUE),
               cell_type = rep(c("A", "B"), 60))
  sce <- simulateNested(NULL, NULL, n_samples = 4, base = base, n_affected = 1, seed = 5)
  # the sizes, which come from `base`, may be left out (as documented)
  expect_identical(simulateNested(n_samples = 4, base = base, n_affected = 1, seed = 5), sce)
  expect_error(simulateNested(n_samples = 4), "n_cells.*n_genes.*base", class = "mrvi_error")
  expect_error(simulateNested(100, n_samples = 4), "n_genes", class = "mrvi_error")
  # counts that are not counts, and a cell type per cell, are checked (they gave NA counts, or were recycled)
  for (bad in list(base$counts + 0.5, -base$counts)) {
    expect_error(simulateNested(NULL, NULL, n_samples = 4, base = list(counts = bad, cell_type = base$cell_type)),
                 "`base\\$counts` must hold raw counts", class = "mrvi_error")
  }
  expect_error(simulateNested(NULL, NULL, n_samples = 4, base = list(counts = base$counts, cell_type = c("A", "B"))),
               "`base\\$cell_type` must have one non-missing value per cell", class = "mrvi_error")
  truth <- S4Vectors::metadata(sce)$truth
  m <- as.matrix(SummarizedExperiment::assay(sce, "counts"))
  orig <- as.matrix(base$counts)
  B <- sce$cell_type == "B"
  expect_equal(unname(m[, B]), unname(orig[, B]))
  A <- which(!B)
  expect_true(all(m[, A] <= orig[, A]))
  # in an affected cell, the genes of the edges above its sample keep their counts;
  # the others are halved binomially
  kept <- thinned <- 0
  for (j in A) {
    s <- as.character(sce$sample[j])
    up <- unlist(lapply(truth$edges$A, function(e) if (s %in% e$below) e$genes))
    expect_equal(unname(m[up, j]), unname(orig[up, j]))
    other <- setdiff(rownames(m), up)
    kept <- kept + sum(m[other, j])
    thinned <- thinned + sum(orig[other, j])
  }
  expect_equal(kept / thinned, 0.5, tolerance = 0.05)
})

test_that("a seed reproduces the data and R's random state is left alone", {
  skip_if_not_installed("SingleCellExperiment")
  set.seed(42)
  state <- .Random.seed
  a <- simulateNested(200, 50, n_samples = 4, n_cell_types = 2, n_affected = 1, seed = 9)
  expect_identical(.Random.seed, state)
  b <- simulateNested(200, 50, n_samples = 4, n_cell_types = 2, n_affected = 1, seed = 9)
  expect_identical(SummarizedExperiment::assay(a, "counts"), SummarizedExperiment::assay(b, "counts"))
  expect_identical(S4Vectors::metadata(a), S4Vectors::metadata(b))
  c <- simulateNested(200, 50, n_samples = 4, n_cell_types = 2, n_affected = 1, seed = 10)
  expect_false(identical(SummarizedExperiment::assay(a, "counts"), SummarizedExperiment::assay(c, "counts")))
})

test_that("the tests' simulate_counts() draws from the same generator", {
  sim <- mrvi:::simulate_counts(n_cells = 300, n_genes = 60, n_samples = 4, n_cell_types = 3, seed = 1)
  expect_equal(dim(sim$counts), c(60L, 300L))
  expect_equal(levels(sim$sample_group), c("group1", "group2"))
  expect_identical(sim$affected, "type1")
  # every gene is a marker of one type (marker_one_in = 1): a type's top genes
  # differ from another's
  means <- sapply(levels(sim$cell_type), function(t) Matrix::rowMeans(sim$counts[, sim$cell_type == t]))
  top <- apply(means, 1, which.max)
  expect_equal(length(unique(top)), 3)
  set.seed(3)
  state <- .Random.seed
  again <- mrvi:::simulate_counts(n_cells = 300, n_genes = 60, n_samples = 4, n_cell_types = 3, seed = 1)
  expect_identical(.Random.seed, state)
  expect_identical(again, sim)
})

test_that("simulateNested() adds a crossed batch factor and a technical covariate without changing the rest", {
  plain <- simulateNested(400, 40, n_samples = 8, n_cell_types = 2, n_affected = 1, seed = 5)
  more <- simulateNested(400, 40, n_samples = 8, n_cell_types = 2, n_affected = 1, seed = 5,
                         n_chemistries = 2, technical = 1)
  expect_identical(SummarizedExperiment::assay(simulateNested(400, 40, n_samples = 8, n_cell_types = 2,
                                                              n_affected = 1, seed = 5, n_chemistries = 1,
                                                              technical = 0)),
                   SummarizedExperiment::assay(plain))
  expect_identical(more$sample, plain$sample)
  expect_identical(more$site, plain$site)
  expect_identical(S4Vectors::metadata(more)$truth$trees, S4Vectors::metadata(plain)$truth$trees)
  # each sample in one chemistry, both chemistries used, crossed with the sites
  expect_true(all(rowSums(table(more$sample, more$chemistry) > 0) == 1))
  expect_equal(nlevels(more$chemistry), 2)
  expect_true(all(more$mito >= 0 & more$mito <= 0.2))
  expect_false(identical(SummarizedExperiment::assay(more), SummarizedExperiment::assay(plain)))
  expect_error(simulateNested(400, 40, technical = -1), "technical", class = "mrvi_error")
  expect_error(simulateNested(400, 40, technical = 1e12), "`technical` must be one number in \\[0, 5\\]", class = "mrvi_error")
})

test_that("seed is one whole number, and means the same data whatever RNGkind()", {
  skip_if_not_installed("SingleCellExperiment")
  for (bad in list(NA, "a", 1.9, c(1, 2), -1)) {
    expect_error(simulateNested(60, 20, n_samples = 3, seed = bad), "`seed`", class = "mrvi_error")
  }
  x1 <- simulateNested(60, 20, n_samples = 3, seed = 1)
  old <- RNGkind()
  suppressWarnings(RNGkind("L'Ecuyer-CMRG", "Box-Muller", "Rounding"))
  x2 <- simulateNested(60, 20, n_samples = 3, seed = 1, n_chemistries = 1)
  expect_identical(RNGkind(), c("L'Ecuyer-CMRG", "Box-Muller", "Rounding"))  # the session's kind is kept
  suppressWarnings(RNGkind(old[1], old[2], old[3]))
  expect_identical(SingleCellExperiment::counts(x1), SingleCellExperiment::counts(x2))
  expect_identical(S4Vectors::metadata(x1)$seed, 1L)
  # NULL: fresh data each call, with the seed that reproduces it
  a <- simulateNested(60, 20, n_samples = 3, seed = NULL)
  b <- simulateNested(60, 20, n_samples = 3, seed = NULL)
  expect_false(identical(SingleCellExperiment::counts(a), SingleCellExperiment::counts(b)))
  again <- simulateNested(60, 20, n_samples = 3, seed = S4Vectors::metadata(a)$seed)
  expect_identical(SingleCellExperiment::counts(again), SingleCellExperiment::counts(a))
})

test_that("too few genes is a classed error giving the minimum", {
  skip_if_not_installed("SingleCellExperiment")
  # (5 cell types a marker each, and the tree's 6 edges a gene each)
  expect_error(simulateNested(100, n_genes = 2, n_samples = 4), "`n_genes` must be at least 6.*6 edges a gene", class = "mrvi_error")
  expect_error(simulateNested(100, n_genes = 4, n_samples = 4, n_cell_types = 2, design = "covariates"),
               "`n_genes` must be at least 5", class = "mrvi_error")
  expect_s4_class(simulateNested(100, n_genes = 6, n_samples = 4), "SingleCellExperiment")
})

test_that("sizes beyond options(mrvi.max_bytes) are refused before anything is drawn", {
  skip_if_not_installed("SingleCellExperiment")
  expect_error(simulateNested(1e9, n_genes = 100), "simulateNested\\(\\) would allocate", class = "mrvi_error")
  expect_error(simulateNested(100, n_genes = 1e9), "fewer `n_cells`, `n_genes` or `n_samples`", class = "mrvi_error")
  expect_error(simulateNested(100, 100, n_samples = 1e8), "would allocate", class = "mrvi_error")
})

test_that("by default an ultrametric tree's genes are split in proportion to its edge lengths, each edge at least one", {
  sce <- simulateNested(300, 400, n_samples = 8, n_cell_types = 2, n_affected = 1, edge_lengths = "ultrametric", seed = 3)
  edges <- S4Vectors::metadata(sce)$truth$edges$type1
  len <- vapply(edges, `[[`, numeric(1), "length")
  n <- vapply(edges, function(e) length(e$genes), integer(1))
  expect_equal(sum(n), 400)
  expect_true(all(n >= 1))
  expect_true(all(abs(n - 400 * len / sum(len)) <= 1 + 1e-9 | n == 1))
  expect_gt(cor(n, len), 0.99)
  # equal edges: equal shares, as before
  eq <- S4Vectors::metadata(simulateNested(300, 400, n_samples = 8, n_cell_types = 2, n_affected = 1, seed = 3))$truth$edges$type1
  expect_lte(diff(range(vapply(eq, function(e) length(e$genes), integer(1)))), 1)
  expect_error(simulateNested(300, 10, n_samples = 16, n_cell_types = 2, n_affected = 1),
               "`n_genes` must be at least 30", class = "mrvi_error")
})

test_that("odd bases and one-cell technical covariates get classed errors or finite counts", {
  m <- matrix(rpois(3 * 20, 3), 3, 20)
  expect_error(simulateNested(n_samples = 4, base = list(counts = m, cell_type = rep(1:2, 10)), design = "covariates"),
               "`base\\$counts` has 3 genes: the covariates design needs at least 5", class = "mrvi_error")
  skip_if_not_installed("SingleCellExperiment")
  sce <- SingleCellExperiment::SingleCellExperiment(list(raw = m), colData = S4Vectors::DataFrame(cell_type = rep(1:2, 10)))
  expect_error(simulateNested(base = sce, n_samples = 4, n_affected = 1), "`base` needs a \"counts\" assay", class = "mrvi_error")
  one <- SummarizedExperiment::assay(simulateNested(1, 20, n_samples = 2, n_cell_types = 1, n_affected = 1, technical = 1), "counts")
  expect_true(all(is.finite(as.matrix(one))))
  skip_if_not_installed("HDF5Array")
  sim <- mrvi:::simulate_counts(n_cells = 60, n_genes = 20, n_samples = 3, seed = 1)
  h5 <- HDF5Array::writeHDF5Array(sim$counts, tempfile(fileext = ".h5"), "counts", with.dimnames = TRUE)
  from_disk <- simulateNested(base = list(counts = h5, cell_type = sim$cell_type), n_samples = 3, n_affected = 1, seed = 2)
  in_memory <- simulateNested(base = list(counts = sim$counts, cell_type = sim$cell_type), n_samples = 3, n_affected = 1, seed = 2)
  expect_identical(SummarizedExperiment::assay(from_disk, "counts"), SummarizedExperiment::assay(in_memory, "counts"))
})
