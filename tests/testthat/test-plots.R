# R/plots.R: plot(<MrVIFit>), plotSampleDistances(), plotSampleTree(), plotAssociation().

test_that("plot(fit) draws the training curves of the history, with the best epoch marked", {
  fit <- small_fit()$fit
  p <- plot(fit)
  expect_s3_class(p, "ggplot")
  h <- fit@history
  expect_equal(p$data$elbo[p$data$set == "train"], h$train_elbo)
  expect_equal(p$data$elbo[p$data$set == "validation"], h$validation_elbo)
  geoms <- vapply(p$layers, function(l) class(l$geom)[1], character(1))
  expect_equal(geoms, c("GeomLine", "GeomVline"))
  expect_equal(p$layers[[2]]$data$xintercept, fit@config$best_epoch)
  # one epoch is a point, not an empty plot
  one <- fit
  one@history <- fit@history[1, ]
  one@config$best_epoch <- 1L
  built <- ggplot2::ggplot_build(plot(one))
  expect_true("GeomPoint" %in% vapply(plot(one)$layers, function(l) class(l$geom)[1], character(1)))
})

test_that("plot(fit, y) and unnamed or bad matrices get classed errors or default names", {
  fit <- small_fit()$fit
  expect_error(plot(fit, 1), "takes no `y`", class = "mrvi_error")
  expect_error(plot(fit, which = "zzz"), "takes no other argument", class = "mrvi_error")
  d <- sampleDistances(fit, groups = "labels", mc_samples = 0)
  p <- plotSampleTree(unname(d[, , 1]))
  expect_s3_class(p, "ggplot")
  expect_setequal(p$layers[[2]]$data$label, as.character(1:5))
  expect_error(plotSampleTree(d, group = NA), "`group` must be one group name", class = "mrvi_error")
  expect_error(plotSampleDistances(d, group = c("type1", "type2")), "`group` must be one group name", class = "mrvi_error")
  expect_error(plotSampleDistances(-d[, , 1]), "negative", class = "mrvi_error")
})

test_that("plots return ggplots, with annotation from the sample table", {
  fit <- small_fit()$fit
  d <- sampleDistances(fit, groups = "labels", mc_samples = 0)
  p <- plotSampleDistances(d, "type1")
  expect_s3_class(p, "ggplot")
  built <- ggplot2::ggplot_build(p)
  # tiles follow the tree's order
  hc <- sampleHclust(d, "type1")
  expect_equal(levels(p$data$x), hc$labels[hc$order])
  ann <- data.frame(group = rep(c("a", "b"), length.out = 5), row.names = fit@samples)
  expect_s3_class(plotSampleDistances(d, "type1", annotation = ann), "ggplot")
  # each annotation track's squares sit on its label's row, not between two rows
  ann2 <- data.frame(group = rep(c("a", "b"), length.out = 5), site = rep(c("x", "y", "z"), length.out = 5),
                     row.names = fit@samples)
  built <- ggplot2::ggplot_build(plotSampleDistances(d, "type1", annotation = ann2))
  labels <- built$layout$panel_params[[1]]$y$get_labels()
  expect_identical(sort(unique(built$data[[2]]$y)), as.numeric(match(c(" group", " site"), labels)))
  expect_s3_class(plotSampleTree(d, "type1", annotation = ann), "ggplot")
  # a plain data.frame of q-values draws too (no covariate recorded)
  expect_s3_class(plotAssociation(data.frame(q_value = c(0.01, 0.5, NA)), c("a", "b", "b")), "ggplot")
  expect_error(plotSampleDistances(d, "type1", annotation = "nope"), "`annotation`")
  seg <- mrvi:::dendrogram_segments(hc)
  expect_equal(nrow(seg), 3 * (length(hc$labels) - 1))
  expect_equal(max(seg$y), max(hc$height))
})

test_that("the heatmap holds the group's distances and the tree's segments are the dendrogram's", {
  fit <- small_fit()$fit
  d <- sampleDistances(fit, groups = "labels", mc_samples = 0)
  p <- plotSampleDistances(d, "type2")
  expect_true("GeomTile" %in% vapply(p$layers, function(l) class(l$geom)[1], character(1)))
  m <- d[, , "type2"]
  tiles <- p$data
  expect_equal(nrow(tiles), length(m))
  expect_equal(as.vector(tiles$distance), as.vector(m[cbind(as.character(tiles$x), as.character(tiles$y))]))
  tree <- plotSampleTree(d, "type2")
  expect_true("GeomSegment" %in% vapply(tree$layers, function(l) class(l$geom)[1], character(1)))
})

