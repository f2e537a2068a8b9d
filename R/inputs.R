#' Read and check the input of a MrVI analysis
#'
#' `mrviData()` is the one entry point through which every analysis reads its
#' input. It takes raw counts as a genes x cells `dgCMatrix` (or any other
#' `Matrix`), a base `matrix`, a `SingleCellExperiment`, or a Seurat object
#' (SeuratObject v4 `Assay`, or v5 `Assay5` with its counts layers split or
#' joined), checks them, and returns what the model needs, without densifying
#' the count matrix.
#'
#' @param x raw counts, genes in rows and cells in columns: a `dgCMatrix` (or
#'   other `Matrix`), a numeric `matrix`, a `DelayedArray` (such as an
#'   `HDF5Matrix` or `TENxMatrix`; kept on disk, see "Counts on disk"), a
#'   `SingleCellExperiment` (also HDF5-backed) or a Seurat object.
#' @param sample the sample (donor, patient, perturbation) of every cell: a
#'   column name of `colData(x)` / the Seurat `meta.data`, or a vector with one
#'   value per cell. Required; at least two samples (see `min_samples`). Text
#'   ids are ordered as in the C locale (byte order, so that a seed gives the
#'   same fit in every locale); a factor keeps its levels' order. A vector named
#'   by cell (and a data.frame or matrix of covariates whose row names are the
#'   cells) is matched to the cells by name, in any order; names that are some
#'   cells' but not each cell's once are refused.
#' @param batch optional categorical nuisance covariates (site, technology,
#'   chemistry): one, as a column name or a vector with one value per cell; or
#'   several, as a character vector of column names, or a data.frame or named
#'   list of columns (names or vectors). No NA; with several, none may be
#'   constant in a fit (new cells for a fitted model may share one level).
#' @param labels optional cell labels (for example cell types): a column name or
#'   a vector with one value per cell.
#' @param assay for a `SingleCellExperiment`, the assay holding raw counts
#'   (default `"counts"`; a name or a position). For a Seurat object, either the layer (v5) or slot
#'   (v4) holding raw counts in the default assay (default `"counts"`), or the
#'   name of a Seurat assay, whose `counts` are then used.
#' @param min_samples the fewest samples with cells that `x` may have: 2 (the
#'   default) to fit or compare samples; 1 to read new cells for a fitted model.
#' @param continuous_covariates optional numeric nuisance covariates (fraction
#'   of mitochondrial reads, library complexity): column names, a numeric vector
#'   (one covariate, named `continuous`), or a data.frame, matrix or named list
#'   of columns. Finite, and not constant in a fit, on a scale whose mean and
#'   sd are finite (a covariate near 1e200 is refused).
#' @param ... unused; an error names anything given here.
#'
#' @details
#' Counts must be numeric (not a logical or pattern matrix), finite,
#' non-negative whole numbers; the error says how many values break this and
#' where the first ones are (counts on disk: at least how many, counted up to
#' the block where the check stopped). A count may be at most 2^24 =
#' 16,777,216, the largest whole number the model's single-precision arithmetic
#' holds exactly (beyond it the likelihood is rounding noise); a cell's total may
#' exceed the integer range. Values of `sample`, `batch` and
#' `labels` may not be NA or empty (`""`). Cells with no counts and
#' genes with no counts in any cell carry no information for the model: they
#' are **dropped, with a message** saying how many (the returned object lists
#' them). A sample left with no cells is dropped too.
#'
#' The sample table has one row per sample (`sample`, `n_cells`) and, as
#' sample-level covariates, every per-cell column (of `colData`/`meta.data`, and
#' `batch` and `labels` when given as vectors) whose value is constant within
#' each sample. It is found automatically (the per-cell results that
#' [addMrVI()] writes, `mrvi_<covariate>_q` and the like, are not covariates).
#'
#' @section Counts on disk: a `DelayedArray` (an `HDF5Matrix`, a `TENxMatrix`,
#'   the assay of a `SingleCellExperiment` saved with
#'   `HDF5Array::saveHDF5SummarizedExperiment()`, Seurat v5 counts layers
#'   that are such matrices) is never read whole: the
#'   checks and totals take one pass over blocks of consecutive cells (as many
#'   as fill `DelayedArray::getAutoBlockSize()` with dense doubles, at most a
#'   20th of the cells), `counts`
#'   stays a `DelayedArray`, and [mrvi()] trains on blocks read in shuffled
#'   order. A `TENxMatrix` (the 10x Genomics HDF5 layout) is read straight from
#'   its file, the fastest form on disk; dense HDF5 datasets cost decompressing
#'   every zero. Baselines, new cells and added samples read such counts into
#'   memory. An HDF5 dataset is decompressed a chunk at a time: a block of cells
#'   narrower than its chunks (`DelayedArray::chunkdim(x)`;
#'   `saveHDF5SummarizedExperiment()` makes wide ones by default) decompresses
#'   each chunk once per block that reads it, which made training from such a
#'   file ~4x slower than in memory. Write the counts in chunks of few cells
#'   (`HDF5Array::writeHDF5Array(x, chunkdim = c(nrow(x), 100))`) or give
#'   [mrvi()] a `block_cells` that is a multiple of the chunks' width.
#'
#' @return an object of class `mrvi_data`: a list with `counts` (genes x cells
#'   `dgCMatrix`, or the `DelayedArray` of counts on disk), `disk` (for counts
#'   on disk, what is read from them; else `NULL`), `sample`, `batch` and `labels` (factors over cells; `batch`
#'   has one level when not given and is the combination of the levels when
#'   several covariates are, `labels` is `NULL` when not given), `batch_given`
#'   (whether `batch` was given), `nuisance` (`NULL` with at most one categorical
#'   covariate and no continuous one, else a list of `factors`: a data.frame of the
#'   categorical covariates when there are two or more, and `continuous`: one of
#'   the continuous covariates, each `NULL` when absent), `sample_table` (a
#'   data.frame), `library_size`, `gene_total` (per-gene totals of counts on disk,
#'   else `NULL`), `dropped` (the names of dropped cells and genes, and
#'   `cell_positions`, the dropped cells' columns in `x`), `cell_meta` (per-cell
#'   metadata, or `NULL`; a column named as one of the fit's own but holding other
#'   values is renamed `<name>.1`), `source` (the input's class) and `columns` (the
#'   metadata columns that `sample`, `batch` and `labels` named).
#' @examples
#' counts <- Matrix::rsparsematrix(50, 40, density = 0.3,
#'   rand.x = function(n) rpois(n, 5) + 1)
#' dimnames(counts) <- list(paste0("gene", 1:50), paste0("cell", 1:40))
#' d <- mrviData(counts, sample = rep(c("A", "B", "C", "D"), each = 10))
#' d
#' d$sample_table
#' @export
mrviData <- function(x, sample, batch = NULL, labels = NULL, assay = "counts", min_samples = 2,
                  continuous_covariates = NULL, ...) {
  check_required(sys.call())
  UseMethod("mrviData")
}

