#' Fit MrVI to multi-sample single-cell counts
#'
#' Trains MrVI (Boyeau et al.). The default flavour is `"attention"`, the later
#' MrVI of scvi-tools (see `flavour`); it is the one that keeps sample structure
#' where it is, in data as hard as real studies (`bench/validity.R`: 20,000 cells
#' x 2,000 mostly low genes with 10 planted genes per tree edge in 2 of 5 cell
#' types; see `flavour` for the numbers). Flavour `"linear"` (the paper's):
#' per cell a sample-free state \eqn{u \sim N(0, I_L)} and a sample-aware state
#' \eqn{z = u + A_s\,sg(u) + a_s}; counts are negative binomial with mean
#' \eqn{l \cdot softmax(C z + C_b\,drop(sg(z)) + c_b)} for batch b, gene-wise
#' inverse dispersion and the observed library size l. The encoder
#' \eqn{q(u | x, s)} reads log1p counts with sample-conditional normalisation.
#' Training maximises the ELBO with Adam (weight decay 1e-8, gradient-norm
#' clipping at 40), a linear KL warm-up, a held-out validation set and early
#' stopping that restores the weights of the best validation ELBO.
#' On the CPU a training step takes its gradients in closed form: the
#' likelihood and its gradient in one fused pass, the rest of the model on
#' the host; `options(mrvi.fused_likelihood = FALSE)` lets libtorch's
#' autograd differentiate the whole step instead (slower; for comparison).
#'
#' @inheritParams mrviData
#' @param n_latent dimension L of z for the attention flavour, whose u has
#'   `n_latent_u` dimensions, or of both u and z for the linear flavour. `NULL`
#'   (the default): 30 for the attention flavour, 10 for the linear one.
#' @param max_epochs maximum number of epochs; `NULL` uses
#'   \eqn{min(400, round(20000 / N \cdot 400))}, at least 1.
#' @param batch_size minibatch size.
#' @param lr Adam learning rate. Training that diverges (a loss that is not finite,
#'   or per cell more than 10 times its value at the start) stops with an
#'   error of class `mrvi_divergence_error`.
#' @param n_epochs_kl_warmup epochs over which the KL weight rises linearly
#'   from 0 to 1.
#' @param early_stopping stop when the validation ELBO has not improved for
#'   `patience` epochs after the warm-up (and not before `min_epochs`), and
#'   restore the best weights. The
#'   validation ELBO takes the same posterior draws every epoch, so it moves only
#'   when the model does. The ELBO levels off before the finest sample structure
#'   is learned: `early_stopping = FALSE` (train `max_epochs`) gave better sample
#'   trees in expression space (the default of [sampleDistances()]) on simulations.
#' @param patience see `early_stopping`.
#' @param min_epochs early stopping cannot end training before this many
#'   epochs; `NULL` uses half of `max_epochs`. The validation ELBO can stall for
#'   more than `patience` epochs before a cell type's sample structure is learned:
#'   on `bench/validity.R`'s equal design (seed 3) a fit stopped at epoch 77
#'   without the structure of one of the two affected types, which the same data
#'   shows from about epoch 200 on (`bench/README.md`, session 21). At most
#'   `max_epochs` when both are given.
#' @param validation_fraction share of cells held out for the validation ELBO
#'   (0 turns validation off; early stopping then watches the training ELBO).
#'   The held-out cells are `floor(validation_fraction * cells)` (with
#'   `block_cells` or counts on disk, whole blocks: the fraction of the blocks,
#'   rounded); a fraction too small to hold out one turns validation off in
#'   the same way, with a message giving the smallest fraction that would.
#' @param device `"cpu"`, `"cuda"` (or `"cuda:K"`), or `"auto"` (CUDA when
#'   libtorch sees a GPU, else CPU). The device used is printed.
#' @param n_threads CPU threads for libtorch; `NULL` uses
#'   `getOption("mrvi.threads")`, and when that is unset the cores idle at the
#'   start of the fit (see [mrviBackend()]). The count used is in
#'   `fit@config$n_threads` (several counts for a fit resumed from a
#'   `checkpoint` on another count).
#' @param seed integer seed (0 to 2147483647): a fixed seed gives bit-identical
#'   weights and latents on the same machine with the same thread count
#'   (`n_threads`; pass `fit@config$n_threads` to repeat a fit that used the
#'   default) and device. It does not across CPUs (vector instructions and
#'   libtorch's kernels differ, e.g. AMD vs Intel AVX-512) or thread counts:
#'   results then agree statistically, not bit for bit.
#' @param verbose print the set-up and a progress bar (epoch, time left, training / validation ELBO per cell).
#' @param flavour `"attention"` (the default: the later MrVI, as in scvi-tools'
#'   MRVI) or `"linear"` (the paper's model, above). Attention: u of `n_latent_u` dimensions, z of `n_latent`
#'   (default 30 for this flavour) with \eqn{z = W u + c + \epsilon}, where
#'   \eqn{\epsilon} comes from an attention block between LayerNorm(u) and a
#'   sample embedding and carries the penalty \eqn{\|\epsilon\|^2/2}; the
#'   decoder is \eqn{softmax(Linear(z + r(z, b)))} with r an attention block
#'   against a batch embedding. Everything downstream works for both flavours.
#'   The block of the sample effect differs from scvi-tools' in one layer: its
#'   MLP reads the sample embedding directly as well as through the attention,
#'   whose softmax-weighted means pass a sample on as a few smooth functionals
#'   of its embedding's coordinates (the fitted sample effects then lie in 4-5
#'   directions, too few for a deep sample tree). On `bench/validity.R`'s
#'   designs this cut the sample trees' error by 40\% (`bench/README.md`, session 26);
#'   `options(mrvi.sample_context = FALSE)` fits scvi-tools' block (fits made
#'   before keep theirs).
#'   The decoder's block reads the batch embedding directly in the same way when
#'   the nuisance varies (two or more batch levels, or a continuous covariate):
#'   with two crossed batch factors scvi-tools' block explained the four level
#'   combinations only in part and the sample effects took up the rest, which
#'   scrambled the sample tree (normalised RF 0.85-0.92 against 0.00 with one
#'   factor; with the direct path 0.00, `bench/README.md`, session 27);
#'   `options(mrvi.nuisance_context = FALSE)` fits scvi-tools' decoder block.
#'   Each sample also has a free term of 32 values in the sample-effect block's
#'   hidden layer, beside its 16-value embedding, which every cell type's sample
#'   structure shares: on the eight validity datasets the trees' mean normalised RF
#'   fell from 0.41 to 0.30, with Spearman >= 0.8 in 15 of 16 trees (session 27);
#'   `options(mrvi.sample_hidden_term = FALSE)` fits without it. These three
#'   options, when set, must be `TRUE` or `FALSE`.
#'   What the default does not reach (`bench/README.md`, "Validity"): on
#'   `bench/validity.R`'s ultrametric design (genes per edge proportional to its
#'   length: about a third of its internal edges carry 1-5 genes) the average-linkage tree's
#'   normalised RF to the true tree is 0.28-0.59 per tree (session 35) and its mean 0.36-0.44 over the
#'   ten trees in sessions 31-35 (AMD EPYC): not <= 0.3 on every tree. A pseudobulk
#'   oracle that is told the planted genes and weights them by precision reaches
#'   <= 0.3 on 5 of those 10 trees (`bench/validity_ceiling.R`). Spearman with the
#'   true distances is >= 0.8 on 14 of 16 trees (misses 0.76 and 0.80, session 35).
#'   A wider z finds more of the few-gene splits but follows the true distances
#'   less: `n_latent = 40` gave ultrametric mean RF 0.31 and Spearman >= 0.8 on 9 of
#'   10 ultrametric trees and none of 6 equal ones (session 36): for trees over
#'   distances, it is an option.
#'   On `bench/validity.R`'s ultrametric design (seeds 1-3, `bench/README.md`)
#'   the linear flavour's distances correlate with the true ones as well
#'   (Spearman 0.82-0.88 against 0.70-0.87), but its sample effects leak into the
#'   unaffected cell types (affected / unaffected mean distance 2.0-2.1x against
#'   6.5-8.7x), so tests of a sample covariate flag cells there: guided per-cell
#'   tests at FDR 0.45-0.69 (attention: at most 0.002; the test of the time, on latent distances) and differential
#'   expression in 26-39\% of the unaffected cells (attention: none). It misses
#'   issue 14's targets on contrast, FDR and DE, which the attention flavour meets.
#' @param n_latent_u dimension of u for the attention flavour (ignored by the
#'   linear flavour, whose u has `n_latent` dimensions), at least 2: the
#'   sample effect reads LayerNorm(u), which is constant for a u of one
#'   dimension (every cell would get the same sample effect).
#' @param prior prior on u: `"mog"`, a mixture of diagonal Gaussians over whole
#'   vectors (default for the attention flavour; with `labels`, one component per
#'   label and each cell's weights biased towards its label), or `"normal"`
#'   (default for the linear flavour).
#' @param n_mixture mixture components when no labels are given.
#' @param continuous_covariates optional numeric nuisance covariates (see
#'   [mrviData()]).
#'
#' @section Nuisance covariates: `batch` may hold several categorical
#'   covariates (sites and chemistries, plates and runs) and
#'   `continuous_covariates` numeric ones (standardised with the training cells'
#'   mean and sd, kept in the fit). They enter the decoder only, never the
#'   sample-aware state z: the levels of all categorical covariates share one
#'   table of batch parameters and a cell adds its levels' entries; a continuous
#'   covariate x acts like a batch scaled by x (linear flavour: \eqn{x (D\,
#'   drop(sg(z)) + d)}; attention flavour: \eqn{x e} added to the batch
#'   embedding and \eqn{x d} to the logits). With one categorical covariate the
#'   model is exactly the one
#'   above. `fit@config$nuisance` lists the covariates (`factors`: levels per
#'   covariate; `continuous`: name, center, scale) and `fit@cell_data` keeps
#'   their values (one covariate as `batch`, several under their names).
#' @param block_cells `NULL`, or a number of cells: train on blocks of that
#'   many consecutive cells (see "Counts on disk"). `NULL`: counts in memory
#'   shuffle all cells every epoch; counts on disk are read in blocks that fill
#'   `DelayedArray::getAutoBlockSize()` with dense doubles (at most a 20th of the cells).
#' @param checkpoint `NULL`, or a file path: the training state (weights, the
#'   optimiser's moments, the shuffling generator, the early-stopping state and
#'   the history) is written there after every epoch, to a temporary file that
#'   then replaces it, so that a job killed at any moment leaves the last
#'   complete epoch. When the file exists, `mrvi()` resumes from it and ends
#'   bit-identical to an uninterrupted run on the CPU (same machine, thread
#'   count and device). The call must give the same data and arguments; only
#'   `max_epochs` may differ (a larger value trains on, unless the run had
#'   stopped early: it is returned as it stopped, where an uninterrupted run
#'   with the larger `max_epochs`, whose default `min_epochs` is half of it, may
#'   have trained longer), and `min_epochs`, which only decides from which epoch
#'   a stop may happen, is not checked. A checkpoint made with other data or arguments, one holding more
#'   epochs than `max_epochs`, and a damaged one (its checksum, over the weights
#'   and the state, does not match) are refused with an error of class
#'   `mrvi_checkpoint_error`; delete the file to train afresh (counts on disk
#'   are recognised by their totals per cell and per gene, which a few values
#'   moved between cells and genes can leave unchanged). Checkpoints
#'   written before the checksum existed still resume, unchecked. A different
#'   `n_threads` (e.g. on another machine) is accepted with a warning of class
#'   `mrvi_threads_changed`: the fit is then bit-identical to no uninterrupted
#'   run, and `fit@config$n_threads` holds every count used, in order; another
#'   device (a CPU checkpoint resumed on a GPU) likewise, with a warning of class
#'   `mrvi_device_changed`. The file
#'   is kept after training: calling again returns the same fit without
#'   training.
#'
#' @section Counts on disk: counts given as a `DelayedArray` (an `HDF5Matrix`, a
#'   `TENxMatrix`, an HDF5-backed `SingleCellExperiment`; see [mrviData()]) are
#'   never read whole. Training then shuffles by blocks, which keeps reads
#'   sequential: the cells are cut into blocks of `block_cells` consecutive
#'   cells; every epoch visits the training blocks in a random order,
#'   `getOption("mrvi.buffer_blocks", 8)` at a time, and shuffles the cells
#'   within each such buffer; the validation cells are whole blocks (a random
#'   `validation_fraction` of the blocks, rounded), so that validation reads
#'   only them. The posterior of u is then computed block by block. With the
#'   same `block_cells` (the fit keeps it, and the number of blocks per buffer, in
#'   `fit@config$train`), counts in memory give the same fit bit for bit (same
#'   machine and threads), so `block_cells` also lets counts in memory use this
#'   shuffle. When cells are stored sorted by sample, a minibatch holds the
#'   samples of a few blocks only; `bench/block_shuffle.R` found no loss in the
#'   validation ELBO or the sample trees on simulated data sorted by sample.
#'   While the model trains on one buffer of 5e7 counts (cells x genes) or more,
#'   the next is read in a forked process (on Linux and macOS; a fork costs more
#'   than reading a smaller buffer; `options(mrvi.disk_prefetch = TRUE)` forks
#'   every read, `FALSE` none): the same counts and the same fit, with
#'   the reading (for a dense HDF5 dataset mostly decompression) overlapped
#'   with training. The default thread count then leaves one idle core to the
#'   reader.
#'
#' @section Interrupting: Ctrl-C is checked between minibatches and after each
#'   epoch. Training then stops cleanly: when at least one epoch has finished,
#'   `mrvi()` returns the model with the weights of the best epoch so far
#'   (without early stopping, of the last complete epoch) and a warning of class
#'   `mrvi_interrupted` (`fit@config$interrupted` is `TRUE`); before that it
#'   signals an error. The session keeps running and the input is untouched.
#'   With `checkpoint`, the same call resumes after the last complete epoch.
#'
#' @return a [MrVIFit-class] object.
#' @references Boyeau P, Hong J, Gayoso A, Jordan MI, Azizi E, Yosef N (2022).
#'   Deep generative modeling for quantifying sample-level heterogeneity in
#'   single-cell omics. bioRxiv 2022.10.04.510898.
#' @examples
#' sim <- mrvi:::example_counts()
#' fit <- mrvi(sim$counts, sample = sim$sample, max_epochs = 2, verbose = FALSE)
#' fit
#' head(mrviLatent(fit))
#' @export
mrvi <- function(x, sample, batch = NULL, labels = NULL, assay = "counts", n_latent = NULL,
                 max_epochs = NULL, batch_size = 256, lr = 2e-3, n_epochs_kl_warmup = 20,
                 early_stopping = TRUE, patience = 15, min_epochs = NULL, validation_fraction = 0.1,
                 device = "auto", n_threads = NULL, seed = 1, verbose = TRUE,
                 flavour = c("attention", "linear"), n_latent_u = 10, prior = c("mog", "normal"),
                 n_mixture = 20, continuous_covariates = NULL, checkpoint = NULL, block_cells = NULL, ...) {
  call <- sys.call()
  check_required(call)
  check_dots(..., .fn = "mrvi")
  flavour <- match_choice(flavour, c("attention", "linear"), "flavour", call)
  # flavour-dependent defaults: the paper's L = 10 with a normal prior; the later
  # MrVI's z of 30 dimensions with a mixture-of-Gaussians prior
  if (is.null(n_latent)) n_latent <- if (flavour == "attention") 30 else 10
  # (the whole default vector, as a wrapper passes its own default on, is missing too)
  prior <- if (missing(prior) || identical(prior, c("mog", "normal"))) (if (flavour == "attention") "mog" else "normal") else
    match_choice(prior, c("mog", "normal"), "prior", call)
  n_latent <- check_count(n_latent, "n_latent", call)
  n_latent_u <- if (flavour == "attention") check_count(n_latent_u, "n_latent_u", call) else n_latent
  if (flavour == "attention" && n_latent_u < 2) {
    abort_arg(c("{.arg n_latent_u} must be at least 2 for the attention flavour.",
                "x" = "You gave {n_latent_u}: LayerNorm(u), which the sample effect reads, is constant for a u of one dimension, so every cell would get the same sample effect.",
                "i" = "For example {.code n_latent_u = 10} (the default)."), call = call)
  }
  n_mixture <- check_count(n_mixture, "n_mixture", call)
  if (!is.null(max_epochs)) max_epochs <- check_count(max_epochs, "max_epochs", call)
  batch_size <- check_count(batch_size, "batch_size", call)
  if (batch_size < 2) abort_arg("{.arg batch_size} must be at least 2.", call = call)
  check_positive(lr, "lr", call)
  n_epochs_kl_warmup <- check_whole(n_epochs_kl_warmup, "n_epochs_kl_warmup", call)
  patience <- check_count(patience, "patience", call)
  if (!is.null(min_epochs)) min_epochs <- check_whole(min_epochs, "min_epochs", call)
  if (!is.null(min_epochs) && !is.null(max_epochs) && min_epochs > max_epochs) {
    abort_arg(c("{.arg min_epochs} = {min_epochs} is more than {.arg max_epochs} = {max_epochs}.",
                "i" = "Training never passes {.arg max_epochs}: give a {.arg min_epochs} of at most {max_epochs}, or a larger {.arg max_epochs}."),
              call = call)
  }
  check_flag(early_stopping, "early_stopping", call)
  check_flag(verbose, "verbose", call)
  if (!is.numeric(validation_fraction) || length(validation_fraction) != 1 ||
      is.na(validation_fraction) || validation_fraction < 0 || validation_fraction >= 0.5) {
    abort_arg("{.arg validation_fraction} must be one number in [0, 0.5).", call = call)
  }
  seed <- check_whole(seed, "seed", call)
  # (checked here: NA is not NULL, the default)
  if (!is.null(n_threads)) n_threads <- check_count(n_threads, "n_threads", call)
  device_used <- resolve_device(device, call)
  if (!is.null(checkpoint)) checkpoint <- check_checkpoint(checkpoint, call)
  if (!is.null(block_cells)) block_cells <- check_count(block_cells, "block_cells", call)

  data <- with_call(mrviData(x, sample = sample, batch = batch, labels = labels, assay = assay,
                             continuous_covariates = continuous_covariates), call)
  if (nrow(data$counts) < 2) {
    abort_arg(c("{.arg x} must have at least 2 genes with counts; it has {nrow(data$counts)}.",
                "i" = paste("The model decodes expression proportions over the genes: over one gene they are 1 in every",
                            "cell and sample, and every sample distance would be 0. Give the count matrix of all genes.")),
              call = call)
  }
  check_covariates_vary(data, call)
  nuisance <- nuisance_design(data)
  labels_given <- !is.null(data$labels)
  check_model_size(nrow(data$counts), nlevels(data$sample), sum(nuisance$levels) + ncol(nuisance$continuous),
                   n_latent, n_latent_u, batch_size, ncol(data$counts),
                   n_components = if (prior == "mog") (if (labels_given) nlevels(data$labels) else n_mixture) else 0,
                   labels_given = labels_given, call = call)
  counts <- data$counts
  on_disk <- !is.null(data$disk)
  if (on_disk && is.null(block_cells)) block_cells <- disk_block_cells(counts)
  buffer_blocks <- if (!is.null(block_cells)) count_option("mrvi.buffer_blocks", 8L, call)
  # counts on disk read by a forked process: by default one core is left to it
  forked <- on_disk && disk_prefetch(min(as.numeric(block_cells) * buffer_blocks, ncol(counts)) * nrow(counts))
  threads <- apply_threads(n_threads, call = call, reserved = as.integer(forked))
  note_no_validation(validation_fraction, ncol(counts), block_cells)
  blocks <- if (!is.null(block_cells)) {
    list(block_cells = block_cells, buffer_blocks = buffer_blocks)
  }
  # everything chosen for the fit crosses to Rust as one object (Settings in
  # src/rust/mrvi-core/src/model/config.rs)
  settings <- list(
    model = list(flavour = flavour, prior = prior, n_latent = n_latent, n_latent_u = n_latent_u,
                 n_mixture = n_mixture,
                 # the attention flavour's blocks also read their context directly
                 # (see `flavour`); fits made before keep their blocks. TRUE or
                 # FALSE only: "FALSE", 0 or NA used to count as TRUE silently
                 sample_context = flag_option("mrvi.sample_context", TRUE, call),
                 nuisance_context = flag_option("mrvi.nuisance_context", TRUE, call),
                 sample_hidden_term = flag_option("mrvi.sample_hidden_term", TRUE, call)),
    train = list(max_epochs = max_epochs, batch_size = batch_size, lr = lr,
                 n_epochs_kl_warmup = n_epochs_kl_warmup, early_stopping = early_stopping,
                 patience = patience, min_epochs = min_epochs, validation_fraction = validation_fraction,
                 seed = seed, fused_likelihood = fused_likelihood_option(call), blocks = blocks)
  )
  codes <- function(f) if (is.null(f)) integer(0) else as.integer(f) - 1L
  # with the size guard lifted, building the model can still run out of memory:
  # name the arguments that set its size
  # counts on disk stay there: the trainer gets cells without counts, and reads
  # blocks through `reader` every epoch
  slots <- if (on_disk) list(p = integer(ncol(counts) + 1), i = integer(), x = numeric()) else
    list(p = counts@p, i = counts@i, x = counts@x)
  trainer <- tryCatch(mrvi_trainer_new(
    nrow(counts), ncol(counts), slots$p, slots$i, slots$x,
    codes(data$sample), nuisance$site, codes(data$labels),
    nlevels(data$sample), nuisance$levels, nuisance$continuous, nlevels(data$labels), settings, device_used
  ), mrvi_memory_error = function(e) {
    abort_arg(c("Not enough memory to build a model with {.arg n_latent} = {n_latent}, {.arg n_latent_u} = {n_latent_u} and {.arg batch_size} = {batch_size} for {nrow(counts)} genes.",
                "i" = "Choose a smaller {.arg n_latent} (MrVI uses 10 to 30), or free memory."),
              class = "mrvi_memory_error", parent = e, call = call)
  })
  rm(slots)
  reader <- NULL
  if (on_disk) {
    mrvi_trainer_counts_on_disk(trainer, data$library_size, data$gene_total)
    reader <- block_reader(data$disk)
  }
  info <- mrvi_trainer_info(trainer)
  # (the default max_epochs depends on the cells: known from the trainer)
  if (!is.null(min_epochs) && is.null(max_epochs) && min_epochs > info$max_epochs) {
    abort_arg(c("{.arg min_epochs} = {min_epochs} is more than the default {.arg max_epochs} for {ncol(counts)} cells, {info$max_epochs}.",
                "i" = "Training never passes {.arg max_epochs}: give a {.arg min_epochs} of at most {info$max_epochs}, or a larger {.arg max_epochs}."),
              call = call)
  }
  # (not with a checkpoint: another warm-up would be other settings, refused on resuming)
  if (verbose && is.null(checkpoint) && n_epochs_kl_warmup > info$max_epochs) {
    shorter <- info$max_epochs %/% 2
    inform(c("i" = paste("{.arg max_epochs} = {info$max_epochs} ends before the KL warm-up ({.arg n_epochs_kl_warmup} = {n_epochs_kl_warmup}):",
                         "the KL weight only reaches {signif(info$max_epochs / n_epochs_kl_warmup, 2)}",
                         "{if (early_stopping) ', and early stopping, which waits for the warm-up, cannot act' else ''}."),
             "i" = "For the full ELBO, give {.arg n_epochs_kl_warmup} = {if (shorter > 0) paste(shorter, 'or less') else '0 (no warm-up)'}, or more epochs."))
  }
  if (verbose) {
    inform(c("i" = paste0("Training MrVI on {ncol(counts)} cells x {nrow(counts)} genes, ",
                          "{nlevels(data$sample)} samples, {describe_nuisance(nuisance$spec)}; ",
                          "device {.strong {info$device}}, {threads} thread{?s}, ",
                          "up to {info$max_epochs} epoch{?s}.")))
    if (!is.null(blocks)) {
      inform(c("i" = paste0("Shuffling by blocks of {blocks$block_cells} cells, {blocks$buffer_blocks} at a time",
                            "{if (on_disk) ', read from disk' else ''}.")))
    }
  }
  resumed <- if (!is.null(checkpoint) && file.exists(checkpoint)) mrvi_trainer_resume(trainer, checkpoint) else
    list(epochs = list(), threads = integer())
  if (verbose && length(resumed$epochs)) {
    inform(c("i" = "Resuming from {.file {checkpoint}} after epoch {length(resumed$epochs)}."))
  }
  # the result depends on the thread count (minibatch shards): a resumed run on
  # another count goes on, but is then bit-identical to no uninterrupted run
  threads_used <- threads
  # (a run that had finished trains nothing more: the fit is the checkpoint's)
  finished <- length(resumed$epochs) && isTRUE(resumed$epochs[[length(resumed$epochs)]]$done)
  if (finished && length(resumed$threads)) {
    threads_used <- resumed$threads
  } else if (length(resumed$threads) && any(resumed$threads != resumed$threads_now)) {
    # every count in the order used (1, 2, 1 stays so); a run going on with the
    # last count adds nothing
    threads_used <- c(resumed$threads, if (resumed$threads[length(resumed$threads)] != resumed$threads_now) resumed$threads_now)
    cli::cli_warn(c("The checkpoint's epochs ran with {cli::qty(length(resumed$threads))}thread count{?s} {paste(resumed$threads, collapse = ', ')}; this call uses {resumed$threads_now}.",
                    "i" = "The fit is not bit-identical to an uninterrupted run on either count; {.code fit@config$n_threads} records all of them.",
                    "i" = if (length(resumed$threads) == 1) "Give {.arg n_threads} = {resumed$threads} to resume exactly."),
                  class = c("mrvi_threads_changed", "mrvi_warning"), call = call)
  }
  # (another device computes other bits: a CPU checkpoint resumed on a GPU)
  if (!finished && length(resumed$devices) && any(resumed$devices != resumed$device_now)) {
    cli::cli_warn(c("The checkpoint's epochs ran on {.val {unique(resumed$devices)}}; this call uses {.val {resumed$device_now}}.",
                    "i" = "The fit is not bit-identical to an uninterrupted run on either device."),
                  class = c("mrvi_device_changed", "mrvi_warning"), call = call)
  }
  # Ctrl-C from here on never loses the epochs trained (see through_interrupts())
  late <- FALSE
  fit <- through_interrupts({
    trained <- train_to_end(trainer, info, verbose, call, resumed$epochs, checkpoint, reader)
    run <- trained$run
    done <- trained$done
    history <- trained$history
    new_mrvi_fit(data, done$weights, info$model_config, info$device, history,
      config = list(seed = seed, flavour = flavour, prior = prior,
                    train = list(n_latent = n_latent, n_latent_u = n_latent_u, max_epochs = info$max_epochs,
                                 batch_size = batch_size, lr = lr,
                                 n_epochs_kl_warmup = n_epochs_kl_warmup,
                                 early_stopping = early_stopping, patience = patience,
                                 min_epochs = info$min_epochs, validation_fraction = validation_fraction,
                                 # (chosen for counts on disk: what repeats the fit in memory)
                                 block_cells = blocks$block_cells, buffer_blocks = blocks$buffer_blocks),
                    best_epoch = if (early_stopping) done$best_epoch else nrow(history),
                    stopped_early = done$stopped_early, interrupted = run$interrupted,
                    n_threads = threads_used, assay = assay_name(x, assay), seurat_assay = data$seurat_assay, columns = data$columns,
                    # the cells given, dropped ones included: addMrVI() matches an
                    # object without cell names by position only if it has as many
                    n_input_cells = length(data$sample) + length(data$dropped$cells))
    )
  }, function() late <<- TRUE)
  warn_interrupted(run$interrupted, late || run$late, length(run$history) + 1, fit@config$best_epoch)
  fit
}

