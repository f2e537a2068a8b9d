# Helpers shared by the benchmark scripts (sourced from the repository root).

# Peak resident memory of this process so far (VmHWM), in MB.
peak_rss_mb <- function() {
  line <- grep("^VmHWM", readLines("/proc/self/status"), value = TRUE)
  as.numeric(gsub("[^0-9]", "", line)) / 1024
}

# One line "RESULT key=value ..." on stdout, with the number of threads, for
# run_measurement() to read back.
result <- function(...) {
  x <- list(...)
  x$threads <- mrvi::mrviBackend()$threads
  cat("RESULT", paste0(names(x), "=", unlist(x)), "\n")
}

# The RESULT line of a child process's output (system2(stdout = TRUE)) as a named
# list of strings; stops with the whole output when the child failed.
read_result <- function(out) {
  line <- grep("^RESULT", out, value = TRUE)
  if (!is.null(attr(out, "status")) || !length(line)) stop(paste(out, collapse = "\n"))
  kv <- strsplit(strsplit(sub("^RESULT ", "", trimws(line)), " ")[[1]], "=")
  stats::setNames(lapply(kv, `[`, 2), vapply(kv, `[`, "", 1))
}

# Run R code in its own Rscript process (so that its peak RSS is its own), with
# mrvi and these helpers loaded; returns its RESULT line as a named list.
run_measurement <- function(code, lib = Sys.getenv("R_LIBS", file.path(getwd(), ".Rlib"))) {
  f <- tempfile(fileext = ".R")
  on.exit(unlink(f))
  writeLines(c("suppressMessages(library(mrvi))", 'source("bench/helpers.R")', code), f)
  read_result(system2(file.path(R.home("bin"), "Rscript"), f, stdout = TRUE, stderr = TRUE,
                      env = paste0("R_LIBS=", lib)))
}

