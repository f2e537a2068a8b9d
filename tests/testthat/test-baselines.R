# Baseline sample distances, their comparison with MrVI's, and the MDS map.

baseline_data <- function() {
  set.seed(5)
  counts <- matrix(rpois(40 * 240, 4), 40, 240,
                   dimnames = list(sprintf("g%02d", 1:40), sprintf("c%03d", 1:240)))
  sample <- rep(sprintf("s%d", 1:6), each = 40)
  type <- rep(c("T", "B", "B", "NK"), 60)
  counts[1:5, sample %in% c("s1", "s2", "s3")] <- counts[1:5, sample %in% c("s1", "s2", "s3")] * 3
  list(counts = counts, sample = sample, type = type)
}

test_that("pseudobulkDistances() is the correlation (or Euclidean) distance of log-CPM on variable genes", {
  x <- baseline_data()
  p <- pseudobulkDistances(x$counts, x$sample, groups = x$type, n_genes = 15)
  expect_equal(dim(p), c(6, 6, 3))
  expect_equal(dimnames(p)[[3]], c("B", "NK", "T"))
  for (g in c("B", "T")) {
    idx <- x$type == g
    bulk <- sapply(sprintf("s%d", 1:6), function(s) rowSums(x$counts[, idx & x$sample == s]))
    log_cpm <- log2(sweep(bulk, 2, colSums(bulk), "/") * 1e6 + 1)
    top <- order(apply(log_cpm, 1, var), decreasing = TRUE)[1:15]
    expect_equal(p[, , g], 1 - cor(log_cpm[top, ]), ignore_attr = TRUE)
    expect_setequal(attr(p, "genes")[[g]], rownames(x$counts)[top])
  }
  e <- pseudobulkDistances(x$counts, x$sample, groups = x$type, metric = "euclidean", n_genes = 15)
  idx <- x$type == "NK"
  bulk <- sapply(sprintf("s%d", 1:6), function(s) rowSums(x$counts[, idx & x$sample == s]))
  log_cpm <- log2(sweep(bulk, 2, colSums(bulk), "/") * 1e6 + 1)
  top <- order(apply(log_cpm, 1, var), decreasing = TRUE)[1:15]
  expect_equal(e[, , "NK"], as.matrix(dist(t(log_cpm[top, ]))), ignore_attr = TRUE)
  # samples with too few cells are left out; hclust takes the result
  few <- pseudobulkDistances(x$counts, x$sample, groups = x$type, min_cells = 11)
  expect_equal(attr(few, "excluded")$T, sprintf("s%d", 1:6)[table(factor(x$sample[x$type == "T"])) < 11])
  expect_s3_class(sampleHclust(p, "B"), "hclust")
  expect_equal(cutree(sampleHclust(p, "B"), 2)[["s1"]], cutree(sampleHclust(p, "B"), 2)[["s3"]])
})

test_that("pseudobulkDistances(): identical samples are at 0, the diagonal is 0, one gene cannot correlate", {
  x <- baseline_data()
  twice <- cbind(x$counts[, 1:40], x$counts[, 1:40])
  colnames(twice) <- sprintf("c%03d", 1:80)
  for (metric in c("correlation", "euclidean")) {
    expect_warning(d <- pseudobulkDistances(twice, rep(c("A", "B"), each = 40), metric = metric),
                   "no gene's log-CPM varies", class = "mrvi_warning")
    expect_equal(unname(d[, , 1]), matrix(0, 2, 2), info = metric)
  }
  # a third sample: the two copies are at 0 from each other, at the same distance from it
  three <- cbind(twice, x$counts[, 81:120])
  colnames(three) <- sprintf("c%03d", 1:120)
  d <- pseudobulkDistances(three, rep(c("A", "B", "C"), each = 40))[, , 1]
  expect_equal(d[["A", "B"]], 0)
  expect_equal(diag(d), c(A = 0, B = 0, C = 0))
  expect_equal(d[["A", "C"]], d[["B", "C"]])
  expect_error(pseudobulkDistances(x$counts, x$sample, n_genes = 1), "`n_genes` must be at least 2", class = "mrvi_error")
  expect_false(anyNA(pseudobulkDistances(x$counts, x$sample, n_genes = 1, metric = "euclidean")))
  # one gene: its proportion is 1 in every pseudobulk, nothing varies; all 0, and said so
  for (metric in c("correlation", "euclidean")) {
    expect_warning(d <- pseudobulkDistances(x$counts[1, , drop = FALSE], x$sample, metric = metric),
                   "no gene's log-CPM varies", class = "mrvi_warning")
    expect_true(all(d == 0))
  }
})

