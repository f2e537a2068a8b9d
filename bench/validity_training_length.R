# How the sample distances change with training length (issue 14): one fit of
# bench/validity.R's ultrametric design (20,000 cells x 2,000 genes, 32 samples),
# default model without early stopping, scored after 60, 100, 150, 200, 300 and 400
# epochs (a checkpoint carries the run on), in latent and in expression space.
#   R_LIBS=$PWD/.Rlib Rscript bench/validity_training_length.R <seed>
# Appends to bench/results/validity_training_length.csv. With early stopping off the
# training is the same whatever the validation pass draws.
suppressMessages({
  library(mrvi)
  library(SingleCellExperiment)
})
seed <- as.integer(commandArgs(TRUE)[1])
out_file <- "bench/results/validity_training_length.csv"
sce <- simulateNested(20000, 2000, n_samples = 32, n_sites = 2, n_cell_types = 5, n_affected = 2,
                      genes_per_edge = 10, edge_lengths = "ultrametric", expression = "skewed",
                      library_size = 3000, seed = seed)
truth <- S4Vectors::metadata(sce)$truth
off_diagonal <- function(m) m[upper.tri(m)]
# contrast, and Spearman and RF of both affected types, of distances d [S, S, types]
score <- function(d, space) {
  types <- dimnames(d)[[3]]
  mean_d <- vapply(types, function(t) mean(off_diagonal(d[, , t]), na.rm = TRUE), numeric(1))
  out <- c(contrast = mean(mean_d[truth$affected]) / mean(mean_d[setdiff(types, truth$affected)]))
  for (k in 1:2) {
    t <- truth$affected[k]
    true_d <- truth$distances[[t]][dimnames(d)[[1]], dimnames(d)[[2]]]
    out[paste0("spearman", k)] <- stats::cor(off_diagonal(d[, , t]), off_diagonal(true_d), method = "spearman")
    out[paste0("rf", k)] <- treeDistance(sampleHclust(d, t), truth$phylo[[t]])
  }
  stats::setNames(round(out, 3), paste(space, names(out), sep = "_"))
}
checkpoint <- tempfile(fileext = ".pt")
for (epochs in c(60, 100, 150, 200, 300, 400)) {
  fit <- mrvi(sce, sample = "sample", batch = "site", seed = seed, verbose = FALSE, n_threads = 1,
              max_epochs = epochs, early_stopping = FALSE, checkpoint = checkpoint)
  h <- fit@history
  row <- data.frame(seed, epoch = epochs, validation_elbo = tail(h$validation_elbo, 1),
                    best_epoch_so_far = which.max(h$validation_elbo),
                    t(score(sampleDistances(fit, groups = "cell_type", mc_samples = 0), "latent")),
                    t(score(sampleDistances(fit, groups = "cell_type", mc_samples = 0, space = "expression"),
                            "expression")))
  print(row)
  utils::write.table(row, out_file, sep = ",", append = file.exists(out_file), col.names = !file.exists(out_file),
                     row.names = FALSE)
}
unlink(checkpoint)
