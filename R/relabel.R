# The permutation designs of the guided tests (cellAssociation(),
# groupAssociation()). A permutation p-value is valid when the samples are
# exchangeable under the null. Samples of one block (a donor who gave several
# samples, a patient before and after treatment) are not exchangeable with the
# others': they share the block's effect. So with `block`, a covariate constant
# within every block (the donor's sex) is moved with whole blocks, and one that
# varies within blocks (the treatment of a paired design) is shuffled within
# each block; without it, freely. The per-cell tests draw the same designs in
# Rust (`Relabeling` in association.rs).

# `block` as a factor over `samples` (NULL: none): a column of the sample table
# or a vector named by sample; every sample with a covariate value needs one.
resolve_block <- function(block, table, samples, y, call) {
  if (is.null(block)) return(NULL)
  if (is.character(block) && length(block) == 1 && length(samples) != 1) {
    if (is.null(table) || !block %in% names(table)) {
      abort_arg(c("{.arg block} = {.val {block}} is not a column of the sample table.",
                  "i" = "Give a sample-table column (the donor of each sample, say) or a vector named by sample."),
                call = call)
    }
    values <- table[[block]][match(samples, table_samples(table))]
  } else {
    if (!is.atomic(block) || is.null(names(block)) || !all(samples %in% names(block))) {
      abort_arg(c("{.arg block} must be a sample-table column name or a vector named by sample.",
                  "i" = "Names needed: {show_some(samples)}."), call = call)
    }
    values <- block[samples]
  }
  if (is.list(values)) abort_arg("{.arg block} must hold one value per sample, not a list.", call = call)
  values <- without_na_level(values)  # (an NA level, addNA(), is NA too)
  missing <- samples[is.na(values) & !is.na(y[samples])]
  if (length(missing)) {
    abort_arg(c("{.arg block} has no value for sample{?s} {.val {missing}}.",
                "i" = "Give every sample its block (a sample alone in its block is one of its own)."), call = call)
  }
  stats::setNames(factor(values), samples)
}

# One relabeling of `y` (a factor over samples) under `block` (a factor over
# the same samples, or NULL), with R's generator.
relabel <- function(y, block) {
  if (is.null(block)) return(sample(y))
  b <- droplevels(block)
  if (within_blocks(y, b)) {
    for (members in split(seq_along(y), b)) y[members] <- y[members][sample.int(length(members))]
    return(y)
  }
  first <- match(levels(b), b)
  y[] <- y[first][sample.int(length(first))][as.integer(b)]
  y
}

# Whether `y` varies within some block (then it is shuffled within blocks).
within_blocks <- function(y, block) any(varies_within(y, block))

# Per level of `groups` (empty ones dropped), whether `values` take more than
# one value there: the test behind the relabeling schemes and the nesting hints.
varies_within <- function(values, groups) {
  vapply(split(as.character(values), groups, drop = TRUE), function(v) length(unique(v)) > 1, logical(1))
}

# Whether `values` group the samples exactly as `block` does (the block itself
# given as the covariate), where some block holds several samples.
same_grouping <- function(values, block) {
  nlevels(droplevels(block)) < length(block) && !any(varies_within(values, block)) && !any(varies_within(block, values))
}

# The blocks of several samples within which `values` are constant (a block-level
# covariate's blocks, beside others where it varies).
constant_blocks <- function(values, block) {
  varies <- varies_within(values, block)
  names(varies)[!varies & tabulate(block, nlevels(block))[match(names(varies), levels(block))] > 1]
}

# The permutation design of a guided test: `block` resolved (NULL: none) and
# the scheme it gives `y`; without `block`, a hint where `y` is nested in a
# sample-table column, which may be one.
permutation_design <- function(y, block, table, samples, call) {
  blocks <- resolve_block(block, table, samples, y, call)
  if (is.null(blocks)) {
    hint_nesting(nesting_columns(y, table, samples, attr(y, "name")), attr(y, "name"),
                 "If the samples of one level are not independent replicates (a donor's samples), give {.arg block} that column: they are relabelled together.")
  }
  list(blocks = blocks, scheme = relabeling_scheme(y, blocks, call))
}