test_that("silhouetteScores() pairs labels named by cell with the embedding's rows by name", {
  skip_if_not_installed("cluster")
  x <- baseline_data()
  set.seed(2)
  e <- matrix(rnorm(240 * 2), 240, 2, dimnames = list(colnames(x$counts), NULL))
  e[x$type == x$type[1], 1] <- e[x$type == x$type[1], 1] + 3
  type <- stats::setNames(as.character(x$type), colnames(x$counts))
  batch <- stats::setNames(rep(c("b1", "b2"), 120), colnames(x$counts))
  want <- silhouetteScores(e, unname(type), batch = unname(batch))
  expect_identical(silhouetteScores(e, rev(type), batch = rev(batch)), want)
  # an NA level (addNA()) is NA, refused as plain NA is, not scored as a category
  with_na <- addNA(factor(replace(unname(type), 1, NA)))
  expect_error(silhouetteScores(e, with_na, batch = unname(batch)), "one non-missing value per cell", class = "mrvi_error")
  expect_error(silhouetteScores(e, stats::setNames(type, c(paste0("other", 1:239), colnames(x$counts)[1]))),
               "`cell_type` is named, but its names are not the cells", class = "mrvi_error")
  # names that are no cell's (a lookup table's) are not a pairing: row order
  lookup <- stats::setNames(unname(type), unname(type))
  expect_identical(silhouetteScores(e, lookup, batch = unname(batch)), want)
  expect_error(silhouetteScores(e, as.list(type)), "`cell_type` must have one non-missing value per cell",
               class = "mrvi_error")
})

test_that("compositionDistances() embeddings, treeDistance() leaves and silhouetteScores() batches are checked", {
  skip_if_not_installed("igraph")
  x <- baseline_data()
  e <- matrix(rnorm(240 * 2), 240, 2, dimnames = list(paste0("x", 1:240), NULL))
  expect_error(compositionDistances(x$counts, x$sample, x$type, embedding = e),
               "row names of `embedding` must be the cell names: 240 cells", class = "mrvi_error")
  rownames(e) <- colnames(x$counts)
  e[3, 1] <- NA
  expect_error(compositionDistances(x$counts, x$sample, x$type, embedding = e), "`embedding` has 1 missing",
               class = "mrvi_error")
  skip_if_not_installed("ape")
  expect_error(treeDistance("((s1,s1),(s3,s4));", "((s1,s3),(s2,s4));"), "`hc` has duplicated leaf label \"s1\"",
               class = "mrvi_error")
  expect_error(treeDistance("((a,b),(c,d));", "((a,c),(a,d));"), "`truth` has duplicated leaf label \"a\"",
               class = "mrvi_error")
  skip_if_not_installed("cluster")
  e[3, 1] <- 0
  s <- silhouetteScores(e, x$type, batch = rep("one", 240))
  expect_true(is.na(s[["batch"]]) && !is.nan(s[["batch"]]))
})

