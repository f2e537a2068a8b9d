#' Training curves of a MrVI fit
#'
#' @param x a `MrVIFit`.
#' @param y unused: giving one is an error.
#' @param ... unused.
#' @return a ggplot: train and validation ELBO per cell by epoch, with the
#'   restored (best) epoch marked.
#' @examples
#' \donttest{
#' sim <- mrvi:::example_counts()
#' fit <- mrvi(sim$counts, sample = sim$sample, max_epochs = 3, verbose = FALSE)
#' plot(fit)
#' }
#' @export
setMethod("plot", signature("MrVIFit", "missing"), function(x, y, ...) {
  if (...length()) {
    abort_arg(c("{.code plot()} of a {.cls MrVIFit} draws its training curves and takes no other argument.",
                "i" = "Call {.code plot(fit)}; for sample distances see {.fn plotSampleDistances}."),
              call = sys.call(-1))
  }
  h <- x@history
  long <- rbind(
    data.frame(epoch = h$epoch, set = "train", elbo = h$train_elbo),
    data.frame(epoch = h$epoch, set = "validation", elbo = h$validation_elbo)
  )
  long <- long[is.finite(long$elbo), , drop = FALSE]
  best <- x@config$best_epoch
  p <- ggplot2::ggplot(long, ggplot2::aes(epoch, elbo, colour = set)) +
    ggplot2::geom_line() +
    ggplot2::labs(x = "epoch", y = "ELBO per cell", colour = NULL,
                  title = "MrVI training") +
    ggplot2::theme_minimal()
  if (nrow(h) == 1) p <- p + ggplot2::geom_point()  # (one epoch is no line)
  if (!is.null(best) && !is.na(best)) {
    p <- p + ggplot2::geom_vline(xintercept = best, linetype = "dashed", colour = "grey50")
  }
  p
})

#' @rdname plot-MrVIFit-missing-method
#' @export
setMethod("plot", signature("MrVIFit", "ANY"), function(x, y, ...) {
  # (without this method, plot(fit, 1) falls to graphics' plot(), which cannot
  # read an S4 object)
  abort_arg(c("{.code plot()} of a {.cls MrVIFit} draws its training curves and takes no {.arg y}.",
              "i" = "Call {.code plot(fit)}; for sample distances see {.fn plotSampleDistances}."),
            call = sys.call(-1))
})

utils::globalVariables(c("epoch", "elbo", "set"))

