#' Write MrVI latents back into a SingleCellExperiment or Seurat object
#'
#' For a `SingleCellExperiment`: `reducedDim(object, "MrVI_u")` and
#' `"MrVI_z"`, and the fit in `metadata(object)$mrvi`. For a Seurat object: the
#' reductions `mrvi_u` and `mrvi_z` (keys `mrviu_` and `mrviz_`; of the assay
#' the fit read its counts from when the object has it), and the fit
#' in `Tool(object, slot = "addMrVI")`. Sample distances from
#' [sampleDistances()], when given, go to `metadata(object)$mrvi_distances` or
#' `Misc(object, "mrvi_distances")`. Per-cell results of [cellAssociation()],
#' when given, become cell columns `mrvi_<covariate>_statistic` and
#' `mrvi_<covariate>_q` (colData / meta.data; `NA` for cells not tested). Results of
#' [differentialExpression()], when given, become `mrvi_de_<covariate>_effect`
#' (the latent effect size), `mrvi_de_<covariate>_max_lfc` (the largest |log2
#' fold change| over genes) and `mrvi_de_<covariate>_q` per covariate. Cells of the
#' object that the fit did not use (for example empty cells dropped by
#' [mrviData()]) get `NA` rows, with a message; cell columns of the object with
#' the names written are replaced, with a message. Results of another fit stored
#' before in `object` (its stored distances and result columns) are removed, with a
#' message: they would stand beside this fit's latents as if its own. Objects with
#' duplicated cell names, and Seurat objects with a cell column named `mrvi_u` or
#' `mrvi_z` (Seurat would skip the reduction), are refused.
#'
#' @param object the `SingleCellExperiment` or Seurat object the fit was made from.
#' @param fit a [MrVIFit-class].
#' @param distances optional result of [sampleDistances()] to store as well.
#' @param association optional result of [cellAssociation()] to store as well.
#' @param differential optional result of [differentialExpression()] to store as well.
#' @return `object` with the latents added.
#' @examples
#' if (requireNamespace("SingleCellExperiment", quietly = TRUE)) {
#'   sim <- mrvi:::example_counts()
#'   sce <- SingleCellExperiment::SingleCellExperiment(list(counts = sim$counts),
#'     colData = data.frame(sample = sim$sample))
#'   fit <- mrvi(sce, sample = "sample", max_epochs = 2, verbose = FALSE)
#'   sce <- addMrVI(sce, fit)
#'   SingleCellExperiment::reducedDimNames(sce)
#' }
#' @export
addMrVI <- function(object, fit, distances = NULL, association = NULL, differential = NULL) {
  call <- sys.call()
  check_required(call)
  check_fit(fit, call)
  cells <- colnames(object)
  # an object without cell names: mrvi() named its cells by position (mrviData())
  if (is.null(cells) && length(ncol(object)) == 1) {
    # (a fit of a subset of the object names its cells by their positions in the
    # subset: matched to the whole object they would be other cells)
    given <- fit@config$n_input_cells
    if (!is.null(given) && is.null(fit@config$added) && given != ncol(object)) {
      abort_arg(c("{.arg object} has no cell names, so its cells can only be matched to the fit's by position, but the fit was made from {given} cell{?s} and {.arg object} has {ncol(object)}.",
                  "i" = "Use the object the fit was made from, or give both the same cell names ({.code colnames(object) <- ...}) before {.fn mrvi}."),
                call = call)
    }
    cells <- paste0("cell", seq_len(ncol(object)))
    if (all(rownames(fit@u_mean) %in% cells)) {
      inform(c("i" = "{.arg object} has no cell names: its cells are matched to the fit's by position, as {.fn mrvi} named them ({.val cell1}, ...)."))
    }
  }
  if (is.null(cells) || !any(cells %in% rownames(fit@u_mean))) {
    abort_arg(c("{.arg object} shares no cell names with {.arg fit}.",
                "i" = "Use the object the fit was made from."), call = call)
  }
  # (each copy would get the first's latents; mrvi() refuses such names)
  if (anyDuplicated(cells)) {
    abort_arg(c("{.arg object} has {sum(duplicated(cells))} duplicated cell name{?s}, e.g. {show_some(unique(cells[duplicated(cells)]), 3)}: its cells cannot be matched to the fit's.",
                "i" = "Give its cells the names they had when fitted."), call = call)
  }
  # a Seurat object ignores a reduction named as one of its cell columns
  taken <- if (methods::is(object, "Seurat")) intersect(c("mrvi_u", "mrvi_z"), names(object[[]]))
  if (length(taken)) {
    rename <- sprintf("object$my_%s <- object$%s; object$%s <- NULL", taken[1], taken[1], taken[1])
    abort_arg(c("{.arg object} has {cli::qty(length(taken))}cell column{?s} {.val {taken}}, named as the reductions {.fn addMrVI} writes (Seurat would ignore them).",
                "i" = "Rename {cli::qty(length(taken))}{?it/them} first, e.g. {.code {rename}}."),
              call = call)
  }
  check_same_data(object, fit, cells, call)
  result_of <- function(x, arg, fn, columns) {
    if (!is.null(x) && !((is.data.frame(x) || methods::is(x, "DataFrame")) && all(columns %in% colnames(x)))) {
      abort_arg("{.arg {arg}} must be the result of {.fn {fn}}.", call = call)
    }
  }
  # grouped [S, S, G] (or one group's matrix) or per-cell [cells, S, S], over the fit's samples
  over_samples <- function(k) all(vapply(k, function(i) identical(dimnames(distances)[[i]], fit@samples), logical(1)))
  if (!is.null(distances) && !(is.array(distances) && is.numeric(distances) && length(dim(distances)) %in% c(2, 3) &&
                               (over_samples(1:2) || length(dim(distances)) == 3 && over_samples(2:3)))) {
    abort_arg("{.arg distances} must be the result of {.fn sampleDistances} for {.arg fit}.", call = call)
  }
  result_of(association, "association", "cellAssociation", c("statistic", "q_value"))
  # (groupAssociation()'s rows are groups, differentialExpression()'s carry a covariate column)
  if (!is.null(association) && ("covariate" %in% colnames(association) ||
                                !any(rownames(association) %in% rownames(fit@u_mean)))) {
    abort_arg(c("{.arg association} must be the result of {.fn cellAssociation} for {.arg fit}: its rows are not the fit's cells.",
                "i" = "A {.fn groupAssociation} result has a row per group; it goes in {.code metadata()} by hand, not into cell columns."),
              call = call)
  }
  # (grouped distances of the baselines carry n_cells but not sampleDistances()'s space)
  if (!is.null(distances) && !is.null(attr(distances, "n_cells")) && is.null(attr(distances, "space"))) {
    abort_arg(c("{.arg distances} must be the result of {.fn sampleDistances}, not of a baseline.",
                "i" = "Store baseline distances in {.code metadata()} under a name of your own."), call = call)
  }
  result_of(differential, "differential", "differentialExpression", c("cell", "covariate", "effect_size", "q_value"))
  # (another fit's result: every column would be NA)
  if (!is.null(differential) && !any(as.character(differential$cell) %in% rownames(fit@u_mean))) {
    abort_arg("{.arg differential} must be the result of {.fn differentialExpression} for {.arg fit}: none of its cells is the fit's.",
              call = call)
  }
  cell_cols <- c(if (!is.null(association)) association_columns(association, cells),
                  if (!is.null(differential)) differential_columns(differential, cells))
  # an association and a DE result whose columns would share names (covariates
  # "de_x" and "x") keep both
  clash <- duplicated(names(cell_cols))
  if (any(clash)) {
    names(cell_cols) <- make.unique(names(cell_cols))
    inform(c("i" = "Column{?s} {.val {names(cell_cols)[clash]}} renamed: {?its name was/their names were} taken by another result of this call."))
  }
  # NA rows in a reduction break what reads it next (UMAP, neighbours): say so, with the cure
  unfitted <- setdiff(cells, rownames(fit@u_mean))
  if (length(unfitted)) {
    inform(c("i" = "{length(unfitted)} cell{?s} of {.arg object} {?is/are} not in the fit (e.g. cells without counts, left out by {.fn mrvi}): {show_some(unfitted, 3)}; {cli::qty(length(unfitted))}{?its/their} latents and results are {.code NA}.",
             "i" = "Steps that read the reductions (UMAP, neighbours) need them left out: {.code subset(object, cells = rownames(fit@u_mean))} (Seurat) or {.code object[, rownames(fit@u_mean)]}."),
           class = "mrvi_unfitted_cells")
  }
  # results of an earlier call (or the user's own columns) under the same names
  sce <- methods::is(object, "SingleCellExperiment")
  existing <- if (sce) names(SummarizedExperiment::colData(object)) else
    if (methods::is(object, "Seurat")) names(object[[]])
  # the results of another fit stored before would stand beside this fit's
  # latents as if they were its own: they are removed
  before <- if (sce) S4Vectors::metadata(object)$mrvi else if (methods::is(object, "Seurat")) methods::slot(object, "tools")[["addMrVI"]]
  if (methods::is(before, "MrVIFit") && !identical(before@weights, fit@weights)) {
    stale <- setdiff(grep(result_column_pattern, existing, value = TRUE), names(cell_cols))
    old_distances <- is.null(distances) &&
      !is.null(if (sce) S4Vectors::metadata(object)$mrvi_distances else SeuratObject::Misc(object, slot = "mrvi_distances"))
    if (length(stale) || old_distances) {
      inform(c("i" = "{.arg object} held results of another fit, now removed: {.val {c(stale, if (old_distances) 'mrvi_distances')}}."),
             class = "mrvi_replaced_columns")
    }
    if (old_distances) {
      if (sce) S4Vectors::metadata(object)$mrvi_distances <- NULL else object <- seurat_misc(object, NULL)
    }
    for (nm in stale) if (sce) SummarizedExperiment::colData(object)[[nm]] <- NULL else object[[nm]] <- NULL
  }
  replaced <- intersect(names(cell_cols), existing)
  if (length(replaced)) {
    inform(c("i" = "Replacing the cell column{?s} {.val {replaced}} of {.arg object}."), class = "mrvi_replaced_columns")
  }
  u <- align_rows(mrviLatent(fit, which = "u"), cells)
  z <- align_rows(mrviLatent(fit, which = "z"), cells)
  # (rows named as the object's cells: none when it has no cell names)
  if (is.null(colnames(object))) rownames(u) <- rownames(z) <- NULL
  if (methods::is(object, "SingleCellExperiment")) {
    SingleCellExperiment::reducedDim(object, "MrVI_u") <- u
    SingleCellExperiment::reducedDim(object, "MrVI_z") <- z
    S4Vectors::metadata(object)$mrvi <- fit
    if (!is.null(distances)) S4Vectors::metadata(object)$mrvi_distances <- distances
    for (nm in names(cell_cols)) SummarizedExperiment::colData(object)[[nm]] <- cell_cols[[nm]]
    return(object)
  }
  if (methods::is(object, "Seurat")) {
    # the assay the fit read its counts from, when it is in this object
    assay <- fit@config$seurat_assay
    if (is.null(assay) || !assay %in% SeuratObject::Assays(object)) assay <- SeuratObject::DefaultAssay(object)
    # every cell of the object (NA rows for cells the fit did not use): a Seurat
    # (v4) reduction must cover all cells
    colnames(u) <- paste0("mrviu_", seq_len(ncol(u)))
    colnames(z) <- paste0("mrviz_", seq_len(ncol(z)))
    object[["mrvi_u"]] <- SeuratObject::CreateDimReducObject(embeddings = u, key = "mrviu_", assay = assay)
    object[["mrvi_z"]] <- SeuratObject::CreateDimReducObject(embeddings = z, key = "mrviz_", assay = assay)
    # under the documented name: `Tool<-` names the slot after the calling
    # function as written, which gave "mrvi::addMrVI", "" (do.call) or "FUN" (lapply)
    tools <- methods::slot(object, "tools")
    tools[["addMrVI"]] <- fit
    methods::slot(object, "tools") <- tools
    if (!is.null(distances)) object <- seurat_misc(object, distances)
    for (nm in names(cell_cols)) object[[nm]] <- cell_cols[[nm]]
    return(object)
  }
  abort_arg("{.arg object} must be a {.cls SingleCellExperiment} or a {.cls Seurat} object.",
            call = call)
}

