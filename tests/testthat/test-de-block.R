# differentialExpression(block =): a donor-level covariate tested on the
# blocks' mean z, a paired one within blocks (R/differential-expression.R:
# block_design(), unit_transform()).

# A design as de_design() makes it, for a table over samples and a block factor.
blocked_design <- function(tab, block) {
  X <- model.matrix(~ ., tab)
  colnames(X)[1] <- "(Intercept)"
  blocks <- split(seq_len(ncol(X))[-1], attr(X, "assign")[-1])
  names(blocks) <- names(tab)
  attr(X, "assign") <- attr(X, "contrasts") <- NULL
  design <- list(X = X, blocks = blocks)
  if (is.null(block)) design else mrvi:::block_design(design, tab, factor(block), NULL)
}

test_that("with one latent dimension, block is lm()'s F test on the blocks' means or with the block as a factor", {
  set.seed(5)
  donor <- rep(sprintf("d%d", 1:7), c(2, 3, 2, 2, 3, 2, 2))  # unequal blocks
  S <- length(donor)
  sex <- c(d1 = "f", d2 = "m", d3 = "f", d4 = "m", d5 = "f", d6 = "m", d7 = "m")[donor]
  treated <- unlist(lapply(table(donor)[unique(donor)], function(n) rep(c("no", "yes"), length.out = n)))
  z <- array(rnorm(3 * S) + rep(rnorm(7)[as.integer(factor(donor))], each = 3), c(3, S, 1))
  z[2, , 1] <- z[2, , 1] + 2 * (sex == "m") + 1.5 * (treated == "yes")

  between <- blocked_design(data.frame(sex = sex), donor)
  expect_identical(between$block_design, "block means")
  res <- mrvi:::de_regression(z, between)
  within <- blocked_design(data.frame(treated = treated), donor)
  expect_identical(within$block_design, "within blocks")
  res_w <- mrvi:::de_regression(z, within)
  for (i in 1:3) {
    y <- z[i, , 1]
    means <- tapply(y, donor, mean)
    sex_d <- sex[match(names(means), donor)]
    a <- anova(lm(means ~ 1), lm(means ~ sex_d))
    expect_equal(unname(res$tests$sex[i, "statistic"]), a$F[2], tolerance = 1e-10)
    expect_equal(unname(res$tests$sex[i, "p_value"]), a$`Pr(>F)`[2], tolerance = 1e-10)
    expect_equal(res$beta$sexm[i, 1], unname(coef(lm(means ~ sex_d))[2]), tolerance = 1e-10)
    expect_equal(res$z_bar[i, 1], mean(means), tolerance = 1e-12)
    paired <- lm(y ~ factor(donor) + treated)
    a <- anova(lm(y ~ factor(donor)), paired)
    expect_equal(unname(res_w$tests$treated[i, "statistic"]), a$F[2], tolerance = 1e-10)
    expect_equal(unname(res_w$tests$treated[i, "p_value"]), a$`Pr(>F)`[2], tolerance = 1e-10)
    expect_equal(unname(res_w$tests$treated[i, "df2"]), S - 7 - 1)
    expect_equal(res_w$beta$treatedyes[i, 1], unname(coef(paired)["treatedyes"]), tolerance = 1e-10)
    expect_equal(res_w$z_bar[i, 1], mean(y), tolerance = 1e-12)
  }
  expect_equal(unname(res$tests$sex[, "n_samples"]), rep(S, 3))
  # every sample its own block is no block
  own <- blocked_design(data.frame(sex = sex), seq_len(S))
  expect_identical(mrvi:::de_regression(z, own), mrvi:::de_regression(z, blocked_design(data.frame(sex = sex), NULL)))
})

