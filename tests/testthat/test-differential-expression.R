# The moments of the effects' spread over draws (as projected_counterfactuals()
# accumulates them), computed directly from regressions of one draw each
# (de_regression(tests = FALSE)): per cell and block J, Psi = sum over draws of
# (B_J - mean B_J)' P (B_J - mean B_J), P = C_JJ^-1 of the cell's design
# (`mask`'s samples); [cells, blocks, 2] of tr(Psi) and tr(Psi^2).
spread_moments <- function(regs, design, mask = NULL) {
  n <- nrow(regs[[1]]$beta[[1]])
  out <- array(NA_real_, c(n, length(design$blocks), 2))
  for (i in seq_len(n)) {
    X <- if (is.null(mask)) design$X else design$X[mask[i, ], , drop = FALSE]
    if (nrow(X) - ncol(X) < 1 || qr(X)$rank < ncol(X)) next
    C <- solve(crossprod(X))
    for (j in seq_along(design$blocks)) {
      J <- design$blocks[[j]]
      b <- lapply(regs, function(reg) t(vapply(colnames(design$X)[J], function(k) reg$beta[[k]][i, ], numeric(ncol(regs[[1]]$beta[[1]])))))
      mean_b <- Reduce(`+`, b) / length(b)
      psi <- Reduce(`+`, lapply(b, function(bd) t(bd - mean_b) %*% solve(C[J, J, drop = FALSE]) %*% (bd - mean_b)))
      out[i, j, ] <- c(sum(diag(psi)), sum(psi^2))
    }
  }
  out
}

test_that("with one latent dimension the test is the ordinary F test of lm()", {
  set.seed(3)
  S <- 14
  tab <- data.frame(g = factor(rep(c("a", "b", "c"), length.out = S)), x = rnorm(S))
  X <- model.matrix(~ g + scale(x)[, 1], tab)
  colnames(X) <- c("(Intercept)", "gb", "gc", "x")
  design <- list(X = X, blocks = list(g = 2:3, x = 4))
  z <- array(rnorm(3 * S), c(3, S, 1)) # 3 cells, one dimension
  z[2, , 1] <- z[2, , 1] + 1.5 * (tab$g == "b")
  res <- mrvi:::de_regression(z, design)
  for (i in 1:3) {
    y <- z[i, , 1]
    full <- lm(y ~ X - 1)
    for (j in c("g", "x")) {
      reduced <- lm(y ~ X[, -design$blocks[[j]]] - 1)
      a <- anova(reduced, full)
      expect_equal(unname(res$tests[[j]][i, "statistic"]), a$F[2], tolerance = 1e-10)
      expect_equal(unname(res$tests[[j]][i, "p_value"]), a$`Pr(>F)`[2], tolerance = 1e-10)
    }
    expect_equal(res$beta$gb[i, 1], unname(coef(full)[2]), tolerance = 1e-10)
    expect_equal(res$beta$x[i, 1], unname(coef(full)[4]), tolerance = 1e-10)
  }
})

test_that("gram_moments() gives each cell's trace and squared Gram entries", {
  set.seed(9)
  A <- array(rnorm(7 * 5 * 4), c(7, 5, 4))  # K x cells x L
  got <- mrvi:::gram_moments(A)
  for (i in 1:5) {
    g <- crossprod(A[, i, ])
    expect_equal(got$trace[i], sum(diag(g)))
    expect_equal(got$squares[i], sum(g^2))
  }
  # the same values in another shape, with their dimensions given; integers too
  expect_identical(mrvi:::gram_moments(matrix(A, 7), c(7, 5, 4)), got)
  B <- array(sample(-5:5, 7 * 5 * 4, replace = TRUE), c(7, 5, 4))
  expect_identical(mrvi:::gram_moments(B), mrvi:::gram_moments(B + 0))
})

