# A catalogue of bad calls and faults. Each must stop with an error of class
# "mrvi_error" (or a documented subclass) whose message names the argument at
# fault, must leave the objects it was given unchanged, and must leave R running
# (calls that could take R down run in a child R process).
old_options <- options(mrvi.threads = 1)
m <- small_counts()
s <- small_samples()
labs <- rep(c("t1", "t2"), length.out = 24)  # varies within samples: a per-cell column
fit <- mrvi(m, flavour = "linear", s, labels = labs, max_epochs = 2, n_threads = 1, seed = 1, verbose = FALSE)
other <- mrvi(m, flavour = "linear", s, max_epochs = 2, n_threads = 1, seed = 2, verbose = FALSE)
neg <- m; neg[1, 1] <- -1
frac <- m; frac[2, 3] <- 0.5
nonfinite <- m; nonfinite[3, 4] <- NA
dup_genes <- m; rownames(dup_genes)[2:3] <- "gene1"
dup_cells <- m; colnames(dup_cells)[5] <- "cell1"
bad_slots <- m; bad_slots@i[1] <- 1000L  # a dgCMatrix edited by hand
new_genes <- m; rownames(new_genes) <- paste0("other", seq_len(nrow(m)))
lgl_na <- replace(rep(TRUE, 24), 3, NA)
d3 <- sampleDistances(fit, groups = "labels", mc_samples = 0, min_cells = 1)

