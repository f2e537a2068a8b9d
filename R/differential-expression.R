#' Differential expression with respect to sample covariates
#'
#' For each cell n, its counterfactual representations over the samples,
#' \eqn{Z_n = (z_n^{1}, \dots, z_n^{S})'} (S x L), are regressed on the sample
#' design X (S x p: an intercept, treatment-coded dummies for factors, numeric
#' covariates centred and scaled to unit standard deviation):
#' \eqn{Z_n = X B_n + E_n}. The rows of \eqn{B_n} belonging to a covariate are its
#' latent effect \eqn{\beta} in this cell: the shift of the cell's z between a
#' level and the reference level, or per standard deviation of a numeric
#' covariate.
#'
#' **Test.** For covariate j (q columns of X), the statistic is
#' \deqn{F_n = \frac{\mathrm{tr}(B_J' C_{JJ}^{-1} B_J)/q}{\mathrm{tr}(E_n'E_n)/(S-p)},
#' \quad C = (X'X)^{-1}.}
#' If the rows of \eqn{E_n} were independent \eqn{N(0, \Sigma)}, numerator and
#' denominator would be weighted sums of \eqn{\chi^2} variables with weights the
#' eigenvalues of \eqn{\Sigma}; matching two moments (Satterthwaite; Box 1954)
#' gives \eqn{F_n \sim F(q k, (S-p) k)} with k the effective number of latent
#' dimensions, between 1 and L. With one latent dimension this is the ordinary
#' F test of the covariate (`anova()` of `lm()`); with spherical errors, the F
#' test pooled over dimensions. q-values: Benjamini-Hochberg across the cells,
#' per covariate.
#'
#' Which k? Under the null the rows of \eqn{Z_n} are exchangeable across
#' samples, and the share of the residual sum of squares (after the other
#' covariates) that falls on the covariate's q directions is, for random
#' directions, a ratio whose mean and variance depend on
#' \eqn{r = \mathrm{tr}(G^2)/\mathrm{tr}(G)^2}, G the S x S Gram matrix of
#' the residualised \eqn{Z_n} with m non-zero directions. Matching them to
#' those of a Beta(qk/2, (m - q)k/2) gives
#' \eqn{k = ((m-1)(m+2)/(m r - 1) - 2)/m}: k = 1 when one direction
#' dominates (then the test is exact), k grows without bound as the residual
#' becomes isotropic. This matches the permutation distribution (the test of
#' exchangeability), not only the normal model, which is what makes it
#' calibrated on real fits; the plug-in of the residual covariance alone is
#' conservative when L is near S. Checked in the package tests: with normal
#' errors of unequal variance in 10 dimensions and 12 samples (7 seeds), 5.1-6.4\% of
#' p < 0.05 and 1.1-1.5\% of p < 0.01 (mid-range p-values within 0.05 of uniform); on a fit
#' with covariates permuted across samples (12 samples, 5 fits of the test suite's
#' design, 150 permutations each), 4.3-5.3\% of p < 0.05 for a numeric covariate
#' and 4.3-7.6\% for a binary one (at most 2.0\% below 0.01; an audit over all
#' 462 balanced splits of 12 samples found 5.5-6.6\% below 0.05 and, for the
#' linear flavour, 2.3-2.6\% below 0.01): with a binary
#' covariate and few samples the permutation distribution is discrete and
#' p-values are not exactly uniform, and the tails can exceed the nominal level
#' by up to half of it at 0.05 and more at 0.01.
#'
#' **Posterior draws.** \eqn{Z_n} is the mean of the counterfactual
#' representations over `mc_samples` draws of u from the cell's posterior (for
#' the linear flavour, whose z is linear in u, the expectation of that mean is
#' \eqn{Z_n} at the posterior mean, which is used directly, without draws). Draws are made from `seed`, the cell's index and the draw alone
#' (the same draws as every function that draws u), so results do not depend on
#' `chunk_size` or on which other cells are asked for, but for rounding: the
#' largest fold change that sets the TREAT threshold is decoded in single
#' precision over a chunk's cells, so p-values can move by about 1e-6.
#'
#' **Posterior-noise floor** (`normalize = TRUE`, the default). A fitted model
#' can carry small covariate-aligned shifts of z in cell types the covariate
#' does not affect. The samples' z then differ by little, so the residual is
#' tiny and the F test flags such shifts everywhere, although they are no larger
#' than the effect's own posterior uncertainty: refitted on single posterior
#' draws of u, \eqn{B_n} varies by as much as the shift. With `normalize`, each
#' draw's fit gives \eqn{B_n^{(d)}}, and the denominator of \eqn{F_n} is the
#' larger of the residual variance and the posterior spread of the effect,
#' \eqn{\mathrm{tr}(\Psi)/(q(D-1))} with \eqn{\Psi = \sum_d (B_J^{(d)} -
#' \bar B_J)' C_{JJ}^{-1} (B_J^{(d)} - \bar B_J)} over the D = `mc_samples`
#' draws: an effect counts only where it stands out from both the variation
#' between samples and the cell's posterior. Where the spread is the larger, the
#' statistic is referred to \eqn{F(k_\Psi, (D-1) k_\Psi)}, \eqn{k_\Psi = q\,
#' \mathrm{tr}(\Psi)^2/\mathrm{tr}(\Psi^2)} (the same two-moment matching,
#' reported in `df1` and `df2`). On a realistic simulation (6,000 cells x 1,000
#' genes, 16 samples, 2 affected cell types of 4, the covariate the root split
#' of one affected type's tree; default attention model, seeds 1 and 2) the
#' plain test flagged the affected type's cells (TPR 1.00) and 99\% of the
#' unaffected types' cells. In those cells the squared effect was about 1.2
#' times its posterior spread (in the affected type 50-100 times); with the floor
#' none of them was flagged, and TPR stayed 1.00. With more samples the floor
#' removes less: at 20,000 cells and 32 samples (the ultrametric design of
#' `bench/validity.R`, seed 1) 16.5\% of the unaffected cells were still
#' flagged. Needs
#' `mc_samples >= 3`.
#'
#' **Fold-change threshold** (`lfc_threshold`, default 0.1). With many samples
#' even the floored test finds such shifts: at 20,000 cells and 32 samples they
#' are consistent enough to stand out from both the residual and the posterior
#' spread, although they change no gene's expression by more than a few
#' percent. As limma's TREAT (McCarthy and Smyth 2009) and DESeq2's
#' `lfcThreshold` do for genes, the null hypothesis is then that the covariate
#' changes no gene's expression in the cell by more than `lfc_threshold`
#' (log2). The cell's largest |LFC| over genes, `max_lfc` (see Log fold
#' changes; at the effect the test uses), scales the effect to that boundary,
#' taking the LFC as linear in the effect's size, and the statistic is referred
#' to the noncentral \eqn{F(df_1, df_2, \lambda)} with \eqn{\lambda = df_1 F_n
#' (t / m)^2} (t the threshold, m the cell's \code{max_lfc}), by Patnaik's two-moment
#' approximation of the noncentral chi-square. An effect at the boundary gets a
#' p-value of about 0.5; one far beyond it keeps the plain test's p-value.
#' `lfc_threshold = 0` tests for any effect. On the reduced realistic design of
#' the package tests (4,000 cells x 600 genes, 16 samples, the root split of
#' the affected type's tree; seeds 1-5) the affected type's cells had `max_lfc`
#' 0.61-1.29 and the unaffected types' cells 0.07 at most; the threshold kept
#' every affected cell (TPR 1.00) and flagged none of the unaffected ones
#' (without it 0-21\%); a threshold of 0.3 lost the weakest fit (`max_lfc`
#' about 0.67, TPR 0).
#'
#' **Log fold changes** (`lfc = TRUE`). For each coefficient (a factor level
#' against the reference, or one SD of a numeric covariate) and each cell, with
#' \eqn{\bar z_n} the cell's mean counterfactual representation over samples:
#' \eqn{\mathrm{LFC}_g = \log_2 \bar\rho_g(\bar z_n + \beta/2) - \log_2
#' \bar\rho_g(\bar z_n - \beta/2)}, where \eqn{\bar\rho} is the decoder's
#' normalised expression averaged over the batches (equal weights; with several
#' nuisance covariates, over every combination of their levels, continuous ones
#' at their means). It is
#' averaged over `mc_samples` posterior draws of u (each draw refits
#' \eqn{B_n}); `lfc_prob` is the fraction of draws with
#' \eqn{|\mathrm{LFC}_g| \ge} `delta`. The results are cells x genes: in-memory
#' matrices (guarded by `getOption("mrvi.max_bytes")`), or, with `lfc_file`,
#' HDF5 datasets `lfc_<coefficient>` and `lfc_prob_<coefficient>` (a `/` in a
#' coefficient's name written \%2F, a \% as \%25) written block by
#' block (memory: one block of cells x genes) and returned as `HDF5Array`
#' (DelayedArray) objects; this needs the HDF5Array package.
#'
#' **Masking.** `admissible` leaves out, per cell, the samples whose
#' counterfactual is not supported by the data ([admissibility()]): that cell's
#' regression uses only its admissible samples (cells left with too few samples
#' for the design get `NA`).
#'
#' **Blocks** (`block`). Samples of one block (a donor who gave several
#' samples, a patient before and after treatment) share the block's effect, so
#' they are not independent replicates. A covariate constant within every block
#' (the donor's sex, disease status) is then tested on the blocks: each cell's
#' counterfactual z is averaged over the samples of each block, and the
#' regression and its F test run on the blocks' means (`"block means"`: the
#' residual degrees of freedom are those of the blocks). A covariate that
#' varies within blocks (the treatment of a paired design) is tested within
#' blocks, as with a fixed effect per block (`"within blocks"`: z and the design
#' centred within blocks, the grand mean added back; the blocks take
#' `n_blocks - 1` degrees of freedom). Covariates of both kinds need separate
#' calls. With one latent dimension these are `lm()`'s F tests on the blocks'
#' means and with the block as a factor (checked in the package tests). On
#' independent normal errors with donors differing twice as much as their
#' samples (8 donors x 3 samples, a null donor-level covariate; 7 seeds),
#' 5.1-6.1\% of p < 0.05 with `block` against 34-39\% without it. With
#' `admissible`, a cell's blocks are those with an admissible sample, averaged
#' over those. Numeric covariates are scaled over the samples, as without
#' `block` (the effect is per standard deviation over samples).
#'
#' @param fit a [MrVIFit-class].
#' @param covariates sample-table column names, or a data.frame with a `sample`
#'   column (the fitted sample names, one row per fitted sample and no other)
#'   and one column per covariate. Each covariate once, numeric or categorical
#'   (character, factor, logical); convert others, such as dates, explicitly.
#'   One covariate may also be a vector named by sample (as for
#'   [cellAssociation()]); it is then called `covariate`. When samples come in
#'   blocks (several samples per donor, a paired design), give `block`: without
#'   it the regression counts a donor's samples as independent replicates, which
#'   gives false positives for a covariate of the donor (a covariate nested in a
#'   sample-table column outside the design, one with more levels than it has,
#'   gets a message naming it, class
#'   `mrvi_nested_covariate`). Few residual degrees of freedom (2 or fewer)
#'   give a warning of class `mrvi_few_residual_df`.
#' @param cells `NULL` (all fitted cells), indices or names, each cell once (a
#'   repeat would be tested, and counted in the q-values, twice).
#' @param mc_samples posterior draws of u (see Details); 0 uses the posterior
#'   mean only. Draws whose working memory would pass
#'   `getOption("mrvi.max_bytes")` are an error, before any work.
#' @param lfc compute gene-level log2 fold changes (see Details).
#' @param delta the log2 fold-change threshold of `lfc_prob` (scvi-tools'
#'   MrVI uses the same default).
#' @param admissible `NULL` (no masking), `TRUE` (compute with
#'   [admissibility()] defaults, under this call's `seed` and `BPPARAM`) or
#'   a logical matrix cells x samples, as
#'   `admissibility(fit, cells = cells)$admissible` (rows named by cell are
#'   matched to the cells by name).
#' @param lfc_file `NULL` (LFCs in memory) or, with `lfc = TRUE`, the path of
#'   a new HDF5 file for them in an existing, writable folder (see Details).
#' @param chunk_size cells per chunk.
#' @param seed seed of the posterior draws (default: the fit's seed, `fit@config$seed`).
#'   Draw m of cell i depends on the seed, i and m alone, so a cell's draws are
#'   the same whichever cells are asked for, in whatever chunks, in every
#'   function that draws u.
#' @param normalize floor the denominator at the effect's posterior spread
#'   (see Details); needs `mc_samples >= 3`. `FALSE` gives the plain F test.
#' @param lfc_threshold the log2 fold change below which an effect does not
#'   count: the test's null hypothesis is that no gene's expression in the cell
#'   changes by more than this (see Details); 0 tests for any effect. For a
#'   numeric covariate the fold change is per standard deviation of it, so the
#'   same two groups coded 0/1 and as a factor are held to different thresholds.
#' @param BPPARAM a BiocParallel back-end (default serial) over which the work
#'   is spread, one block of `chunk_size` cells per task; results are identical to serial ones whatever the back-end and
#'   number of workers (see [mrvi-parallel]).
#' @param verbose show a progress bar (over chunks of cells, once the work takes
#'   more than 2 s).
#' @param block `NULL`, or a sample-table column name or a vector named by
#'   sample giving each sample's block (its donor, say; see Blocks in Details).
#' @return a `DataFrame` with one row per cell and covariate: `cell`,
#'   `covariate`, `statistic` (F), `df1`, `df2`, `p_value`, `q_value`,
#'   `effect_size` (the Frobenius norm of the covariate's latent \eqn{\beta}),
#'   `max_lfc` (the largest |log2 fold change| over genes, at the effect the
#'   test uses) and `n_samples` (samples used). `metadata()` holds `design` (X), `beta` (per
#'   coefficient a cells x L matrix) and, with `lfc = TRUE`, `lfc` and
#'   `lfc_prob` (per coefficient a cells x genes matrix, or `HDF5Array` with
#'   `lfc_file`) and `delta`; `block` (the blocks by sample, or `NULL`) and
#'   `block_design` (`"none"`, `"block means"` or `"within blocks"`).
#' @examples
#' sce <- simulateNested(400, 60, n_samples = 8, n_cell_types = 2, n_affected = 1, seed = 1)
#' fit <- mrvi(sce, sample = "sample", max_epochs = 2, verbose = FALSE)
#' cov <- data.frame(sample = fit@samples, group = rep(c("a", "b"), 4))
#' de <- differentialExpression(fit, cov, cells = 1:20, mc_samples = 0, normalize = FALSE)
#' head(de)
#' @export
differentialExpression <- function(fit, covariates, cells = NULL, mc_samples = 50, lfc = FALSE, delta = 0.3,
                                   admissible = NULL, lfc_file = NULL, chunk_size = 1000,
                                   seed = fit@config$seed, normalize = TRUE, lfc_threshold = 0.1,
                                   BPPARAM = BiocParallel::SerialParam(), verbose = TRUE, block = NULL) {
  call <- sys.call()
  check_required(call)
  check_fit(fit, call)
  check_bpparam(BPPARAM, call)
  mc_samples <- check_whole(mc_samples, "mc_samples", call)
  check_normalize_draws(normalize, mc_samples, call)
  check_flag(lfc, "lfc", call)
  check_flag(verbose, "verbose", call)
  if (!is.null(lfc_file) && !lfc) {
    abort_arg(c("{.arg lfc_file} is given but {.arg lfc} is {.code FALSE}: no fold changes would be written.",
                "i" = "Set {.code lfc = TRUE} to write them, or leave {.arg lfc_file} {.code NULL}."), call = call)
  }
  check_lfc(delta, "delta", call)
  check_lfc(lfc_threshold, "lfc_threshold", call)
  chunk_size <- check_count(chunk_size, "chunk_size", call)
  seed <- check_whole(seed, "seed", call)
  design <- de_design(fit, covariates, call, block)
  idx <- resolve_cells(fit, cells, call, tested = TRUE)
  mask <- resolve_admissible(fit, admissible, idx, call, seed, BPPARAM)
  coefs <- colnames(design$X)[-1]
  L <- z_dim(fit)
  names_k <- rownames(fit@u_mean)[idx]
  store <- if (lfc) lfc_store(names_k, fit@genes, coefs, lfc_file, call)
  # a run that fails leaves no partial file behind (a retry was refused: "exists")
  written <- FALSE
  if (!is.null(lfc_file)) on.exit(if (!written) unlink(lfc_file), add = TRUE)
  linear <- (fit@config$flavour %||% "linear") == "linear"
  draws <- if (linear && !lfc && !normalize) 0L else mc_samples
  check_de_draws(design, min(chunk_size, length(idx)), L, draws, lfc, call)
  apply_threads(call = call)

  tests <- list()
  beta <- lapply(stats::setNames(coefs, coefs), function(k) matrix(NA_real_, length(idx), L))
  chunks <- split(seq_along(idx), ceiling(seq_along(idx) / chunk_size))
  one_chunk <- function(rows) {
    cells_k <- idx[rows]
    m <- if (is.null(mask)) NULL else mask[rows, , drop = FALSE]
    # every draw's regression at once: its coefficients and the mean over
    # samples are linear maps of z, applied where each draw's z is made
    # (memory: cells x L per draw and coefficient); draw 0 is the posterior mean
    draw_ids <- if (draws == 0) 0L else seq_len(draws)
    cf <- if (lfc || normalize || draws > 0) {
      maps <- regression_maps(design, m, length(cells_k))
      blocks <- if (normalize) design$blocks
      if (!lfc && normalize) {
        # the spread alone reads only the covariates' rows of the maps
        maps$maps <- maps$maps[unlist(blocks), , , drop = FALSE]
        blocks <- utils::relist(seq_along(unlist(blocks)), blocks)
      }
      projected_counterfactuals(fit, cells_k, draw_ids, seed, maps, want_mean = !linear && draws > 0,
                                want_projections = lfc, blocks = blocks)
    }
    lfc_sum <- lfc_hits <- 0
    if (lfc) for (d in seq_along(draw_ids)) {
      lf <- de_lfc(fit, projected_regression(cf$projections, d, coefs), coefs)
      lfc_sum <- Map(`+`, lf, lfc_sum)
      lfc_hits <- Map(function(x, h) h + (abs(x) >= delta), lf, lfc_hits)
    }
    # the test's z: the draws' mean, or (linear flavour, no draws) the z at the
    # posterior mean (for the linear flavour the same); the spread is centred
    # at the draws' mean effect
    z_test <- cf$mean_z %||%
      array(counterfactual_z(fit, cells_k, seq_along(fit@samples), 0L, seed), c(length(cells_k), length(fit@samples), L))
    noise <- if (normalize) posterior_spread(cf$spread, design, length(draw_ids))
    res <- de_regression(z_test, design, m, noise = noise, largest_lfc = function(reg) largest_lfc(fit, reg, design),
                         lfc_threshold = lfc_threshold)
    if (lfc) res$lfc <- list(lapply(lfc_sum, `/`, max(1, draws)), lapply(lfc_hits, `/`, max(1, draws)))
    res
  }
  bp_map(chunks, one_chunk, BPPARAM = BPPARAM, each = function(res, i) {
    rows <- chunks[[i]]
    if (lfc) store$put(rows, res$lfc[[1]], res$lfc[[2]])
    tests[[i]] <<- res$tests
    for (k in coefs) beta[[k]][rows, ] <<- res$beta[[k]]
  }, progress = if (verbose) "Differential expression")

  out <- list()
  for (j in names(design$blocks)) {
    s <- do.call(rbind, lapply(tests, `[[`, j))
    # (one cell: a row of s is a named vector, whose names would name the rows)
    out[[j]] <- data.frame(cell = names_k, covariate = j, statistic = s[, "statistic"], df1 = s[, "df1"],
                           df2 = s[, "df2"], p_value = s[, "p_value"],
                           q_value = stats::p.adjust(s[, "p_value"], method = "BH"),
                           effect_size = s[, "effect_size"], max_lfc = s[, "max_lfc"],
                           n_samples = s[, "n_samples"], row.names = NULL)
  }
  res <- S4Vectors::DataFrame(do.call(rbind, unname(out)), check.names = FALSE)
  beta <- lapply(beta, function(b) {
    dimnames(b) <- list(names_k, paste0("z", seq_len(L)))
    b
  })
  S4Vectors::metadata(res) <- list(design = design$X, beta = beta, block = design[["block"]],
                                   block_design = design$block_design %||% "none")
  if (lfc) {
    S4Vectors::metadata(res) <- c(S4Vectors::metadata(res), store$result(), list(delta = delta))
  }
  written <- TRUE
  res
}

