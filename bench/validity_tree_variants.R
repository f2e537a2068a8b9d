# Do other ways of building the tree from a fit recover the planted tree better? (issue 14)
#   Rscript bench/validity_tree_variants.R FIT_DIR [designs] [seeds]
# FIT_DIR holds the fits that bench/validity.R saves (MRVI_BENCH_FIT_DIR), named
# <design>_<seed>_attention.rds. For each affected type: the normalised RF of the
# tree and the Spearman correlation of the distances with the truth, for the
# default (mean expression-space distance, posterior means, average linkage),
# other linkages, squared distances, 10 posterior draws, latent space, and the
# distance between the samples' mean counterfactuals (z, or the centred log of
# the expression averaged over sites) instead of the mean distance.
# Writes bench/results/validity_tree_variants.csv.
suppressPackageStartupMessages({
  library(mrvi)
  library(SingleCellExperiment)
})
source("bench/helpers.R")
args <- commandArgs(TRUE)
fit_dir <- args[1]
designs <- strsplit(if (length(args) > 1) args[2] else "ultrametric", ",")[[1]]
seeds <- as.integer(strsplit(if (length(args) > 2) args[3] else "1,2,3,4,5", ",")[[1]])
rows <- list()
for (design in designs) for (seed in seeds) {
  sce <- validity_data(20000, design, seed)
  truth <- S4Vectors::metadata(sce)$truth
  fit <- readRDS(file.path(fit_dir, sprintf("%s_%d_attention.rds", design, seed)))$fit
  S <- fit@samples
  score <- function(variant, type, m, method = "average") {
    td <- truth$distances[[type]][S, S]
    hc <- stats::hclust(stats::as.dist(m[S, S]), method = method)
    rows[[length(rows) + 1]] <<- data.frame(design, seed, type, variant,
      rf = treeDistance(ape::as.phylo(hc), truth$phylo[[type]]),
      spearman = stats::cor(off_diagonal(m[S, S]), off_diagonal(td), method = "spearman"))
  }
  d0 <- sampleDistances(fit, groups = "cell_type", mc_samples = 0)
  d10 <- sampleDistances(fit, groups = "cell_type", mc_samples = 10)
  dl <- sampleDistances(fit, groups = "cell_type", mc_samples = 0, space = "latent")
  for (type in truth$affected) {
    score("default", type, d0[, , type])
    for (m in c("complete", "ward.D2", "mcquitty", "single")) score(paste("linkage", m), type, d0[, , type], m)
    score("squared distances", type, d0[, , type]^2)
    score("10 posterior draws", type, d10[, , type])
    score("latent space", type, dl[, , type])
    cells <- which(fit@cell_data$cell_type == type)
    z_mean <- apply(counterfactualLatent(fit, cells = cells, mc_samples = 0), c(2, 3), mean)
    score("latent, distance of mean z", type, as.matrix(stats::dist(z_mean)))
    profile <- vapply(S, function(s) {
      l <- log(counterfactualExpression(fit, cells, s, average = TRUE))
      rowMeans(sweep(l, 2, colMeans(l)))
    }, numeric(length(fit@genes)))
    score("expression, distance of mean log profile", type, as.matrix(stats::dist(t(profile))) / log(2))
  }
}
res <- do.call(rbind, rows)
print(res, digits = 3)
summary <- do.call(rbind, lapply(split(res, res$variant), function(r) {
  data.frame(variant = r$variant[1], mean_rf = mean(r$rf), trees_rf_le_0.3 = sum(r$rf <= 0.3),
             mean_spearman = mean(r$spearman), trees_spearman_ge_0.8 = sum(r$spearman >= 0.8))
}))
print(summary[order(summary$mean_rf), ], digits = 3, row.names = FALSE)
dir.create("bench/results", showWarnings = FALSE)
utils::write.csv(res, "bench/results/validity_tree_variants.csv", row.names = FALSE)