# Each case: the call, a regular expression its message must match (naming the
# argument), and the class expected besides "mrvi_error".
bad_calls <- list(
  # mrviData(): x
  list(quote(mrviData(list(1), s)), "`x`.*class <list>"),
  list(quote(mrviData(letters, s)), "`x`"),
  list(quote(mrviData(matrix("a", 2, 2), 1:2)), "`x` must be a numeric matrix"),
  list(quote(mrviData(neg, sample = s)), "`x` must hold raw counts: 1 value is negative.*gene1, cell1"),
  list(quote(mrviData(frac, sample = s)), "`x` must hold raw counts: 1 value is not whole.*gene2, cell3"),
  list(quote(mrviData(nonfinite, sample = s)), "`x` must hold raw counts: 1 value is missing"),
  list(quote(mrviData(dup_genes, sample = s)), "`x` has duplicated gene names: 'gene1'"),
  list(quote(mrviData(dup_cells, sample = s)), "`x` has duplicated cell names: 'cell1'"),
  list(quote(mrviData(`rownames<-`(m, replace(rownames(m), 2, NA)), sample = s)), "`x` has 1 missing or empty gene name, e.g. gene 2"),
  list(quote(mrviData(`colnames<-`(m, replace(colnames(m), 3, "")), sample = s)), "`x` has 1 missing or empty cell name, e.g. cell 3"),
  list(quote(mrviData(m[0, ], s)), "`x` has 0 genes"),
  list(quote(mrviData(m[, 0], character())), "`x` has 30 genes and 0 cells"),
  list(quote(mrviData(m * 0, s)), "`x` has no counts"),
  # mrviData(): sample, batch, labels, ...
  list(quote(mrviData(m)), "`sample` is required"),
  list(quote(mrviData(m, sample = "donor")), "`sample`.*column name"),
  list(quote(mrviData(m, sample = s[-1])), "`sample` must have one value per cell"),
  list(quote(mrviData(Matrix::t(m), sample = s)), "`sample`.*cells x genes"),
  list(quote(mrviData(m, sample = replace(s, 2, NA))), "`sample` has 1 NA"),
  list(quote(mrviData(m, sample = rep("A", 24))), "`sample` must have at least 2 samples"),
  list(quote(mrviData(m, sample = list(1))), "`sample`"),
  list(quote(mrviData(m, sample = data.frame(a = s))), "`sample` must be a column name or a vector"),
  list(quote(mrviData(m, sample = matrix(s))), "`sample` must be a column name or a vector"),
  list(quote(mrviData(m, sample = s, batch = replace(s, 3, NA))), "`batch` has 1 NA"),
  list(quote(mrviData(m, sample = s, batch = "site")), "`batch` = \"site\" looks like a column name"),
  list(quote(mrviData(m, sample = s, batch = 1:3)), "`batch` must have one value per cell"),
  list(quote(mrviData(m, sample = s, labels = s[1:3])), "`labels` must have one value per cell"),
  list(quote(mrviData(m, sample = s, labels = replace(s, 1, NA))), "`labels` has 1 NA"),
  list(quote(mrviData(m, sample = s, foo = 1)), "Unknown argument.*`foo`"),
  list(quote(mrviData(sample = s)), "`x` is required"),
  list(quote(mrviData(bad_slots, sample = s)), "`x` is not a valid sparse matrix: CSC row indices.*sparseMatrix"),
  # mrvi(): every argument is checked before training
  list(quote(mrvi(sample = s)), "`x` is required"),
  list(quote(mrvi(m[1, , drop = FALSE], s)), "`x` must have at least 2 genes with counts; it has 1"),
  # abbreviated names: R would take n_epochs for n_epochs_kl_warmup
  list(quote(mrvi(m, s, n_epochs = 50)), "`n_epochs` is not an argument: R would take it for `n_epochs_kl_warmup`"),
  list(quote(sampleDistances(fit, mc = 3)), "`mc` is not an argument: R would take it for `mc_samples`"),
  # (ambiguous among all arguments, but not among those left: R takes it for n_sites)
  list(quote(simulateNested(100, 20, n_samples = 4, n_s = 1)), "`n_s` is not an argument: R would take it for `n_sites`"),
  list(quote(mrviAddSamples(x = m, sample = s)), "`fit` is required"),
  list(quote(mrviSetThreads()), "`n` is required"),
  list(quote(mrvi(m, s, n_latent = 0)), "`n_latent`"),
  list(quote(mrvi(m, s, n_latent = 1.5)), "`n_latent`"),
  list(quote(mrvi(m, s, n_latent = "10")), "`n_latent`"),
  list(quote(mrvi(m, s, n_latent = NA)), "`n_latent`"),
  list(quote(mrvi(m, s, n_latent = c(2, 3))), "`n_latent`"),
  list(quote(mrvi(m, s, n_latent = 1e9)), "`n_latent` = 1000000000 .*makes a model"),
  list(quote(mrvi(m, s, n_latent = 1e10)), "`n_latent`.*at most 2147483647"),
  list(quote(mrvi(m, s, n_latent = 20000, flavour = "linear")), "`n_latent` = 20000 makes a model"),
  list(quote(mrvi(m, s, max_epochs = -1)), "`max_epochs`"),
  list(quote(mrvi(m, s, max_epochs = 1e10)), "`max_epochs`.*at most 2147483647"),
  list(quote(mrvi(m, s, max_epochs = Inf)), "`max_epochs`"),
  list(quote(mrvi(m, s, batch_size = 1)), "`batch_size`"),
  list(quote(mrvi(m, s, batch_size = 1e10)), "`batch_size`"),
  list(quote(mrvi(m, s, lr = -1)), "`lr`"),
  list(quote(mrvi(m, s, lr = Inf)), "`lr`"),
  list(quote(mrvi(m, s, lr = "fast")), "`lr`"),
  list(quote(mrvi(m, s, n_epochs_kl_warmup = -1)), "`n_epochs_kl_warmup`"),
  list(quote(mrvi(m, s, n_epochs_kl_warmup = 1e10)), "`n_epochs_kl_warmup`"),
  list(quote(mrvi(m, s, early_stopping = NA)), "`early_stopping`"),
  list(quote(mrvi(m, s, early_stopping = "yes")), "`early_stopping`"),
  list(quote(mrvi(m, s, patience = 0)), "`patience`"),
  list(quote(mrvi(m, s, patience = 1e10)), "`patience`"),
  list(quote(mrvi(m, s, min_epochs = -1)), "`min_epochs`"),
  list(quote(mrvi(m, s, min_epochs = "ten")), "`min_epochs`"),
  list(quote(mrvi(m, s, block_cells = 0)), "`block_cells`"),
  list(quote(mrvi(m, s, flavour = "attention", n_mixture = 2e7)), "`n_mixture` = 20000000 makes a model of"),
  list(quote(mrvi(m, s, flavour = "attention", labels = paste0("c", 1:24), n_mixture = 2, n_latent_u = 1e6)),
       "`n_latent_u` = 1000000 makes a model of"),
  list(quote(mrvi(m, s, block_cells = "all")), "`block_cells`"),
  list(quote(mrvi(m, s, validation_fraction = 0.9)), "`validation_fraction`"),
  list(quote(mrvi(m, s, validation_fraction = -0.1)), "`validation_fraction`"),
  list(quote(mrvi(m, s, validation_fraction = NA)), "`validation_fraction`"),
  list(quote(mrvi(m, s, device = "tpu")), "`device`.*unknown device"),
  list(quote(mrvi(m, s, device = 1)), "`device`"),
  list(quote(mrvi(m, s, device = c("cpu", "cuda"))), "`device`"),
  list(quote(mrvi(m, s, n_threads = 0)), "`n_threads`"),
  list(quote(mrvi(m, s, n_threads = 1e10)), "`n_threads`.*at most 2147483647"),
  list(quote(mrvi(m, s, n_threads = "many")), "`n_threads`"),
  list(quote(mrvi(m, s, seed = 1.5)), "`seed`"),
  list(quote(mrvi(m, s, seed = 1e10)), "`seed`.*at most 2147483647.*1e\\+10"),
  list(quote(mrvi(m, s, seed = -1)), "`seed`"),
  list(quote(mrvi(m, s, seed = NA)), "`seed`"),
  list(quote(mrvi(m, s, verbose = NA)), "`verbose`"),
  list(quote(mrvi(m, s, flavour = "cubic")), "`flavour`"),
  list(quote(mrvi(m, s, prior = "uniform")), "`prior`"),
  list(quote(mrvi(m, s, n_mixture = 0)), "`n_mixture`"),
  list(quote(mrvi(m, s, flavour = "attention", n_latent_u = 0)), "`n_latent_u`"),
  list(quote(mrvi(m, s, foo = 1)), "Unknown argument.*`foo`.*mrvi::mrvi\\(\\)"),
  list(quote(mrvi(m, s, maxepochs = 3)), "Unknown argument.*`maxepochs`.*Did you mean `max_epochs`"),
  list(quote(mrvi(m, sample = s[-1])), "`sample` must have one value per cell"),
  list(quote(mrvi(dup_genes, s)), "`x` has duplicated gene names"),
  list(quote(mrvi(dup_cells, s)), "`x` has duplicated cell names"),
  # mrviLatent()
  list(quote(mrviLatent("not a fit")), "`fit` must be a <MrVIFit>"),
  list(quote(mrviLatent(NULL)), "`fit` must be a <MrVIFit>"),
  list(quote(mrviLatent(fit, which = "w")), "`which`"),
  list(quote(mrviLatent(fit, use_mean = NA)), "`use_mean`"),
  list(quote(mrviLatent(fit, x = m)), "`sample` is required"),
  list(quote(mrviLatent(fit, x = m, sample = rep("Z", 24))), "`sample` has sample.*not fitted on"),
  list(quote(mrviLatent(fit, x = dup_cells, sample = s)), "`x` has duplicated cell names"),
  list(quote(mrviLatent(fit, x = new_genes, sample = s)), "`x` shares no gene names"),
  # counterfactualLatent()
  list(quote(counterfactualLatent(fit, cells = 0)), "`cells`"),
  list(quote(counterfactualLatent(fit, cells = "nope")), "`cells`.*not among the fitted cells"),
  list(quote(counterfactualLatent(fit, cells = NA)), "`cells`"),
  list(quote(counterfactualLatent(fit, cells = lgl_na)), "`cells` has 1 NA"),
  list(quote(counterfactualLatent(fit, cells = 1.5)), "`cells`"),
  list(quote(counterfactualLatent(fit, samples = "Z")), "`samples`"),
  list(quote(counterfactualLatent(fit, samples = 99)), "`samples`"),
  list(quote(counterfactualLatent(fit, mc_samples = 1e10)), "`mc_samples`.*at most 2147483647"),
  list(quote(counterfactualLatent(fit, mc_samples = -1)), "`mc_samples`"),
  list(quote(counterfactualLatent(fit, use_mean = "no")), "`use_mean`"),
  list(quote(counterfactualLatent(fit, mc_samples = 2e9)), "counterfactualLatent\\(\\) would allocate"),
  list(quote(cellAssociation(fit, c(A = "a", B = "b", C = "b"), cells = c(2, 1, 2))), "`cells` selects 1 cell more than once"),
  # sampleDistances()
  list(quote(sampleDistances(fit, min_cells = 1e10)), "`min_cells`.*at most 2147483647"),
  list(quote(sampleDistances(fit, min_cells = -1)), "`min_cells`"),
  list(quote(sampleDistances(fit, mc_samples = 1e10)), "`mc_samples`"),
  list(quote(sampleDistances(fit, normalize = TRUE, mc_samples = 0)), "`normalize` = TRUE needs `mc_samples`"),
  list(quote(sampleDistances(fit, normalize = NA)), "`normalize`"),
  list(quote(sampleDistances(fit, space = "genes")), "`space` must be one of"),
  list(quote(cellAssociation(fit, covariate = "nope", space = "genes")), "`space` must be one of"),
  list(quote(sampleTreeSupport(fit, NULL, space = "z")), "`space` must be one of"),
  list(quote(sampleDistances(fit, max_cells = 0)), "`max_cells`"),
  list(quote(sampleDistances(fit, max_cells = NA)), "`max_cells`"),
  list(quote(sampleDistances(fit, groups = "nope")), "`groups` = \"nope\" is not a column"),
  list(quote(sampleDistances(fit, groups = s[1:3])), "`groups` must have one value per fitted cell"),
  list(quote(sampleDistances(fit, groups = rep(NA, 24))), "`groups` has no non-NA value"),
  list(quote(sampleDistances(fit, groups = "sample", cells = 1:2)), "`groups` or `cells`"),
  list(quote(sampleDistances(fit, chunk_size = 0)), "`chunk_size`"),
  list(quote(sampleDistances(fit, chunk_size = 1e10)), "`chunk_size`"),
  # draws that one cell's working memory cannot hold (R was killed for memory)
  list(quote(sampleDistances(fit, mc_samples = 2e9)), "`mc_samples` = 2000000000 would allocate .* per cell"),
  list(quote(sampleDistances(fit, cells = 1, mc_samples = 2e9)), "`mc_samples` = 2000000000 would allocate"),
  list(quote(sampleDistances(fit, normalize = TRUE, mc_samples = 1e5)), "`mc_samples` = 100000 would allocate"),
  list(quote(cellAssociation(fit, c(A = "a", B = "b", C = "b"), mc_samples = 2e9)), "`mc_samples` = 2000000000 would allocate"),
  list(quote(sampleTreeSupport(fit, "labels", mc_samples = 2e9, B = 2)), "`mc_samples` = 2000000000 would allocate"),
  list(quote(sampleSplitGenes(fit, "A", mc_samples = 2e9)), "sampleSplitGenes\\(\\) would allocate.*`mc_samples`"),
  list(quote(sampleDistances(fit, cells = lgl_na)), "`cells` has 1 NA"),
  list(quote(sampleDistances(fit, admissible = "yes")), "`admissible` must be"),
  list(quote(sampleDistances(fit, admissible = matrix(TRUE, 2, 2))), "`admissible` must be"),
  list(quote(sampleDistances("not a fit")), "`fit` must be a <MrVIFit>"),
  # sampleHclust() / sampleDist()
  list(quote(sampleHclust("x")), "`d` must be the result of `sampleDistances\\(\\)`"),
  list(quote(sampleHclust(d3)), "`group` is required"),
  list(quote(sampleHclust(d3, group = "nope")), "`group` = \"nope\" is not a group"),
  list(quote(sampleHclust(d3, group = 5)), "`group` must be one group name of `d` or one whole number in 1..2"),
  list(quote(sampleDist(matrix(NA_real_, 3, 3))), "Fewer than 2 samples"),
  # covariate tests
  list(quote(cellAssociation(fit, covariate = "labels")), "`covariate` = \"labels\" varies within samples"),
  list(quote(cellAssociation(fit, covariate = "nope")), "`covariate` = \"nope\" is not a column.*no covariates"),
  list(quote(cellAssociation(fit, covariate = c(A = "x", B = "y"))), "`covariate` has no value for 1 fitted sample"),
  list(quote(groupAssociation(fit, covariate = "labels")), "`covariate` = \"labels\" varies within samples"),
  list(quote(groupAssociation(fit, "x", permutations = 1e10)), "`permutations`"),
  list(quote(groupAssociation(fit, "x", seed = 1e10)), "`seed`"),
  list(quote(groupAssociation(fit, "x", seed = NA)), "`seed`"),
  list(quote(groupAssociation(unname(sampleDistances(fit, mc_samples = 0)), c(A = "a", B = "b", C = "b"))),
       "`fit_or_distances` has no sample names"),
  list(quote(groupAssociation(1:3, "x")), "`fit_or_distances`"),
  list(quote(differentialAbundance(fit, covariate = "labels")), "`covariate` = \"labels\" varies within samples"),
  list(quote(differentialAbundance(fit, "x", seed = 1e10)), "`seed`"),
  list(quote(admissibility(fit, seed = 1e10)), "`seed`"),
  list(quote(admissibility(fit, quantile = 2)), "`quantile`"),
  list(quote(admissibility(fit, max_cells_per_sample = 0)), "`max_cells_per_sample`"),
  list(quote(differentialExpression(fit, "x", seed = 1e10)), "`seed`"),
  list(quote(differentialExpression(fit, "x", mc_samples = 1e10)), "`mc_samples`"),
  list(quote(differentialExpression(fit, "x", delta = -1)), "`delta`"),
  list(quote(differentialExpression(fit, "x", lfc_threshold = -1)), "`lfc_threshold`"),
  list(quote(counterfactualExpression(fit, cells = 1:2, sample = "Z")), "`sample` has value.*not fitted on"),
  list(quote(counterfactualExpression(fit, cells = lgl_na, sample = "A")), "`cells` has 1 NA"),
  list(quote(cellAssociation(fit, c(A = "a", B = "b", C = "b"), cells = rep(FALSE, 24))), "`cells` selects no cell"),
  list(quote(differentialExpression(fit, data.frame(sample = c("A", "B", "C"), x = c(1, 2, 4)), cells = rep(FALSE, 24))),
       "`cells` selects no cell"),
  # an empty selection is refused by every function that takes `cells`, and
  # sample indices are whole numbers
  list(quote(admissibility(fit, cells = integer(0))), "`cells` selects no cell"),
  list(quote(differentialAbundance(fit, c(A = "a", B = "b", C = "b"), cells = character(0))), "`cells` selects no cell"),
  list(quote(sampleDistances(fit, cells = integer(0))), "`cells` selects no cell"),
  list(quote(sampleDistances(fit, cells = rep(FALSE, 24))), "`cells` selects no cell"),
  list(quote(counterfactualExpression(fit, integer(0), "A")), "`cells` selects no cell"),
  list(quote(counterfactualLatent(fit, cells = character(0))), "`cells` selects no cell"),
  list(quote(sampleSplitGenes(fit, "A", cells = rep(FALSE, 24))), "`cells` selects no cell"),
  list(quote(sampleSplitGenes(fit, c(A = TRUE, B = TRUE), cells = 1:3)), "A logical `samples_a` needs FALSE samples"),
  list(quote(sampleSplitGenes(fit, "A", samples_b = character(0), cells = 1:3)), "`samples_b` is empty: give at least one sample"),
  list(quote(counterfactualLatent(fit, cells = 1, samples = character(0))), "`samples` must be .* \\(at least one\\)"),
  list(quote(counterfactualLatent(fit, cells = 1, samples = 1.5)), "`samples` must be .*whole indices"),
  list(quote(local({ old <- options(mrvi.max_bytes = 1000); on.exit(options(old)); sampleDistances(fit, groups = seq_len(24), min_cells = 1, mc_samples = 0) })),
       "sampleDistances\\(groups = \\) with 24 groups would allocate"),
  list(quote(sampleTreeSupport(fit, "labels", B = 2e9, mc_samples = 0, normalize = FALSE, min_cells = 1)), "sampleTreeSupport\\(\\) would allocate.*`B`"),
  list(quote(cellAssociation(fit, c(A = "a", B = "b", C = "b"), permutations = 2e9)), "cellAssociation\\(\\) with 2000000000 permutations would allocate"),
  list(quote(groupAssociation(fit, c(A = "a", B = "b", C = "b"), groups = "labels", permutations = 2e9)),
       "groupAssociation\\(\\) with 2000000000 permutations would allocate"),
  # required arguments left out are named (base R said "argument ... is missing")
  list(quote(counterfactualExpression(fit, sample = "A")), "`cells` is required"),
  list(quote(sampleTreeSupport(fit, B = 5)), "`groups` is required"),
  list(quote(compositionDistances(m, s)), "`groups` is required"),
  list(quote(treeDistance()), "`hc` and `truth` are required"),
  list(quote(sampleHclust()), "`d` is required"),
  # per-cell distances where group distances are expected are named as such
  list(quote(sampleHclust(sampleDistances(fit, cells = 1:3, mc_samples = 0))), "`d` holds per-cell distances"),
  list(quote(plotSampleDistances(sampleDistances(fit, cells = 1:3, mc_samples = 0), group = 1)), "per-cell distances"),
  list(quote(groupAssociation(sampleDistances(fit, cells = 1:3, mc_samples = 0), c(A = "a", B = "b", C = "b"))),
       "`fit_or_distances` holds per-cell distances"),
  list(quote(compareSampleDistances(list(m = sampleDistances(fit, cells = 1:3, mc_samples = 0)),
                                    data.frame(sample = c("A", "B", "C"), arm = c("a", "b", "b")), "arm")),
       "`distances\\$m` holds per-cell distances"),
  list(quote(cellAssociation(fit)), "`covariate` is required"),
  list(quote(groupAssociation(fit)), "`covariate` is required"),
  list(quote(mrviLatent()), "`fit` is required"),
  list(quote(addMrVI(fit)), "`fit` is required"),
  list(quote(simulateNested()), "`n_cells` and `n_genes` are required"),
  # package options
  list(quote(local({ old <- options(mrvi.max_bytes = "a"); on.exit(options(old)); sampleDistances(fit, cells = 1) })),
       "`options\\(mrvi.max_bytes\\)` must be one positive number"),
  list(quote(local({ old <- options(mrvi.max_bytes = -1); on.exit(options(old)); counterfactualLatent(fit, cells = 1) })),
       "`options\\(mrvi.max_bytes\\)` must be one positive number"),
  list(quote(sampleHclust(d3, group = 1, method = "nope")), "`method` must be one of"),
  list(quote(treeDistance("((a,b),(c,d));", "((a,b),(c")), "`truth` is not a Newick tree"),
  # audit 7: values of the wrong kind accepted silently, or failing in base R
  list(quote(sampleDistances(fit, groups = seq_len(24) / 7)), "`groups` holds continuous numbers \\(24 distinct"),
  list(quote(sampleDistances(fit, groups = as.list(labs))), "`groups` must be a column name or a factor/character vector"),
  list(quote(mrviData(m, s, labels = seq_len(24) / 7)), "`labels` holds continuous numbers"),
  list(quote(sampleDistances(fit, cells = matrix(1:4, 2))), "`cells` must be a vector .* not a matrix"),
  list(quote(counterfactualLatent(fit, cells = 1, samples = matrix(1:2, 1))), "`samples` must be a vector .* not a matrix"),
  # whole numbers, one per cell or so, are a metric (Seurat's nCount_RNA), not categories
  list(quote(mrviData(small_counts(n_cells = 240), small_samples(240), labels = 1000 + seq_len(240))),
       "`labels` holds continuous numbers \\(240 distinct"),
  list(quote(mrviLatent(fit, sample = "A")), "`sample` is for new cells in `x`"),
  list(quote(admissibility(fit, max_cells_per_sample = 5, subsample = 50)), "Give `max_cells_per_sample` only"),
  list(quote(proportionDistances(m, s, groups = NULL)), "`groups` must give each cell's type or cluster"),
  list(quote(plotSampleDistances(d3, 1, annotation = 2)), "`annotation` must be `NULL`, column names"),
  list(quote(plotSampleTree(d3, 1, annotation = NA_real_)), "`annotation` must be `NULL`, column names"),
  list(quote(plotSampleMDS("x")), "`distances` must be the result of `sampleDistances\\(\\)`"),
  list(quote(groupAssociation(d3, c(A = "a", B = "b", C = "b"), groups = character(0))), "`groups` must name groups of the distances"),
  list(quote(compareSampleDistances(list(mrvi = d3), data.frame(sample = c("A", "B"), arm = c("a", "b")), "arm")),
       "`sample_table` has no row for sample \"C\""),
  list(quote(treeDistance("((a,b),c);", "((a,b),c);")), "`hc` and `truth` share 3 leaves"),
  list(quote(silhouetteScores(matrix(rnorm(48), 24), labs, max_cells = 2)), "`max_cells` = 2 keeps 2 cells"),
  list(quote(cellAssociation(fit, c(A = "a", B = "a", C = ""))), "`covariate` has an empty value"),
  # baselines and plots
  list(quote(pseudobulkDistances(m, s, groups = replace(labs, 2, NA))), "`groups` has 1 NA"),
  list(quote(proportionDistances(m, s, groups = 1:3)), "`groups` must have one value per cell"),
  list(quote(silhouetteScores(matrix(NA_real_, 10, 2), rep(1:2, 5))), "`embedding` must be a numeric matrix .* finite"),
  list(quote(silhouetteScores(matrix(1:20 / 3, 10, 2), rep(1, 10))), "`cell_type` .* at least 2 types"),
  list(quote(silhouetteScores(matrix(1:20 / 3, 10, 2), rep(1:2, 4))), "`cell_type` must have one non-missing value per cell \\(10 = `nrow\\(embedding\\)`\\)"),
  list(quote(silhouetteScores(matrix(1:20 / 3, 10, 2), rep(1:2, 5), batch = replace(rep(1:2, 5), 1, NA))), "`batch` must have one"),
  list(quote(plotAssociation(list(), groups = "labels")), "`res` must be the result of `cellAssociation\\(\\)`"),
  # the backend
  list(quote(mrviSetThreads("two")), "`n`"),
  list(quote(mrviSetThreads(0)), "`n`"),
  list(quote(mrviSetThreads(1e10)), "`n`.*at most 2147483647")
)

