library(testthat)
library(mrvi)
test_check("mrvi")