#' Heatmap and tree of MrVI sample distances
#'
#' `plotSampleDistances()` draws a group's sample x sample distance matrix as a
#' heatmap whose rows and columns follow the sample tree, with optional
#' annotation bars for sample covariates. `plotSampleTree()` draws the tree
#' itself, with the same annotation at its leaves.
#'
#' @param d the result of [sampleDistances()], one `S x S` matrix, or a `dist`
#'   (checked and named as in [sampleHclust()]).
#' @param group the group to draw (one name, or one whole number in 1..G); may
#'   be omitted when `d` has one group.
#' @param annotation `NULL`, or column names of the sample table
#'   (`attr(d, "sample_table")`, which `sampleDistances()` attaches), or a
#'   data.frame with one row per sample (a `sample` column, or row names =
#'   samples), or a vector named by sample (one track). Each track has colours
#'   of its own: a qualitative palette for categories, a sequential one over
#'   binned values for numbers (more than 5 distinct), grey for `NA`.
#' @param method agglomeration method for the tree (as [sampleHclust()]).
#' @param support `plotSampleTree()`: `NULL`, or a tree from
#'   [sampleTreeSupport()] whose clade support values are written at the
#'   matching nodes. `d` may itself be such a tree (an `ape::phylo`): it is then
#'   drawn with its support values (`annotation` reads its `sample_table`),
#'   or the list of such trees for several groups, with `group` naming one.
#' @return a ggplot.
#' @examples
#' sim <- mrvi:::example_counts()
#' fit <- mrvi(sim$counts, sample = sim$sample, max_epochs = 2, verbose = FALSE)
#' d <- sampleDistances(fit, mc_samples = 0)
#' plotSampleDistances(d)
#' plotSampleTree(d)
#' @export
plotSampleDistances <- function(d, group = NULL, annotation = NULL, method = "average") {
  call <- sys.call()
  check_required(call)
  m <- group_matrix(d, group, call)
  hc <- sampleHclust(m, method = method)  # (its message names samples left out)
  ord <- hc$labels[hc$order]
  m <- m[ord, ord]
  tiles <- data.frame(x = factor(rep(ord, each = length(ord)), levels = ord),
                      y = factor(rep(ord, times = length(ord)), levels = ord),
                      distance = as.vector(m))
  p <- ggplot2::ggplot(tiles, ggplot2::aes(x = x, y = y)) +
    ggplot2::geom_tile(ggplot2::aes(fill = distance)) +
    ggplot2::scale_fill_gradient(low = "#fff7ec", high = "#7f0000", name = "distance") +
    ggplot2::coord_equal() +
    ggplot2::labs(x = NULL, y = NULL, title = group_title(d, group)) +
    ggplot2::theme_minimal() +
    ggplot2::theme(axis.text.x = ggplot2::element_text(angle = 90, hjust = 1, vjust = 0.5),
                   panel.grid = ggplot2::element_blank())
  ann <- annotation_frame(d, m, annotation, ord, call)
  if (!is.null(ann)) {
    # on the discrete axis below: track k's label " <column>" sits at position S + k
    ann$y <- length(ord) + ann$track
    p <- p + ggplot2::geom_point(data = ann, ggplot2::aes(x = x, y = y, colour = value),
                                 shape = 15, size = 4, inherit.aes = FALSE) +
      ggplot2::scale_y_discrete(limits = c(ord, paste0(" ", unique(ann$column)))) +
      annotation_scale(ann)
  }
  p
}

