#' The libtorch backend: version, devices and threads
#'
#' `mrviBackend()` reports what the compiled backend offers in this R session.
#' `mrviSetThreads()` sets the number of CPU threads libtorch uses, through the
#' package option `mrvi.threads`, which every function that computes applies
#' (an explicit `n_threads` argument, where a function has one, wins). Threads
#' are set through libtorch itself (`at::set_num_threads`), so they take effect
#' at any time, unlike the `OMP_NUM_THREADS` environment variable, which the
#' OpenMP runtime reads once when R starts. The package's own parallel loops
#' (distances, guided tests, densities) use as many threads, taking turns with
#' libtorch's instead of running beside them.
#'
#' **The default (`mrvi.threads` unset, or `mrviSetThreads(NULL)`)** is chosen
#' for each call from the cores that are idle at that moment (measured over 0.1 s
#' from `/proc/stat` on Linux and kept for 10 s; all cores elsewhere), at least
#' one (`mrvi()` with counts on disk leaves one of them to its reader, see
#' "Counts on disk" in [mrvi()]), and at most `OMP_NUM_THREADS` when that is set
#' (as batch schedulers set it); only the cores the process may run on count
#' (its CPU affinity, e.g. `taskset` or a cpuset, and its cgroup's CPU quota, e.g.
#' a container's `--cpus`). In a forked worker (`parallel::mclapply()`,
#' `BiocParallel::MulticoreParam()`) every computation runs on one thread,
#' whatever `n_threads` or `mrvi.threads` ask for (with a message,
#' `mrvi_forked_threads`): GNU OpenMP's threads do not survive `fork()`, and a
#' child asking for several after its parent used several waits forever. libtorch's threads wait for each other many
#' times per minibatch, so a thread that has to share its core with another busy
#' process holds up all the others: two threads beside one busy process on two
#' cores ran several times slower than one thread. Using only idle cores keeps a
#' fit beside other jobs within about 2x of its speed alone. With several threads,
#' training splits each minibatch into one shard per thread (of at least 32
#' cells), each computed on its own thread, and adds their gradients: on two
#' cores 10-40% faster than sharing every operation between the threads. Results for a fixed
#' `seed` are bit-identical for a given number of threads, which the fit records
#' (`fit@config$n_threads`); pass `n_threads` (or set `mrvi.threads`) to repeat
#' a fit exactly whatever else the machine is doing.
#'
#' Training fixes glibc's malloc thresholds (on Linux) at the largest values glibc
#' itself would adjust them to (mmap 32 MB, trim 64 MB), for the whole R process, so
#' that a step's buffers are reused instead of being mapped and faulted in again: the
#' same fit otherwise ran 0-25% slower depending on what the process had allocated
#' before.
#'
#' The large matrix products of training (the encoder's first layer, the
#' decoder's output layer) run on oneDNN on x86 CPUs with AVX-512 not made by
#' Intel, and on MKL (libtorch's default) elsewhere: MKL chooses its kernels by
#' CPU vendor and takes a generic AVX2 path on AMD CPUs whatever they offer, where
#' oneDNN chooses by instruction set. On an AMD EPYC (Zen 5, AVX-512) the attention
#' flavour trained 13-20% more cells per second on one thread. The choice is fixed per machine, so results
#' stay bit-identical for a fixed `seed` and thread count there;
#' `mrviBackend()$matrix_products` says which library is in use. For comparisons,
#' the environment variable `MRVI_MATMUL` (`"default"`: libtorch's MKL
#' everywhere; `"onednn"`: oneDNN wherever libtorch has it; read once, at the
#' first training; other values are ignored) overrides the choice, and
#' `MRVI_NO_DEEPBIND=1` (read when the package loads) loads libtorch without
#' its own BLAS binding.
#'
#' OpenMP threads that wait spin by default, which starves other processes; with
#' other work on the machine, start R with `OMP_WAIT_POLICY=PASSIVE` (for
#' example in `~/.Renviron`): the OpenMP runtime reads it only at start-up.
#'
#' @return `mrviBackend()`: a list with `libtorch_version`, `cuda_available`,
#'   `cuda_device_count`, `threads` (as the last computation set them; each
#'   computation applies its own count first), `matrix_products` (the
#'   library of training's large CPU matrix products: `"oneDNN"` or `"MKL"`)
#'   and `deepbind` (whether
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
  info$deepbind <- thread_state$deepbind
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
  cat("  CPU products: ", x$matrix_products, "\n", sep = "")
  cat("  own BLAS:     ", if (x$deepbind) "yes (RTLD_DEEPBIND)" else "no (bound to R's BLAS)", "\n", sep = "")
  invisible(x)
}

#' @rdname mrviBackend
#' @param n number of CPU threads for libtorch, a positive whole number; `NULL`
#'   returns to the default (idle cores, see Details).
#' @export
mrviSetThreads <- function(n) {
  check_required(sys.call())
  if (!is.null(n)) n <- cap_threads(check_count(n, "n", call = rlang_caller(1)), "n")
  options(mrvi.threads = n)
  invisible(apply_threads())
}