#' @export
mrviData.default <- function(x, sample, batch = NULL, labels = NULL, assay = "counts", min_samples = 2,
                  continuous_covariates = NULL, ...) {
  abort_arg(c("{.arg x} must hold raw counts, genes x cells.",
              "x" = "You gave an object of class {.cls {class(x)}}.",
              "i" = paste("Supported: a {.cls dgCMatrix} (or other {.cls Matrix}), a numeric",
                          "{.cls matrix}, a {.cls DelayedArray} (e.g. {.cls HDF5Matrix}),",
                          "a {.cls SingleCellExperiment} or a {.cls Seurat} object.")))
}

# (also the method for DelayedArray/HDF5Array counts: see NAMESPACE)
#' @export
mrviData.Matrix <- function(x, sample, batch = NULL, labels = NULL, assay = "counts", min_samples = 2,
                  continuous_covariates = NULL, ...) {
  check_dots(...)
  build_mrvi_data(as_dgc(x), cell_meta = NULL, sample = sample, batch = batch,
                  labels = labels, min_samples = min_samples, continuous = continuous_covariates, source = class(x)[1], call = rlang_caller(1))
}

#' @export
mrviData.matrix <- function(x, sample, batch = NULL, labels = NULL, assay = "counts", min_samples = 2,
                  continuous_covariates = NULL, ...) {
  check_dots(...)
  if (!is.numeric(x)) {
    abort_arg(c("{.arg x} must be a numeric matrix of counts.",
                "x" = "It is a {typeof(x)} matrix."), call = rlang_caller(1))
  }
  build_mrvi_data(as_dgc(x), cell_meta = NULL, sample = sample, batch = batch,
                  labels = labels, min_samples = min_samples, continuous = continuous_covariates, source = "matrix", call = rlang_caller(1))
}