# Evaluate a bad call and check the error, and that the objects it names are unchanged.
expect_bad_call <- function(expr, pattern, class = "mrvi_error", env = parent.frame()) {
  label <- paste(deparse(expr, width.cutoff = 200L), collapse = " ")
  vars <- intersect(all.vars(expr), ls(env))
  before <- mget(vars, envir = env)
  # (a call on the tiny fit may warn of its design's power before its error)
  e <- tryCatch(suppressMessages(without_power_warnings(eval(expr, env))), error = identity)
  expect_s3_class(e, class)
  expect_s3_class(e, "mrvi_error")
  if (inherits(e, "error")) expect_match(conditionMessage(e), pattern, info = label)
  for (v in vars) expect_identical(get(v, envir = env), before[[v]], info = paste(label, "changed", v))
  invisible(e)
}

test_that("the catalogue holds at least 100 bad calls", {
  expect_gte(length(bad_calls), 100)
})

test_that("every bad call is a classed error naming the argument, and changes nothing", {
  for (case in bad_calls) expect_bad_call(case[[1]], case[[2]])
  expect_equal(dim(m), c(30L, 24L))
})

test_that("errors report the function the user called", {
  e <- tryCatch(mrvi(m, sample = s[-1], verbose = FALSE), error = identity)
  expect_s3_class(e, "mrvi_error")
  expect_match(deparse(conditionCall(e))[1], "^mrvi\\(")
  # also for errors raised in Rust, however deep the helper that called it
  ptr <- mrvi:::native_model(fit)
  e <- tryCatch(mrvi:::mrvi_z_from_u(ptr, fit@u_mean[, 1:2], rep(0L, 24)), error = identity)
  expect_s3_class(e, "mrvi_input_error")
  expect_s3_class(e, "mrvi_error")
})