# Runs `expr` to its end through one Ctrl-C: the first interrupt calls
# `on_interrupt()` (of the innermost call, when they nest) and is resumed; a
# second one stops the call, as Ctrl-C always does (a read from disk that hangs
# must stay interruptible). Training stops after the epoch the first came in
# (train_epochs()); after the last epoch, the fit is put together whole (an
# interrupt in the posterior's encoding had discarded every epoch trained).
# Nested calls (train_epochs() within mrvi()) share whether one was seen: each
# holding its own, the outer one resumed the second interrupt too.
through_interrupts <- function(expr, on_interrupt) {
  if (is.null(interrupts$seen)) {
    interrupts$seen <- FALSE
    on.exit(interrupts$seen <- NULL)
  }
  withCallingHandlers(expr, interrupt = function(cnd) {
    if (interrupts$seen) return()  # (a calling handler that returns lets the interrupt go on)
    interrupts$seen <- TRUE
    on_interrupt()
    invokeRestart("resume")
  })
}
interrupts <- new.env(parent = emptyenv())

# The warning of a run interrupted at epoch `epoch`, or after its last epoch
# (`late`).
warn_interrupted <- function(interrupted, late, epoch, best_epoch, what = "Training") {
  if (interrupted) {
    cli::cli_warn(c("{what} was interrupted at epoch {epoch}.",
                    "i" = "Returning the model with the weights of epoch {best_epoch}."),
                  class = c("mrvi_interrupted", "mrvi_warning"))
  } else if (late) {
    cli::cli_warn(c("{what} was interrupted after its last epoch: the fit was completed first, and is returned whole.",
                    "i" = "It holds every epoch; the interrupt only came while the fit was put together (a second Ctrl-C stops at once)."),
                  class = c("mrvi_interrupted", "mrvi_warning"))
  }
}