# The size guard of the draws, before any work: a chunk of K cells holds the
# draws' indices (about 28 bytes a draw in R and Rust) and, with `lfc`, every
# draw's projections of the cells' z (p + 1 rows x K x L).
check_de_draws <- function(design, K, L, draws, lfc, call) {
  per_draw <- 28 + if (lfc) 8 * (ncol(design$X) + 1) * K * L else 0
  check_size(per_draw * draws, sprintf("`mc_samples` = %d", draws), call,
             hint = if (lfc) "Ask for fewer draws (the default is 50) or a smaller {.arg chunk_size}, or raise {.code options(mrvi.max_bytes = )}." else
               "Ask for fewer draws (the default is 50), or raise {.code options(mrvi.max_bytes = )}.")
}

# Where the cells x genes LFC results go, block of cells by block: in-memory
# matrices, or HDF5 datasets through HDF5Array's realization sinks.
lfc_store <- function(cells, genes, coefs, file, call) {
  n <- length(cells)
  G <- length(genes)
  kinds <- c("lfc", "lfc_prob")
  if (is.null(file)) {
    check_size(2 * 8 * n * G * length(coefs), "differentialExpression(lfc = TRUE)", call,
               hint = "Write them to an HDF5 file with {.arg lfc_file}, ask for fewer {.arg cells}, or raise {.code options(mrvi.max_bytes = )}.")
    m <- lapply(stats::setNames(kinds, kinds), function(kind)
      lapply(stats::setNames(coefs, coefs), function(k) matrix(NA_real_, n, G, dimnames = list(cells, genes))))
    return(list(put = function(rows, lfc, prob) {
      for (k in coefs) {
        m$lfc[[k]][rows, ] <<- lfc[[k]]
        m$lfc_prob[[k]][rows, ] <<- prob[[k]]
      }
    }, result = function() m))
  }
  if (!requireNamespace("HDF5Array", quietly = TRUE)) {
    abort_arg(c("{.arg lfc_file} needs the {.pkg HDF5Array} package.",
                "i" = "On Debian: {.code apt-get install r-bioc-hdf5array}; or leave {.arg lfc_file} NULL."), call = call)
  }
  if (!is.character(file) || length(file) != 1 || is.na(file) || file.exists(file)) {
    abort_arg(c("{.arg lfc_file} must be the path of a file that does not exist yet.",
                "i" = if (isTRUE(file.exists(file))) "{.file {file}} exists: delete it ({.code unlink()}) or give another path; it is never overwritten."),
              call = call)
  }
  # checked before the work, not when the first block is written
  folder <- dirname(normalizePath(file, mustWork = FALSE))
  if (!dir.exists(folder) || file.access(folder, 2) != 0) {
    abort_arg(c("{.arg lfc_file} cannot be created: its folder {.file {folder}} does not exist or is not writable.",
                "i" = "Give a path in an existing, writable folder."), call = call)
  }
  # "/" separates HDF5 groups: escaped in the dataset names, as "%" is
  dataset <- function(kind, k) paste0(kind, "_", gsub("/", "%2F", gsub("%", "%25", k, fixed = TRUE), fixed = TRUE))
  sinks <- tryCatch(lapply(stats::setNames(kinds, kinds), function(kind)
    lapply(stats::setNames(coefs, coefs), function(k)
      HDF5Array::HDF5RealizationSink(c(n, G), dimnames = list(cells, genes), filepath = file,
                                     name = dataset(kind, k)))),
    error = function(e) {
      unlink(file)
      abort_arg(c("{.arg lfc_file}: the HDF5 datasets could not be created in {.file {file}}.", "x" = conditionMessage(e)),
                call = call)
    })
  write_rows <- function(sink, rows, values) {
    viewport <- DelayedArray::ArrayViewport(c(n, G), IRanges::IRanges(c(min(rows), 1), c(max(rows), G)))
    DelayedArray::write_block(sink, viewport, values)
  }
  list(put = function(rows, lfc, prob) {
    for (k in coefs) {
      write_rows(sinks$lfc[[k]], rows, lfc[[k]])
      write_rows(sinks$lfc_prob[[k]], rows, prob[[k]])
    }
  }, result = function() lapply(sinks, function(ss) lapply(ss, function(sink) {
    DelayedArray::close(sink)
    methods::as(sink, "DelayedArray")
  })))
}

