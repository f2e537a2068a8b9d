# One training run for bench/train_throughput.R and bench/threads_under_load.R, in its
# own process so that its peak resident memory is its own:
#   Rscript bench/train_one.R DATA.rds EPOCHS [FLAVOUR]
# DATA.rds: a list with `counts` (genes x cells dgCMatrix), `sample` and `site`.
# MRVI_BENCH_THREADS fixes the thread count (default: the package's, the idle cores).
# Uses only what every release since the fused likelihood has (mrvi(), fit@history,
# mrviBackend()), so that train_throughput.R can run it against an older build.
suppressMessages(library(mrvi))
if (nzchar(Sys.getenv("MRVI_BENCH_THREADS"))) options(mrvi.threads = as.integer(Sys.getenv("MRVI_BENCH_THREADS")))
args <- commandArgs(trailingOnly = TRUE)
source("bench/helpers.R")
d <- readRDS(args[1])
epochs <- as.integer(args[2])
flavour <- if (length(args) > 2) args[3] else "linear"
data_mb <- peak_rss_mb()
t0 <- proc.time()[["elapsed"]]
fit <- mrvi(d$counts, sample = d$sample, batch = d$site, max_epochs = epochs, flavour = flavour,
            early_stopping = FALSE, n_epochs_kl_warmup = 1, verbose = FALSE)
wall <- proc.time()[["elapsed"]] - t0
h <- fit@history[-1, , drop = FALSE]  # the first epoch is warm-up
b <- mrviBackend()
cat(sprintf(paste("RESULT cells=%d genes=%d samples=%d sites=%d nonzero_pct=%.1f epochs=%d cells_per_s=%.0f",
                  "epoch_s=%.2f wall_s=%.1f peak_rss_mb=%.0f rss_after_loading_data_mb=%.0f threads=%d deepbind=%s\n"),
            ncol(d$counts), nrow(d$counts), nlevels(d$sample), nlevels(d$site),
            100 * length(d$counts@x) / prod(dim(d$counts)), nrow(fit@history),
            mean(h$cells_per_second), mean(h$seconds), wall, peak_rss_mb(), data_mb,
            b$threads, b$deepbind))
cat(sprintf("PROFILE per epoch (s): batches %.3f forward+likelihood %.3f backward %.3f optimizer %.3f validation+rest %.3f\n",
            mean(h$seconds_batches), mean(h$seconds_forward), mean(h$seconds_backward),
            mean(h$seconds_optimizer),
            mean(h$seconds - h$seconds_batches - h$seconds_forward - h$seconds_backward - h$seconds_optimizer)))
