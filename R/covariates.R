# Nuisance covariates: several categorical ones (`batch`) and continuous ones
# (`continuous_covariates`). They enter the decoder only, never z (MODEL.md §1,
# §4; src/rust/mrvi-core/src/model/mod.rs). The levels of all categorical
# covariates share one table of site parameters: covariate k's codes start after
# the levels of covariates 1..k-1. Continuous ones are standardised with the
# training cells' mean and sd, which the fit keeps.

# `batch` -> a data.frame with one factor per covariate, or NULL. One covariate
# (a column name or a vector, as before several were possible) is named "batch";
# several come as column names, or a data.frame or list of column names/vectors.
resolve_batch <- function(batch, cell_meta, counts, call) {
  if (is.null(batch)) return(NULL)
  # several column names, unless as many values as cells that are not all column names
  columns <- is.character(batch) && is.null(dim(batch)) && length(batch) > 1 &&
    (length(batch) != ncol(counts) || all(batch %in% names(cell_meta)))
  if (!columns && !is.data.frame(batch) && !(is.list(batch) && !is.factor(batch))) {
    return(data.frame(batch = resolve_cell_factor(batch, "batch", cell_meta, counts, call)))
  }
  if (columns) check_some_columns(batch, "batch", "one per cell", cell_meta, counts, call)
  values <- if (columns) stats::setNames(as.list(batch), batch) else by_cell_columns(batch)
  if (!length(values)) abort_arg("{.arg batch} is empty: give column names or vectors, or {.code NULL}.", call = call)
  nms <- covariate_names(values, "batch", call)
  factors <- lapply(seq_along(values), function(k) {
    resolve_cell_factor(values[[k]], paste0("batch$", nms[k]), cell_meta, counts, call)
  })
  if (length(factors) == 1) return(data.frame(batch = factors[[1]]))
  stats::setNames(as.data.frame(factors, col.names = nms), nms)
}

# The covariates a model is fitted with must vary over its cells (several
# categorical ones: each with 2 levels; continuous ones: not constant). New
# cells, added or encoded later, may all share one level or value (a new donor
# from one site), so mrviData() leaves this to mrvi().
check_covariates_vary <- function(data, call) {
  factors <- data$nuisance$factors
  for (nm in names(factors)) {
    if (nlevels(factors[[nm]]) < 2) {
      abort_arg(c("{.arg batch${nm}} is constant (one level): it separates no cells.",
                  "i" = "Leave it out of {.arg batch}."), call = call)
    }
  }
  continuous <- data$nuisance$continuous
  scaling <- continuous_scaling(continuous)
  for (k in seq_along(continuous)) {
    nm <- names(continuous)[k]
    # huge values overflow the mean or sd: every standardised value would be 0 or NaN
    if (!is.finite(scaling$center[k]) || !is.finite(scaling$scale[k])) {
      abort_arg(c("{.arg continuous_covariates${nm}} is too large to standardise: its mean or sd is not finite (largest |value| {format(max(abs(continuous[[nm]])))}).",
                  "i" = "Give it on a smaller scale (other units, or its log)."), call = call)
    }
    v <- continuous[[nm]]
    if (length(v) < 2 || all(v == v[1])) {
      abort_arg(c("{.arg continuous_covariates${nm}} is constant: it explains nothing.",
                  "i" = "Leave it out of {.arg continuous_covariates}."), call = call)
    }
    # values that vary on a scale of 1e-160 or less: their variance underflows
    # (sd 0 or imprecise), and standardised they would be wrong
    if (scaling$scale[k] < 1e-150) {
      abort_arg(c("{.arg continuous_covariates${nm}} is too small to standardise: its sd is {format(scaling$scale[k])}.",
                  "i" = "Give it on a larger scale (other units)."), call = call)
    }
  }
}

# Standardised values of new cells (scaled as the fit's cells) must be finite
# in single precision, as the model takes them. Values further than
# `extrapolation_sd` standard deviations from the fitted cells' mean lie where the
# decoder saw no cells: allowed (a new donor may be older than every fitted
# one), with a warning, since its output there is extrapolation. `arg` names the
# argument ("continuous_covariates" or "continuous").
check_standardised <- function(m, nms, arg, call) {
  for (k in seq_along(nms)) {
    a <- abs(m[, k])
    if (any(!(a <= float_max))) {
      abort_arg(c("{.arg {arg}${nms[k]}} is too far from the fitted values to standardise.",
                  "i" = "Give it in the units it was fitted in."), call = call)
    }
    if (any(a > extrapolation_sd)) {
      cli::cli_warn(c("{.arg {arg}${nms[k]}} has values up to {format(max(a), digits = 3)} standard deviations from the fitted cells' mean: the decoder extrapolates there.",
                      "i" = "Check that it is given in the units it was fitted in."),
                    class = c("mrvi_extrapolation", "mrvi_warning"), call = call)
    }
  }
  m
}