# `object` with Misc(, "mrvi_distances") set to `value` (NULL removes it),
# without SeuratObject's warning that it overwrites: addMrVI() says so itself.
seurat_misc <- function(object, value) {
  withCallingHandlers(SeuratObject::Misc(object, slot = "mrvi_distances") <- value,
                      warning = function(w) if (grepl("^Overwriting miscel", conditionMessage(w))) invokeRestart("muffleWarning"))
  object
}

align_rows <- function(m, cells) {
  out <- matrix(NA_real_, length(cells), ncol(m), dimnames = list(cells, colnames(m)))
  hit <- cells %in% rownames(m)
  out[hit, ] <- m[cells[hit], , drop = FALSE]
  out
}

# The names of the per-cell result columns that the two functions below write
# (their covariates' names between "mrvi_" and a suffix), which are not sample
# covariates of a later fit (make_sample_table()).
result_column_pattern <- "^mrvi_.*_(statistic|q|effect|max_lfc)$"

# Columns mrvi_<covariate>_statistic and _q over the object's cells.
association_columns <- function(association, cells) {
  cov <- make.names(association_covariate(association) %||% "covariate")
  idx <- match(cells, rownames(association))
  out <- list(association$statistic[idx], association$q_value[idx])
  names(out) <- paste0("mrvi_", cov, c("_statistic", "_q"))
  out
}

