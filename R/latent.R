#' Latent representations u and z of cells
#'
#' @param fit a [MrVIFit-class].
#' @param x `NULL` for the cells the model was trained on, or new cells with
#'   every fitted gene (any input [mrviData()] accepts; genes are matched by
#'   name, and genes the fit does not have are left out). A fitted gene missing
#'   from `x` is an error: it is not a gene without counts. A cell without
#'   counts on the fitted genes tells the encoder nothing (training never saw
#'   one): its row is NA, with a warning of class `mrvi_empty_cells`, so that
#'   the rows are always the cells of `x`, in their order (an `x` without any
#'   count is an error).
#' @param which `"u"` (sample-free) or `"z"` (sample-aware, under each cell's
#'   own sample).
#' @param use_mean `TRUE`: the posterior mean of u; `FALSE`: one draw from the
#'   posterior per cell (the first draw under `seed`).
#' @param sample for new cells (`x` given): their samples, a column name or a
#'   vector; each must be one of the fitted samples.
#' @param assay for new cells in a `SingleCellExperiment` or Seurat object: the
#'   assay holding their raw counts, as in [mrvi()]. `NULL` (default): the one the
#'   fit read (`fit@config$assay`; for a Seurat object the fit's Seurat assay,
#'   `fit@config$seurat_assay`, where `x` has it), else `"counts"`.
#' @param seed seed of the posterior draws (default: the fit's seed, `fit@config$seed`).
#'   Draw m of cell i depends on the seed, i and m alone, so a cell's draws are
#'   the same whichever cells are asked for, in whatever chunks, in every
#'   function that draws u.
#'   New cells (`x`) are numbered by their position in `x`.
#' @param BPPARAM a BiocParallel back-end (default serial) over which the work
#'   is spread in blocks of cells; results are identical to serial ones whatever the back-end and
#'   number of workers (see [mrvi-parallel]).
#' @return a matrix with dimnames: cells x dim(u) for `which = "u"` (`n_latent_u`
#'   columns for the attention flavour, L for the linear one), cells x L for `"z"`.
#' @examples
#' sim <- mrvi:::example_counts()
#' fit <- mrvi(sim$counts, sample = sim$sample, max_epochs = 2, verbose = FALSE)
#' dim(mrviLatent(fit, which = "z"))
#' @export
mrviLatent <- function(fit, x = NULL, which = c("u", "z"), use_mean = TRUE, sample = NULL,
                       seed = fit@config$seed, BPPARAM = BiocParallel::SerialParam(), assay = NULL) {
  call <- sys.call()
  check_required(call)
  check_fit(fit, call)
  apply_threads(call = call)  # (options(mrvi.threads), and one thread in a forked worker)
  check_bpparam(BPPARAM, call)
  which <- match_choice(which, c("u", "z"), "which", call)
  check_flag(use_mean, "use_mean", call)
  seed <- check_whole(seed, "seed", call)
  if (is.null(x)) {
    if (!is.null(sample) || !is.null(assay)) {
      what <- if (is.null(sample)) "assay" else "sample"
      abort_arg(c("{.arg {what}} is for new cells in {.arg x}; the fitted cells have their own.",
                  "i" = "Leave {.arg {what}} out, or give the new cells' counts as {.arg x}."), call = call)
    }
    mean <- fit@u_mean
    sd <- fit@u_sd
    codes <- as.integer(fit@cell_data$sample) - 1L
    cells <- rownames(mean)
    ok <- seq_len(nrow(mean))
  } else {
    post <- encode_new_cells(fit, x, sample, assay, BPPARAM, call)
    mean <- post$mean
    sd <- post$sd
    codes <- post$codes
    ok <- post$ok
    cells <- rownames(mean)
  }
  u <- mean
  # (rows are cells' positions in x: the numbering of the draws)
  if (!use_mean) u[ok, ] <- posterior_u(mean, sd, ok, 1L, seed)
  if (which == "u") return(u)
  z <- bp_rows(c(length(ok), z_dim(fit)), z_block, fit = fit, BPPARAM = BPPARAM, what = "z", call = call,
               payload = function(r) list(u = u[ok[r], , drop = FALSE], codes = codes[ok[r]]))
  if (length(ok) < nrow(u)) z <- with_memory_error(`[<-`(matrix(NA_real_, nrow(u), ncol(z)), ok, , z), "z", call)
  latent_matrix(z, cells, "z")
}