#' @rdname plotSampleDistances
#' @export
plotSampleTree <- function(d, group = NULL, annotation = NULL, method = "average", support = NULL) {
  call <- sys.call()
  check_required(call)
  # sampleTreeSupport()'s result for several groups: a named list of trees
  if (is.list(d) && !inherits(d, "phylo") && !is.data.frame(d) && length(d) &&
      all(vapply(d, inherits, logical(1), "phylo"))) {
    d <- d[[pick_group(names(d), group, call)]]
  }
  if (inherits(d, "phylo")) {
    if (!requireNamespace("ape", quietly = TRUE)) abort_arg("Drawing an ape tree needs {.pkg ape}.", call = call)
    # (ape's conversion to hclust failed unclassed on a tree without branch lengths)
    no_heights <- is.null(attr(d, "hclust")) && is.null(d$edge.length)
    if (no_heights || is.null(support) && !is.numeric(d$node.label)) {
      abort_arg(c("{.arg d} must be sample distances or a tree from {.fn sampleTreeSupport}.",
                  "x" = "It is an ape tree {if (no_heights) 'without branch lengths' else 'without numeric clade supports'}."),
                call = call)
    }
    support <- support %||% d
    # the clustering itself when sampleTreeSupport() kept it (ape's conversion
    # refuses trees whose heights are all 0), unless the tree was edited since
    # (ape keeps the attribute through drop.tip() and renamed tips)
    hc <- attr(d, "hclust")
    if (is.null(hc) || !setequal(hc$labels, d$tip.label) || !setequal(hclust_clades(hc), phylo_clades(d))) {
      hc <- tryCatch(stats::as.hclust(d), error = function(e) {
        abort_arg(c("{.arg d} is an ape tree that cannot be drawn as a clustering.",
                    "x" = conditionMessage(e),
                    "i" = "Draw a tree from {.fn sampleTreeSupport}, edited or not, with its branch lengths; a multifurcating or non-ultrametric tree cannot be drawn."),
                  call = call)
      })
    }
    m <- structure(matrix(0, length(hc$labels), length(hc$labels), dimnames = list(hc$labels, hc$labels)),
                   sample_table = attr(d, "sample_table"))
  } else {
    m <- group_matrix(d, group, call)
    hc <- sampleHclust(m, method = method)  # (its message names samples left out)
  }
  seg <- dendrogram_segments(hc)
  ord <- hc$labels[hc$order]
  leaves <- data.frame(x = seq_along(ord), label = ord)
  # (a flat tree, all heights 0, still gets room for its labels)
  top <- if (max(hc$height) > 0) max(hc$height) else 1
  pad <- top * 0.04
  p <- ggplot2::ggplot() +
    ggplot2::geom_segment(data = seg, ggplot2::aes(x = x, y = y, xend = xend, yend = yend)) +
    ggplot2::geom_text(data = leaves, ggplot2::aes(x = x, y = -pad, label = label),
                       angle = 90, hjust = 1, size = 3) +
    # room below the leaves for their labels, as long as the longest
    ggplot2::scale_y_continuous(expand = ggplot2::expansion(mult = c(min(0.6, 0.06 + 0.025 * max(nchar(ord))), 0.05)),
                                breaks = function(lim) pretty(c(0, lim[2]))) +
    ggplot2::labs(x = NULL, y = "distance (linkage height)", title = group_title(d, group)) +
    ggplot2::theme_minimal() +
    ggplot2::theme(axis.text.x = ggplot2::element_blank(), panel.grid.major.x = ggplot2::element_blank(),
                   panel.grid.minor = ggplot2::element_blank())
  if (!is.null(support)) {
    nodes <- support_labels(hc, attr(seg, "nodes"), support, call)
    p <- p + ggplot2::geom_label(data = nodes, ggplot2::aes(x = x, y = y, label = label), size = 2.6,
                                 label.size = 0, fill = "white", alpha = 0.8, vjust = -0.2)
  }
  ann <- annotation_frame(d, m, annotation, ord, call)
  if (!is.null(ann)) {
    ann$xpos <- match(as.character(ann$x), ord)
    ann$ypos <- -pad * (0.3 + 0.6 * (ann$track - 1)) + pad * 0.9
    p <- p + ggplot2::geom_point(data = ann, ggplot2::aes(x = xpos, y = ypos, colour = value),
                                 shape = 15, size = 3) +
      annotation_scale(ann)
  }
  # (last: a layer of its own, after those drawn)
  if (max(hc$height) == 0) p <- p + ggplot2::expand_limits(y = top)
  p
}

group_title <- function(d, group) {
  if (inherits(d, "phylo")) return(sprintf("MrVI sample tree, clade support from %s replicates", attr(d, "B") %||% "bootstrap"))
  if (is.array(d) && length(dim(d)) == 3) {
    g <- if (is.null(group)) dimnames(d)[[3]][1] else if (is.numeric(group)) dimnames(d)[[3]][group] else group
    paste("MrVI sample distances:", g)
  } else {
    "MrVI sample distances"
  }
}

# Long data for annotation bars: one row per (sample, annotation track), in
# colours of the track's own (a qualitative palette per categorical track, a
# sequential one over pretty bins for a numeric track, grey for NA), so that
# tracks never share colours; attr "legend": the entries, track by track.
annotation_frame <- function(d, m, annotation, ord, call) {
  if (is.null(annotation)) return(NULL)
  table <- annotation_table(d, m, annotation, ord, call)
  tracks <- lapply(seq_along(table), function(k) {
    coded <- annotation_colours(table[[k]], k)
    shown <- names(coded$palette)[names(coded$palette) %in% coded$label]  # (no empty bins)
    list(rows = data.frame(x = factor(ord, levels = ord), column = names(table)[k], track = k,
                           value = paste0(names(table)[k], ": ", coded$label),
                           colour = unname(coded$palette[coded$label])),
         legend = data.frame(colour = unname(coded$palette[shown]), label = paste0(names(table)[k], ": ", shown)))
  })
  structure(do.call(rbind, lapply(tracks, `[[`, "rows")), legend = do.call(rbind, lapply(tracks, `[[`, "legend")))
}

