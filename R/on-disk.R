# Counts on disk: a DelayedArray (HDF5Matrix, TENxMatrix, an HDF5-backed
# SingleCellExperiment's assay) stays where it is. mrviData() checks it and
# takes its totals in one pass over blocks of consecutive cells and keeps a
# `disk_source()` in `data$disk`; mrvi() trains on blocks read in a shuffled
# order (block shuffling, see ?mrvi) and encodes the cells block by block.
# Nothing reads the whole matrix into memory.

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

# What mrviData() keeps of counts on disk: the object as given (`x`), which of
# its genes and cells remain after dropping empty ones, and whether it is a 10x
# file read directly (`tenx`). Blocks are read from `x` itself and subset in
# memory: reading through DelayedArray's delayed subsetting and dimnames took
# 2-3x longer per block.
disk_source <- function(x, genes = seq_len(nrow(x)), cells = seq_len(ncol(x))) {
  list(x = x, genes = genes, cells = cells, tenx = is_tenx(x))
}

# The kept cells first[k]:last[k] of `disk`, for every k one after the other, as
# one genes x cells dgCMatrix, read one range at a time. A dense block is
# realised as a matrix and then made sparse: twice as fast as DelayedArray's
# coercion to dgCMatrix (0.16 against 0.32 s for 6,250 cells x 2,000 genes from
# a gzip-compressed HDF5 file), and its size is bounded by disk_block_cells().
read_cells <- function(disk, first, last) {
  all_genes <- length(disk$genes) == nrow(disk$x)
  parts <- lapply(seq_along(first), function(k) {
    cols <- disk$cells[first[k]:last[k]]
    span <- cols[1]:cols[length(cols)]
    m <- if (isTRUE(disk$tenx)) {
      read_tenx(DelayedArray::seed(disk$x), span)
    } else {
      block <- disk$x[, span, drop = FALSE]
      if (DelayedArray::is_sparse(block)) methods::as(block, "dgCMatrix") else as.matrix(block)
    }
    if (!all_genes || length(span) != length(cols)) m <- m[disk$genes, cols - span[1] + 1L, drop = FALSE]
    if (is.matrix(m)) methods::as(m, "dgCMatrix") else m
  })
  if (length(parts) == 1) parts[[1]] else cbind_columns(parts)
}

# A 10x Genomics HDF5 matrix as written, without delayed operations: its columns
# are read straight from the file (read_tenx()).
is_tenx <- function(x) {
  methods::is(x, "DelayedArray") && DelayedArray::isPristine(x) &&
    methods::is(DelayedArray::seed(x), "TENxMatrixSeed") && is.null(DelayedArray::seed(x)@subdata)
}

# Columns `span` (consecutive) of a 10x HDF5 matrix as a dgCMatrix: its column
# pointers, then one hyperslab of the non-zero values and one of their rows.
# Through DelayedArray's sparse blocks the same read took 40% longer than
# reading a dense dataset.
read_tenx <- function(seed, span) {
  read <- function(name, first, n) {
    HDF5Array::h5mread(seed@filepath, paste0(seed@group, "/", name), starts = list(first), counts = list(n))
  }
  ptr <- as.numeric(read("indptr", span[1], length(span) + 1))  # 0-based offsets
  n <- ptr[length(ptr)] - ptr[1]
  rows <- if (n > 0) read("indices", ptr[1] + 1, n) else integer()
  values <- if (n > 0) read("data", ptr[1] + 1, n) else numeric()
  methods::new("dgCMatrix", Dim = c(as.integer(seed@dim[1]), length(span)), p = as.integer(ptr - ptr[1]),
               i = as.integer(rows), x = as.double(values))
}

# dgCMatrix blocks side by side, from their slots in one pass (cbind() of many
# blocks copies the growing result once per block).
cbind_columns <- function(parts) {
  methods::new("dgCMatrix", Dim = c(nrow(parts[[1]]), sum(vapply(parts, ncol, 1L))),
               Dimnames = list(rownames(parts[[1]]), unlist(lapply(parts, colnames))),
               p = c(0L, cumsum(unlist(lapply(parts, function(b) diff(b@p))))),
               i = unlist(lapply(parts, function(b) b@i)), x = unlist(lapply(parts, function(b) b@x)))
}