#' @export
mrviData.SummarizedExperiment <- function(x, sample, batch = NULL, labels = NULL,
                                          assay = "counts", min_samples = 2,
                  continuous_covariates = NULL, ...) {
  check_dots(...)
  call <- rlang_caller(1)
  available <- SummarizedExperiment::assayNames(x)
  n_assays <- length(SummarizedExperiment::assays(x, withDimnames = FALSE))  # (dimnames would read an HDF5 file)
  # a name, or a position as SummarizedExperiment::assay() takes it (assays may be unnamed)
  position <- is.numeric(assay) && length(assay) == 1 && assay %in% seq_len(n_assays)
  if (!position && (!is.character(assay) || length(assay) != 1 || !assay %in% available)) {
    abort_arg(c("{.arg assay} must name an assay of {.arg x} that holds raw counts, or give its position.",
                "x" = if (length(available)) "{.val {assay}} is not one of its assays: {.val {available}}." else
                  "{.val {assay}} is not one of its {n_assays} assay{?s}, which have no names: give a position (1..{n_assays})."),
              call = call)
  }
  # (an HDF5-backed assay whose file has moved fails here, as an invalid subscript)
  counts <- read_from_disk(SummarizedExperiment::assay(x, assay, withDimnames = TRUE), call)
  meta <- as.data.frame(SummarizedExperiment::colData(x), optional = TRUE)
  build_mrvi_data(as_dgc(counts, arg = "assay"), cell_meta = meta, sample = sample,
                  batch = batch, labels = labels, min_samples = min_samples, continuous = continuous_covariates, source = class(x)[1], call = call,
                  assay = assay)
}

#' @export
mrviData.Seurat <- function(x, sample, batch = NULL, labels = NULL, assay = "counts", min_samples = 2,
                  continuous_covariates = NULL, ...) {
  check_dots(...)
  call <- rlang_caller(1)
  counts <- seurat_counts(x, assay, call)
  seurat_assay <- attr(counts, "seurat_assay")
  attr(counts, "seurat_assay") <- NULL
  meta <- x[[]]
  data <- build_mrvi_data(counts, cell_meta = meta, sample = sample, batch = batch, labels = labels,
                          min_samples = min_samples, continuous = continuous_covariates, source = "Seurat", call = call,
                          assay = assay)
  data$seurat_assay <- seurat_assay
  data
}

# --- building and checking ---------------------------------------------------------

