# Accuracy benchmark (issue: reproduce the paper's experiments):
#   R_LIBS=$PWD/.Rlib Rscript bench/accuracy.R        (~10 min on 2 cores)
# * simulated nested designs, 5 seeds each: "tree" (Supplement B.2: planted sample trees
#   in 2 of 4 cell types) and "covariates" (§4.1: three binary sample covariates of
#   strength 3, 2, 1.5 in 2 of 4 cell types); 3,000 cells x 400 genes, 16 samples in 2
#   sites. MrVI (n_latent 30, up to 300 epochs) against CompositionPCA: normalised
#   Robinson-Foulds distance to the true tree per affected type, one-sided paired t-test;
#   guided per-cell tests (TPR in affected types, FDR among flagged cells) and group
#   tests; silhouette scores of u (cell type, site).
# * semi-synthetic: the bundled cell hashing counts with cells reassigned to 16 samples,
#   trees planted in 2 of the 4 cell lines.
# * real data: cell hashing (is each sample's nearest sample of the same cell line?) and
#   glioblastoma (patient vs treatment).
# Writes bench/results/accuracy_*.csv and bench/results/*.png.
suppressMessages({
  library(mrvi)
  library(SingleCellExperiment)
  library(ggplot2)
})
out <- "bench/results"
dir.create(out, showWarnings = FALSE, recursive = TRUE)
t_start <- proc.time()[["elapsed"]]
epochs <- as.integer(Sys.getenv("MRVI_BENCH_EPOCHS", "300"))
seeds <- seq_len(as.integer(Sys.getenv("MRVI_BENCH_SEEDS", "5")))

fit_one <- function(sce, seed) {
  mrvi(sce, sample = "sample", batch = "site", n_latent = 30, max_epochs = epochs, seed = seed,
       verbose = FALSE)
}

tree_rows <- list(); guided_rows <- list(); group_rows <- list(); sil_rows <- list()
keep_for_figure <- NULL
for (design in c("tree", "covariates")) {
  for (seed in seeds) {
    sce <- simulateNested(3000, 400, n_samples = 16, n_sites = 2, n_cell_types = 4, n_affected = 2,
                          design = design, seed = seed)
    truth <- S4Vectors::metadata(sce)$truth
    fit <- fit_one(sce, seed)
    u <- mrviLatent(fit)
    sil <- silhouetteScores(u, fit@cell_data$cell_type, fit@cell_data$site)
    sil_rows[[length(sil_rows) + 1]] <- data.frame(design, seed, silhouette_cell_type = sil[["cell_type"]],
                                                   silhouette_site = sil[["batch"]])
    d <- sampleDistances(fit, groups = "cell_type", mc_samples = 0)
    if (design == "tree") {
      comp <- compositionDistances(sce, "sample", groups = "cell_type", seed = seed)
      for (t in truth$affected) {
        tree_rows[[length(tree_rows) + 1]] <- data.frame(
          seed, cell_type = t,
          rf_mrvi = treeDistance(sampleHclust(d, t), truth$phylo[[t]]),
          rf_composition = treeDistance(sampleHclust(comp, t), truth$phylo[[t]]))
      }
      if (seed == 1) keep_for_figure <- list(d = d, comp = comp, truth = truth)
    } else {
      affected <- fit@cell_data$cell_type %in% truth$affected
      for (cov in c("cov1", "cov2", "cov3")) {
        res <- cellAssociation(fit, cov)
        flagged <- res$q_value < 0.05
        guided_rows[[length(guided_rows) + 1]] <- data.frame(
          seed, covariate = cov, strength = truth$effects[[cov]]$strength,
          tpr = mean(flagged[affected]), fdr = sum(flagged & !affected) / max(1, sum(flagged)),
          flagged_unaffected = mean(flagged[!affected]))
        # the mean-KS test on normalised latent distances (the group test's default before session 23)
        g <- groupAssociation(fit, cov, groups = "cell_type", permutations = 199, statistic = "ks",
                              normalize = TRUE, space = "latent")
        pf <- groupAssociation(d, cov, permutations = 199, statistic = "pseudo_f")[rownames(g), ]
        group_rows[[length(group_rows) + 1]] <- data.frame(
          seed, covariate = cov, cell_type = rownames(g), affected = rownames(g) %in% truth$affected,
          mean_ks = g$statistic, p_value_ks = g$p_value, pseudo_f_raw = pf$statistic,
          p_value_pseudo_f_raw = pf$p_value)
      }
    }
    cat(sprintf("[%5.0fs] %s seed %d done\n", proc.time()[["elapsed"]] - t_start, design, seed))
  }
}
tree <- do.call(rbind, tree_rows)
tt <- t.test(tree$rf_mrvi, tree$rf_composition, paired = TRUE, alternative = "less")
tree$paired_t_test_p <- tt$p.value
write.csv(tree, file.path(out, "accuracy_tree_rf.csv"), row.names = FALSE)
write.csv(do.call(rbind, guided_rows), file.path(out, "accuracy_guided_cells.csv"), row.names = FALSE)
write.csv(do.call(rbind, group_rows), file.path(out, "accuracy_guided_groups.csv"), row.names = FALSE)
write.csv(do.call(rbind, sil_rows), file.path(out, "accuracy_silhouettes.csv"), row.names = FALSE)

# Figures like the paper's Figure 3: true and estimated distances, RF bars
t1 <- keep_for_figure$truth$affected[1]
true_d <- keep_for_figure$truth$distances[[t1]]
ggsave(file.path(out, "tree_true_distances.png"),
       plotSampleDistances(true_d) + ggtitle(paste("True sample distances (path lengths),", t1)),
       width = 6.5, height = 5.5, dpi = 110)