test_that("the posterior-noise floor: the effect's spread over draws, and the law where it binds", {
  set.seed(5)
  n <- 4; S <- 10; L <- 3; D <- 8
  X <- cbind(1, rep(0:1, length.out = S))
  colnames(X) <- c("(Intercept)", "gb")
  design <- list(X = X, blocks = list(g = 2))
  # draws: a tiny covariate-aligned shift, and per draw and sample noise that is
  # much larger than the shift (so each draw's effect varies by more than it)
  base <- array(rnorm(n * S * L, sd = 1e-3), c(n, S, L))
  base[, X[, 2] == 1, 1] <- base[, X[, 2] == 1, 1] + 0.05
  draws <- lapply(seq_len(D), function(d) base + array(rnorm(n * S * L, sd = 0.2), c(n, S, L)))
  regs <- lapply(draws, function(z) mrvi:::de_regression(z, design, tests = FALSE))
  noise <- mrvi:::posterior_spread(spread_moments(regs, design), design, D)
  z_mean <- Reduce(`+`, draws) / D
  for (i in seq_len(n)) {
    # each draw's effect by lm(), its covariance over draws by cov(), scaled by 1 / C_JJ
    b <- t(vapply(draws, function(z) coef(lm(z[i, , ] ~ X[, 2]))[2, ], numeric(L)))
    psi <- cov(b) / solve(crossprod(X))[2, 2]
    expect_equal(noise$blocks$g$trace[i], sum(diag(psi)), tolerance = 1e-8)
    expect_equal(noise$blocks$g$dim[i], sum(diag(psi))^2 / sum(psi^2), tolerance = 1e-8)
  }
  # the test on the draws' mean: the plain test flags the shift, the floored one
  # does not, and refers the statistic to F(k, (D - 1) k)
  plain <- mrvi:::de_regression(base, design)$tests$g
  floored <- mrvi:::de_regression(z_mean, design, noise = noise)$tests$g
  expect_true(all(plain[, "p_value"] < 1e-6))
  expect_true(all(floored[, "p_value"] > 0.01))
  k <- noise$blocks$g$dim
  expect_equal(unname(floored[, "df1"]), k)
  expect_equal(unname(floored[, "df2"]), (D - 1) * k)
  num <- rowSums(matrix(mrvi:::de_regression(z_mean, design, tests = FALSE)$beta$gb^2, n)) /
    solve(crossprod(X))[2, 2]
  expect_equal(unname(floored[, "statistic"]), num / noise$blocks$g$trace, tolerance = 1e-8)
  expect_equal(unname(floored[, "p_value"]), pf(num / noise$blocks$g$trace, k, (D - 1) * k, lower.tail = FALSE),
               tolerance = 1e-8)
  # an effect well beyond the posterior spread still stands out
  big <- lapply(draws, function(z) { z[, X[, 2] == 1, 1] <- z[, X[, 2] == 1, 1] + 2; z })
  regs <- lapply(big, function(z) mrvi:::de_regression(z, design, tests = FALSE))
  noise <- mrvi:::posterior_spread(spread_moments(regs, design), design, D)
  z_big <- Reduce(`+`, big) / D
  expect_true(all(mrvi:::de_regression(z_big, design, noise = noise)$tests$g[, "p_value"] < 1e-4))
})

test_that("the fold-change threshold: Patnaik's noncentral F, TREAT's boundary, the plain test at 0", {
  # Patnaik's approximation against R's exact noncentral F where the latter is precise
  grid <- expand.grid(f = c(1, 2, 4, 8), df1 = c(1, 3.5, 30), df2 = c(14, 49, 420), ncp = c(0, 2, 10, 40))
  exact <- suppressWarnings(with(grid, pf(f, df1, df2, ncp = ncp, lower.tail = FALSE)))
  approx <- with(grid, mrvi:::noncentral_f_upper(f, df1, df2, ncp))
  ok <- exact > 1e-6
  expect_equal(approx[grid$ncp == 0], exact[grid$ncp == 0], tolerance = 1e-12)
  expect_lt(max(abs(log(approx[ok] / exact[ok]))), log(1.6))
  expect_lt(max(abs(approx - exact)), 0.05)
  # and it keeps its precision where R's noncentral pf() bottoms out (~4e-10)
  expect_lt(mrvi:::noncentral_f_upper(100, 30, 420, 43), 1e-15)

  set.seed(6)
  n <- 5; S <- 16; L <- 4
  X <- cbind(1, rep(0:1, length.out = S))
  colnames(X) <- c("(Intercept)", "gb")
  design <- list(X = X, blocks = list(g = 2))
  z <- array(rnorm(n * S * L, sd = 0.05), c(n, S, L))
  z[, X[, 2] == 1, 1] <- z[, X[, 2] == 1, 1] + 1
  plain <- mrvi:::de_regression(z, design)$tests$g
  top <- list(g = c(0.05, 0.1, 0.2, 1, 0))  # each cell's largest |LFC|
  treat <- function(t) mrvi:::de_regression(z, design, largest_lfc = function(reg) top, lfc_threshold = t)$tests$g
  expect_equal(treat(0)[, "p_value"], plain[, "p_value"])
  expect_equal(unname(treat(0.1)[, "max_lfc"]), top$g)
  p <- treat(0.1)[, "p_value"]
  # below or at the boundary: p >= ~0.5; far beyond it: as small as the plain test's
  expect_true(all(p[c(1, 2, 5)] > 0.4))
  expect_equal(p[5], 1)
  expect_lt(p[4], 1e-6)
  expect_true(all(p >= plain[, "p_value"]))
  # the same p-value as the noncentral F with the effect scaled to the boundary
  f <- plain[, "statistic"]
  d1 <- unname(plain[3, "df1"])
  expect_equal(unname(p[3]), mrvi:::noncentral_f_upper(f[[3]], d1, unname(plain[3, "df2"]), d1 * f[[3]] / 4))
  # a larger threshold never gives a smaller p-value
  expect_true(all(treat(0.5)[, "p_value"] >= p))
})