test_that("the size guard counts the cells a minibatch can hold and the mixture's components", {
  size <- function(batch_size = 256, n_cells = 1000, K = 20, labels = FALSE, Lu = 10) {
    mrvi:::check_model_size(2000, 32, 2, 30, Lu, batch_size, n_cells, K, labels, call = NULL)
  }
  expect_silent(size())
  # a minibatch holds at most every cell: 1e7 on 1,000 cells trains
  expect_silent(size(batch_size = 1e7))
  expect_error(size(batch_size = 1e7, n_cells = 1e7), "`batch_size` = 1e\\+07 makes minibatches of",
               class = "mrvi_error")
  expect_error(size(K = 2e6), "`n_mixture` = 2e\\+06 makes a model", class = "mrvi_error")
  expect_error(size(K = 2e6, labels = TRUE), "`labels` has 2e\\+06 levels", class = "mrvi_error")
  expect_error(size(Lu = 1e6), "`n_latent_u` = 1e\\+06", class = "mrvi_error")
})

test_that("a Rust panic is a classed internal error", {
  e <- expect_error(mrvi:::mrvi_debug_panic(), "index out of bounds", class = "mrvi_internal_error")
  expect_s3_class(e, "mrvi_error")
  expect_match(conditionMessage(e), "bug in mrvi")
  # R's own time limit, met while Rust calls into R, is passed on as R's error
  e <- tryCatch(mrvi:::rust(stop("reached elapsed time limit")), error = identity)
  expect_false(inherits(e, "mrvi_internal_error"))
  expect_identical(conditionMessage(e), "reached elapsed time limit")
})

