# End-to-end time to result (issue 15 item 4): a default mrvi() fit, grouped sample
# distances, guided tests and differential expression on 100,000 cells x 2,000 genes
# x 64 samples.
#   R_LIBS=$PWD/.Rlib Rscript bench/end_to_end.R [N_CELLS [THREADS]]   (quiet machine only)
# N_CELLS: default MRVI_BENCH_CELLS or 100000 (e.g. 2000 for a smoke test); THREADS:
# libtorch threads (default: the package's own choice, as a user gets it).
# Data: simulateNested(N_CELLS, 2000, n_samples = 64, n_sites = 2, n_cell_types = 5,
# n_affected = 2, genes_per_edge = 10, expression = "skewed", library_size = 3000)
# (~40% non-zero, as real data), written once to MRVI_BENCH_DATA (default a temporary
# folder); the sample covariate `clade` is the root split of the first affected cell
# type's true sample tree. Stages, each in its own R process so that its peak RSS
# (VmHWM) is its own; seconds exclude loading the inputs (RSS before = after loading);
# CPU seconds (user + system, all threads) help read a run on a busy machine:
#   fit           mrvi(sce, sample = "sample", batch = "site", labels = "cell_type")
#   distances     sampleDistances(fit, groups = "cell_type")
#   association   cellAssociation(fit, "clade")
#   de            differentialExpression(fit, "clade")
# Appends one row per stage (and the total) to bench/results/end_to_end.csv.
source("bench/helpers.R")
args <- commandArgs(trailingOnly = TRUE)
n_cells <- as.integer(if (length(args) > 0) args[1] else Sys.getenv("MRVI_BENCH_CELLS", "100000"))
threads <- if (length(args) > 1) as.integer(args[2]) else NA_integer_
lib <- Sys.getenv("R_LIBS", file.path(getwd(), ".Rlib"))
data_dir <- Sys.getenv("MRVI_BENCH_DATA", file.path(tempdir(), "mrvi-bench"))
dir.create(data_dir, showWarnings = FALSE, recursive = TRUE)
dir.create("bench/results", showWarnings = FALSE, recursive = TRUE)
data <- file.path(data_dir, sprintf("end_to_end_%d.rds", n_cells))
fit_file <- file.path(data_dir, sprintf("end_to_end_fit_%d.rds", n_cells))
set_threads <- if (is.na(threads)) "" else sprintf("options(mrvi.threads = %dL)", threads)

cpu <- cpu_info()
cat("CPU:", cpu$model, "|", cpu$cores, "cores | vector extensions:", cpu$extensions, "| threads:",
    if (is.na(threads)) "package default" else threads, "\n")

if (!file.exists(data)) {
  sim <- run_measurement(sprintf('
    m <- measure({
      sce <- simulateNested(%d, 2000, n_samples = 64, n_sites = 2, n_cell_types = 5, n_affected = 2,
                            genes_per_edge = 10, expression = "skewed", library_size = 3000)
      truth <- S4Vectors::metadata(sce)$truth
      clade <- stats::cutree(stats::hclust(stats::as.dist(truth$distances[[truth$affected[1]]]), "average"), 2)
      sce$clade <- factor(paste0("clade", clade[as.character(sce$sample)]))
      counts <- SummarizedExperiment::assay(sce, "counts")
      saveRDS(sce, "%s", compress = FALSE)
    })
    result(seconds = round(m$seconds, 1), peak_rss_mb = round(m$peak),
           nonzero_pct = round(100 * length(counts@x) / prod(dim(counts)), 1))', n_cells, data), lib)
  cat(sprintf("simulated %d cells x 2,000 genes (%s%% non-zero) in %s s, peak RSS %s MB (not part of the total)\n",
              n_cells, sim$nonzero_pct, sim$seconds, sim$peak_rss_mb))
}

# One stage in its own process: `setup` loads its inputs, `code` is measured, `after`
# runs after the measurement; `detail` (R code using `value`) summarises the result.
stage <- function(name, setup, code, detail, after = "") {
  r <- run_measurement(c(set_threads, setup, sprintf('
    cpu0 <- sum(proc.time()[c("user.self", "sys.self")])
    m <- measure({%s})
    cpu_s <- sum(proc.time()[c("user.self", "sys.self")]) - cpu0
    value <- m$value
    %s
    result(seconds = round(m$seconds, 2), cpu_s = round(cpu_s, 2), peak_rss_mb = round(m$peak), rss_before_mb = round(m$before),
           detail = gsub(" ", "_", %s))', code, after, detail)), lib)
  cat(sprintf("%-12s %9s s (CPU %s s)  peak RSS %6s MB (before %s MB)  %s\n", name, r$seconds, r$cpu_s,
              r$peak_rss_mb, r$rss_before_mb, r$detail))
  data.frame(stage = name, seconds = as.numeric(r$seconds), cpu_s = as.numeric(r$cpu_s),
             peak_rss_mb = as.numeric(r$peak_rss_mb),
             rss_before_mb = as.numeric(r$rss_before_mb), threads = as.integer(r$threads), detail = r$detail)
}

load_fit <- sprintf('fit <- readRDS("%s")', fit_file)
# share of cells with q < 0.05 in the affected types (simulateNested's first n_affected)
# and in the others: a check that the stage found the planted structure, not a timing
found <- 'sprintf("q<0.05: %.2f affected, %.2f other", mean(q[aff] < 0.05, na.rm = TRUE), mean(q[!aff] < 0.05, na.rm = TRUE))'
aff <- 'aff <- fit@cell_data$labels[match(cells, rownames(fit@cell_data))] %in% c("type1", "type2")'
res <- rbind(
  stage("fit", sprintf('sce <- readRDS("%s")', data),
        'mrvi(sce, sample = "sample", batch = "site", labels = "cell_type", verbose = FALSE)',
        'sprintf("%d epochs", nrow(value@history))', sprintf('saveRDS(value, "%s")', fit_file)),
  stage("distances", load_fit, 'sampleDistances(fit, groups = "cell_type")',
        'sprintf("%s groups, %d samples", dim(value)[3], dim(value)[1])'),
  stage("association", load_fit, 'cellAssociation(fit, "clade")',
        paste0('{cells <- rownames(value); q <- value$q_value; ', aff, '; ', found, '}')),
  stage("de", load_fit, 'differentialExpression(fit, "clade")',
        paste0('{cells <- value$cell; q <- value$q_value; ', aff, '; ', found, '}'))
)
res <- rbind(res, data.frame(stage = "total", seconds = sum(res$seconds), cpu_s = sum(res$cpu_s),
                             peak_rss_mb = max(res$peak_rss_mb),
                             rss_before_mb = NA, threads = res$threads[1], detail = ""))
res <- cbind(date = format(Sys.time(), "%Y-%m-%d %H:%M"),
             commit = system2("git", c("rev-parse", "--short", "HEAD"), stdout = TRUE),
             cells = n_cells, genes = 2000L, samples = 64L, res, cpu = cpu$model,
             vector_extensions = cpu$extensions, omp_wait_policy = Sys.getenv("OMP_WAIT_POLICY", "unset"))
out <- "bench/results/end_to_end.csv"
write.table(res, out, sep = ",", row.names = FALSE, col.names = !file.exists(out), append = file.exists(out))
cat("appended to", out, "\n")
