# Guided per-cell tests against a minimum effect (issue 14): power and FDR of
# cellAssociation()'s default (expression space, raw distances, min_effect = 0.5
# log2 units) against the previous default (latent space, normalised distances,
# Mantel's null of no association), in the same run on the same fits.
#   R_LIBS=$PWD/.Rlib Rscript bench/guided_min_effect.R
# The paper's covariates design (section 4.1; simulateNested(design = "covariates"):
# three binary sample covariates of strength 3, 2 and 1.5 in 2 of 4 cell types),
# 3,000 cells x 400 genes, 16 samples in 2 sites, default mrvi() fits, seeds 1-5
# (MRVI_BENCH_SEEDS). Per fit, covariate and test: TPR in the affected types, FDR
# among flagged cells, and the median `effect` in affected and unaffected cells.
# Also the default space with other minimum effects (0, 0.25, 1, 2), to show how
# the choice trades power for FDR. MRVI_BENCH_FIT_DIR: a folder where fits are
# saved (and read back if present). Writes bench/results/guided_min_effect.csv.
suppressMessages(library(mrvi))
seeds <- as.integer(strsplit(Sys.getenv("MRVI_BENCH_SEEDS", "1,2,3,4,5"), ",")[[1]])
out_file <- "bench/results/guided_min_effect.csv"
cpu <- sub(".*: *", "", grep("Model name", system("lscpu", intern = TRUE), value = TRUE)[1])
fit_dir <- Sys.getenv("MRVI_BENCH_FIT_DIR")
tests <- c(list(default = list(), previous = list(space = "latent", normalize = TRUE)),
           lapply(stats::setNames(nm = c(0, 0.25, 1, 2)), function(m) list(min_effect = m)))
rows <- list()
for (seed in seeds) {
  sce <- simulateNested(3000, 400, n_samples = 16, n_sites = 2, n_cell_types = 4, n_affected = 2,
                        design = "covariates", seed = seed)
  truth <- S4Vectors::metadata(sce)$truth
  saved <- if (nzchar(fit_dir)) file.path(fit_dir, sprintf("covariates_%d.rds", seed)) else ""
  if (nzchar(saved) && file.exists(saved)) {
    fit <- readRDS(saved)
  } else {
    fit <- mrvi(sce, sample = "sample", batch = "site", seed = seed, verbose = FALSE)
    if (nzchar(saved)) saveRDS(fit, saved)
  }
  affected <- fit@cell_data$cell_type %in% truth$affected
  for (cov in c("cov1", "cov2", "cov3")) {
    for (name in names(tests)) {
      res <- do.call(cellAssociation, c(list(fit, cov), tests[[name]]))
      flagged <- res$q_value < 0.05
      rows[[length(rows) + 1]] <- data.frame(
        seed, epochs = nrow(fit@history), covariate = cov, strength = truth$effects[[cov]]$strength,
        test = if (name %in% names(tests)[1:2]) name else "expression", min_effect = S4Vectors::metadata(res)$min_effect,
        tpr = mean(flagged[affected]), fdr = sum(flagged & !affected) / max(1, sum(flagged)),
        effect_affected = median(res$effect[affected]), effect_unaffected = median(res$effect[!affected]), cpu)
      print(rows[[length(rows)]][, -ncol(rows[[1]])], digits = 3, row.names = FALSE)
    }
  }
}
utils::write.csv(do.call(rbind, rows), out_file, row.names = FALSE)