test_that("plotAssociation() draws the fraction of cells with q < alpha per group", {
  set.seed(1)
  res <- S4Vectors::DataFrame(statistic = runif(60), p_value = runif(60), q_value = runif(60),
                              row.names = paste0("c", 1:60))
  S4Vectors::metadata(res)$covariate <- "disease"
  groups <- rep(c("B cells", "T cells", "NK"), each = 20)
  p <- plotAssociation(res, groups, alpha = 0.3)
  expect_s3_class(p, "ggplot")
  expect_identical(class(p$layers[[1]]$geom)[1], "GeomCol")
  expected <- c(tapply(res$q_value < 0.3, groups, mean))
  expect_equal(p$data$fraction, unname(expected[as.character(p$data$group)]))
  expect_match(p$labels$title, "disease")
  expect_match(p$labels$y, "q < 0.3")
  expect_error(plotAssociation(res, groups[-1]), "`groups` must have one value per row", class = "mrvi_error")
  expect_error(plotAssociation(res, "labels"), "`fit` is needed", class = "mrvi_error")
  # named by cell (an object's column: more cells, another order): read by name
  named <- setNames(c(groups, "B cells", "NK"), c(paste0("c", 1:60), "c61", "c62"))[c(62:1)]
  expect_equal(plotAssociation(res, named, alpha = 0.3)$data, p$data)
  expect_error(plotAssociation(res, named[-5]), "does not name each row of `res` once.*c58", class = "mrvi_error")
  # nothing to draw: a classed error; nothing flagged: said on the figure
  expect_error(plotAssociation(res[0, ], character()), "nothing to draw", class = "mrvi_error")
  expect_error(plotAssociation(res, rep(NA, 60)), "every value is `NA`", class = "mrvi_error")
  expect_null(p$labels$subtitle)
  expect_match(plotAssociation(res, groups, alpha = 1e-6)$labels$subtitle, "no cell has q < 1e-06")
  # a group none of whose cells has a q-value is left out, and said so
  untested <- res
  untested$q_value[groups == "NK"] <- NA
  expect_message(q <- plotAssociation(untested, groups, alpha = 0.3), "\"NK\" has no cell with a q-value")
  expect_identical(as.character(q$data$group), c("B cells", "T cells"))
})

test_that("plotAssociation() reads a column of the fit for a one-row result too", {
  fit <- small_fit()$fit
  res <- without_power_warnings(cellAssociation(fit, setNames(rep(c("a", "b"), length.out = length(fit@samples)), fit@samples),
                                                cells = 1:3, mc_samples = 0, permutations = 0))
  column <- names(fit@cell_data)[vapply(fit@cell_data, function(v) is.factor(v) || is.character(v), logical(1))][1]
  one <- plotAssociation(res[2, ], column, fit = fit)
  expect_identical(as.character(one$data$group), as.character(fit@cell_data[rownames(res)[2], column]))
})

test_that("an ape tree that is not sampleTreeSupport()'s is refused with a classed error", {
  skip_if_not_installed("ape")
  tree <- ape::read.tree(text = "((a,b),(c,d));")
  expect_error(plotSampleTree(tree), "sampleTreeSupport.*without branch lengths", class = "mrvi_error")
  expect_error(plotSampleTree(ape::compute.brlen(tree)), "without numeric clade supports", class = "mrvi_error")
  tree <- ape::compute.brlen(tree)
  tree$node.label <- c(1, 0.5, 0.75)
  expect_s3_class(plotSampleTree(tree), "ggplot")
})

test_that("a flat tree (distances all 0, or normalised ones below 0.05) is warned about and still drawn", {
  m <- matrix(0, 4, 4, dimnames = list(paste0("s", 1:4), paste0("s", 1:4)))
  expect_warning(hc <- sampleHclust(m), "every distance between its samples is 0", class = "mrvi_flat_tree")
  expect_true(all(hc$height == 0))
  expect_warning(p <- plotSampleTree(m), class = "mrvi_flat_tree")
  expect_gt(ggplot2::layer_scales(p)$y$range$range[2], 0)  # room above the leaves' line
  # normalised distances (in noise units) of a short fit: tiny but not 0
  tiny <- array(c(0, 1e-3, 2e-3, 1e-3, 0, 1e-3, 2e-3, 1e-3, 0), c(3, 3, 1),
                dimnames = list(c("a", "b", "c"), c("a", "b", "c"), "g"))
  expect_warning(sampleHclust(structure(tiny, normalize = TRUE)), "below 0.05", class = "mrvi_flat_tree")
  expect_no_warning(sampleHclust(structure(tiny, normalize = FALSE)))
})

