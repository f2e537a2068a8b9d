# Resolvers: turn what the user gave (names, indices, logical masks, column names,
# NULL for "all") into what the code uses (indices, factors, masks), or stop.

# An empty selection (integer(0), character(0), all FALSE) is an error: every
# caller would otherwise return an empty result without a word. With `tested`
# (the per-cell tests), a cell selected twice is an error too: it would be
# tested, and counted in the FDR, twice (elsewhere repeats give repeated rows,
# as a bootstrap of cells asks).
resolve_cells <- function(fit, cells, call, tested = FALSE) {
  n <- nrow(fit@u_mean)
  if (is.null(cells)) return(seq_len(n))
  if (!is.null(dim(cells))) {
    abort_arg("{.arg cells} must be a vector of cell names, indices or a logical over the cells, not a matrix.", call = call)
  }
  idx <- cell_indices(fit, cells, n, call)
  if (tested && anyDuplicated(idx)) {
    twice <- unique(rownames(fit@u_mean)[idx[duplicated(idx)]])
    abort_arg(c("{.arg cells} selects {length(twice)} cell{?s} more than once: {show_some(twice, 3)}.",
                "i" = "Give each cell once, e.g. {.code unique(cells)}."), call = call)
  }
  if (!length(idx)) {
    abort_arg(c("{.arg cells} selects no cell.", "i" = "Give cell names or indices in 1..{n}, or {.code NULL} for all cells."),
              call = call)
  }
  idx
}

cell_indices <- function(fit, cells, n, call) {
  if (is.factor(cells)) cells <- as.character(cells)  # (names, as for samples)
  if (is.character(cells)) {
    idx <- match(cells, rownames(fit@u_mean))
    if (anyNA(idx)) {
      abort_arg("{.arg cells}: {sum(is.na(idx))} name{?s} not among the fitted cells, e.g. {show_some(cells[is.na(idx)], 3)}.",
                call = call)
    }
    return(idx)
  }
  if (is.logical(cells) && length(cells) != n) {
    abort_arg(c("A logical {.arg cells} must have one value per fitted cell ({n}), not {length(cells)}.",
                "i" = "For a column of the input object, select the fitted cells by name: {.code cells = rownames(fit@cell_data)[keep[rownames(fit@cell_data)]]}."),
              call = call)
  }
  if (is.logical(cells)) {
    if (anyNA(cells)) {
      abort_arg(c("{.arg cells} has {sum(is.na(cells))} NA value{?s}: a logical {.arg cells} must be TRUE or FALSE for every cell.",
                  "i" = "For example {.code cells = !is.na(keep) & keep}."), call = call)
    }
    return(which(cells))
  }
  if (!is.numeric(cells) || anyNA(cells) || any(cells < 1 | cells > n | cells != round(cells))) {
    abort_arg("{.arg cells} must be cell names or indices in 1..{n}.", call = call)
  }
  as.integer(cells)
}

# Fitted samples chosen by the user, as positions in fit@samples: the one rule
# of every function that takes samples. Names (character or factor) are names;
# numbers are positions in fit@samples, never names (with sample names like
# "10", "9", "1", "2" the same 2 used to pick different samples in different
# functions).
resolve_samples <- function(fit, samples, call, arg = "samples") {
  S <- length(fit@samples)
  if (is.null(samples)) return(seq_len(S))
  if (!is.null(dim(samples))) abort_arg("{.arg {arg}} must be a vector of sample names or indices, not a matrix.", call = call)
  if (is.factor(samples)) samples <- as.character(samples)
  if (is.character(samples)) {
    idx <- match(samples, fit@samples)
    if (anyNA(idx)) {
      abort_arg(c("{.arg {arg}} has value{?s} the model was not fitted on: {.val {unique(samples[is.na(idx)])}}.",
                  "i" = "Fitted samples: {show_some(fit@samples)}; or give their positions in {.code fit@samples}."),
                call = call)
    }
  } else {
    idx <- samples
  }
  # (as.integer() would truncate 1.5 to sample 1)
  if (!length(idx) || !is.numeric(idx) || anyNA(idx) || any(idx < 1 | idx > S | idx != round(idx))) {
    abort_arg(c("{.arg {arg}} must be fitted sample names or whole indices in 1..{S} (at least one).",
                "i" = "Fitted samples: {show_some(fit@samples)}."), call = call)
  }
  as.integer(idx)
}

# Cell groups, samples, batches and labels are categories: numbers taking a
# value per cell or so (a QC metric such as Seurat's nCount_RNA, a pseudotime)
# would make a group of each cell and an all-NA result. Whole numbers may be ids
# (clusters 0-20, donors 1-500): they count as continuous only with more than 100
# distinct values, and more than half as many as cells.
check_categorical <- function(values, arg, call) {
  if (!is.numeric(values) || is.factor(values)) return(invisible())
  n_distinct <- length(unique(values))
  fractional <- any(values != round(values), na.rm = TRUE)
  if (n_distinct > max(if (fractional) 10 else 100, length(values) / 2)) {
    abort_arg(c("{.arg {arg}} holds continuous numbers ({n_distinct} distinct values over {length(values)} cells): it must be categorical.",
                "i" = "Give cell types, clusters or other categories (a factor or character vector, or such a column)."),
              call = call)
  }
}