# `assay`: the assay (or Seurat layer) the counts were read from, named by the
# errors about their values.
build_mrvi_data <- function(counts, cell_meta, sample, batch, labels, min_samples, source, call,
                            continuous = NULL, assay = NULL) {
  min_samples <- check_count(min_samples, "min_samples", call)
  # counts on disk are read from the object as given (R/on-disk.R); reading
  # their type is the first read of the file (which may have gone since)
  disk <- if (is_on_disk(counts)) disk_source(counts)
  if (!is.null(disk) && !read_from_disk(DelayedArray::type(counts), call) %in% c("double", "integer")) {
    abort_arg(c("{.arg x} must hold numeric counts.",
                "x" = "It is a {.cls DelayedArray} of type {DelayedArray::type(counts)}.",
                "i" = "Use the raw counts, a numeric matrix of whole numbers."), call = call)
  }
  n_genes <- nrow(counts)
  n_cells <- ncol(counts)
  if (n_genes == 0 || n_cells == 0) {
    abort_arg("{.arg x} has {n_genes} gene{?s} and {n_cells} cell{?s}: it needs both.", call = call)
  }
  if (is.null(colnames(counts))) colnames(counts) <- paste0("cell", seq_len(n_cells))
  if (is.null(rownames(counts))) rownames(counts) <- paste0("gene", seq_len(n_genes))
  # genes are matched by name (new cells) and cells name the rows of the results
  check_unique(rownames(counts), "gene", call)
  check_unique(colnames(counts), "cell", call)
  if (missing(sample) || is.null(sample)) {
    abort_arg(c("{.arg sample} is required: the sample (donor, patient, perturbation) of every cell.",
                "i" = sample_hint(cell_meta, n_cells)), call = call)
  }

  # the metadata columns that `sample`, one `batch` and `labels` name (cells added
  # to the fit later with vectors get these columns too)
  columns <- Filter(Negate(is.null), lapply(list(sample = sample, batch = batch, labels = labels), function(v) {
    if (is.character(v) && length(v) == 1 && v %in% names(cell_meta)) v
  }))
  sample <- resolve_cell_factor(sample, "sample", cell_meta, counts, call)
  unused <- levels(sample)[tabulate(sample, nlevels(sample)) == 0]  # (levels of a subset's factor)
  factors <- resolve_batch(batch, cell_meta, counts, call)
  continuous <- resolve_continuous(continuous, cell_meta, counts, call)
  # one name per covariate in the cell data: a continuous covariate named as a
  # categorical one (or "batch", the name of the combination) was read back as it
  shared <- intersect(names(continuous), c(names(factors), "batch"))
  if (length(shared)) {
    abort_arg(c("{.arg continuous_covariates} {cli::qty(length(shared))}{?has a name/have names} of {.arg batch}'s covariates (or {.val batch}, reserved for them): {.val {shared}}.",
                "i" = "Give the continuous covariates names of their own (for example {.code continuous_covariates = data.frame(mito = ...)})."),
              call = call)
  }
  # several covariates: `batch` is their combination (for the sample table and printing)
  batch <- if (is.null(factors)) NULL else if (ncol(factors) == 1) factors[[1]] else combined_levels(factors)
  labels <- if (is.null(labels)) NULL else resolve_cell_factor(labels, "labels", cell_meta, counts, call)
  # One pass in Rust over the CSC slots as they are (no copy): structure,
  # bad values with their positions, totals per cell and per gene. Counts on
  # disk: the same, block by block (R/on-disk.R).
  if (!is.null(disk)) {
    scan <- scan_on_disk(disk, dimnames(counts), call, assay)
  } else {
    scan <- scan_counts(counts, call, assay = assay)
  }

  # Cells and genes without counts carry nothing for the model: drop them, say so.
  empty_cells <- scan$library == 0
  empty_genes <- scan$gene_total == 0
  library_size <- scan$library
  # counts on disk: their per-gene totals stand in for them in a checkpoint's fingerprint
  gene_total <- if (!is.null(disk)) scan$gene_total[!empty_genes]
  dropped <- list(cells = colnames(counts)[empty_cells], genes = rownames(counts)[empty_genes],
                  cell_positions = which(empty_cells))
  if (any(empty_cells) || any(empty_genes)) {
    inform(c("i" = paste0("Dropping {sum(empty_cells)} cell{?s} with no counts",
                          "{if (any(empty_cells)) paste0(' (', show_some(dropped$cells, 3), ')') else ''}",
                          " and {sum(empty_genes)} gene{?s} with no counts in any cell",
                          "{if (any(empty_genes)) paste0(' (', show_some(dropped$genes, 3), ')') else ''}.")))
    keep_cells <- !empty_cells
    counts <- counts[!empty_genes, keep_cells, drop = FALSE]
    if (!is.null(disk)) disk <- disk_source(disk$x, which(!empty_genes), which(keep_cells))
    library_size <- library_size[keep_cells]
    sample <- sample[keep_cells]
    if (!is.null(batch)) batch <- batch[keep_cells]
    if (!is.null(factors)) factors <- droplevels(factors[keep_cells, , drop = FALSE])
    if (!is.null(continuous)) continuous <- continuous[keep_cells, , drop = FALSE]
    if (!is.null(labels)) labels <- labels[keep_cells]
    if (!is.null(cell_meta)) cell_meta <- cell_meta[keep_cells, , drop = FALSE]
    if (nrow(counts) == 0 || ncol(counts) == 0) {
      abort_arg("{.arg x} has no counts at all.", call = call)
    }
  }
  gone <- setdiff(levels(sample)[tabulate(sample, nlevels(sample)) == 0], unused)
  if (length(gone)) inform(c("i" = "Dropping sample{?s} {.val {gone}}: no cells with counts remain."))
  if (length(unused)) inform(c("i" = "Leaving out sample{?s} {.val {unused}}: {?a level/levels} of {.arg sample} without cells."))
  sample <- droplevels(sample)
  if (nlevels(sample) < min_samples) {
    abort_arg(c("{.arg sample} must have at least {min_samples} sample{?s} with cells; it has {nlevels(sample)}.",
                "i" = "MrVI compares samples: give cells from two or more samples."), call = call)
  }
  if (!is.null(batch)) {
    # a level without cells would be a batch the model never trains, and averages
    # over the batch levels would include it
    batch <- droplevels(batch)
    factors <- droplevels(factors)
    for (f in factors) warn_if_confounded(sample, f, call)
  }
  if (!is.null(labels)) labels <- droplevels(labels)
  names(library_size) <- colnames(counts)
  # the columns the fit's cell data will hold (as fit_cell_data() makes them),
  # and the sample table's count of cells (which no per-cell column equals)
  own <- c(list(sample = sample),
           if (!is.null(factors) && ncol(factors) > 1) as.list(factors) else list(batch = batch %||% rep("batch1", ncol(counts))),
           if (!is.null(continuous)) as.list(continuous),
           if (!is.null(labels)) list(labels = labels),
           list(n_cells = NA))
  cell_meta <- rename_clashing_columns(cell_meta, own)

  structure(list(
    counts = counts,
    disk = disk,
    sample = sample,
    batch = if (is.null(batch)) factor(rep("batch1", ncol(counts))) else batch,
    batch_given = !is.null(batch),
    nuisance = if (!is.null(factors) && ncol(factors) > 1 || !is.null(continuous))
      list(factors = if (!is.null(factors) && ncol(factors) > 1) factors, continuous = continuous),
    labels = labels,
    # (several nuisance factors are their own columns, not their combination)
    sample_table = make_sample_table(sample, cell_meta, if (is.null(factors) || ncol(factors) <= 1) batch, labels, factors),
    library_size = library_size,
    gene_total = gene_total,
    dropped = dropped,
    cell_meta = cell_meta,
    source = source,
    columns = columns
  ), class = "mrvi_data")
}