# The posterior of u of new cells `x`, one row per cell of `x` in its order:
# `mean`, `sd`, the 0-based sample `codes` and the rows `ok` that have one. A
# cell without counts on the fitted genes tells the encoder nothing (it never
# saw such a cell in training, and mrviData() drops them): its row is NA, with a
# warning.
encode_new_cells <- function(fit, x, sample, assay, BPPARAM, call) {
  data <- new_cells(fit, x, sample, assay, call)
  counts <- data$counts
  # the columns of `counts` are the cells of x that mrviData() kept
  dropped <- data$dropped$cell_positions
  n <- ncol(counts) + length(dropped)
  kept <- setdiff(seq_len(n), dropped)
  cells <- character(n)
  cells[kept] <- colnames(counts)
  cells[dropped] <- data$dropped$cells
  codes <- rep(NA_integer_, n)
  codes[kept] <- match(as.character(data$sample), fit@samples) - 1L
  # cells whose counts are all on genes the fit does not have are empty too
  has_counts <- Matrix::colSums(counts) > 0
  ok <- kept[has_counts]
  if (length(ok) < n) {
    cli::cli_warn(c("{n - length(ok)} cell{?s} of {.arg x} {?has/have} no counts on the fitted genes: {?its row is/their rows are} NA.",
                    "x" = "{show_some(cells[setdiff(seq_len(n), ok)], 3)}."),
                  class = c("mrvi_empty_cells", "mrvi_warning"), call = call)
  }
  counts <- counts[, has_counts, drop = FALSE]
  blocks <- bp_split(seq_len(ncol(counts)))
  post <- vector("list", length(blocks))
  bp_map(blocks, encode_block, fit = fit, BPPARAM = BPPARAM, each = function(p, i) post[[i]] <<- p,
         payload = function(j) list(counts = counts[, j, drop = FALSE], codes = codes[ok[j]]))
  mean <- sd <- matrix(NA_real_, n, ncol(fit@u_mean))
  mean[ok, ] <- do.call(rbind, lapply(post, `[[`, "mean"))
  sd[ok, ] <- do.call(rbind, lapply(post, `[[`, "sd"))
  list(mean = latent_matrix(mean, cells, "u"), sd = latent_matrix(sd, cells, "u"), codes = codes, ok = ok)
}

# Tasks of the two functions above, with their blocks' data as arguments (a
# closure would take its whole frame, `x` included, to every worker).
encode_block <- function(b, fit) {
  p <- mrvi_encode(native_model(fit), nrow(b$counts), ncol(b$counts), b$counts@p, b$counts@i, b$counts@x, b$codes)
  list(mean = matrix(p$mean, ncol(b$counts)), sd = matrix(p$sd, ncol(b$counts)))
}

z_block <- function(b, fit) mrvi_z_from_u(native_model(fit), b$u, b$codes)

# Every function that draws u draws it in the core's posterior module
# (src/rust/mrvi-core/src/posterior.rs), through these two helpers: draw m of
# cell i under seed s depends on (s, i, m) alone, so it does not depend on which
# cells are asked for, in what chunks, or by how many workers.

# Draw m of u (m = 0: the posterior mean) for the cells `idx` (1-based rows) of
# the posterior `mean`, `sd` (cells x L) under `seed`: a length(idx) x L matrix.
posterior_u <- function(mean, sd, idx, m, seed) {
  matrix(mrvi_posterior_u(mean, sd, nrow(mean), ncol(mean), idx - 1L, m - 1L, seed), length(idx))
}

# Counterfactual z of the fit's cells `idx` under `samples` (1-based) for draw
# m of u under `seed` (m = 0: the posterior mean): the values of [cells, samples, L].
counterfactual_z <- function(fit, idx, samples, m, seed) {
  mrvi_counterfactual_z(native_model(fit), fit@u_mean, fit@u_sd, nrow(fit@u_mean), idx - 1L,
                        samples - 1L, m - 1L, seed)
}

