# Validity benchmark (issue 14): does the default model find sample structure in
# data as hard as real studies?
#   R_LIBS=$PWD/.Rlib Rscript bench/validity.R
# The paper's Supplement B.2 at realistic scale: 20,000 cells x 2,000 genes, skewed
# expression (most genes low), ~3,000 UMI per cell, 5 cell types of which 2 carry
# their own random tree over 32 samples, 10 genes per tree edge (doubled on the
# root-to-leaf path), 2 sites with gene-wise effects. Two edge designs: "equal"
# (10 genes per edge) and "ultrametric" (genes proportional to edge length; average
# linkage on the true distance recovers the tree exactly).
# Per fit: mean D(C) affected / unaffected, Spearman of D(C) with the true distance,
# normalised Robinson-Foulds distance of the average-linkage tree, guided per-cell
# tests (TPR in type1, FDR) and DE (TPR in type1, share of unaffected cells flagged)
# for the root split of type1's tree, epochs and seconds.
# Settings (environment): MRVI_BENCH_SEEDS (default 1:3), MRVI_BENCH_FLAVOURS
# ("linear,attention"), MRVI_BENCH_DESIGNS ("equal,ultrametric"), MRVI_BENCH_CELLS
# (20000), MRVI_BENCH_ARGS (extra mrvi() arguments as R code, e.g. "list(n_latent = 30)"),
# MRVI_BENCH_TAG (a label for the rows), MRVI_BENCH_OUT (CSV file), MRVI_BENCH_FIT_DIR
# (a folder: each fit is saved there as <design>_<seed>_<flavour>.rds, and a fit found
# there is scored without refitting, its training seconds those recorded at the time),
# MRVI_BENCH_SPACE (the space of the distances scored: "expression", the package's
# default since session 22, or "latent"; see ?sampleDistances), MRVI_BENCH_TEST_SPACE
# (the guided per-cell tests: "expression", cellAssociation()'s defaults since session
# 23 (raw distances, min_effect 0.5 log2 units), or "latent" (normalised distances, no
# minimum effect: its defaults before)), MRVI_BENCH_SCORE ("all", or "distances" to
# skip the guided tests and DE, whose columns are then NA). Flavour "scvi-tools":
# scvi-tools' MRVI with its defaults (site as its batch_key; posterior-mean
# distances; no guided tests or DE), see scvi_tools_group_distances() in bench/helpers.R.
suppressMessages({
  library(mrvi)
  library(SingleCellExperiment)
})
source("bench/helpers.R")
env_list <- function(name, default) strsplit(Sys.getenv(name, default), ",")[[1]]
seeds <- as.integer(env_list("MRVI_BENCH_SEEDS", "1,2,3"))
flavours <- env_list("MRVI_BENCH_FLAVOURS", "linear,attention")
designs <- env_list("MRVI_BENCH_DESIGNS", "equal,ultrametric")
n_cells <- as.integer(Sys.getenv("MRVI_BENCH_CELLS", "20000"))
extra <- eval(parse(text = Sys.getenv("MRVI_BENCH_ARGS", "list()")))
tag <- Sys.getenv("MRVI_BENCH_TAG", "default")
out_file <- Sys.getenv("MRVI_BENCH_OUT", "bench/results/validity.csv")
fit_dir <- Sys.getenv("MRVI_BENCH_FIT_DIR")
space <- Sys.getenv("MRVI_BENCH_SPACE", "expression")
test_space <- Sys.getenv("MRVI_BENCH_TEST_SPACE", "expression")
score_tests <- Sys.getenv("MRVI_BENCH_SCORE", "all") == "all"
dir.create(dirname(out_file), showWarnings = FALSE, recursive = TRUE)
cpu <- sub(".*: *", "", grep("Model name", system("lscpu", intern = TRUE), value = TRUE)[1])

