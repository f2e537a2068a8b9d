# Clade support of sample trees, and the genes behind a split.
skip_if_not_installed("ape")

test_that("bootstrap multiplicities resample cells within each sample", {
  set.seed(1)
  s <- rep(c("a", "b", "c"), c(5, 3, 7))
  w <- mrvi:::bootstrap_multiplicities(s, 20)
  expect_equal(dim(w), c(15, 20))
  for (k in unique(s)) expect_true(all(colSums(w[s == k, ]) == sum(s == k)))
  expect_true(all(w == round(w) & w >= 0))
})

test_that("clade keys of an hclust match those of its ape tree", {
  hc <- hclust(dist(c(a = 1, b = 1.1, c = 5, d = 5.2, e = 9)))
  keys <- mrvi:::hclust_clades(hc)
  phy <- ape::as.phylo(hc)
  expect_setequal(mrvi:::phylo_clades(phy), keys)
  expect_true(mrvi:::clade_key(c("b", "a")) %in% keys)
})

test_that("a tree planted with large effects has support 1; samples without structure get spread support", {
  p <- planted_tree()
  # (the unstructured type's normalised distances may all be below the noise,
  # which a warning says, on some CPUs and seeds)
  trees <- suppressWarnings(sampleTreeSupport(p$fit, groups = "labels", B = 30, mc_samples = 5),
                            classes = "mrvi_flat_tree")
  expect_named(trees, c("flat", "planted"), ignore.order = TRUE)
  expect_true(all(trees$flat$node.label >= 0 & trees$flat$node.label <= 1))
  planted <- trees$planted
  expect_s3_class(planted, "phylo")
  expect_equal(treeDistance(planted, p$truth), 0)
  # the root's two clades always have support 1; the two pairs below them, with
  # fewer planted genes, 0.37-1 over 5 seeds (tools/seed_sweep.sh)
  support <- stats::setNames(planted$node.label, mrvi:::phylo_clades(planted))
  expect_equal(unname(support[mrvi:::clade_key(c("s1", "s2", "s3"))]), 1)
  expect_equal(unname(support[mrvi:::clade_key(c("s4", "s5", "s6"))]), 1)
  expect_gt(mean(support), 0.6)
  expect_equal(attr(planted, "B"), 30)
  # one group gives one tree; the same seed the same values
  one <- sampleTreeSupport(p$fit, groups = "labels", group = "planted", B = 30, mc_samples = 5)
  expect_s3_class(one, "phylo")
  expect_equal(one$node.label, planted$node.label)
  expect_identical(sampleTreeSupport(p$fit, groups = "labels", group = factor("planted"), B = 30, mc_samples = 5), one)
  # samples without structure: low support (normalised distances, the default;
  # all 0 here, which the warning says)
  flat <- suppressWarnings(sampleTreeSupport(p$fit_flat, groups = NULL, B = 30, mc_samples = 5),
                           classes = "mrvi_flat_tree")
  expect_equal(flat$node.label[1], 1)  # the root's clade (all samples)
  inner <- flat$node.label[-1]
  expect_true(all(inner >= 0 & inner <= 1))
  expect_lt(mean(inner), 0.4)
  # raw distances: only the posterior draws of u move the tree, support stays higher
  raw <- sampleTreeSupport(p$fit_flat, groups = NULL, B = 30, mc_samples = 5, normalize = FALSE)
  expect_gt(mean(raw$node.label[-1]), mean(inner))
  expect_true(all(sampleTreeSupport(p$fit, "labels", group = "planted", B = 30, mc_samples = 0,
                                    normalize = FALSE)$node.label == 1))
  # an edited tree is drawn as it is now, not as the clustering it came from
  pruned <- ape::drop.tip(planted, "s1")
  expect_setequal(ggplot2::layer_data(plotSampleTree(pruned), 2)$label, paste0("s", 2:6))
  renamed <- planted
  renamed$tip.label[renamed$tip.label == "s2"] <- "donor2"
  expect_true("donor2" %in% ggplot2::layer_data(plotSampleTree(renamed), 2)$label)
  # the plot shows the values
  g <- plotSampleTree(planted)
  expect_s3_class(g, "ggplot")
  labels <- ggplot2::layer_data(g, 3)$label
  expect_equal(sort(labels), sort(sprintf("%.2f", planted$node.label)))
  d <- sampleDistances(p$fit, groups = "labels", mc_samples = 5, normalize = TRUE)
  expect_s3_class(plotSampleTree(d, "planted", support = planted), "ggplot")
})