test_that("a donor-level covariate is calibrated with block and not without it", {
  # 8 donors x 3 samples, donors differ (sd 1) more than their samples (sd 0.5),
  # the covariate splits the donors 4 / 4 and has no effect. Seeds 1-7: with
  # block 5.1-6.1% of p < 0.05 (KS distance 0.027-0.051), without block
  # 34-39%; a null treatment within donors, with block: 4.5-5.4% (KS 0.036-0.049).
  set.seed(6)
  donor <- rep(sprintf("d%d", 1:8), each = 3)
  arm <- rep(c("a", "b"), each = 12)
  n <- 2000
  L <- 10
  sd_dims <- c(3, 2, 1, rep(0.3, 7))
  donor_effect <- array(rnorm(n * 8 * L), c(n, 8, L))[, as.integer(factor(donor)), ]
  z <- (donor_effect + 0.5 * array(rnorm(n * 24 * L), c(n, 24, L))) * rep(sd_dims, each = n * 24)
  p_block <- mrvi:::de_regression(z, blocked_design(data.frame(arm = arm), donor))$tests$arm[, "p_value"]
  p_free <- mrvi:::de_regression(z, blocked_design(data.frame(arm = arm), NULL))$tests$arm[, "p_value"]
  expect_lt(abs(mean(p_block < 0.05) - 0.05), 0.02)
  expect_lt(unname(ks.test(p_block, "punif")$statistic), 0.06)
  expect_gt(mean(p_free < 0.05), 0.3)
  treated <- rep(c("x", "y", "y"), 8)
  p_within <- mrvi:::de_regression(z, blocked_design(data.frame(treated = treated), donor))$tests$treated[, "p_value"]
  expect_lt(abs(mean(p_within < 0.05) - 0.05), 0.02)
  expect_lt(unname(ks.test(p_within, "punif")$statistic), 0.06)
})

test_that("the draws' linear maps equal the regression with block, masks included", {
  set.seed(7)
  donor <- rep(sprintf("d%d", 1:6), each = 2)
  S <- length(donor)
  L <- 3
  for (case in list(list(tab = data.frame(g = rep(c("a", "b"), each = 6)), mode = "block means"),
                    list(tab = data.frame(g = rep(c("a", "b"), 6), x = rnorm(S)), mode = "within blocks"))) {
    design <- blocked_design(case$tab, donor)
    expect_identical(design$block_design, case$mode)
    z <- array(rnorm(5 * S * L), c(5, S, L))
    mask <- matrix(TRUE, 5, S)
    mask[2, 1:2] <- FALSE  # a whole block out
    mask[4, 3] <- FALSE    # one sample of a block out
    mask[5, 1:9] <- FALSE  # too few for the design
    maps <- mrvi:::regression_maps(design, mask, 5)
    want <- mrvi:::de_regression(z, design, mask, tests = FALSE)
    coefs <- colnames(design$X)[-1]
    for (i in 1:5) {
      M <- maps$maps[, , maps$of_cell[i]]
      got <- M %*% z[i, , ]
      for (k in seq_along(coefs)) expect_equal(got[k + 1, ], want$beta[[coefs[k]]][i, ], tolerance = 1e-10)
      if (i != 5) expect_equal(got[nrow(got), ], want$z_bar[i, ], tolerance = 1e-10)
    }
    expect_true(all(is.na(want$beta[[1]][5, ])))
    # a cell with a whole block out is the regression on the other blocks
    kept <- blocked_design(case$tab[-(1:2), , drop = FALSE], donor[-(1:2)])
    alone <- mrvi:::de_regression(z[2, -(1:2), , drop = FALSE], kept, tests = FALSE)
    expect_equal(want$beta[[1]][2, ], alone$beta[[1]][1, ], tolerance = 1e-10)
  }
})