check_unique <- function(names, what, call) {
  missing <- which(is.na(names) | names == "")
  if (length(missing)) {
    abort_arg(c("{.arg x} has {length(missing)} missing or empty {what} name{?s}, e.g. {what} {missing[1]}.",
                "i" = "Each {what} needs its own name (results are matched and labelled by name): name them all."),
              call = call)
  }
  dup <- unique(names[duplicated(names)])
  if (length(dup)) {
    abort_arg(c("{.arg x} has duplicated {what} names: {show_some(dup)}.",
                "i" = paste("Each {what} needs its own name (they are matched by name):",
                            "remove the duplicates, or make the names unique with {.fn make.unique}.")),
              call = call)
  }
}

# Several factors' combinations as one factor, labelled "a:b" as interaction()
# labels them; the combinations are told apart by the factors' codes, so that
# levels containing ":" cannot merge two of them ("a:b" + "c" and "a" + "b:c"):
# such labels are made unique.
combined_levels <- function(factors) {
  key <- interaction(lapply(factors, as.integer), drop = TRUE)
  first <- match(levels(key), as.character(key))
  labels <- do.call(paste, c(lapply(factors, function(f) as.character(f)[first]), sep = ":"))
  levels(key) <- make.unique(labels, sep = "_")
  key
}

# A batch that is the sample under other names leaves nothing for the sample
# effects to explain apart from the batch effects: say so (the fit still runs).
warn_if_confounded <- function(sample, batch, call) {
  tab <- table(sample, batch) > 0
  # every batch within one sample (a batch per sample, several per sample such as
  # its own lanes, or one per cell): sample and batch effects cannot be told apart
  if (nlevels(sample) > 1 && all(colSums(tab) == 1)) {
    cli::cli_warn(c("{.arg batch} is confounded with {.arg sample}: every batch holds the cells of one sample only.",
                    "i" = paste("MrVI cannot tell sample effects from batch effects then; give a",
                                "{.arg batch} that groups several samples, or none.")),
                  class = c("mrvi_confounded", "mrvi_warning"), call = call)
  }
}

# A column name or a vector with one value per cell -> a factor without NA.
# Text becomes levels in byte order (the C locale's), not the session's
# collation: the order of the samples decides which embedding each gets, so a
# seed would give another fit under another locale ("a" "A" "b" "B" in
# en_US.UTF-8, "A" "B" "a" "b" in C). A factor keeps its own levels.
# Numbers become levels by their value: whole ones with all their digits
# ("100000", not "1e+05"; 16-digit ids stay apart), others as R prints them,
# which must keep distinct numbers distinct (0.1 + 0.2 and 0.3 print alike).
resolve_cell_factor <- function(value, arg, cell_meta, counts, call) {
  value <- resolve_cell_values(value, arg, cell_meta, counts, call)
  check_categorical(value, arg, call)
  if (is.factor(value)) return(value)
  if (is.character(value)) return(byte_order_factor(value))
  # (dates and other classed numbers become levels as they print, below)
  if (is.double(value) && !is.object(value) && all(value == round(value) & abs(value) < 2^53)) {
    values <- sort(unique(value))
    # (factor() would match the values as text, which merges 16-digit ids)
    return(structure(match(value, values), levels = sprintf("%.0f", values + 0), class = "factor"))  # + 0: no "-0"
  }
  f <- factor(value)
  if (nlevels(f) != length(unique(value))) {
    abort_arg(c("{.arg {arg}} has {length(unique(value))} distinct values that print as {nlevels(f)} names.",
                "i" = "Give it as character (e.g. {.code as.character()} of the ids as written), so that every {arg} keeps its own name."),
              call = call)
  }
  f
}

# Text as a factor whose levels are in byte order, whatever the locale.
byte_order_factor <- function(x) factor(x, levels = sort(unique(x), method = "radix"))