test_that("the genes of the root split of a planted tree are its edge genes; a flat type gives noise", {
  p <- planted_tree()
  fit <- p$fit
  side <- cutree(sampleHclust(sampleDistances(fit, groups = "labels", mc_samples = 0), "planted"), k = 2)
  a <- side == side[["s1"]]
  genes <- sampleSplitGenes(fit, a, cells = fit@cell_data$labels == "planted", mc_samples = 4)
  expect_equal(attr(genes, "samples_a"), c("s1", "s2", "s3"))
  expect_equal(attr(genes, "samples_b"), c("s4", "s5", "s6"))
  expect_equal(genes$rank, seq_len(nrow(genes)))
  truth <- genes$gene %in% p$root_genes
  auc <- mean(outer(abs(genes$lfc[truth]), abs(genes$lfc[!truth]), ">"))
  # over 5 seeds (tools/seed_sweep.sh): AUC 0.96-0.99; planted root genes at least
  # 0.53 in absolute value; the flat type's largest |lfc| 0.25-0.60 of the smallest
  expect_gt(auc, 0.9)
  # the sign follows the side that carries the gene: g01-g08 up in s1-s3
  expect_true(all(genes[sprintf("g%02d", 1:8), "lfc"] > 0.3))
  expect_true(all(genes[sprintf("g%02d", 9:16), "lfc"] < -0.3))
  expect_true(all(genes$lfc_sd >= 0))
  # an unaffected type: nothing near the planted effect
  flat <- sampleSplitGenes(fit, c("s1", "s2", "s3"), c("s4", "s5", "s6"),
                           cells = fit@cell_data$labels == "flat", mc_samples = 4)
  expect_lt(max(abs(flat$lfc)), 0.8 * min(abs(genes[p$root_genes, "lfc"])))
  # character sides give the same answer as the logical clade
  again <- sampleSplitGenes(fit, c("s1", "s2", "s3"), cells = fit@cell_data$labels == "planted", mc_samples = 4)
  expect_equal(again$lfc, genes$lfc)
  # expression of each side: the mean over the cells and every draw (it was the
  # first draw's alone)
  cells <- which(fit@cell_data$labels == "planted")[1:40]
  three <- sampleSplitGenes(fit, c("s1", "s2", "s3"), cells = cells, mc_samples = 3)
  one <- sampleSplitGenes(fit, c("s1", "s2", "s3"), cells = cells, mc_samples = 1)
  batch <- mrvi:::cell_nuisance(fit, cells)
  per_draw <- vapply(1:3, function(m) {
    u <- mrvi:::posterior_u(fit@u_mean, fit@u_sd, cells, m, fit@config$seed)
    mrvi:::side_sums(fit, u, batch, 1:3)$expression
  }, numeric(length(fit@genes)))
  expect_equal(three[fit@genes, "expression_a"], rowMeans(per_draw) / length(cells))
  expect_equal(one[fit@genes, "expression_a"], per_draw[, 1] / length(cells))
})

test_that("sampleTreeSupport() and sampleSplitGenes() refuse bad arguments by name", {
  p <- planted_tree()
  fit <- p$fit
  expect_error(sampleTreeSupport("fit", "labels"), class = "mrvi_error")
  expect_error(sampleTreeSupport(fit, "labels", B = 0), "B", class = "mrvi_error")
  expect_error(sampleTreeSupport(fit, "labels", method = "nope"), "method", class = "mrvi_error")
  expect_error(sampleTreeSupport(fit, "labels", group = "nope"), "group", class = "mrvi_error")
  expect_error(sampleTreeSupport(fit, "nope"), "groups", class = "mrvi_error")
  expect_error(sampleTreeSupport(fit, "labels", seed = -1), "seed", class = "mrvi_error")
  expect_error(sampleTreeSupport(fit, "labels", mc_sample = 3), "mc_sample", class = "mrvi_error")
  expect_error(sampleTreeSupport(fit, "labels", mc_samples = -1), "mc_samples", class = "mrvi_error")
  expect_error(sampleTreeSupport(fit, "labels", mc_samples = 2), "normalize", class = "mrvi_error")
  expect_error(sampleTreeSupport(fit, "labels", normalize = NA), "normalize", class = "mrvi_error")
  # the error alone, without sampleDistances()' warning that every distance is NA
  expect_warning(expect_error(sampleTreeSupport(fit, "labels", min_cells = 1000), "3", class = "mrvi_error"), NA)
  expect_error(sampleSplitGenes("fit", "s1"), class = "mrvi_error")
  expect_error(sampleSplitGenes(fit, "nope"), "samples_a", class = "mrvi_error")
  expect_error(sampleSplitGenes(fit, "s1", "nope"), "samples_b", class = "mrvi_error")
  expect_error(sampleSplitGenes(fit, "s1", c("s1", "s2")), "share", class = "mrvi_error")
  expect_error(sampleSplitGenes(fit, fit@samples), "samples_b", class = "mrvi_error")
  expect_error(sampleSplitGenes(fit, c(TRUE, FALSE)), "samples_a", class = "mrvi_error")
  expect_error(sampleSplitGenes(fit, "s1", cells = 0), "cells", class = "mrvi_error")
  expect_error(sampleSplitGenes(fit, "s1", mc_samples = 1.5), "mc_samples", class = "mrvi_error")
  expect_error(plotSampleTree(sampleDistances(fit, mc_samples = 0), support = "x"), "support", class = "mrvi_error")
})