ggsave(file.path(out, "tree_mrvi_distances.png"),
       plotSampleDistances(keep_for_figure$d, t1) + ggtitle(paste("MrVI,", t1)),
       width = 6.5, height = 5.5, dpi = 110)
ggsave(file.path(out, "tree_composition_distances.png"),
       plotSampleDistances(keep_for_figure$comp, t1) + ggtitle(paste("CompositionPCA,", t1)),
       width = 6.5, height = 5.5, dpi = 110)
long <- rbind(data.frame(method = "MrVI", rf = tree$rf_mrvi, seed = tree$seed, cell_type = tree$cell_type),
              data.frame(method = "CompositionPCA", rf = tree$rf_composition, seed = tree$seed,
                         cell_type = tree$cell_type))
ggsave(file.path(out, "tree_rf_bars.png"),
       ggplot(long, aes(x = method, y = rf, fill = method)) +
         stat_summary(fun = mean, geom = "col") +
         geom_jitter(width = 0.1, height = 0, size = 1.5) +
         facet_wrap(~cell_type) +
         labs(y = "normalised RF distance to true tree", x = NULL,
              title = sprintf("Planted trees, %d seeds (paired one-sided t-test p = %.2g)", length(seeds), tt$p.value)) +
         theme_minimal() + theme(legend.position = "none"),
       width = 7, height = 4, dpi = 110)

# Semi-synthetic on the bundled real counts (cell lines as cell types)
ex <- mrvi:::read_example("cellhashing")
singlets <- ex$cells$hto_classification_global == "Singlet"
base <- list(counts = ex$counts[, singlets], cell_type = ex$cells$cell_line[singlets])
semi <- simulateNested(n_samples = 16, n_sites = 1, n_affected = 2, design = "tree", base = base, seed = 1)
semi$site <- "site1"
fit <- fit_one(semi, 1)
d <- sampleDistances(fit, groups = "cell_type", mc_samples = 0)
comp <- compositionDistances(semi, "sample", groups = "cell_type")
truth <- S4Vectors::metadata(semi)$truth
semi_rows <- do.call(rbind, lapply(truth$affected, function(t) data.frame(
  cell_type = t, rf_mrvi = treeDistance(sampleHclust(d, t), truth$phylo[[t]]),
  rf_composition = treeDistance(sampleHclust(comp, t), truth$phylo[[t]]))))
write.csv(semi_rows, file.path(out, "accuracy_semisynthetic_rf.csv"), row.names = FALSE)
cat(sprintf("[%5.0fs] semi-synthetic done\n", proc.time()[["elapsed"]] - t_start))

# Real data 1: cell hashing -- nearest sample of the same cell line?
sce <- SingleCellExperiment(list(counts = ex$counts[, singlets]), colData = ex$cells[singlets, ])
fit <- mrvi(sce, sample = "hash_ID", max_epochs = 100, seed = 1, verbose = FALSE)
m <- sampleDistances(fit, mc_samples = 0)[, , 1]
nearest <- apply(m + diag(Inf, nrow(m)), 1, function(r) names(r)[which.min(r)])
line <- setNames(fit@sample_table$cell_line, fit@sample_table$sample)
real <- data.frame(dataset = "scds_cellhashing", question = "nearest sample is of the same cell line",
                   value = mean(line[names(nearest)] == line[nearest]))

# Real data 2: glioblastoma -- patient vs treatment
gb_data <- mrvi:::read_count_folder("bench/data/lemur_glioblastoma")
gb <- SingleCellExperiment(list(counts = gb_data$counts), colData = gb_data$cells)
fit <- mrvi(gb, sample = "sample_id", max_epochs = 150, seed = 1, verbose = FALSE)
dg <- sampleDistances(fit, mc_samples = 0)
m <- dg[, , 1]
tab <- fit@sample_table
patient <- setNames(tab$patient_id, tab$sample)
cond <- setNames(tab$condition, tab$sample)
nearest <- apply(m + diag(Inf, nrow(m)), 1, function(r) names(r)[which.min(r)])
same_patient <- outer(patient, patient, "==") & !diag(nrow(m))
same_cond <- outer(cond, cond, "==") & !diag(nrow(m))
real <- rbind(real, data.frame(
  dataset = "lemur_glioblastoma",
  question = c("nearest sample is the same patient (other treatment)",
               "mean distance, same patient / different patient",
               "mean distance, same treatment (other patient) / different treatment (other patient)",
               "group test p-value: patient", "group test p-value: treatment"),
  value = c(mean(patient[names(nearest)] == patient[nearest]),
            mean(m[same_patient]) / mean(m[!same_patient & !diag(nrow(m))]),
            mean(m[same_cond & !same_patient]) / mean(m[!same_cond & !same_patient]),
            groupAssociation(dg, "patient_id", permutations = 999, statistic = "pseudo_f")$p_value,
            groupAssociation(dg, "condition", permutations = 999, statistic = "pseudo_f")$p_value)))
write.csv(real, file.path(out, "accuracy_real_data.csv"), row.names = FALSE)
ggsave(file.path(out, "glioblastoma_distances.png"),
       plotSampleDistances(dg, annotation = c("patient_id", "condition")), width = 7, height = 6, dpi = 110)
cat(sprintf("[%5.0fs] all done\n", proc.time()[["elapsed"]] - t_start))
print(tree); print(tt)
print(do.call(rbind, guided_rows)); print(semi_rows); print(real)
