# R's random numbers in the package: every random result is drawn from R's
# default generators seeded by the caller's `seed` (whatever the session's
# RNGkind()), and the session's generator and state are given back after.

# Seed R's default generators, whatever the session's RNGkind().
fixed_rng <- function(seed) {
  set.seed(seed, kind = "Mersenne-Twister", normal.kind = "Inversion", sample.kind = "Rejection")
}

# Save R's random state and give back a function that restores it (with the
# kind of generator, also when there was no state yet). Not restored: the second
# normal of a Box-Muller pair that R holds outside .Random.seed (set.seed() and
# RNGkind() clear it, and R offers no way to read it).
preserve_rng <- function() {
  had <- exists(".Random.seed", envir = globalenv(), inherits = FALSE)
  old <- if (had) get(".Random.seed", envir = globalenv())
  kind <- RNGkind()
  if (!had && exists(".Random.seed", envir = globalenv(), inherits = FALSE)) rm(".Random.seed", envir = globalenv())
  function() {
    # ("Rounding" sampling warns when set)
    suppressWarnings(RNGkind(kind[1], kind[2], kind[3]))
    if (had) assign(".Random.seed", old, envir = globalenv())
    else if (exists(".Random.seed", envir = globalenv(), inherits = FALSE)) rm(".Random.seed", envir = globalenv())
  }
}
