# Several nuisance covariates and samples added to a trained model (issue 20), on
# simulateNested() data with a planted sample tree in type1.
#
#   Rscript bench/covariates.R covariates [seed]   # two crossed batch factors + a technical covariate
#   Rscript bench/covariates.R add [seed]          # hold out 4 of 32 samples, train, add them
#
# Run from the repository root with the package installed (R_LIBS=.Rlib). Appends
# to bench/results/covariates.csv and bench/results/add_samples.csv. With
# MRVI_BENCH_CACHE=<folder>, the full and reference fits of `add` are kept there
# and reused (they do not depend on how samples are added). MRVI_BENCH_SPACE compares
# the added and full fits' distances in "expression" space (the default, as
# sampleDistances()'s since session 22) or in "latent" space.
# MRVI_BENCH_REFIT_SEED=<k> adds a second full fit with fit seed k and the Spearman
# of the held-out rows between the two full fits (the ceiling of added vs full).
suppressMessages(library(mrvi))
args <- commandArgs(trailingOnly = TRUE)
part <- if (length(args)) args[1] else "covariates"
seed <- if (length(args) > 1) as.integer(args[2]) else 1L
threads <- as.integer(Sys.getenv("MRVI_BENCH_THREADS", "1"))
epochs <- as.integer(Sys.getenv("MRVI_BENCH_EPOCHS", "200"))
space <- Sys.getenv("MRVI_BENCH_SPACE", "expression")
dir.create("bench/results", showWarnings = FALSE)

# Mean silhouette width of u by a factor, within each cell type, averaged over
# types: near 0 when u mixes the factor's levels, towards 1 when it separates them.
silhouette_by <- function(u, factor, cell_type, max_cells = 3000) {
  set.seed(1)
  idx <- if (nrow(u) > max_cells) sort(sample.int(nrow(u), max_cells)) else seq_len(nrow(u))
  per_type <- vapply(split(idx, cell_type[idx]), function(j) {
    f <- droplevels(as.factor(factor[j]))
    if (nlevels(f) < 2) return(NA_real_)
    mean(cluster::silhouette(as.integer(f), stats::dist(u[j, , drop = FALSE]))[, "sil_width"])
  }, numeric(1))
  mean(per_type, na.rm = TRUE)
}

# How well D(type1) recovers the planted tree: normalised RF of its average-linkage
# tree, and Spearman correlation with the true path lengths.
tree_scores <- function(d, truth, type = "type1") {
  m <- d[, , type]
  t <- truth$distances[[type]][rownames(m), colnames(m)]
  up <- upper.tri(m)
  c(rf = treeDistance(sampleHclust(d, type), truth$phylo[[type]]),
    spearman = stats::cor(m[up], t[up], method = "spearman"))
}

# Append rows; a column the file lacks is added to its earlier rows as NA.
append_csv <- function(df, file) {
  if (file.exists(file)) {
    old <- utils::read.csv(file, stringsAsFactors = FALSE)
    if (!identical(names(old), names(df))) {
      old[setdiff(names(df), names(old))] <- NA
      df[setdiff(names(old), names(df))] <- NA
      df <- rbind(old, df[names(old)])
      file.remove(file)
    }
  }
  utils::write.table(df, file, sep = ",", row.names = FALSE, append = file.exists(file),
                     col.names = !file.exists(file))
}

fit_one <- function(sce, ...) {
  t0 <- Sys.time()
  fit <- mrvi(sce, sample = "sample", labels = "cell_type", max_epochs = epochs, seed = seed,
              n_threads = threads, verbose = FALSE, ...)
  list(fit = fit, seconds = as.numeric(difftime(Sys.time(), t0, units = "secs")))
}

if (part == "covariates") {
  size <- list(n_cells = 4000, n_genes = 300, n_samples = 16, n_sites = 2, n_cell_types = 3, n_affected = 1)
  crossed <- do.call(simulateNested, c(size, list(seed = seed, n_chemistries = 2, technical = 1)))
  single <- do.call(simulateNested, c(size, list(seed = seed)))  # the same tree, one batch factor
  truth <- S4Vectors::metadata(crossed)$truth
  runs <- list(
    all_covariates = fit_one(crossed, batch = c("site", "chemistry"), continuous_covariates = "mito"),
    ignores_chemistry = fit_one(crossed, batch = "site", continuous_covariates = "mito"),
    single_factor_data = fit_one(single, batch = "site")
  )
  rows <- lapply(names(runs), function(nm) {
    fit <- runs[[nm]]$fit
    sce <- if (nm == "single_factor_data") single else crossed
    u <- mrviLatent(fit)
    d <- sampleDistances(fit, groups = "cell_type", mc_samples = 0)
    ts <- tree_scores(d, truth)
    # sample structure left in the unaffected types (none was planted there):
    # mean distance relative to type1's
    md <- apply(d, 3, function(m) mean(m[upper.tri(m)]))
    data.frame(seed = seed, fit = nm, flavour = fit@config$flavour, epochs = nrow(fit@history),
               seconds = round(runs[[nm]]$seconds), rf_type1 = ts[["rf"]], spearman_type1 = ts[["spearman"]],
               quiet_ratio = max(md[c("type2", "type3")]) / md[["type1"]],
               sil_site = silhouette_by(u, sce$site, sce$cell_type),
               sil_chemistry = if (nm == "single_factor_data") NA else silhouette_by(u, crossed$chemistry, crossed$cell_type),
               r2_mito = if (nm == "single_factor_data") NA else summary(stats::lm(crossed$mito ~ u))$r.squared)
  })
  res <- do.call(rbind, rows)
  print(res, digits = 3)
  append_csv(res, "bench/results/covariates.csv")
}

