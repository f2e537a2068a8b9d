# Training speed of this package against scvi-tools' MRVI on the same data, CPU and
# thread count, in one run (issues 14 and 15):
#   R_LIBS=$PWD/.Rlib Rscript bench/vs_scvi_tools.R [N_CELLS [EPOCHS [THREADS]]]   (quiet machine only)
# Data: train_throughput.R's realistic set (realistic_data() in bench/helpers.R, ~40%
# non-zero), written once to MRVI_BENCH_DATA (default a temporary folder) and exported
# for Python. Runs, each in its own process with THREADS threads (default 1):
# mrvi's attention flavour (scvi-tools' model) and linear flavour (bench/train_one.R),
# then scvi-tools' MRVI with its JAX and its torch backend (bench/scvi_tools_train.py),
# EPOCHS epochs each (default 5), early stopping off (mrvi still validates after every
# epoch; scvi-tools then does not, so it runs twice: as it is, and validating after
# every epoch like mrvi, rows "...-validating"), each implementation's default
# batch size (SCVI_BATCH_SIZE sets scvi-tools'; mrvi's is 256). cells/s: training cells per second of an epoch, validation included,
# after the first epoch. scvi-tools runs from its own virtual environment,
# SCVI_VENV (default bench/.venv-scvi), made by bench/scvi_env.sh when missing; it is
# never a dependency of the package. Appends rows to bench/results/vs_scvi_tools.csv
# with the CPU model.
source("bench/helpers.R")
args <- commandArgs(trailingOnly = TRUE)
n_cells <- as.integer(if (length(args) > 0) args[1] else 20000)
epochs <- as.integer(if (length(args) > 1) args[2] else 5)
threads <- as.integer(if (length(args) > 2) args[3] else 1)
venv <- Sys.getenv("SCVI_VENV", "bench/.venv-scvi")
data_dir <- Sys.getenv("MRVI_BENCH_DATA", file.path(tempdir(), "mrvi-bench"))
dir.create(data_dir, showWarnings = FALSE, recursive = TRUE)
lib <- Sys.getenv("R_LIBS", file.path(getwd(), ".Rlib"))
cpu <- cpu_info()
cat("CPU:", cpu$model, "|", cpu$cores, "cores | vector extensions:", cpu$extensions, "| threads:", threads, "\n")

if (!file.exists(file.path(venv, "bin", "python"))) {
  status <- system2("bash", c("bench/scvi_env.sh", venv))
  if (status != 0) stop("bench/scvi_env.sh could not make the scvi-tools environment in ", venv)
}

data <- realistic_data(n_cells, data_dir, lib)
export <- file.path(data_dir, sprintf("realistic_%d_export", n_cells))
if (!dir.exists(export)) {
  d <- readRDS(data)
  export_for_python(d$counts, data.frame(sample = d$sample, site = d$site), export)
}

env <- c(paste0("R_LIBS=", lib), paste0("MRVI_BENCH_THREADS=", threads), "OMP_NUM_THREADS=1")
runs <- list()
for (flavour in c("attention", "linear")) {
  out <- system2(file.path(R.home("bin"), "Rscript"), c("bench/train_one.R", data, epochs, flavour),
                 stdout = TRUE, stderr = TRUE, env = env)
  r <- read_result(out)
  runs[[length(runs) + 1]] <- data.frame(implementation = paste0("mrvi-", flavour), cells_per_s = as.numeric(r$cells_per_s),
                                         epoch_s = as.numeric(r$epoch_s), wall_s = as.numeric(r$wall_s))
  cat(sprintf("mrvi %-9s %7.0f cells/s (%.2f s per epoch)\n", flavour, as.numeric(r$cells_per_s), as.numeric(r$epoch_s)))
}
# scvi-tools twice per backend: as it trains with early stopping off (no validation),
# and validating after every epoch as mrvi does (its rows end in "-validating")
for (backend in c("jax", "torch")) for (validate in c(FALSE, TRUE)) {
  out <- suppressWarnings(system2(file.path(venv, "bin", "python"),
                                  c("bench/scvi_tools_train.py", export, backend, epochs, threads),
                                  stdout = TRUE, stderr = TRUE,
                                  env = c(paste0("MRVI_BATCH_SIZE=", Sys.getenv("SCVI_BATCH_SIZE")),
                                          paste0("MRVI_VALIDATE=", as.integer(validate)))))
  line <- grep("^RESULT", out, value = TRUE)
  if (!length(line)) {
    cat("scvi-tools", backend, "failed:\n", utils::tail(out, 15), sep = "\n")
    next
  }
  r <- read_result(line)
  # a batch size other than scvi-tools' default is part of the row's name
  if (nzchar(Sys.getenv("SCVI_BATCH_SIZE"))) r$implementation <- paste0(r$implementation, "-batch", Sys.getenv("SCVI_BATCH_SIZE"))
  runs[[length(runs) + 1]] <- data.frame(implementation = r$implementation, cells_per_s = as.numeric(r$cells_per_s),
                                         epoch_s = as.numeric(r$epoch_s), wall_s = as.numeric(r$wall_s))
  cat(sprintf("%-24s %7.0f cells/s (%.2f s per epoch)\n", r$implementation, as.numeric(r$cells_per_s), as.numeric(r$epoch_s)))
}
res <- do.call(rbind, runs)
attention <- res$cells_per_s[res$implementation == "mrvi-attention"]
scvi_rows <- grepl("^scvi-tools", res$implementation)
for (k in which(scvi_rows)) {
  cat(sprintf("mrvi attention / %s: %.1fx\n", res$implementation[k], attention / res$cells_per_s[k]))
}
res <- cbind(date = format(Sys.Date()), cells = n_cells, genes = 2000, epochs = epochs, threads = threads, res,
             ratio_attention_to_this = attention / res$cells_per_s, cpu = cpu$model, vector_extensions = cpu$extensions)
out_file <- "bench/results/vs_scvi_tools.csv"
utils::write.table(res, out_file, sep = ",", row.names = FALSE, append = file.exists(out_file),
                   col.names = !file.exists(out_file))
