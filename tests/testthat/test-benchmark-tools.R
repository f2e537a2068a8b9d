test_that("treeDistance is the normalised Robinson-Foulds distance on known cases", {
  skip_if_not_installed("ape")
  expect_equal(treeDistance("((a,b),(c,d),e);", "((b,a),(d,c),e);"), 0)
  # 5 leaves: splits ab|cde, cd|abe vs ac|bde, bd|ace: all 2 + 2 differ, max 2(5-3) = 4
  expect_equal(treeDistance("((a,b),(c,d),e);", "((a,c),(b,d),e);"), 1)
  # one split shared of two
  expect_equal(treeDistance("((a,b),(c,d),e);", "((a,b),(c,e),d);"), 0.5)
  hc <- hclust(dist(c(a = 0, b = 0.1, c = 5, d = 5.2, e = 10)))
  expect_equal(treeDistance(hc, "((a,b),(c,d),e);"), 0)
  phylo_rf <- as.numeric(ape::dist.topo(ape::unroot(ape::read.tree(text = "((a,b),((c,d),e),(f,g));")),
                                        ape::unroot(ape::read.tree(text = "((a,c),((b,d),e),(f,g));"))))
  expect_equal(treeDistance("((a,b),((c,d),e),(f,g));", "((a,c),((b,d),e),(f,g));"), phylo_rf / (2 * 4))
  # leaves of one tree only are named; Newick underscores match spaces
  expect_message(rf <- treeDistance("((a,b),(c,d),(e,x));", "((a,b),(c,e),d);"), "leaf \"x\" is in one tree only")
  expect_equal(rf, 0.5)
  m <- as.matrix(dist(c(`a b` = 0, `c d` = 0.1, e = 5, f = 5.2, `g h` = 10, i = 10.5)))
  hc <- hclust(as.dist(m))
  expect_no_message(same <- treeDistance(hc, ape::write.tree(ape::as.phylo(hc))))
  expect_equal(same, 0)
  # a quoted label is what its quotes enclose, spaces and underscores as written
  h <- hclust(dist(c(`s 1` = 0, e = 0.1, b = 1, c = 5, d = 5.2)))
  expect_equal(treeDistance(h, "((('s 1',e),b),(c,d));"), 0)
  expect_equal(treeDistance(h, "(((s_1,e),b),(c,d));"), 0)
  expect_equal(treeDistance(h, "((('s 1',c),b),(e,d));"), 1)
  expect_message(treeDistance("((('s_1',e),b),(c,d));", h), "\"s_1\" and \"s 1\" are in one tree only")
  expect_error(suppressMessages(treeDistance(h, "((('it''s',e),b),(c,d));")), "cannot read", class = "mrvi_error")
})

test_that("silhouette scores follow the scIB conventions", {
  skip_if_not_installed("cluster")
  set.seed(1)
  e <- rbind(matrix(rnorm(200, 0), 100), matrix(rnorm(200, 8), 100))
  type <- rep(c("a", "b"), each = 100)
  mixed <- rep(c("x", "y"), 100)
  split <- rep(rep(c("x", "y"), each = 50), 2)
  s <- silhouetteScores(e, type, mixed)
  expect_gt(s[["cell_type"]], 0.85)
  expect_gt(s[["batch"]], 0.9)
  e2 <- e
  e2[split == "y", 1] <- e2[split == "y", 1] + 6
  expect_lt(silhouetteScores(e2, type, split)[["batch"]], 0.6)
  sil <- cluster::silhouette(as.integer(factor(type)), dist(e))
  expect_equal(s[["cell_type"]], (mean(sil[, 3]) + 1) / 2)
})

test_that("compositionDistances finds samples that differ in composition", {
  skip_if_not_installed("igraph")
  set.seed(2)
  # two groups; in group g1, samples A, B have sub-state 1 and C, D sub-state 2
  n <- 800
  sample <- rep(c("A", "B", "C", "D"), length.out = n)
  group <- rep(c("g1", "g2"), each = n / 2)
  means <- matrix(rgamma(100 * 3, 2, 2), 100)
  means[1:20, 2] <- means[1:20, 2] * 8
  means[21:40, 3] <- means[21:40, 3] * 8
  state <- ifelse(group == "g1", ifelse(sample %in% c("A", "B"), 2, 3), 1)
  mu <- means[, state] * 20
  counts <- Matrix::Matrix(matrix(rpois(length(mu), mu), 100), sparse = TRUE)
  dimnames(counts) <- list(paste0("g", 1:100), paste0("c", 1:n))
  d <- compositionDistances(counts, sample, groups = group, n_pcs = 10, resolution = 0.5)
  expect_equal(dim(d), c(4L, 4L, 2L))
  expect_lt(d["A", "B", "g1"], 0.3)
  expect_gt(d["A", "C", "g1"], 1)
  expect_lt(max(d[, , "g2"]), 0.5)
  expect_s3_class(sampleHclust(d, "g1"), "hclust")
})