test_that("the test is calibrated for independent normal errors in many dimensions", {
  set.seed(4)
  S <- 12
  X <- cbind(1, rep(0:1, length.out = S))
  colnames(X) <- c("(Intercept)", "gb")
  design <- list(X = X, blocks = list(g = 2))
  sd_dims <- c(3, 2, 1, rep(0.3, 7)) # unequal variances across 10 dimensions
  z <- array(rnorm(2000 * S * 10), c(2000, S, 10)) * rep(sd_dims, each = 2000 * S)
  p <- mrvi:::de_regression(z, design)$tests$g[, "p_value"]
  # the tails are right; mid-range p-values are within a few percent (a
  # two-moment approximation, see ?differentialExpression). Seeds 4-10: 5.1-6.4% of
  # p < 0.05, 1.05-1.45% of p < 0.01, Kolmogorov-Smirnov distance 0.040-0.049
  expect_lt(abs(mean(p < 0.05) - 0.05), 0.02)
  expect_lt(abs(mean(p < 0.01) - 0.01), 0.008)
  expect_lt(unname(ks.test(p, "punif")$statistic), 0.06)
})

test_that("planted covariate effects are recovered with their sign and size", {
  a <- covariates_fit()
  fit <- a$fit
  truth <- S4Vectors::metadata(a$sce)$truth$effects
  type <- fit@cell_data$cell_type
  set.seed(1)
  cells <- c(sample(which(type == "type1"), 60), sample(which(type == "type2"), 60))
  de <- differentialExpression(fit, c("cov1", "cov2", "cov3"), cells = cells, mc_samples = 5, lfc = TRUE)
  expect_s4_class(de, "DataFrame")
  expect_equal(nrow(de), 3 * length(cells))
  expect_equal(de$q_value[de$covariate == "cov1"], p.adjust(de$p_value[de$covariate == "cov1"], "BH"))
  cov1 <- de[de$covariate == "cov1", ]
  affected <- seq_len(60)
  expect_gte(mean(cov1$q_value[affected] < 0.05), 0.9)
  expect_gt(mean(cov1$effect_size[affected]), 2 * mean(cov1$effect_size[-affected]))
  lfc <- S4Vectors::metadata(de)$lfc
  expect_named(lfc, c("cov1yes", "cov2yes", "cov3yes"))
  expect_equal(dim(lfc$cov1yes), c(length(cells), length(fit@genes)))
  for (k in c("cov1", "cov2")) {
    genes <- match(truth[[k]]$genes, fit@genes)
    # the planted fold change, relative to the other genes after normalisation
    share <- length(genes) / length(fit@genes)
    planted <- log2(truth[[k]]$strength / (1 + share * (truth[[k]]$strength - 1)))
    # over 5 seeds (tools/seed_sweep.sh): got / planted 0.41-0.86, other genes
    # <= 0.13, lfc_prob 0.81-1.00 on planted genes and <= 0.10 on the others
    got <- mean(lfc[[paste0(k, "yes")]][affected, genes])
    expect_gt(got, 0.3 * planted)
    expect_lt(got, 1.5 * planted)
    expect_lt(abs(mean(lfc[[paste0(k, "yes")]][affected, -genes])), 0.2)
    prob <- S4Vectors::metadata(de)$lfc_prob[[paste0(k, "yes")]]
    expect_gt(mean(prob[affected, genes]), 0.7)
    expect_lt(mean(prob[affected, -genes]), 0.15)
  }
})