# Every block of `size` kept cells of `disk`: list(first, last).
disk_blocks <- function(disk, size) {
  first <- seq.int(1L, length(disk$cells), by = size)
  list(first = first, last = pmin(length(disk$cells), first + size - 1L))
}

# mrviData()'s pass over counts on disk: every block checked as counts in memory
# are (the error names the block's genes and cells from `names`, the counts'
# dimnames), library sizes and gene totals summed.
scan_on_disk <- function(disk, names, call, assay = NULL) {
  blocks <- disk_blocks(disk, disk_block_cells(disk$x))
  library <- numeric(ncol(disk$x))
  gene_total <- numeric(nrow(disk$x))
  for (k in seq_along(blocks$first)) {
    j <- blocks$first[k]:blocks$last[k]
    block <- read_from_disk(read_cells(disk, blocks$first[k], blocks$last[k]), call)
    dimnames(block) <- list(names[[1]], names[[2]][j])
    scan <- scan_counts(block, call, partial = k < length(blocks$first), assay = assay)
    library[j] <- scan$library
    gene_total <- gene_total + scan$gene_total
  }
  list(library = library, gene_total = gene_total)
}

# A read of counts on disk whose error (the file moved, deleted or damaged) is
# the package's classed I/O error naming `x`.
read_from_disk <- function(expr, call) {
  tryCatch(expr, error = function(e) {
    if (inherits(e, "mrvi_error")) stop(e)
    # (the cause, without the S4 dispatch it came through)
    msg <- sub("^error in evaluating the argument .* in selecting a method for function '[^']*': ", "",
               conditionMessage(e))
    # (an HDF5-backed assay reports its missing file under assay()'s subscript error)
    msg <- sub("^'assay\\(.*invalid subscript 'i'\\s*", "", msg)
    # a file rewritten with other dimensions since `x` was made: DelayedArray
    # blames the seed's author
    changed <- grepl("returned an array with\\s+incorrect dimensions|identical\\(dim\\(ans\\), expected_dim\\)", msg)
    if (changed) msg <- "The file behind `x` no longer has the dimensions `x` was made with."
    abort_arg(c("Reading the counts of {.arg x} from disk failed.", "x" = "{msg}",
                "i" = if (changed) "The file was rewritten since {.arg x} was made: make {.arg x} again from it (e.g. {.fn HDF5Array::HDF5Array})." else
                  "Check that the file behind {.arg x} is still there and readable, then call again."),
              class = "mrvi_io_error", call = call)
  })
}

# The counts of `data` in memory, for the analyses that need them whole
# (baselines, new cells, added samples): counts on disk are read block by block.
in_memory_counts <- function(data, call = NULL) {
  if (is.null(data$disk)) return(data$counts)
  blocks <- disk_blocks(data$disk, disk_block_cells(data$counts))
  # (a read that fails is an mrvi_io_error, as in mrviData() and training)
  m <- read_from_disk(read_cells(data$disk, blocks$first, blocks$last), call)
  dimnames(m) <- dimnames(data$counts)
  m
}