test_that("proportionDistances() is the Aitchison distance of cell-type proportions", {
  x <- baseline_data()
  keep <- !(x$sample == "s2" & x$type == "NK")  # one type absent from a sample
  d <- proportionDistances(x$counts[, keep], x$sample[keep], groups = x$type[keep])
  tab <- unclass(table(x$sample[keep], x$type[keep])) + 0.5
  clr <- log(tab) - rowMeans(log(tab))
  expect_equal(d[, , 1], as.matrix(dist(clr)), ignore_attr = TRUE)
  # Aitchison distance = Euclidean distance of log ratios over all pairs of parts, / sqrt(D)
  lr <- function(v) { l <- log(v); outer(l, l, "-")[upper.tri(diag(length(v)))] }
  expect_equal(d["s1", "s2", 1], sqrt(sum((lr(tab["s1", ]) - lr(tab["s2", ]))^2) / ncol(tab)))
  none <- proportionDistances(x$counts, x$sample, groups = x$type, transform = "none")
  prop <- prop.table(table(x$sample, x$type), 1)
  expect_equal(none[, , 1], as.matrix(dist(unclass(prop))), ignore_attr = TRUE)
  # a cell without counts is left out, as from a fit, and the user is told
  empty <- x$counts
  empty[, 3] <- 0
  expect_message(d <- proportionDistances(empty, x$sample, groups = x$type), "Dropping 1 cell with no counts")
  tab <- unclass(table(x$sample[-3], x$type[-3])) + 0.5
  expect_equal(d[, , 1], as.matrix(dist(log(tab) - rowMeans(log(tab)))), ignore_attr = TRUE)
  expect_message(pseudobulkDistances(empty, x$sample, groups = x$type), "Dropping 1 cell with no counts")
})