# A column name or a vector with one value per cell -> its values, without NA.
resolve_cell_values <- function(value, arg, cell_meta, counts, call) {
  n_cells <- ncol(counts)
  # (one cell: a column name if there is such a column, else the cell's value)
  if (is.character(value) && length(value) == 1 && (n_cells != 1 || value %in% names(cell_meta))) {
    if (is.null(cell_meta)) {
      abort_arg(c("{.arg {arg}} = {.val {value}} looks like a column name, but {.arg x} is a bare matrix without cell metadata.",
                  "i" = "Give a vector with one value per cell (length {n_cells} = {.code ncol(x)})."),
                call = call)
    }
    if (!value %in% names(cell_meta)) {
      abort_arg(c("{.arg {arg}} = {.val {value}} is not a column of the cell metadata.",
                  "i" = if (length(cell_meta)) "Available columns: {show_some(names(cell_meta), 12)}." else
                    "The cell metadata has no columns: give a vector with one value per cell."), call = call)
    }
    value <- cell_meta[[value]]
  }
  # a 1-d array (tapply(), table()) is a vector with names
  if (is.array(value) && length(dim(value)) == 1) value <- stats::setNames(as.vector(value), names(value))
  if (is.data.frame(value) || is.list(value) && !is.factor(value) || !is.null(dim(value))) {
    abort_arg("{.arg {arg}} must be a column name or a vector, not {.obj_type_friendly {value}}.",
              call = call)
  }
  if (length(value) != n_cells) {
    if (length(value) == nrow(counts) && nrow(counts) != n_cells) {
      abort_arg(c("{.arg {arg}} has {length(value)} values, one per row of {.arg x}, but cells must be columns.",
                  "i" = "{.arg x} seems to be cells x genes: pass {.code t(x)} (genes in rows, cells in columns)."),
                call = call)
    }
    abort_arg(c("{.arg {arg}} must have one value per cell: {n_cells} (= {.code ncol(x)}), not {length(value)}."),
              call = call)
  }
  value <- match_cell_names(value, arg, colnames(counts), call)
  # (a factor may hold NA as a level: its codes are not NA, its values are; an
  # NA level no cell has is dropped)
  if (!anyNA(as.character(value))) value <- without_na_level(value)
  if (anyNA(value) || is.factor(value) && anyNA(levels(value))) {
    where <- which(is.na(value) | is.na(as.character(value)))
    abort_arg(c("{.arg {arg}} has {length(where)} NA value{?s}, e.g. cell{?s} {show_some(colnames(counts)[where], 3)}.",
                "i" = "Give every cell a value, or drop those cells first."), call = call)
  }
  # "" would be a level without a name (in tables, plots and sample matching)
  if ((is.character(value) || is.factor(value)) && any(as.character(value) == "")) {
    where <- which(as.character(value) == "")
    abort_arg(c("{.arg {arg}} has {length(where)} empty value{?s} ({.val {''}}), e.g. cell{?s} {show_some(colnames(counts)[where], 3)}.",
                "i" = "Give every cell a named value, or drop those cells first."), call = call)
  }
  value
}

# A vector named by cell is matched to the cells by name. Names that are some of
# the cells' but not each cell once (a name that is not a cell, one given twice)
# would pair values with cells by position, or leave cells without a value: an
# error. Names that are none of the cells' are not cell names: by position.
match_cell_names <- function(value, arg, cells, call) {
  nms <- names(value)
  if (is.null(nms) || is.null(cells) || identical(nms, cells) || !any(nms %in% cells)) return(value)
  if (!anyDuplicated(nms) && all(nms %in% cells)) return(value[cells])
  twice <- unique(nms[duplicated(nms)])
  strangers <- setdiff(nms, cells)
  abort_arg(c("{.arg {arg}} is named by cell, but not once by each cell: its values cannot be matched to the cells.",
              "x" = if (length(strangers)) "{length(strangers)} name{?s} {?is/are} not {?a cell/cells}: {show_some(strangers, 3)}.",
              "x" = if (length(twice)) "{length(twice)} name{?s} {?is/are} given more than once: {show_some(twice, 3)}.",
              "i" = "Name it by the cells' names, or remove its names ({.code unname()}) to take the values in the cells' order."),
            call = call)
}

# One pass in Rust over a dgCMatrix's slots (its structure, bad values with their
# positions, totals per cell and per gene), its bad values refused by
# check_counts(); the scan.
scan_counts <- function(counts, call, partial = FALSE, assay = NULL) {
  # slots edited by hand (x@i[1] <- ...) break the matrix's structure
  scan <- tryCatch(mrvi_csc_scan(nrow(counts), ncol(counts), counts@p, counts@i, counts@x),
                   mrvi_input_error = function(e) {
                     abort_arg(c("{.arg x} is not a valid sparse matrix: {e$message}.",
                                 "i" = "{.code validObject(x)} says what is wrong; rebuild it with {.fn Matrix::sparseMatrix}."),
                               class = "mrvi_input_error", call = call)
                   })
  check_counts(counts, scan, call, partial, assay)
  scan
}