extrapolation_sd <- 10

float_max <- 3.4028234663852886e38  # the largest single-precision number

# `continuous_covariates` -> a data.frame of finite, non-constant numeric
# columns, or NULL: column names, a numeric vector (one covariate, named
# "continuous"), or a data.frame, list or matrix of column names/vectors.
resolve_continuous <- function(x, cell_meta, counts, call) {
  if (is.null(x)) return(NULL)
  arg <- "continuous_covariates"
  # one value per cell, not all column names: numbers given as text
  if (is.character(x) && is.null(dim(x)) && length(x) > 1 && length(x) == ncol(counts) &&
      !all(x %in% names(cell_meta))) {
    abort_arg(c("{.arg {arg}} must be numeric: it is a character vector with one value per cell.",
                "i" = "Give numbers (for example {.code as.numeric()} of it), or column names of the cell metadata."),
              call = call)
  }
  if (is.character(x) && is.null(dim(x)) && length(x) > 1) check_some_columns(x, arg, "one number per cell", cell_meta, counts, call)
  if (is.matrix(x)) x <- as.data.frame(x)
  values <- if (is.character(x) && is.null(dim(x))) stats::setNames(as.list(x), x) else
    if (is.data.frame(x) || is.list(x)) by_cell_columns(x) else list(continuous = x)
  if (!length(values)) abort_arg("{.arg {arg}} is empty: give column names or vectors, or {.code NULL}.", call = call)
  nms <- covariate_names(values, "continuous", call)
  out <- lapply(seq_along(values), function(k) {
    a <- paste0(arg, "$", nms[k])
    v <- resolve_cell_values(values[[k]], a, cell_meta, counts, call)
    if (!is.numeric(v)) abort_arg("{.arg {a}} must be numeric, not {.obj_type_friendly {v}}.", call = call)
    if (any(!is.finite(v))) {
      abort_arg(c("{.arg {a}} has {sum(!is.finite(v))} infinite value{?s}.",
                  "i" = "Give every cell a finite value, or drop those cells first."), call = call)
    }
    as.numeric(v)
  })
  stats::setNames(as.data.frame(out, col.names = nms), nms)
}

# Several values given as column names, of which none is a column: a vector of
# the wrong length, said as such (a typo in one of several column names is
# named where that column is read).
check_some_columns <- function(values, arg, per_cell, cell_meta, counts, call) {
  if (any(values %in% names(cell_meta))) return(invisible())
  abort_arg(c("{.arg {arg}} has {length(values)} values: neither {per_cell} ({ncol(counts)} = {.code ncol(x)}) nor column names of the cell metadata.",
              "x" = if (is.null(cell_meta)) "{.arg x} is a bare matrix: it has no cell metadata to name columns of." else
                "Not columns: {show_some(unique(values), 3)}."), call = call)
}

# The columns of a data.frame (or the entries of a list) of covariates; a
# data.frame's row names, when text (cell names; R's numbers, also those a subset
# keeps, are not), name each column's values, so that they are matched to the
# cells by name.
by_cell_columns <- function(x) {
  if (!is.data.frame(x) || !is.character(attr(x, "row.names"))) return(as.list(x))
  lapply(x, function(v) stats::setNames(v, rownames(x)))
}

# Names of several covariates: given ones, else "<prefix>1", ...; unique and not
# a column the fit keeps for other purposes.
covariate_names <- function(values, prefix, call) {
  nms <- names(values)
  if (is.null(nms)) nms <- rep("", length(values))
  nms[!nzchar(nms)] <- paste0(prefix, seq_along(values))[!nzchar(nms)]
  bad <- nms[duplicated(nms) | nms %in% c("sample", "labels", "n_cells")]
  if (length(bad)) {
    abort_arg(c("{.arg {if (prefix == 'batch') 'batch' else 'continuous_covariates'}} has names that are repeated or reserved: {.val {unique(bad)}}.",
                "i" = "Give each covariate its own name, other than {.val sample}, {.val labels} and {.val n_cells}."),
              call = call)
  }
  nms
}

# Nuisance covariates of a fit: `factors` (a named list of levels per
# categorical covariate; fits with one have "batch") and `continuous` (a
# data.frame name, center, scale; no rows without any). Fits made before several
# covariates were possible have one categorical covariate, `fit@batches`.
fit_nuisance <- function(fit) {
  fit@config$nuisance %||% list(factors = list(batch = fit@batches), continuous = continuous_scaling(NULL))
}

