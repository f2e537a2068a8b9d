# Guided per-cell tests against a minimum effect (issue 14): power and FDR of
# cellAssociation()'s default (expression space, raw distances, min_effect = 0.5
# log2 units) against the previous default (latent space, normalised distances,
# Mantel's null of no association) and against other minimum effects (0, 0.25, 1,
# 2), in the same run on the same fits.
#   R_LIBS=$PWD/.Rlib Rscript bench/guided_min_effect.R [covariates|validity]
# "covariates" (default): the paper's covariates design (section 4.1;
# simulateNested(design = "covariates"): three binary sample covariates of strength
# 3, 2 and 1.5 in 2 of 4 cell types), 3,000 cells x 400 genes, 16 samples in 2
# sites, default mrvi() fits, seeds 1-5 (MRVI_BENCH_SEEDS); each covariate is tested.
# "validity": the saved default fits of bench/validity.R (MRVI_BENCH_FIT_DIR must
# hold <design>_<seed>_attention.rds, equal and ultrametric, seeds 1-3); the
# covariate is the root split of type1's tree, the affected cells type1's.
# Per fit, covariate and test: TPR in the affected cells, FDR among flagged cells,
# and the median `effect` in affected and other cells. MRVI_BENCH_FIT_DIR: where
# fits are saved (and read back if present). Writes
# bench/results/guided_min_effect[_validity].csv.
suppressMessages(library(mrvi))
mode <- commandArgs(TRUE)[1]
if (is.na(mode)) mode <- "covariates"
seeds <- as.integer(strsplit(Sys.getenv("MRVI_BENCH_SEEDS", if (mode == "validity") "1,2,3" else "1,2,3,4,5"), ",")[[1]])
fit_dir <- Sys.getenv("MRVI_BENCH_FIT_DIR")
out_file <- sprintf("bench/results/guided_min_effect%s.csv", if (mode == "validity") "_validity" else "")
cpu <- sub(".*: *", "", grep("Model name", system("lscpu", intern = TRUE), value = TRUE)[1])
tests <- c(list(default = list(), previous = list(space = "latent", normalize = TRUE)),
           lapply(stats::setNames(nm = c(0, 0.25, 1, 2)), function(m) list(min_effect = m)))

# rows for one fit and covariate: every test
score <- function(fit, covariate, affected, label) {
  lapply(names(tests), function(name) {
    res <- do.call(cellAssociation, c(list(fit, covariate), tests[[name]]))
    flagged <- res$q_value < 0.05
    row <- data.frame(label, epochs = nrow(fit@history),
      test = if (name %in% c("default", "previous")) name else "expression",
      min_effect = S4Vectors::metadata(res)$min_effect,
      tpr = mean(flagged[affected]), fdr = sum(flagged & !affected) / max(1, sum(flagged)),
      effect_affected = median(res$effect[affected]), effect_other = median(res$effect[!affected]), cpu)
    print(row[, names(row) != "cpu"], digits = 3, row.names = FALSE)
    row
  })
}

rows <- list()
if (mode == "validity") {
  suppressMessages(library(SingleCellExperiment))
  source("bench/helpers.R")
  for (design in c("equal", "ultrametric")) for (seed in seeds) {
    sce <- validity_data(20000, design, seed)
    truth <- S4Vectors::metadata(sce)$truth
    tree <- truth$phylo[[truth$affected[1]]]
    left <- tree$tip.label[ape::prop.part(tree)[[2]]]
    fit <- readRDS(file.path(fit_dir, sprintf("%s_%d_attention.rds", design, seed)))$fit
    split <- stats::setNames(ifelse(fit@samples %in% left, "left", "right"), fit@samples)
    affected <- fit@cell_data$cell_type == truth$affected[1]
    rows <- c(rows, score(fit, split, affected, data.frame(design, seed, covariate = "root split", strength = NA)))
  }
} else {
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
      rows <- c(rows, score(fit, cov, affected,
                            data.frame(design = "covariates", seed, covariate = cov, strength = truth$effects[[cov]]$strength)))
    }
  }
}
utils::write.csv(do.call(rbind, rows), out_file, row.names = FALSE)