# The tracks' colours as they are, with one legend entry per value, track by
# track. Keyed by "track: value", not by colour: tracks may share a colour (two
# tracks of two categories, NA's grey), which an identity scale merged into one
# entry, under one track's label.
annotation_scale <- function(ann) {
  legend <- attr(ann, "legend")
  ggplot2::scale_colour_manual(name = "annotation", values = stats::setNames(legend$colour, legend$label),
                               breaks = legend$label)
}

# The annotation as a data.frame, one column per track, rows in the order `ord`:
# column names of the sample table, a data.frame with one row per sample (a
# `sample` column or row names), or a vector named by sample (one track).
annotation_table <- function(d, m, annotation, ord, call) {
  named_vector <- is.atomic(annotation) && !is.null(names(annotation))
  if (named_vector) {
    missing <- setdiff(ord, names(annotation))
    if (length(missing)) abort_arg("{.arg annotation} has no value for sample{?s} {.val {missing}}.", call = call)
    return(data.frame(annotation = unname(annotation[ord])))
  }
  if (!is.data.frame(annotation) && !(is.character(annotation) && length(annotation) && !anyNA(annotation))) {
    abort_arg(c("{.arg annotation} must be {.code NULL}, column names of the sample table, a data.frame with one row per sample, or a vector named by sample.",
                "i" = "Not {.obj_type_friendly {annotation}}."), call = call)
  }
  table <- if (is.data.frame(annotation)) annotation else attr(m, "sample_table") %||% attr(d, "sample_table")
  if (is.null(table)) abort_arg("{.arg annotation}: no sample table; give a data.frame with one row per sample.", call = call)
  keyed <- "sample" %in% names(table)
  columns <- if (is.data.frame(annotation)) setdiff(names(annotation), if (keyed) "sample") else annotation
  missing <- setdiff(columns, names(table))
  if (length(missing)) {
    abort_arg(c("{.arg annotation}: {.val {missing}} {cli::qty(length(missing))}{?is/are} not in the sample table.",
                "i" = "Columns: {show_some(names(table), 12)}."), call = call)
  }
  rows <- table_samples(table)
  idx <- match(ord, rows)
  if (anyNA(idx)) abort_arg("{.arg annotation} lacks sample{?s} {.val {ord[is.na(idx)]}}.", call = call)
  as.data.frame(table)[idx, columns, drop = FALSE]
}

# Each value's label and the track's palette (label -> colour): numbers in a
# sequential palette (binned on pretty breaks when more than 5 distinct), other
# values by level (a factor's order, else sorted) in a qualitative one; NA grey.
# Track k takes the k-th palette of each kind (recycled; the qualitative ones
# alternate dark and light), so that neighbouring tracks differ.
annotation_colours <- function(v, k) {
  # (no pastel palette: its colours looked like paler copies of the first track's)
  qualitative <- c("Dark 3", "Set 2", "Harmonic", "Dynamic", "Set 3", "Warm")
  sequential <- c("Blues 3", "Greens 3", "Purples 3", "Oranges", "Reds 3", "Grays")
  numeric <- is.numeric(v) && !all(is.na(v))
  values <- if (numeric && length(unique(v[!is.na(v)])) > 5) {
    cut(v, pretty(range(v, na.rm = TRUE), n = 4), include.lowest = TRUE, dig.lab = 4)
  } else {
    factor(v)
  }
  colours <- if (numeric) {
    # (the palette's lightest end left out: it vanishes on white)
    rev(grDevices::hcl.colors(nlevels(values) + 1, sequential[(k - 1) %% 6 + 1]))[-1]
  } else if (k > 1 && nlevels(values) == 2) {
    # a later track of two categories (a condition, a sex) in black and grey: no
    # hue to mistake for one of the first track's (missing values are lighter)
    c("grey10", "grey55")
  } else {
    grDevices::hcl.colors(max(nlevels(values), 1), qualitative[(k - 1) %% 6 + 1])[seq_len(nlevels(values))]
  }
  palette <- stats::setNames(colours, levels(values))
  label <- as.character(values)
  if (anyNA(label)) {
    # (a category spelled "NA" keeps its name; missing values get another)
    missing <- if ("NA" %in% levels(values)) "NA (missing)" else "NA"
    palette[[missing]] <- "grey80"
    label[is.na(label)] <- missing
  }
  list(label = label, palette = palette)
}

