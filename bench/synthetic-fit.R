# A synthetic fit for benchmarks of the routines that need only u and the sample
# effects (distances, guided tests, abundance): a model with S samples trained for
# one epoch on small data, whose cells are then replaced by n cells with
# u ~ N(0, I), posterior sd from `sd(k)`, and random samples. Uses R's generator.
synthetic_fit <- function(n, S, sd = function(k) rep(0.1, k)) {
  counts <- Matrix::rsparsematrix(50, S * 5, 0.3, rand.x = function(k) rpois(k, 3) + 1)
  dimnames(counts) <- list(paste0("g", 1:50), paste0("c", seq_len(S * 5)))
  fit <- mrvi(counts, sample = rep(sprintf("s%03d", seq_len(S)), 5), max_epochs = 1, verbose = FALSE)
  L <- ncol(fit@u_mean)
  cells <- sprintf("cell%07d", seq_len(n))
  fit@u_mean <- matrix(rnorm(n * L), n, L, dimnames = list(cells, paste0("u", 1:L)))
  fit@u_sd <- matrix(sd(n * L), n, L, dimnames = list(cells, paste0("u", 1:L)))
  fit@cell_data <- data.frame(sample = factor(sample(fit@samples, n, replace = TRUE), levels = fit@samples),
                              row.names = cells)
  fit
}
