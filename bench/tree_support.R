# Calibration of sample-tree clade support and of split genes (issue 19).
#   R_LIBS=$PWD/.Rlib Rscript bench/tree_support.R
# Data: simulateNested()'s tree design (paper Supplement B.2) at moderate size,
# realistic regime (10 genes per edge, skewed expression, ~3,000 UMI), built
# semi-synthetically: a skewed synthetic base without sample structure, then the
# tree effects applied by simulateNested(base = ). The same call on a probe base
# (every count 1000, same cell types and seed, hence the same trees and edge
# genes) reveals the planted effect of every gene in every sample: a gene on the
# root-to-leaf path of a sample keeps its counts, the others are halved. So the
# genes planted on the two root edges of each affected type are known exactly.
# Per seed: one fit (n_threads = 1); sampleTreeSupport(B) per cell type; every
# non-root clade of each point-estimate tree is "true" when the true tree of that
# type has it. Unaffected types have no structure of their own, but a model of the
# whole data can carry the affected types' sample shifts into them: their clades
# are reported apart, not as false clades.
# Split genes: sampleSplitGenes() on the true root split of each affected type
# (AUC of |lfc| for the root-edge genes) and on the same split in an unaffected type,
# beside the pseudobulk log-CPM fold change of the same split. Clade support is
# computed on raw and on normalised distances (`normalize = TRUE`).
# Settings (environment): MRVI_BENCH_SEEDS (default 1,2), MRVI_BENCH_REGIMES
# ("realistic,easy"), MRVI_BENCH_CELLS (6000),
# MRVI_BENCH_GENES (500), MRVI_BENCH_SAMPLES (12), MRVI_BENCH_B (100),
# MRVI_BENCH_EPOCHS (150), MRVI_BENCH_SPLIT_GENES ("true"), MRVI_BENCH_OUT (CSV of clades).
suppressMessages({
  library(mrvi)
  library(SingleCellExperiment)
})
seeds <- as.integer(strsplit(Sys.getenv("MRVI_BENCH_SEEDS", "1,2"), ",")[[1]])
# "realistic": 10 genes per edge, skewed expression, ~3,000 UMI; "easy": every gene on
# some edge (simulateNested()'s default), Gamma expression, ~1,500 UMI
regimes <- strsplit(Sys.getenv("MRVI_BENCH_REGIMES", "realistic,easy"), ",")[[1]]
n_cells <- as.integer(Sys.getenv("MRVI_BENCH_CELLS", "6000"))
n_genes <- as.integer(Sys.getenv("MRVI_BENCH_GENES", "500"))
n_samples <- as.integer(Sys.getenv("MRVI_BENCH_SAMPLES", "12"))
B <- as.integer(Sys.getenv("MRVI_BENCH_B", "100"))
epochs <- as.integer(Sys.getenv("MRVI_BENCH_EPOCHS", "150"))
out_file <- Sys.getenv("MRVI_BENCH_OUT", "bench/results/tree_support.csv")
genes_file <- sub("\\.csv$", "_genes.csv", out_file)
split_genes <- Sys.getenv("MRVI_BENCH_SPLIT_GENES", "true") == "true"  # "false": clade support only
# the distances' space(s) of the support ("expression", sampleTreeSupport()'s default, and/or "latent")
spaces <- strsplit(Sys.getenv("MRVI_BENCH_SPACES", "expression"), ",")[[1]]

# Clades (sets of tips below a node, as sorted text) of a rooted ape tree, root excluded.
clades_of <- function(phy) {
  parts <- ape::prop.part(phy)
  keys <- vapply(parts, function(p) paste(sort(attr(parts, "labels")[p]), collapse = ","), "")
  keys[-1]
}
auc <- function(score, positive) mean(outer(score[positive], score[!positive], ">") +
                                        0.5 * outer(score[positive], score[!positive], "=="))

