# Counts on disk: a DelayedArray (HDF5Matrix, TENxMatrix, an HDF5-backed
# SingleCellExperiment's assay) stays where it is. mrviData() checks it and
# takes its totals in one pass over blocks of consecutive cells; mrvi() trains
# on blocks read in a shuffled order (block shuffling, see ?mrvi) and encodes
# the cells block by block. Nothing reads the whole matrix into memory.

is_on_disk <- function(counts) inherits(counts, "DelayedArray")

# Cells per block: as many as fill DelayedArray's block size
# (DelayedArray::getAutoBlockSize(), 100 MB by default) with dense doubles, the
# most a block read from a dense HDF5 dataset takes on its way to a dgCMatrix;
# at most a 20th of the cells, so that training has blocks to shuffle and to
# hold out for validation.
disk_block_cells <- function(counts) {
  size <- if (requireNamespace("DelayedArray", quietly = TRUE)) DelayedArray::getAutoBlockSize() else 1e8
  max(1L, as.integer(min(ceiling(ncol(counts) / 20), size %/% (8 * max(1, nrow(counts))))))
}

# The cells first[k]:last[k], for every k one after the other, as one
# genes x cells dgCMatrix, read one range at a time.
read_cells <- function(counts, first, last) {
  parts <- lapply(seq_along(first), function(k) {
    block <- counts[, first[k]:last[k], drop = FALSE]
    if (is_on_disk(block)) methods::as(block, "dgCMatrix") else block
  })
  if (length(parts) == 1) parts[[1]] else do.call(cbind, parts)
}

# The first cell of every block of `size` cells out of `n`.
block_starts <- function(n, size) seq.int(1L, n, by = size)

# mrviData()'s pass over counts on disk: every block checked as counts in memory
# are (the error names the block's cells), library sizes and gene totals summed.
scan_on_disk <- function(counts, call) {
  n <- ncol(counts)
  size <- disk_block_cells(counts)
  library <- numeric(n)
  gene_total <- numeric(nrow(counts))
  for (first in block_starts(n, size)) {
    last <- min(n, first + size - 1L)
    block <- read_cells(counts, first, last)
    scan <- mrvi_csc_scan(nrow(block), ncol(block), block@p, block@i, block@x)
    check_counts(block, scan, call)
    library[first:last] <- scan$library
    gene_total <- gene_total + scan$gene_total
  }
  list(library = library, gene_total = gene_total)
}

# Counts for the analyses that need them whole (baselines, new cells, added
# samples): counts on disk are read into memory.
in_memory_counts <- function(counts) {
  if (is_on_disk(counts)) methods::as(counts, "dgCMatrix") else counts
}

# The reader that mrvi_trainer_epoch() calls for the blocks of an epoch: the
# counts of the ranges first[k]:last[k]. On Ctrl-C or a failure while reading it
# returns NULL, and the trainer stops as if interrupted; a failure is kept in
# `state` for train_to_end() to report.
block_reader <- function(counts, state) {
  function(first, last) {
    tryCatch(read_cells(counts, first, last),
             interrupt = function(e) NULL,
             error = function(e) {
               state$error <- e
               NULL
             })
  }
}

# The posterior of u of all cells of `data`, encoded block by block.
encode_on_disk <- function(model, data) {
  counts <- data$counts
  n <- ncol(counts)
  size <- disk_block_cells(counts)
  codes <- as.integer(data$sample) - 1L
  parts <- lapply(block_starts(n, size), function(first) {
    j <- first:min(n, first + size - 1L)
    block <- read_cells(counts, first, max(j))
    p <- mrvi_encode(model, nrow(block), ncol(block), block@p, block@i, block@x, codes[j])
    list(mean = matrix(p$mean, length(j)), sd = matrix(p$sd, length(j)))
  })
  list(mean = do.call(rbind, lapply(parts, `[[`, "mean")), sd = do.call(rbind, lapply(parts, `[[`, "sd")))
}