test_that("among several groups, one with too few samples for a tree is left out with a warning", {
  fit <- planted_tree()$fit
  groups <- as.character(fit@cell_data$labels)
  rare <- unlist(lapply(fit@samples[1:2], function(s) which(fit@cell_data$sample == s)[1:10]))
  groups[rare] <- "rare"
  suppressWarnings(expect_warning(trees <- sampleTreeSupport(fit, groups, B = 3), "\"rare\" left out", class = "mrvi_warning"),
                   classes = "mrvi_flat_tree")
  expect_false("rare" %in% names(trees))
  expect_true(all(vapply(trees, inherits, logical(1), "phylo")))
  expect_error(sampleTreeSupport(fit, groups, group = "rare", B = 3), "a tree needs 3", class = "mrvi_error")
  # several groups asked for, one left: still the named list
  two <- replace(groups, groups == "flat", NA)
  suppressWarnings(expect_warning(trees <- sampleTreeSupport(fit, two, B = 3), "\"rare\" left out", class = "mrvi_warning"),
                   classes = "mrvi_flat_tree")
  expect_type(trees, "list")
  expect_named(trees, "planted")
  # the list is drawn one group at a time
  expect_s3_class(plotSampleTree(trees, group = "planted"), "ggplot")
  expect_s3_class(plotSampleTree(trees), "ggplot")
  expect_error(plotSampleTree(trees, group = "rare"), "not a group", class = "mrvi_error")
})

test_that("a tree over distances that are all 0 comes with a warning", {
  sim <- mrvi:::example_counts()
  fit <- mrvi(sim$counts, sample = sim$sample, max_epochs = 3, n_threads = 1, seed = 1, verbose = FALSE)
  d <- sampleDistances(fit, normalize = TRUE, space = "latent")
  skip_if(any(d != 0, na.rm = TRUE), "this fit's normalised distances are not all 0")
  expect_warning(sampleTreeSupport(fit, groups = NULL, B = 5), "every distance between its samples is 0",
                 class = "mrvi_flat_tree")
  expect_no_warning(sampleTreeSupport(fit, groups = NULL, B = 5, normalize = FALSE))
})

test_that("support is the bootstrap of all the group's cells, also when min_cells leaves a sample out", {
  fit <- planted_tree()$fit
  # 4 cells of the unstructured type from each of s1-s5 (few: the replicates'
  # trees vary) and 2 of the planted type from s6, left out at min_cells = 3: its
  # cells' large distances weigh on D(C) and so must be resampled too
  flat <- fit@cell_data$labels == "flat"
  s6 <- fit@cell_data$sample == "s6"
  first <- ave(seq_along(flat), fit@cell_data$sample, flat, FUN = seq_along)
  grp <- ifelse(flat & !s6 & first <= 4 | !flat & s6 & first <= 2, "g", NA)
  B <- 40
  tree <- sampleTreeSupport(fit, groups = grp, B = B, mc_samples = 0, normalize = FALSE, min_cells = 3, space = "latent")
  expect_equal(attr(tree, "excluded"), "s6")
  # recomputed: the documented bootstrap (multiplicities within each sample, from
  # the seed), replicate means of every cell's D(n), average-linkage clades of the
  # kept samples in the documented random order
  cells <- which(grp == "g")
  d <- unclass(sampleDistances(fit, cells = cells, mc_samples = 0, normalize = FALSE, space = "latent"))
  kept <- setdiff(fit@samples, "s6")
  mrvi:::fixed_rng(fit@config$seed)
  w <- mrvi:::bootstrap_multiplicities(fit@cell_data$sample[cells], B)
  replicate_clades <- lapply(seq_len(B), function(r) {
    m <- colSums(d * w[, r]) / sum(w[, r])
    order <- sample(kept)
    mrvi:::hclust_clades(stats::hclust(stats::as.dist(m[order, order]), method = "average"))
  })
  clades <- mrvi:::phylo_clades(tree)
  support <- vapply(clades, function(k) mean(vapply(replicate_clades, function(cl) k %in% cl, logical(1))), numeric(1))
  # (resampling only the kept samples' cells gave one of these clades 0.03: the
  # replicates lacked the cells that made it)
  expect_equal(tree$node.label, unname(support))
})