# The cores this process may run on: the machine's, or fewer when its CPU
# affinity (taskset, a batch scheduler's cpuset) or its cgroup's CPU quota (a
# container's --cpus) allows fewer (Linux).
default_threads <- function() {
  n <- suppressWarnings(parallel::detectCores(logical = TRUE))
  n <- if (is.na(n) || n < 1) 1L else as.integer(n)
  min(n, allowed_cpus(), cgroup_cpus(), na.rm = TRUE)
}

# The CPU quota of the process's cgroup in whole cores, rounded up: cgroup v2's
# cpu.max ("150000 100000"), or v1's cfs quota and period; NA without a quota.
cgroup_cpus <- function(root = "/sys/fs/cgroup") {
  first <- function(...) {
    f <- file.path(root, ...)
    if (!file.exists(f)) return(NA_real_)
    v <- tryCatch(readLines(f, n = 1, warn = FALSE), error = function(e) "")
    suppressWarnings(as.numeric(strsplit(v, " ")[[1]]))
  }
  v2 <- first("cpu.max")
  limits <- if (length(v2) == 2) v2 else c(first("cpu", "cpu.cfs_quota_us"), first("cpu", "cpu.cfs_period_us"))
  if (length(limits) != 2 || anyNA(limits) || any(limits <= 0)) return(NA_integer_)
  max(1L, as.integer(ceiling(limits[1] / limits[2])))
}

# The CPUs of /proc/self/status's Cpus_allowed_list ("0-3,8"); NA elsewhere.
allowed_cpus <- function() {
  line <- tryCatch(grep("^Cpus_allowed_list:", readLines("/proc/self/status", warn = FALSE), value = TRUE),
                   error = function(e) character(), warning = function(w) character())
  if (!length(line)) return(NA_integer_)
  ranges <- strsplit(strsplit(trimws(sub("^Cpus_allowed_list:", "", line[1])), ",")[[1]], "-")
  n <- sum(vapply(ranges, function(r) {
    r <- suppressWarnings(as.integer(r))
    if (length(r) == 2) r[2] - r[1] + 1L else 1L
  }, integer(1)))
  if (is.na(n) || n < 1) NA_integer_ else n
}

# Apply the thread count before computing: an explicit n_threads argument, else
# options(mrvi.threads), else the idle cores (see ?mrviBackend) less `reserved`
# for other work of the call (at least 1). More threads than cores only slow
# libtorch down: capped, with a message. Returns the count.
apply_threads <- function(n_threads = NULL, call = rlang_caller(), reserved = 0L) {
  n <- n_threads %||% getOption("mrvi.threads")
  n <- if (is.null(n)) max(1L, automatic_threads() - reserved) else {
    arg <- if (is.null(n_threads)) "options(mrvi.threads)" else "n_threads"
    cap_threads(check_count(n, arg, call = call), arg)
  }
  # GNU OpenMP's thread team does not survive fork(): a forked child that asks
  # for more than one thread after its parent computed on several waits forever
  if (n > 1 && forked_worker()) {
    cli::cli_inform(c("i" = "In a forked worker (mclapply, MulticoreParam) mrvi computes on one thread, not {n}: more would hang in OpenMP."),
                    class = "mrvi_forked_threads")
    n <- 1L
  }
  mrvi_set_threads(n)
}

forked_worker <- function() !identical(Sys.getpid(), thread_state$pid)

# The session's process id (set when the package loads) and the last idle-core count.
thread_state <- new.env(parent = emptyenv())

automatic_threads <- function() {
  if (forked_worker()) return(1L)
  now <- proc.time()[["elapsed"]]
  if (is.null(thread_state$idle_at) || now - thread_state$idle_at > 10) {
    thread_state$idle_cores <- idle_cores(default_threads())
    thread_state$idle_at <- now
  }
  # OMP_NUM_THREADS, as job schedulers set it, bounds the default
  omp <- suppressWarnings(as.integer(Sys.getenv("OMP_NUM_THREADS")))
  if (!is.na(omp) && omp >= 1) min(thread_state$idle_cores, omp) else thread_state$idle_cores
}

# The cores idle over the next 0.1 s (Linux's /proc/stat: idle and iowait time
# over all time, times the cores), rounded, at least 1; all cores elsewhere.
idle_cores <- function(cores) {
  read <- function() {
    v <- tryCatch(scan("/proc/stat", what = "", nlines = 1, quiet = TRUE), error = function(e) NULL)
    if (length(v) < 6 || v[1] != "cpu") return(NULL)
    ticks <- suppressWarnings(as.numeric(v[-1]))
    c(idle = sum(ticks[4:5]), total = sum(ticks))
  }
  a <- read()
  if (is.null(a)) return(cores)
  Sys.sleep(0.1)
  b <- read()
  spent <- b[["total"]] - a[["total"]]
  if (is.null(b) || !is.finite(spent) || spent <= 0) return(cores)
  as.integer(min(cores, max(1, round(cores * (b[["idle"]] - a[["idle"]]) / spent))))
}

cap_threads <- function(n, arg) {
  cores <- default_threads()
  if (n > cores) {
    inform(c("i" = "{.arg {arg}} = {n} is more than the {cores} core{?s} here: using {cores}."))
    n <- cores
  }
  n
}