# Segments of an hclust drawn as a dendrogram, leaves at x = 1..n in tree order.
dendrogram_segments <- function(hc) {
  n <- length(hc$labels)
  leaf_x <- numeric(n)
  leaf_x[hc$order] <- seq_len(n)
  node_x <- numeric(n - 1)
  out <- vector("list", n - 1)
  for (i in seq_len(n - 1)) {
    ends <- lapply(hc$merge[i, ], function(k) if (k < 0) c(leaf_x[-k], 0) else c(node_x[k], hc$height[k]))
    h <- hc$height[i]
    node_x[i] <- (ends[[1]][1] + ends[[2]][1]) / 2
    out[[i]] <- data.frame(x = c(ends[[1]][1], ends[[2]][1], ends[[1]][1]),
                           y = c(ends[[1]][2], ends[[2]][2], h),
                           xend = c(ends[[1]][1], ends[[2]][1], ends[[2]][1]),
                           yend = c(h, h, h))
  }
  structure(do.call(rbind, out), nodes = data.frame(x = node_x, y = hc$height))
}

# Support values of a sampleTreeSupport() tree at the matching merges of `hc`
# (clades absent from the support tree are left blank).
support_labels <- function(hc, nodes, support, call) {
  if (!inherits(support, "phylo") || !is.numeric(support$node.label)) {
    abort_arg("{.arg support} must be a tree from {.fn sampleTreeSupport} (an ape phylo with numeric node labels).",
              call = call)
  }
  value <- support$node.label[match(hclust_clades(hc), phylo_clades(support))]
  nodes$label <- ifelse(is.na(value), "", formatC(value, format = "f", digits = 2))
  nodes[nodes$label != "", , drop = FALSE]
}

utils::globalVariables(c("x", "y", "xend", "yend", "distance", "value", "label", "xpos", "ypos", "colour"))

