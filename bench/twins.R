# Twin recovery on real data (issue 14):
#   R_LIBS=$PWD/.Rlib Rscript bench/twins.R
# Every sample's cells are split at random into two halves ("twins"); MrVI is fitted
# with the halves as samples, D(C) is computed per cell type, and a half scores 1 when
# its nearest other half (smallest D(C)) is its twin. Pseudobulk baseline in the same
# run: pseudobulkDistances() (per cell type and half, log-CPM, 1 - Pearson).
# Both leave out a half with fewer than min_cells = 5 cells of a type (their default);
# a half whose twin was left out cannot find it and is not scored (`halves_scored`).
# The `_all` columns score every half: mrvi with min_cells = 0 (a counterfactual
# distance needs no cells of the sample in the type, and scvi-tools leaves no sample
# out), pseudobulk with min_cells = 1.
# Datasets: kang_8donors_ctrl (8 donors x 8 PBMC types; bench/data), scds_cellhashing
# (12 samples = 4 cell lines x 3 hashtags, singlets; the package's extdata; cell line
# as the cell type), lemur_glioblastoma (10 samples; one group: all cells).
# Settings (environment): MRVI_BENCH_SEEDS (default 1), MRVI_BENCH_FLAVOURS
# ("linear,attention"; "scvi-tools" adds scvi-tools' MRVI with its defaults on the
# same halves, bench/scvi_tools_distances.py in SCVI_VENV (default bench/.venv-scvi, made by
# bench/scvi_env.sh) with SCVI_THREADS threads (default 1)), MRVI_BENCH_DATASETS,
# MRVI_BENCH_ARGS (extra mrvi() arguments), MRVI_BENCH_TAG, MRVI_BENCH_OUT (CSV).
suppressMessages(library(mrvi))
source("bench/helpers.R")
env_list <- function(name, default) strsplit(Sys.getenv(name, default), ",")[[1]]
seeds <- as.integer(env_list("MRVI_BENCH_SEEDS", "1"))
flavours <- env_list("MRVI_BENCH_FLAVOURS", "linear,attention")
datasets <- env_list("MRVI_BENCH_DATASETS", "kang_8donors_ctrl,scds_cellhashing,lemur_glioblastoma")
extra <- eval(parse(text = Sys.getenv("MRVI_BENCH_ARGS", "list()")))
tag <- Sys.getenv("MRVI_BENCH_TAG", "default")
out_file <- Sys.getenv("MRVI_BENCH_OUT", "bench/results/twins.csv")
cpu <- sub(".*: *", "", grep("Model name", system("lscpu", intern = TRUE), value = TRUE)[1])

# the package's reader of the project's data format; gene symbols made unique
read_folder <- function(dir) {
  d <- mrvi:::read_count_folder(dir)
  rownames(d$counts) <- make.unique(rownames(d$counts))
  d
}

load_dataset <- function(name) {
  switch(name,
    kang_8donors_ctrl = {
      d <- read_folder("bench/data/kang_8donors_ctrl")
      list(counts = d$counts, sample = as.character(d$cells$sample_id), group = d$cells$cluster_id)
    },
    scds_cellhashing = {
      d <- read_folder(system.file("extdata", package = "mrvi", mustWork = TRUE))
      keep <- d$cells$hto_classification_global == "Singlet"
      list(counts = d$counts[, keep], sample = d$cells$hash_ID[keep], group = d$cells$cell_line[keep])
    },
    lemur_glioblastoma = {
      d <- read_folder("bench/data/lemur_glioblastoma")
      list(counts = d$counts, sample = d$cells$sample_id, group = rep("all", ncol(d$counts)))
    })
}

# per half that can be scored (it and its twin both in D, not NA): is its nearest
# other half (in D) its twin? twin_score() is the share of hits.
twin_hits <- function(D) {
  halves <- rownames(D)
  hits <- vapply(halves, function(h) {
    twin <- if (grepl("_a$", h)) sub("_a$", "_b", h) else sub("_b$", "_a", h)
    if (!twin %in% halves || is.na(D[h, h]) || is.na(D[h, twin])) return(NA)
    row <- D[h, ]
    row[h] <- NA
    names(which.min(row)) == twin
  }, logical(1))
  hits[!is.na(hits)]
}
twin_score <- function(D) mean(twin_hits(D))

rows <- list()
for (name in datasets) {
  data <- load_dataset(name)
  for (seed in seeds) {
    set.seed(seed)
    half <- paste0(data$sample, ifelse(stats::runif(length(data$sample)) < 0.5, "_a", "_b"))
    # the package's baseline, on every gene (no selection of variable genes)
    pb <- pseudobulkDistances(data$counts, half, groups = data$group, n_genes = nrow(data$counts))
    pb_all <- pseudobulkDistances(data$counts, half, groups = data$group, n_genes = nrow(data$counts), min_cells = 1)
    for (flavour in flavours) {
      if (flavour == "scvi-tools") {
        s <- scvi_tools_group_distances(data$counts, data.frame(sample = half, group = data$group), seed)
        d <- d_all <- s$d
        seconds <- s$seconds
        epochs <- s$epochs
      } else {
        t0 <- proc.time()[["elapsed"]]
        fit <- do.call(mrvi, c(list(data$counts, sample = half, flavour = flavour, seed = seed, verbose = FALSE),
                               extra))
        seconds <- proc.time()[["elapsed"]] - t0
        epochs <- nrow(fit@history)
        d <- sampleDistances(fit, groups = data$group)
        d_all <- sampleDistances(fit, groups = data$group, min_cells = 0)
      }
      for (g in dimnames(d)[[3]]) {
        row <- data.frame(tag, dataset = name, seed, flavour, group = g, epochs = epochs,
                          train_seconds = round(seconds, 1), twin_mrvi = twin_score(d[, , g]),
                          twin_pseudobulk = twin_score(pb[, , g]), halves_scored = length(twin_hits(d[, , g])),
                          twin_mrvi_all = twin_score(d_all[, , g]), twin_pseudobulk_all = twin_score(pb_all[, , g]),
                          cpu, stringsAsFactors = FALSE)
        rows[[length(rows) + 1]] <- row
      }
      res <- do.call(rbind, rows)
      cur <- res[res$dataset == name & res$seed == seed & res$flavour == flavour, ]
      cat(sprintf(paste("%s %s seed %d %s: twin %.3f (worst %.2f), pseudobulk %.3f; every half: %.3f (worst %.2f),",
                        "pseudobulk %.3f; %d epochs, %.0f s\n"), tag, name, seed, flavour,
                  mean(cur$twin_mrvi, na.rm = TRUE), min(cur$twin_mrvi, na.rm = TRUE),
                  mean(cur$twin_pseudobulk, na.rm = TRUE), mean(cur$twin_mrvi_all, na.rm = TRUE),
                  min(cur$twin_mrvi_all, na.rm = TRUE), mean(cur$twin_pseudobulk_all, na.rm = TRUE),
                  cur$epochs[1], seconds))
      # rows of earlier versions lack the later columns (NA); their twin_mrvi scored
      # a half whose twin was left out as a miss
      old <- if (file.exists(out_file)) utils::read.csv(out_file) else NULL
      if (!is.null(old)) old[setdiff(names(cur), names(old))] <- NA
      utils::write.csv(rbind(old[names(cur)], cur), out_file, row.names = FALSE)
    }
  }
}
