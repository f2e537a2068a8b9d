#' The libtorch backend: version, devices and threads
#'
#' `mrviBackend()` reports what the compiled backend offers in this R session.
#' `mrviSetThreads()` sets the number of CPU threads libtorch uses. The package
#' option `mrvi.threads` (default: all cores, as [parallel::detectCores()]) is
#' applied when the package loads and by every function that computes;
#' `mrviSetThreads()` changes the option and applies it at once. Threads are set
#' through libtorch itself (`at::set_num_threads`), so they take effect at any
#' time, unlike the `OMP_NUM_THREADS` environment variable, which the OpenMP
#' runtime reads once when R starts. The package's own parallel loops (distances,
#' guided tests, densities) use as many threads, taking turns with libtorch's
#' instead of running beside them.
#'
#' @return `mrviBackend()`: a list with `libtorch_version`, `cuda_available`,
#'   `cuda_device_count`, `threads` (in use now) and `deepbind` (whether
#'   libtorch uses its own BLAS). `mrviSetThreads()`: the thread count now in
#'   use, invisibly.
#' @examples
#' mrviBackend()
#' old <- getOption("mrvi.threads")
#' mrviSetThreads(1)
#' mrviSetThreads(old)
#' @export
mrviBackend <- function() {
  info <- mrvi_backend_info()
  info$deepbind <- !nzchar(Sys.getenv("MRVI_NO_DEEPBIND")) ||
    Sys.getenv("MRVI_NO_DEEPBIND") == "0"
  structure(info, class = "mrvi_backend")
}

#' @method print mrvi_backend
#' @export
print.mrvi_backend <- function(x, ...) {
  cat("mrvi backend\n")
  cat("  libtorch:     ", x$libtorch_version, "\n", sep = "")
  cat("  CUDA:         ", if (x$cuda_available)
    paste0("available, ", x$cuda_device_count, " device(s)") else "not available", "\n", sep = "")
  cat("  CPU threads:  ", x$threads, "\n", sep = "")
  cat("  own BLAS:     ", if (x$deepbind) "yes (RTLD_DEEPBIND)" else "no (bound to R's BLAS)", "\n", sep = "")
  invisible(x)
}

#' @rdname mrviBackend
#' @param n number of CPU threads for libtorch, a positive whole number.
#' @export
mrviSetThreads <- function(n) {
  n <- cap_threads(check_count(n, "n", call = rlang_caller(1)), "n")
  options(mrvi.threads = n)
  invisible(mrvi_set_threads(n))
}

default_threads <- function() {
  n <- suppressWarnings(parallel::detectCores(logical = TRUE))
  if (is.na(n) || n < 1) 1L else as.integer(n)
}

# Apply the thread option (or an explicit n_threads argument) before computing.
# More threads than cores only slow libtorch down: capped, with a message.
apply_threads <- function(n_threads = NULL, call = rlang_caller()) {
  n <- if (is.null(n_threads)) getOption("mrvi.threads", default_threads()) else n_threads
  arg <- if (is.null(n_threads)) "options(mrvi.threads)" else "n_threads"
  mrvi_set_threads(cap_threads(check_count(n, arg, call = call), arg))
}

cap_threads <- function(n, arg) {
  cores <- default_threads()
  if (n > cores) {
    inform(c("i" = "{.arg {arg}} = {n} is more than the {cores} core{?s} here: using {cores}."))
    n <- cores
  }
  n
}

check_count <- function(n, arg, call) {
  if (!is.numeric(n) || length(n) != 1 || is.na(n) || n < 1 || n != round(n) ||
      n > .Machine$integer.max) {
    abort_arg(c("{.arg {arg}} must be one positive whole number, at most {max_int()}.",
                "x" = "You gave {given(n)}.",
                "i" = "For example {.code {arg} = 2}."), call = call)
  }
  as.integer(n)
}

max_int <- function() .Machine$integer.max

# What the user gave, for messages: "1e+10", or the type of anything else.
given <- function(v) {
  if (is.numeric(v) && length(v) == 1) format(v) else cli::format_inline("{.obj_type_friendly {v}}")
}