# How `y` is relabelled under `block` (recorded in the results' metadata). A
# covariate that varies within some blocks but not others is shuffled within
# blocks, so the blocks where it is constant never change: said, as it may be
# a donor-level covariate with one discordant sample.
relabeling_scheme <- function(y, block, call) {
  if (is.null(block)) return("free")
  keep <- !is.na(y)
  y <- droplevels(y[keep])
  b <- droplevels(block[keep])
  # the block itself as the covariate: one relabeling, nothing to test
  if (same_grouping(y, b)) {
    abort_arg(c("The covariate groups the samples as {.arg block} does: it is the block itself, and whole-block relabelings cannot change it.",
                "i" = "Test another covariate, or leave {.arg block} out."), call = call)
  }
  varies <- varies_within(y, b)
  if (!any(varies)) return("whole blocks")
  fixed <- constant_blocks(y, b)
  if (length(fixed)) {
    inform(c("i" = "The covariate varies within {sum(varies)} block{?s} and is constant within {length(fixed)} other{?s} of several samples ({show_some(fixed, 3)}): it is relabelled within blocks, and those blocks' samples keep their categories.",
             "i" = "For a block-level covariate, give each block one value."),
           class = "mrvi_partial_blocks")
  }
  "within blocks"
}

# The number of different partitions of the samples into y's categories that
# the relabelings reach (log): a permutation p-value can be no smaller than one
# over it. Category names do not count (the statistics see the partition).
log_relabelings <- function(y, block) {
  y <- droplevels(y)
  # log of n! / prod(counts!) over categories, less the renamings of categories
  # that leave every count the same
  arrangements <- function(counts) lgamma(sum(counts) + 1) - sum(lgamma(counts + 1))
  renamings <- function(profiles) sum(lgamma(table(profiles) + 1))
  if (is.null(block)) return(arrangements(tabulate(y)) - renamings(tabulate(y)))
  b <- droplevels(block)
  counts <- table(b, y)  # blocks x categories
  if (within_blocks(y, b)) {
    profiles <- apply(counts, 2, paste, collapse = ",")
    return(sum(apply(counts, 1, arrangements)) - renamings(profiles))
  }
  # whole blocks move: the partitions are those of the blocks
  per_category <- colSums(counts > 0)
  arrangements(per_category) - renamings(per_category)
}

# Tests whose relabelings cannot reach p < 0.05 are no tests: said, with the
# count. `counts`: the number of different relabelings of each such test,
# named by group (unnamed: the per-cell tests' one).
warn_coarse_relabelings <- function(counts, block, call) {
  if (!length(counts)) return(invisible())
  under <- if (is.null(block)) "" else " under {.arg block}"
  most <- round(max(counts))
  groups <- names(counts)
  what <- if (is.null(groups)) "The covariate's samples have only {most} different relabeling{?s}" else
    "In {cli::qty(length(groups))}group{?s} {.val {groups}} the covariate's samples have at most {most} different relabeling{cli::qty(most)}{?s}"
  cli::cli_warn(c(paste0(what, under, ": the exact permutation p-value is at least 1/{most}, whatever the effect; random relabelings give values below it by chance only."),
                  "i" = "A permutation test needs more samples (or more blocks); the {.field effect} does not depend on them."),
                class = c("mrvi_coarse_permutations", "mrvi_warning"), call = call)
}

# Sample-table columns in which a covariate `y` (over `samples`) is nested: each
# of their levels holds one category of y, some level holds several samples,
# and they are not y itself relabelled (more levels than y has). Such a column
# may be a donor of several samples; `exclude`: columns not to name (y's own,
# the design's).
nesting_columns <- function(y, table, samples, exclude = character()) {
  if (is.null(table)) return(character())
  rows <- match(samples, table_samples(table))
  if (anyNA(rows)) return(character())
  keep <- !is.na(y)
  yy <- as.character(y)[keep]
  found <- character()
  for (col in setdiff(names(table), c("sample", "n_cells", exclude))) {
    v <- table[[col]][rows][keep]
    if (!is.atomic(v) || anyNA(v) || (is.numeric(v) && !is.factor(v))) next
    v <- as.character(v)
    levels_v <- length(unique(v))
    if (levels_v <= length(unique(yy)) || levels_v >= length(v)) next
    if (!any(varies_within(yy, v))) found <- c(found, col)
  }
  found
}

# The hint for tests without `block` of a covariate nested in such columns.
hint_nesting <- function(columns, covariate, remedy) {
  if (!length(columns)) return(invisible())
  inform(c("i" = "The covariate {.val {covariate}} is constant within each level of sample {cli::qty(length(columns))}column{?s} {.val {columns}}, several samples to a level.",
           "i" = remedy),
         class = "mrvi_nested_covariate")
}
