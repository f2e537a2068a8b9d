# An independent recomputation, in plain R (base matrix algebra, double
# precision), of the attention flavour (the default model) from a fit's saved
# weights (read_safetensors(), helper-data.R): z under every sample, the decoded
# expression, one cell's sample distances and the encoder's posterior of u.
# test-attention-recompute.R compares them with what the package returns.
#
# Sources followed (src/rust/mrvi-core/src/model/): encoder.rs (the encoder);
# mod.rs (parameter names and shapes, z_and_penalty / z_all_samples, the
# decoder's output_layer / nuisance_context / attention_output); attention.rs
# (AttentionBlock::reference, the block token by token as MODEL.md writes it,
# and forward_with, the samples' hidden term); the expression-space distance as
# ?sampleDistances defines it on the decoded profiles (not the package's
# eigen-factor shortcut). Linear layers are [out, in] matrices: W %*% x + b.
# Agreement expected: float32 rounding (~1e-7 relative; distances ~1e-7 of the
# clr coordinates they are differences of).

# --- building blocks --------------------------------------------------------

# torch's layer_norm without affine parameters: biased variance, eps 1e-5
# (attention.rs layer_norm_moments; encoder.rs cond_norm)
rc_layer_norm <- function(x) (x - mean(x)) / sqrt(mean((x - mean(x))^2) + 1e-5)

rc_softmax <- function(v) { e <- exp(v - max(v)); e / sum(e) }

rc_linear <- function(w, prefix, x) {
  b <- w[[paste0(prefix, ".bias")]]
  y <- w[[paste0(prefix, ".weight")]] %*% x
  as.vector(if (is.null(b)) y else y + b)
}

# One attention block on one input x [d_in] against one context [16]
# (attention.rs AttentionBlock::reference; the free per-sample hidden term as
# in forward_with). TOKENS = 16, CHANNELS = 8, HEADS = 2 (4 channels per head),
# HIDDEN = 32.
rc_attention <- function(w, prefix, x, context, hidden_term = NULL) {
  p <- function(name) paste0(prefix, ".", name)
  xq <- rc_linear(w, p("project"), rc_layer_norm(x))                           # [16]
  # tokens: each scalar lifted to 8 channels, then projected; rows = tokens
  lift <- function(layer, v) outer(v, as.vector(w[[paste0(p(layer), ".weight")]])) +
    matrix(w[[paste0(p(layer), ".bias")]], length(v), 8, byrow = TRUE)        # [16, 8]
  proj <- function(layer, tok) tok %*% t(w[[paste0(p(layer), ".weight")]]) +
    matrix(w[[paste0(p(layer), ".bias")]], nrow(tok), 8, byrow = TRUE)
  q <- proj("wq", lift("lift_q", xq))
  kv <- lift("lift_kv", context)
  k <- proj("wk", kv)
  v <- proj("wv", kv)
  out <- matrix(0, 16, 8)                                                       # [token, channel]
  for (h in 1:2) {
    ch <- (h - 1) * 4 + 1:4                                                     # view [16, H, 4]
    scores <- q[, ch] %*% t(k[, ch]) / sqrt(4)
    att <- t(apply(scores, 1, rc_softmax))                                      # softmax over keys
    out[, ch] <- att %*% v[, ch]
  }
  flat <- as.vector(t(out))                                                     # row-major: t * 8 + channel
  hidden <- rc_linear(w, p("mlp1"), flat)
  if (!is.null(w[[p("direct.weight")]])) hidden <- hidden + as.vector(w[[p("direct.weight")]] %*% context)
  if (!is.null(hidden_term)) hidden <- hidden + hidden_term
  rc_linear(w, p("mlp2"), pmax(hidden, 0))
}

# --- the sample effect: z ---------------------------------------------------

# z of u under sample s (1-based): base(u) + attention(u, e_s) + the sample's
# hidden term (mod.rs z_and_penalty, SampleEffect::Attention)
rc_z <- function(w, u, s) {
  ht <- if (!is.null(w[["sample_effect.hidden_term"]])) w[["sample_effect.hidden_term"]][s, ]
  rc_linear(w, "sample_effect.base", u) +
    rc_attention(w, "sample_effect.attention", u, w[["sample_effect.embedding"]][s, ], ht)
}

# Counterfactual z of `cells` under every sample from the posterior mean of u:
# [cells, S, L] (mod.rs z_all_samples)
rc_z_all <- function(fit, cells, w = read_safetensors(fit@weights), u = fit@u_mean) {
  S <- length(fit@samples)
  L <- nrow(w[["sample_effect.base.weight"]])
  out <- array(NA_real_, c(length(cells), S, L))
  for (i in seq_along(cells)) for (s in 1:S) out[i, s, ] <- rc_z(w, u[cells[i], ], s)
  out
}