# Linear maps of the counterfactual z of the fit's cells `idx` for draws `m`
# (1-based; 0: the posterior mean): cell i under draw d gives
# maps$maps[, , maps$of_cell[i]] %*% Z_i (r x L) (regression_maps()). A list of
# `projections` ([cells, L, r, draws], with `want_projections`), `mean_z`
# ([cells, S, L], the mean z over the draws, with `want_mean`) and, for
# `blocks` (the design's covariates: rows of the maps), `spread` ([cells,
# blocks, 2]: see posterior_spread()). Each draw's z is made and used inside
# Rust.
projected_counterfactuals <- function(fit, idx, m, seed, maps, want_mean, want_projections = TRUE, blocks = NULL) {
  r <- dim(maps$maps)[1]
  res <- mrvi_projected_counterfactuals(native_model(fit), fit@u_mean, fit@u_sd, nrow(fit@u_mean), idx - 1L,
                                        as.integer(m) - 1L, seed, as.double(maps$maps), r,
                                        as.integer(maps$of_cell) - 1L, want_projections, want_mean,
                                        as.integer(unlist(blocks)) - 1L, lengths(blocks),
                                        if (length(blocks)) maps$whitening else double())
  n <- length(idx)
  L <- z_dim(fit)
  list(projections = if (want_projections) array(res$projections, c(n, L, r, length(m))),
       mean_z = if (want_mean) array(res$mean_z, c(n, length(fit@samples), L)),
       spread = if (length(blocks)) array(res$spread, c(n, length(blocks), 2)))
}

# Read new cells for a fitted model: known samples, the fitted genes in order.
new_cells <- function(fit, x, sample, assay, call) {
  if (is.null(sample)) {
    abort_arg("{.arg sample} is required with new cells {.arg x}: one of the fitted samples per cell.",
              call = call)
  }
  data <- read_new_cells(fit, x, assay, sample = sample, call = call)
  unknown <- setdiff(levels(data$sample), fit@samples)
  if (length(unknown)) {
    abort_arg(c("{.arg sample} has sample{?s} the model was not fitted on: {show_some(unknown)}.",
                "i" = "Fitted samples: {show_some(fit@samples)}."), call = call)
  }
  # genes the fit does not have play no part in the encoder: they are left out
  check_same_genes(fit, data, call)
  align_genes(fit, data, call)
}

# mrviData() for cells brought to a fitted model, from `assay` (see
# new_cells_assay()): one sample is enough, and a few new samples alone in their
# batches are no confounding (the fit has others).
read_new_cells <- function(fit, x, assay, ..., call) {
  assay <- new_cells_assay(fit, x, assay, call)
  with_call(suppressMessages(withCallingHandlers(mrviData(x, ..., assay = assay, min_samples = 1),
    mrvi_confounded = function(w) invokeRestart("muffleWarning"))), call)
}

# The assay new cells are read from: the one given, else the fit's (new cells
# read from another assay than the fit's cells were silently other numbers): for
# a Seurat object the fit's Seurat assay, for others the fit's `assay` unless it
# named a Seurat assay; an object without it is an error that says where the
# name came from. (Fits before the `assay` record read "counts".)
new_cells_assay <- function(fit, x, assay, call) {
  if (!is.null(assay)) return(assay)
  seurat <- fit@config$seurat_assay
  missing_assay <- function(name, field) {
    abort_arg(c("{.arg x} has no assay {.val {name}}, the one the fit's cells were read from ({.code fit@config${field}}).",
                "i" = "Give {.arg assay}: the assay of {.arg x} that holds the new cells' raw counts."), call = call)
  }
  if (inherits(x, "Seurat")) {
    if (is.null(seurat)) return("counts")
    if (!seurat %in% SeuratObject::Assays(x)) missing_assay(seurat, "seurat_assay")
    # a fit read from another layer than "counts" (`assay = "data"`) of its
    # Seurat assay reads that layer again: seurat_counts() takes a layer name
    # for the default assay
    layer <- fit@config$assay
    if (is.character(layer) && !identical(layer, seurat) && !identical(layer, "counts")) {
      if (!identical(SeuratObject::DefaultAssay(x), seurat)) {
        abort_arg(c("The fit's cells were read from layer {.val {layer}} of Seurat assay {.val {seurat}}, which is not the default assay of {.arg x}.",
                    "i" = "Set {.code DefaultAssay(x) <- \"{seurat}\"}, or give {.arg assay}."), call = call)
      }
      return(layer)
    }
    return(seurat)
  }
  wanted <- if (is.null(seurat)) fit@config$assay
  if (is.null(wanted)) return("counts")
  if (methods::is(x, "SummarizedExperiment") && is.character(wanted) &&
      !wanted %in% SummarizedExperiment::assayNames(x)) {
    missing_assay(wanted, "assay")
  }
  wanted
}

