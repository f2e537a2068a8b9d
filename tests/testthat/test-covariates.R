# Several nuisance covariates, categorical and continuous (issue 20).

# the model's JSON configuration, read without a JSON package
jsonlite_free_config <- function(fit) {
  json <- fit@config$model_json
  levels <- regmatches(json, regexpr('"batch_levels":\\[[0-9,]*\\]', json))
  list(batch_levels = as.numeric(strsplit(gsub("[^0-9,]", "", levels), ",")[[1]]),
       n_continuous = as.numeric(sub('.*"n_continuous":([0-9]+).*', "\\1", json)))
}

crossed_fit <- local({
  cache <- list()
  function(flavour) {
    if (is.null(cache[[flavour]])) {
      cache[[flavour]] <<- mrvi(crossed_data(), sample = "sample", batch = c("site", "chemistry"),
                                continuous_covariates = "mito", flavour = flavour, max_epochs = 3,
                                n_threads = 1, verbose = FALSE)
    }
    cache[[flavour]]
  }
})

test_that("several nuisance covariates are stored, shown and decoded, in both flavours", {
  sce <- crossed_data()
  for (flavour in c("linear", "attention")) {
    fit <- crossed_fit(flavour)
    spec <- fit@config$nuisance
    expect_equal(spec$factors, list(site = levels(sce$site), chemistry = levels(sce$chemistry)))
    expect_equal(spec$continuous$name, "mito")
    expect_equal(spec$continuous$center, mean(sce$mito))
    expect_equal(spec$continuous$scale, sd(sce$mito))
    expect_equal(fit@batches, c("site:site1", "site:site2", "chemistry:chem1", "chemistry:chem2"))
    expect_identical(fit@cell_data$chemistry, sce$chemistry)
    expect_output(show(fit), "nuisance: site \\(2 levels\\), chemistry \\(2 levels\\); continuous: mito")
    model <- jsonlite_free_config(fit)
    expect_equal(model$batch_levels, c(2, 2))
    expect_equal(model$n_continuous, 1)

    cells <- 1:6
    own <- counterfactualExpression(fit, cells, fit@samples[1])
    expect_equal(unname(colSums(own)), rep(1, 6), tolerance = 1e-5)
    # the cells' own levels and values, given explicitly, are the default
    explicit <- counterfactualExpression(fit, cells, fit@samples[1],
                                         batch = list(site = sce$site[cells], chemistry = sce$chemistry[cells]),
                                         continuous = list(mito = sce$mito[cells]))
    expect_equal(explicit, own, tolerance = 1e-6)
    # averaging over a covariate's levels is the mean of the expression under each
    each <- lapply(levels(sce$site), function(l) counterfactualExpression(fit, cells, fit@samples[1], batch = list(site = l)))
    expect_equal(counterfactualExpression(fit, cells, fit@samples[1], average = "site"),
                 (each[[1]] + each[[2]]) / 2, tolerance = 1e-7)
    # every covariate changes the decoded expression
    expect_gt(max(abs(each[[1]] - each[[2]])), 0)
    chem <- counterfactualExpression(fit, cells, fit@samples[1], batch = list(chemistry = "chem2"))
    expect_gt(max(abs(chem - counterfactualExpression(fit, cells, fit@samples[1], batch = list(chemistry = "chem1")))), 0)
    high <- counterfactualExpression(fit, cells, fit@samples[1], continuous = c(mito = 0.3))
    expect_gt(max(abs(high - own)), 0)
    # z does not see them: the counterfactual latent has no nuisance input, and
    # u and z of a cell are those of mrviLatent
    expect_equal(dim(counterfactualLatent(fit, cells = 1:2)), c(2L, 6L, fit@config$train$n_latent))

    f <- tempfile(fileext = ".rds")
    saveRDS(fit, f)
    back <- readRDS(f)
    expect_identical(counterfactualExpression(back, cells, fit@samples[2], average = TRUE),
                     counterfactualExpression(fit, cells, fit@samples[2], average = TRUE))
    expect_s3_class(sampleSplitGenes(fit, fit@samples[1:2], cells = 1:30, mc_samples = 0), "data.frame")
  }
})