test_that("compareSampleDistances() scores match independent formulas", {
  set.seed(2)
  pts <- rbind(matrix(rnorm(8, 0), 4), matrix(rnorm(10, 3), 5))
  rownames(pts) <- sprintf("s%d", 1:9)
  m <- as.matrix(dist(pts))
  y <- c(rep("a", 4), rep("b", 5))
  table <- data.frame(sample = rownames(pts), arm = y, noise = rep(c("u", "v", "w"), 3))
  noise <- matrix(runif(81), 9)
  noise <- (noise + t(noise)) / 2
  diag(noise) <- 0
  dimnames(noise) <- dimnames(m)
  res <- compareSampleDistances(list(points = m, noise = noise), table, c("arm", "noise"))
  expect_equal(nrow(res), 4)
  # a sample's rows agree (repeated ones are fine), and each value names a category
  expect_identical(compareSampleDistances(list(points = m, noise = noise), rbind(table, table[2, ]), c("arm", "noise")), res)
  expect_error(compareSampleDistances(list(points = m), rbind(transform(table[2, ], arm = "b"), table), "arm"),
               "conflicting rows for sample \"s2\"", class = "mrvi_error")
  expect_error(compareSampleDistances(list(points = m), transform(table, arm = replace(arm, 1, "")), "arm"),
               "empty value", class = "mrvi_error")
  # a sample alone in its category cannot agree with its nearest: not counted
  lone <- transform(table, arm = c(rep("a", 4), rep("b", 4), "c"))
  scored <- compareSampleDistances(list(points = m), lone, "arm")
  off <- m
  diag(off) <- Inf
  nearest_same <- (lone$arm[apply(off, 1, which.min)] == lone$arm)[1:8]
  expect_equal(scored$nearest_agreement, mean(nearest_same))
  # a table keyed by row names is read by them, even with a column whose name
  # starts with "sample" ($sample would partial-match it)
  keyed <- data.frame(sample_group = rev(table$sample), arm = y, noise = table$noise, row.names = table$sample)
  expect_identical(compareSampleDistances(list(points = m, noise = noise), keyed, c("arm", "noise")), res)
  # tied nearest samples share the agreement, whatever the order; all-zero distances score NA
  tied <- matrix(1, 6, 6, dimnames = list(sprintf("t%d", 1:6), sprintf("t%d", 1:6)))
  diag(tied) <- 0
  tied_table <- data.frame(sample = rownames(tied), arm = rep(c("a", "b"), each = 3))
  o <- c(2, 1, 5, 3, 6, 4)
  ties <- compareSampleDistances(list(m = tied), tied_table, "arm")
  expect_equal(ties$nearest_agreement, 0.4)  # 2 of a sample's 5 nearest share its category
  expect_equal(compareSampleDistances(list(m = tied[o, o]), tied_table, "arm")$nearest_agreement, 0.4)
  zero <- tied * 0
  expect_warning(flat <- compareSampleDistances(list(m = zero), tied_table, "arm"), "every distance between its samples is 0")
  expect_true(is.na(flat$r2) && is.na(flat$nearest_agreement))
  # a sample no admissible cell compared (NA row, diagonal 0) leaves the scores,
  # as it leaves the trees, instead of making them all NA
  masked <- m
  masked["s9", -9] <- masked[-9, "s9"] <- NA
  dropped <- compareSampleDistances(list(points = masked), table, "arm")
  expect_identical(dropped$n_samples, 8L)
  expect_equal(dropped[, c("r2", "nearest_agreement")],
               compareSampleDistances(list(points = m[-9, -9]), table[-9, ], "arm")[, c("r2", "nearest_agreement")])
  listed <- table
  listed$arm <- I(as.list(table$arm))
  expect_error(compareSampleDistances(list(points = m), listed, "arm"), "not a vector of categories", class = "mrvi_error")
  one <- res[res$method == "points" & res$covariate == "arm", ]
  # PERMANOVA R^2 from the Gower-centred matrix and the design's hat matrix
  A <- -m^2 / 2
  n <- 9
  C <- diag(n) - 1 / n
  G <- C %*% A %*% C
  X <- model.matrix(~ factor(y))
  H <- X %*% solve(crossprod(X)) %*% t(X)
  expect_equal(one$r2, sum(diag(H %*% G %*% H)) / sum(diag(G)))
  # ANOSIM R by its textbook definition
  pairs <- t(combn(n, 2))
  r <- rank(m[pairs])
  w <- y[pairs[, 1]] == y[pairs[, 2]]
  expect_equal(one$anosim_r, (mean(r[!w]) - mean(r[w])) / (n * (n - 1) / 4))
  nearest <- sapply(1:n, function(i) y[-i][which.min(m[i, -i])])
  expect_equal(one$nearest_agreement, mean(nearest == y))
  # replicate rank: share of (replicate, non-replicate) pairs where the non-replicate is closer
  share <- mean(unlist(lapply(1:n, function(i) {
    mates <- setdiff(which(y == y[i]), i)
    others <- which(y != y[i])
    mean(outer(m[i, mates], m[i, others], ">") + 0.5 * outer(m[i, mates], m[i, others], "=="))
  })))
  expect_equal(one$replicate_rank, share)
  expect_true(res$anosim_r[res$method == "noise" & res$covariate == "arm"] < one$anosim_r)
  # a multi-group array is compared per group; a one-group entry in every group
  arr <- array(c(m, noise), c(9, 9, 2), dimnames = list(rownames(m), rownames(m), c("T", "B")))
  res2 <- compareSampleDistances(list(mrvi = arr, flat = m), table, "arm")
  expect_equal(nrow(res2), 4)
  expect_equal(res2$r2[res2$method == "flat"], rep(one$r2, 2))
  expect_equal(res2$r2[res2$method == "mrvi" & res2$group == "T"], one$r2)
  # one-group entries only: one row each, under its own group name
  prop <- array(m, c(9, 9, 1), dimnames = list(rownames(m), rownames(m), "proportions"))
  res3 <- compareSampleDistances(list(points = m, prop = prop), table, "arm")
  expect_equal(res3$group, c("all", "proportions"))
})

