# Sample distances in expression space (`sampleDistances(space = "expression")`):
# for cell n and draw m of u, the counterfactual log2 expression profiles x^s
# (decoded from z_n^s, nuisance levels averaged: decode_expression()) and
# D(n)[a, b] = ||x^a - x^b||_2, the Euclidean norm of the log2 fold changes between
# the cell as if from sample a and as if from sample b. Every gene counts by its
# fold change, whatever its expression level; latent-space distances weigh genes
# by how much of the latent space the decoder gives them (see ?sampleDistances).

# Cells per chunk: a chunk's profiles (cells x samples x genes doubles) stay near 32 MB.
expression_chunk_size <- function(fit, chunk_size) {
  if (!is.null(chunk_size)) return(chunk_size)
  max(1L, as.integer(2^22 / (length(fit@samples) * length(fit@genes))))
}

# Per-cell distances of the cells `idx` (indices into the fit) at draw m (0: the
# posterior mean of u): an array [cells, S, S].
expression_cell_distances <- function(fit, idx, m, seed) {
  S <- length(fit@samples)
  n <- length(idx)
  z <- counterfactual_z(fit, idx, seq_len(S), m, seed)  # [cells, S, L], column-major
  rho <- decode_expression(fit, matrix(z, n * S))        # genes x (cells, S)
  # a proportion that underflowed single precision would give -Inf
  lx <- array(log2(pmax(rho, 1e-30)), c(length(fit@genes), n, S))
  out <- array(0, c(n, S, S))
  for (i in seq_len(n)) out[i, , ] <- as.matrix(stats::dist(t(lx[, i, ])))
  out
}

# Per-cell distances averaged over the draws (mc_samples = 0: the posterior mean),
# decoded `chunk` cells at a time: an array [cells, S, S].
expression_cell_distances_mean <- function(fit, idx, mc_samples, seed, chunk) {
  S <- length(fit@samples)
  draws <- if (mc_samples == 0) 0L else seq_len(mc_samples)
  out <- array(0, c(length(idx), S, S))
  for (rows in split(seq_along(idx), ceiling(seq_along(idx) / chunk))) {
    out[rows, , ] <- Reduce(`+`, lapply(draws, function(m) expression_cell_distances(fit, idx[rows], m, seed))) /
      length(draws)
  }
  out
}

# The group mean D(C) over the cells `cells`, streamed over chunks of cells:
# list(mean = S x S, n_cells). `mask` (cells x S logical, rows in the order of
# `cells`, or NULL): a cell adds to a pair only where both samples are
# admissible for it, and each pair is the mean over the cells that added to it.
expression_group_distances <- function(fit, cells, mc_samples, seed, chunk, mask = NULL) {
  S <- length(fit@samples)
  total <- count <- matrix(0, S, S)
  for (rows in split(seq_along(cells), ceiling(seq_along(cells) / chunk))) {
    d <- expression_cell_distances_mean(fit, cells[rows], mc_samples, seed, chunk)
    # cell by cell, so that the sums do not depend on the chunks
    for (i in seq_along(rows)) {
      pairs <- if (is.null(mask)) TRUE else outer(mask[rows[i], ], mask[rows[i], ], "&")
      total <- total + d[i, , ] * pairs
      count <- count + pairs
    }
  }
  mean <- total / count
  mean[count == 0] <- NA_real_
  list(mean = mean, n_cells = length(cells))
}