test_that("damaged weights are detected by their checksum", {
  expect_match(fit@config$weights_hash, "^[0-9a-f]{32}$")
  z <- mrviLatent(fit, which = "z")
  g <- fit
  g@weights[300] <- as.raw(bitwXor(as.integer(g@weights[300]), 16L))
  expect_bad_call(quote(mrviLatent(g, which = "z")), "weights are damaged; re-read or refit", "mrvi_damaged_error")
  expect_bad_call(quote(sampleDistances(g, mc_samples = 0)), "weights are damaged", "mrvi_damaged_error")
  g@weights <- raw(10)
  expect_bad_call(quote(counterfactualLatent(g, cells = 1)), "weights are damaged", "mrvi_damaged_error")
  # fits from before checksums still load; unreadable weights are damaged too
  old <- fit
  old@config$weights_hash <- NULL
  expect_identical(mrviLatent(old, which = "z"), z)
  old@weights <- raw(10)
  expect_bad_call(quote(mrviLatent(old, which = "z")), "weights are damaged.*safetensors", "mrvi_damaged_error")
  expect_identical(mrviLatent(fit, which = "z"), z)
})

test_that("a fit from a newer version is refused, not rebuilt without its new parts", {
  z <- mrviLatent(fit, which = "z")
  g <- fit
  g@cache <- new.env(parent = emptyenv())  # as after readRDS(): the model is rebuilt
  g@config$model_json <- sub("{", '{"future_part":true,', g@config$model_json, fixed = TRUE)
  e <- expect_bad_call(quote(mrviLatent(g, which = "z")), "made by a newer version of mrvi", "mrvi_version_error")
  expect_match(conditionMessage(e), "unknown field `future_part`")
  expect_match(conditionMessage(e), "Install the version of mrvi that made the fit")
  expect_bad_call(quote(sampleDistances(g, mc_samples = 0)), "newer version", "mrvi_version_error")
  # damaged configuration text is still reported as damage
  g@config$model_json <- substr(fit@config$model_json, 1, 20)
  expect_bad_call(quote(mrviLatent(g, which = "z")), "weights are damaged", "mrvi_damaged_error")
  expect_identical(mrviLatent(fit, which = "z"), z)
})

