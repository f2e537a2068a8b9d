# How much of the ultrametric trees' RF error (issue 14) is the optimiser's noise?
# K default fits of each dataset (MRVI_BENCH_FITS, default 2), with fit seeds s, s + 100,
# ..., scored alone and with their posterior-mean distances D(C) averaged over pairs and
# over all K (if the errors were fit-to-fit noise, an average would lose part of them; a
# bias of the model it would keep).
#   R_LIBS=$PWD/.Rlib Rscript bench/validity_ensemble.R [SEEDS]   (default 1:5)
# Data: bench/validity.R's ultrametric design (validity_data() in bench/helpers.R),
# MRVI_BENCH_CELLS cells (default 20000), simulated once per dataset. A dataset's fits
# run two at a time, one thread each. Writes bench/results/validity_ensemble.csv (per
# dataset: each fit, each pair's average and the average of all; `kind` single / pair /
# all) and prints the means per kind.
source("bench/helpers.R")
args <- commandArgs(trailingOnly = TRUE)
seeds <- if (length(args)) eval(parse(text = args[1])) else 1:5
n_cells <- as.integer(Sys.getenv("MRVI_BENCH_CELLS", "20000"))
offsets <- 100L * seq_len(as.integer(Sys.getenv("MRVI_BENCH_FITS", "2"))) - 100L

# A fit of the saved dataset with fit seed `seed`, its posterior-mean group distances
# written to `out`: run_measurement() in a forked child, so that two run side by side.
fit_job <- function(data_file, seed, out) {
  parallel::mcparallel(run_measurement(sprintf('options(mrvi.threads = 1L)
    suppressMessages(library(SingleCellExperiment))
    fit <- mrvi(readRDS("%s"), sample = "sample", batch = "site", seed = %d, verbose = FALSE)
    saveRDS(sampleDistances(fit, groups = "cell_type", mc_samples = 0), "%s")
    result(epochs = nrow(fit@history))', data_file, seed, out)))
}

rows <- list()
for (s in seeds) {
  # each dataset simulated once, read by its fits
  sce <- validity_data(n_cells, "ultrametric", s)
  truth <- S4Vectors::metadata(sce)$truth
  data_file <- tempfile(fileext = ".rds")
  saveRDS(sce, data_file)
  d <- list()
  for (pair in split(offsets, (seq_along(offsets) - 1) %/% 2)) {
    outs <- replicate(length(pair), tempfile(fileext = ".rds"))
    done <- parallel::mccollect(Map(fit_job, data_file, s + pair, outs))
    failed <- vapply(done, inherits, logical(1), "try-error")
    if (any(failed)) stop(done[[which(failed)[1]]])
    d <- c(d, lapply(outs, readRDS))
  }
  unlink(data_file)
  # the mean of the fits `idx`' distances, with the first's dimnames and class
  average <- function(idx) {
    a <- d[[idx[1]]]
    a[] <- Reduce(`+`, lapply(d[idx], unclass)) / length(idx)
    a
  }
  sets <- list(single = as.list(seq_along(d)), pair = if (length(d) > 2) combn(length(d), 2, simplify = FALSE),
               all = list(seq_along(d)))
  for (kind in names(sets)) for (idx in sets[[kind]]) {
    rows[[length(rows) + 1]] <- data.frame(seed = s, kind = kind, fit_seeds = paste(s + offsets[idx], collapse = "+"),
                                           score_distances(average(idx), truth))
  }
}
res <- do.call(rbind, rows)
print(res, digits = 3, row.names = FALSE)
cat("means over the datasets:\n")
print(aggregate(cbind(rf_type1, rf_type2, spearman_type1, spearman_type2) ~ kind, res, mean), digits = 3, row.names = FALSE)
res$cpu <- cpu_info()$model
dir.create("bench/results", showWarnings = FALSE)
write.csv(res, "bench/results/validity_ensemble.csv", row.names = FALSE)