test_that("plotSampleMDS() draws classical MDS coordinates", {
  x <- baseline_data()
  p <- pseudobulkDistances(x$counts, x$sample, groups = x$type)
  table <- attr(p, "sample_table")
  g <- plotSampleMDS(p, "B", annotation = setNames(rep(c("x", "y"), each = 3), sprintf("s%d", 1:6)))
  expect_s3_class(g, "ggplot")
  pts <- ggplot2::layer_data(g, 1)
  mds <- cmdscale(as.dist(p[, , "B"]), k = 2)
  expect_equal(abs(pts$x), abs(unname(mds[, 1])))
  expect_equal(abs(pts$y), abs(unname(mds[, 2])))
  expect_s3_class(plotSampleMDS(p[, , "T"]), "ggplot")
  # an annotation keeps its type: numbers on a continuous scale, a factor's levels in order
  dose <- setNames(c(0.5, 1, 2, 4, 8, 16), sprintf("s%d", 1:6))
  expect_identical(ggplot2::ggplot_build(plotSampleMDS(p, "B", annotation = dose))$plot$data$value, unname(dose))
  # a one-covariate table, as the heatmap takes it; a vector's legend is titled
  as_table <- plotSampleMDS(p, "B", annotation = data.frame(sample = rev(names(dose)), dose = rev(dose)))
  expect_identical(as_table$data$value, unname(dose))
  expect_identical(plotSampleMDS(p, "B", annotation = dose)$labels$colour, "annotation")
  expect_error(plotSampleMDS(p, "B", annotation = data.frame(sample = names(dose), a = 1, b = 2)),
               "one covariate for an MDS map", class = "mrvi_error")
  p_arm <- p
  attr(p_arm, "sample_table")$arm <- factor(rep(c("y", "x"), each = 3), levels = c("y", "x"))
  expect_identical(levels(plotSampleMDS(p_arm, "B", annotation = "arm")$data$value), c("y", "x"))
  expect_error(plotSampleMDS(p[, , "B"], annotation = "arm"), "`distances` has none", class = "mrvi_error")
  attr(p_arm, "sample_table") <- attr(p_arm, "sample_table")[-2, ]
  expect_error(plotSampleMDS(p_arm, "B", annotation = "arm"), "no row for sample \"s2\"", class = "mrvi_error")
  # samples the distances do not separate: every coordinate 0, each axis 0%
  flat <- matrix(0, 3, 3, dimnames = list(c("a", "b", "c"), c("a", "b", "c")))
  g0 <- expect_no_warning(plotSampleMDS(flat))
  expect_equal(ggplot2::layer_data(g0, 1)[, c("x", "y")], data.frame(x = c(0, 0, 0), y = c(0, 0, 0)))
  expect_equal(g0$labels$x, "MDS 1 (0%)")
  # one positive eigenvalue: the second axis is 0
  line <- as.matrix(dist(c(a = 0, b = 1, c = 3)))
  pts <- ggplot2::layer_data(plotSampleMDS(line), 1)
  expect_equal(abs(pts$x), abs(unname(cmdscale(as.dist(line), k = 1)[, 1])))
  expect_equal(pts$y, c(0, 0, 0), tolerance = 1e-6)
})

test_that("pseudobulkDistances() leaves out a sample without cells in a group, whatever min_cells, and names only the constant one", {
  x <- baseline_data()
  gone <- !(x$sample == "s1" & x$type == "T")
  p <- pseudobulkDistances(x$counts[, gone], x$sample[gone], groups = x$type[gone], min_cells = 0)
  expect_true(all(is.na(p["s1", , "T"])))
  expect_false(anyNA(p[-1, -1, "T"]))
  expect_equal(attr(p, "excluded")$T, "s1")
  expect_false(anyNA(p[, , "B"]))
  # a sample alone in a group: 0 from itself, NA to the others (as sampleDistances())
  lone <- x$type != "T" | x$sample == "s1"
  one <- suppressWarnings(pseudobulkDistances(x$counts[, lone], x$sample[lone], groups = x$type[lone], min_cells = 0),
                          classes = "mrvi_all_excluded")
  expect_equal(one["s1", "s1", "T"], 0)
  expect_true(all(is.na(one["s1", -1, "T"])))
  # one sample with a constant profile: the warning names it alone
  flat <- x$counts
  flat[, x$sample == "s2"] <- 1
  expect_warning(d <- pseudobulkDistances(flat, x$sample), "sample \"s2\" with others is undefined", class = "mrvi_warning")
  expect_true(all(is.na(d["s2", -2, 1])))
})