test_that("p-values are calibrated when the covariate is permuted across samples", {
  a <- covariates_fit()
  fit <- a$fit
  type <- fit@cell_data$cell_type
  S <- length(fit@samples)
  set.seed(2)
  cells <- c(sample(which(type == "type1"), 20), sample(which(type == "type2"), 20))
  p <- replicate(150, {
    cov <- data.frame(sample = fit@samples, g = sample(rep(c("a", "b"), length.out = S)), x = rnorm(S))
    de <- differentialExpression(fit, cov, cells = cells, mc_samples = 0, normalize = FALSE, lfc_threshold = 0)
    cbind(g = de$p_value[de$covariate == "g"], x = de$p_value[de$covariate == "x"])
  }, simplify = FALSE)
  p <- do.call(rbind, p)
  # over 5 seeds: at most 2.0% / 7.6% / 11.5% of p below 0.01 / 0.05 / 0.1 (binary g),
  # 1.6% / 5.3% / 10.0% (numeric x); at least 4.3% below 0.05
  for (j in c("g", "x")) {
    for (alpha in c(0.01, 0.05, 0.1)) expect_lt(mean(p[, j] < alpha), alpha * 2 + 0.005)
    expect_gt(mean(p[, j] < 0.05), 0.025)
  }
  # a continuous covariate gives continuous permutation distributions: uniform
  one_cell <- p[seq(1, nrow(p), by = length(cells)), "x"]
  expect_gt(ks.test(one_cell, "punif")$p.value, 0.01)
})

test_that("max_lfc is the largest |LFC| over genes, and the threshold uses it", {
  a <- covariates_fit()
  fit <- a$fit
  de <- differentialExpression(fit, c("cov1", "cov2"), cells = 1:30, mc_samples = 0, lfc = TRUE, normalize = FALSE)
  lfc <- S4Vectors::metadata(de)$lfc
  expect_equal(de$max_lfc[de$covariate == "cov1"], unname(apply(abs(lfc$cov1yes), 1, max)))
  expect_equal(de$max_lfc[de$covariate == "cov2"], unname(apply(abs(lfc$cov2yes), 1, max)))
  plain <- differentialExpression(fit, c("cov1", "cov2"), cells = 1:30, mc_samples = 0, normalize = FALSE, lfc_threshold = 0)
  expect_equal(plain$statistic, de$statistic)
  expect_true(all(de$p_value >= plain$p_value - 1e-12))
  expect_error(differentialExpression(fit, "cov1", lfc_threshold = -0.1), "`lfc_threshold`", class = "mrvi_error")
  expect_error(differentialExpression(fit, "cov1", lfc_threshold = NA), "`lfc_threshold`", class = "mrvi_error")
})

test_that("masking inadmissible samples drops them from the cell's regression", {
  a <- covariates_fit()
  fit <- a$fit
  mask <- matrix(TRUE, 4, length(fit@samples), dimnames = list(NULL, fit@samples))
  mask[2, 1:3] <- FALSE
  mask[3, 1:9] <- FALSE # 3 samples left: too few for intercept + cov1 + cov2
  de <- differentialExpression(fit, c("cov1", "cov2"), cells = 1:4, mc_samples = 0, normalize = FALSE, admissible = mask, lfc = TRUE)
  cov1 <- de[de$covariate == "cov1", ]
  expect_equal(cov1$n_samples, c(12, 9, 3, 12))
  expect_true(is.na(cov1$p_value[3]))
  lfc <- S4Vectors::metadata(de)$lfc$cov1yes
  expect_true(all(is.na(lfc[3, ])))
  expect_true(all(is.finite(lfc[c(1, 2, 4), ])))
  # the masked cell equals a regression on its admissible samples only
  z <- counterfactualLatent(fit, cells = 2)[1, 4:12, ]
  tab <- as.data.frame(fit@sample_table)[4:12, ]
  full <- lm(z ~ cov1 + cov2, tab)
  expect_equal(unname(S4Vectors::metadata(de)$beta$cov1yes[2, ]), unname(coef(full)["cov1yes", ]), tolerance = 1e-6)
  # admissible = TRUE computes the mask with admissibility()'s defaults
  auto <- differentialExpression(fit, "cov1", cells = 1:30, mc_samples = 0, normalize = FALSE, admissible = TRUE)
  expect_equal(auto$n_samples, unname(rowSums(admissibility(fit, cells = 1:30)$admissible)))
  expect_equal(cov1$statistic[c(1, 4)],
               differentialExpression(fit, c("cov1", "cov2"), cells = c(1, 4), mc_samples = 0, normalize = FALSE)$statistic[1:2])
})

