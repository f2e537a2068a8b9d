# Argument checkers shared by the exported functions: each stops with a classed
# error that names the argument and the fix; those for counts return the value
# as an integer.

check_count <- function(n, arg, call) {
  if (!is.numeric(n) || length(n) != 1 || is.na(n) || n < 1 || n != round(n) ||
      n > .Machine$integer.max) {
    abort_arg(c("{.arg {arg}} must be one positive whole number, at most {max_int()}.",
                "x" = "You gave {given(n)}.",
                "i" = "For example {.code {example_setting(arg, 2)}}."), call = call)
  }
  as.integer(n)
}

max_int <- function() .Machine$integer.max

# "n_threads = 2", or for a package option "options(mrvi.threads = 2)".
example_setting <- function(arg, value) {
  if (startsWith(arg, "options(")) sub("\\)$", paste0(" = ", value, ")"), arg) else paste(arg, "=", value)
}

# A factor whose NA level (addNA(), factor(exclude = NULL)) becomes NA values:
# its codes are not NA, so anyNA() and is.na() would miss them.
without_na_level <- function(x) {
  if (is.factor(x) && anyNA(levels(x))) factor(x, levels = levels(x)[!is.na(levels(x))]) else x
}

# What the user gave, for messages: "1e+10", or the type of anything else.
given <- function(v) {
  # (15 digits: 2.0000000001 must not show as the valid 2)
  if (is.numeric(v) && length(v) == 1) format(v, digits = 15) else cli::format_inline("{.obj_type_friendly {v}}")
}

check_positive <- function(v, arg, call) {
  if (!is.numeric(v) || length(v) != 1 || is.na(v) || v <= 0 || !is.finite(v)) {
    abort_arg("{.arg {arg}} must be one positive number.", call = call)
  }
}

# a log2 fold change used as a threshold
check_lfc <- function(v, arg, call) {
  if (!is.numeric(v) || length(v) != 1 || is.na(v) || v < 0 || !is.finite(v)) {
    abort_arg(c("{.arg {arg}} must be one non-negative number (a log2 fold change).",
                "x" = "You gave {given(v)}.", "i" = "For example {.code {arg} = 0.3}."), call = call)
  }
  v
}

check_whole <- function(v, arg, call) {
  if (!is.numeric(v) || length(v) != 1 || is.na(v) || v < 0 || v != round(v) ||
      v > .Machine$integer.max) {
    abort_arg(c("{.arg {arg}} must be one non-negative whole number, at most {max_int()}.",
                "x" = "You gave {given(v)}."), call = call)
  }
  as.integer(v)
}

check_flag <- function(v, arg, call) {
  if (!is.logical(v) || length(v) != 1 || is.na(v)) {
    abort_arg("{.arg {arg}} must be {.code TRUE} or {.code FALSE}.", call = call)
  }
}

check_fit <- function(fit, call) {
  if (!methods::is(fit, "MrVIFit")) {
    abort_arg(c("{.arg fit} must be a {.cls MrVIFit} from {.fn mrvi}.",
                "x" = "You gave {.obj_type_friendly {fit}}."), call = call)
  }
  problems <- methods::validObject(fit, test = TRUE)
  if (is.character(problems)) {
    abort_arg(c("{.arg fit} is inconsistent: its slots were edited or damaged.",
                "x" = "{problems}",
                "i" = "Use the fit as {.fn mrvi} returned it, or re-read it from its file."),
              call = call, class = "mrvi_invalid_fit")
  }
}

match_choice <- function(value, choices, arg, call) {
  if (identical(value, choices)) return(choices[1])
  if (!is.character(value) || length(value) != 1 || !value %in% choices) {
    abort_arg("{.arg {arg}} must be one of {.val {choices}}.", call = call)
  }
  value
}