# The sample design: intercept, treatment-coded factors, scaled numerics; which
# columns belong to which covariate.
de_design <- function(fit, covariates, call, block = NULL) {
  samples <- fit@samples
  # one covariate as a vector named by sample, as cellAssociation() takes it (its
  # values were read as column names)
  if (is.atomic(covariates) && !is.null(names(covariates)) && any(names(covariates) %in% samples)) {
    if (!all(samples %in% names(covariates))) {
      abort_arg(c("{.arg covariates} is named by sample but has no value for sample{?s} {.val {setdiff(samples, names(covariates))}}.",
                  "i" = "Give one value per fitted sample."), call = call)
    }
    # (values for other samples, e.g. of the whole study, are not read)
    fitted <- names(covariates) %in% samples
    covariates <- data.frame(sample = names(covariates)[fitted], covariate = unname(covariates[fitted]))
  }
  # one value per sample without names: not column names (its values were read
  # as such, "given more than once")
  if (is.atomic(covariates) && is.null(names(covariates)) && length(covariates) == length(samples) &&
      length(samples) > 1 && !(is.character(covariates) && all(covariates %in% names(fit@sample_table)))) {
    abort_arg(c("{.arg covariates} looks like one value per sample without names.",
                "i" = "Name it by sample ({.code stats::setNames(x, fit@samples)}), or give a data.frame with a {.field sample} column."),
              call = call)
  }
  if (is.character(covariates)) {
    # (a covariate given twice was reported as collinear)
    if (anyDuplicated(covariates)) {
      abort_arg("{.arg covariates} names {.val {unique(covariates[duplicated(covariates)])}} more than once: give each covariate once.",
                call = call)
    }
    missing <- setdiff(covariates, names(fit@sample_table))
    if (length(missing)) {
      per_cell <- intersect(missing, names(fit@cell_data))
      covs <- setdiff(names(fit@sample_table), c("sample", "n_cells"))
      abort_arg(c("{.arg covariates}: {.val {missing}} {?is not a column/are not columns} of the sample table.",
                  "x" = if (length(per_cell)) "{.val {per_cell}} var{?ies/y} within samples, so {?it is not a sample covariate/they are not sample covariates}.",
                  "i" = if (length(covs)) "Sample covariates (one value per sample): {show_some(covs, 12)}; or give a data.frame with a {.field sample} column." else
                    "The sample table has no covariates (columns constant within each sample); give a data.frame with a {.field sample} column."),
                call = call)
    }
    # rows by sample name: a table reordered by the user (merge(), order()) stays right
    rows <- match(samples, as.character(fit@sample_table$sample))
    tab <- as.data.frame(fit@sample_table)[rows, covariates, drop = FALSE]
    rownames(tab) <- samples
  } else if (is.data.frame(covariates) || methods::is(covariates, "DataFrame")) {
    covariates <- as.data.frame(covariates)
    if (!"sample" %in% names(covariates)) {
      abort_arg("{.arg covariates} needs a {.field sample} column with the fitted sample names.", call = call)
    }
    pos <- match(samples, as.character(covariates$sample))
    # rows for samples the fit does not have were ignored silently: a typo or
    # the table of another fit
    unknown <- setdiff(as.character(covariates$sample), samples)
    if (length(unknown)) {
      abort_arg(c("{.arg covariates} has rows for sample{?s} the model was not fitted on: {.val {unknown}}.",
                  "i" = "Give one row per fitted sample: {show_some(samples)}."), call = call)
    }
    covs <- names(covariates)[!names(covariates) %in% "sample"]
    if (anyNA(covs) || any(covs == "", na.rm = TRUE)) {
      abort_arg("{.arg covariates} has a column without a name: name every covariate column.", call = call)
    }
    if (anyDuplicated(covs)) {
      abort_arg("{.arg covariates} has column{?s} {.val {unique(covs[duplicated(covs)])}} more than once: give each covariate once.",
                call = call)
    }
    # rows repeated for a sample must agree (match() would take the first)
    rows <- unique(covariates[as.character(covariates$sample) %in% samples, , drop = FALSE])
    conflicting <- unique(as.character(rows$sample[duplicated(as.character(rows$sample))]))
    if (length(conflicting)) {
      abort_arg(c("{.arg covariates} has conflicting rows for sample{?s} {.val {conflicting}}.",
                  "i" = "Give one row per fitted sample."), call = call)
    }
    if (anyNA(pos)) {
      abort_arg(c("{.arg covariates} has no row for sample{?s} {.val {samples[is.na(pos)]}}.",
                  "i" = "Give one row per fitted sample."), call = call)
    }
    tab <- covariates[pos, setdiff(names(covariates), "sample"), drop = FALSE]
    rownames(tab) <- samples
  } else {
    abort_arg("{.arg covariates} must be sample-table column names, a data.frame with a {.field sample} column, or one covariate as a vector named by sample.",
              call = call)
  }
  if (ncol(tab) == 0) abort_arg("{.arg covariates} names no covariate.", call = call)
  X <- matrix(1, length(samples), 1, dimnames = list(samples, "(Intercept)"))
  blocks <- list()
  for (j in names(tab)) {
    v <- tab[[j]]
    v <- without_na_level(v)  # (an NA level, addNA(), is NA too)
    if (anyNA(v)) {
      abort_arg(c("{.arg covariates}: covariate {.field {j}} has NA for sample{?s} {.val {samples[is.na(v)]}}.",
                  "i" = paste("Every fitted sample needs a value. To leave samples out of the regressions, give them any value",
                              "and {.arg admissible} a cells x samples mask that is {.code FALSE} in their columns.")),
                call = call)
    }
    # numbers, or categories (character, factor, logical): a Date became a factor
    # of one level per sample and was reported as collinear
    if (!(is.numeric(v) && !is.object(v)) && !is.character(v) && !is.factor(v) && !is.logical(v)) {
      abort_arg(c("{.arg covariates}: covariate {.field {j}} is of class {.cls {class(v)}}, neither numeric nor categorical.",
                  "i" = "Convert it explicitly: {.code as.numeric()} for a trend, or {.code factor()} for categories."),
                call = call)
    }
    # "" is no category (as for sample, batch and labels): it became the design's unnamed reference
    if ((is.character(v) || is.factor(v)) && any(as.character(v) == "")) {
      abort_arg(c("{.arg covariates}: covariate {.field {j}} has an empty value for sample{?s} {.val {samples[as.character(v) == '']}}.",
                  "i" = "Name every category."), call = call)
    }
    if (is.numeric(v)) {
      if (any(is.infinite(v))) {
        abort_arg("{.arg covariates}: covariate {.field {j}} has an infinite value for sample{?s} {.val {samples[is.infinite(v)]}}.",
                  call = call)
      }
      # standardised after dividing by the largest |value|, the same numbers
      # without the overflow of sd() for values near the largest double
      v <- v / max(abs(v))
      if (!is.finite(stats::sd(v)) || stats::sd(v) == 0) {
        abort_arg("{.arg covariates}: covariate {.field {j}} is constant across samples.", call = call)
      }
      cols <- matrix((v - mean(v)) / stats::sd(v), ncol = 1, dimnames = list(NULL, j))
    } else {
      # text in byte order (the reference level, and with it the signs of beta
      # and the LFCs, must not follow the session's collation); a factor keeps its own
      f <- droplevels(if (is.character(v)) byte_order_factor(v) else as.factor(v))
      if (nlevels(f) < 2) abort_arg("{.arg covariates}: covariate {.field {j}} has a single level.", call = call)
      cols <- vapply(levels(f)[-1], function(l) as.numeric(f == l), numeric(length(f)))
      cols <- matrix(cols, nrow = length(f), dimnames = list(NULL, paste0(j, levels(f)[-1])))
    }
    blocks[[j]] <- ncol(X) + seq_len(ncol(cols))
    X <- cbind(X, cols)
  }
  # coefficients are looked up by name (beta, the LFCs): a factor `g` with level
  # "B" and a covariate `gB` must not both be "gB"
  dup <- unique(colnames(X)[duplicated(colnames(X))])
  if (length(dup)) {
    from <- names(blocks)[vapply(blocks, function(b) any(colnames(X)[b] %in% dup), logical(1))]
    abort_arg(c("Covariates {.field {from}} give coefficients of the same name: {.val {dup}} (a covariate's name followed by a level).",
                "i" = "Rename one of them."), call = call)
  }
  if (qr(X)$rank < ncol(X)) {
    # (the usual cause: a covariate constant within another's levels, such as a
    # donor's sex beside the donor)
    nested <- nested_pairs(tab)
    abort_arg(c("The covariates are collinear across samples: the design has rank {qr(X)$rank} < {ncol(X)} columns.",
                "i" = if (length(nested)) "{nested}: a covariate constant within another's levels cannot be estimated beside it. For a donor-level covariate of donors with several samples, give {.arg block} (the donor) instead of the donor as a covariate."),
              call = call)
  }
  design <- list(X = X, blocks = blocks)
  if (!is.null(block)) design <- block_design(design, tab, resolve_block(block, fit@sample_table, samples,
                                                                         stats::setNames(rep(1, length(samples)), samples), call), call)
  mode <- design$block_design %||% "none"
  units <- if (mode == "block means") nlevels(design[["block"]]) else nrow(X)
  what <- if (mode == "block means") "blocks" else "samples"
  residual_df <- units - ncol(X) - absorbed_df(design, rep(TRUE, nrow(X)))
  if (residual_df < 1) {
    within <- if (mode == "within blocks") sprintf(" within %d blocks", nlevels(design[["block"]])) else ""
    abort_arg(c("{units} {what} cannot test a design of {ncol(X)} columns{within}.",
                "i" = "Use fewer covariates or fewer factor levels: the residual needs >= 1 degree of freedom."),
              call = call)
  }
  Xu <- in_units(unit_transform(design, rep(TRUE, nrow(X))), X)
  if (qr(Xu)$rank < ncol(X)) {
    where <- if (mode == "block means") "over the blocks' means" else "within blocks"
    abort_arg(c("With {.arg block} the covariates are collinear {where}: the design has rank {qr(Xu)$rank} < {ncol(X)} columns.",
                "i" = if (mode == "within blocks") "A level present only in whole blocks, or covariates that differ only by a value per block, cannot be estimated within blocks."),
              call = call)
  }
  # a covariate nested in a column outside the design (a donor of several
  # samples): the regression counts those samples as independent
  if (is.null(block)) for (j in names(tab)) {
    if (is.numeric(tab[[j]]) && !is.factor(tab[[j]])) next
    hint_nesting(nesting_columns(stats::setNames(tab[[j]], samples), fit@sample_table, samples, names(tab)), j,
                 paste("If the samples of one level are not independent replicates (a donor's samples), the regression",
                       "counts them as such (false positives): give {.arg block} (the donor), or test one sample per level."))
  }
  # (a paired 2 x 2 design with the donor in it has one: the tests then have
  # almost no power, and a clear effect comes out unflagged)
  if (residual_df <= 2) {
    cli::cli_warn(c("{units} {what} and a design of {ncol(X)} columns leave {residual_df} residual degree{?s} of freedom: the tests have little power, so an effect can be large (see {.field max_lfc}) and unflagged.",
                    "i" = "Fewer covariates, or more samples, give the tests power."),
                  class = c("mrvi_few_residual_df", "mrvi_warning"), call = call)
  }
  design
}

