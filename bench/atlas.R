# Atlas scale on this machine, scaled down (issue #16): an HDF5-backed input,
# one checkpointed epoch, grouped distances over SerialParam / SnowParam(2) /
# BatchtoolsParam (socket), differential abundance; each stage's time and peak
# memory. Run each stage in its own process under /usr/bin/time -v, e.g.
#   for s in data train_memory train_hdf5 distances abundance; do
#     /usr/bin/time -v R_LIBS=$PWD/.Rlib Rscript bench/atlas.R $s 2>&1 | grep -E "^(atlas|\s+Maximum resident)"
#   done
# ATLAS_CELLS (default 50,000), ATLAS_GENES (500), ATLAS_SAMPLES (200) set the size.
# Stages data_disk, train_disk and train_disk_memory work at the issue's size
# (2,000,000 cells x 2,000 genes, ATLAS_DISK_CELLS / ATLAS_DISK_GENES; data_tenx
# writes them in the 10x sparse layout, read with ATLAS_DISK_FORMAT=tenx), and stages
# abundance_1m and distances_1m: differential abundance and grouped distances
# over three back-ends at 1,000,000 cells x 1,000 samples.
suppressPackageStartupMessages({
  library(mrvi)
  library(HDF5Array)
  library(BiocParallel)
})
stage <- commandArgs(TRUE)[1]
n_cells <- as.integer(Sys.getenv("ATLAS_CELLS", 50000))
n_genes <- as.integer(Sys.getenv("ATLAS_GENES", 500))
n_samples <- as.integer(Sys.getenv("ATLAS_SAMPLES", 200))
dir <- Sys.getenv("ATLAS_DIR", file.path(tempdir(), "..", "mrvi_atlas"))
dir.create(dir, showWarnings = FALSE)
h5 <- file.path(dir, "counts.h5")
say <- function(...) cat("atlas", stage, ..., "\n")
hwm <- function() as.numeric(sub("\\D*(\\d+).*", "\\1", grep("VmHWM", readLines("/proc/self/status"), value = TRUE))) / 1024
timed <- function(expr) {
  t <- system.time(v <- expr)[["elapsed"]]
  list(value = v, seconds = t)
}
meta <- function() readRDS(file.path(dir, "cells.rds"))