test_that("covariates given as columns, a data.frame or a list give the same fit", {
  sce <- crossed_data()
  args <- list(sample = "sample", flavour = "linear", max_epochs = 2, n_threads = 1, verbose = FALSE)
  a <- do.call(mrvi, c(list(sce, batch = c("site", "chemistry"), continuous_covariates = "mito"), args))
  b <- do.call(mrvi, c(list(sce, batch = data.frame(site = sce$site, chemistry = sce$chemistry),
                            continuous_covariates = list(mito = sce$mito)), args))
  expect_identical(a@weights, b@weights)
  # one covariate, however given, is the single batch of before
  one <- do.call(mrvi, c(list(sce, batch = "site"), args))
  listed <- do.call(mrvi, c(list(sce, batch = list(site = sce$site)), args))
  expect_identical(one@weights, listed@weights)
  expect_equal(one@batches, levels(sce$site))
  expect_output(show(one), "batches: 2")
  expect_equal(one@config$nuisance$factors, list(batch = levels(sce$site)))
  # per-sample factors given as vectors are sample covariates, as columns of the metadata are
  m <- mrviData(SingleCellExperiment::counts(sce), sample = sce$sample,
                batch = data.frame(site = sce$site, chemistry = sce$chemistry))
  expect_equal(m$sample_table[c("sample", "site", "chemistry")],
               mrviData(sce, sample = "sample", batch = c("site", "chemistry"))$sample_table[c("sample", "site", "chemistry")])
  # several factors are their own columns, not also their combination
  expect_false("batch" %in% names(m$sample_table))
  expect_output(print(mrviData(sce, sample = "sample", batch = c("site", "chemistry"), continuous_covariates = "mito")),
                "batch:   site \\(2 levels\\), chemistry \\(2 levels\\).*continuous covariates: mito")
  expect_false("batch" %in% names(mrviData(sce, sample = "sample", batch = c("site", "chemistry"))$sample_table))
})

test_that("bad covariates are refused naming the argument", {
  sce <- crossed_data()
  chem <- as.character(sce$chemistry)
  chem[3] <- NA
  expect_error(mrvi(sce, sample = "sample", batch = list(site = sce$site, chemistry = chem), verbose = FALSE),
               "batch\\$chemistry.*NA", class = "mrvi_error")
  mito <- sce$mito
  mito[5] <- Inf
  expect_error(mrvi(sce, sample = "sample", continuous_covariates = list(mito = mito), verbose = FALSE),
               "continuous_covariates\\$mito.*infinite", class = "mrvi_error")
  mito[5] <- NA
  expect_error(mrvi(sce, sample = "sample", continuous_covariates = list(mito = mito), verbose = FALSE),
               "continuous_covariates\\$mito.*NA", class = "mrvi_error")
  expect_error(mrvi(sce, sample = "sample", continuous_covariates = list(flat = rep(2, ncol(sce))), verbose = FALSE),
               "continuous_covariates\\$flat.*constant", class = "mrvi_error")
  expect_error(mrvi(sce, sample = "sample", continuous_covariates = list(word = rep(c("a", "b"), 300)), verbose = FALSE),
               "continuous_covariates\\$word.*numeric", class = "mrvi_error")
  # a continuous covariate named as a categorical one was read back as it
  expect_error(mrvi(sce, sample = "sample", batch = "site", continuous_covariates = data.frame(batch = sce$mito), verbose = FALSE),
               "reserved for them", class = "mrvi_error")
  expect_error(mrvi(sce, sample = "sample", batch = data.frame(x = sce$site, chem = sce$chemistry),
                    continuous_covariates = data.frame(x = sce$mito), verbose = FALSE), "\"x\"", class = "mrvi_error")
  expect_error(mrvi(sce, sample = "sample", batch = list(site = sce$site, one = rep("x", ncol(sce))), verbose = FALSE),
               "batch\\$one.*constant", class = "mrvi_error")
  expect_error(mrvi(sce, sample = "sample", batch = list(sample = sce$site, b = sce$chemistry), verbose = FALSE),
               "reserved", class = "mrvi_error")
  expect_error(mrvi(sce, sample = "sample", batch = c("site", "nope"), verbose = FALSE),
               "batch\\$nope", class = "mrvi_error")
  fit <- crossed_fit("linear")
  expect_error(counterfactualExpression(fit, 1:2, fit@samples[1], batch = "site1"), "named list", class = "mrvi_error")
  expect_error(counterfactualExpression(fit, 1:2, fit@samples[1], batch = list(plate = "p1")), "batch", class = "mrvi_error")
  expect_error(counterfactualExpression(fit, 1:2, fit@samples[1], batch = list(site = "site9")), "site9", class = "mrvi_error")
  expect_error(counterfactualExpression(fit, 1:2, fit@samples[1], average = "plate"), "average", class = "mrvi_error")
  expect_error(counterfactualExpression(fit, 1:2, fit@samples[1], batch = list(site = "site1"), average = "site"),
               "both", class = "mrvi_error")
  expect_error(counterfactualExpression(fit, 1:2, fit@samples[1], continuous = list(mito = Inf)),
               "continuous\\$mito", class = "mrvi_error")
  expect_error(counterfactualExpression(fit, 1:2, fit@samples[1], continuous = list(mito = 1e300)),
               "continuous\\$mito. is too far from the fitted values", class = "mrvi_error")
  # beyond 10 sd of the fitted cells the decoder extrapolates: allowed, with a warning
  mito <- mrvi:::fit_nuisance(fit)$continuous
  far <- mito$center + 12 * mito$scale
  expect_warning(counterfactualExpression(fit, 1:2, fit@samples[1], continuous = list(mito = far)),
                 "continuous\\$mito. has values up to 12 standard deviations", class = "mrvi_extrapolation")
  expect_no_warning(counterfactualExpression(fit, 1:2, fit@samples[1], continuous = list(mito = mito$center + 3 * mito$scale)))
  # a scale of 0 (an edited fit) made every output NaN
  flat <- fit
  flat@config$nuisance$continuous$scale <- 0
  expect_error(counterfactualExpression(flat, 1:2, fit@samples[1]), "scale that is not positive", class = "mrvi_invalid_fit")
})

