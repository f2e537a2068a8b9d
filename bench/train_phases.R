# Where a training epoch's time goes, per configuration: assembling minibatches, the
# forward pass with the likelihood, the backward pass, the optimiser step, and the rest
# (validation, bookkeeping), each the mean over the epochs after the first.
#   Rscript bench/train_phases.R DATA.rds DEVICE THREADS EPOCHS CONFIG...
# DATA.rds from bench/make_data.R; DEVICE "cpu" or "cuda"; CONFIG: FLAVOUR or
# FLAVOUR:BATCH_SIZE. On a GPU, kernels run asynchronously and each phase's time lands
# wherever the host next waits for the device; set CUDA_LAUNCH_BLOCKING=1 to charge
# every kernel to the phase that launched it (slower overall, but placed).
args <- commandArgs(trailingOnly = TRUE)
suppressMessages(library(mrvi))
d <- readRDS(args[1])
device <- args[2]
threads <- as.integer(args[3])
epochs <- as.integer(args[4])
cpu <- sub("^Model name: *", "", grep("^Model name", system("lscpu", intern = TRUE), value = TRUE)[1])
cat(sprintf("%d cells x %d genes on %s, %d threads (%s); CUDA_LAUNCH_BLOCKING=%s\n", ncol(d$counts), nrow(d$counts),
            device, threads, cpu, Sys.getenv("CUDA_LAUNCH_BLOCKING", "0")))
for (config in args[-(1:4)]) {
  flavour <- sub(":.*", "", config)
  batch_size <- if (grepl(":", config)) as.integer(sub(".*:", "", config)) else 256L
  fit <- mrvi(d$counts, sample = d$sample, batch = d$site, max_epochs = epochs, flavour = flavour,
              batch_size = batch_size, early_stopping = FALSE, n_epochs_kl_warmup = 1, device = device,
              n_threads = threads, verbose = FALSE)
  h <- fit@history
  h <- if (nrow(h) > 1) h[-1, , drop = FALSE] else h
  phases <- colMeans(h[, c("seconds", "seconds_batches", "seconds_forward", "seconds_backward", "seconds_optimizer")])
  steps <- ceiling(0.9 * ncol(d$counts) / batch_size)
  cat(sprintf("%-10s batch %5d: %6.0f cells/s, %.2f s/epoch = batches %.2f + forward %.2f + backward %.2f + optimiser %.2f + rest %.2f; %.1f ms/step\n",
              flavour, batch_size, mean(h$cells_per_second), phases[1], phases[2], phases[3], phases[4], phases[5],
              phases[1] - sum(phases[2:5]), 1000 * sum(phases[2:5]) / steps))
}