if (stage == "data") {
  sim <- mrvi:::simulate_counts(n_cells = n_cells, n_genes = n_genes, n_samples = n_samples, n_sites = 2,
                                n_cell_types = 20, seed = 1)
  writeHDF5Array(sim$counts, h5, "counts", chunkdim = c(n_genes, 1000L))
  saveRDS(data.frame(sample = sim$sample, site = sim$site, group = sim$cell_type), file.path(dir, "cells.rds"))
  saveRDS(sim$counts, file.path(dir, "counts.rds"))
  say(sprintf("%d cells x %d genes, %d samples, %.1f%% non-zero", n_cells, n_genes, n_samples,
              100 * Matrix::nnzero(sim$counts) / length(sim$counts)))
} else if (stage %in% c("train_memory", "train_hdf5")) {
  cells <- meta()
  x <- if (stage == "train_hdf5") HDF5Array(h5, "counts") else readRDS(file.path(dir, "counts.rds"))
  ck <- file.path(dir, paste0(stage, ".ckpt"))
  unlink(ck)
  r <- timed(mrvi(x, sample = cells$sample, batch = cells$site, labels = cells$group, max_epochs = 1,
                  n_threads = 2, verbose = FALSE, checkpoint = ck))
  saveRDS(r$value, file.path(dir, paste0(stage, "_fit.rds")))
  say(sprintf("input %s: one epoch %.1f s (of it training %.1f s, %.0f cells/s); checkpoint %.1f MB; peak RSS %.0f MB",
              class(x)[1], r$seconds, r$value@history$seconds, r$value@history$cells_per_second,
              file.size(ck) / 1e6, hwm()))
} else if (stage == "data_disk") {
  # The issue's size (ATLAS_DISK_CELLS x ATLAS_DISK_GENES, default 2,000,000 x
  # 2,000, 200 samples of 10,000 cells stored one after the other, 2 sites, 20
  # cell types, ~10% non-zero), written to HDF5 block by block: never whole in memory.
  n <- as.integer(Sys.getenv("ATLAS_DISK_CELLS", 2e6))
  G <- as.integer(Sys.getenv("ATLAS_DISK_GENES", 2000))
  S <- 200L
  set.seed(1)
  profile <- rnorm(G, 0, 2.5) + matrix(rnorm(G * 20, 0, 0.5), G, 20)  # log expression per type
  effect_genes <- sample.int(G, 20)
  effect <- matrix(rnorm(20 * S, 0, 0.3), 20, S)
  sample <- rep(seq_len(S), each = ceiling(n / S))[seq_len(n)]
  type <- sample.int(20, n, replace = TRUE)
  sink <- HDF5RealizationSink(c(G, n), type = "integer", filepath = file.path(dir, "disk_counts.h5"),
                              name = "counts", chunkdim = c(G, 1000L), level = 6)
  grid <- DelayedArray::colAutoGrid(sink, ncol = 10000L)
  nnz <- 0
  for (b in seq_along(grid)) {
    j <- DelayedArray::ranges(grid[[b]])[2]
    j <- BiocGenerics::start(j):BiocGenerics::end(j)
    logit <- profile[, type[j], drop = FALSE]
    logit[effect_genes, ] <- logit[effect_genes, ] + effect[, sample[j]]
    p <- exp(logit)
    mu <- sweep(p, 2, exp(rnorm(length(j), log(800), 0.3)) / colSums(p), "*")
    m <- matrix(rpois(length(mu), mu), G)
    nnz <- nnz + sum(m != 0)
    write_block(sink, grid[[b]], m)
  }
  close(sink)
  saveRDS(data.frame(sample = factor(sprintf("s%03d", sample)), site = factor(paste0("site", sample %% 2 + 1)),
                     group = factor(sprintf("type%02d", type))), file.path(dir, "disk_cells.rds"))
  say(sprintf("%d cells x %d genes, %d samples, %.1f%% non-zero; file %.2f GB", n, G, S,
              100 * nnz / (as.numeric(n) * G), file.size(file.path(dir, "disk_counts.h5")) / 1e9))
} else if (stage == "data_tenx") {
  # the same counts in the 10x Genomics HDF5 layout (sparse: only the non-zero
  # counts and their rows are stored), as atlases are shipped
  # (through the sink: writeTENxMatrix() of this HDF5Array version writes the file
  # and then fails to open it in the same process, "h5checktype(): Argument not of
  # class H5IdComponent"; other processes read it)
  x <- HDF5Array(file.path(dir, "disk_counts.h5"), "counts")
  t <- timed({
    sink <- TENxRealizationSink(dim(x), filepath = file.path(dir, "disk_counts_tenx.h5"), group = "matrix", level = 6)
    DelayedArray::BLOCK_write_to_sink(sink, x)
    close(sink)
  })
  say(sprintf("written in %.0f s; file %.2f GB, peak RSS %.0f MB", t$seconds,
              file.size(file.path(dir, "disk_counts_tenx.h5")) / 1e9, hwm()))
} else if (stage %in% c("train_disk", "train_disk_memory")) {
  # one epoch from the HDF5 file (block shuffle, counts never whole in memory),
  # then grouped distances; or the same block shuffle from the counts read into
  # memory (block by block), for the throughput ratio. ATLAS_DISK_FORMAT=tenx
  # reads the 10x layout written by stage data_tenx instead of the dense dataset.
  cells <- readRDS(file.path(dir, "disk_cells.rds"))
  x <- if (Sys.getenv("ATLAS_DISK_FORMAT") == "tenx") {
    TENxMatrix(file.path(dir, "disk_counts_tenx.h5"), "matrix")
  } else {
    HDF5Array(file.path(dir, "disk_counts.h5"), "counts")
  }
  block_cells <- mrvi:::disk_block_cells(x)
  if (stage == "train_disk_memory") {
    starts <- seq(1L, ncol(x), by = block_cells)
    x <- mrvi:::read_cells(mrvi:::disk_source(x), starts, pmin(ncol(x), starts + block_cells - 1L))
  }
  # ATLAS_THREADS: libtorch threads (default: mrvi()'s, the idle cores, less one
  # for the reader when it forks); ATLAS_PREFETCH=false reads every buffer in
  # the R process
  threads <- Sys.getenv("ATLAS_THREADS")
  options(mrvi.threads = if (nzchar(threads)) as.integer(threads),
          mrvi.disk_prefetch = Sys.getenv("ATLAS_PREFETCH", "true") == "true")
  r <- timed(mrvi(x, sample = cells$sample, batch = cells$site, labels = cells$group, max_epochs = 1,
                  verbose = FALSE, block_cells = block_cells))
  h <- r$value@history
  say(sprintf(paste("input %s, %d cells, blocks of %d cells, %d threads, prefetch %s: mrvi() %.0f s; the epoch %.0f s (%.0f cells/s;",
                    "reading and minibatches %.0f s, forward %.0f s, backward %.0f s, optimiser %.0f s); peak RSS %.0f MB"),
              class(x)[1], ncol(x), block_cells, r$value@config$n_threads, getOption("mrvi.disk_prefetch"), r$seconds, h$seconds, h$cells_per_second, h$seconds_batches,
              h$seconds_forward, h$seconds_backward, h$seconds_optimizer, hwm()))
  if (stage == "train_disk") {
    d <- timed(sampleDistances(r$value, groups = "labels", mc_samples = 0, max_cells = 500))
    say(sprintf("grouped distances (20 groups, 500 cells each, 200 samples): %.0f s; peak RSS %.0f MB",
                d$seconds, hwm()))
  }
} else if (stage %in% c("distances", "distances_1m")) {
  if (stage == "distances") {
    fit <- readRDS(file.path(dir, "train_memory_fit.rds"))
    # the first ATLAS_DIST_CELLS cells (others NA: in no group), to stay within minutes
    groups <- fit@cell_data$labels
    groups[-seq_len(as.integer(Sys.getenv("ATLAS_DIST_CELLS", 10000)))] <- NA
    max_cells <- Inf
  } else {
    # the issue's size: 1,000,000 cells x 1,000 samples x 20 groups, a fit whose
    # posterior of u is drawn at random (ATLAS_DA_CELLS, ATLAS_DA_SAMPLES); every
    # group's mean over ATLAS_DIST_MAX_CELLS of its cells (all of them would be
    # 5e11 pair distances, ~55 core-hours: see the capacity model in bench/README.md)
    source("bench/helpers.R")  # synthetic_fit()
    set.seed(1)
    n <- as.integer(Sys.getenv("ATLAS_DA_CELLS", 1e6))
    fit <- synthetic_fit(n, as.integer(Sys.getenv("ATLAS_DA_SAMPLES", 1000)), sd = function(k) exp(rnorm(k, -1, 0.2)),
                         n_threads = 1)
    groups <- factor(sprintf("type%02d", sample.int(20, n, replace = TRUE)))
    max_cells <- as.numeric(Sys.getenv("ATLAS_DIST_MAX_CELLS", 100))
  }
  options(mrvi.threads = 2)
  say(sprintf("CPU %s; %d cells x %d samples x %d groups, at most %s cells per group; fit ready, peak RSS %.0f MB",
              trimws(sub(".*:", "", grep("model name", readLines("/proc/cpuinfo"), value = TRUE)[1])),
              nrow(fit@u_mean), length(fit@samples), nlevels(factor(groups)), format(max_cells), hwm()))
  distances <- function(BPPARAM) sampleDistances(fit, groups = groups, mc_samples = 0, max_cells = max_cells, BPPARAM = BPPARAM)
  # the peak RSS of every other R process (the workers) while `expr` runs, from ps
  worker_peaks <- function(expr) {
    log <- tempfile()
    system(sprintf("while kill -0 %d 2>/dev/null; do ps -C R -o pid=,rss= >> %s; sleep 0.5; done", Sys.getpid(), log),
           wait = FALSE)
    value <- force(expr)
    Sys.sleep(1)
    rows <- utils::read.table(log, col.names = c("pid", "rss"))
    rows <- rows[rows$pid != Sys.getpid(), ]
    list(value = value, peaks = round(tapply(rows$rss, rows$pid, max) / 1024))
  }
  serial <- timed(distances(SerialParam()))
  say(sprintf("SerialParam: %.1f s, peak RSS %.0f MB", serial$seconds, hwm()))
  s <- worker_peaks(timed(distances(SnowParam(2))))
  say(sprintf("SnowParam(2): %.1f s, identical to serial: %s, worker peak RSS %s MB", s$value$seconds,
              identical(s$value$value, serial$value), paste(s$peaks, collapse = " / ")))
  bt <- BatchtoolsParam(2, cluster = "socket", registryargs = batchtoolsRegistryargs(file.dir = tempfile("reg")))
  b <- worker_peaks(timed(distances(bt)))
  say(sprintf("BatchtoolsParam(2, socket): %.1f s, identical to serial: %s, worker peak RSS %s MB", b$value$seconds,
              identical(b$value$value, serial$value), paste(b$peaks, collapse = " / ")))
} else if (stage == "abundance_1m") {
  # the issue's size: 1,000,000 cells x 1,000 samples (ATLAS_DA_CELLS, ATLAS_DA_SAMPLES).
  # The kernel's cost does not depend on the values of u (no branch on them), so a
  # fit whose posterior of u is drawn at random times it as well as a trained one.
  source("bench/helpers.R")  # synthetic_fit()
  set.seed(1)
  n <- as.integer(Sys.getenv("ATLAS_DA_CELLS", 1e6))
  S <- as.integer(Sys.getenv("ATLAS_DA_SAMPLES", 1000))
  fit <- synthetic_fit(n, S, sd = function(k) exp(rnorm(k, -1, 0.2)), n_threads = 1)
  options(mrvi.threads = 2)
  grp <- stats::setNames(rep(c("a", "b"), length.out = S), fit@samples)
  say(sprintf("CPU %s; fit ready, peak RSS %.0f MB", trimws(sub(".*:", "", grep("model name", readLines("/proc/cpuinfo"), value = TRUE)[1])), hwm()))
  for (m in as.integer(strsplit(Sys.getenv("ATLAS_DA_REFERENCE", "100,5000"), ",")[[1]])) {
    r <- timed(differentialAbundance(fit, grp, max_cells_per_sample = m))
    pairs <- as.numeric(n) * min(m, n / S) * S
    say(sprintf("differentialAbundance, %d cells x %d samples, max_cells_per_sample = %d (%.2g cell pairs): %.1f s (%.0f M pairs/s), peak RSS %.0f MB",
                n, S, m, pairs, r$seconds, pairs / r$seconds / 1e6, hwm()))
  }
} else if (stage == "abundance") {
  fit <- readRDS(file.path(dir, "train_memory_fit.rds"))
  options(mrvi.threads = 2)
  grp <- stats::setNames(rep(c("a", "b"), length.out = length(fit@samples)), fit@samples)
  r <- timed(differentialAbundance(fit, grp, max_cells_per_sample = 100))
  say(sprintf("differentialAbundance over %d cells x %d samples (100 reference cells per sample): %.1f s, peak RSS %.0f MB",
              nrow(fit@u_mean), length(fit@samples), r$seconds, hwm()))
}
