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
source("bench/helpers.R")
seed <- as.integer(commandArgs(TRUE)[1])
out_file <- "bench/results/validity_training_length.csv"
sce <- validity_data(20000, "ultrametric", seed)
truth <- S4Vectors::metadata(sce)$truth
# score_distances() (bench/helpers.R), its columns prefixed by the space
score <- function(d, space) {
  s <- round(score_distances(d, truth), 3)
  stats::setNames(s, paste(space, names(s), sep = "_"))
}
checkpoint <- tempfile(fileext = ".pt")
for (epochs in c(60, 100, 150, 200, 300, 400)) {
  fit <- mrvi(sce, sample = "sample", batch = "site", seed = seed, verbose = FALSE, n_threads = 1,
              max_epochs = epochs, early_stopping = FALSE, checkpoint = checkpoint)
  h <- fit@history
  row <- data.frame(seed, epoch = epochs, validation_elbo = tail(h$validation_elbo, 1),
                    best_epoch_so_far = which.max(h$validation_elbo),
                    score(sampleDistances(fit, groups = "cell_type", mc_samples = 0), "latent"),
                    score(sampleDistances(fit, groups = "cell_type", mc_samples = 0, space = "expression"),
                          "expression"))
  print(row)
  utils::write.table(row, out_file, sep = ",", append = file.exists(out_file), col.names = !file.exists(out_file),
                     row.names = FALSE)
}
unlink(checkpoint)