# Train to the end: the run (history, interrupted), what the trainer returns
# (weights, best epoch) and the history as a data.frame.
train_to_end <- function(trainer, info, verbose, call, resumed = list(), checkpoint = NULL, reader = NULL) {
  if (!is.null(reader)) on.exit(reader$close())
  run <- train_epochs(trainer, info$max_epochs, verbose, resumed, checkpoint, reader)
  failed <- if (!is.null(reader)) reader$failure()
  if (!is.null(failed)) {
    abort_arg(c("Reading the counts from disk failed during training.", "x" = conditionMessage(failed),
                "i" = "Check that the file behind {.arg x} is still there and readable, then call again."),
              parent = failed, class = "mrvi_io_error", call = call)
  }
  if (run$interrupted && !length(run$history)) {
    abort_arg("Training was interrupted before its first epoch finished: no model to return.",
              call = call, class = "mrvi_interrupted")
  }
  done <- mrvi_trainer_finish(trainer)
  history <- do.call(rbind, lapply(run$history, function(s) {
    as.data.frame(s[setdiff(names(s), c("done", "stopped_early", "interrupted", "interrupted_after"))])
  }))
  list(run = run, done = done, history = history)
}

# The epoch loop runs in R so that the progress bar and Ctrl-C stay responsive;
# each epoch runs in Rust, which checks for Ctrl-C between minibatches. `history`
# holds the epochs of a resumed run; `checkpoint` is written after every epoch;
# `reader` (block_reader()) reads counts on disk (NULL: in memory).
train_epochs <- function(trainer, max_epochs, verbose, history = list(), checkpoint = NULL, reader = NULL) {
  interrupted <- FALSE
  finished <- length(history) && isTRUE(history[[length(history)]]$done)
  fmt <- function(v) if (is.finite(v)) formatC(v, format = "f", digits = 1) else "-"
  if (verbose) {
    pb <- cli::cli_progress_bar(
      total = max_epochs, clear = FALSE,
      # the time left before the ELBOs (training / validation), all within a
      # log's 80 columns, which cut the line's end
      format = paste("Epoch {cli::pb_current}/{cli::pb_total} {cli::pb_bar} {cli::pb_eta_str} |",
                     "ELBO {elbo_train} / {elbo_val}"),
      .envir = environment()
    )
    elbo_train <- elbo_val <- "-"
    cli::cli_progress_update(id = pb, set = length(history))
  }
  # Ctrl-C within an epoch is seen by the trainer (s$interrupted: the epoch is
  # dropped); one that R sees between its calls (in the checkpoint's write, the
  # progress bar, a read from disk) stops the run after the epoch
  caught <- FALSE
  through_interrupts(while (!finished) {
    s <- mrvi_trainer_epoch(trainer, reader$read)
    if (isTRUE(s$interrupted)) {
      interrupted <- TRUE
      break
    }
    history[[length(history) + 1]] <- s
    if (!is.null(checkpoint)) mrvi_trainer_save(trainer, checkpoint)
    if (verbose) {
      elbo_train <- fmt(s$train_elbo)
      elbo_val <- fmt(s$validation_elbo)
      cli::cli_progress_update(id = pb, set = s$epoch)
    }
    finished <- s$done
    # Ctrl-C after the epoch's last minibatch: the epoch is complete, stop after it
    if ((isTRUE(s$interrupted_after) || caught) && !finished) {
      interrupted <- TRUE
      break
    }
  }, function() caught <<- TRUE)
  if (verbose) {
    # a run that ended before max_epochs (stopped early, interrupted) ends its
    # bar where it stopped: done, the bar would show every epoch as trained
    cli::cli_progress_done(id = pb, result = if (length(history) < max_epochs) "failed" else "done")
    last <- if (length(history)) history[[length(history)]] else list()
    if (isTRUE(last$stopped_early)) {
      watched <- if (is.finite(last$validation_elbo)) "validation" else "training"  # (no validation cells)
      inform(c("i" = "Stopped early after epoch {last$epoch}: the {watched} ELBO stopped improving."))
    }
  }
  # (an interrupt in the last epoch's R part: training had ended, the warning says so)
  list(history = history, interrupted = interrupted, late = caught && !interrupted)
}