test_that("each draw's regression from the projected counterfactuals is de_regression() on that draw's z", {
  set.seed(2)
  counts <- small_counts(n_genes = 30, n_cells = 120)
  samples <- rep(sprintf("s%02d", 1:12), length.out = 120)
  fit <- mrvi(counts, sample = samples, flavour = "attention", max_epochs = 3, seed = 1, verbose = FALSE)
  S <- length(fit@samples)
  cov <- data.frame(sample = fit@samples, g = rep(c("a", "b"), length.out = S), x = rnorm(S))
  design <- mrvi:::de_design(fit, cov, NULL)
  mask <- matrix(TRUE, 5, S)
  mask[c(2, 5), 1:3] <- FALSE  # one pattern shared by two cells
  mask[3, 1:9] <- FALSE        # 3 samples: too few for the design
  maps <- mrvi:::regression_maps(design, mask, 5)
  expect_equal(dim(maps$maps), c(4, S, 3))
  expect_equal(maps$of_cell, c(1, 2, 3, 1, 2))
  draws <- c(0, 2, 5)
  cf <- mrvi:::projected_counterfactuals(fit, 1:5, draws, 3, maps, want_mean = TRUE, blocks = design$blocks)
  zs <- lapply(draws, function(d) mrvi:::counterfactual_z(fit, 1:5, seq_len(S), d, 3))
  for (j in seq_along(draws)) {
    want <- mrvi:::de_regression(array(zs[[j]], c(5, S, mrvi:::z_dim(fit))), design, mask, tests = FALSE)
    got <- mrvi:::projected_regression(cf$projections, j, colnames(design$X)[-1])
    expect_equal(got$beta, want$beta, tolerance = 1e-6)
    expect_true(all(is.na(got$beta$gb[3, ])))
    expect_equal(got$z_bar, want$z_bar, tolerance = 1e-6)
  }
  expect_equal(cf$mean_z, array(Reduce(`+`, zs) / 3, dim(cf$mean_z)), tolerance = 1e-12)
  # the spread's quadratic forms, vectorised over cells, against one cell at a time
  regs <- lapply(seq_along(draws), function(j) mrvi:::projected_regression(cf$projections, j, colnames(design$X)[-1]))
  # accumulated in Rust as each draw's z is made, against the draws' regressions
  expect_equal(cf$spread, spread_moments(regs, design, mask), tolerance = 1e-8)
  noise <- mrvi:::posterior_spread(cf$spread, design, length(draws))
  expect_equal(names(noise$blocks), c("g", "x"))
  for (i in c(1, 2, 4, 5)) {
    keep <- mask[i, ]
    X <- design$X[keep, ]
    b <- t(vapply(seq_along(draws), function(j) mrvi:::projected_regression(cf$projections, j, "gb")$beta$gb[i, ],
                  numeric(mrvi:::z_dim(fit))))
    psi <- cov(b) * 2 / solve(crossprod(X))[2, 2]
    expect_equal(noise$blocks$g$trace[i], sum(diag(psi)) / 2, tolerance = 1e-8)
    expect_equal(noise$blocks$g$dim[i], max(1, sum(diag(psi))^2 / sum(psi^2)), tolerance = 1e-8)
  }
  expect_true(is.na(noise$blocks$g$trace[3]))
})

test_that("draws do not depend on chunk_size and a seed reproduces them", {
  a <- covariates_fit()
  fit <- a$fit
  one <- differentialExpression(fit, "cov1", cells = 1:30, mc_samples = 3, lfc = TRUE, chunk_size = 7)
  two <- differentialExpression(fit, "cov1", cells = 1:30, mc_samples = 3, lfc = TRUE, chunk_size = 30)
  expect_equal(one$statistic, two$statistic)
  # the decoder runs in float32 on blocks of different sizes
  expect_equal(S4Vectors::metadata(one)$lfc, S4Vectors::metadata(two)$lfc, tolerance = 1e-4)
})

test_that("bad covariates get errors that name the fix", {
  a <- covariates_fit()
  fit <- a$fit
  expect_error(differentialExpression(fit, "nope"), "\"nope\" is not a column of the sample table.*Sample covariates")
  # a cell-level column is said to vary within samples
  expect_error(differentialExpression(fit, "cell_type"), "\"cell_type\" varies within samples")
  expect_error(differentialExpression(fit, data.frame(x = 1:12)), "sample")
  expect_error(differentialExpression(fit, data.frame(sample = fit@samples[-1], x = 1:11)), "no row")
  expect_error(differentialExpression(fit, data.frame(sample = fit@samples, x = 1)), "constant")
  expect_error(differentialExpression(fit, data.frame(sample = fit@samples, x = c(NA, 1:11))), "NA")
  expect_error(differentialExpression(fit, data.frame(sample = fit@samples, g = as.character(1:12))), "samples cannot")
  expect_error(differentialExpression(fit, data.frame(sample = fit@samples, x = 1:12, y = 2 * (1:12))), "collinear")
  expect_error(differentialExpression(fit, data.frame(sample = fit@samples, g = rep(c("", "a", "b"), 4))),
               "empty value", class = "mrvi_error")
  # a covariate nested in another is named; few residual degrees of freedom warn
  donor <- rep(paste0("d", 1:6), each = 2)
  nested <- data.frame(sample = fit@samples, donor = donor, sex = rep(c("F", "M", "F", "M", "F", "M"), each = 2))
  expect_error(differentialExpression(fit, nested), "sex within donor", class = "mrvi_error")
  # a covariate nested in a sample column outside the design: a hint
  with_donor <- fit
  with_donor@sample_table$donor <- donor[match(fit@sample_table$sample, fit@samples)]
  expect_message(differentialExpression(with_donor, data.frame(sample = fit@samples, sex = nested$sex), cells = 1:3, verbose = FALSE),
                 "covariate \"sex\" is constant within each level of sample column \"donor\"", class = "mrvi_nested_covariate")
  with_donor@sample_table$clinic <- with_donor@sample_table$donor
  expect_message(differentialExpression(with_donor, data.frame(sample = fit@samples, sex = nested$sex), cells = 1:3, verbose = FALSE),
                 "sample columns \"donor\" and \"clinic\"", class = "mrvi_nested_covariate")
  few <- data.frame(sample = fit@samples, g = as.character(c(1:10, 1, 2)))
  expect_warning(differentialExpression(fit, few, cells = 1:3, verbose = FALSE), "leave 2 residual degrees",
                 class = "mrvi_few_residual_df")
  expect_error(differentialExpression(fit, "cov1", delta = -1), "delta")
  expect_error(differentialExpression(fit, "cov1", admissible = matrix(TRUE, 2, 2)), "admissible")
})