test_that("differentialExpression(block =) on a fit: the blocks' means, metadata, and refusals that name the fix", {
  fit <- covariates_fit()$fit
  # cov1 is constant within these donors, and varies within those
  between <- c(s01 = "d1", s02 = "d1", s03 = "d2", s07 = "d2", s08 = "d3", s11 = "d3",
               s04 = "d4", s05 = "d4", s06 = "d5", s09 = "d5", s10 = "d6", s12 = "d6")
  paired <- c(s01 = "p1", s04 = "p1", s02 = "p2", s05 = "p2", s03 = "p3", s06 = "p3",
              s07 = "p4", s09 = "p4", s08 = "p5", s10 = "p5", s11 = "p6", s12 = "p6")
  de <- differentialExpression(fit, "cov1", cells = 1:6, mc_samples = 0, normalize = FALSE, block = between, verbose = FALSE)
  expect_identical(S4Vectors::metadata(de)$block_design, "block means")
  expect_identical(as.character(S4Vectors::metadata(de)$block[fit@samples]), unname(between[fit@samples]))
  expect_equal(de$df2 / de$df1, rep(4, 6))  # 6 donors less the intercept and cov1
  expect_equal(de$n_samples, rep(12, 6))
  # independently: lm() on the donors' mean counterfactual z
  z <- counterfactualLatent(fit, cells = 3)[1, , ]
  donors <- between[fit@samples]
  means <- apply(z, 2, function(v) tapply(v, donors, mean))
  cov1 <- as.character(fit@sample_table$cov1)[match(rownames(means), donors)]
  expect_equal(unname(S4Vectors::metadata(de)$beta$cov1yes[3, ]), unname(coef(lm(means ~ cov1))["cov1yes", ]),
               tolerance = 1e-5)
  # the posterior-noise floor and the LFCs go through the same maps
  expect_no_error(floored <- differentialExpression(fit, "cov1", cells = 1:3, mc_samples = 4, block = between,
                                                   lfc = TRUE, verbose = FALSE))
  expect_true(all(is.finite(floored$p_value)))
  w <- differentialExpression(fit, "cov1", cells = 1:3, mc_samples = 0, normalize = FALSE, block = paired, verbose = FALSE)
  expect_identical(S4Vectors::metadata(w)$block_design, "within blocks")
  expect_equal(w$df2 / w$df1, rep(5, 3))  # 12 samples less 2 columns and 5 blocks' degrees of freedom
  # a donor-level covariate with one discordant sample is tested within blocks: said
  discordant <- setNames(as.character(fit@sample_table$cov1), fit@sample_table$sample)
  discordant["s02"] <- "no"
  expect_message(d1 <- differentialExpression(fit, discordant, cells = 1:2, mc_samples = 0, normalize = FALSE,
                                              block = between, verbose = FALSE),
                 "constant within 5 others", class = "mrvi_partial_blocks")
  expect_identical(S4Vectors::metadata(d1)$block_design, "within blocks")
  # a between-block and a within-block covariate in one call
  expect_error(differentialExpression(fit, c("cov1", "cov2"), cells = 1:2, block = between, verbose = FALSE),
               "covariate cov1 is constant within every block and cov2 varies within blocks", class = "mrvi_error")
  expect_error(differentialExpression(fit, "cov1", cells = 1:2, block = between[-1], verbose = FALSE),
               "block", class = "mrvi_error")
  two <- setNames(rep(c("d1", "d2"), each = 6), names(between))  # cov1's own grouping
  expect_error(differentialExpression(fit, "cov1", cells = 1:2, verbose = FALSE, block = two),
               "is the block itself", class = "mrvi_error")
  older <- fit
  older@sample_table$age <- ifelse(two[fit@sample_table$sample] == "d1", 30, 50)
  expect_error(differentialExpression(older, "age", cells = 1:2, verbose = FALSE, block = two),
               "2 blocks cannot test a design of 2 columns", class = "mrvi_error")
  # a design collinear within blocks: a level only in whole blocks
  lone <- fit
  lone@sample_table$g3 <- ifelse(paired[fit@sample_table$sample] == "p6", "c", as.character(fit@sample_table$cov1))
  expect_error(differentialExpression(lone, "g3", cells = 1:2, block = paired, verbose = FALSE),
               "collinear within blocks", class = "mrvi_error")
  # an NA level is NA; the block given as a covariate too
  na_level <- setNames(addNA(factor(replace(between, 3, NA))), names(between))
  expect_error(differentialExpression(fit, "cov1", cells = 1:2, block = na_level, verbose = FALSE),
               "no value for sample \"s03\"", class = "mrvi_error")
  with_donor <- fit
  with_donor@sample_table$donor <- unname(between[fit@sample_table$sample])
  expect_error(differentialExpression(with_donor, c("donor"), cells = 1:2, block = "donor", verbose = FALSE),
               "is the block itself", class = "mrvi_error")
  # a numeric donor-level covariate (one value per donor) is tested on the donors' means
  aged <- fit
  aged@sample_table$age <- c(d1 = 31, d2 = 45, d3 = 52, d4 = 38, d5 = 60, d6 = 27)[between[fit@sample_table$sample]]
  expect_identical(S4Vectors::metadata(differentialExpression(aged, "age", cells = 1:2, mc_samples = 0, normalize = FALSE,
                                                              block = between, verbose = FALSE))$block_design, "block means")
  # without block, a donor column nested in the covariate gets a hint towards it
  expect_message(differentialExpression(with_donor, "cov1", cells = 1:2, mc_samples = 0, normalize = FALSE, verbose = FALSE),
                 "give `block`", class = "mrvi_nested_covariate")
  expect_no_message(differentialExpression(with_donor, "cov1", cells = 1:2, mc_samples = 0, normalize = FALSE,
                                           block = "donor", verbose = FALSE))
})