# `partial`: counts on disk, checked block by block; `counts` is the first
# block with a bad value, so the counts of bad values are lower bounds (the
# blocks after it are not read: the error comes without reading the whole file).
# `assay`: where the counts came from in `x` (NULL: `x` is the counts).
check_counts <- function(counts, scan, call, partial = FALSE, assay = NULL) {
  holder <- if (is.null(assay)) "{.arg x}" else "{.arg x}'s assay {.val {assay}}"
  where <- function(k) {
    genes <- rownames(counts)[counts@i[k] + 1L]
    cells <- colnames(counts)[findInterval(k - 1L, counts@p)]
    paste0("e.g. at (gene, cell) ", paste0("(", genes, ", ", cells, ")", collapse = ", "))
  }
  problems <- list(
    list(n = scan$n_nonfinite, first = scan$first_nonfinite, what = "missing or non-finite (NA, NaN, Inf)"),
    list(n = scan$n_negative, first = scan$first_negative, what = "negative"),
    list(n = scan$n_fractional, first = scan$first_fractional, what = "not {?whole/whole numbers}"),
    # (2^24: the largest whole number single precision holds; see ?mrviData)
    list(n = scan$n_too_large, first = scan$first_too_large, what = "above 16,777,216 (2^24)")
  )
  at_least <- if (partial) "at least " else ""
  for (p in problems) {
    n <- p$n
    if (n > 0) {
      # (p$what joins the template: its {?} agrees with n)
      abort_arg(c(paste0(holder, " must hold raw counts: {at_least}{n} value{?s} {?is/are} ", p$what,
                         ", {where(p$first)}."),
                  "i" = if (partial) "Counted up to cell {.val {colnames(counts)[ncol(counts)]}}, where the check stopped.",
                  "i" = paste("MrVI models raw UMI counts. Use the raw counts assay/layer (for example",
                              "{.code assay = \"counts\"}), not normalised or log-transformed values.")),
                call = call)
    }
  }
  if (nrow(counts) < ncol(counts) && looks_like_barcodes(rownames(counts)) &&
      !looks_like_barcodes(colnames(counts))) {
    abort_arg(c("{.arg x} seems to be cells x genes: its row names look like cell barcodes.",
                "i" = "Pass {.code t(x)} (genes in rows, cells in columns)."), call = call)
  }
  invisible(TRUE)
}

looks_like_barcodes <- function(nm) {
  if (is.null(nm)) return(FALSE)
  mean(grepl("^([A-Za-z0-9]+[_:-])?[ACGTN]{10,}(-[0-9]+)?$", utils::head(nm, 100))) > 0.8
}

# A metadata column named as one of the fit's own columns (of cell data:
# `sample`, `batch`, `labels`, a nuisance covariate; of the sample table:
# `n_cells`) but holding other values is kept, renamed `<name>.1`, with a
# message: dropped silently, `groups = "batch"` would group by the model's
# batch, not by the user's column.
rename_clashing_columns <- function(cell_meta, own) {
  clash <- intersect(names(cell_meta), names(own))
  differs <- clash[!vapply(clash, function(nm) identical(as.character(cell_meta[[nm]]), as.character(own[[nm]])), logical(1))]
  if (!length(differs)) return(cell_meta)
  taken <- union(names(own), setdiff(names(cell_meta), differs))
  renamed <- utils::tail(make.unique(c(taken, paste0(differs, ".1"))), length(differs))
  names(cell_meta)[match(differs, names(cell_meta))] <- renamed
  inform(c("i" = paste("Cell metadata {cli::qty(length(differs))}column{?s} {.val {differs}} {?is/are} kept as {.val {renamed}}:",
                        "mrvi's own cell data or sample table {?has a column of that name/has columns of those names}.")))
  cell_meta
}

# The sample each row of a sample table is about: its `sample` column, or its row
# names (a table the user built). `[[` matches exactly: `$sample` would take a
# `sample_group` column of a table without `sample`.
table_samples <- function(table) {
  as.character(if ("sample" %in% names(table)) table[["sample"]] else rownames(table))
}

# Sample-level covariates: per-cell columns constant within every sample.
make_sample_table <- function(sample, cell_meta, batch, labels, factors = NULL) {
  counts <- tabulate(sample, nlevels(sample))
  tab <- data.frame(sample = levels(sample), n_cells = counts, stringsAsFactors = FALSE)
  candidates <- list()
  if (!is.null(cell_meta)) {
    # (not addMrVI()'s per-cell results of an earlier fit, constant within samples
    # only by chance, e.g. q = 1 everywhere)
    results <- grepl(result_column_pattern, names(cell_meta))
    for (nm in names(cell_meta)[!results]) candidates[[nm]] <- cell_meta[[nm]]
  }
  # nuisance factors, batch and labels given as vectors are not in the metadata:
  # a per-sample one (a site) is a sample covariate too; given as columns, they
  # are there already (as text or numbers: compared as text, not as the factor
  # they became)
  among <- function(v) any(vapply(candidates, function(col) identical(as.character(col), as.character(v)), logical(1)))
  for (nm in setdiff(names(factors), names(candidates))) if (!among(factors[[nm]])) candidates[[nm]] <- factors[[nm]]
  if (!is.null(batch) && !among(batch)) candidates$batch <- batch
  if (!is.null(labels) && !among(labels)) candidates$labels <- labels
  first <- match(levels(sample), sample)
  for (nm in names(candidates)) {
    col <- candidates[[nm]]
    if (!is.atomic(col) || !is.null(dim(col)) ||
        length(col) != length(sample) || identical(as.character(col), as.character(sample))) next
    # constant within a sample: every cell's value is its sample's first (codes,
    # not pasted rows: at 2 M cells that took ~0.5 GB)
    code <- match(col, unique(col))
    constant <- all(code == code[first][as.integer(sample)])
    if (!constant) next
    tab[[nm]] <- if (is.factor(col)) droplevels(col[first]) else col[first]
  }
  rownames(tab) <- tab$sample
  tab
}