test_that("covariates with infinite or huge values, repeated rows, lfc_file and draws are checked up front", {
  fit <- small_fit()$fit
  cov <- function(...) data.frame(sample = fit@samples, ...)
  expect_error(differentialExpression(fit, cov(age = c(Inf, 1:4)), cells = 1:3),
               "`covariates`: covariate age has an infinite value for sample \"s01\"", class = "mrvi_error")
  # standardising is scale-free: values near the largest double give the same
  # test (sd() overflowed to Inf, and the error said "collinear")
  v <- c(3, 1, 4, 1, 5)
  small <- differentialExpression(fit, cov(x = v), cells = 1:3, mc_samples = 0, normalize = FALSE)
  huge <- differentialExpression(fit, cov(x = v * 1e307), cells = 1:3, mc_samples = 0, normalize = FALSE)
  expect_equal(huge$p_value, small$p_value)
  # a sample's rows must agree; repeated identical rows are harmless
  two <- data.frame(sample = c(fit@samples, "s01"), g = c("a", "a", "b", "b", "b", "a"))
  expect_equal(differentialExpression(fit, two, cells = 1:3, mc_samples = 0, normalize = FALSE)$p_value,
               differentialExpression(fit, two[1:5, ], cells = 1:3, mc_samples = 0, normalize = FALSE)$p_value)
  two$g[6] <- "b"
  expect_error(differentialExpression(fit, two, cells = 1:3), "`covariates` has conflicting rows for sample \"s01\"",
               class = "mrvi_error")
  g <- cov(g = c("a", "a", "b", "b", "b"))
  expect_error(differentialExpression(fit, g, cells = 1:3, lfc = TRUE, lfc_file = file.path(tempfile(), "x.h5")),
               "`lfc_file` cannot be created: its folder", class = "mrvi_error")
  expect_error(differentialExpression(fit, g, cells = 1:3, lfc_file = tempfile(fileext = ".h5")),
               "`lfc_file` is given but `lfc` is `FALSE`", class = "mrvi_error")
  # draws whose bookkeeping alone passes the memory cap are refused before any work
  expect_error(differentialExpression(fit, g, cells = 1:3, mc_samples = 1e8),
               "`mc_samples` = 100000000 would allocate", class = "mrvi_error")
  # with lfc, every draw's projections of the chunk's cells count too
  old <- options(mrvi.max_bytes = 1e6)
  on.exit(options(old))
  expect_error(differentialExpression(fit, g, cells = 1:3, mc_samples = 2000, lfc = TRUE),
               "`mc_samples` = 2000 would allocate .*`chunk_size`", class = "mrvi_error")
})

test_that("results are written back into SingleCellExperiment and Seurat objects", {
  a <- covariates_fit()
  fit <- a$fit
  de <- differentialExpression(fit, c("cov1", "cov2"), cells = 11:40, mc_samples = 0, normalize = FALSE)
  sce <- addMrVI(a$sce, fit, differential = de)
  expect_equal(sce$mrvi_de_cov1_q[11:40], de$q_value[de$covariate == "cov1"])
  expect_equal(sce$mrvi_de_cov2_effect[11:40], de$effect_size[de$covariate == "cov2"])
  expect_equal(sce$mrvi_de_cov2_max_lfc[11:40], de$max_lfc[de$covariate == "cov2"])
  expect_true(all(is.na(sce$mrvi_de_cov1_q[-(11:40)])))
  skip_if_not_installed("SeuratObject")
  so <- SeuratObject::CreateSeuratObject(counts = SummarizedExperiment::assay(a$sce, "counts"))
  so <- addMrVI(so, fit, differential = de)
  expect_equal(so$mrvi_de_cov1_q[11:40], de$q_value[de$covariate == "cov1"], ignore_attr = TRUE)
})

