# Block shuffling (counts on disk, issue #16) against the full shuffle, on the
# reduced realistic design of test-validity.R (4,000 cells x 600 genes, 16
# samples, a planted tree in type1) with the cells stored sorted by sample, the
# hard case for block shuffling (an atlas made by concatenating samples). Blocks
# of 125 cells (half a sample), 4 blocks per buffer: a buffer holds 2-4 of the 16
# samples, as a buffer of 8 blocks of 6,250 cells holds 8-16 of 200 samples of an
# atlas of 2 M cells sorted by sample. Default model otherwise, 1 thread.
#   MRVI_BENCH_SEEDS=1,2,3,4,5 R_LIBS=$PWD/.Rlib Rscript bench/block_shuffle.R
# Writes bench/results/block_shuffle.csv: per seed and shuffle, epochs, best
# validation ELBO (held-out cells in the full shuffle, held-out blocks in the
# block shuffle: other cells), and the sample structure found in type1:
# contrast to the unaffected types, Spearman with the true distances, normalised RF.
suppressMessages({
  library(mrvi)
  library(SingleCellExperiment)
})
source("bench/helpers.R")
seeds <- as.integer(strsplit(Sys.getenv("MRVI_BENCH_SEEDS", "1,2,3,4,5"), ",")[[1]])
out <- Sys.getenv("MRVI_BENCH_OUT", "bench/results/block_shuffle.csv")
cpu <- cpu_info()
off <- function(m) m[upper.tri(m)]
rows <- list()
for (seed in seeds) {
  sce <- simulateNested(4000, 600, n_samples = 16, n_sites = 2, n_cell_types = 3, n_affected = 1,
                        genes_per_edge = 10, edge_lengths = "ultrametric", expression = "skewed",
                        library_size = 3000, seed = seed)
  sce <- sce[, order(sce$sample)]
  truth <- S4Vectors::metadata(sce)$truth
  for (shuffle in c("cells", "blocks")) {
    t <- system.time(fit <- mrvi(sce, sample = "sample", batch = "site", seed = seed, n_threads = 1,
                                 verbose = FALSE, block_cells = if (shuffle == "blocks") 125))
    d <- sampleDistances(fit, groups = "cell_type", mc_samples = 0)
    mean_d <- apply(d, 3, function(m) mean(off(m)))
    true_d <- truth$distances$type1[dimnames(d)[[1]], dimnames(d)[[2]]]
    h <- fit@history
    rows[[length(rows) + 1]] <- data.frame(
      seed = seed, shuffle = shuffle, epochs = nrow(h), best_epoch = fit@config$best_epoch,
      validation_elbo = h$validation_elbo[fit@config$best_epoch],
      contrast = mean_d[["type1"]] / max(mean_d[c("type2", "type3")]),
      spearman = stats::cor(off(d[, , "type1"]), off(true_d), method = "spearman"),
      rf = treeDistance(sampleHclust(d, "type1"), truth$phylo$type1),
      seconds = t[["elapsed"]], cpu = cpu$model, date = as.character(Sys.Date()))
    print(rows[[length(rows)]])
  }
}
res <- do.call(rbind, rows)
if (file.exists(out)) res <- rbind(read.csv(out)[!read.csv(out)$seed %in% seeds, names(res)], res)
write.csv(res, out, row.names = FALSE)