test_that("compositionDistances() takes an unnamed embedding in the cells' order", {
  skip_if_not_installed("igraph")
  x <- baseline_data()
  set.seed(2)
  e <- matrix(rnorm(240 * 3), 240, 3)
  named <- e
  rownames(named) <- colnames(x$counts)
  expect_identical(compositionDistances(x$counts, x$sample, x$type, embedding = e),
                   compositionDistances(x$counts, x$sample, x$type, embedding = named))
  # a cell dropped for having no counts: the rows still follow the cells of x
  empty <- x$counts
  empty[, 7] <- 0
  expect_identical(suppressMessages(compositionDistances(empty, x$sample, x$type, embedding = e)),
                   suppressMessages(compositionDistances(empty, x$sample, x$type, embedding = named)))
  # named rows need only the kept cells (mrviLatent(fit) has no row for a dropped cell)
  expect_identical(suppressMessages(compositionDistances(empty, x$sample, x$type, embedding = named[-7, ])),
                   suppressMessages(compositionDistances(empty, x$sample, x$type, embedding = named)))
  expect_error(compositionDistances(x$counts, x$sample, x$type, embedding = e[-7, ]),
               "one row per cell \\(240\\), or rows named by the cells", class = "mrvi_error")
})

test_that("compositionDistances() leaves out a sample without cells in a group, as sampleDistances() does", {
  skip_if_not_installed("igraph")
  x <- baseline_data()
  # s6 has no NK cells
  type <- replace(x$type, x$sample == "s6" & x$type == "NK", "T")
  d <- compositionDistances(x$counts, x$sample, type, n_pcs = 5)
  expect_true(all(is.na(d["s6", , "NK"])) && all(is.na(d[, "s6", "NK"])))
  expect_false(anyNA(d[-6, -6, "NK"]))
  expect_false(anyNA(d[, , "T"]))
  expect_identical(attr(d, "excluded"), list(B = character(), NK = "s6", T = character()))
  # so the comparison scores that group on the other samples, not NA
  table <- data.frame(sample = sprintf("s%d", 1:6), arm = rep(c("a", "b"), each = 3))
  res <- compareSampleDistances(list(comp = d), table, "arm")
  nk <- res[res$group == "NK", ]
  expect_identical(nk$n_samples, 5L)
  expect_false(anyNA(nk$r2))
  # clr proportions too
  dc <- compositionDistances(x$counts, x$sample, type, n_pcs = 5, transform = "clr")
  expect_true(all(is.na(dc["s6", , "NK"])) && !anyNA(dc[-6, -6, "NK"]))
})

test_that("the neighbour graph links each cell to its k nearest other cells, duplicates too", {
  e <- rbind(matrix(0, 4, 2), c(1, 0), c(5, 5))  # four identical cells
  nn <- mrvi:::nearest_others(as.matrix(dist(e)), 3)
  expect_false(any(nn == seq_len(nrow(e))))
  expect_identical(nn[5, ], 1:3)
  expect_setequal(nn[1, ], 2:4)
})

test_that("silhouetteScores() leaves out a cell type whose cells all come from different batches", {
  skip_if_not_installed("cluster")
  set.seed(1)
  e <- matrix(rnorm(80), 40, 2)
  type <- c(rep("A", 37), rep("B", 3))
  batch <- c(rep(c("x", "y"), length.out = 37), "x", "y", "z")
  s <- silhouetteScores(e, type, batch)
  a <- cluster::silhouette(as.integer(factor(batch[1:37])), dist(e[1:37, ]))
  expect_equal(s[["batch"]], mean(1 - abs(a[, "sil_width"])))
})