test_that("copies of a fit never share a model built from other weights", {
  z_fit <- mrviLatent(fit, x = m, sample = s, which = "z")
  z_other <- mrviLatent(other, x = m, sample = s, which = "z")
  cp <- fit
  cp@weights <- other@weights
  # with a checksum: the copy is inconsistent, and says so
  expect_bad_call(quote(mrviLatent(cp, x = m, sample = s)), "weights are damaged", "mrvi_damaged_error")
  # without one (an old fit): the copy answers with its own weights, the original with its own
  cp@config$weights_hash <- NULL
  expect_identical(mrviLatent(cp, x = m, sample = s, which = "z"), z_other)
  expect_identical(mrviLatent(fit, x = m, sample = s, which = "z"), z_fit)
  expect_identical(mrviLatent(cp, x = m, sample = s, which = "z"), z_other)
})

test_that("a foreign or stale pointer in the cache is rebuilt, never used", {
  z <- mrviLatent(fit, which = "z")
  g <- fit
  g@cache <- new.env(parent = emptyenv())
  key <- paste0("model_", fit@config$weights_hash)
  assign(key, new("externalptr"), envir = g@cache)  # a NULL pointer
  expect_identical(mrviLatent(g, which = "z"), z)
  # a pointer that is not ours, handed straight to Rust
  e <- expect_error(mrvi:::mrvi_z_from_u(new("externalptr"), fit@u_mean, rep(0L, 24)), class = "mrvi_error")
  expect_match(conditionMessage(e), "not a native model of this package")
})