resolve_groups <- function(fit, groups, call) {
  n <- nrow(fit@cell_data)
  if (is.null(groups)) return(factor(rep("all", n)))
  if (is.character(groups) && length(groups) == 1 && n != 1) {
    if (!groups %in% names(fit@cell_data)) {
      abort_arg(c("{.arg groups} = {.val {groups}} is not a column of the fitted cell data.",
                  "i" = "Available: {show_some(names(fit@cell_data), 12)}; or give a vector over the {n} fitted cells."),
                call = call)
    }
    groups <- fit@cell_data[[groups]]
  }
  if (!is.atomic(groups) || !is.null(dim(groups))) {
    abort_arg("{.arg groups} must be a column name or a factor/character vector over the fitted cells, not {.obj_type_friendly {groups}}.",
              call = call)
  }
  check_categorical(groups, "groups", call)
  # a column of the input object, named by cell, may hold cells mrvi() left out
  # (no counts): the fitted cells are taken by name
  cells <- rownames(fit@cell_data)
  if (length(groups) > n && !is.null(names(groups)) && !anyDuplicated(names(groups)) && all(cells %in% names(groups))) {
    groups <- groups[cells]
  }
  if (length(groups) != n) {
    abort_arg(c("{.arg groups} must have one value per fitted cell ({n}), not {length(groups)}.",
                "i" = "A vector over more cells is read by name: name it by cell ({.code rownames(fit@cell_data)})."),
              call = call)
  }
  # a vector named by cell is matched by name, as in mrvi() (names that are some
  # cells' but not each cell once are refused there too)
  groups <- match_cell_names(groups, "groups", rownames(fit@cell_data), call)
  # an NA level (addNA()) is NA, and so is NaN (not a group named "NaN"): those
  # cells belong to no group
  groups <- without_na_level(groups)
  if (is.double(groups)) groups[is.nan(groups)] <- NA
  empty <- which(as.character(groups) == "")
  if (length(empty)) {
    abort_arg(c("{.arg groups} has {length(empty)} empty value{?s} ({.val {''}}), e.g. cell{?s} {show_some(rownames(fit@cell_data)[empty], 3)}.",
                "i" = "Name every group; cells in no group are {.code NA}."), call = call)
  }
  groups <- droplevels(as.factor(groups))
  if (nlevels(groups) == 0) abort_arg("{.arg groups} has no non-NA value.", call = call)
  groups
}

# The admissibility mask of an analysis: NULL, TRUE (computed, under the
# analysis' own `seed` and `BPPARAM`) or a logical matrix over the cells `idx` x samples.
resolve_admissible <- function(fit, admissible, idx, call, seed, BPPARAM) {
  if (is.null(admissible) || isFALSE(admissible)) return(NULL)
  # admissibility()'s result as it came: its mask
  if (is.list(admissible) && !is.data.frame(admissible) && is.matrix(admissible$admissible)) admissible <- admissible$admissible
  if (isTRUE(admissible)) return(admissibility(fit, cells = idx, seed = seed, BPPARAM = BPPARAM)$admissible)
  S <- length(fit@samples)
  # a mask of every fitted cell for some of them: their rows (by name where named)
  n_fitted <- nrow(fit@u_mean)
  if (is.matrix(admissible) && nrow(admissible) == n_fitted && length(idx) != n_fitted) {
    rows <- if (!is.null(rownames(admissible)) && all(rownames(fit@u_mean) %in% rownames(admissible))) {
      match(rownames(fit@u_mean)[idx], rownames(admissible))
    } else idx
    admissible <- admissible[rows, , drop = FALSE]
  }
  if (!is.logical(admissible) || !is.matrix(admissible) || ncol(admissible) != S || nrow(admissible) != length(idx) ||
      anyNA(admissible)) {
    abort_arg(c("{.arg admissible} must be NULL, TRUE or a logical matrix of {length(idx)} cells x {S} samples without NA.",
                "i" = "For example {.code admissibility(fit, cells = cells)$admissible}."), call = call)
  }
  if (!is.null(colnames(admissible)) && !identical(colnames(admissible), fit@samples)) {
    abort_arg("The columns of {.arg admissible} must be the fitted samples in order.", call = call)
  }
  # rows named by cell (as admissibility() names them) are matched to the cells
  # by name: a mask of the same cells in another order must not mask other cells
  # (row names that are no cell's, "1", "2", ..., are not cell names: by position,
  # as match_cell_names() reads vectors)
  cells <- rownames(fit@u_mean)[idx]
  rows <- rownames(admissible)
  if (!is.null(rows) && !identical(rows, cells) && any(rows %in% rownames(fit@u_mean))) {
    if (anyDuplicated(rows) || !setequal(rows, cells)) {
      abort_arg(c("The rows of {.arg admissible} must be the analysed cells: its row names are not these cells, once each.",
                  "i" = "Compute it for the same cells: {.code admissibility(fit, cells = cells)$admissible}."), call = call)
    }
    admissible <- admissible[cells, , drop = FALSE]
  }
  admissible
}