# Reads ranges of cells of `disk` (read_cells()) and, told which ranges come
# next, reads those in a forked process (mrvi_fork_call(), which reaps it by
# its pid whatever SIGCHLD handler is installed) while the caller works: the next
# buffer's blocks are decompressed while the model trains on the current ones,
# at the lowest priority, so that training keeps its cores.
# The forked reader spools them block by block to files (spool_cells()) that
# the trainer reads directly, or that become one dgCMatrix (unspool_cells()):
# neither process holds more than one block beyond the result, and nothing is
# serialised. How the fork is kept from copying R's memory is said in get(). If
# the reader fails or dies, the ranges are read again here, where an error
# reaches the caller.
# Without fork() (Windows), with options(mrvi.disk_prefetch = FALSE), or (the
# option unset) for reads below 5e7 counts, every read is direct (disk_prefetch()).
# `close()` stops a read still running.
block_prefetcher <- function(disk) {
  pending <- NULL
  handed <- NULL  # spooled files handed to the caller, removed at the next call
  close <- function() {
    if (!is.null(pending)) {
      mrvi_child_status(pending$pid, stop = TRUE)  # killed and reaped
      unlink(unlist(pending$files))
      pending <<- NULL
    }
    unlink(unlist(handed))
    handed <<- NULL
  }
  # `as_files`: return prefetched counts as their spooled files (for the Rust
  # trainer, which reads them without making R objects of them)
  get <- function(first, last, next_first = integer(), next_last = integer(), as_files = FALSE) {
    spooled <- NULL
    prefetched <- FALSE
    if (!is.null(pending) && identical(pending$first, as.integer(first)) && identical(pending$last, as.integer(last))) {
      prefetched <- wait_child(pending$pid)
      spooled <- pending$files
      if (!prefetched) unlink(unlist(spooled))  # failed or died: read below
      pending <<- NULL
    }
    close()  # a read of other ranges is not needed
    # A forked reader keeps the old copy of every shared page that this process
    # frees or writes while it runs. So a buffer that was not prefetched (the
    # first of a pass) is read here before the next read is forked (reading
    # allocates and frees much); the next read is forked before a prefetched
    # buffer becomes R objects here, after a collection (R's objects, all of an
    # older generation then, are left as they are by the minor collections
    # that follow; a full one, 0.4 s with Bioconductor loaded, once per pass)
    # and after the allocator's free memory went back to the system.
    # bench/README.md, "Reads overlapped with training".
    m <- if (!prefetched) read_cells(disk, first, last)
    if (length(next_first) && disk_prefetch(sum(next_last - next_first + 1L) * length(disk$genes))) {
      gc(verbose = FALSE, full = !prefetched)
      mrvi_release_free_memory()
      files <- list(n = tempfile("mrvi_n"), i = tempfile("mrvi_i"), x = tempfile("mrvi_x"))
      # no fork (e.g. at the process limit): the next read is direct
      pid <- tryCatch(mrvi_fork_call(function() spool_cells(disk, next_first, next_last, files)),
                      error = function(e) NULL)
      if (!is.null(pid)) pending <<- list(first = as.integer(next_first), last = as.integer(next_last), pid = pid, files = files)
    }
    if (!prefetched) return(m)
    if (as_files) {
      handed <<- spooled
      return(spooled)
    }
    on.exit(unlink(unlist(spooled)))
    unspool_cells(spooled, length(disk$genes), sum(last - first + 1L))
  }
  list(get = get, close = close)
}

# Whether block_prefetcher() forks a read of `entries` counts (cells x genes):
# as options(mrvi.disk_prefetch) says when it is set; unset, for reads of 5e7
# counts or more. A fork costs a collection and the copy of a large process's
# page tables, ~0.4 s per buffer with Bioconductor loaded: more than a small
# read (forked, 1,000 cells x 100 genes on disk trained 5.5x slower and 20,000 x
# 2,000 10% slower; 2 M x 2,000 gained, bench/README.md "Reads overlapped").
disk_prefetch <- function(entries = Inf) {
  set <- flag_option("mrvi.disk_prefetch", NA)
  .Platform$OS.type == "unix" && if (is.na(set)) entries >= 5e7 else set
}

# Waits for the end of the forked child `pid` (mrvi_fork_call()); TRUE when it
# succeeded. Polled, so that Ctrl-C is seen while waiting (and close() then
# stops the child).
wait_child <- function(pid) {
  repeat {
    done <- mrvi_child_status(pid, stop = FALSE)
    if (!is.na(done)) return(done)
    Sys.sleep(0.002)
  }
}

