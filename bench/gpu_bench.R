# The measurements of bench/gpu.sh, one part per call (each in its own process, under
# the script's time limit for that step); each part appends its rows to the CSV:
#   Rscript bench/gpu_bench.R train        CSV DATA.rds DEVICE THREADS EPOCHS CONFIG...
#     (CONFIG: FLAVOUR or FLAVOUR:BATCH_SIZE, e.g. linear attention linear:2048)
#   Rscript bench/gpu_bench.R distances    CSV DEVICE THREADS N_CELLS N_SAMPLES N_GROUPS [EXTRAPOLATE_TO]
#   Rscript bench/gpu_bench.R association  CSV DEVICE THREADS N_CELLS N_SAMPLES FLAVOUR
# DEVICE is "cpu" or "cuda"; THREADS the libtorch CPU threads ("all": every core).
# Columns: part, config, device, threads, cells, genes, samples, groups, epochs,
# seconds, cells_per_s, peak_device_mb, extrapolated, status, note.
# peak_device_mb: the GPU's highest memory.used (nvidia-smi, every 100 ms) during the
# measured call, minus its value just before (so: what the call allocated on the
# device, libtorch's caching allocator included); NA on the CPU.
args <- commandArgs(trailingOnly = TRUE)
part <- args[1]
csv <- args[2]
suppressMessages(library(mrvi))
source("bench/helpers.R")

threads_arg <- function(x) if (identical(x, "all")) default_cores() else as.integer(x)
default_cores <- function() as.integer(parallel::detectCores(logical = TRUE))

columns <- c("part", "config", "device", "threads", "cells", "genes", "samples", "groups", "epochs",
             "seconds", "cells_per_s", "peak_device_mb", "extrapolated", "status", "note")
append_row <- function(...) {
  row <- list(...)
  row <- lapply(stats::setNames(columns, columns), function(k) if (is.null(row[[k]])) NA else row[[k]])
  row <- as.data.frame(row, stringsAsFactors = FALSE)
  new <- !file.exists(csv)
  utils::write.table(row, csv, sep = ",", row.names = FALSE, col.names = new, append = !new, qmethod = "double")
  cat("RESULT", paste0(names(row), "=", unlist(row)), "\n")
  flush.console()
}

# GPU memory in use (MB), or NA without nvidia-smi / on the CPU.
gpu_mem <- function() {
  out <- suppressWarnings(tryCatch(system2("nvidia-smi", c("--query-gpu=memory.used", "--format=csv,noheader,nounits"),
                                           stdout = TRUE, stderr = FALSE), error = function(e) NA))
  v <- suppressWarnings(as.numeric(out[1]))
  if (length(v) && !is.na(v)) v else NA_real_
}

# Evaluate `expr`; on "cuda", sample the GPU's memory every 100 ms meanwhile (a
# background nvidia-smi, ended by its process id) and report the peak above the start.
timed <- function(expr, device) {
  sampler <- NULL
  base <- NA_real_
  if (device != "cpu" && nzchar(Sys.which("nvidia-smi"))) {
    base <- gpu_mem()
    log <- tempfile(); pidf <- tempfile()
    system(sprintf("nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 > %s 2>/dev/null & echo $! > %s",
                   log, pidf))
    sampler <- list(log = log, pid = as.integer(readLines(pidf)))
  }
  t0 <- proc.time()[["elapsed"]]
  value <- force(expr)
  seconds <- proc.time()[["elapsed"]] - t0
  peak <- NA_real_
  if (!is.null(sampler)) {
    Sys.sleep(0.3)
    tools::pskill(sampler$pid)
    v <- suppressWarnings(as.numeric(readLines(sampler$log, warn = FALSE)))
    v <- c(v[!is.na(v)], gpu_mem())
    peak <- max(v, na.rm = TRUE) - base
  }
  list(value = value, seconds = seconds, peak = peak)
}

# A copy of `fit` whose native model is rebuilt on `device` (same weights).
on_device <- function(fit, device) {
  fit@config$device <- device
  fit@cache <- new.env()
  fit
}

