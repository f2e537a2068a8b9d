# Quick validity diagnostic (issue 14): one fit of bench/validity.R's realistic data,
# scored on the sample distances only (no guided tests or DE), plus where the sample
# structure went: the Spearman correlation of the true tree distance with distances
# between the samples' centroids of u (the sample-free state should carry none).
#   R_LIBS=$PWD/.Rlib Rscript bench/validity_diag.R FLAVOUR TAG ['list(extra mrvi() arguments)']
# Environment: SEED (1), DESIGN ("equal" or "ultrametric"). Appends a row to
# bench/results/validity_diag.csv. Fits use n_threads = 1 (side-by-side runs).
suppressMessages({library(mrvi); library(SingleCellExperiment)})
source("bench/helpers.R")
a <- commandArgs(TRUE); flavour <- a[1]; tag <- a[2]
extra <- if (length(a) > 2) eval(parse(text = a[3])) else list()
seed <- as.integer(Sys.getenv("SEED", "1")); design <- Sys.getenv("DESIGN", "equal")
sce <- validity_data(20000, design, seed)
truth <- S4Vectors::metadata(sce)$truth
t0 <- proc.time()[[3]]
fit <- do.call(mrvi, c(list(sce, sample = "sample", batch = "site", flavour = flavour, seed = seed,
                            verbose = FALSE, n_threads = 1), extra))
secs <- proc.time()[[3]] - t0
d <- sampleDistances(fit, groups = "cell_type", mc_samples = 0)
u <- mrviLatent(fit)
ct <- fit@cell_data$cell_type; smp <- as.character(fit@cell_data$sample)
# Spearman of the true distance with distances between the samples' centroids of u
u_centroids <- sapply(truth$affected, function(t) {
  td <- truth$distances[[t]][dimnames(d)[[1]], dimnames(d)[[2]]]
  cen <- rowsum(u[ct == t, ], smp[ct == t]) / as.vector(table(smp[ct == t]))
  ud <- as.matrix(dist(cen))[rownames(td), colnames(td)]
  cor(off_diagonal(ud), off_diagonal(td), method = "spearman")
})
cpu <- sub(".*: *", "", grep("Model name", system("lscpu", intern = TRUE), value = TRUE)[1])
row <- data.frame(tag, flavour, design, seed, epochs = nrow(fit@history), best_epoch = fit@config$best_epoch,
                  train_seconds = round(secs), score_distances(d, truth),
                  spearman_u_centroids_type1 = u_centroids[[1]],
                  spearman_u_centroids_type2 = u_centroids[[2]],
                  validation_elbo = tail(fit@history$validation_elbo, 1), cpu)
print(row[, -ncol(row)], digits = 3)
out <- "bench/results/validity_diag.csv"
old <- if (file.exists(out)) utils::read.csv(out) else NULL
utils::write.csv(rbind(old, row), out, row.names = FALSE)