clade_rows <- list()
gene_rows <- list()
for (regime in regimes) for (seed in seeds) {
  realistic <- regime == "realistic"
  base <- simulateNested(n_cells, n_genes, n_samples = n_samples, n_cell_types = 4, n_affected = 0,
                         expression = if (realistic) "skewed" else "gamma",
                         library_size = if (realistic) 3000 else 1500, seed = seed)
  cell_type <- base$cell_type
  args <- list(n_samples = n_samples, n_sites = 2, n_affected = 2, design = "tree",
               genes_per_edge = if (realistic) 10, seed = seed + 100)
  sce <- do.call(simulateNested, c(list(base = list(counts = counts(base), cell_type = cell_type)), args))
  probe <- Matrix::Matrix(1000, n_genes, n_cells, sparse = TRUE)
  probe_sce <- do.call(simulateNested, c(list(base = list(counts = probe, cell_type = cell_type)), args))
  truth <- metadata(sce)$truth
  stopifnot(identical(truth$trees, metadata(probe_sce)$truth$trees))
  t0 <- Sys.time()
  fit <- mrvi(sce, sample = "sample", batch = "site", labels = "cell_type", max_epochs = epochs,
              seed = seed, n_threads = 1, verbose = FALSE)
  fit_s <- as.numeric(difftime(Sys.time(), t0, units = "secs"))
  for (space in spaces) {
    t0 <- Sys.time()
    trees <- sampleTreeSupport(fit, groups = "labels", B = B, normalize = FALSE, space = space)
    support_s <- as.numeric(difftime(Sys.time(), t0, units = "secs"))
    normalised <- suppressWarnings(sampleTreeSupport(fit, groups = "labels", B = B, normalize = TRUE, space = space),
                                   classes = "mrvi_flat_tree")
    cat(sprintf("%s, seed %d, %s space: fit %.0f s (%d epochs), support B = %d in %.0f s\n", regime, seed, space, fit_s,
                nrow(fit@history), B, support_s))
    for (type in names(trees)) {
      phy <- trees[[type]]
      affected <- type %in% truth$affected
      true_clades <- if (affected) clades_of(truth$phylo[[type]]) else character()
      keys <- clades_of(phy)
      norm <- normalised[[type]]
      clade_rows[[length(clade_rows) + 1]] <- rbind(
        data.frame(regime = regime, seed = seed, space = space, distances = "raw", cell_type = type, affected = affected, clade = keys,
                   n_samples = lengths(strsplit(keys, ",")), support = phy$node.label[-1],
                   true_clade = keys %in% true_clades,
                   rf_to_truth = if (affected) treeDistance(phy, truth$phylo[[type]]) else NA_real_,
                   fit_seconds = fit_s, support_seconds = support_s),
        data.frame(regime = regime, seed = seed, space = space, distances = "normalized", cell_type = type, affected = affected,
                   clade = clades_of(norm), n_samples = lengths(strsplit(clades_of(norm), ",")),
                   support = norm$node.label[-1], true_clade = clades_of(norm) %in% true_clades,
                   rf_to_truth = if (affected) treeDistance(norm, truth$phylo[[type]]) else NA_real_,
                   fit_seconds = fit_s, support_seconds = NA_real_))
    }
  }
  # split genes on the true root split of each affected type, and on the same split in an unaffected type
  unaffected <- setdiff(levels(sce$cell_type), truth$affected)[1]
  for (type in if (split_genes) truth$affected) {
    root <- truth$phylo[[type]]
    root_node <- length(root$tip.label) + 1
    sides <- lapply(root$edge[root$edge[, 1] == root_node, 2], function(k) {
      if (k <= length(root$tip.label)) root$tip.label[k] else ape::extract.clade(root, k)$tip.label
    })
    in_type <- probe_sce$cell_type == type
    kept <- as.matrix(counts(probe_sce)[, in_type]) / 1000
    effect <- sapply(fit@samples, function(s) rowMeans(kept[, probe_sce$sample[in_type] == s, drop = FALSE]))
    path <- effect > 0.75  # the planted genes of each sample (kept) against halved ones
    planted <- (rowSums(path[, sides[[1]], drop = FALSE]) == length(sides[[1]]) &
                  rowSums(path[, sides[[2]], drop = FALSE]) == 0) |
      (rowSums(path[, sides[[2]], drop = FALSE]) == length(sides[[2]]) &
         rowSums(path[, sides[[1]], drop = FALSE]) == 0)
    planted <- rownames(sce)[planted]
    for (cells_of in c(type, unaffected)) {
      t0 <- Sys.time()
      g <- sampleSplitGenes(fit, sides[[1]], sides[[2]], cells = fit@cell_data$labels == cells_of, mc_samples = 10)
      seconds <- as.numeric(difftime(Sys.time(), t0, units = "secs"))
      positive <- g$gene %in% planted
      # the baseline: the same split's log2 fold change of pseudobulk log-CPM
      x <- counts(sce)[, sce$cell_type == cells_of]
      bulk <- sapply(fit@samples, function(s) Matrix::rowSums(x[, sce$sample[sce$cell_type == cells_of] == s]))
      log_cpm <- log2(t(t(bulk) / colSums(bulk)) * 1e6 + 1)
      pb_lfc <- (rowMeans(log_cpm[, sides[[1]]]) - rowMeans(log_cpm[, sides[[2]]]))[g$gene]
      gene_rows[[length(gene_rows) + 1]] <- data.frame(
        regime = regime, seed = seed, tree_of = type, cells = cells_of, cells_affected = cells_of == type,
        n_planted = length(planted), auc = auc(abs(g$lfc), positive), pseudobulk_auc = auc(abs(pb_lfc), positive),
        planted_in_top = sum(positive[seq_len(length(planted))]),
        median_abs_lfc_planted = stats::median(abs(g$lfc[positive])),
        max_abs_lfc = max(abs(g$lfc)), max_abs_z = max(abs(g$z)), seconds = seconds)
    }
  }
}
clades <- do.call(rbind, clade_rows)
genes <- do.call(rbind, gene_rows)
dir.create(dirname(out_file), showWarnings = FALSE, recursive = TRUE)
utils::write.csv(clades, out_file, row.names = FALSE)
if (split_genes) utils::write.csv(genes, genes_file, row.names = FALSE)

summ <- function(x) sprintf("n = %d, median %.2f, mean %.2f, share >= 0.9: %.2f", length(x), stats::median(x),
                            mean(x), mean(x >= 0.9))
for (regime in regimes) for (space in spaces) for (kind in c("raw", "normalized")) {
  cl <- clades[clades$regime == regime & clades$space == space & clades$distances == kind, ]
  cat("\n", regime, ", ", kind, " distances in ", space, " space: clade support (non-root clades of the point-estimate trees)\n", sep = "")
  cat("  true clades (affected types):  ", summ(cl$support[cl$true_clade]), "\n")
  cat("  false clades (affected types): ", summ(cl$support[cl$affected & !cl$true_clade]), "\n")
  cat("  clades of unaffected types:    ", summ(cl$support[!cl$affected]), "\n")
  aff <- cl[cl$affected, ]
  cat(sprintf("  AUC of support, true vs false clades of affected types: %.3f; mean RF to truth %.2f\n",
              auc(aff$support, aff$true_clade), mean(unique(aff[, c("seed", "cell_type", "rf_to_truth")])$rf_to_truth)))
}
if (split_genes) {
  cat("\nSplit genes of the true root split:\n")
  print(genes, digits = 3, row.names = FALSE)
}