if (part == "train") {
  # cells/s: training cells per second of an epoch (validation included), the mean
  # over the epochs after the first (the first holds CUDA's start-up and kernel
  # selection); with one epoch, that epoch.
  d <- readRDS(args[3])
  device <- args[4]
  threads <- threads_arg(args[5])
  epochs <- as.integer(args[6])
  density <- length(d$counts@x) / prod(dim(d$counts))
  for (config in args[-(1:6)]) {
    # FLAVOUR or FLAVOUR:BATCH_SIZE (default 256, the package's)
    flavour <- sub(":.*", "", config)
    batch_size <- if (grepl(":", config)) as.integer(sub(".*:", "", config)) else 256L
    res <- tryCatch({
      m <- timed(mrvi(d$counts, sample = d$sample, batch = d$site, max_epochs = epochs, flavour = flavour,
                      batch_size = batch_size, early_stopping = FALSE, n_epochs_kl_warmup = 1, device = device,
                      n_threads = threads, verbose = FALSE), device)
      h <- m$value@history
      hh <- if (nrow(h) > 1) h[-1, , drop = FALSE] else h
      append_row(part = "train", config = paste0(flavour, ", batch ", batch_size), device = m$value@config$device, threads = threads,
                 cells = ncol(d$counts), genes = nrow(d$counts), samples = nlevels(d$sample), epochs = nrow(h),
                 seconds = round(mean(hh$seconds), 2), cells_per_s = round(mean(hh$cells_per_second)),
                 peak_device_mb = m$peak, extrapolated = FALSE, status = "ok",
                 note = sprintf("%.1f%% non-zero; seconds = per epoch; first epoch %.1f s; wall %.1f s",
                                100 * density, h$seconds[1], m$seconds))
    }, error = function(e) {
      append_row(part = "train", config = config, device = device, threads = threads, cells = ncol(d$counts),
                 genes = nrow(d$counts), status = "error", note = gsub("[\r\n]+", " ", conditionMessage(e)))
    })
  }
} else if (part == "distances") {
  # Grouped distances D(C), posterior means (mc_samples = 0): on a CUDA model this is
  # the tensor path (cdist + index_add on the device); on the CPU, the Rust kernel.
  device <- args[3]
  threads <- threads_arg(args[4])
  n <- as.integer(args[5]); S <- as.integer(args[6]); G <- as.integer(args[7])
  target <- if (length(args) > 7) as.numeric(args[8]) else NA
  mrviSetThreads(threads)
  set.seed(1)
  fit <- on_device(synthetic_fit(n, S, device = "cpu"), device)
  fit@cell_data$group <- factor(sprintf("g%02d", sample.int(G, n, replace = TRUE)))
  block <- max(16L, min(1024L, as.integer(2^21 / (S * ncol(fit@u_mean)))))
  m <- timed(sampleDistances(fit, groups = "group", mc_samples = 0), device)
  note <- sprintf("posterior means; block %d cells; %s", block,
                  if (device == "cpu") "Rust CPU kernel" else "tensor path (cdist + index_add) on the device")
  append_row(part = "distances", config = "grouped, mc_samples = 0", device = device, threads = threads,
             cells = n, samples = S, groups = G, seconds = round(m$seconds, 2), cells_per_s = round(n / m$seconds),
             peak_device_mb = m$peak, extrapolated = FALSE, status = "ok", note = note)
  if (!is.na(target) && target != n) {
    append_row(part = "distances", config = "grouped, mc_samples = 0", device = device, threads = threads,
               cells = target, samples = S, groups = G, seconds = round(m$seconds * target / n, 1),
               cells_per_s = round(n / m$seconds), extrapolated = TRUE, status = "extrapolated",
               note = sprintf("EXTRAPOLATED linearly in cells from the measured %d cells (cost is cells x S^2)", n))
  }
} else if (part == "association") {
  # Per-cell guided tests, the default (normalised distances, 10 posterior draws).
  # They run on the host whatever the device: the linear flavour copies A_s, a_s to
  # the host once; the attention flavour evaluates its sample effect with libtorch
  # one cell at a time on the model's device.
  device <- args[3]
  threads <- threads_arg(args[4])
  n <- as.integer(args[5]); S <- as.integer(args[6]); flavour <- args[7]
  mrviSetThreads(threads)
  set.seed(1)
  fit <- on_device(synthetic_fit(n, S, flavour = flavour, device = "cpu"), device)
  y <- stats::setNames(rep(c("a", "b"), length.out = S), fit@samples)
  m <- timed(cellAssociation(fit, y), device)
  append_row(part = "association", config = paste0(flavour, ", normalised, 10 draws"), device = device,
             threads = threads, cells = n, samples = S, seconds = round(m$seconds, 2),
             cells_per_s = round(n / m$seconds), peak_device_mb = m$peak, extrapolated = FALSE, status = "ok",
             note = sprintf("%d pairs per cell; computed on the host (%s)", S * (S - 1) / 2,
                            if (flavour == "linear") "A_s, a_s copied once" else "sample effect per cell on the model's device"))
} else {
  stop("unknown part: ", part)
}