# The counts of `data` on the fitted genes, in the fit's order (after
# check_same_genes(): every fitted gene is in x).
align_genes <- function(fit, data, call) {
  counts <- in_memory_counts(data, call)
  missing <- setdiff(fit@genes, rownames(counts))
  if (length(missing)) {
    # genes with no counts in the new cells were dropped by mrviData(): put them back as zeros
    pad <- Matrix::sparseMatrix(i = integer(), j = integer(), x = numeric(),
                                dims = c(length(missing), ncol(counts)),
                                dimnames = list(missing, colnames(counts)))
    counts <- rbind(counts, pad)
  }
  data$counts <- methods::as(counts[fit@genes, , drop = FALSE], "CsparseMatrix")
  data$disk <- NULL
  data
}

#' Counterfactual sample-aware representations
#'
#' For each cell n and sample s', \eqn{z_n^{s'}}: the cell's z had it come from
#' sample s' (paper §3.1), computed from the cell's posterior of u.
#'
#' @param fit a [MrVIFit-class].
#' @param cells `NULL` (all cells the model was trained on), indices or cell names.
#' @param samples `NULL` (all samples), positions in `fit@samples` or sample
#'   names (a number is always a position, also when the sample names look
#'   like numbers).
#' @param use_mean `TRUE`: from the posterior mean of u; `FALSE`: from one
#'   posterior draw per cell (the first draw under `seed`).
#' @param mc_samples 0, or a number of posterior draws: then the result gains a
#'   4th dimension, one slice per draw.
#' @param seed seed of the posterior draws (default: the fit's seed, `fit@config$seed`).
#'   Draw m of cell i depends on the seed, i and m alone, so a cell's draws are
#'   the same whichever cells are asked for, in whatever chunks, in every
#'   function that draws u.
#' @details The array has `cells x samples x L` numbers (times `mc_samples`).
#'   Before allocating, its size is estimated; above `getOption("mrvi.max_bytes")`
#'   (default 2 GB) the call stops and says how to ask for less. For distances
#'   over many cells use [sampleDistances()], which streams.
#' @param BPPARAM a BiocParallel back-end (default serial) over which the work
#'   is spread in blocks of cells; results are identical to serial ones whatever the back-end and
#'   number of workers (see [mrvi-parallel]).
#' @return an array `[cells, samples, L]` (or `[cells, samples, L, draw]`) with
#'   dimnames.
#' @examples
#' sim <- mrvi:::example_counts()
#' fit <- mrvi(sim$counts, sample = sim$sample, max_epochs = 2, verbose = FALSE)
#' dim(counterfactualLatent(fit, cells = 1:10))
#' @export
counterfactualLatent <- function(fit, cells = NULL, samples = NULL, use_mean = TRUE, mc_samples = 0,
                                 seed = fit@config$seed, BPPARAM = BiocParallel::SerialParam()) {
  call <- sys.call()
  check_required(call)
  check_fit(fit, call)
  apply_threads(call = call)  # (options(mrvi.threads), and one thread in a forked worker)
  check_bpparam(BPPARAM, call)
  check_flag(use_mean, "use_mean", call)
  mc_samples <- check_whole(mc_samples, "mc_samples", call)
  seed <- check_whole(seed, "seed", call)
  cell_idx <- resolve_cells(fit, cells, call)
  sample_idx <- resolve_samples(fit, samples, call)
  L <- z_dim(fit)
  bytes <- 8 * length(cell_idx) * length(sample_idx) * L * max(1, mc_samples)
  check_size(bytes, "counterfactualLatent()", call)
  draws <- if (mc_samples == 0) if (use_mean) 0L else 1L else seq_len(mc_samples)
  out <- bp_rows(c(length(cell_idx), length(sample_idx), L, length(draws)), function(rows) {
    unlist(lapply(draws, function(m) counterfactual_z(fit, cell_idx[rows], sample_idx, m, seed)))
  }, BPPARAM = BPPARAM, what = "the counterfactual z", call = call)
  labels <- list(rownames(fit@u_mean)[cell_idx], fit@samples[sample_idx], paste0("z", seq_len(L)),
                 paste0("draw", seq_along(draws)))
  if (mc_samples == 0) {  # drop the draw dimension in place
    dim(out) <- dim(out)[1:3]
    labels <- labels[1:3]
  }
  dimnames(out) <- labels
  out
}
