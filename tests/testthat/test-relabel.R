# R/relabel.R: the permutation designs of the guided tests (`block`), and the
# warning when the relabelings cannot give a p-value below 0.05.

# Every different partition of the samples into y's categories that a design
# reaches, by enumerating its relabelings (an independent count).
enumerated_partitions <- function(y, block = NULL) {
  key <- function(labels) {
    groups <- vapply(split(names(y), labels), paste, character(1), collapse = ",")
    paste(sort(groups), collapse = "|")
  }
  perms <- function(v) if (length(v) <= 1) list(v) else
    unlist(lapply(seq_along(v), function(i) lapply(perms(v[-i]), function(p) c(v[i], p))), recursive = FALSE)
  labelings <- if (is.null(block)) {
    lapply(perms(seq_along(y)), function(p) y[p])
  } else if (mrvi:::within_blocks(y, block)) {
    parts <- split(seq_along(y), block)
    combos <- expand.grid(lapply(parts, function(m) seq_along(perms(m))))
    lapply(seq_len(nrow(combos)), function(r) {
      z <- y
      for (k in seq_along(parts)) z[parts[[k]]] <- y[parts[[k]]][perms(seq_along(parts[[k]]))[[combos[r, k]]]]
      z
    })
  } else {
    first <- match(levels(block), block)
    lapply(perms(seq_along(first)), function(p) y[first][p][as.integer(block)])
  }
  unique(vapply(labelings, key, character(1)))
}

test_that("the count of different relabelings is that of an enumeration, with and without blocks", {
  s <- paste0("s", 1:6)
  cases <- list(
    free = list(y = c("a", "a", "a", "b", "b", "b"), block = NULL),
    free_three = list(y = c("a", "a", "b", "b", "c", "c"), block = NULL),
    uneven = list(y = c("a", "a", "b", "b", "b", "b"), block = NULL),
    between = list(y = c("a", "a", "b", "b", "a", "a"), block = c(1, 1, 2, 2, 3, 3)),
    between_unequal = list(y = c("a", "a", "a", "b", "b", "a"), block = c(1, 1, 1, 2, 2, 3)),
    paired = list(y = c("a", "b", "a", "b", "b", "a"), block = c(1, 1, 2, 2, 3, 3)),
    mixed = list(y = c("a", "b", "a", "a", "b", "a"), block = c(1, 1, 2, 2, 3, 3)))
  for (nm in names(cases)) {
    y <- stats::setNames(factor(cases[[nm]]$y), s)
    b <- if (!is.null(cases[[nm]]$block)) stats::setNames(factor(cases[[nm]]$block), s)
    expect_equal(exp(mrvi:::log_relabelings(y, b)), length(enumerated_partitions(y, b)), info = nm)
  }
})

test_that("relabelings keep a block's samples together or shuffle within blocks", {
  s <- paste0("s", 1:8)
  block <- stats::setNames(factor(rep(1:4, each = 2)), s)
  set.seed(1)
  donor_level <- stats::setNames(factor(rep(c("a", "b", "a", "b"), each = 2)), s)
  for (i in 1:50) {
    z <- mrvi:::relabel(donor_level, block)
    expect_true(all(z[c(1, 3, 5, 7)] == z[c(2, 4, 6, 8)]))
    expect_equal(as.vector(table(z)), as.vector(table(donor_level)))
  }
  paired <- stats::setNames(factor(rep(c("a", "b"), 4)), s)
  z <- replicate(50, as.character(mrvi:::relabel(paired, block)))
  expect_true(all(z[c(1, 3, 5, 7), ] != z[c(2, 4, 6, 8), ]))
  expect_gt(ncol(unique(z, MARGIN = 2)), 8)
})

# Distances of 2 samples from each of `donors` donors: donor effects (sd 3) much
# larger than the samples' own (sd 0.5), treated samples shifted by `delta`.
donor_distances <- function(seed, delta = 0, donors = 10) {
  set.seed(seed)
  samples <- paste0("s", seq_len(2 * donors))
  donor <- rep(paste0("d", seq_len(donors)), each = 2)
  treated <- rep(c(FALSE, TRUE), donors)
  pts <- matrix(rnorm(donors * 5, sd = 3), donors)[rep(seq_len(donors), each = 2), ] +
    matrix(rnorm(2 * donors * 5, sd = 0.5), 2 * donors)
  pts[treated, 1] <- pts[treated, 1] + delta
  m <- as.matrix(dist(pts))
  # (in latent units, as sampleDistances() marks them: min_effect 0 by default)
  list(d = structure(array(m, c(2 * donors, 2 * donors, 1), dimnames = list(samples, samples, "g")), space = "latent"),
       donor = stats::setNames(donor, samples), condition = stats::setNames(ifelse(treated, "trt", "ctrl"), samples))
}

