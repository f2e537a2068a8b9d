# Atlas scale on this machine, scaled down (issue #16): an HDF5-backed input,
# one checkpointed epoch, grouped distances over SerialParam / SnowParam(2) /
# BatchtoolsParam (socket), differential abundance; each stage's time and peak
# memory. Run each stage in its own process under /usr/bin/time -v, e.g.
#   for s in data train_memory train_hdf5 distances abundance; do
#     /usr/bin/time -v R_LIBS=$PWD/.Rlib Rscript bench/atlas.R $s 2>&1 | grep -E "^(atlas|\s+Maximum resident)"
#   done
# ATLAS_CELLS (default 50,000), ATLAS_GENES (500), ATLAS_SAMPLES (200) set the size.
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
} else if (stage == "distances") {
  fit <- readRDS(file.path(dir, "train_memory_fit.rds"))
  options(mrvi.threads = 2)
  # the first ATLAS_DIST_CELLS cells (others NA: in no group), to stay within minutes
  groups <- fit@cell_data$labels
  groups[-seq_len(as.integer(Sys.getenv("ATLAS_DIST_CELLS", 10000)))] <- NA
  serial <- timed(sampleDistances(fit, groups = groups, mc_samples = 0))
  say(sprintf("SerialParam: %.1f s, peak RSS %.0f MB", serial$seconds, hwm()))
  snow <- SnowParam(2)
  bpstart(snow)
  s <- timed(sampleDistances(fit, groups = groups, mc_samples = 0, BPPARAM = snow))
  worker_hwm <- unlist(bplapply(1:2, function(i) {
    as.numeric(sub("\\D*(\\d+).*", "\\1", grep("VmHWM", readLines("/proc/self/status"), value = TRUE))) / 1024
  }, BPPARAM = snow))
  bpstop(snow)
  say(sprintf("SnowParam(2): %.1f s, identical to serial: %s, worker peak RSS %s MB", s$seconds,
              identical(s$value, serial$value), paste(round(worker_hwm), collapse = " / ")))
  bt <- BatchtoolsParam(2, cluster = "socket", registryargs = batchtoolsRegistryargs(file.dir = tempfile("reg")))
  b <- timed(sampleDistances(fit, groups = groups, mc_samples = 0, BPPARAM = bt))
  say(sprintf("BatchtoolsParam(2, socket): %.1f s, identical to serial: %s", b$seconds,
              identical(b$value, serial$value)))
} else if (stage == "abundance") {
  fit <- readRDS(file.path(dir, "train_memory_fit.rds"))
  options(mrvi.threads = 2)
  grp <- stats::setNames(rep(c("a", "b"), length.out = length(fit@samples)), fit@samples)
  r <- timed(differentialAbundance(fit, grp, max_cells_per_sample = 100))
  say(sprintf("differentialAbundance over %d cells x %d samples (100 reference cells per sample): %.1f s, peak RSS %.0f MB",
              nrow(fit@u_mean), length(fit@samples), r$seconds, hwm()))
}
