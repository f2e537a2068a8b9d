#' mrvi: Multi-resolution Variational Inference for multi-sample single-cell data
#'
#' MrVI learns, for every cell, a sample-free state u and a sample-aware state z,
#' and asks counterfactual questions (what would this cell look like in another
#' sample?) to compare samples at single-cell resolution: sample-by-sample
#' distances per cell and per cell group, sample trees, and tests against sample
#' covariates. The model runs in Rust on libtorch, on the CPU or a CUDA GPU.
#'
#' Start with [mrvi()]. [mrviData()] shows how inputs are read and checked;
#' [mrviBackend()] shows the compiled backend.
#'
#' @section Options:
#' \describe{
#'   \item{`mrvi.threads`}{CPU threads for libtorch (default: the idle cores, see [mrviBackend()]).}
#' }
#' @keywords internal
#' @useDynLib mrvi, .registration = TRUE
#' @importFrom methods new is show
#' @importFrom graphics plot
#' @importFrom Matrix sparseMatrix
#' @name mrvi-package
#' @aliases mrvi-package
#' @docType package
NULL

.onLoad <- function(libname, pkgname) {
  thread_state$pid <- Sys.getpid()  # a forked worker has another (see automatic_threads())
  # how src/entrypoint.c loaded libtorch, which reads the variable at load time only
  nodb <- Sys.getenv("MRVI_NO_DEEPBIND")
  thread_state$deepbind <- !nzchar(nodb) || nodb == "0"
  invisible()
}