test_that("log fold changes stream into an HDF5 file and equal the in-memory ones", {
  skip_if_not_installed("HDF5Array")
  a <- covariates_fit()
  fit <- a$fit
  f <- tempfile(fileext = ".h5")
  on.exit(unlink(f))
  mem <- differentialExpression(fit, c("cov1", "cov2"), cells = 1:25, mc_samples = 2, normalize = FALSE, lfc = TRUE, chunk_size = 25)
  h5 <- differentialExpression(fit, c("cov1", "cov2"), cells = 1:25, mc_samples = 2, normalize = FALSE, lfc = TRUE, chunk_size = 25,
                               lfc_file = f)
  lfc <- S4Vectors::metadata(h5)$lfc$cov2yes
  expect_s4_class(lfc, "DelayedArray")
  expect_true(file.exists(f))
  expect_equal(as.matrix(lfc), S4Vectors::metadata(mem)$lfc$cov2yes)
  expect_equal(as.matrix(S4Vectors::metadata(h5)$lfc_prob$cov1yes), S4Vectors::metadata(mem)$lfc_prob$cov1yes)
  expect_equal(h5$statistic, mem$statistic)
  # blocks of cells are written where they belong
  h5b <- differentialExpression(fit, c("cov1", "cov2"), cells = 1:25, mc_samples = 2, normalize = FALSE, lfc = TRUE, chunk_size = 7,
                                lfc_file = tempfile(fileext = ".h5"))
  expect_equal(as.matrix(S4Vectors::metadata(h5b)$lfc$cov1yes), S4Vectors::metadata(mem)$lfc$cov1yes, tolerance = 1e-4)
  expect_error(differentialExpression(fit, "cov1", cells = 1:5, lfc = TRUE, lfc_file = f), "does not exist.*delete")
  # a "/" in a coefficient's name is escaped in the dataset's name; a failed run leaves no file
  slash <- data.frame(sample = fit@samples, g = factor(ifelse(fit@sample_table$cov1 == "yes", "CD4/CD8", "naive"),
                                                        levels = c("naive", "CD4/CD8")))
  f2 <- tempfile(fileext = ".h5")
  h5s <- differentialExpression(fit, slash, cells = 1:5, mc_samples = 2, normalize = FALSE, lfc = TRUE, lfc_file = f2)
  expect_true("lfc_gCD4%2FCD8" %in% rhdf5::h5ls(f2)$name)
  expect_equal(dim(S4Vectors::metadata(h5s)$lfc[["gCD4/CD8"]]), c(5L, length(fit@genes)))
  f3 <- tempfile(fileext = ".h5")
  expect_error(differentialExpression(fit, slash, cells = 1:5, mc_samples = 1e8, lfc = TRUE, lfc_file = f3), "mc_samples",
               class = "mrvi_error")
  expect_false(file.exists(f3))
  old <- options(mrvi.max_bytes = 1000)
  on.exit(options(old), add = TRUE)
  expect_error(differentialExpression(fit, "cov1", cells = 1:50, lfc = TRUE), "lfc_file")
})

test_that("sample-table covariates are read by sample name, whatever the order of the table's rows", {
  fit <- small_fit()$fit
  grp <- stats::setNames(rep(c("a", "b"), length.out = length(fit@samples)), fit@samples)
  fit@sample_table$grp <- grp[fit@sample_table$sample]
  reordered <- fit
  reordered@sample_table <- fit@sample_table[rev(seq_len(nrow(fit@sample_table))), ]
  expect_true(validObject(reordered))
  by_name <- differentialExpression(fit, data.frame(sample = names(grp), grp = grp), cells = 1:5, mc_samples = 3)
  expect_equal(differentialExpression(reordered, "grp", cells = 1:5, mc_samples = 3), by_name)
  # one covariate as a vector named by sample, as cellAssociation() takes it
  # (its values were read as column names: "`covariates` names "a" and "b" more than once")
  as_vector <- differentialExpression(fit, rev(grp), cells = 1:5, mc_samples = 3)
  expect_equal(as_vector$statistic, by_name$statistic)
  expect_equal(unique(as_vector$covariate), "covariate")
  expect_error(differentialExpression(fit, "grp", cells = 1:5, mc_samples = 3, verbose = NA), "`verbose`",
               class = "mrvi_error")
  old <- options(cli.progress_show_after = 0)
  on.exit(options(old))
  expect_no_message(differentialExpression(fit, "grp", cells = 1:6, mc_samples = 3, chunk_size = 2, verbose = FALSE))
  # a table that does not name the fit's samples is not a fit's
  broken <- fit
  broken@sample_table$sample[1] <- "nobody"
  expect_error(validObject(broken), "does not name @samples")
})

