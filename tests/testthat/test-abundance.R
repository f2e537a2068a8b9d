abundance_fit <- local({
  cache <- NULL
  function() {
    if (is.null(cache)) {
      sim <- mrvi:::simulate_counts(n_cells = 2400, n_genes = 120, n_samples = 6, n_sites = 1,
                                    n_cell_types = 3, affected = integer(), seed = 9)
      grp <- setNames(rep(c("a", "b"), 3), levels(sim$sample))
      # type3 is enriched in group a (90% of its cells in group-b samples removed);
      # sample s01 has no type3 cell at all
      set.seed(1)
      in_b <- grp[as.character(sim$sample)] == "b"
      drop <- (sim$cell_type == "type3" & in_b & runif(length(in_b)) < 0.9) |
        (sim$cell_type == "type3" & sim$sample == "s01")
      keep <- !drop
      fit <- mrvi(sim$counts[, keep], flavour = "linear", sample = sim$sample[keep], labels = sim$cell_type[keep],
                  max_epochs = 80, seed = fit_seed(2), verbose = FALSE)
      cache <<- list(fit = fit, grp = grp, type = sim$cell_type[keep])
    }
    cache
  }
})

test_that("differential abundance points to the enriched state", {
  a <- abundance_fit()
  da <- differentialAbundance(a$fit, a$grp)
  expect_s4_class(da, "DataFrame")
  expect_true(all(c("log_q_a", "log_q_b", "log_ratio_a", "log_ratio_b") %in% names(da)))
  expect_equal(da$log_ratio_a, -da$log_ratio_b, tolerance = 1e-8)
  enriched <- a$type == "type3"
  # AUC of log_ratio_a for type3 cells against the others
  r <- rank(da$log_ratio_a)
  auc <- (sum(r[enriched]) - sum(enriched) * (sum(enriched) + 1) / 2) / (sum(enriched) * sum(!enriched))
  expect_gt(auc, 0.8)  # simulation seeds 1-5 and 9: 0.85-0.89
})

test_that("admissibility flags cells of a type absent from a sample", {
  a <- abundance_fit()
  adm <- admissibility(a$fit, quantile = 0.05)
  expect_equal(dim(adm$admissible), c(nrow(a$fit@u_mean), 6L))
  s01 <- adm$admissible[, "s01"]
  expect_lt(mean(s01[a$type == "type3"]), 0.2)
  expect_gt(mean(s01[a$type != "type3"]), 0.8)
  # a sample's own cells are admissible at about 1 - quantile
  own <- a$fit@cell_data$sample == "s02"
  expect_gt(mean(adm$admissible[own, "s02"]), 0.9)
  expect_error(admissibility(a$fit, quantile = 2), "`quantile`")
})

test_that("differential abundance equals a direct computation in R", {
  a <- abundance_fit()
  fit <- a$fit
  grp <- a$grp
  grp[3] <- NA  # a sample in no level
  cells <- c(1, 50, 400, 1200, nrow(fit@u_mean))
  for (exclude in c(TRUE, FALSE)) {
    da <- differentialAbundance(fit, grp, cells = cells, exclude_own_sample = exclude, max_cells_per_sample = 30)
    ref <- mrvi:::reference_cells(fit, 30, fit@config$seed)  # the default seed: the fit's
    sample <- as.integer(fit@cell_data$sample)
    for (i in seq_along(cells)) {
      n <- cells[i]
      # log N(u_n; mu_m, sd_m) for every reference cell m other than n
      ld <- rowSums(dnorm(matrix(fit@u_mean[n, ], length(ref$cells), ncol(fit@u_mean), byrow = TRUE),
                          fit@u_mean[ref$cells, ], fit@u_sd[ref$cells, ], log = TRUE))
      keep <- ref$cells != n
      log_q <- vapply(seq_along(fit@samples), function(s) {
        v <- ld[keep & ref$sample == s]
        max(v) + log(mean(exp(v - max(v))))
      }, numeric(1))
      for (lev in c("a", "b")) {
        members <- which(grp == lev & !is.na(grp) & !(exclude & seq_along(grp) == sample[n]))
        want <- max(log_q[members]) + log(mean(exp(log_q[members] - max(log_q[members]))))
        expect_equal(da[[paste0("log_q_", lev)]][i], want, tolerance = 1e-10)
      }
      expect_equal(da$log_ratio_a[i], da$log_q_a[i] - da$log_q_b[i], tolerance = 1e-10)
    }
  }
})