# --- the decoder --------------------------------------------------------------

# Decoder logits of z for a context (mod.rs output_layer, Decoder::Attention):
# out(z + attention(z, context)) (+ x d_x for continuous covariates)
rc_logits <- function(w, z, context, x = NULL) {
  input <- z + rc_attention(w, "decoder.attention", z, context)
  logits <- rc_linear(w, "decoder.out", input)
  if (length(x) && !is.null(w[["decoder.d_x"]])) logits <- logits + as.vector(t(w[["decoder.d_x"]]) %*% x)
  logits
}

# The decoder's context (mod.rs nuisance_context): the sum over categorical
# covariates of their level's row of the site embedding (covariate k's rows
# follow those of the covariates before it), plus x %*% continuous_embedding.
# `levels`: one 1-based level per covariate; `x`: standardised continuous values.
rc_context <- function(w, fit, levels, x = NULL) {
  n_levels <- lengths(fit@config$nuisance$factors)
  if (!length(n_levels)) n_levels <- length(fit@batches)
  offsets <- cumsum(c(0, n_levels))[seq_along(n_levels)]
  ctx <- colSums(w[["decoder.site_embedding"]][levels + offsets, , drop = FALSE])
  if (length(x)) ctx <- ctx + as.vector(t(w[["decoder.continuous_embedding"]]) %*% x)
  ctx
}

# A fitted cell's own nuisance levels (1-based, one per categorical covariate)
# and standardised continuous values.
rc_own_nuisance <- function(fit, cell) {
  nu <- fit@config$nuisance
  factors <- nu$factors
  if (!length(factors)) factors <- list(batch = fit@batches)
  cols <- if (length(factors) == 1 && !is.null(fit@cell_data$batch)) "batch" else names(factors)
  levels <- vapply(seq_along(factors), function(k) {
    v <- fit@cell_data[[cols[k]]][cell]
    if (is.null(v)) 1L else match(as.character(v), factors[[k]])
  }, 1L)
  cont <- nu$continuous
  x <- if (!is.null(cont) && nrow(cont)) {
    vapply(seq_len(nrow(cont)), function(j) (fit@cell_data[[cont$name[j]]][cell] - cont$center[j]) / cont$scale[j], 1)
  }
  list(levels = levels, x = x)
}

# Expected normalised expression rho (genes x cells) of `cells` as if from
# `sample` (a name) and `batch`: NULL (each cell's own levels), one level of the
# fit's one categorical covariate, or a named list of one level for some of the
# covariates (the others stay the cell's own); continuous covariates at the
# cell's own values. From the posterior mean of u (mod.rs expression).
rc_expression <- function(fit, cells, sample, batch = NULL, w = read_safetensors(fit@weights), u = fit@u_mean) {
  s <- match(sample, fit@samples)
  factors <- fit@config$nuisance$factors
  if (!length(factors)) factors <- list(batch = fit@batches)
  if (!is.null(batch) && !is.list(batch)) batch <- stats::setNames(list(batch), names(factors)[1])
  sapply(cells, function(cell) {
    own <- rc_own_nuisance(fit, cell)
    levels <- own$levels
    for (k in names(batch)) levels[match(k, names(factors))] <- match(batch[[k]], factors[[k]])
    z <- rc_z(w, u[cell, ], s)
    rc_softmax(rc_logits(w, z, rc_context(w, fit, levels, own$x), own$x))
  })
}

# One cell's expression-space sample distances, as ?sampleDistances defines
# them: D[a, b] = || clr(x^a) - clr(x^b) ||_2, x^s the log2 expected expression
# of the cell's z under sample s, averaged in log space over every combination
# of the categorical covariates' levels (equal weights), continuous covariates
# at their means (0 after standardisation); clr centres over genes.
rc_distance <- function(fit, cell, space = c("expression", "latent"), w = read_safetensors(fit@weights), u = fit@u_mean) {
  space <- match.arg(space)
  S <- length(fit@samples)
  zs <- t(sapply(1:S, function(s) rc_z(w, u[cell, ], s)))        # [S, L]
  if (space == "latent") return(as.matrix(dist(zs)))
  n_levels <- lengths(fit@config$nuisance$factors)
  if (!length(n_levels)) n_levels <- length(fit@batches)
  grid <- as.matrix(expand.grid(lapply(n_levels, seq_len)))
  n_cont <- max(nrow(fit@config$nuisance$continuous), 0)
  x0 <- if (n_cont) rep(0, n_cont)
  coords <- t(sapply(1:S, function(s) {
    lx <- rowMeans(apply(grid, 1, function(lv) {
      log2(rc_softmax(rc_logits(w, zs[s, ], rc_context(w, fit, lv, x0), x0)))
    }))
    lx - mean(lx)                                                          # clr
  }))
  as.matrix(dist(coords))
}