# The design under `block` (a factor over the samples: the donor of each sample).
# Samples of one block share its effect, so they are not independent
# replicates. Covariates constant within every block (the donor's sex) are
# tested on the blocks' mean z, one row per block ("block means"); covariates
# that vary within blocks (the treatment of a paired design) are tested within
# blocks, the block's effect absorbed as by a fixed effect per block ("within
# blocks": z and X centred within blocks, the grand mean added back, n_blocks - 1
# degrees of freedom lost). Both are linear maps of the samples' z
# (unit_transform()). Covariates of both kinds in one call are refused.
block_design <- function(design, tab, block, call) {
  varying <- vapply(names(tab), function(j) any(varies_within(tab[[j]], block)), logical(1))
  # a categorical covariate with the block's grouping (a donor column given as both)
  itself <- names(tab)[vapply(names(tab), function(j) {
    !(is.numeric(tab[[j]]) && !is.factor(tab[[j]])) && same_grouping(tab[[j]], block)
  }, logical(1))]
  if (length(itself)) {
    abort_arg(c("Covariate {.field {itself}} groups the samples as {.arg block} does: it is the block itself, which is not tested.",
                "i" = "Drop it from {.arg covariates}; {.arg block} accounts for it."),
              call = call)
  }
  if (any(varying) && !all(varying)) {
    abort_arg(c("With {.arg block}, {cli::qty(sum(!varying))}covariate{?s} {.field {names(tab)[!varying]}} {?is/are} constant within every block and {cli::qty(sum(varying))}{.field {names(tab)[varying]}} var{?ies/y} within blocks: they are tested in different ways.",
                "i" = "Test them in separate calls: a between-block covariate on the blocks' means, a within-block one within blocks."),
              call = call)
  }
  if (all(varying)) {
    # a block-level covariate with a discordant sample would be tested within
    # blocks, on the few blocks where it varies: said, as by the guided tests
    fixed <- Reduce(union, lapply(names(tab), function(j) constant_blocks(tab[[j]], block)))
    if (length(fixed)) {
      inform(c("i" = "{cli::qty(ncol(tab))}The covariate{?s} var{?ies/y} within some blocks and {?is/are} constant within {length(fixed)} other{?s} of several samples ({show_some(fixed, 3)}): {cli::qty(ncol(tab))}{?it is/they are} tested within blocks, where those blocks tell nothing of {?it/them}.",
               "i" = "For a block-level covariate, give each block one value: it is then tested on the blocks' means."),
             class = "mrvi_partial_blocks")
    }
  }
  design[["block"]] <- block
  design$block_design <- if (all(varying)) "within blocks" else "block means"
  if (nlevels(block) == length(block)) design$block_design <- "none"  # every sample its own block
  design
}

