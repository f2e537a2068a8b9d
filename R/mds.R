#' Classical MDS map of samples
#'
#' Samples placed in two dimensions by classical multidimensional scaling
#' ([stats::cmdscale()]) of a group's distance matrix: the map users of
#' GloScope and pseudobulk analyses are used to. Works for MrVI's distances and
#' for the baselines ([pseudobulkDistances()], [proportionDistances()]).
#'
#' @param distances the result of [sampleDistances()] (or of a baseline), one
#'   `S x S` matrix, or a `dist`.
#' @param group the group to draw (one name, or one whole number in 1..G); may be omitted when there is
#'   one group.
#' @param annotation `NULL`, one column name of the sample table
#'   (`attr(distances, "sample_table")`) to colour samples by, a vector named
#'   by sample, or a data.frame of one covariate with one row per sample (a
#'   `sample` column, or row names = samples).
#' @return a ggplot; axes give the share of the positive eigenvalues each
#'   coordinate explains.
#' @examples
#' sim <- mrvi:::example_counts()
#' p <- pseudobulkDistances(sim$counts, sim$sample)
#' plotSampleMDS(p)
#' @export
plotSampleMDS <- function(distances, group = NULL, annotation = NULL) {
  call <- sys.call()
  check_required(call)
  dd <- with_call(sampleDist(distances, group), call, rename = c(d = "distances"))
  n <- attr(dd, "Size")
  if (n < 3) abort_arg("An MDS map needs at least 3 samples; the group has {n}.", call = call)
  # distances with fewer than two positive eigenvalues (all zero: samples the fit
  # does not separate) get fewer coordinates: the missing ones are 0 and explain 0%
  mds <- suppressWarnings(stats::cmdscale(dd, k = 2, eig = TRUE))
  xy <- cbind(mds$points, matrix(0, n, 2))[, 1:2, drop = FALSE]
  positive <- sum(mds$eig[mds$eig > 0])
  share <- if (positive > 0) pmax(mds$eig[1:2], 0) / positive else c(0, 0)
  points <- data.frame(x = xy[, 1], y = xy[, 2], label = labels(dd))
  points$value <- mds_annotation(distances, annotation, points$label, call)
  aes <- if (is.null(annotation)) ggplot2::aes(x = x, y = y, label = label) else
    ggplot2::aes(x = x, y = y, label = label, colour = value)
  # (labels of nearby samples kept apart where ggrepel is installed)
  labels <- if (requireNamespace("ggrepel", quietly = TRUE)) {
    ggrepel::geom_text_repel(size = 3, show.legend = FALSE, seed = 1)
  } else {
    ggplot2::geom_text(size = 3, vjust = -0.8, show.legend = FALSE)
  }
  column <- is.character(annotation) && length(annotation) == 1 && is.null(names(annotation))
  # categories in the colours of the heatmap's and tree's first annotation track
  colours <- if (!is.null(annotation) && !is.numeric(points$value)) {
    coded <- annotation_colours(points$value, 1)
    points$value <- factor(coded$label, names(coded$palette))
    ggplot2::scale_colour_manual(values = coded$palette, drop = FALSE)
  }
  ggplot2::ggplot(points, aes) +
    colours +
    ggplot2::geom_point(size = 2.5) +
    labels +
    ggplot2::labs(x = sprintf("MDS 1 (%.0f%%)", 100 * share[1]), y = sprintf("MDS 2 (%.0f%%)", 100 * share[2]),
                  colour = if (column) annotation else "annotation",
                  title = sub("MrVI sample distances", "Samples (classical MDS)", group_title(distances, group))) +
    # (one unit the same length on both axes: distances read as drawn)
    ggplot2::coord_equal() +
    ggplot2::theme_minimal()
}

# The annotation of each sample in `samples`, from a sample-table column or a
# vector named by sample; its type kept (numbers get a continuous colour scale,
# a factor its levels' order).
mds_annotation <- function(distances, annotation, samples, call) {
  if (is.null(annotation)) return(NA)
  # a table of one covariate, as the heatmap and tree take it
  if (is.data.frame(annotation)) {
    table <- annotation_table(distances, NULL, annotation, samples, call)
    if (ncol(table) != 1) {
      abort_arg(c("{.arg annotation} must hold one covariate for an MDS map (its colours); it has {ncol(table)}: {.val {names(table)}}.",
                  "i" = "Give one column (and {.field sample}), one column name, or a vector named by sample."), call = call)
    }
    return(table[[1]])
  }
  if (is.character(annotation) && length(annotation) == 1 && is.null(names(annotation))) {
    table <- attr(distances, "sample_table")
    if (is.null(table)) {
      abort_arg(c("{.arg annotation} = {.val {annotation}} names a column of the sample table, but {.arg distances} has none (a plain matrix or dist).",
                  "i" = "Give a vector named by sample ({show_some(samples)}), or the result of {.fn sampleDistances}."), call = call)
    }
    if (!annotation %in% names(table)) {
      abort_arg(c("{.arg annotation} = {.val {annotation}} is not a column of the sample table.",
                  "i" = "Columns: {show_some(names(table), 12)}; or give a vector named by sample."), call = call)
    }
    rows <- table_samples(table)
    absent <- setdiff(samples, rows)
    if (length(absent)) {
      abort_arg(c("The sample table of {.arg distances} has no row for sample{?s} {.val {absent}}: {.arg annotation} would leave {?it/them} blank.",
                  "i" = "Give a vector named by sample instead."), call = call)
    }
    return(table[[annotation]][match(samples, rows)])
  }
  if (is.character(annotation) && length(annotation) > 1 && is.null(names(annotation))) {
    abort_arg(c("{.arg annotation} must hold one covariate for an MDS map (its colours); it names {length(annotation)}: {.val {annotation}}.",
                "i" = "Give one column name (the heatmap and tree take several)."), call = call)
  }
  if (is.null(names(annotation)) || !all(samples %in% names(annotation))) {
    abort_arg("{.arg annotation} must be a sample-table column name or a vector named by sample ({show_some(samples)}).",
              call = call)
  }
  unname(annotation[samples])
}
