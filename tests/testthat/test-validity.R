# Issue 14: the default model must find sample structure in data as hard as real
# studies. A reduced version of bench/validity.R: 4,000 cells x 600 genes, skewed
# expression (most genes low), ~3,000 UMI per cell, 16 samples in 2 sites, an
# ultrametric tree in one of 3 cell types with 10 genes per edge on average.
# Thresholds hold over 5 seeds with a margin, since results for a fixed seed differ
# across CPUs and thread counts: seeds 1-5 of this exact call (AMD EPYC, 1 thread) gave
# contrast 6.1 / 5.9 / 5.5 / 3.6 / 7.3, Spearman 0.82 / 0.91 / 0.80 / 0.44 / 0.80,
# normalised RF 0.31 / 0.31 / 0.46 / 0.85 / 0.69 (a random tree scores ~0.95 or more).
# They check that the structure is found and placed in the right cell type, not the
# issue's targets (Spearman >= 0.8, RF <= 0.3 at 20,000 cells), which are not met yet.
test_that("the default model recovers a planted sample tree in realistic data, in the affected type only", {
  skip_if_not_installed("SingleCellExperiment")
  skip_if_not_installed("ape")
  sce <- simulateNested(4000, 600, n_samples = 16, n_sites = 2, n_cell_types = 3, n_affected = 1,
                        genes_per_edge = 10, edge_lengths = "ultrametric", expression = "skewed",
                        library_size = 3000, seed = 1)
  tree <- S4Vectors::metadata(sce)$truth$phylo$type1
  left <- tree$tip.label[ape::prop.part(tree)[[2]]]  # one side of the root split
  sce$root_split <- ifelse(as.character(sce$sample) %in% left, "left", "right")
  fit <- mrvi(sce, sample = "sample", batch = "site", seed = 1, verbose = FALSE)
  expect_identical(fit@config$flavour, "attention")
  # per-cell DE of the root split of type1's tree (default arguments): type1's cells,
  # and (thanks to the posterior-noise floor) few others; without the floor most
  # cells are flagged. Seeds 1-5: TPR 1.00 each, other cells flagged 0.0 / 0.1 /
  # 3.0 / 0.1 / 0.0% (without the floor 99 / 99 / 100 / 81 / 86%).
  affected <- fit@cell_data$cell_type == "type1"
  de <- differentialExpression(fit, "root_split")
  expect_gt(mean(de$q_value[affected] < 0.05), 0.8)
  expect_lt(mean(de$q_value[!affected] < 0.05), 0.1)
  plain <- differentialExpression(fit, "root_split", mc_samples = 0, normalize = FALSE)
  expect_gt(mean(plain$q_value[!affected] < 0.05), 0.5)
  d <- sampleDistances(fit, groups = "cell_type", mc_samples = 0)
  truth <- S4Vectors::metadata(sce)$truth
  off <- function(m) m[upper.tri(m)]
  mean_d <- apply(d, 3, function(m) mean(off(m)))
  true_d <- truth$distances$type1[dimnames(d)[[1]], dimnames(d)[[2]]]
  expect_gt(mean_d[["type1"]] / max(mean_d[c("type2", "type3")]), 2)
  expect_gt(stats::cor(off(d[, , "type1"]), off(true_d), method = "spearman"), 0.25)
  expect_lt(treeDistance(sampleHclust(d, "type1"), truth$phylo$type1), 0.95)
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