# A fit made without `batch` has one internal level, "batch1": not a name to
# offer to a user (a one-level batch the user named "batch1" reads the same, and
# needs no batch either).
fit_has_batch <- function(fit) !identical(fit_nuisance(fit)$factors, list(batch = "batch1"))

continuous_scaling <- function(values) {
  if (is.null(values)) return(data.frame(name = character(), center = numeric(), scale = numeric()))
  data.frame(name = names(values), center = vapply(values, mean, numeric(1)),
             scale = vapply(values, stats::sd, numeric(1)), row.names = NULL)
}

# Cells x K matrix of 0-based site codes, counted over the levels of all
# covariates together, for factors (a data.frame) against `levels` (a named list).
site_codes <- function(factors, levels) {
  offsets <- cumsum(c(0L, lengths(levels)))
  codes <- vapply(seq_along(levels), function(k) {
    match(as.character(factors[[names(levels)[k]]]), levels[[k]]) - 1L + offsets[k]
  }, integer(nrow(factors)))
  matrix(codes, nrow = nrow(factors))
}

# Cells x C matrix of standardised values.
standardise <- function(values, scaling) {
  m <- matrix(as.numeric(unlist(values[scaling$name], use.names = FALSE)), ncol = nrow(scaling))
  sweep(sweep(m, 2, scaling$center, "-"), 2, scaling$scale, "/")
}

# What the trainer needs from a mrvi_data: the site codes and levels, the
# standardised continuous covariates, and the fit's description of them.
nuisance_design <- function(data) {
  factors <- data$nuisance$factors %||% data.frame(batch = data$batch)
  levels <- lapply(factors, levels)
  scaling <- continuous_scaling(data$nuisance$continuous)
  list(site = site_codes(factors, levels), levels = lengths(levels),
       continuous = standardise(data$nuisance$continuous, scaling),
       spec = list(factors = levels, continuous = scaling))
}

# The per-cell columns of the nuisance covariates (the fit's @cell_data keeps
# them under these names; one categorical covariate is `batch`).
nuisance_columns <- function(data) {
  factors <- data$nuisance$factors %||% data.frame(batch = data$batch)
  if (is.null(data$nuisance$continuous)) factors else cbind(factors, data$nuisance$continuous)
}

# The nuisance covariates of fitted cells `idx`: site codes and standardised
# continuous values, as the decoder takes them.
cell_nuisance <- function(fit, idx) {
  spec <- fit_nuisance(fit)
  cells <- fit@cell_data[idx, , drop = FALSE]
  list(site = site_codes(cells, spec$factors), continuous = standardise(cells, spec$continuous))
}

# The mean of decode(site) over every combination of the levels of the
# categorical covariates `factors` (names), the other columns of `site` as given.
mean_over_levels <- function(fit, site, factors, decode) {
  k <- match(factors, names(fit_nuisance(fit)$factors))
  grid <- level_grid(fit, factors)
  total <- 0
  for (r in seq_len(nrow(grid))) {
    site[, k] <- rep(grid[r, ], each = nrow(site))
    total <- total + decode(site)
  }
  total / nrow(grid)
}

# Every combination of the levels of the categorical covariates `factors`
# (names): one row per combination, their site codes (one column per factor).
level_grid <- function(fit, factors) {
  spec <- fit_nuisance(fit)
  k <- match(factors, names(spec$factors))
  if (!length(k)) return(matrix(0L, 1, 0))
  offsets <- cumsum(c(0L, lengths(spec$factors)))[k]
  grid <- as.matrix(expand.grid(lapply(spec$factors[k], function(l) seq_along(l) - 1L)))
  grid <- sweep(grid, 2, offsets, "+")
  storage.mode(grid) <- "integer"
  grid
}

# fit@batches: the levels of one covariate; of several, "covariate:level" in
# the order of their codes.
nuisance_level_names <- function(spec) {
  if (length(spec$factors) == 1) return(spec$factors[[1]])
  unlist(lapply(names(spec$factors), function(nm) paste0(nm, ":", spec$factors[[nm]])), use.names = FALSE)
}

# "2 batches" for one covariate (as before several were possible); otherwise
# "nuisance: site (2 levels), chem (3 levels); continuous: mito".
describe_nuisance <- function(spec) {
  f <- spec$factors
  if (length(f) == 1 && !nrow(spec$continuous)) {
    n <- length(f[[1]])
    return(sprintf("%d batch%s", n, if (n == 1) "" else "es"))
  }
  parts <- if (length(f) > 1 || length(f[[1]]) > 1) paste(sprintf("%s (%d levels)", names(f), lengths(f)), collapse = ", ")
  if (nrow(spec$continuous)) parts <- c(parts, paste("continuous:", paste(spec$continuous$name, collapse = ", ")))
  paste("nuisance:", paste(parts, collapse = "; "))
}
