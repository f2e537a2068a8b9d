# Training throughput and peak memory of mrvi() (issue: the model trains fast).
#   Rscript bench/train_throughput.R            (from the repository root, after tools/install.sh)
# Data: bench/make_data.R (synthetic negative-binomial counts, 32 samples in 2 sites).
# Each configuration trains in its own R process (peak RSS is that process's VmHWM,
# R and the loaded data included). Cells/s = training cells per second of an epoch
# (validation included), averaged over the epochs after the first.
# Baselines measured in the same run:
#   * autograd likelihood: options(mrvi.fused_likelihood = FALSE) (the negative binomial differentiated by
#     libtorch's autograd instead of the fused CPU kernel);
#   * R's BLAS: MRVI_NO_DEEPBIND=1 (libtorch's matrix products bound to R's
#     reference BLAS, which is what a plain load of libtorch into R gives).
lib <- Sys.getenv("R_LIBS", file.path(getwd(), ".Rlib"))
data_dir <- Sys.getenv("MRVI_BENCH_DATA", file.path(tempdir(), "mrvi-bench"))
dir.create(data_dir, showWarnings = FALSE, recursive = TRUE)
dir.create("bench/results", showWarnings = FALSE, recursive = TRUE)
rscript <- file.path(R.home("bin"), "Rscript")

make <- function(n) {
  f <- file.path(data_dir, sprintf("d%dk.rds", n / 1000))
  if (!file.exists(f)) {
    system2(rscript, c("bench/make_data.R", n, 2000, 32, 2, f), env = paste0("R_LIBS=", lib))
  }
  f
}

run <- function(label, data, epochs, env = character(), flavour = "linear", fused = TRUE) {
  out <- system2(rscript, c("bench/train_one.R", data, epochs, flavour, fused), stdout = TRUE, stderr = TRUE,
                 env = c(paste0("R_LIBS=", lib), env))
  line <- grep("^RESULT", out, value = TRUE)
  if (!length(line)) stop(paste(out, collapse = "\n"))
  kv <- strsplit(sub("^RESULT ", "", line), " ")[[1]]
  vals <- setNames(sub(".*=", "", kv), sub("=.*", "", kv))
  cat(label, ":", line, "\n", grep("^PROFILE", out, value = TRUE), "\n")
  data.frame(config = label, cells = as.integer(vals[["cells"]]), genes = as.integer(vals[["genes"]]),
             epochs = as.integer(vals[["epochs"]]), cells_per_s = as.numeric(vals[["cells_per_s"]]),
             epoch_s = as.numeric(vals[["epoch_s"]]), peak_rss_mb = as.numeric(vals[["peak_rss_mb"]]),
             threads = as.integer(vals[["threads"]]))
}

d20 <- make(20000)
d100 <- make(100000)
res <- rbind(
  run("mrvi (fused likelihood, own BLAS)", d20, 4),
  run("baseline: autograd likelihood", d20, 4, fused = FALSE),
  run("baseline: R's reference BLAS", d20, 4, "MRVI_NO_DEEPBIND=1"),
  run("mrvi, attention flavour", d20, 4, flavour = "attention"),
  run("mrvi at 100k cells", d100, 3)
)
res$ratio_to_mrvi <- round(res$cells_per_s / res$cells_per_s[1], 2)
print(res, row.names = FALSE)
write.csv(res, "bench/results/train_throughput.csv", row.names = FALSE)