if (part == "add") {
  sce <- simulateNested(8000, 300, n_samples = 32, n_sites = 2, n_cell_types = 2, n_affected = 1, seed = seed)
  truth <- S4Vectors::metadata(sce)$truth
  set.seed(seed)
  held <- sort(sample(levels(sce$sample), 4))
  ref <- !sce$sample %in% held
  cached <- function(name, make) {
    dir <- Sys.getenv("MRVI_BENCH_CACHE")
    if (!nzchar(dir)) return(make())
    f <- file.path(dir, sprintf("add_%s_seed%d_epochs%d.rds", name, seed, epochs))
    if (file.exists(f)) return(readRDS(f))
    fit <- make()
    saveRDS(fit, f)
    fit
  }
  full <- cached("full", function() fit_one(sce, batch = "site")$fit)
  reference <- cached("reference", function() fit_one(sce[, ref], batch = "site")$fit)
  t0 <- Sys.time()
  added <- mrviAddSamples(reference, sce[, !ref], sample = "sample", batch = "site", seed = seed)
  add_seconds <- as.numeric(difftime(Sys.time(), t0, units = "secs"))
  # reference distances unchanged: per cell, and for groups over the reference cells
  rc <- seq_len(sum(ref))
  ref_s <- reference@samples
  same_cells <- identical(sampleDistances(reference, cells = 1:50)[, ref_s, ref_s],
                          sampleDistances(added, cells = 1:50)[, ref_s, ref_s])
  values <- function(d) array(d, dim(d), dimnames(d))
  same_groups <- identical(values(sampleDistances(reference, groups = "cell_type", mc_samples = 0)),
                           values(sampleDistances(added, groups = ifelse(seq_len(nrow(added@cell_data)) %in% rc,
                                                                         as.character(added@cell_data$cell_type), NA),
                                                  mc_samples = 0)[ref_s, ref_s, ]))
  type1 <- function(fit) {
    mc <- if (space == "latent") 0 else 10
    sampleDistances(fit, groups = "cell_type", mc_samples = mc, space = space)[, , "type1"]
  }
  d_full <- type1(full)
  d_add <- type1(added)
  # how far two full fits agree (MRVI_BENCH_REFIT_SEED: a second full fit with that
  # fit seed), the ceiling of the added-vs-full agreement
  refit_seed <- as.integer(Sys.getenv("MRVI_BENCH_REFIT_SEED", NA))
  d_refit <- if (!is.na(refit_seed)) {
    type1(cached(sprintf("full_refit%d", refit_seed), function() {
      mrvi(sce, sample = "sample", labels = "cell_type", batch = "site", max_epochs = epochs, seed = refit_seed,
           n_threads = threads, verbose = FALSE)
    }))
  }
  # placement of a new sample: the reference samples of the smallest clade that
  # holds it and at least one of them, in the average-linkage tree of the
  # reference samples plus it
  sister <- function(d, s) {
    keep <- c(ref_s, s)
    hc <- stats::hclust(stats::as.dist(d[keep, keep]), "average")
    for (k in seq(length(keep) - 1, 1)) {
      cl <- stats::cutree(hc, k)
      mates <- setdiff(names(cl)[cl == cl[[s]]], s)
      if (length(mates)) return(sort(mates))
    }
  }
  t_true <- truth$distances$type1
  rows <- lapply(held, function(s) {
    a <- d_add[s, ref_s]
    f <- d_full[s, ref_s]
    sa <- sister(d_add, s)
    sf <- sister(d_full, s)
    st <- sister(t_true, s)
    data.frame(seed = seed, sample = s, flavour = added@config$flavour, space = space,
               spearman_add_vs_full = stats::cor(a, f, method = "spearman"),
               spearman_add_vs_truth = stats::cor(a, t_true[s, ref_s], method = "spearman"),
               spearman_full_vs_truth = stats::cor(f, t_true[s, ref_s], method = "spearman"),
               spearman_full_vs_refit = if (is.null(d_refit)) NA_real_ else stats::cor(f, d_refit[s, ref_s], method = "spearman"),
               nearest_add = names(which.min(a)), nearest_full = names(which.min(f)),
               sister_add = paste(sa, collapse = "+"), sister_full = paste(sf, collapse = "+"),
               sister_truth = paste(st, collapse = "+"),
               placement_match = identical(sa, sf),
               # the same for the second full fit: the ceiling of placement_match
               placement_refit_match = if (is.null(d_refit)) NA else identical(sister(d_refit, s), sf),
               add_seconds = round(add_seconds),
               add_epochs = nrow(added@config$added[[1]]$history),
               reference_cells_identical = same_cells, reference_groups_identical = same_groups)
  })
  res <- do.call(rbind, rows)
  print(res, digits = 3)
  append_csv(res, "bench/results/add_samples.csv")
}
