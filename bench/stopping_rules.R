# Early-stopping rules replayed on full training runs (issue 14). With early
# stopping off, a fit's training does not depend on the rule that would have
# stopped it, so one 400-epoch run per seed (bench/validity_training_length.R, which
# writes the per-epoch validation ELBO) shows where each rule stops and which
# epoch's weights it restores. A rule: the KL warm-up (20 epochs), a patience
# (epochs without a better validation ELBO after the warm-up) and a minimum
# number of epochs before a stop may happen. The restored epoch is scored with the
# scores of the nearest scored epoch (an approximation: the scores are taken at
# 60, 80, 100, 125, 150, 200, 250, 300 and 400 epochs).
#   Rscript bench/stopping_rules.R
# Writes bench/results/stopping_rules.csv.
history <- read.csv("bench/results/validity_training_history.csv")
scores <- read.csv("bench/results/validity_training_length.csv")
# the newest scores of each run's epochs (the file also keeps older runs' rows)
scores <- scores[!duplicated(scores[c("design", "seed", "epoch")], fromLast = TRUE), ]
scores <- scores[paste(scores$design, scores$seed) %in% paste(history$design, history$seed), ]

# the epoch a rule stops at and the best epoch it restores
replay <- function(elbo, patience, min_epochs, warmup = 20, max_epochs = length(elbo)) {
  best <- -Inf
  best_epoch <- since <- 0
  for (epoch in seq_len(max_epochs)) {
    if (elbo[epoch] > best) {
      best <- elbo[epoch]
      best_epoch <- epoch
      since <- 0
    } else if (epoch >= warmup) {
      since <- since + 1
      if (since >= patience && epoch >= min_epochs) return(c(stop = epoch, best = best_epoch))
    }
  }
  c(stop = max_epochs, best = best_epoch)
}

rules <- expand.grid(patience = c(15, 30, 45), min_epochs = c(0, 100, 200))
rows <- list()
for (key in unique(paste(history$design, history$seed))) {
  h <- history[paste(history$design, history$seed) == key, ]
  s <- scores[paste(scores$design, scores$seed) == key, ]
  for (r in seq_len(nrow(rules))) {
    at <- replay(h$validation_elbo, rules$patience[r], rules$min_epochs[r])
    scored <- s[which.min(abs(s$epoch - at[["best"]])), ]
    rows[[length(rows) + 1]] <- data.frame(design = h$design[1], seed = h$seed[1], rules[r, ],
      stop_epoch = at[["stop"]], best_epoch = at[["best"]], scored_epoch = scored$epoch,
      scored[grep("_(contrast|spearman|rf)", names(scored))])
  }
}
out <- do.call(rbind, rows)
print(out[, c("design", "seed", "patience", "min_epochs", "stop_epoch", "best_epoch", "scored_epoch",
              "latent_contrast", "latent_spearman_type1", "latent_spearman_type2", "latent_rf_type1", "latent_rf_type2")],
      row.names = FALSE)
write.csv(out, "bench/results/stopping_rules.csv", row.names = FALSE)
