#' Latent representations u and z of cells
#'
#' @param fit a [MrVIFit-class].
#' @param x `NULL` for the cells the model was trained on, or new cells with
#'   the same genes (any input [mrviData()] accepts; genes are matched by name).
#' @param which `"u"` (sample-free) or `"z"` (sample-aware, under each cell's
#'   own sample).
#' @param use_mean `TRUE`: the posterior mean of u; `FALSE`: one draw from the
#'   posterior per cell (from R's random generator: use [set.seed()]).
#' @param sample for new cells (`x` given): their samples, a column name or a
#'   vector; each must be one of the fitted samples.
#' @param BPPARAM a BiocParallel back-end (default serial) over which the work
#'   is spread in blocks of cells; results are identical to serial ones whatever the back-end and
#'   number of workers (see [mrvi-parallel]).
#' @return a cells x L matrix with dimnames.
#' @examples
#' sim <- mrvi:::example_counts()
#' fit <- mrvi(sim$counts, sample = sim$sample, max_epochs = 2, verbose = FALSE)
#' dim(mrviLatent(fit, which = "z"))
#' @export
mrviLatent <- function(fit, x = NULL, which = c("u", "z"), use_mean = TRUE, sample = NULL,
                       BPPARAM = BiocParallel::SerialParam()) {
  call <- sys.call()
  check_fit(fit, call)
  check_bpparam(BPPARAM, call)
  which <- match_choice(which, c("u", "z"), "which", call)
  check_flag(use_mean, "use_mean", call)
  if (is.null(x)) {
    mean <- fit@u_mean
    sd <- fit@u_sd
    codes <- as.integer(fit@cell_data$sample) - 1L
    cells <- rownames(mean)
  } else {
    data <- new_cells(fit, x, sample, call)
    counts <- data$counts
    codes <- match(as.character(data$sample), fit@samples) - 1L
    post <- bp_map(bp_split(seq_len(ncol(counts))), function(j) {
      block <- counts[, j, drop = FALSE]
      p <- mrvi_encode(native_model(fit), nrow(block), ncol(block), block@p, block@i, block@x, codes[j])
      list(mean = matrix(p$mean, length(j)), sd = matrix(p$sd, length(j)))
    }, BPPARAM = BPPARAM)
    cells <- colnames(counts)
    mean <- latent_matrix(do.call(rbind, lapply(post, `[[`, "mean")), cells, "u")
    sd <- latent_matrix(do.call(rbind, lapply(post, `[[`, "sd")), cells, "u")
  }
  # draws come from R's generator here, in this process, before the work is spread
  u <- if (use_mean) mean else mean + sd * stats::rnorm(length(sd))
  if (which == "u") return(u)
  z <- bp_map(bp_split(seq_len(nrow(u))), function(r) {
    matrix(mrvi_z_from_u(native_model(fit), u[r, , drop = FALSE], codes[r]), length(r))
  }, BPPARAM = BPPARAM)
  latent_matrix(do.call(rbind, z), cells, "z")
}

# Read new cells for a fitted model: known samples, the fitted genes in order.
new_cells <- function(fit, x, sample, call) {
  if (is.null(sample)) {
    abort_arg("{.arg sample} is required with new cells {.arg x}: one of the fitted samples per cell.",
              call = call)
  }
  old <- the$min_samples
  the$min_samples <- 1L
  on.exit(the$min_samples <- old)
  data <- with_call(suppressMessages(mrviData(x, sample = sample)), call)
  unknown <- setdiff(levels(data$sample), fit@samples)
  if (length(unknown)) {
    abort_arg(c("{.arg sample} has sample{?s} the model was not fitted on: {show_some(unknown)}.",
                "i" = "Fitted samples: {show_some(fit@samples)}."), call = call)
  }
  counts <- data$counts
  missing <- setdiff(fit@genes, rownames(counts))
  if (length(missing) == length(fit@genes)) {
    abort_arg(c("{.arg x} shares no gene names with the fit.",
                "i" = "Use the same gene identifiers as at fitting time."), call = call)
  }
  if (length(missing)) {
    # genes with no counts in the new cells were dropped by mrviData(): put them back as zeros
    pad <- Matrix::sparseMatrix(i = integer(), j = integer(), x = numeric(),
                                dims = c(length(missing), ncol(counts)),
                                dimnames = list(missing, colnames(counts)))
    counts <- rbind(counts, pad)
  }
  data$counts <- methods::as(counts[fit@genes, , drop = FALSE], "CsparseMatrix")
  data
}

check_fit <- function(fit, call) {
  if (!methods::is(fit, "MrVIFit")) {
    abort_arg(c("{.arg fit} must be a {.cls MrVIFit} from {.fn mrvi}.",
                "x" = "You gave {.obj_type_friendly {fit}}."), call = call)
  }
  problems <- methods::validObject(fit, test = TRUE)
  if (is.character(problems)) {
    abort_arg(c("{.arg fit} is inconsistent: its slots were edited or damaged.",
                "x" = "{problems}",
                "i" = "Use the fit as {.fn mrvi} returned it, or re-read it from its file."),
              call = call, class = "mrvi_invalid_fit")
  }
}

match_choice <- function(value, choices, arg, call) {
  if (identical(value, choices)) return(choices[1])
  if (!is.character(value) || length(value) != 1 || !value %in% choices) {
    abort_arg("{.arg {arg}} must be one of {.val {choices}}.", call = call)
  }
  value
}