test_that("baselines refuse bad arguments by name", {
  x <- baseline_data()
  expect_error(pseudobulkDistances(x$counts, x$sample, metric = "nope"), "metric", class = "mrvi_error")
  expect_error(pseudobulkDistances(x$counts, x$sample, n_genes = 0), "n_genes", class = "mrvi_error")
  expect_error(pseudobulkDistances(x$counts, x$sample, min_cells = -1), "min_cells", class = "mrvi_error")
  expect_error(pseudobulkDistances(x$counts, x$sample[-1]), "sample", class = "mrvi_error")
  expect_error(proportionDistances(x$counts, x$sample, x$type, transform = "log"), "transform", class = "mrvi_error")
  expect_error(proportionDistances(x$counts, x$sample, x$type, pseudocount = 0), "pseudocount", class = "mrvi_error")
  m <- as.matrix(dist(1:6))
  dimnames(m) <- list(sprintf("s%d", 1:6), sprintf("s%d", 1:6))
  table <- data.frame(sample = sprintf("s%d", 1:6), arm = rep(c("a", "b"), 3))
  expect_error(compareSampleDistances(m, table, "arm"), "distances", class = "mrvi_error")
  expect_error(compareSampleDistances(list(m), table, "arm"), "distances", class = "mrvi_error")
  expect_error(compareSampleDistances(list(a = "x"), table, "arm"), "distances", class = "mrvi_error")
  expect_error(compareSampleDistances(list(a = m), "table", "arm"), "sample_table", class = "mrvi_error")
  expect_error(compareSampleDistances(list(a = m), table, "nope"), "covariates", class = "mrvi_error")
  # no silent rows of NA: unnamed distances, a name given twice, a covariate without replicates, an NA pair
  expect_error(compareSampleDistances(list(a = unname(m)), table, "arm"), "`distances`\\$a has no sample names",
               class = "mrvi_error")
  expect_error(compareSampleDistances(list(a = dist(1:6)), table, "arm"), "no sample names", class = "mrvi_error")
  expect_error(compareSampleDistances(list(a = m, a = m), table, "arm"), "more than once", class = "mrvi_error")
  # columns in another order than the rows would pair samples wrongly
  expect_error(compareSampleDistances(list(ok = m, shuffled = m[, 6:1]), table, "arm"),
               "`distances\\$shuffled` must hold distances between samples: its row and column names differ", class = "mrvi_error")
  arr <- array(c(m, m[6:1, ]), c(6, 6, 2), dimnames = list(rownames(m), rownames(m), c("T", "B")))
  expect_error(compareSampleDistances(list(arr = arr), table, "arm"), "`distances\\$arr` must hold distances between samples: its diagonal is not 0",
               class = "mrvi_error")
  table$dose <- c(0.1, 0.5, 1, 2, 5, 10)
  expect_warning(res <- compareSampleDistances(list(a = m), table, c("arm", "dose")),
                 "a / all / dose: no category with 2 samples", class = "mrvi_warning")
  expect_false(anyNA(res[res$covariate == "arm", ]))
  holed <- m
  holed["s1", "s2"] <- holed["s2", "s1"] <- NA
  # a pair no admissible cell compared: one of its samples leaves the scores, as
  # it leaves a tree (sampleDist()), with a message
  expect_message(partial <- compareSampleDistances(list(a = holed), table, "arm"), "Dropping sample \"s1\"")
  expect_identical(partial$n_samples, 5L)
  expect_false(is.na(partial$r2))
  expect_error(plotSampleMDS(m, annotation = "nope"), "annotation", class = "mrvi_error")
  expect_error(plotSampleMDS(m[1:2, 1:2]), "3 samples", class = "mrvi_error")
  expect_error(plotSampleMDS("x"), "d", class = "mrvi_error")
})