# The allocation guard: option mrvi.max_bytes (2 GB by default), and sizes as
# "1.9 Gb" in messages.
max_bytes <- function(call = rlang_caller()) {
  v <- getOption("mrvi.max_bytes", 2e9)
  if (!is.numeric(v) || length(v) != 1 || is.na(v) || v <= 0) {
    abort_arg(c("{.code options(mrvi.max_bytes)} must be one positive number of bytes.",
                "i" = "For example {.code options(mrvi.max_bytes = 8e9)}, or {.code NULL} for the default (2e9)."),
              call = call)
  }
  v
}
# Package options read where they are used: unset (NULL) gives the default,
# anything else must be valid, or a classed error names the option. (An NA
# options(mrvi.task_cells) made sampleDistances() silently all NA, and a string
# given for a switch counted as TRUE.)
count_option <- function(name, default, call = user_call()) {
  v <- getOption(name)
  if (is.null(v)) return(default)
  check_count(v, sprintf("options(%s)", name), call)
}

flag_option <- function(name, default, call = user_call()) {
  v <- getOption(name)
  if (is.null(v)) return(default)
  check_flag(v, sprintf("options(%s)", name), call)
  v
}

byte_size <- function(bytes) format(structure(bytes, class = "object_size"), units = "auto")

check_size <- function(bytes, what, call,
                       hint = "Ask for fewer {.arg cells} or {.arg samples}, use {.fn sampleDistances} with {.arg groups} (streamed), or raise {.code options(mrvi.max_bytes = )}.") {
  if (bytes > max_bytes(call)) {
    abort_arg(c("{what} would allocate {byte_size(bytes)}, over the limit of {byte_size(max_bytes())}.",
                "i" = hint), call = call)
  }
}

# Normalised distances estimate each cell's noise floor (mean and sd of the
# distances between its own draws), which takes at least 3 draws.
check_normalize_draws <- function(normalize, mc_samples, call) {
  check_flag(normalize, "normalize", call)
  if (normalize && mc_samples < 3) {
    abort_arg(c("{.arg normalize} = TRUE needs {.arg mc_samples} >= 3 posterior draws.",
                "i" = "For example {.code mc_samples = 10}, or {.code normalize = FALSE}."), call = call)
  }
}

# A renamed argument given under its former name: warn, and use its value.
renamed_arg <- function(value, old, new, call) {
  cli::cli_warn(c("{.arg {old}} is deprecated: use {.arg {new}}.",
                  "i" = "{.arg {old}} will be removed in a later version."),
                class = c("mrvi_deprecated", "mrvi_warning"), call = call)
  value
}

# A writable file path for mrvi()'s checkpoint, made absolute (the working
# directory may change between the run and its resumption).
check_checkpoint <- function(path, call) {
  if (!is.character(path) || length(path) != 1 || is.na(path) || !nzchar(path)) {
    abort_arg("{.arg checkpoint} must be one file path, or {.code NULL}.", call = call)
  }
  path <- normalizePath(path, mustWork = FALSE)
  if (!dir.exists(dirname(path)) || dir.exists(path)) {
    abort_arg(c("{.arg checkpoint} must be a file in an existing folder.",
                "x" = "{.file {path}} is a folder, or its folder does not exist."), call = call)
  }
  # a folder that cannot be written to failed only after the first epoch's training
  probe <- tempfile(".mrvi-probe", tmpdir = dirname(path))
  writable <- suppressWarnings(file.create(probe))
  unlink(probe)
  if (!writable) {
    abort_arg(c("{.arg checkpoint} must be a file in a folder you can write to.",
                "x" = "Cannot create files in {.file {dirname(path)}}."), call = call, class = "mrvi_checkpoint_error")
  }
  remove_stale_writes(path)
  path
}

# A checkpoint is written to `<file>.<pid>.tmp` and renamed; a process killed
# in between (kill -9) leaves that file. Those of processes that are gone are
# removed (Linux: a live process has /proc/<pid>).
remove_stale_writes <- function(path) {
  if (!dir.exists("/proc/self")) return(invisible())
  prefix <- paste0(basename(path), ".")
  files <- list.files(dirname(path), all.files = TRUE)
  files <- files[startsWith(files, prefix) & endsWith(files, ".tmp")]
  pid <- substr(files, nchar(prefix) + 1L, nchar(files) - 4L)
  stale <- files[grepl("^[0-9]+$", pid) & !dir.exists(file.path("/proc", pid))]
  unlink(file.path(dirname(path), stale))
  invisible()
}