# The counts of the ranges first[k]:last[k] of `disk`, read one range at a time
# and appended to three files: each cell's number of non-zero counts, their
# rows, their values.
spool_cells <- function(disk, first, last, files) {
  tools::psnice(Sys.getpid(), 19)  # reading yields to training
  con <- lapply(files, file, open = "wb")
  on.exit(lapply(con, close))
  for (k in seq_along(first)) {
    m <- read_cells(disk, first[k], last[k])
    writeBin(diff(m@p), con$n)
    writeBin(m@i, con$i)
    writeBin(m@x, con$x)
  }
  TRUE
}

# The dgCMatrix of `n_genes` x `n_cells` that spool_cells() wrote to `files`.
# The Rust trainer reads the same files (spooled_counts() in mrvi-r's
# train.rs): a change of format changes both. test-on-disk.R ties each to a
# direct read (prefetched counts equal read_cells(); prefetched fits equal
# unprefetched ones).
unspool_cells <- function(files, n_genes, n_cells) {
  per_cell <- readBin(files$n, integer(), n_cells)
  nnz <- sum(per_cell)
  methods::new("dgCMatrix", Dim = c(as.integer(n_genes), as.integer(n_cells)), p = c(0L, cumsum(per_cell)),
               i = readBin(files$i, integer(), nnz), x = readBin(files$x, double(), nnz))
}

# The reader of `disk` for training: `read` is what mrvi_trainer_epoch() calls
# for the blocks of an epoch, the counts of the ranges first[k]:last[k] (a
# dgCMatrix, or the files a forked reader spooled them to), with the ranges it
# will ask for next (prefetched, block_prefetcher()). On Ctrl-C or
# a failure while reading it returns NULL, and the trainer stops as if
# interrupted; `failure()` then gives the error (NULL after Ctrl-C) for
# train_to_end() to report, and `close()` stops a prefetch still running.
block_reader <- function(disk) {
  failure <- NULL
  blocks <- block_prefetcher(disk)
  list(read = function(first, last, next_first = integer(), next_last = integer()) {
    tryCatch(blocks$get(first, last, next_first, next_last, as_files = TRUE),
             interrupt = function(e) {
               blocks$close()
               NULL
             },
             error = function(e) {
               blocks$close()
               failure <<- e
               NULL
             })
  }, failure = function() failure, close = blocks$close)
}

# The posterior of u of all cells of `data`, encoded block by block into
# matrices allocated once (at 2 M cells each is 160 MB); on disk the next block
# is read while this one is encoded. Blocks of `block_cells` (the fit's training
# blocks where it has them, which it records) or of disk_block_cells(). Counts in memory go through the same
# blocks: libtorch's results for a cell depend in their last bits on the cells
# encoded with it, and a fit from disk and one from memory must be the same.
encode_blocks <- function(model, data, block_cells = NULL, call = NULL) {
  counts <- data$counts
  on_disk <- !is.null(data$disk)
  size <- block_cells %||% disk_block_cells(counts)
  blocks <- disk_blocks(if (on_disk) data$disk else list(cells = seq_len(ncol(counts))), size)
  if (on_disk) {
    reader <- block_prefetcher(data$disk)
    on.exit(reader$close())
  }
  codes <- as.integer(data$sample) - 1L
  mean <- sd <- NULL
  for (k in seq_along(blocks$first)) {
    j <- blocks$first[k]:blocks$last[k]
    after <- if (k < length(blocks$first)) k + 1L else integer()
    block <- if (on_disk) {
      read_from_disk(reader$get(blocks$first[k], blocks$last[k], blocks$first[after], blocks$last[after]), call)
    } else counts[, j, drop = FALSE]
    p <- mrvi_encode(model, nrow(block), ncol(block), block@p, block@i, block@x, codes[j])
    if (is.null(mean)) mean <- sd <- matrix(NA_real_, length(codes), length(p$mean) / length(j))
    mean[j, ] <- p$mean
    sd[j, ] <- p$sd
  }
  list(mean = mean, sd = sd)
}