fit_cell_data <- function(data) {
  # covariate names as given ("pct mito"): the fit's nuisance specification keeps them so
  df <- data.frame(sample = data$sample, nuisance_columns(data), row.names = colnames(data$counts), check.names = FALSE)
  if (!is.null(data$labels)) df$labels <- data$labels
  if (!is.null(data$cell_meta)) {
    extra <- setdiff(names(data$cell_meta), names(df))
    keep <- vapply(data$cell_meta[extra], function(v) is.atomic(v) && is.null(dim(v)), logical(1))
    df <- cbind(df, data$cell_meta[extra[keep]])
  }
  df
}

latent_matrix <- function(values, cells, prefix) {
  m <- if (is.matrix(values)) values else matrix(values, nrow = length(cells))
  dimnames(m) <- list(cells, paste0(prefix, seq_len(ncol(m))))
  m
}

# A validation_fraction that holds out no cell (the trainer takes
# floor(fraction x cells), or round(fraction x blocks) with block_cells) turns
# validation off as validation_fraction = 0 does: say so, and (`hint`) the
# smallest fraction that holds out one.
note_no_validation <- function(fraction, n_cells, block_cells = NULL, hint = TRUE,
                               given = "{.arg validation_fraction} = {fraction}") {
  blocks <- !is.null(block_cells)
  units <- if (blocks) ceiling(n_cells / block_cells) else n_cells
  # (blocks held out: rounded half away from zero, as the trainer's f64::round;
  # R's round() takes half to even)
  held_of <- function(f) if (blocks) floor(units * f + 0.5) else floor(units * f)
  held <- held_of(fraction)
  if (fraction == 0 || held > 0) return(invisible())
  what <- if (blocks) "block" else "cell"
  # at 3 digits, rounded up until it does hold one out
  smallest <- (if (blocks) 0.5 else 1) / units
  step <- 10^(floor(log10(smallest)) - 2)
  smallest <- ceiling(smallest / step) * step
  while (held_of(smallest) < 1) smallest <- smallest + step
  inform(c("i" = paste(given, "holds out none of the {units} {what}{if (units == 1) '' else 's'}: validation is off, as with",
                       "{.code validation_fraction = 0} (early stopping watches the training ELBO)."),
           "i" = if (hint && smallest < 0.5) "The smallest {.arg validation_fraction} that holds out one {what} is {smallest}."))
}

