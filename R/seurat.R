# Raw counts out of a Seurat object, through SeuratObject's own API (never the
# slots): v4 assays through GetAssayData(), v5 assays through Layers()/LayerData(),
# with split layers ("counts.1", "counts.2", ...) joined in the object's cell order.

seurat_counts <- function(x, assay, call) {
  if (!requireNamespace("SeuratObject", quietly = TRUE)) {
    abort_arg("Reading a Seurat object needs the {.pkg SeuratObject} package.", call = call)
  }
  if (!is.character(assay) || length(assay) != 1 || is.na(assay)) {
    abort_arg("{.arg assay} must be one string: a counts layer or a Seurat assay name.", call = call)
  }
  assays <- SeuratObject::Assays(x)
  if (assay %in% assays) {
    seurat_assay <- assay
    layer <- "counts"
  } else {
    seurat_assay <- SeuratObject::DefaultAssay(x)
    layer <- assay
  }
  a <- x[[seurat_assay]]
  cells <- colnames(x)
  counts <- if (inherits(a, "Assay5")) {
    assay5_counts(a, layer, seurat_assay, cells, call)
  } else {
    if (!layer %in% c("counts", "data")) {
      abort_arg(c("{.arg assay} = {.val {assay}} is neither a Seurat assay ({.val {assays}}) nor a slot holding counts.",
                  "i" = "Use {.code assay = \"counts\"}."), call = call)
    }
    m <- SeuratObject::GetAssayData(x, slot = layer, assay = seurat_assay)
    if (prod(dim(m)) == 0) {
      abort_arg(c("The Seurat assay {.val {seurat_assay}} has no {.val {layer}}.",
                  "i" = "MrVI needs raw counts: {.code CreateSeuratObject(counts = ...)} keeps them."),
                call = call)
    }
    m
  }
  counts <- as_dgc(counts, arg = "assay", call = call)
  # the assay read, kept with the fit so that addMrVI() tags its reductions with it
  attr(counts, "seurat_assay") <- seurat_assay
  counts
}

# `layers` and `layer_data` are SeuratObject's Layers() and LayerData(), passed in
# so that the joining logic can be tested where SeuratObject 5 is not installed.
assay5_counts <- function(a, layer, seurat_assay, cells, call,
                          layers = seurat_fn("Layers"), layer_data = seurat_fn("LayerData")) {
  pattern <- paste0("^", gsub(".", "\\.", layer, fixed = TRUE), "(\\.|$)")
  all_layers <- layers(a)
  layers <- grep(pattern, all_layers, value = TRUE)
  if (!length(layers)) {
    abort_arg(c("The Seurat assay {.val {seurat_assay}} has no layer {.val {layer}}.",
                "i" = "Its layers: {.val {all_layers}}. MrVI needs raw counts."), call = call)
  }
  features <- rownames(a)
  parts <- lapply(layers, function(l) as_dgc(layer_data(a, layer = l), arg = "assay", call = call))
  # On-disk layers (a DelayedMatrix, e.g. HDF5-backed) stay on disk: every layer
  # is then joined and reordered as a delayed operation, and the counts are read
  # block by block like any counts on disk (see ?mrviData).
  on_disk <- any(vapply(parts, is_on_disk, logical(1)))
  if (on_disk) parts <- lapply(parts, DelayedArray::DelayedArray)
  parts <- lapply(parts, with_all_features, features)
  m <- if (length(parts) == 1) parts[[1]] else do.call(if (on_disk) DelayedArray::acbind else cbind, parts)
  missing <- setdiff(cells, colnames(m))
  if (length(missing)) {
    abort_arg("The {.val {layer}} layers of assay {.val {seurat_assay}} lack {length(missing)} cell{?s} of the object.",
              call = call)
  }
  if (identical(colnames(m), cells)) m else m[, cells, drop = FALSE]
}

# A split layer may hold fewer features: its rows placed among all `features`
# (the missing ones zero).
with_all_features <- function(m, features) {
  if (identical(rownames(m), features)) return(m)
  missing <- setdiff(features, rownames(m))
  zero <- Matrix::sparseMatrix(i = integer(), j = integer(), x = numeric(), dims = c(length(missing), ncol(m)),
                               dimnames = list(missing, colnames(m)))
  full <- if (is_on_disk(m)) DelayedArray::arbind(m, DelayedArray::DelayedArray(zero)) else rbind(m, zero)
  full[features, , drop = FALSE]
}

# Functions of SeuratObject >= 5 (layers), looked up at run time so that the
# package also installs and checks against SeuratObject 4.
seurat_fn <- function(name) getExportedValue("SeuratObject", name)