test_that("with block, a donor-level covariate is calibrated and a paired effect is found", {
  group_p <- function(x, covariate, block) {
    groupAssociation(x$d, covariate, permutations = 99, min_effect = 0, block = block, seed = 1)$p_value
  }
  null <- t(vapply(1:60, function(r) {
    x <- donor_distances(r)
    set.seed(100 + r)
    by_donor <- sample(rep(c("a", "b"), 5))[match(x$donor, unique(x$donor))]
    by_donor <- stats::setNames(by_donor, names(x$donor))
    c(free = group_p(x, by_donor, NULL), block = group_p(x, by_donor, x$donor))
  }, numeric(2)))
  # (measured over 100 draws: 0.45 free, 0.04 with block)
  expect_gt(mean(null[, "free"] < 0.05), 0.2)
  expect_lt(mean(null[, "block"] < 0.05), 0.05 + 0.06)
  power <- t(vapply(1:20, function(r) {
    x <- donor_distances(r, delta = 2)
    c(free = group_p(x, x$condition, NULL), block = group_p(x, x$condition, x$donor))
  }, numeric(2)))
  # (measured over 50 draws: 0 free, 1 with block)
  expect_gte(mean(power[, "block"] < 0.05), 0.8)
  expect_lte(mean(power[, "free"] < 0.05), 0.2)
  x <- donor_distances(1)
  res <- groupAssociation(x$d, x$condition, permutations = 19, block = x$donor)
  expect_identical(S4Vectors::metadata(res)$block, factor(x$donor))
  expect_error(groupAssociation(x$d, x$condition, block = x$donor[-1]), "`block` must be a sample-table column name",
               class = "mrvi_error")
  expect_error(groupAssociation(x$d, x$condition, block = "donor"), "`block` = \"donor\" is not a column",
               class = "mrvi_error")
})

test_that("per-cell tests relabel within or between blocks: p-values as an enumeration of the design's partitions", {
  fit <- covariates_fit()$fit
  s <- fit@samples
  block <- stats::setNames(rep(paste0("d", 1:6), each = 2), s)
  cells <- c(3, 700, 1800)
  d <- sampleDistances(fit, cells = cells, mc_samples = 0, space = "latent")
  designs <- list(donor_level = stats::setNames(rep(c("a", "b", "a", "b", "a", "b"), each = 2), s),
                  paired = stats::setNames(rep(c("a", "b"), 6), s))
  for (nm in names(designs)) {
    y <- factor(designs[[nm]])
    names(y) <- s
    b <- factor(block)
    names(b) <- s
    # the exact p: the share of the design's relabelings whose within-category sum is at most the observed
    labelings <- if (nm == "paired") {
      flips <- as.matrix(expand.grid(rep(list(0:1), 6)))
      lapply(seq_len(nrow(flips)), function(r) ifelse(rep(flips[r, ], each = 2) == 1, rev(levels(y))[as.integer(y)], as.character(y)))
    } else {
      combos <- utils::combn(6, 3)
      lapply(seq_len(ncol(combos)), function(k) rep(ifelse(1:6 %in% combos[, k], "a", "b"), each = 2))
    }
    within_sum <- function(m, labels) sum(m[upper.tri(m)][outer(labels, labels, "==")[upper.tri(m)]])
    run <- function() cellAssociation(fit, y, cells = cells, mc_samples = 0, space = "latent", min_effect = 0,
                                      permutations = 4999, block = b, verbose = FALSE)
    res <- NULL
    if (nm == "donor_level") expect_warning(res <- run(), class = "mrvi_coarse_permutations") else res <- run()
    for (k in seq_along(cells)) {
      m <- d[k, , ]
      t0 <- within_sum(m, as.character(y))
      exact <- mean(vapply(labelings, function(l) within_sum(m, l) <= t0 + 1e-9 * sum(m), logical(1)))
      # (Monte Carlo over 4,999 relabelings: standard error at most 0.007)
      expect_lt(abs(res$p_value[k] - exact), 0.03, label = paste(nm, k))
    }
    expect_true(all(is.na(res$z)))
  }
  # whole blocks of unequal sizes: the categories' sizes change between relabelings,
  # and the statistic is the mean between- minus mean within-category distance
  unequal <- stats::setNames(c(rep("A", 4), rep("B", 4), "C", "D", "E", "F"), s)
  y <- factor(stats::setNames(c(rep("a", 4), rep("b", 4), "a", "b", "a", "b"), s))
  names(y) <- s
  res <- NULL
  expect_warning(res <- cellAssociation(fit, y, cells = cells, mc_samples = 0, space = "latent", min_effect = 0,
                                        permutations = 4999, block = unequal, verbose = FALSE),
                 class = "mrvi_coarse_permutations")
  expect_identical(S4Vectors::metadata(res)$relabeling, "whole blocks")
  blocks <- c("A", "B", "C", "D", "E", "F")
  combos <- utils::combn(6, 3)
  labelings <- lapply(seq_len(ncol(combos)), function(k) ifelse(blocks %in% blocks[combos[, k]], "a", "b")[match(unequal, blocks)])
  effect <- function(m, labels) {
    same <- outer(labels, labels, "==")[upper.tri(m)]
    mean(m[upper.tri(m)][!same]) - mean(m[upper.tri(m)][same])
  }
  for (k in seq_along(cells)) {
    m <- d[k, , ]
    e0 <- effect(m, as.character(y))
    exact <- mean(vapply(labelings, function(l) effect(m, l) >= e0 - 1e-9 * sum(m), logical(1)))
    expect_lt(abs(res$p_value[k] - exact), 0.03, label = paste("unequal blocks", k))
  }
  expect_error(cellAssociation(fit, designs$paired, block = block, permutations = 0), "`block` needs `permutations` > 0",
               class = "mrvi_error")
  expect_error(cellAssociation(fit, designs$paired, block = replace(block, 1, NA)), "`block` has no value for sample",
               class = "mrvi_error")
})

