# Synthetic count data for the benchmarks, generated in chunks of cells so that
# the generator itself never holds a dense genes x cells matrix:
#   Rscript bench/make_data.R N_CELLS N_GENES N_SAMPLES N_SITES OUT.rds [LIBRARY_SIZE [nocompress]]
# Cell types (8) with distinct programmes, samples nested in sites, a per-gene site
# effect, a sample programme in 2 types; negative binomial counts (size 5), library
# sizes log-normal around 1,000 UMIs (about 19.5% non-zero at 2,000 genes; LIBRARY_SIZE
# 7000 gives about 40%). `nocompress`: save without gzip (faster for large data).
args <- commandArgs(trailingOnly = TRUE)
n_cells <- as.integer(args[1]); n_genes <- as.integer(args[2])
n_samples <- as.integer(args[3]); n_sites <- as.integer(args[4]); out <- args[5]
lib_size <- if (length(args) > 5) as.numeric(args[6]) else 1000
compress <- !(length(args) > 6 && args[7] == "nocompress")
suppressMessages(library(Matrix))
set.seed(1)
n_types <- 8
base <- matrix(rgamma(n_genes * n_types, shape = 0.2, rate = 0.2), n_genes)
for (k in seq_len(n_types)) {
  g <- sample(n_genes, n_genes %/% 10)
  base[g, k] <- base[g, k] * 5
}
site_eff <- matrix(exp(rnorm(n_genes * n_sites, sd = 0.3)), n_genes)
prog <- matrix(1, n_genes, n_samples)
for (s in seq_len(n_samples)) prog[sample(n_genes, 30), s] <- 2
sample_of <- sample.int(n_samples, n_cells, replace = TRUE)
site_of_sample <- rep_len(seq_len(n_sites), n_samples)
type_of <- sample.int(n_types, n_cells, replace = TRUE)
chunks <- split(seq_len(n_cells), ceiling(seq_len(n_cells) / 5000))
parts <- lapply(chunks, function(idx) {
  mu <- base[, type_of[idx]] * site_eff[, site_of_sample[sample_of[idx]]]
  hit <- type_of[idx] <= 2
  mu[, hit] <- mu[, hit] * prog[, sample_of[idx][hit]]
  lib <- rlnorm(length(idx), log(lib_size), 0.4)
  mu <- sweep(mu, 2, colSums(mu), "/") * rep(lib, each = n_genes)
  m <- matrix(rnbinom(length(mu), mu = mu, size = 5), n_genes)
  methods::as(m, "CsparseMatrix")
})
counts <- do.call(cbind, parts)
dimnames(counts) <- list(sprintf("g%05d", seq_len(n_genes)), sprintf("c%07d", seq_len(n_cells)))
saveRDS(list(counts = counts, sample = factor(sprintf("s%03d", sample_of)),
             site = factor(sprintf("site%d", site_of_sample[sample_of])),
             cell_type = factor(sprintf("t%d", type_of))), out, compress = compress)
cat(sprintf("%d cells x %d genes, %.1f%% non-zero -> %s\n", n_cells, n_genes,
            100 * length(counts@x) / prod(dim(counts)), out))