test_that("annotation tracks have colours of their own, numbers binned in order, and a named vector is one track", {
  fit <- small_fit()$fit
  d <- sampleDistances(fit, groups = "labels", mc_samples = 0)
  S <- length(fit@samples)
  ann <- data.frame(sample = fit@samples, sex = rep(c("F", "M"), length.out = S), age = c(9, 70, 35, 52, 18)[seq_len(S)])
  for (plot in list(plotSampleDistances, plotSampleTree)) {
    p <- plot(d, "type1", annotation = ann)
    layer <- p$layers[[length(p$layers)]]$data
    # no colour of one track is another's
    expect_length(intersect(layer$colour[layer$column == "sex"], layer$colour[layer$column == "age"]), 0)
    legend <- attr(layer, "legend")
    expect_identical(legend$label, c("sex: F", "sex: M", "age: 9", "age: 18", "age: 35", "age: 52", "age: 70"))
    # a vector named by sample: one track, read by name
    named <- setNames(rev(ann$sex), rev(ann$sample))
    one <- plot(d, "type1", annotation = named)$layers
    one <- one[[length(one)]]$data
    expect_identical(one$value, paste0("annotation: ", ann$sex[match(as.character(one$x), ann$sample)]))
    expect_error(plot(d, "type1", annotation = named[-1]), paste0("no value for sample \"", names(named)[1]), class = "mrvi_error")
    # tracks sharing colours (two of two categories, NA's grey) keep a legend
    # entry each, under their own labels, drawn in their own colours
    shared <- data.frame(sample = fit@samples, site = rep(c("x", "y"), length.out = S),
                         sex = c("f", "m", NA, "f", "m")[seq_len(S)], treated = c("no", "yes", "yes", NA, "no")[seq_len(S)])
    built <- ggplot2::ggplot_build(plot(d, "type1", annotation = shared))
    scale <- built$plot$scales$get_scales("colour")
    keys <- scale$get_breaks()
    expect_setequal(keys, c("site: x", "site: y", "sex: f", "sex: m", "sex: NA", "treated: no", "treated: yes", "treated: NA"))
    expect_identical(unname(scale$map(c("sex: f", "treated: no", "sex: NA", "treated: NA"))),
                     c("grey10", "grey10", "grey80", "grey80"))
  }
  # more than 5 distinct numbers: binned on pretty breaks, in order
  v <- mrvi:::annotation_colours(c(3, 18, 44, 61, 87, 90, NA), 1)
  expect_identical(names(v$palette), c("[0,20]", "(20,40]", "(40,60]", "(60,80]", "(80,100]", "NA"))
  expect_identical(v$label[7], "NA")
  expect_identical(unname(v$palette["NA"]), "grey80")
  # a later two-category track in black and grey; more categories in a palette of their own
  expect_identical(unname(mrvi:::annotation_colours(c("ctrl", "drug"), 2)$palette), c("grey10", "grey55"))
  first <- mrvi:::annotation_colours(letters[1:4], 1)$palette
  expect_length(intersect(first, mrvi:::annotation_colours(letters[1:4], 2)$palette), 0)
})

test_that("plotSampleMDS() colours categories as the heatmap's first track, and takes one annotation", {
  d <- array(as.matrix(dist(1:5)), c(5, 5, 1), dimnames = list(paste0("s", 1:5), paste0("s", 1:5), "g"))
  attr(d, "sample_table") <- data.frame(sample = paste0("s", 1:5), arm = c("a", "a", "b", "b", "c"),
                                        site = c("x", "y", "x", "y", "x"))
  p <- plotSampleMDS(d, annotation = "arm")
  built <- ggplot2::ggplot_build(p)$data[[1]]
  expect_identical(built$colour, unname(mrvi:::annotation_colours(c("a", "a", "b", "b", "c"), 1)$palette[c(1, 1, 2, 2, 3)]))
  expect_error(plotSampleMDS(d, annotation = c("arm", "site")), "one covariate for an MDS map", class = "mrvi_error")
  # a category spelled "NA" beside a missing value: two entries
  spelled <- stats::setNames(c("NA", "NA", "b", NA, "b"), paste0("s", 1:5))
  coded <- mrvi:::annotation_colours(unname(spelled), 1)
  expect_setequal(names(coded$palette), c("b", "NA", "NA (missing)"))
  expect_identical(coded$label[4], "NA (missing)")
  expect_s3_class(plotSampleMDS(d, annotation = spelled), "ggplot")
})
