#' Training curves of a MrVI fit
#'
#' @param x a `MrVIFit`.
#' @param y unused.
#' @param ... unused.
#' @return a ggplot: train and validation ELBO per cell by epoch, with the
#'   restored (best) epoch marked.
#' @examples
#' \donttest{
#' sim <- mrvi:::example_counts()
#' fit <- mrvi(sim$counts, sample = sim$sample, max_epochs = 3, verbose = FALSE)
#' plot(fit)
#' }
#' @export
setMethod("plot", signature("MrVIFit", "missing"), function(x, y, ...) {
  h <- x@history
  long <- rbind(
    data.frame(epoch = h$epoch, set = "train", elbo = h$train_elbo),
    data.frame(epoch = h$epoch, set = "validation", elbo = h$validation_elbo)
  )
  long <- long[is.finite(long$elbo), , drop = FALSE]
  best <- x@config$best_epoch
  p <- ggplot2::ggplot(long, ggplot2::aes(epoch, elbo, colour = set)) +
    ggplot2::geom_line() +
    ggplot2::labs(x = "epoch", y = "ELBO per cell", colour = NULL,
                  title = "MrVI training") +
    ggplot2::theme_minimal()
  if (!is.null(best) && !is.na(best)) {
    p <- p + ggplot2::geom_vline(xintercept = best, linetype = "dashed", colour = "grey50")
  }
  p
})

utils::globalVariables(c("epoch", "elbo", "set"))