test_that("a NaN latent is refused as a damaged fit, and the kernels keep it NaN, never 0", {
  g <- fit
  g@u_mean[1, 1] <- NaN
  expect_error(sampleDistances(g, cells = 1:2, mc_samples = 0), "latents .* 1 non-finite value", class = "mrvi_invalid_fit")
  # so is a double beyond single precision, where the analyses compute
  h <- fit
  h@u_mean[1, 1] <- 1e39
  h@u_sd[2, 1] <- 1e300
  expect_error(sampleDistances(h, cells = 1:2, mc_samples = 0), "latents .* 2 non-finite values", class = "mrvi_invalid_fit")
  # past the check, the kernels themselves
  without_fit_checks(suppressWarnings(classes = "mrvi_nonfinite_distances", {
    d <- sampleDistances(g, cells = 1:2, mc_samples = 0)
    dg <- sampleDistances(g, mc_samples = 0, min_cells = 1)
    dn <- sampleDistances(g, cells = 1, mc_samples = 3, normalize = TRUE)
  }))
  expect_true(all(is.nan(d[1, , ][upper.tri(d[1, , ])])))
  expect_true(all(is.finite(d[2, , ])))
  expect_true(all(is.nan(dg[, , 1][upper.tri(dg[, , 1])])))
  expect_true(all(is.nan(dn[1, , ][upper.tri(dn[1, , ])])))
})

test_that("training that diverges is a classed error", {
  e <- tryCatch(mrvi(m, s, lr = 1e30, max_epochs = 3, n_threads = 1, verbose = FALSE), error = identity)
  expect_s3_class(e, "mrvi_divergence_error")
  expect_s3_class(e, "mrvi_error")
  expect_match(conditionMessage(e), "diverged.*`lr`")
  # weights made non-finite by the last step of the last epoch, after its loss
  # was computed (they were returned as a fit of NaN), with or without validation
  for (fraction in c(0, 0.1)) {
    e <- tryCatch(mrvi(m, s, lr = 1e12, max_epochs = 1, validation_fraction = fraction, n_threads = 1,
                       verbose = FALSE), error = identity)
    expect_s3_class(e, "mrvi_divergence_error")
    expect_match(conditionMessage(e), "diverged.*lr`? = 1e\\+?12")
  }
  # a loss that exploded but stayed finite (latents of 1e9, saturated expression)
  e <- tryCatch(mrvi(m, s, lr = 3, max_epochs = 4, n_threads = 1, verbose = FALSE), error = identity)
  expect_s3_class(e, "mrvi_divergence_error")
  expect_match(conditionMessage(e), "grew far above its starting value")
  # a first minibatch of cells with few counts is no starting scale: at
  # batch_size = 2 beside cells of 1e7 counts it made a false divergence, even
  # with weights that cannot move (lr = 1e-300)
  set.seed(1)
  p <- stats::rgamma(500, 0.5)
  p <- p / sum(p)
  lib <- rep(c(50, 1e7), each = 100)
  wide <- vapply(lib, function(l) stats::rnbinom(500, mu = l * p, size = 1), numeric(500))
  wide[1, ] <- wide[1, ] + 1
  dimnames(wide) <- list(paste0("g", 1:500), paste0("c", 1:200))
  expect_no_error(mrvi(wide, rep(c("a", "b", "c", "d"), 50), batch_size = 2, seed = 2, lr = 1e-300, max_epochs = 1,
                       n_threads = 1, verbose = FALSE))
})