# The size of the model and its training state (weights, gradients, Adam's two
# moments: 16 bytes per parameter) and of a minibatch, checked before libtorch
# allocates: a huge n_latent is an argument error, not an allocation failure. The error blames the first argument whose default (or a
# usual value) would make it fit: batch_size, the mixture prior's components
# (n_mixture, or one per label), n_latent_u; else n_latent.
check_model_size <- function(n_genes, n_samples, n_batches, n_latent, n_latent_u, batch_size, n_cells,
                             n_components, labels_given, call) {
  limit <- max_bytes(call)
  bytes <- function(L = n_latent, Lu = n_latent_u, B = batch_size, K = n_components) {
    hidden <- 128  # the encoder's width (ModelConfig::n_hidden)
    L <- as.numeric(L); Lu <- as.numeric(Lu); K <- as.numeric(K)
    # a minibatch holds at most every cell, but the estimate keeps at least the
    # default's 256 rows: the encodings after training run in chunks of that
    # order however few the cells (24 cells at n_latent = 1e6 took 5.7 GB)
    B <- min(as.numeric(B), max(n_cells, 256))
    params <- n_genes * (hidden + L + n_batches + 2) + hidden * (hidden + 2 * Lu) +
      n_samples * (Lu * L + L + hidden) + Lu * L + K * (2 * Lu + 1)
    # per cell: counts and rates over the genes, the layers, the mixture's densities
    c(model = 16 * params, batch = 4 * B * (3 * n_genes + 4 * (L + Lu + hidden) + 4 * K))
  }
  now <- bytes()
  if (sum(now) <= limit) return(invisible())
  if (sum(bytes(B = 256)) <= limit) {
    abort_arg(c("{.arg batch_size} = {batch_size} makes minibatches of {byte_size(now[['batch']])} to train on, over the limit of {byte_size(limit)} with the model.",
                "i" = "Choose a smaller {.arg batch_size} (the default is 256), or raise {.code options(mrvi.max_bytes = )}."),
              call = call)
  }
  if (n_components > 20 && sum(bytes(K = 20)) <= limit) {
    abort_arg(c(if (labels_given) "{.arg labels} has {n_components} levels: the mixture prior, one component per label, makes a model of {byte_size(sum(now))} to train, over the limit of {byte_size(limit)}."
                else "{.arg n_mixture} = {n_components} makes a model of {byte_size(sum(now))} to train, over the limit of {byte_size(limit)}.",
                "i" = if (labels_given) "Give {.arg labels} of fewer levels (cell types, not cells), or {.code prior = \"normal\"}."
                      else "Choose fewer components (the default is 20), or {.code prior = \"normal\"}."),
              call = call)
  }
  if (n_latent_u != n_latent && sum(bytes(Lu = 10)) <= limit) {
    abort_arg(c("{.arg n_latent_u} = {n_latent_u} makes a model of {byte_size(sum(now))} to train, over the limit of {byte_size(limit)}.",
                "i" = "Choose a smaller {.arg n_latent_u} (the default is 10)."), call = call)
  }
  abort_arg(c("{.arg n_latent} = {n_latent}{if (n_latent_u != n_latent) paste0(' (with n_latent_u = ', n_latent_u, ')') else ''} makes a model of {byte_size(sum(now))} to train (with its minibatches, for {n_genes} genes), over the limit of {byte_size(limit)}.",
              "i" = "MrVI uses latent dimensions of 10 to 30: choose a smaller {.arg n_latent} (or fewer genes, or raise {.code options(mrvi.max_bytes = )})."),
            call = call)
}

# options(mrvi.fused_likelihood = FALSE): on the CPU, let autograd differentiate
# the whole step instead of the fused kernel and the host passes (slower; for comparison).
fused_likelihood_option <- function(call) flag_option("mrvi.fused_likelihood", TRUE, call)

# The assay `mrvi()` read, as the fit records it: by name where the assays have
# names (a position names another assay in an object whose assays are ordered
# otherwise), else as given.
assay_name <- function(x, assay) {
  if (!is.numeric(assay) || !methods::is(x, "SummarizedExperiment")) return(assay)
  name <- SummarizedExperiment::assayNames(x)[assay]
  if (length(name) == 1 && !is.na(name) && nzchar(name)) name else assay
}
