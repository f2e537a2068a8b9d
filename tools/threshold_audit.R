# Do the test suite's statistical thresholds hold over several seeds, and with what
# margin? Results for a fixed seed differ between CPUs (AVX2 / AVX-512, AMD / Intel),
# so a threshold that holds for one seed on one machine can fail on another.
#
# Runs the test files that judge trained models once per seed shift
# (MRVI_TEST_SEED_SHIFT shifts the seed of every fit those thresholds judge, see
# fit_seed() in tests/testthat/helper-data.R), each in its own R process, and records
# the value and the threshold of every expect_gt/lt/gte/lte. Writes every record and
# a per-threshold summary (smallest relative margin over the shifts) to
# bench/results/threshold_audit*.csv and prints the thresholds with the least margin.
#
# Usage: R_LIBS=.Rlib Rscript tools/threshold_audit.R [shifts, default 0:4]
# (AUDIT_FILES=latent,fit runs only those test files)
# Set ATEN_CPU_CAPABILITY=avx2 (or avx512, default) to take libtorch's other kernels.
args <- commandArgs(TRUE)
shifts <- if (length(args)) eval(parse(text = args[1])) else 0:4
files <- c("abundance", "add-samples", "association", "attention", "covariates", "differential-expression", "distances",
           "fit", "latent", "tree-support", "validity")
if (nzchar(Sys.getenv("AUDIT_FILES"))) files <- strsplit(Sys.getenv("AUDIT_FILES"), ",")[[1]]
out_dir <- file.path("bench", "results")
isa <- Sys.getenv("ATEN_CPU_CAPABILITY", "native")
cpu <- sub(".*: ", "", grep("model name", readLines("/proc/cpuinfo"), value = TRUE)[1])
cat(sprintf("== %s, %d cores, libtorch kernels: %s ==\n", cpu, parallel::detectCores(), isa))

# The child: run the files with recording versions of the four comparisons, which
# shadow testthat's (the test environment's parent is the global environment).
child <- '
suppressMessages(library(testthat)); library(mrvi)
records <- list()
where <- function() {
  for (cl in rev(sys.calls())) {
    sr <- attr(cl, "srcref")
    if (!is.null(sr)) return(paste0(basename(attr(sr, "srcfile")$filename), ":", sr[1]))
  }
  NA_character_
}
recording <- function(name) {
  force(name)
  function(object, expected, ...) {
    label <- paste(deparse(substitute(object)), collapse = " ")
    value <- as.numeric(object)[1]
    records[[length(records) + 1]] <<- data.frame(where = where(), test = name, label = substr(label, 1, 90),
                                                  value = value, expected = as.numeric(expected)[1])
    getExportedValue("testthat", name)(object, expected, ...)
  }
}
expect_gt <- recording("expect_gt"); expect_gte <- recording("expect_gte")
expect_lt <- recording("expect_lt"); expect_lte <- recording("expect_lte")
files <- strsplit(Sys.getenv("AUDIT_FILES"), ",")[[1]]
res <- lapply(files, function(f) as.data.frame(test_file(file.path("tests/testthat", paste0("test-", f, ".R")),
                                                            reporter = "silent", stop_on_failure = FALSE)))
res <- do.call(rbind, res)
rec <- do.call(rbind, records)
rec$shift <- as.integer(Sys.getenv("MRVI_TEST_SEED_SHIFT"))
bad <- res[res$failed > 0 | res$error, c("file", "test")]
saveRDS(list(records = rec, failed = sum(res$failed) + sum(res$error), failing_tests = bad), Sys.getenv("AUDIT_OUT"))
'
script <- tempfile(fileext = ".R")
writeLines(child, script)

runs <- lapply(shifts, function(s) {
  out <- tempfile(fileext = ".rds")
  log <- tempfile(fileext = ".log")
  started <- Sys.time()
  status <- system2(file.path(R.home("bin"), "Rscript"), script, stdout = log, stderr = log,
                    env = c(paste0("MRVI_TEST_SEED_SHIFT=", s), paste0("AUDIT_FILES=", paste(files, collapse = ",")),
                            paste0("AUDIT_OUT=", out)))
  if (status != 0 || !file.exists(out)) {
    writeLines(utils::tail(readLines(log), 30))
    stop("the run with seed shift ", s, " failed (exit ", status, ")")
  }
  r <- readRDS(out)
  cat(sprintf("seed shift %d: %d comparisons recorded, %d failed expectations, %.0f s\n", s, nrow(r$records),
              r$failed, as.numeric(difftime(Sys.time(), started, units = "secs"))))
  for (k in seq_len(nrow(r$failing_tests))) cat("  failing:", r$failing_tests$file[k], "-", r$failing_tests$test[k], "\n")
  r$records
})
rec <- do.call(rbind, runs)
rec$isa <- isa
rec$cpu <- cpu
# the k-th comparison at one place in one run (loops compare several times)
rec$occurrence <- stats::ave(seq_len(nrow(rec)), rec$where, rec$shift, FUN = seq_along)
upper <- rec$test %in% c("expect_lt", "expect_lte")
rec$margin <- ifelse(upper, rec$expected - rec$value, rec$value - rec$expected) / pmax(abs(rec$expected), 1e-12)
key <- paste(rec$where, rec$occurrence)
summary <- do.call(rbind, lapply(split(rec, factor(key, unique(key))), function(r) {
  data.frame(where = r$where[1], occurrence = r$occurrence[1], test = r$test[1], label = r$label[1],
             expected = r$expected[1], min_value = min(r$value), max_value = max(r$value), seeds = nrow(r),
             failed = sum(r$margin < 0 | (r$margin == 0 & r$test %in% c("expect_gt", "expect_lt"))),
             min_margin = min(r$margin))
}))
tag <- if (isa == "native") "" else paste0("_", isa)
dir.create(out_dir, showWarnings = FALSE, recursive = TRUE)
utils::write.csv(rec, file.path(out_dir, paste0("threshold_audit_records", tag, ".csv")), row.names = FALSE)
utils::write.csv(summary, file.path(out_dir, paste0("threshold_audit", tag, ".csv")), row.names = FALSE)
# a threshold at exactly 0 (e.g. "results differ") has no relative margin to speak of
statistical <- summary[summary$expected != 0, ]
cat("\nThe thresholds with the least relative margin over the seed shifts:\n")
print(utils::head(statistical[order(statistical$min_margin), c("where", "label", "expected", "min_value", "max_value",
                                                               "seeds", "failed", "min_margin")], 25), row.names = FALSE)
cat(sprintf("\n%d thresholds, %d failed on some seed shift\n", nrow(summary), sum(summary$failed > 0)))