test_that("a text covariate's reference level is the first in byte order, whatever the locale", {
  fit <- small_fit()$fit
  g <- rep(c("b", "B", "a"), length.out = length(fit@samples))
  old <- Sys.getlocale("LC_COLLATE")
  on.exit(Sys.setlocale("LC_COLLATE", old))
  for (locale in c("C", "C.UTF-8")) {
    if (!nzchar(suppressWarnings(Sys.setlocale("LC_COLLATE", locale)))) next
    de <- without_power_warnings(differentialExpression(fit, data.frame(sample = fit@samples, g = g), cells = 1:3, mc_samples = 3))
    expect_named(S4Vectors::metadata(de)$beta, c("ga", "gb"))
  }
})

test_that("differentialExpression(admissible = TRUE) computes the mask under the call's seed and BPPARAM", {
  fit <- large_sample_fit()  # sample A has more cells than admissibility()'s reference subsample
  cells <- seed_dependent_cells(fit)
  expect_gt(length(cells), 0)
  cov <- data.frame(sample = fit@samples, g = c("a", "a", "b", "b", "b"))
  de <- function(seed, ...) {
    differentialExpression(fit, cov, cells = cells, mc_samples = 0, normalize = FALSE, admissible = TRUE, seed = seed,
                           verbose = FALSE, ...)
  }
  for (seed in c(1, 7)) {
    expect_equal(de(seed)$n_samples, unname(rowSums(admissibility(fit, cells = cells, seed = seed)$admissible)))
  }
  expect_false(identical(de(1)$n_samples, de(7)$n_samples))
  # BPPARAM reaches admissibility() (one block of cells here: nothing is started)
  mc <- BiocParallel::MulticoreParam(2)
  n_mask <- multicore_spreads(admissibility(fit, cells = cells, seed = 7, BPPARAM = mc))
  n_plain <- multicore_spreads(differentialExpression(fit, cov, cells = cells, mc_samples = 0, normalize = FALSE,
                                                      seed = 7, verbose = FALSE, BPPARAM = mc))
  expect_gt(n_mask, 0)
  expect_equal(multicore_spreads(de(7, BPPARAM = mc)), n_plain + n_mask)
})

test_that("differentialExpression() reads an NA level as NA and names a sample missing from a named covariate", {
  fit <- small_fit()$fit
  s <- fit@samples
  expect_error(differentialExpression(fit, stats::setNames(c("a", "a", "b", "b"), s[1:4]), cells = 1:2, mc_samples = 0,
                                      normalize = FALSE, verbose = FALSE),
               "named by sample but has no value for sample \"s05\"", class = "mrvi_error")
  tab <- data.frame(sample = s, arm = addNA(factor(c("a", "a", "b", NA, "b"))))
  expect_error(differentialExpression(fit, tab, cells = 1:2, mc_samples = 0, normalize = FALSE, verbose = FALSE),
               "covariate arm has NA for sample \"s04\"", class = "mrvi_error")
  # a vector named by sample may hold other samples (of the whole study), as
  # cellAssociation() reads it
  arm <- stats::setNames(c("a", "a", "b", "b", "a"), s)
  de <- function(covariates, cells = 1:2) {
    differentialExpression(fit, covariates, cells = cells, mc_samples = 0, normalize = FALSE, verbose = FALSE)
  }
  expect_identical(de(c(arm, s99 = "b")), de(arm))
  # one value per sample without names is not a list of columns
  expect_error(de(unname(arm)), "one value per sample without names.*setNames", class = "mrvi_error")
  expect_error(de(c(1, 2, 1, 2, 1)), "one value per sample without names", class = "mrvi_error")
  # a covariate column without a name
  tab <- data.frame(sample = s, arm = arm, x = 1:5)
  names(tab)[3] <- ""
  expect_error(de(tab), "column without a name", class = "mrvi_error")
  names(tab)[3] <- NA
  expect_error(de(tab), "column without a name", class = "mrvi_error")
  # one cell: its row is not named after a statistic
  expect_false(any(grepl("statistic", rownames(de(arm, cells = 3)))))
  expect_error(de(arm, cells = c(3, 3, 4)), "selects 1 cell more than once", class = "mrvi_error")
})