# The rows a cell's regression is fitted on, as a linear map A (rows x its
# admissible samples, `keep`) of their z, and its design A X: NULL for the
# samples themselves (no block); with block, the blocks' means, or the samples
# centred within their blocks with the grand mean added back (block_design()).
unit_transform <- function(design, keep) {
  mode <- design$block_design %||% "none"
  if (mode == "none") return(NULL)
  b <- droplevels(design[["block"]][keep])
  n <- length(b)
  member <- matrix(0, nlevels(b), n)
  member[cbind(as.integer(b), seq_len(n))] <- 1
  means <- member / rowSums(member)  # blocks x samples
  if (mode == "block means") return(means)
  # each sample less its block's mean, plus the grand mean
  diag(n) - means[as.integer(b), , drop = FALSE] + 1 / n
}

# Rows of Y (over the admissible samples) in the units of unit_transform()'s A.
in_units <- function(A, Y) if (is.null(A)) Y else A %*% Y

# Degrees of freedom the blocks absorb in a cell's regression on the samples
# `keep` (within blocks: one per block present, less the intercept's).
absorbed_df <- function(design, keep) {
  if (!identical(design$block_design, "within blocks")) return(0)
  length(unique(design[["block"]][keep])) - 1
}

# The regression of each cell's counterfactual z on the design as linear maps
# over samples (r = p + 1 rows x S): rows 1..p the coefficients C (AX)' A (as
# de_regression() computes them, A = unit_transform(); NA where the cell's
# admissible samples cannot fit the design), row p + 1 the mean of the rows A z
# (z_bar: without block, the mean over the admissible samples). One
# map per distinct admissible pattern of `mask` (NULL: every sample), and for
# each map and block J of the design the whitening U of the covariate's
# precision P = C_JJ^-1 = U'U (NaN where the design cannot be fitted), as
# projected_counterfactuals() takes them for the posterior spread.
regression_maps <- function(design, mask, n) {
  X <- design$X
  p <- ncol(X)
  one <- function(keep) {
    M <- matrix(0, p + 1, nrow(X))
    A <- unit_transform(design, keep)
    M[p + 1, keep] <- if (is.null(A)) 1 / sum(keep) else colMeans(A)
    Xk <- in_units(A, X[keep, , drop = FALSE])
    C <- if (any(keep)) design_inverse(Xk, absorbed_df(design, keep))
    if (is.null(C)) M[seq_len(p), ] <- NA_real_ else M[seq_len(p), keep] <- C %*% (if (is.null(A)) t(Xk) else crossprod(Xk, A))
    whitening <- lapply(design$blocks, function(J) {
      if (is.null(C)) rep(NaN, length(J)^2) else chol(solve(C[J, J, drop = FALSE]))
    })
    list(map = M, whitening = unlist(whitening, use.names = FALSE))
  }
  if (is.null(mask)) {
    patterns <- list(rep(TRUE, nrow(X)))
    of_cell <- rep(1L, n)
  } else {
    key <- apply(mask, 1, function(r) paste(which(r), collapse = " "))
    first <- !duplicated(key)
    patterns <- lapply(which(first), function(i) mask[i, ])
    of_cell <- match(key, key[first])
  }
  maps <- lapply(patterns, one)
  list(maps = array(unlist(lapply(maps, `[[`, "map")), c(p + 1, nrow(X), length(maps))),
       whitening = unlist(lapply(maps, `[[`, "whitening")), of_cell = of_cell)
}

