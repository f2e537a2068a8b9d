# addMrVI() stores the fit under Tool(so, slot = "addMrVI") however it is
# called (`Tool<-` named the slot after the call: "mrvi::addMrVI", "", "FUN").
test_that("the fit is in Tool(slot = \"addMrVI\") however addMrVI() is called", {
  skip_if_not_installed("SeuratObject")
  m <- small_counts()
  fit <- mrvi(m, small_samples(), max_epochs = 1, n_threads = 1, seed = 1, verbose = FALSE)
  so <- suppressWarnings(SeuratObject::CreateSeuratObject(counts = m))
  for (res in list(mrvi::addMrVI(so, fit), do.call(addMrVI, list(so, fit)),
                   lapply(list(so), addMrVI, fit = fit)[[1]])) {
    expect_s4_class(SeuratObject::Tool(res, slot = "addMrVI"), "MrVIFit")
    expect_identical(names(methods::slot(res, "tools")), "addMrVI")
  }
})
