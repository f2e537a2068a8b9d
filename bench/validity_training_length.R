# How the sample distances change with training length (issue 14): one fit of
# bench/validity.R's data (20,000 cells x 2,000 genes, 32 samples; design
# "ultrametric", the default, or "equal"), default model without early stopping,
# scored after 60, 100, 150, 200, 300 and 400 epochs (MRVI_BENCH_EPOCHS, comma-separated,
# overrides; a checkpoint carries the run on), in latent and in expression space.
#   R_LIBS=$PWD/.Rlib Rscript bench/validity_training_length.R <seed> [design]
# Appends to bench/results/validity_training_length.csv, and writes the run's
# per-epoch validation ELBO to bench/results/validity_training_history.csv (so that
# stopping rules can be replayed on it). With early stopping off the training is the
# same whatever the validation pass draws, and whatever rule would have stopped it.
suppressMessages({
  library(mrvi)
  library(SingleCellExperiment)
})
source("bench/helpers.R")
seed <- as.integer(commandArgs(TRUE)[1])
design <- if (length(commandArgs(TRUE)) > 1) commandArgs(TRUE)[2] else "ultrametric"
epoch_marks <- as.integer(strsplit(Sys.getenv("MRVI_BENCH_EPOCHS", "60,100,150,200,300,400"), ",")[[1]])
out_file <- "bench/results/validity_training_length.csv"
history_file <- "bench/results/validity_training_history.csv"
append_csv <- function(row, file) {
  utils::write.table(row, file, sep = ",", append = file.exists(file), col.names = !file.exists(file),
                     row.names = FALSE)
}
sce <- validity_data(20000, design, seed)
truth <- S4Vectors::metadata(sce)$truth
# score_distances() (bench/helpers.R), its columns prefixed by the space
score <- function(d, space) {
  s <- round(score_distances(d, truth), 3)
  stats::setNames(s, paste(space, names(s), sep = "_"))
}
checkpoint <- tempfile(fileext = ".pt")
for (epochs in epoch_marks) {
  fit <- mrvi(sce, sample = "sample", batch = "site", seed = seed, verbose = FALSE, n_threads = 1,
              max_epochs = epochs, early_stopping = FALSE, checkpoint = checkpoint)
  h <- fit@history
  row <- data.frame(design, seed, epoch = epochs, validation_elbo = tail(h$validation_elbo, 1),
                    best_epoch_so_far = which.max(h$validation_elbo),
                    score(sampleDistances(fit, groups = "cell_type", mc_samples = 0, space = "latent"), "latent"),
                    score(sampleDistances(fit, groups = "cell_type", mc_samples = 0, space = "expression"),
                          "expression"))
  print(row)
  append_csv(row, out_file)
}
append_csv(data.frame(design, seed, epoch = seq_len(nrow(h)), train_elbo = h$train_elbo,
                      validation_elbo = h$validation_elbo), history_file)
unlink(checkpoint)
