# The main job on bundled real data (cell hashing: 12 samples = 4 cell lines x 3
# hashtags): fit MrVI, average the counterfactual sample distances over all cells
# (paper eq. 3-4), cluster the samples, write a tree and a heatmap as PNG files.
suppressMessages(library(mrvi))
out <- Sys.getenv("MRVI_OUT", "out")
dir.create(out, showWarnings = FALSE, recursive = TRUE)
ex <- mrvi:::read_example("cellhashing")
singlets <- ex$cells$hto_classification_global == "Singlet"
counts <- ex$counts[, singlets]
cells <- ex$cells[singlets, ]
fit <- mrvi(counts, sample = cells$hash_ID, max_epochs = as.integer(Sys.getenv("MRVI_EPOCHS", "100")),
            seed = 1)
print(fit)
saveRDS(fit, file.path(out, "mrvi_fit.rds"))

# D(all cells)[a, b] = mean over cells of || z_n^a - z_n^b ||
u <- mrviLatent(fit)
ptr <- mrvi:::native_model(fit)
S <- length(fit@samples)
z <- lapply(seq_len(S), function(s) matrix(mrvi:::mrvi_z_from_u(ptr, u, rep(s - 1L, nrow(u))), nrow(u)))
D <- matrix(0, S, S, dimnames = list(fit@samples, fit@samples))
for (a in seq_len(S)) for (b in seq_len(S)) D[a, b] <- mean(sqrt(rowSums((z[[a]] - z[[b]])^2)))
hc <- hclust(as.dist(D), method = "average")
write.csv(D, file.path(out, "sample_distances.csv"))

png(file.path(out, "sample_tree.png"), width = 900, height = 600, res = 120)
plot(hc, main = "MrVI sample tree (all cells)", xlab = "", sub = "average linkage")
invisible(dev.off())
png(file.path(out, "sample_distances_heatmap.png"), width = 900, height = 800, res = 120)
heatmap(D, Rowv = as.dendrogram(hc), Colv = "Rowv", scale = "none", symm = TRUE,
        col = hcl.colors(50, "YlOrRd", rev = TRUE), main = "MrVI sample distances")
invisible(dev.off())
nearest <- apply(D + diag(Inf, S), 1, function(r) names(r)[which.min(r)])
line_of <- function(s) sub("_.*", "", s)
cat(sprintf("Nearest sample of the same cell line: %d of %d samples\n",
            sum(line_of(names(nearest)) == line_of(nearest)), S))
cat("Wrote:\n", paste0("  ", normalizePath(file.path(out, c("mrvi_fit.rds", "sample_distances.csv",
    "sample_tree.png", "sample_distances_heatmap.png"))), "\n"), sep = "")