# --- the encoder --------------------------------------------------------------

# The encoder's trunk for one fitted cell (encoder.rs Encoder::forward):
# log1p(counts) -> Linear -> LayerNorm * scale1[s] + shift1[s] -> ReLU -> Linear
# -> LayerNorm * scale2[s] + shift2[s] -> ReLU -> + sample_embedding[s], the
# input of both heads. `counts`: genes x cells with the fit's genes.
rc_encoder_trunk <- function(w, fit, counts, cell) {
  s <- match(as.character(fit@cell_data$sample[cell]), fit@samples)
  x <- log1p(as.numeric(counts[fit@genes, cell]))
  h <- rc_linear(w, "encoder.lin1", x)
  h <- pmax(rc_layer_norm(h) * w[["encoder.scale1"]][s, ] + w[["encoder.shift1"]][s, ], 0)
  h <- rc_linear(w, "encoder.lin2", h)
  h <- pmax(rc_layer_norm(h) * w[["encoder.scale2"]][s, ] + w[["encoder.shift2"]][s, ], 0)
  h + w[["encoder.sample_embedding"]][s, ]
}

# Posterior mean (mean head) and sd (scale head: softplus + 1e-5) of u: cells x L_u.
rc_u_mean <- function(fit, counts, cells, w = read_safetensors(fit@weights)) {
  t(sapply(cells, function(cell) rc_linear(w, "encoder.mean", rc_encoder_trunk(w, fit, counts, cell))))
}
rc_u_sd <- function(fit, counts, cells, w = read_safetensors(fit@weights)) {
  t(sapply(cells, function(cell) log1p(exp(rc_linear(w, "encoder.scale", rc_encoder_trunk(w, fit, counts, cell)))) + 1e-5))
}

# --- optional: weights with the attention flavour's small parts inflated ------

# After a few epochs the parts that start at zero (the direct paths, the
# samples' hidden terms, the continuous embedding) are ~0.01 and move z by
# ~1e-3: a check against them is informative (tolerance ~1e-6), but a copy of
# the fit whose weights make every part move z and rho by O(1) is a sharper one.
# Returns the fit with those weights written into fit@weights (same
# safetensors layout), its checksum updated and its model cache emptied.
rc_inflate <- function(fit, seed = 1, k = 0.05) {
  bytes <- fit@weights
  w <- read_safetensors(bytes)
  set.seed(seed)
  r <- function(x, sd) array(stats::rnorm(length(x), 0, sd), if (is.null(dim(x))) length(x) else dim(x))
  new <- list()
  for (b in c("sample_effect.attention", "decoder.attention")) {
    new[[paste0(b, ".mlp2.weight")]] <- r(w[[paste0(b, ".mlp2.weight")]], k)
    new[[paste0(b, ".mlp2.bias")]] <- r(w[[paste0(b, ".mlp2.bias")]], k)
    if (!is.null(w[[paste0(b, ".direct.weight")]])) new[[paste0(b, ".direct.weight")]] <- r(w[[paste0(b, ".direct.weight")]], 0.5)
    new[[paste0(b, ".wq.weight")]] <- w[[paste0(b, ".wq.weight")]] * 2   # sharper attention
    new[[paste0(b, ".wk.weight")]] <- w[[paste0(b, ".wk.weight")]] * 2
  }
  if (!is.null(w[["sample_effect.hidden_term"]])) new[["sample_effect.hidden_term"]] <- r(w[["sample_effect.hidden_term"]], 1)
  if (!is.null(w[["decoder.continuous_embedding"]])) {
    new[["decoder.continuous_embedding"]] <- r(w[["decoder.continuous_embedding"]], 1)
    new[["decoder.d_x"]] <- r(w[["decoder.d_x"]], 0.5)
  }
  n <- sum(as.numeric(bytes[1:8]) * 256^(0:7))
  header <- rawToChar(bytes[9:(8 + n)])
  for (e in regmatches(header, gregexpr('"[^"]+":\\{[^}]*\\}', header))[[1]]) {
    name <- sub('^"([^"]+)".*', "\\1", e)
    v <- new[[name]]
    if (is.null(v)) next
    off <- as.numeric(strsplit(sub('.*"data_offsets":\\[([^]]*)\\].*', "\\1", e), ",")[[1]])
    v <- if (is.null(dim(v)) || length(dim(v)) == 1) as.vector(v) else as.vector(aperm(v, rev(seq_along(dim(v)))))
    stopifnot(length(v) * 4 == off[2] - off[1])
    bytes[8 + n + (off[1] + 1):off[2]] <- writeBin(as.numeric(v), raw(), size = 4, endian = "little")
  }
  fit@weights <- bytes
  fit@config$weights_hash <- mrvi:::mrvi_weights_hash(bytes)
  fit@cache <- new.env()
  fit
}