test_that("u mixes every nuisance covariate of a crossed design, and the sample distances keep them out", {
  # Two crossed batch factors (site, chemistry; each sample in one of each) and a
  # technical covariate acting on a tenth of the genes; the default flavour.
  # Mean silhouette width of u by each factor within cell types, over simulation
  # and fit seeds 1..5 (AMD EPYC, 1 thread): site 0.029 / 0.035 / 0.065 / 0.038 /
  # 0.043, chemistry 0.041 / 0.082 / 0.041 / 0.043 / 0.031 (a factor that u
  # separated would score towards 1). The bound leaves a margin over the worst seed.
  # That a fit ignoring chemistry is worse shows only at the scale of
  # bench/covariates.R (bench/README.md).
  sce <- simulateNested(1500, 150, n_samples = 8, n_sites = 2, n_cell_types = 2, n_affected = 1,
                        seed = 1, n_chemistries = 2, technical = 1)
  fit <- mrvi(sce, sample = "sample", batch = c("site", "chemistry"), continuous_covariates = "mito",
              max_epochs = 150, seed = fit_seed(1), n_threads = 1, verbose = FALSE)
  u <- mrviLatent(fit)
  silhouette_within_types <- function(f) {
    mean(vapply(split(seq_len(nrow(u)), sce$cell_type), function(j) {
      mean(cluster::silhouette(as.integer(droplevels(f[j])), dist(u[j, ]))[, "sil_width"])
    }, numeric(1)))
  }
  expect_lt(abs(silhouette_within_types(sce$site)), 0.15)
  expect_lt(abs(silhouette_within_types(sce$chemistry)), 0.15)

  # The sample distances keep the nuisance out: in type2, where no sample effect
  # was planted, pairs across a factor's levels are no farther apart than pairs
  # within them, and type2's mean distance stays a small share of type1's. Over
  # simulation and fit seeds 1..5, and over fit seeds 1..5 on this simulation (Intel
  # Xeon, 1 thread): largest across / within ratio 1.05-1.25, type2 / type1
  # 0.11-0.18; with scvi-tools' decoder block
  # (options(mrvi.nuisance_context = FALSE)) the sample effects took up site or
  # chemistry: ratios 3.0-7.2, type2 / type1 0.49-0.62 (bench/README.md, issue 20).
  d <- sampleDistances(fit, groups = "cell_type", mc_samples = 0)
  quiet <- d[, , "type2"]
  up <- upper.tri(quiet)
  design <- S4Vectors::metadata(sce)$truth$sample_table
  across_over_within <- function(factor) {
    level <- stats::setNames(design[[factor]], design$sample)
    same <- outer(level[rownames(quiet)], level[colnames(quiet)], "==")
    mean(quiet[up & !same]) / mean(quiet[up & same])
  }
  expect_lt(across_over_within("site"), 2)
  expect_lt(across_over_within("chemistry"), 2)
  mean_distance <- function(m) mean(m[upper.tri(m)])
  expect_lt(mean_distance(quiet) / mean_distance(d[, , "type1"]), 0.3)
})

