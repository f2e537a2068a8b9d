# Nested multi-sample counts with known structure, for tests and examples (a
# plain list, without SingleCellExperiment): cell types with distinct expression;
# samples nested in sites; a sample effect (a per-sample gene programme) only in
# the `affected` cell types. The counts come from simulateNested()'s generator,
# synthetic_counts(), with every gene a marker of one type (strongly separated
# types).
simulate_counts <- function(n_cells = 600, n_genes = 100, n_samples = 6, n_sites = 2,
                            n_cell_types = 3, affected = 1, effect = 2, seed = 1) {
  restore <- preserve_rng()
  on.exit(restore())
  fixed_rng(seed)
  sample <- factor(sprintf("s%02d", sample.int(n_samples, n_cells, replace = TRUE)))
  site_of_sample <- rep_len(seq_len(n_sites), n_samples)
  site <- factor(paste0("site", site_of_sample[as.integer(sample)]))
  cell_type <- factor(paste0("type", sample.int(n_cell_types, n_cells, replace = TRUE)))
  # per-sample programmes: half of the samples up-regulate gene set 1, the others set 2
  programme <- matrix(1, n_genes, n_samples)
  sets <- split(sample(seq_len(n_genes), 20), rep(1:2, 10))
  group <- rep_len(c(1, 1, 2, 2), n_samples)  # crossed with the sites, not confounded
  for (s in seq_len(n_samples)) programme[sets[[group[s]]], s] <- effect
  cell_effect <- matrix(1, n_genes, n_cells)
  hit <- as.integer(cell_type) %in% affected
  cell_effect[, hit] <- programme[, as.integer(sample)[hit]]
  counts <- synthetic_counts(cell_type, site, cell_effect, n_genes, marker_one_in = 1L)
  dimnames(counts) <- list(sprintf("g%03d", seq_len(n_genes)), sprintf("c%04d", seq_len(n_cells)))
  list(counts = counts, sample = sample, site = site,
       cell_type = cell_type, sample_group = factor(paste0("group", group))[seq_len(n_samples)],
       affected = levels(cell_type)[affected])
}

example_counts <- function() simulate_counts(n_cells = 300, n_genes = 60, n_samples = 4, seed = 1)

# The bundled real data set (inst/extdata): counts (dgCMatrix, genes x cells)
# and cell metadata (data.frame).
read_example <- function(name = "cellhashing") {
  read_count_folder(system.file("extdata", package = "mrvi", mustWork = TRUE))
}

# A folder in the data format of the project (counts.mtx.gz genes x cells,
# genes.tsv, cells.csv with cell_id first): list(counts = dgCMatrix, cells = data.frame).
read_count_folder <- function(dir) {
  counts <- Matrix::readMM(gzfile(file.path(dir, "counts.mtx.gz")))
  genes <- utils::read.delim(file.path(dir, "genes.tsv"))
  cells <- utils::read.csv(file.path(dir, "cells.csv"))
  counts <- methods::as(methods::as(counts, "CsparseMatrix"), "generalMatrix")
  dimnames(counts) <- list(genes[[1]], cells$cell_id)
  rownames(cells) <- cells$cell_id
  list(counts = counts, cells = cells)
}
