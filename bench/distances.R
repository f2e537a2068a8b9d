# Streamed sample distances at scale (issue: distances per cell group, streamed).
#   Rscript bench/distances.R [N_CELLS N_SAMPLES N_GROUPS MC_SAMPLES] ...
# Without arguments: 100k cells x 200 samples x 10 groups, then 1M x 1,000 x 20
# (posterior means, mc_samples = 0). The routine needs only u (posterior mean and
# sd per cell) and the sample-effect parameters, so the fit is synthetic: a model
# with S samples trained for one epoch on small data, whose cells are then
# replaced by N cells with u ~ N(0, I). Each configuration runs in its own process;
# peak RSS is that process's VmHWM. Baseline in the same run: the same group means
# from libtorch tensor operations (cdist + index_add, as on a GPU), at the first size.
args <- commandArgs(trailingOnly = TRUE)
lib <- Sys.getenv("R_LIBS", file.path(getwd(), ".Rlib"))
rscript <- file.path(R.home("bin"), "Rscript")

one <- function(n, S, G, mc, tensor = FALSE) {
  code <- sprintf('
    suppressMessages(library(mrvi))
    vm <- function() as.numeric(gsub("[^0-9]", "", grep("^VmHWM", readLines("/proc/self/status"), value = TRUE))) / 1024
    set.seed(1)
    n_small <- %d * 5
    counts <- Matrix::rsparsematrix(50, n_small, 0.3, rand.x = function(k) rpois(k, 3) + 1)
    dimnames(counts) <- list(paste0("g", 1:50), paste0("c", seq_len(n_small)))
    fit <- mrvi(counts, sample = rep(sprintf("s%%04d", 1:%d), 5), max_epochs = 1, verbose = FALSE)
    L <- ncol(fit@u_mean)
    cells <- sprintf("cell%%07d", seq_len(%d))
    fit@u_mean <- matrix(rnorm(%d * L), %d, L, dimnames = list(cells, paste0("u", 1:L)))
    fit@u_sd <- matrix(0.1, %d, L, dimnames = list(cells, paste0("u", 1:L)))
    fit@cell_data <- data.frame(sample = factor(sample(fit@samples, %d, replace = TRUE), levels = fit@samples),
                                group = factor(sprintf("g%%02d", sample.int(%d, %d, replace = TRUE))),
                                row.names = cells)
    before <- vm()
    t0 <- proc.time()[["elapsed"]]
    d <- if (%s) {
      own <- as.integer(fit@cell_data$sample) - 1L
      res <- mrvi:::mrvi_group_tensor_distances(mrvi:::native_model(fit), fit@u_mean, fit@u_sd, %d, own,
                                                as.integer(fit@cell_data$group) - 1L, %d, 1024L)
      res
    } else sampleDistances(fit, groups = "group", mc_samples = %d)
    secs <- proc.time()[["elapsed"]] - t0
    cat(sprintf("RESULT cells=%%d samples=%%d groups=%%d mc=%%d tensor=%%s seconds=%%.1f cells_per_s=%%.0f peak_rss_mb=%%.0f rss_before_mb=%%.0f threads=%%d\\n",
                %d, %d, %d, %d, %s, secs, %d / secs, vm(), before, mrviBackend()$threads))
  ', S, S, n, n, n, n, n, G, n, if (tensor) "TRUE" else "FALSE", n, G, mc, n, S, G, mc,
     if (tensor) "TRUE" else "FALSE", n)
  f <- tempfile(fileext = ".R")
  writeLines(code, f)
  out <- system2(rscript, f, stdout = TRUE, stderr = TRUE, env = paste0("R_LIBS=", lib))
  line <- grep("^RESULT", out, value = TRUE)
  if (!length(line)) stop(paste(out, collapse = "\n"))
  cat(line, "\n")
  kv <- strsplit(sub("^RESULT ", "", line), " ")[[1]]
  as.data.frame(as.list(setNames(sub(".*=", "", kv), sub("=.*", "", kv))))
}

configs <- if (length(args) >= 4) list(as.numeric(args[1:4])) else
  list(c(1e5, 200, 10, 0), c(1e6, 1000, 20, 0))
res <- do.call(rbind, lapply(configs, function(x) one(x[1], x[2], x[3], x[4])))
if (length(args) < 4) res <- rbind(res, one(1e5, 200, 10, 0, tensor = TRUE))
dir.create("bench/results", showWarnings = FALSE, recursive = TRUE)
print(res)
if (length(args) < 4) write.csv(res, "bench/results/distances.csv", row.names = FALSE)