test_that("soft spots: confounded batch, too many threads, NA distances in sampleHclust", {
  expect_warning(mrviData(m, s, batch = paste0("site_", s)), "`batch` is confounded with `sample`",
                 class = "mrvi_confounded")
  # nested in the samples: two lanes per sample, or a batch per cell
  expect_warning(mrviData(m, s, batch = paste0(s, rep(1:2, each = 12))), "every batch holds the cells of one sample",
                 class = "mrvi_confounded")
  expect_warning(mrviData(m, s, batch = colnames(m)), class = "mrvi_confounded")
  expect_no_warning(mrviData(m, s, batch = rep(c("x", "y"), each = 12)))
  old <- getOption("mrvi.threads")
  expect_message(mrviSetThreads(1000), "more than the .* core")
  expect_lte(mrviBackend()$threads, parallel::detectCores())
  expect_lte(getOption("mrvi.threads"), parallel::detectCores())
  mrviSetThreads(1)
  d <- sampleDistances(fit, mc_samples = 0)
  d[1, 2, 1] <- d[2, 1, 1] <- NA  # a pair no admissible cell compared
  expect_message(hc <- sampleHclust(d), "Dropping sample.*NA")
  expect_s3_class(hc, "hclust")
  expect_length(hc$labels, 2)
})

# Run R code in a child R process: what it prints and its exit status.
run_child <- function(code) {
  f <- tempfile(fileext = ".R")
  writeLines(c(sprintf(".libPaths(%s)", paste(deparse(.libPaths()), collapse = "")), code), f)
  out <- suppressWarnings(system2(file.path(R.home("bin"), "Rscript"), f, stdout = TRUE, stderr = TRUE))
  list(status = attr(out, "status") %||% 0L, output = paste(out, collapse = "\n"))
}
`%||%` <- function(a, b) if (is.null(a)) b else a

test_that("faults that could take R down fail into classed errors (child process)", {
  skip_if(!nzchar(Sys.which("prlimit")), "needs prlimit (Linux) to cap the child's memory")
  res <- run_child(c(
    "suppressMessages(library(mrvi)); options(mrvi.threads = 1)",
    "m <- Matrix::Matrix(matrix(rpois(30 * 24, 3), 30, 24, dimnames = list(paste0('g', 1:30), paste0('c', 1:24))), sparse = TRUE)",
    "fit <- mrvi(m, rep(c('A', 'B', 'C'), 8), max_epochs = 2, verbose = FALSE)",
    "z <- mrviLatent(fit, which = 'z')",
    # a foreign, non-NULL external pointer in the cache and handed to Rust
    "foreign <- getNativeSymbolInfo('wrap__mrvi_encode', 'mrvi')$address",
    "assign(paste0('model_', fit@config$weights_hash), foreign, envir = fit@cache)",
    "cat('foreign-cache', identical(mrviLatent(fit, which = 'z'), z), '\\n')",
    "e <- tryCatch(mrvi:::mrvi_z_from_u(foreign, fit@u_mean, rep(0L, 24)), error = identity)",
    "cat('foreign-call', class(e)[1], '\\n')",
    # Under an address-space cap the main thread's stack cannot grow either, and R's garbage
    # collector recurses deeply when an allocation fails: touch the whole C stack first (R stops
    # the recursion with an error near its limit), so that only the heap is capped.
    "grow <- function(n) if (n > 0) grow(n - 1) else 0; options(expressions = 5e5)",
    "invisible(tryCatch(grow(1e6), error = function(e) NULL)); options(expressions = 5000)",
    # cap the address space 2.5 GB above what is in use and lift the package's size guard: the
    # result (24 cells x 3 samples x 30 dims x 400,000 draws: 6.9 GB) cannot be allocated, which
    # must fail cleanly, before any work, leaving R its 2.5 GB for the error
    "vm <- as.numeric(gsub('[^0-9]', '', grep('^VmSize', readLines('/proc/self/status'), value = TRUE)))",
    "system(sprintf('prlimit --pid %d --as=%.0f', Sys.getpid(), (vm + 2.5e6) * 1024))",
    "options(mrvi.max_bytes = Inf)",
    "e <- tryCatch(counterfactualLatent(fit, mc_samples = 4e5), error = identity)",
    "cat('alloc', class(e)[1], '\\n')",
    "e <- tryCatch(mrvi(m, rep(c('A', 'B', 'C'), 8), n_latent = 1e9, max_epochs = 1, verbose = FALSE), error = identity)",
    "cat('n_latent', class(e)[1], grepl('n_latent', conditionMessage(e)), '\\n')",
    "cat('survived\\n')"
  ))
  expect_equal(res$status, 0L, info = res$output)
  expect_match(res$output, "foreign-cache TRUE")
  expect_match(res$output, "foreign-call mrvi_input_error")
  expect_match(res$output, "alloc mrvi_memory_error")
  expect_match(res$output, "n_latent mrvi_memory_error TRUE")
  expect_match(res$output, "survived")
})

test_that("a SingleCellExperiment with an unknown column names it", {
  skip_if_not_installed("SingleCellExperiment")
  sce <- SingleCellExperiment::SingleCellExperiment(list(counts = m))
  expect_error(mrvi(sce, sample = "donor", verbose = FALSE), "`sample` = \"donor\" is not a column",
               class = "mrvi_error")
})

options(old_options)
