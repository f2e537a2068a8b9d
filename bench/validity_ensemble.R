# How much of the ultrametric trees' RF error (issue 14) is the optimiser's noise?
# Two default fits of each dataset, with fit seeds s and s + 100, scored alone and with
# their posterior-mean distances D(C) averaged (if the errors were fit-to-fit noise,
# the average would lose part of them; a bias of the model it would keep).
#   R_LIBS=$PWD/.Rlib Rscript bench/validity_ensemble.R [SEEDS]   (default 1:5)
# Data: bench/validity.R's ultrametric design (validity_data() in bench/helpers.R),
# MRVI_BENCH_CELLS cells (default 20000). The two fits of a dataset run side by side,
# one thread each. Writes bench/results/validity_ensemble.csv (per dataset: each fit and
# the average) and prints the means.
source("bench/helpers.R")
args <- commandArgs(trailingOnly = TRUE)
seeds <- if (length(args)) eval(parse(text = args[1])) else 1:5
n_cells <- as.integer(Sys.getenv("MRVI_BENCH_CELLS", "20000"))
offsets <- c(0L, 100L)

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
  jobs <- lapply(offsets, function(o) fit_distances(s, o))
  parallel::mccollect(lapply(jobs, `[[`, "process"))
  d <- lapply(jobs, function(j) readRDS(j$out))
  average <- d[[1]]
  average[] <- (unclass(d[[1]]) + unclass(d[[2]])) / 2
  truth <- S4Vectors::metadata(validity_data(n_cells, "ultrametric", s))$truth
  fits <- list("seed s" = d[[1]], "seed s+100" = d[[2]], average = average)
  for (what in names(fits)) rows[[length(rows) + 1]] <- data.frame(seed = s, fit = what, score_distances(fits[[what]], truth))
}
res <- do.call(rbind, rows)
print(res, digits = 3, row.names = FALSE)
cat("means over the datasets:\n")
print(aggregate(cbind(rf_type1, rf_type2, spearman_type1, spearman_type2) ~ fit, res, mean), digits = 3, row.names = FALSE)
res$cpu <- cpu_info()$model
dir.create("bench/results", showWarnings = FALSE)
write.csv(res, "bench/results/validity_ensemble.csv", row.names = FALSE)
