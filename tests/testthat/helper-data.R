# Small inputs shared by the tests.
small_counts <- function(n_genes = 30, n_cells = 24, seed = 1) {
  set.seed(seed)
  m <- matrix(rpois(n_genes * n_cells, 3), n_genes, n_cells,
              dimnames = list(paste0("gene", seq_len(n_genes)), paste0("cell", seq_len(n_cells))))
  Matrix::Matrix(m, sparse = TRUE)
}
small_samples <- function(n_cells = 24) rep(c("A", "B", "C"), length.out = n_cells)

# One trained fit on simulated nested data, made once per test run.
nested_fit <- local({
  cache <- NULL
  function() {
    if (is.null(cache)) {
      sim <- mrvi:::simulate_counts(n_cells = 2000, n_genes = 150, n_samples = 8, n_sites = 2,
                                    n_cell_types = 3, affected = 1, effect = 3, seed = 4)
      fit <- mrvi(sim$counts, flavour = "linear", sample = sim$sample, batch = sim$site, labels = sim$cell_type,
                  max_epochs = 120, seed = 7, verbose = FALSE)
      cache <<- list(sim = sim, fit = fit)
    }
    cache
  }
})

# The paper's covariates design (three binary sample covariates acting on type1),
# fitted once per test run; shared by the guided and the differential tests.
covariates_fit <- local({
  cache <- NULL
  function() {
    if (is.null(cache)) {
      sce <- simulateNested(2400, 300, n_samples = 12, n_sites = 1, n_cell_types = 2,
                            n_affected = 1, design = "covariates", seed = 6)
      fit <- mrvi(sce, flavour = "linear", sample = "sample", max_epochs = 200, n_latent = 20, seed = 1, verbose = FALSE)
      cache <<- list(sce = sce, fit = fit)
    }
    cache
  }
})
