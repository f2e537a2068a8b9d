# The main job on bundled real data (cell hashing: 12 samples = 4 cell lines x 3
# hashtags; Stoeckius et al. 2018): fit MrVI, sample distances over all cells
# (paper eq. 3-4), the sample tree, and a heatmap and a tree as PNG files.
suppressMessages({
  library(mrvi)
  library(SingleCellExperiment)
})
out <- Sys.getenv("MRVI_OUT", "out")
dir.create(out, showWarnings = FALSE, recursive = TRUE)
ex <- mrvi:::read_example("cellhashing")
singlets <- ex$cells$hto_classification_global == "Singlet"
sce <- SingleCellExperiment(list(counts = ex$counts[, singlets]), colData = ex$cells[singlets, ])

fit <- mrvi(sce, sample = "hash_ID", max_epochs = as.integer(Sys.getenv("MRVI_EPOCHS", "100")), seed = 1)
print(fit)
d <- sampleDistances(fit)            # one group: all cells; 10 posterior draws per cell
hc <- sampleHclust(d)
saveRDS(list(fit = fit, distances = d, tree = hc), file.path(out, "mrvi_result.rds"))
write.csv(d[, , 1], file.path(out, "sample_distances.csv"))
ggplot2::ggsave(file.path(out, "sample_distances_heatmap.png"),
                plotSampleDistances(d, annotation = "cell_line"), width = 7, height = 6, dpi = 120)
ggplot2::ggsave(file.path(out, "sample_tree.png"),
                plotSampleTree(d, annotation = "cell_line"), width = 7, height = 4.5, dpi = 120)

m <- d[, , 1]
nearest <- apply(m + diag(Inf, nrow(m)), 1, function(r) names(r)[which.min(r)])
line <- fit@sample_table$cell_line
names(line) <- fit@sample_table$sample
cat(sprintf("Nearest sample of the same cell line: %d of %d samples\n",
            sum(line[names(nearest)] == line[nearest]), length(nearest)))
cat("Wrote:\n", paste0("  ", normalizePath(file.path(out, c("mrvi_result.rds", "sample_distances.csv",
    "sample_distances_heatmap.png", "sample_tree.png"))), "\n"), sep = "")
