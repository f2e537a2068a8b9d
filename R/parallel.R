# Work spread with BiocParallel. The tasks are fixed by the data (cell blocks of
# a size that does not depend on the workers, groups, permutation tests) and
# their results are combined in task order, and every posterior draw depends on
# the seed and the cell only: any backend and any number of workers gives the
# serial result bit for bit. Workers rebuild the model from the fit's bytes
# (native_model() finds no live model in a fit that was sent to them) and use
# threads so that workers x threads <= cores.

#' Spreading analyses over cores and cluster nodes
#'
#' The analyses that are independent across cells, groups or permutation tests
#' take a `BPPARAM` argument, a BiocParallel back-end: [mrviLatent()],
#' [counterfactualLatent()], [sampleDistances()], [cellAssociation()],
#' [groupAssociation()], [differentialExpression()], [differentialAbundance()],
#' [admissibility()] and [sampleTreeSupport()]. The default, `BiocParallel::SerialParam()`, runs in
#' the calling process. `SnowParam()` starts R processes, and
#' `BatchtoolsParam()` submits jobs to a scheduler (SLURM, SGE, LSF, PBS) or
#' runs them locally. Fork-based back-ends (`MulticoreParam()`, batchtools'
#' `"multicore"`) run as as many socket workers instead, with a message: forked
#' children inherit libtorch's OpenMP thread pool, and GNU OpenMP hangs in them.
#'
#' Results are identical to serial ones, bit for bit, whatever the back-end and
#' the number of workers: the work is cut into tasks that depend on the data
#' only (blocks of `getOption("mrvi.task_cells", 20000)` cells, or one task per
#' cell group), results are combined in task order, and posterior draws depend
#' on the seed and the cell only. Workers rebuild the model from the fit's
#' weights (`fit@weights`); each uses `getOption("mrvi.worker_threads")`
#' threads, by default the cores of this machine divided by the number of
#' workers, so that workers x threads <= cores. (On a cluster, set
#' `options(mrvi.worker_threads = )` to the cores each job asks for.) Both
#' options, when set, must be one positive whole number: anything else is an
#' error before any work. A worker uses at most the cores of the machine it
#' runs on (more threads than cores only slow it down; a count in the
#' thousands made libgomp fail).
#'
#' @name mrvi-parallel
#' @examples
#' sim <- mrvi:::example_counts()
#' fit <- mrvi(sim$counts, sample = sim$sample, max_epochs = 2, verbose = FALSE)
#' d1 <- sampleDistances(fit, groups = sim$cell_type, mc_samples = 0)
#' d2 <- sampleDistances(fit, groups = sim$cell_type, mc_samples = 0,
#'                       BPPARAM = BiocParallel::SnowParam(2))
#' identical(d1, d2)
NULL

# Cells per task when an analysis is split over cells.
bp_block <- function() count_option("mrvi.task_cells", 20000L)

# Split indices `idx` into tasks of `size`.
bp_split <- function(idx, size = bp_block()) unname(split(idx, ceiling(seq_along(idx) / size)))

check_bpparam <- function(BPPARAM, call) {
  if (!methods::is(BPPARAM, "BiocParallelParam")) {
    abort_arg(c("{.arg BPPARAM} must be a BiocParallel back-end.",
                "x" = "You gave {.obj_type_friendly {BPPARAM}}.",
                "i" = "For example {.code BiocParallel::SerialParam()} or {.code BiocParallel::SnowParam(2)}."),
              call = call)
  }
  # the options of spreading work, checked in every call that takes BPPARAM (not
  # only in those that split their work: a typo passed on small data)
  bp_block()
  count_option("mrvi.worker_threads", 1L, call)
  BPPARAM
}

# An array of dimensions `dim` whose rows (the first dimension: cells) are
# computed in blocks over BPPARAM's workers: FUN(rows, ...) gives the values of
# out[rows, ...] (column-major); with `payload`, FUN(payload(rows), ...). The
# array is allocated once, up front, so that too little memory is a classed
# error before any work and no block list is copied into it at the end.
bp_rows <- function(dim, FUN, ..., BPPARAM, what, call, payload = NULL) {
  out <- with_memory_error(matrix(NA_real_, dim[[1]], prod(dim[-1])), what, call)
  blocks <- bp_split(seq_len(dim[[1]]))
  bp_map(blocks, FUN, ..., BPPARAM = BPPARAM, each = function(v, i) out[blocks[[i]], ] <<- v, payload = payload)
  dim(out) <- dim  # in place
  out
}

