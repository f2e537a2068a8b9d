# Calibration of differentialExpression()'s per-cell test (issue: counterfactual
# analyses).   Rscript bench/de_calibration.R      (~1 min; bench/results/de_calibration.csv)
# 1. Independent normal errors: 4,000 cells x S samples x L dimensions with
#    unequal variances (sd from e to e^-2), a balanced binary covariate.
# 2. A fit of the covariates design (simulateNested, 2,400 cells, 12 samples; the
#    test fixture): 300 random covariates (a balanced binary one and a normal
#    numeric one, both in the design) permuted across samples, p-values of 50
#    cells of the affected and 50 of the unaffected type each time.
# Reported: the fraction of p-values below 0.05 and 0.01 (nominal 5% and 1%).
suppressMessages(library(mrvi))
rows <- list()
for (cfg in list(c(12, 10), c(32, 30), c(8, 3))) {
  set.seed(4)
  S <- cfg[1]
  L <- cfg[2]
  X <- cbind(1, rep(0:1, length.out = S))
  colnames(X) <- c("(Intercept)", "gb")
  n <- 4000
  z <- array(rnorm(n * S * L), c(n, S, L)) * rep(exp(seq(1, -2, length.out = L)), each = n * S)
  p <- mrvi:::de_regression(z, list(X = X, blocks = list(g = 2)))$tests$g[, "p_value"]
  rows[[length(rows) + 1]] <- data.frame(setting = sprintf("normal errors, S = %d, L = %d", S, L),
                                         covariate = "binary", p_below_0.05 = mean(p < 0.05),
                                         p_below_0.01 = mean(p < 0.01), n_p = length(p))
}
sce <- simulateNested(2400, 300, n_samples = 12, n_sites = 1, n_cell_types = 2,
                      n_affected = 1, design = "covariates", seed = 6)
fit <- mrvi(sce, sample = "sample", max_epochs = 200, n_latent = 20, seed = 1, verbose = FALSE)
type <- fit@cell_data$cell_type
S <- length(fit@samples)
set.seed(2)
cells <- c(sample(which(type == "type1"), 50), sample(which(type == "type2"), 50))
P <- sapply(1:300, function(r) {
  cov <- data.frame(sample = fit@samples, g = sample(rep(c("a", "b"), length.out = S)), x = rnorm(S))
  de <- differentialExpression(fit, cov, cells = cells, mc_samples = 0, normalize = FALSE)
  c(de$p_value[de$covariate == "g"], de$p_value[de$covariate == "x"])
})
blocks <- list(c("binary", "type1 (affected)"), c("binary", "type2"), c("numeric", "type1 (affected)"), c("numeric", "type2"))
for (b in seq_along(blocks)) {
  p <- as.vector(P[(b - 1) * 50 + 1:50, ])
  rows[[length(rows) + 1]] <- data.frame(setting = paste("fit, permuted covariate,", blocks[[b]][2]),
                                         covariate = blocks[[b]][1], p_below_0.05 = mean(p < 0.05),
                                         p_below_0.01 = mean(p < 0.01), n_p = length(p))
}
out <- do.call(rbind, rows)
print(out, digits = 3)
dir.create("bench/results", showWarnings = FALSE, recursive = TRUE)
utils::write.csv(out, "bench/results/de_calibration.csv", row.names = FALSE)
