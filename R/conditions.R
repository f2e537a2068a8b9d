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