# (X'X)^-1 of a design, or NULL where it cannot be fitted with a residual: fewer
# than ncol(X) + 1 + `absorbed` rows, or collinear columns (a cell's admissible samples).
design_inverse <- function(X, absorbed = 0) {
  if (nrow(X) - ncol(X) - absorbed < 1) return(NULL)
  decomposition <- qr(X)
  if (decomposition$rank < ncol(X)) return(NULL)
  chol2inv(qr.R(decomposition))
}

# The regression (as de_regression(tests = FALSE) gives it: `beta` per
# coefficient and `z_bar`, cells x L each) from projected_counterfactuals()'s
# projections of regression_maps(), averaged over `draws`.
projected_regression <- function(projections, draws, coefs) {
  dims <- dim(projections)
  at <- function(row) {
    v <- matrix(projections[, , row, draws], dims[1] * dims[2], length(draws))
    matrix(rowMeans(v), dims[1], dims[2])
  }
  list(beta = lapply(stats::setNames(seq_along(coefs) + 1L, coefs), at), z_bar = at(dims[3]))
}

# The posterior spread of each covariate's effect over the D draws of u: per
# block J of the design and per cell, Psi = sum over draws of (B_J - mean B_J)'
# P (B_J - mean B_J) (L x L), P = C_JJ^-1 of the cell's design, so that
# tr(Psi) / (D - 1) is the test's numerator expected from the posterior spread
# alone (see Details). From `moments` ([cells, blocks, 2]: tr(Psi) and
# tr(Psi^2), as projected_counterfactuals() accumulates them): `draws` and, per
# block, `trace` (per column of J) and `dim` (q tr(Psi)^2 / tr(Psi^2)) per cell.
posterior_spread <- function(moments, design, draws) {
  blocks <- lapply(seq_along(design$blocks), function(j) {
    q <- length(design$blocks[[j]])
    tr <- moments[, j, 1]
    tr[is.nan(tr)] <- NA_real_  # a cell whose admissible samples cannot fit the design
    list(trace = pmax(tr, 0) / ((draws - 1) * q),
         dim = q * pmax(1, tr^2 / pmax(moments[, j, 2], .Machine$double.xmin)))
  })
  list(blocks = stats::setNames(blocks, names(design$blocks)), draws = draws)
}