test_that("a level with no sample left for a cell is NA there, and the other levels average the defined ones", {
  a <- abundance_fit()
  fit <- a$fit
  grp <- stats::setNames(c("ctrl", "mid", "hi", "hi", "mid", "hi"), fit@samples)
  cells <- c(which(fit@cell_data$sample == "s01")[1:3], which(fit@cell_data$sample == "s03")[1:3])
  da <- differentialAbundance(fit, grp, cells = cells, max_cells_per_sample = 50)
  own_ctrl <- 1:3  # cells of s01, ctrl's only sample: left out of its own level
  expect_true(all(is.na(da$log_q_ctrl[own_ctrl])))
  expect_true(all(is.na(da$log_ratio_ctrl[own_ctrl])))
  expect_true(all(is.finite(da$log_q_ctrl[-own_ctrl])))
  # the other levels' ratio: against the mean density of the defined levels only
  lme <- function(x) max(x) + log(mean(exp(x - max(x))))
  expect_equal(da$log_ratio_hi[own_ctrl], da$log_q_hi[own_ctrl] - da$log_q_mid[own_ctrl], tolerance = 1e-10)
  expect_equal(da$log_ratio_hi[-own_ctrl],
               da$log_q_hi[-own_ctrl] - apply(cbind(da$log_q_ctrl, da$log_q_mid)[-own_ctrl, ], 1, lme),
               tolerance = 1e-10)
  # with its own sample kept in, the level is defined again
  kept <- differentialAbundance(fit, grp, cells = cells, max_cells_per_sample = 50, exclude_own_sample = FALSE)
  expect_true(all(is.finite(kept$log_q_ctrl)))
  # levels of one sample each (a pilot of one treated and one control sample,
  # or the samples themselves) have densities: no pairs are needed
  pilot <- stats::setNames(c("ctrl", "treated", rep(NA, 4)), fit@samples)
  one_each <- differentialAbundance(fit, pilot, cells = cells, max_cells_per_sample = 50, exclude_own_sample = FALSE)
  expect_true(all(is.finite(one_each$log_q_ctrl)))
  per_sample <- differentialAbundance(fit, "sample", cells = cells, max_cells_per_sample = 50, exclude_own_sample = FALSE)
  expect_equal(per_sample$log_q_s01, one_each$log_q_ctrl, tolerance = 1e-12)
})

test_that("a damaged fit (non-finite latents) is refused, not spread into other cells' densities", {
  fit <- small_fit()$fit
  g <- fit
  g@u_mean[1, 1] <- NaN
  grp <- setNames(rep(c("a", "b"), length.out = 5), fit@samples)
  expect_error(differentialAbundance(g, grp, cells = 2:3), "latents .* 1 non-finite value", class = "mrvi_invalid_fit")
  g <- fit
  g@u_sd[5, 2] <- Inf
  expect_error(admissibility(g, cells = 1), "non-finite", class = "mrvi_invalid_fit")
})

test_that("a sample too small for a threshold is inadmissible for every caller, never NA", {
  m <- small_counts()
  s <- replace(small_samples(), 1, "lonely")  # a sample of one cell
  fit <- mrvi(m, s, flavour = "linear", max_epochs = 2, n_threads = 1, seed = 1, verbose = FALSE)
  a <- admissibility(fit, cells = 1:6)
  expect_true(is.na(a$threshold[["lonely"]]))
  expect_false(anyNA(a$admissible))
  expect_false(any(a$admissible[, "lonely"]))
  # TRUE means the same mask as admissibility()'s
  cov <- data.frame(sample = fit@samples, g = c("a", "a", "b", "b"))
  de <- without_power_warnings(differentialExpression(fit, cov, cells = 1:6, mc_samples = 3, admissible = TRUE))
  expect_equal(de$n_samples, unname(rowSums(a$admissible)))
  d <- sampleDistances(fit, cells = 1:6, mc_samples = 0, admissible = TRUE)
  expect_true(all(is.na(d[, "lonely", ])))
  expect_equal(is.na(d[, "A", "B"]), !(a$admissible[, "A"] & a$admissible[, "B"]), ignore_attr = TRUE)
  expect_error(admissibility(fit, max_cells_per_sample = 1), "`max_cells_per_sample` must be at least 2", class = "mrvi_error")
})

test_that("differentialAbundance() and admissibility() draw their subsample from the fit's seed by default", {
  fit <- large_sample_fit()  # seed 7; sample A has more cells than the 5000 of the reference subsample
  expect_equal(fit@config$seed, 7)
  grp <- setNames(c("a", "a", "b", "b", "b"), fit@samples)
  cells <- c(1:20, 6001:6020)
  da <- differentialAbundance(fit, grp, cells = cells)
  expect_identical(da, differentialAbundance(fit, grp, cells = cells, seed = 7))
  expect_false(isTRUE(all.equal(da$log_q_a, differentialAbundance(fit, grp, cells = cells, seed = 1)$log_q_a)))
  a <- admissibility(fit)
  expect_identical(a, admissibility(fit, seed = 7))
  expect_false(isTRUE(all.equal(a$threshold[["A"]], admissibility(fit, seed = 1)$threshold[["A"]])))
})
