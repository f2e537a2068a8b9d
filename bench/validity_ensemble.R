# How much of the ultrametric trees' RF error (issue 14) is the optimiser's noise?
# K default fits of each dataset (MRVI_BENCH_FITS, default 2), with fit seeds s, s + 100,
# ..., scored alone and with their posterior-mean distances D(C) averaged over pairs and
# over all K (if the errors were fit-to-fit noise, an average would lose part of them; a
# bias of the model it would keep).
#   R_LIBS=$PWD/.Rlib Rscript bench/validity_ensemble.R [SEEDS]   (default 1:5)
# Data: bench/validity.R's ultrametric design (validity_data() in bench/helpers.R),
# MRVI_BENCH_CELLS cells (default 20000). A dataset's fits run two at a time, one
# thread each. Writes bench/results/validity_ensemble.csv (per dataset: each fit, each
# pair's average and the average of all; `kind` single / pair / all) and prints the
# means per kind.
source("bench/helpers.R")
args <- commandArgs(trailingOnly = TRUE)
seeds <- if (length(args)) eval(parse(text = args[1])) else 1:5
n_cells <- as.integer(Sys.getenv("MRVI_BENCH_CELLS", "20000"))
offsets <- 100L * seq_len(as.integer(Sys.getenv("MRVI_BENCH_FITS", "2"))) - 100L

# one fit's posterior-mean group distances, in its own R process with one thread
fit_distances <- function(seed, offset) {
  out <- tempfile(fileext = ".rds")
  code <- sprintf('suppressMessages(library(mrvi)); source("bench/helpers.R"); options(mrvi.threads = 1L)
    sce <- validity_data(%d, "ultrametric", %d)
    fit <- mrvi(sce, sample = "sample", batch = "site", seed = %d, verbose = FALSE)
    saveRDS(sampleDistances(fit, groups = "cell_type", mc_samples = 0), "%s")', n_cells, seed, seed + offset, out)
  list(out = out, process = parallel::mcparallel(system2(file.path(R.home("bin"), "Rscript"), c("-e", shQuote(code)))))
}

rows <- list()
for (s in seeds) {
  d <- list()
  for (pair in split(offsets, (seq_along(offsets) - 1) %/% 2)) {
    jobs <- lapply(pair, function(o) fit_distances(s, o))
    parallel::mccollect(lapply(jobs, `[[`, "process"))
    d <- c(d, lapply(jobs, function(j) readRDS(j$out)))
  }
  # the mean of the fits `idx`' distances, with the first's dimnames and class
  average <- function(idx) {
    a <- d[[idx[1]]]
    a[] <- Reduce(`+`, lapply(d[idx], unclass)) / length(idx)
    a
  }
  truth <- S4Vectors::metadata(validity_data(n_cells, "ultrametric", s))$truth
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
