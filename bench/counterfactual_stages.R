# The counterfactual stages of bench/end_to_end.R on a saved fit, two builds alternating:
#   Rscript bench/counterfactual_stages.R FIT.rds LIB_A LIB_B [ROUNDS]   (quiet machine only)
# FIT.rds: a fit with `cell_type` labels and a sample covariate `clade` (end_to_end.R
# saves one as end_to_end_fit_<N>.rds in MRVI_BENCH_DATA). LIB_A, LIB_B: R libraries
# holding the two builds (each with the package's dependencies on R_LIBS after it).
# Each stage of each build runs in its own process, ROUNDS (default 2) times, builds
# alternating; printed: seconds per run, and whether the two builds' results are
# identical() and, if not, the largest relative difference of their numeric columns.
source("bench/helpers.R")
args <- commandArgs(trailingOnly = TRUE)
if (length(args) < 3) stop("usage: Rscript bench/counterfactual_stages.R FIT.rds LIB_A LIB_B [ROUNDS]")
fit_file <- normalizePath(args[1])
libs <- args[2:3]
rounds <- if (length(args) > 3) as.integer(args[4]) else 2L
deps <- Sys.getenv("R_LIBS", file.path(getwd(), ".Rlib"))
cpu <- cpu_info()
cat("CPU:", cpu$model, "|", cpu$cores, "cores | vector extensions:", cpu$extensions, "\n")

stages <- c(distances = 'sampleDistances(fit, groups = "cell_type")',
            association = 'cellAssociation(fit, "clade")',
            de = 'differentialExpression(fit, "clade")')
# a stage's result as named columns: an array of distances, or a DataFrame of tests
columns <- function(x) if (is.array(x)) list(distance = as.vector(x)) else suppressMessages(as.data.frame(x))
out_dir <- tempfile("stages")
dir.create(out_dir)
for (name in names(stages)) {
  for (round in seq_len(rounds)) {
    for (b in 1:2) {
      saved <- file.path(out_dir, sprintf("%s_%d.rds", name, b))
      r <- run_measurement(sprintf('
        fit <- readRDS("%s")
        m <- measure(%s)
        saveRDS(m$value, "%s")
        result(seconds = round(m$seconds, 2))', fit_file, stages[[name]], saved),
        lib = paste(libs[b], deps, sep = ":"))
      cat(sprintf("%-12s round %d  build %s  %7s s\n", name, round, c("A", "B")[b], r$seconds))
    }
  }
  a <- columns(readRDS(file.path(out_dir, sprintf("%s_1.rds", name))))
  b <- columns(readRDS(file.path(out_dir, sprintf("%s_2.rds", name))))
  numeric <- names(a)[vapply(a, is.numeric, TRUE)]
  worst <- vapply(numeric, function(k) {
    d <- abs(a[[k]] - b[[k]]) / pmax(abs(a[[k]]), 1e-300)
    if (all(is.na(d))) 0 else max(d, na.rm = TRUE)
  }, 0)
  cat(sprintf("%-12s identical: %s; largest relative difference %.2g (%s)\n", name, identical(a, b),
              max(worst), names(which.max(worst))))
}
