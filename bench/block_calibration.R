# Guided tests with blocks of samples on real data (`block` of cellAssociation() and
# groupAssociation()):
#   R_LIBS=$PWD/.Rlib Rscript bench/block_calibration.R     # ~6 min; appends to bench/results/block_calibration.csv and de_block_calibration.csv
# kang_8donors_ctrl (8 control donors x 8 PBMC types, bench/data): every donor's cells
# are split at random into two halves, and the 16 halves are fitted as samples (mrvi()
# defaults). A donor-level covariate then has no effect of its own, but its samples
# are not exchangeable: the two halves of a donor are alike. For each of the 35
# balanced splits of the donors into two groups of 4, groupAssociation() on D(C) of
# each cell type (defaults: `effect`, 999 permutations), without and with
# `block = donor`; the share of p-values below 0.05 should be about 0.05 (less with
# the minimum effect), and is what a user gets from a random donor-level covariate.
# Also the within-donor covariate "half" (no effect either), with `block`.
# The same for differentialExpression() (`block` of the DE regression) on 1,000
# random cells, with its defaults and as the plain F test (`normalize = FALSE,
# lfc_threshold = 0`): the share of cells with p < 0.05 per split
# (bench/results/de_block_calibration.csv).
# Settings (environment): MRVI_BENCH_SEED (default 1), MRVI_BENCH_OUT (CSV),
# MRVI_BENCH_DE_OUT (CSV).
suppressMessages(library(mrvi))
source("bench/helpers.R")
seed <- as.integer(Sys.getenv("MRVI_BENCH_SEED", "1"))
out_file <- Sys.getenv("MRVI_BENCH_OUT", "bench/results/block_calibration.csv")
cpu <- cpu_info()$model
commit <- tryCatch(system("git rev-parse --short HEAD", intern = TRUE), error = function(e) NA_character_)

d <- mrvi:::read_count_folder("bench/data/kang_8donors_ctrl")
rownames(d$counts) <- make.unique(rownames(d$counts))
donor <- paste0("d", d$cells$sample_id)
set.seed(seed)
half <- ave(seq_along(donor), donor, FUN = function(i) sample(rep(c("a", "b"), length.out = length(i))))
pseudo <- paste0(donor, "_", half)
t0 <- proc.time()[["elapsed"]]
fit <- mrvi(d$counts, sample = pseudo, labels = d$cells$cluster_id, seed = seed, verbose = FALSE)
fit_s <- proc.time()[["elapsed"]] - t0
dist <- sampleDistances(fit, groups = "labels", verbose = FALSE)
samples <- dimnames(dist)[[1]]
block <- stats::setNames(sub("_[ab]$", "", samples), samples)
donors <- sort(unique(block))
splits <- Filter(function(s) donors[1] %in% s, utils::combn(donors, 4, simplify = FALSE))

test <- function(covariate, with_block) {
  suppressWarnings(suppressMessages(groupAssociation(dist, covariate, permutations = 999,
                                                     block = if (with_block) block)))$p_value
}
rows <- list()
for (k in seq_along(splits)) {
  grp <- stats::setNames(ifelse(block %in% splits[[k]], "g1", "g2"), samples)
  for (with_block in c(FALSE, TRUE)) {
    rows[[length(rows) + 1]] <- data.frame(covariate = "donor_level", split = k, block = with_block,
                                           group = dimnames(dist)[[3]], p_value = test(grp, with_block))
  }
}
halves <- stats::setNames(sub("^.*_", "", samples), samples)
rows[[length(rows) + 1]] <- data.frame(covariate = "half", split = NA, block = TRUE, group = dimnames(dist)[[3]],
                                       p_value = test(halves, TRUE))
res <- do.call(rbind, rows)
summary <- stats::aggregate(cbind(below_0.05 = p_value < 0.05) ~ covariate + block, res, mean)
summary$tests <- stats::aggregate(p_value ~ covariate + block, res, length)$p_value
print(summary)
print(stats::aggregate(cbind(below_0.05 = p_value < 0.05) ~ group + block, res[res$covariate == "donor_level", ], mean))
append_csv <- function(out, file) {
  old <- if (file.exists(file)) utils::read.csv(file) else NULL
  utils::write.csv(rbind(old, out), file, row.names = FALSE)
  cat("appended to", file, "\n")
}
stamp <- data.frame(date = format(Sys.time(), "%Y-%m-%d %H:%M"), commit = commit, seed = seed, cpu = cpu,
                    fit_seconds = round(fit_s, 1))
append_csv(cbind(stamp, summary), out_file)

# differentialExpression(): the share of cells with p < 0.05, per covariate and setting
cells <- sort(sample(nrow(fit@u_mean), 1000))
settings <- list(default = list(), plain = list(normalize = FALSE, lfc_threshold = 0))
de_share <- function(covariate, with_block, setting) {
  args <- c(list(fit, data.frame(sample = samples, covariate = unname(covariate[samples])), cells = cells,
                 verbose = FALSE, block = if (with_block) block), settings[[setting]])
  mean(suppressWarnings(suppressMessages(do.call(differentialExpression, args)))$p_value < 0.05)
}
de_rows <- list()
for (setting in names(settings)) {
  for (k in seq_along(splits)) {
    grp <- stats::setNames(ifelse(block %in% splits[[k]], "g1", "g2"), samples)
    for (with_block in c(FALSE, TRUE)) {
      de_rows[[length(de_rows) + 1]] <- data.frame(setting = setting, covariate = "donor_level", split = k,
                                                   block = with_block, share_below_0.05 = de_share(grp, with_block, setting))
    }
  }
  de_rows[[length(de_rows) + 1]] <- data.frame(setting = setting, covariate = "half", split = NA, block = TRUE,
                                               share_below_0.05 = de_share(halves, TRUE, setting))
}
de_res <- do.call(rbind, de_rows)
de_summary <- stats::aggregate(share_below_0.05 ~ setting + covariate + block, de_res, function(v) c(mean = mean(v), max = max(v)))
de_summary <- do.call(data.frame, de_summary)
print(de_summary)
append_csv(cbind(stamp, de_summary), Sys.getenv("MRVI_BENCH_DE_OUT", "bench/results/de_block_calibration.csv"))