# Columns mrvi_de_<covariate>_effect, _max_lfc and _q over the object's cells.
# (Covariates whose syntactic names coincide, "arm x" and "arm.x", get
# make.unique()'s suffixes rather than overwriting each other.)
differential_columns <- function(differential, cells) {
  covariates <- unique(differential$covariate)
  keys <- make.unique(make.names(covariates))
  out <- list()
  for (k in seq_along(covariates)) {
    rows <- differential[differential$covariate == covariates[k], ]
    idx <- match(cells, rows$cell)
    out[[paste0("mrvi_de_", keys[k], "_effect")]] <- rows$effect_size[idx]
    out[[paste0("mrvi_de_", keys[k], "_max_lfc")]] <- rows$max_lfc[idx]
    out[[paste0("mrvi_de_", keys[k], "_q")]] <- rows$q_value[idx]
  }
  out
}

# A fit of other cells under the same names (10x barcodes repeat between runs,
# and so do "<barcode>-<library>" names with one library per sample) would put
# other cells' latents into `object`: up to 20 shared cells are encoded again
# from `object`'s counts, under their fitted samples, and must give the fit's
# posterior means (the same counts give them up to rounding). Skipped where
# `object` lacks the counts the fit read (another assay, missing genes).
check_same_data <- function(object, fit, cells, call) {
  shared <- which(cells %in% rownames(fit@u_mean))
  pick <- shared[unique(round(seq(1, length(shared), length.out = min(20, length(shared)))))]
  rows <- match(cells[pick], rownames(fit@u_mean))
  again <- tryCatch(suppressMessages(suppressWarnings(
    mrviLatent(fit, x = object[, pick], sample = as.character(fit@cell_data$sample[rows])))),
    error = function(e) NULL)
  if (is.null(again)) return(invisible())
  stored <- fit@u_mean[rows, , drop = FALSE]
  other <- rowSums(abs(again - stored)) > 1e-3 * (1 + rowSums(abs(stored)))
  if (!any(other, na.rm = TRUE)) return(invisible())
  abort_arg(c("{.arg fit} was not made from {.arg object}: the counts of {sum(other, na.rm = TRUE)} of {length(pick)} cells checked ({show_some(cells[pick][which(other)], 3)}) give other latents than the fit has for cells of those names.",
              "i" = "Cell names can repeat between datasets (10x barcodes); use the object the fit was made from."),
            call = call)
}
