# How much sample structure does the data of bench/validity.R hold? (issue 14)
#   R_LIBS=$PWD/.Rlib Rscript bench/validity_ceiling.R
# Scores, against the true tree distance of each affected cell type, pseudobulk
# distances that know more than any method can: log-CPM of the type's cells per
# sample, the site effect estimated from the unaffected types (the same genes in
# other cells) and removed, restricted to the planted genes, and each gene weighted
# by its precision (sqrt of its mean pseudobulk count, the inverse Poisson sd of
# its log). Also the plain pseudobulk (all genes, nothing removed) as the floor.
# Spearman of the off-diagonal distances with the truth and the normalised
# Robinson-Foulds distance of the average-linkage tree, as bench/validity.R scores MrVI.
# No fitting: ~20 s per dataset. Settings (environment): MRVI_BENCH_SEEDS (1,2,3),
# MRVI_BENCH_DESIGNS ("equal,ultrametric"). Writes bench/results/validity_ceiling.csv.
suppressMessages({
  library(mrvi)
  library(SingleCellExperiment)
})
source("bench/helpers.R")
env_list <- function(name, default) strsplit(Sys.getenv(name, default), ",")[[1]]
seeds <- as.integer(env_list("MRVI_BENCH_SEEDS", "1,2,3"))
designs <- env_list("MRVI_BENCH_DESIGNS", "equal,ultrametric")

# samples x genes log-CPM of the pseudobulk of `keep` cells, and its counts
pseudobulk <- function(sce, keep, samples) {
  counts <- counts(sce)[, keep]
  sample <- as.character(sce$sample[keep])
  pb <- vapply(samples, function(s) Matrix::rowSums(counts[, sample == s, drop = FALSE]), numeric(nrow(sce)))
  list(log_cpm = log1p(t(t(pb) / colSums(pb)) * 1e6), counts = pb)
}

rows <- list()
for (design in designs) {
  for (seed in seeds) {
    sce <- validity_data(20000, design, seed)
    truth <- S4Vectors::metadata(sce)$truth
    samples <- levels(factor(sce$sample))
    site <- tapply(as.character(sce$site), as.character(sce$sample), `[`, 1)[samples]
    other <- pseudobulk(sce, !sce$cell_type %in% truth$affected, samples)$log_cpm
    site_effect <- vapply(stats::setNames(nm = unique(unname(site))), function(s) rowMeans(other[, site == s, drop = FALSE]) - rowMeans(other),
                          numeric(nrow(sce)))
    for (type in truth$affected) {
      pb <- pseudobulk(sce, sce$cell_type == type, samples)
      corrected <- pb$log_cpm - site_effect[, site]
      planted <- rownames(sce) %in% unique(unlist(lapply(truth$edges[[type]], `[[`, "genes")))
      true_d <- truth$distances[[type]][samples, samples]
      score <- function(values, baseline) {
        d <- as.matrix(stats::dist(t(values)))
        data.frame(design, seed, type, baseline,
                   spearman = stats::cor(off_diagonal(d), off_diagonal(true_d), method = "spearman"),
                   rf = treeDistance(stats::hclust(stats::as.dist(d), "average"), truth$phylo[[type]]))
      }
      rows[[length(rows) + 1]] <- rbind(
        score(pb$log_cpm, "pseudobulk, all genes"),
        score(corrected[planted, ], "oracle: planted genes, site removed"),
        score((corrected * sqrt(rowMeans(pb$counts)))[planted, ], "oracle: planted genes, site removed, precision-weighted"))
    }
  }
}
res <- do.call(rbind, rows)
print(res, digits = 3)
utils::write.csv(res, "bench/results/validity_ceiling.csv", row.names = FALSE)