# lapply(X, FUN, ...) over BPPARAM's workers. With `each`, results are handed
# to each(result, i) in order, a round of one task per worker at a time (so that
# memory holds one round), and nothing is returned; with `progress` (a label) as
# well, a progress bar counts the tasks done (cli shows it after 2 s). With
# `payload`, a task gets payload(X[[i]]), made here round by round: the data of
# that task alone goes to its worker (a FUN that read a block out of the whole
# data would carry all of it to every worker, every round).
bp_map <- function(X, FUN, ..., BPPARAM, each = NULL, progress = NULL, payload = NULL) {
  workers <- if (methods::is(BPPARAM, "SerialParam")) 1L else BiocParallel::bpnworkers(BPPARAM)
  tasks <- if (is.null(payload)) function(i) X[i] else function(i) lapply(X[i], payload)
  run <- if (workers <= 1 || length(X) <= 1) {
    function(i) lapply(tasks(i), FUN, ...)
  } else {
    # (only when work is spread: serial work says nothing of workers)
    BPPARAM <- unforked(BPPARAM, workers)
    # checked here, in this process: in the workers a bad value failed as a raw
    # BiocParallel error. Not capped at this machine's cores: cluster jobs may have more.
    threads <- count_option("mrvi.worker_threads", max(1L, default_threads() %/% workers))
    if (!BiocParallel::bpisup(BPPARAM)) {
      BiocParallel::bpstart(BPPARAM)
      on.exit(BiocParallel::bpstop(BPPARAM), add = TRUE)
    }
    kind <- RNGkind()
    function(i) raise_worker_failure(BiocParallel::bplapply(tasks(i), bp_task, task = FUN, threads = threads, kind = kind, ...,
                                                            BPPARAM = BPPARAM))
  }
  if (is.null(each)) return(run(seq_along(X)))
  bar <- if (!is.null(progress) && length(X) > 1) cli::cli_progress_bar(progress, total = length(X))
  for (round in split(seq_along(X), ceiling(seq_along(X) / workers))) {
    res <- run(round)
    for (k in seq_along(round)) {
      each(res[[k]], round[[k]])
      if (!is.null(bar)) cli::cli_progress_update(id = bar)
    }
  }
  if (!is.null(bar)) cli::cli_progress_done(id = bar)
  invisible(NULL)
}

# Forked workers inherit libtorch's OpenMP thread pool, and GNU OpenMP is not
# fork-safe: the first parallel region in the child hangs. Fork-based back-ends
# (MulticoreParam, batchtools' multicore) run as as many socket workers instead.
unforked <- function(BPPARAM, workers) {
  forked <- methods::is(BPPARAM, "MulticoreParam") ||
    (methods::is(BPPARAM, "BatchtoolsParam") && identical(BPPARAM$cluster, "multicore"))
  if (!forked) return(BPPARAM)
  # (once per session: every call of a script would say it again)
  inform(c("i" = "Using {workers} socket worker{?s} ({.fn BiocParallel::SnowParam}) instead of forked ones: libtorch's threads do not survive a fork.",
           "i" = "They start anew for every call; to reuse workers, start a {.fn BiocParallel::SnowParam} once with {.fn BiocParallel::bpstart} and pass it."),
         class = "mrvi_unforked", .frequency = "once", .frequency_id = "mrvi_unforked")
  # the user's settings carried over
  BiocParallel::SnowParam(workers, timeout = BiocParallel::bptimeout(BPPARAM),
                          progressbar = BiocParallel::bpprogressbar(BPPARAM), log = BiocParallel::bplog(BPPARAM),
                          stop.on.error = BiocParallel::bpstopOnError(BPPARAM), RNGseed = BiocParallel::bpRNGseed(BPPARAM))
}

# One task in a worker: its thread count, and this session's kind of random
# generator (BiocParallel gives workers L'Ecuyer's, under which the set.seed()
# of a task would draw other numbers), then the task.
bp_task <- function(x, task, threads, kind, ...) {
  mrvi_set_threads(as.integer(min(threads, default_threads())))  # (this worker's machine's cores)
  RNGkind(kind[1], kind[2], kind[3])
  # this package's errors come back as values, so that bp_map() signals them
  # with their classes (BiocParallel would wrap them into its own); warnings
  # come back with the value (BiocParallel drops them), said again there
  warnings <- list()
  value <- tryCatch(withCallingHandlers(task(x, ...), warning = function(w) {
    warnings[[length(warnings) + 1]] <<- w
    invokeRestart("muffleWarning")
  }), mrvi_error = function(e) structure(list(condition = e), class = "mrvi_worker_failure"))
  structure(list(value = value, warnings = warnings), class = "mrvi_worker_result")
}

# A round's results from the workers, in task order: each task's warnings are
# signalled again here, and the first worker's mrvi error as the error it was.
raise_worker_failure <- function(results) {
  lapply(results, function(r) {
    for (w in r$warnings) warning(w)
    if (inherits(r$value, "mrvi_worker_failure")) stop(r$value$condition)
    r$value
  })
}