# For A ([K, cells, L]: cell i's K x L matrix A_i; `d` its dimensions when A is
# another shape of the same values), per cell tr(A_i' A_i) and the sum of squares
# of the L x L Gram matrix A_i' A_i (= tr((A_i A_i')^2)). A double A goes to Rust
# as it is (as.double() would copy it to drop its dimensions).
gram_moments <- function(A, d = dim(A)) {
  if (!is.double(A)) storage.mode(A) <- "double"
  mrvi_gram_moments(A, d[1], d[2], d[3])
}

# Regress each cell's Z ([cells, S, L]) on the design; per covariate the F test
# with Box's effective dimension (see ?differentialExpression). `noise`
# (posterior_spread()'s result) floors the denominator per covariate; where it
# binds, the statistic is referred to its law under the posterior spread.
# `largest_lfc`: NULL, or a function of the regression (`beta`, `z_bar`) giving
# each covariate's largest |LFC| per cell, for the fold-change threshold.
de_regression <- function(z, design, mask = NULL, tests = TRUE, noise = NULL, largest_lfc = NULL,
                          lfc_threshold = 0) {
  X <- design$X
  n <- dim(z)[1]
  L <- dim(z)[3]
  p <- ncol(X)
  coefs <- colnames(X)[-1]
  full <- if (is.null(mask)) rep(TRUE, n) else rowSums(!mask) == 0
  B <- array(NA_real_, c(p, n, L))
  z_bar <- matrix(NA_real_, n, L)  # the mean over (admissible) samples
  n_used <- rep(dim(z)[2], n)
  # the regression of each design's cells, kept for their tests: on the rows
  # A z of the admissible samples (unit_transform(); without block the samples)
  fitted <- list()
  fit_design <- function(cells, keep) {
    if (!any(keep)) return()  # (z_bar stays NA)
    A <- unit_transform(design, keep)
    absorbed <- absorbed_df(design, keep)
    # every cell in order (no mask): z itself, not a copy made by indexing
    zc <- if (length(cells) == n) z else z[cells, , , drop = FALSE]
    if (!all(keep)) zc <- zc[, keep, , drop = FALSE]
    Zs <- aperm(zc, c(2, 1, 3))
    dim(Zs) <- c(sum(keep), length(Zs) / sum(keep)) # samples x (cells * L), in place
    Zs <- in_units(A, Zs)
    z_bar[cells, ] <<- matrix(colMeans(Zs), length(cells), L)
    Xc <- in_units(A, X[keep, , drop = FALSE])
    C <- design_inverse(Xc, absorbed)
    if (is.null(C)) return()
    Bc <- C %*% crossprod(Xc, Zs)
    B[, cells, ] <<- Bc
    fitted[[length(fitted) + 1L]] <<- list(cells = cells, Xc = Xc, Zs = Zs, C = C, Bc = Bc, absorbed = absorbed)
  }
  if (any(full)) fit_design(which(full), rep(TRUE, nrow(X)))
  for (i in which(!full)) {
    n_used[i] <- sum(mask[i, ])
    fit_design(i, mask[i, ])
  }
  reg <- list(beta = lapply(stats::setNames(coefs, coefs), function(k) matrix(B[match(k, colnames(X)), , ], n, L)),
              z_bar = z_bar)
  if (!tests) return(reg)

  top_lfc <- if (!is.null(largest_lfc)) largest_lfc(reg)
  stat <- lapply(design$blocks, function(b) {
    matrix(NA_real_, n, 6, dimnames = list(NULL, c("statistic", "df1", "df2", "p_value", "effect_size", "max_lfc")))
  })
  for (fd in fitted) {
    cells <- fd$cells
    S <- nrow(fd$Xc) - fd$absorbed  # rows, less the blocks' degrees of freedom
    E <- fd$Zs - fd$Xc %*% fd$Bc
    k <- length(cells)
    rss <- rowSums(matrix(colSums(E^2), k, L))
    for (j in names(design$blocks)) {
      J <- design$blocks[[j]]
      BJ <- fd$Bc[J, , drop = FALSE]
      num <- rowSums(matrix(colSums(BJ * (solve(fd$C[J, J, drop = FALSE]) %*% BJ)), k, L))
      q <- length(J)
      eff <- permutation_dimension(fd$Zs, fd$Xc[, -J, drop = FALSE], k, L, fd$absorbed)
      # where the effect's posterior spread is larger than the residual, it is
      # the denominator, with its own dimension and D - 1 draws behind it
      denominator <- rss / (S - p)
      df1 <- q * eff
      df2 <- (S - p) * eff
      if (!is.null(noise)) {
        floor <- noise$blocks[[j]]$trace[cells]
        floored <- floor > denominator
        denominator[floored] <- floor[floored]
        df1[floored] <- noise$blocks[[j]]$dim[cells][floored]
        df2[floored] <- (noise$draws - 1) * df1[floored]
      }
      f <- (num / q) / denominator
      # the null of no effect, or (lfc_threshold > 0) of an effect whose largest
      # |LFC| is at most the threshold: the effect scaled to that boundary gives
      # the noncentrality (TREAT)
      top <- if (is.null(top_lfc)) rep(NA_real_, k) else top_lfc[[j]][cells]
      ncp <- if (lfc_threshold > 0) pmin(df1 * f * (lfc_threshold / top)^2, 1e12) else 0
      stat[[j]][cells, ] <- cbind(f, df1, df2, noncentral_f_upper(f, df1, df2, ncp),
                                  sqrt(rowSums(matrix(colSums(BJ^2), k, L))), top)
    }
  }
  c(reg, list(tests = lapply(stat, function(s) cbind(s, n_samples = n_used))))
}