resolve_device <- function(device, call) {
  if (!is.character(device) || length(device) != 1 || is.na(device)) {
    abort_arg("{.arg device} must be {.val cpu}, {.val cuda} or {.val auto}.", call = call)
  }
  tryCatch(mrvi_resolve_device(device), error = function(e) {
    abort_arg(c("{.arg device} = {.val {device}} cannot be used.", "x" = conditionMessage(e)),
              call = call)
  })
}

# NULL only, as base R's (4.4) operator: an NA is a value the caller checks.
`%||%` <- function(a, b) if (is.null(a)) b else a

# Cells per chunk of the computations streamed in Rust: `chunk_size`, or by
# default as many as keep a chunk's counterfactuals (cells x S x L) near 2^21
# numbers, within 16..1024. A chunk holds them for every draw at once (and,
# normalised, the distances between each cell's draws), so the chunk shrinks
# where that would pass getOption("mrvi.max_bytes"), and a number of draws
# that one cell alone would take past it is an error (it was killed for
# memory, R with it).
resolve_chunk_size <- function(fit, chunk_size, call, mc_samples = 0, normalize = FALSE) {
  draws <- max(1, mc_samples)
  per_cell <- 4 * length(fit@samples) * z_dim(fit) * draws + if (normalize) 4 * draws^2 else 0
  if (per_cell > max_bytes(call)) {
    abort_arg(c("{.arg mc_samples} = {mc_samples} would allocate {byte_size(per_cell)} per cell, over the limit of {byte_size(max_bytes())}.",
                "i" = "Ask for fewer draws (the default is 10), or raise {.code options(mrvi.max_bytes = )}."),
              call = call)
  }
  if (!is.null(chunk_size)) {
    chunk_size <- check_count(chunk_size, "chunk_size", call)
    # (a chunk never holds more cells than the fit has)
    check_size(min(chunk_size, nrow(fit@u_mean)) * per_cell, sprintf("`chunk_size` = %d with `mc_samples` = %d", chunk_size, mc_samples), call,
               hint = "Give a smaller {.arg chunk_size} (or leave it {.code NULL}), or raise {.code options(mrvi.max_bytes = )}.")
    return(chunk_size)
  }
  default <- max(16L, min(1024L, as.integer(2^21 / (length(fit@samples) * z_dim(fit)))))
  as.integer(max(1, min(default, floor(max_bytes(call) / per_cell))))
}

# Required arguments (those without a default) left out of the call: a classed
# error naming them, rather than base R's "argument is missing" wherever the
# argument is first used. Called first thing by the exported functions, it also
# refuses abbreviated argument names (check_full_names()).
check_required <- function(call, env = parent.frame()) {
  formals <- formals(sys.function(sys.parent()))
  check_full_names(call, names(formals))
  required <- names(formals)[vapply(seq_along(formals), function(i) identical(formals[[i]], quote(expr = )), logical(1))]
  required <- setdiff(required, "...")
  gone <- required[vapply(required, function(a) eval(call("missing", as.name(a)), env), logical(1))]
  if (length(gone)) {
    abort_arg("{.arg {gone}} {?is/are} required: {?it has/they have} no default.", call = call)
  }
}

# R matches an argument name by its first letters: `n_epochs = 50` (scvi-tools'
# name for the number of epochs) set `n_epochs_kl_warmup` without a word. Names
# in the call must be written in full.
check_full_names <- function(call, formal_names) {
  given <- names(as.list(call))[-1]
  typed <- given[!is.na(given) & nzchar(given) & !given %in% formal_names]
  # (after `...` R matches no name partially, nor to an argument given by its full name)
  partial_ok <- formal_names[seq_len(match("...", formal_names, nomatch = length(formal_names) + 1L) - 1L)]
  partial_ok <- setdiff(partial_ok, given)
  full <- partial_ok[pmatch(typed, partial_ok, duplicates.ok = TRUE)]
  typed <- typed[!is.na(full)]
  full <- full[!is.na(full)]
  if (length(typed)) {
    abort_arg(c("{.arg {typed}} {?is not an argument/are not arguments}: R would take {?it/them} for {.arg {full}} by {?its/their} first letters.",
                "i" = "Write the full name of the argument you mean (see {.help {as.character(call[[1]])}})."),
              call = call)
  }
}