test_that("a covariate constant within some blocks only is relabelled within blocks, and said so", {
  x <- donor_distances(4)
  y <- x$condition
  y[c("s1", "s2")] <- "ctrl"  # donor d1 has one category
  expect_message(res <- groupAssociation(x$d, y, permutations = 19, block = x$donor), "constant within 1 other",
                 class = "mrvi_partial_blocks")
  expect_identical(S4Vectors::metadata(res)$relabeling, "within blocks")
})

test_that("a covariate nested in a sample column gets a hint towards block, and none with it", {
  x <- donor_distances(5)
  attr(x$d, "sample_table") <- data.frame(sample = names(x$donor), donor = x$donor, condition = x$condition)
  by_donor <- stats::setNames(rep(c("a", "b"), each = 10), names(x$donor))
  expect_message(groupAssociation(x$d, by_donor, permutations = 19), "constant within each level of sample column \"donor\"",
                 class = "mrvi_nested_covariate")
  expect_no_message(groupAssociation(x$d, by_donor, permutations = 19, block = "donor"))
  # the paired treatment is not nested in the donor: no hint
  expect_no_message(groupAssociation(x$d, "condition", permutations = 19))
})

test_that("the block itself as the covariate is refused, as in differentialExpression()", {
  x <- donor_distances(4)
  expect_error(groupAssociation(x$d, x$donor, permutations = 19, block = x$donor), "it is the block itself",
               class = "mrvi_error")
})

test_that("block is read from a sample table keyed by row names", {
  x <- donor_distances(4)
  # `sample_site` would be taken for the sample names by a partial match
  keyed <- data.frame(sample_site = names(x$donor)[c(seq_along(x$donor)[-1], 1)], donor = x$donor, condition = x$condition,
                      row.names = names(x$donor))
  attr(x$d, "sample_table") <- keyed
  by_name <- groupAssociation(x$d, "condition", permutations = 19, block = "donor", seed = 3)
  by_vector <- groupAssociation(x$d, x$condition, permutations = 19, block = x$donor, seed = 3)
  expect_identical(by_name$p_value, by_vector$p_value)
  expect_identical(S4Vectors::metadata(by_name)$relabeling, "within blocks")
})

test_that("the per-cell tests warn of coarse relabelings with the normal approximation too", {
  fit <- small_fit()$fit
  y <- stats::setNames(c("a", "a", "b")[seq_along(fit@samples)], fit@samples)
  expect_warning(cellAssociation(fit, y, cells = 1:3, permutations = 0, mc_samples = 0, verbose = FALSE),
                 class = "mrvi_coarse_permutations")
})

test_that("tests whose relabelings cannot reach p < 0.05 are warned about, and untested groups are named", {
  x <- donor_distances(3, donors = 3)
  keep <- paste0("s", 1:6)
  d <- structure(x$d[keep, keep, , drop = FALSE], space = "latent")  # (`[` drops it)
  y <- stats::setNames(c("a", "a", "a", "b", "b", "b"), keep)
  expect_warning(res <- groupAssociation(d, y, permutations = 99), "at most 10 different relabelings.*at least 1/10",
                 class = "mrvi_coarse_permutations")
  expect_gte(res$p_value, 0.05)
  one_each <- stats::setNames(c("a", "a", "b", "c", "d", "e"), keep)
  d2 <- d
  d2[c("s1", "s2"), , 1] <- NA
  d2[, c("s1", "s2"), 1] <- NA
  expect_warning(groupAssociation(d2, one_each, permutations = 9), "not tested", class = "mrvi_untested_groups")
})