# The realistic training set of train_throughput.R and vs_scvi_tools.R:
# simulateNested(n_cells, 2000, n_samples = 32, n_sites = 2, genes_per_edge = 10,
# expression = "skewed", library_size = 3000) (~40% non-zero), saved once to
# data_dir as a list (counts, sample, site); returns the file.
realistic_data <- function(n_cells, data_dir, lib = Sys.getenv("R_LIBS", file.path(getwd(), ".Rlib"))) {
  f <- file.path(data_dir, sprintf("realistic_%d.rds", n_cells))
  if (file.exists(f)) return(f)
  run_measurement(sprintf('
    sce <- simulateNested(%d, 2000, n_samples = 32, n_sites = 2, genes_per_edge = 10,
                          expression = "skewed", library_size = 3000)
    saveRDS(list(counts = SummarizedExperiment::assay(sce, "counts"), sample = sce$sample, site = sce$site), "%s")
    result(done = 1)', n_cells, f), lib)
  f
}

# Counts (a genes x cells dgCMatrix) and a cell table written for bench/scvi_common.py
# (read_export()): the CSC slots as p.bin and i.bin (int32) and x.bin (float64),
# meta.json (n_genes, n_cells), obs.csv (the cell table, as strings).
export_for_python <- function(counts, obs, dir) {
  dir.create(dir, showWarnings = FALSE, recursive = TRUE)
  writeBin(counts@p, file.path(dir, "p.bin"))
  writeBin(counts@i, file.path(dir, "i.bin"))
  writeBin(counts@x, file.path(dir, "x.bin"))
  writeLines(sprintf('{"n_genes": %d, "n_cells": %d}', counts@Dim[1], counts@Dim[2]), file.path(dir, "meta.json"))
  utils::write.csv(data.frame(lapply(obs, as.character)), file.path(dir, "obs.csv"), row.names = FALSE)
  invisible(dir)
}

# scvi-tools' MRVI (bench/scvi_tools_distances.py, its defaults) on counts (genes x
# cells dgCMatrix) and a cell table with columns sample, group and optionally batch:
# its per-group sample distances (an S x S x groups array), training seconds and
# epochs. Python from SCVI_VENV (default bench/.venv-scvi, made by bench/scvi_env.sh)
# with SCVI_THREADS threads (default 1).
scvi_tools_group_distances <- function(counts, obs, seed) {
  dir <- export_for_python(counts, obs, tempfile("scvi-tools-"))
  on.exit(unlink(dir, recursive = TRUE))
  python <- file.path(Sys.getenv("SCVI_VENV", "bench/.venv-scvi"), "bin", "python")
  out <- suppressWarnings(system2(python, c("bench/scvi_tools_distances.py", dir, Sys.getenv("SCVI_THREADS", "1"), seed),
                                  stdout = TRUE, stderr = TRUE))
  r <- read_result(out)
  groups <- readLines(file.path(dir, "groups.txt"))
  mats <- lapply(seq_along(groups), function(k) as.matrix(utils::read.csv(file.path(dir, sprintf("distances_%d.csv", k)),
                                                                          row.names = 1, check.names = FALSE)))
  d <- simplify2array(mats)
  dimnames(d) <- list(rownames(mats[[1]]), colnames(mats[[1]]), groups)
  list(d = d, epochs = as.integer(r$epochs), seconds = as.numeric(r$seconds))
}

# The CPU the numbers come from: model name, cores, and which of the vector
# extensions that change libtorch's and the likelihood kernel's code paths it has.
cpu_info <- function() {
  info <- readLines("/proc/cpuinfo")
  field <- function(name) sub("^[^:]*: *", "", grep(paste0("^", name, "\\s*:"), info, value = TRUE)[1])
  flags <- strsplit(field("flags"), " ")[[1]]
  list(model = field("model name"), cores = parallel::detectCores(),
       extensions = paste(intersect(c("avx2", "avx512f"), flags), collapse = " "))
}

# A synthetic fit for benchmarks of the routines that need only u and the sample
# effects (distances, guided tests, abundance): a model with S samples trained for
# one epoch on small data, whose cells are then replaced by n cells with
# u ~ N(0, I), posterior sd from `sd(k)`, and random samples. Uses R's generator.
# `...` goes to mrvi() (e.g. `flavour = "attention"`, `device = "cpu"`).
synthetic_fit <- function(n, S, sd = function(k) rep(0.1, k), ...) {
  counts <- Matrix::rsparsematrix(50, S * 5, 0.3, rand.x = function(k) rpois(k, 3) + 1)
  dimnames(counts) <- list(paste0("g", 1:50), paste0("c", seq_len(S * 5)))
  fit <- mrvi(counts, sample = rep(sprintf("s%04d", seq_len(S)), 5), max_epochs = 1, verbose = FALSE, ...)
  L <- ncol(fit@u_mean)
  cells <- sprintf("cell%07d", seq_len(n))
  fit@u_mean <- matrix(rnorm(n * L), n, L, dimnames = list(cells, paste0("u", 1:L)))
  fit@u_sd <- matrix(sd(n * L), n, L, dimnames = list(cells, paste0("u", 1:L)))
  # every column of a fitted model's cell data (nuisance covariates included), at the new size
  fit@cell_data <- data.frame(lapply(fit@cell_data, function(col) col[rep_len(1L, n)]), row.names = cells)
  fit@cell_data$sample <- factor(sample(fit@samples, n, replace = TRUE), levels = fit@samples)
  fit
}

# Seconds and peak RSS (MB) of evaluating `expr`, with the RSS before it.
measure <- function(expr) {
  before <- peak_rss_mb()
  t0 <- proc.time()[["elapsed"]]
  value <- force(expr)
  list(value = value, seconds = proc.time()[["elapsed"]] - t0, peak = peak_rss_mb(), before = before)
}

# bench/validity.R's data (issue 14): the paper's Supplement B.2 at realistic scale,
# 2,000 genes, 32 samples in 2 sites, 5 cell types of which 2 carry a sample tree,
# 10 genes per edge (`design`: "equal" or "ultrametric" edge lengths).
validity_data <- function(n_cells, design, seed) {
  mrvi::simulateNested(n_cells, 2000, n_samples = 32, n_sites = 2, n_cell_types = 5, n_affected = 2,
                       genes_per_edge = 10, edge_lengths = design, expression = "skewed",
                       library_size = 3000, seed = seed)
}

off_diagonal <- function(m) m[upper.tri(m)]

# contrast, Spearman and RF of per-type distances d [S, S, types]
score_distances <- function(d, truth) {
  types <- dimnames(d)[[3]]
  mean_d <- vapply(types, function(t) mean(off_diagonal(d[, , t]), na.rm = TRUE), numeric(1))
  unaffected <- setdiff(types, truth$affected)
  per_type <- lapply(truth$affected, function(t) {
    truth_d <- truth$distances[[t]][dimnames(d)[[1]], dimnames(d)[[2]]]
    c(spearman = stats::cor(off_diagonal(d[, , t]), off_diagonal(truth_d), method = "spearman"),
      rf = mrvi::treeDistance(mrvi::sampleHclust(d, t), truth$phylo[[t]]))
  })
  names(per_type) <- truth$affected
  data.frame(contrast = mean(mean_d[truth$affected]) / mean(mean_d[unaffected]),
             spearman_type1 = per_type[[1]][["spearman"]], spearman_type2 = per_type[[2]][["spearman"]],
             rf_type1 = per_type[[1]][["rf"]], rf_type2 = per_type[[2]][["rf"]])
}