# P(F > f) for F noncentral F(df1, df2, ncp), by Patnaik's two-moment
# approximation of the noncentral chi-square (exact at ncp = 0). R's own
# noncentral pf() loses its precision below ~1e-9, which would floor the
# p-values of clear effects.
noncentral_f_upper <- function(f, df1, df2, ncp) {
  scale <- (df1 + 2 * ncp) / (df1 + ncp)
  dim <- (df1 + ncp)^2 / (df1 + 2 * ncp)
  stats::pf(f * df1 / (scale * dim), dim, df2, lower.tail = FALSE)
}

# The largest |log2 fold change| over genes of each covariate's effect (over its
# coefficients) per cell, at the regression `reg`: a list by covariate.
largest_lfc <- function(fit, reg, design) {
  coefs <- colnames(design$X)
  # every combination of the nuisance levels, as decode_expression() averages them
  grid <- level_grid(fit, names(fit_nuisance(fit)$factors))
  top <- lapply(stats::setNames(coefs[-1], coefs[-1]), function(k) {
    half <- reg$beta[[k]] / 2
    # max over genes of |effect_lfc()|, reduced in Rust as it is decoded
    m <- mrvi_largest_lfc(native_model(fit), reg$z_bar + half, reg$z_bar - half, as.integer(t(grid)))
    m[is.na(m)] <- NA_real_
    m
  })
  lapply(design$blocks, function(J) do.call(pmax, unname(top[coefs[J]])))
}

# Effective number of dimensions k per cell (see ?differentialExpression): Z
# (S x cells*L) is residualised on the design without the tested covariate, its
# S x S Gram matrix G has m = S - ncol(X0) - absorbed non-zero directions, and k matches the
# variance of tr(P G)/tr(G) over random directions P to that of a Beta(k/2,
# (m - 1) k/2): k = ((m - 1)(m + 2)/(m r - 1) - 2)/m with r = tr(G^2)/tr(G)^2.
permutation_dimension <- function(Zs, X0, n, L, absorbed = 0) {
  S <- nrow(Zs)
  Q0 <- qr.Q(qr(X0))
  R0 <- Zs - Q0 %*% crossprod(Q0, Zs)  # two products (BLAS) rather than a solve per column (LINPACK)
  m <- S - ncol(X0) - absorbed  # (within blocks, the blocks' directions are gone)
  # tr(G) and tr(G^2) from the L x L Gram matrix E'E, which has G's non-zero
  # eigenvalues (L < S: less work than the S x S one)
  g <- gram_moments(R0, c(S, n, L))
  r <- ifelse(g$trace > 0, g$squares / g$trace^2, 1)
  k <- ((m - 1) * (m + 2) / pmax(m * r - 1, 1e-12) - 2) / m
  pmin(pmax(k, 1), 1e6)
}

# effect_lfc() per coefficient, cells x genes.
de_lfc <- function(fit, reg, coefs) {
  lapply(stats::setNames(coefs, coefs), function(k) {
    out <- t(effect_lfc(fit, reg, k))
    out[is.na(out)] <- NA_real_
    out
  })
}

# log2 fold changes (genes x cells) of coefficient k's effect, from z_bar - beta/2
# to z_bar + beta/2, expression averaged over every combination of the levels of
# the categorical nuisance covariates (continuous ones at their means).
effect_lfc <- function(fit, reg, k) {
  half <- reg$beta[[k]] / 2
  log2(decode_expression(fit, reg$z_bar + half) / decode_expression(fit, reg$z_bar - half))
}

# Pairs of design covariates (a table over samples) where the first is
# constant within each level of the second, as text ("sex within donor").
nested_pairs <- function(tab) {
  out <- character()
  for (a in names(tab)) for (b in setdiff(names(tab), a)) {
    if (is.numeric(tab[[b]]) && !is.factor(tab[[b]])) next
    if (!any(varies_within(tab[[a]], as.character(tab[[b]])))) out <- c(out, paste(a, "within", b))
  }
  out
}