sample_hint <- function(cell_meta, n_cells) {
  if (is.null(cell_meta)) {
    sprintf("Give a vector with one value per cell (length %d).", n_cells)
  } else {
    paste0("Give a column name of the cell metadata (", show_some(names(cell_meta), 8),
           ") or a vector with one value per cell.")
  }
}

# Counts as a dgCMatrix; a DelayedArray stays as it is (counts on disk, R/on-disk.R).
as_dgc <- function(x, arg = "x", call = rlang_caller(2)) {
  if (inherits(x, "dgCMatrix") || is_on_disk(x)) return(x)
  if (!inherits(x, c("Matrix", "matrix"))) {
    x <- tryCatch(methods::as(x, "dgCMatrix"), error = function(e) {
      abort_arg("{.arg {arg}}: cannot convert counts of class {.cls {class(x)}} to a sparse matrix.",
                call = call)
    })
    return(x)
  }
  if (is.matrix(x) && !is.numeric(x) && !is.logical(x)) {
    abort_arg(c("{.arg {arg}} must hold numeric counts.",
                "x" = "It is a matrix of {typeof(x)} values.",
                "i" = "Use the raw counts, a numeric matrix of whole numbers."), call = call)
  }
  # TRUE/FALSE (or a pattern: where the non-zeros are) would become counts of 1
  if (is.logical(x) || methods::is(x, "lMatrix") || methods::is(x, "nMatrix")) {
    abort_arg(c("{.arg {arg}} must hold numeric counts.",
                "x" = "It is a logical or pattern matrix ({.cls {class(x)}}).",
                "i" = "Use the raw counts, a numeric matrix of whole numbers."), call = call)
  }
  x <- methods::as(x, "CsparseMatrix")
  x <- methods::as(x, "generalMatrix")
  methods::as(x, "dMatrix")
}

# Anything in ... is a mistake: name it, suggest the closest argument of `.fn`
# (the function the user called) and point to its help.
check_dots <- function(..., .fn = "mrviData") {
  dots <- list(...)
  if (length(dots)) {
    nm <- names(dots)
    nm <- if (is.null(nm)) rep("", length(dots)) else nm
    known <- setdiff(names(formals(get(.fn, envir = environment(check_dots)))), "...")
    close <- unique(unlist(lapply(nm[nzchar(nm)], function(n) {
      known[utils::adist(n, known, ignore.case = TRUE) <= max(2, nchar(n) %/% 3)]
    })))
    abort_arg(c("Unknown argument{?s}: {.arg {ifelse(nzchar(nm), nm, '(unnamed)')}}.",
                "i" = if (length(close)) "Did you mean {.arg {close}}?",
                "i" = paste0("See {.help mrvi::", .fn, "} for the arguments.")), call = rlang_caller(2))
  }
}

#' @method print mrvi_data
#' @export
print.mrvi_data <- function(x, ...) {
  cat(sprintf("<mrvi_data> %d genes x %d cells from %s\n", nrow(x$counts), ncol(x$counts), x$source))
  cat(sprintf("  samples: %d (%s)\n", nlevels(x$sample), show_some(levels(x$sample), 4)))
  # (several nuisance factors each with its levels, and the continuous ones, as show(<MrVIFit>) says them)
  factors <- x$nuisance$factors
  cat(sprintf("  batch:   %s\n", if (!is.null(factors)) paste(sprintf("%s (%d levels)", names(factors), vapply(factors, nlevels, integer(1))), collapse = ", ") else
    if (x$batch_given) paste(nlevels(x$batch), "levels") else "none"))
  if (length(x$nuisance$continuous)) cat(sprintf("  continuous covariates: %s\n", paste(names(x$nuisance$continuous), collapse = ", ")))
  cat(sprintf("  labels:  %s\n", if (is.null(x$labels)) "none" else paste(nlevels(x$labels), "levels")))
  covs <- setdiff(names(x$sample_table), c("sample", "n_cells"))
  cat(sprintf("  sample covariates: %s\n", if (length(covs)) paste(covs, collapse = ", ") else "none"))
  if (length(x$dropped$cells) || length(x$dropped$genes)) {
    cat(sprintf("  dropped: %d empty cells, %d empty genes\n", length(x$dropped$cells), length(x$dropped$genes)))
  }
  invisible(x)
}