# score_distances() of the fit's posterior-mean distances, then the guided tests and DE
score_fit <- function(fit, sce, truth) {
  d <- sampleDistances(fit, groups = "cell_type", mc_samples = 0, space = space)
  # the root split of type1's tree as a sample covariate
  type1 <- truth$affected[1]
  affected_cells <- fit@cell_data$cell_type == type1
  other_cells <- !fit@cell_data$cell_type %in% truth$affected
  # the covariate per fitted sample (a saved fit's sample table may lack it)
  split <- tapply(as.character(sce$root_split), as.character(sce$sample), `[`, 1)[fit@samples]
  flagged <- de_flagged <- rep(NA, nrow(fit@u_mean))
  if (score_tests) {
    guided <- if (test_space == "latent") cellAssociation(fit, split, space = "latent", normalize = TRUE)
              else cellAssociation(fit, split)
    flagged <- guided$q_value < 0.05
    de <- differentialExpression(fit, data.frame(sample = fit@samples, root_split = split))
    de_flagged <- de$q_value < 0.05
  }
  data.frame(space = space, score_distances(d, truth),
    guided_tpr = mean(flagged[affected_cells]),
    guided_fdr = sum(flagged & !affected_cells) / max(1, sum(flagged)),
    de_tpr = mean(de_flagged[affected_cells]),
    de_flagged_unaffected = mean(de_flagged[other_cells]))
}

rows <- list()
for (design in designs) {
  for (seed in seeds) {
    sce <- validity_data(n_cells, design, seed)
    truth <- S4Vectors::metadata(sce)$truth
    root <- ape::prop.part(truth$phylo[[truth$affected[1]]])
    # prop.part lists clades by tip number; the root's first child clade
    left_tips <- truth$phylo[[truth$affected[1]]]$tip.label[root[[2]]]
    sce$root_split <- ifelse(as.character(sce$sample) %in% left_tips, "left", "right")
    for (flavour in flavours) {
      if (flavour == "scvi-tools") {
        # distances only: scvi-tools has no guided tests or DE of this kind
        obs <- data.frame(sample = sce$sample, group = sce$cell_type, batch = sce$site)
        r <- scvi_tools_group_distances(as(counts(sce), "CsparseMatrix"), obs, seed)
        row <- data.frame(tag, design, seed, flavour, epochs = r$epochs, best_epoch = NA,
                          train_seconds = round(r$seconds, 1), space = "latent", score_distances(r$d, truth),
                          guided_tpr = NA, guided_fdr = NA, de_tpr = NA, de_flagged_unaffected = NA,
                          cpu, stringsAsFactors = FALSE)
      } else {
        saved <- if (nzchar(fit_dir)) file.path(fit_dir, sprintf("%s_%d_%s.rds", design, seed, flavour)) else ""
        if (nzchar(saved) && file.exists(saved)) {
          saved_fit <- readRDS(saved)
          fit <- saved_fit$fit
          seconds <- saved_fit$seconds
        } else {
          t0 <- proc.time()[["elapsed"]]
          fit <- do.call(mrvi, c(list(sce, sample = "sample", batch = "site", flavour = flavour,
                                      seed = seed, verbose = FALSE), extra))
          seconds <- proc.time()[["elapsed"]] - t0
          if (nzchar(saved)) saveRDS(list(fit = fit, seconds = seconds), saved)
        }
        row <- data.frame(tag, design, seed, flavour, epochs = nrow(fit@history),
                          best_epoch = fit@config$best_epoch, train_seconds = round(seconds, 1),
                          score_fit(fit, sce, truth), cpu, stringsAsFactors = FALSE)
      }
      print(row[, setdiff(names(row), "cpu")], digits = 3)
      rows[[length(rows) + 1]] <- row
      old <- if (file.exists(out_file)) utils::read.csv(out_file) else NULL
      # rows from before the space column were scored in latent space
      if (!is.null(old) && is.null(old$space)) old <- cbind(old[1:7], space = "latent", old[-(1:7)])
      utils::write.csv(rbind(old, row), out_file, row.names = FALSE)
    }
  }
}
