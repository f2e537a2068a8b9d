# Training speed beside another busy process (issue 15: a fit must never be more
# than 2x slower with another CPU-bound process running than alone).
#   R_LIBS=$PWD/.Rlib Rscript bench/threads_under_load.R      (quiet machine only)
# Data: bench/make_data.R (20,000 cells x 2,000 genes, 32 samples, 2 sites); each
# run trains 4 epochs of the linear flavour in its own process (bench/train_one.R).
# "busy" runs start one CPU-bound R process first (an endless loop) and stop it
# after. Compared in the same run: the package's default thread count (the idle
# cores, see ?mrviBackend), one thread, and all cores (the default before it),
# the last also with OpenMP's default (spinning) wait policy.
source("bench/helpers.R")
lib <- Sys.getenv("R_LIBS", file.path(getwd(), ".Rlib"))
rscript <- file.path(R.home("bin"), "Rscript")
data_dir <- Sys.getenv("MRVI_BENCH_DATA", file.path(tempdir(), "mrvi-bench"))
dir.create(data_dir, showWarnings = FALSE, recursive = TRUE)
data <- file.path(data_dir, "d20k.rds")
if (!file.exists(data)) system2(rscript, c("bench/make_data.R", 20000, 2000, 32, 2, data), env = paste0("R_LIBS=", lib))
cpu <- cpu_info()
cores <- cpu$cores
cat("CPU:", cpu$model, "|", cores, "cores |", cpu$extensions, "\n")

run <- function(label, busy, threads = "", wait = "PASSIVE") {
  if (busy) {
    burner <- parallel::mcparallel(repeat NULL)
    on.exit({
      tools::pskill(burner$pid)
      suppressWarnings(parallel::mccollect(burner))
    }, add = TRUE)
    Sys.sleep(1)
  }
  # env(1) so that the spinning case runs without OMP_WAIT_POLICY at all
  policy <- if (wait == "default") c("-u", "OMP_WAIT_POLICY") else paste0("OMP_WAIT_POLICY=", wait)
  out <- system2("env", c(policy, paste0("R_LIBS=", lib), paste0("MRVI_BENCH_THREADS=", threads),
                          rscript, "bench/train_one.R", data, 4, "linear"), stdout = TRUE, stderr = TRUE)
  v <- read_result(out)
  data.frame(config = label, busy_process = busy, wait_policy = wait,
             threads = as.integer(v$threads), cells_per_s = as.numeric(v$cells_per_s),
             epoch_s = as.numeric(v$epoch_s))
}

all <- as.character(cores)
res <- rbind(
  run("alone, default threads", FALSE),
  run("alone, 1 thread", FALSE, "1"),
  run("alone, all cores", FALSE, all),
  run("busy, default threads", TRUE),
  run("busy, all cores", TRUE, all),
  run("busy, all cores, default wait policy", TRUE, all, wait = "default")
)
res$slowdown_vs_alone_default <- round(res$cells_per_s[1] / res$cells_per_s, 2)
res$cpu <- cpu$model
res$vector_extensions <- cpu$extensions
print(res[, !names(res) %in% c("cpu", "vector_extensions")], row.names = FALSE)
dir.create("bench/results", showWarnings = FALSE)
write.csv(res, "bench/results/threads_under_load.csv", row.names = FALSE)