test_that("differential expression's largest |LFC| averages expression over every combination of nuisance levels", {
  for (flavour in c("linear", "attention")) {
    fit <- crossed_fit(flavour)
    z <- mrviLatent(fit, which = "z")[1:20, ]
    shift <- matrix(rep(seq(-0.6, 0.6, length.out = ncol(z)), each = nrow(z)), nrow(z))
    hi <- z + shift
    lo <- z - shift
    # what R reduces from the genes x cells matrices of decode_expression()
    want <- apply(abs(log2(mrvi:::decode_expression(fit, hi) / mrvi:::decode_expression(fit, lo))), 2, max)
    grid <- mrvi:::level_grid(fit, c("site", "chemistry"))
    expect_equal(dim(grid), c(4L, 2L))
    got <- mrvi:::mrvi_largest_lfc(mrvi:::native_model(fit), hi, lo, as.integer(t(grid)))
    expect_identical(got, unname(want))
    expect_true(all(got > 0.05))
    # a single setting is not the average
    one <- mrvi:::mrvi_largest_lfc(mrvi:::native_model(fit), hi, lo, as.integer(grid[1, ]))
    expect_false(isTRUE(all.equal(one, got)))
  }
})

test_that("continuous covariates given as text or too large to standardise are refused", {
  sce <- crossed_data()
  n <- ncol(sce)
  expect_error(mrvi(sce, sample = "sample", continuous_covariates = as.character(sce$mito), verbose = FALSE),
               "`continuous_covariates` must be numeric", class = "mrvi_error")
  # the sd of 1e200 overflows: standardised, the covariate would be 0 everywhere
  expect_error(mrvi(sce, sample = "sample", continuous_covariates = list(mito = c(1e200, sce$mito[-1])),
                    verbose = FALSE),
               "continuous_covariates\\$mito.*too large to standardise", class = "mrvi_error")
  # values that vary on a scale of 1e-170: the variance underflows (it was called constant)
  expect_error(mrvi(sce, sample = "sample", continuous_covariates = list(mito = sce$mito * 1e-170), verbose = FALSE),
               "continuous_covariates\\$mito.*too small to standardise", class = "mrvi_error")
  expect_error(mrvi(sce, sample = "sample", continuous_covariates = list(mito = rep(1e-170, n)), verbose = FALSE),
               "continuous_covariates\\$mito.*is constant", class = "mrvi_error")
  # new cells: standardised with the fit's mean and sd, they must stay finite in single precision
  fit <- crossed_fit("linear")
  new <- sce[, 1:30]
  colnames(new) <- paste0("new", 1:30)
  new$sample <- "s_new"
  new$mito <- 1e200
  expect_error(mrviAddSamples(fit, new, sample = "sample", batch = c("site", "chemistry"),
                              continuous_covariates = "mito", max_epochs = 1),
               "continuous_covariates\\$mito.*too far from the fitted", class = "mrvi_error")
  new$mito <- max(sce$mito) + 20 * sd(sce$mito)
  expect_warning(mrviAddSamples(fit, new, sample = "sample", batch = c("site", "chemistry"),
                                continuous_covariates = "mito", max_epochs = 1, verbose = FALSE),
                 "continuous_covariates\\$mito. has values up to", class = "mrvi_extrapolation")
})