#' Fraction of cells whose sample distances follow a covariate, per group
#'
#' @param res the result of [cellAssociation()].
#' @param groups a vector over the rows of `res`, or a column name of
#'   `fit@cell_data` (then `fit` is needed).
#' @param fit the [MrVIFit-class], when `groups` is a column name.
#' @param alpha q-value threshold.
#' @return a ggplot bar chart.
#' @examples
#' sce <- simulateNested(400, 60, n_samples = 8, n_cell_types = 2, n_affected = 1, seed = 1)
#' fit <- mrvi(sce, sample = "sample", labels = "cell_type", max_epochs = 2, verbose = FALSE)
#' res <- cellAssociation(fit, setNames(rep(c("a", "b"), 4), fit@samples))
#' plotAssociation(res, "cell_type", fit = fit)
#' @export
plotAssociation <- function(res, groups, fit = NULL, alpha = 0.05) {
  call <- sys.call()
  check_required(call)
  # (any table of per-cell q-values; differentialExpression()'s and
  # groupAssociation()'s results have q-values too, a row per cell and
  # covariate or per group)
  table <- is.data.frame(res) || methods::is(res, "DataFrame")
  de <- table && "covariate" %in% colnames(res)
  per_group <- table && all(c("n_samples", "permutations") %in% colnames(res))
  if (!table || !"q_value" %in% colnames(res) || de || per_group) {
    abort_arg(c("{.arg res} must be the result of {.fn cellAssociation}.",
                "i" = if (de) "A {.fn differentialExpression} result has a row per cell and covariate: plot it by covariate yourself." else
                  if (per_group) "A {.fn groupAssociation} result is a table already: one q-value per group."),
              call = call)
  }
  if (!is.numeric(alpha) || length(alpha) != 1 || is.na(alpha) || alpha <= 0 || alpha >= 1) {
    abort_arg("{.arg alpha} must be one number in (0, 1).", call = call)
  }
  axis_title <- NULL
  # a column name, unless one value for a one-row result (a column of the fit wins)
  column <- is.character(groups) && length(groups) == 1 &&
    (nrow(res) != 1 || !is.null(fit) && methods::is(fit, "MrVIFit") && groups %in% names(fit@cell_data))
  if (column) {
    axis_title <- groups
    if (is.null(fit)) abort_arg("{.arg fit} is needed to read {.arg groups} = {.val {groups}}.", call = call)
    check_fit(fit, call)
    if (!groups %in% names(fit@cell_data)) {
      abort_arg(c("{.arg groups} = {.val {groups}} is not a column of the fitted cell data.",
                  "i" = "Available: {show_some(names(fit@cell_data), 12)}."), call = call)
    }
    # (groupAssociation()'s rows are groups: nothing of it is per cell)
    if (is.null(rownames(res)) || !all(rownames(res) %in% rownames(fit@cell_data))) {
      abort_arg(c("{.arg res} must be the result of {.fn cellAssociation} for {.arg fit}: its rows are not the fit's cells.",
                  "i" = "A {.fn groupAssociation} result is a table already: one q-value per group."), call = call)
    }
    groups <- fit@cell_data[rownames(res), groups]
  }
  groups <- association_groups(groups, rownames(res), call)
  if (!any(!is.na(groups) & !is.na(res$q_value))) {
    abort_arg(c("{.arg res} has no cell with both a q-value and a group: there is nothing to draw.",
                "i" = if (nrow(res)) "Check {.arg groups}: every value is {.code NA}." else "{.arg res} has no rows."),
              call = call)
  }
  groups <- as.factor(groups)
  tested <- !is.na(res$q_value)
  untested <- setdiff(levels(droplevels(groups[!is.na(groups)])), as.character(groups[tested]))
  if (length(untested)) {
    inform(c("i" = "{cli::qty(length(untested))}Group{?s} {.val {untested}} {?has/have} no cell with a q-value: left out."))
  }
  df <- stats::aggregate(list(fraction = res$q_value[tested] < alpha), list(group = droplevels(groups[tested])), mean)
  # (bars of height 0 alone look like a figure that failed to draw)
  subtitle <- if (all(df$fraction == 0, na.rm = TRUE)) sprintf("no cell has q < %g", alpha)
  ggplot2::ggplot(df, ggplot2::aes(x = group, y = fraction)) +
    ggplot2::geom_col(fill = "#7f0000") +
    ggplot2::scale_y_continuous(limits = c(0, 1)) +
    ggplot2::labs(x = axis_title, y = sprintf("fraction of cells with q < %g", alpha),
                  title = paste("Sample distances follow", association_covariate(res) %||% "the covariate"),
                  subtitle = subtitle) +
    ggplot2::theme_minimal() +
    ggplot2::theme(axis.text.x = ggplot2::element_text(angle = 45, hjust = 1))
}

# plotAssociation()'s groups, one per row of the result: a vector named by cell
# (e.g. a Seurat object's column, over more cells than were tested) is read by
# the rows' cell names; an unnamed one by position.
association_groups <- function(groups, cells, call) {
  nms <- names(groups)
  if (!is.null(nms) && !is.null(cells) && any(cells %in% nms)) {
    missing <- setdiff(cells, nms)
    if (length(missing) || anyDuplicated(nms)) {
      abort_arg(c("{.arg groups} is named by cell, but does not name each row of {.arg res} once.",
                  "x" = if (length(missing)) "{length(missing)} cell{?s} of {.arg res} {?has/have} no value: {show_some(missing, 3)}.",
                  "x" = if (anyDuplicated(nms)) "Some names are given more than once: {show_some(unique(nms[duplicated(nms)]), 3)}.",
                  "i" = "Give a value for every cell of {.arg res}, or an unnamed vector in the order of its rows."),
                call = call)
    }
    return(groups[cells])
  }
  if (length(groups) != length(cells)) {
    abort_arg(c("{.arg groups} must have one value per row of {.arg res} ({length(cells)}), or be named by cell.",
                "i" = "It has {length(groups)} value{?s}: for a vector over more cells, name it by cell."), call = call)
  }
  groups
}

utils::globalVariables(c("group", "fraction"))
