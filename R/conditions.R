# Errors and messages. Every user-facing error names the argument at fault and
# says how to fix the call; all carry the class "mrvi_error" so that callers can
# catch them, and none of them touches the user's object.

abort_arg <- function(message, ..., call = rlang_caller(), class = NULL,
                      .envir = parent.frame()) {
  cli::cli_abort(message, ..., class = c(class, "mrvi_error"), call = call,
                 .envir = .envir)
}

# The call of the n-th caller up the frame lineage (not the stack), so that it also
# works when evaluated lazily as a default argument: errors then report the
# function the user called, not an internal helper.
rlang_caller <- function(n = 2) sys.call(sys.parent(n))

inform <- function(message, ..., .envir = parent.frame()) {
  cli::cli_inform(message, ..., .envir = .envir)
}

# "'a', 'b', 'c' and 7 more" for listing offenders or choices in messages.
show_some <- function(x, n = 5) {
  x <- as.character(x)
  shown <- paste0("'", utils::head(x, n), "'", collapse = ", ")
  if (length(x) > n) paste0(shown, " and ", length(x) - n, " more") else shown
}

# Every call into Rust goes through rust() (R/extendr-wrappers.R). The binding
# prefixes each error message with its condition class, "[mrvi_memory_error] ...";
# here it becomes a classed mrvi_error reported from the function the user called.
# An error without that prefix is a Rust panic (caught by extendr): an internal
# error, or a memory error when libtorch could not allocate.
rust <- function(expr) {
  tryCatch(expr, error = function(e) {
    # an error of ours from evaluating the arguments (e.g. native_model()) passes
    if (inherits(e, "mrvi_error")) stop(e)
    msg <- conditionMessage(e)
    # R's own time limit (setTimeLimit()), met while Rust called into R: the
    # user's limit, not a bug
    if (grepl("^reached (elapsed|CPU) time limit", msg)) stop(simpleError(msg, call = user_call()))
    # libtorch appends a C++ stack trace to its messages (escaped when it comes
    # through a panic's Debug text): keep the message
    msg <- sub("\\s*(Exception raised from|(\\\\n|\n)frame #).*$", "", msg)
    msg <- sub("^called `Result::unwrap\\(\\)` on an `Err` value: Torch\\(\"", "libtorch: ", msg)
    parts <- regmatches(msg, regexec("^\\[(mrvi_[a-z_]+)\\] (.*)$", msg))[[1]]
    if (length(parts)) {
      class <- parts[2]
      msg <- parts[3]
    } else {
      class <- if (grepl("allocat|out of memory", msg, ignore.case = TRUE)) "mrvi_memory_error" else
        "mrvi_internal_error"
    }
    hint <- switch(class,
      mrvi_memory_error = "Not enough memory: ask for less (fewer cells, samples or draws), or free memory.",
      mrvi_internal_error = "This is a bug in mrvi: please report it with the call that caused it.",
      mrvi_divergence_error = divergence_hint(),
      # a file that could not be written has nothing to delete: the path is the fix
      mrvi_checkpoint_error = if (grepl("^cannot write the checkpoint", msg))
        "Give a {.arg checkpoint} path in a folder you can write to." else
        "Give another {.arg checkpoint} file, or delete this one to train afresh.",
      NULL)
    abort_arg(c("{msg}", "i" = if (!is.null(hint)) hint), class = class, call = user_call())
  })
}

# What to change when training diverged: mrviAddSamples() trains with the fit's
# `lr`, so there only the new cells' data can be the cause.
divergence_hint <- function() {
  call <- user_call()
  f <- if (is.call(call)) call[[1]]
  name <- if (is.call(f)) as.character(f[[3]]) else if (is.name(f)) as.character(f)
  if (identical(name, "mrviAddSamples")) {
    return("The new samples train with the fit's {.arg lr}: check the new cells' counts and {.arg continuous_covariates} for extreme values (see any {.cls mrvi_extrapolation} warning).")
  }
  "Try a smaller {.arg lr}, or check the counts for extreme values."
}

# The call of the outermost function of this package on the stack: the one the
# user called, however deep the internal helper that failed.
user_call <- function() {
  ns <- environment(user_call)
  for (i in seq_len(sys.nframe())) {
    if (identical(environment(sys.function(i)), ns)) return(sys.call(i))
  }
  NULL
}

# Re-signal input errors as coming from the function the user called.
with_call <- function(expr, call, rename = NULL) {
  tryCatch(expr, mrvi_error = function(e) {
    e$call <- call
    # arguments the caller knows by another name: c(labels = "groups")
    for (from in names(rename)) {
      e$message[] <- gsub(sprintf("`%s`", from), sprintf("`%s`", rename[[from]]), e$message, fixed = TRUE)
    }
    stop(e)
  })
}

# R's own allocation failures ("cannot allocate vector of size ...") while
# assembling a large result, as the package's classed memory error naming it.
with_memory_error <- function(expr, what, call) {
  tryCatch(expr, error = function(e) {
    if (inherits(e, "mrvi_error") || !grepl("cannot allocate", conditionMessage(e))) stop(e)
    abort_arg(c("Not enough memory to assemble {what}.",
                "i" = "Ask for fewer cells or samples, or free memory."),
              class = "mrvi_memory_error", parent = e, call = call)
  })
}
