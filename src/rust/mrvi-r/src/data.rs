//! Counts from R: the slots of a genes x cells dgCMatrix.

use crate::{invalid, rerr, RResult};
use extendr_api::prelude::*;
use mrvi_core::batch::Dataset;
use mrvi_core::data::{scan_slots, CscCounts};

/// Hand the CSC slots of a genes x cells dgCMatrix to Rust, which checks their
/// structure (an error if broken) and scans the values in one pass: counts and
/// first positions (1-based, into x) of non-finite, negative, fractional and
/// too large values, and the totals per cell and per gene.
/// @noRd
#[extendr]
fn mrvi_csc_scan(n_genes: i32, n_cells: i32, p: &[i32], i: &[i32], x: &[f64]) -> RResult<List> {
    let s = scan_slots(n_genes as usize, n_cells as usize, p, i, x).map_err(rerr)?;
    let one_based = |v: Vec<usize>| v.into_iter().map(|k| k as f64 + 1.0).collect::<Vec<f64>>();
    Ok(list!(
        library = s.library,
        gene_total = s.gene_total,
        n_nonfinite = s.n_nonfinite as f64,
        n_negative = s.n_negative as f64,
        n_fractional = s.n_fractional as f64,
        n_too_large = s.n_too_large as f64,
        first_nonfinite = one_based(s.first_nonfinite),
        first_negative = one_based(s.first_negative),
        first_fractional = one_based(s.first_fractional),
        first_too_large = one_based(s.first_too_large)
    ))
}

/// An owned copy of the counts with per-cell sample codes (0-based) and
/// nuisance covariates: `site`, cells x K codes (`n_factors` = K), and
/// `continuous`, cells x C values (`n_continuous` = C), both column-major (R matrices).
#[allow(clippy::too_many_arguments)]
pub(crate) fn dataset(
    n_genes: i32, n_cells: i32, p: &[i32], i: &[i32], x: &[f64], sample: &[i32], site: &[i32], n_factors: i32,
    continuous: &[f64], n_continuous: i32,
) -> RResult<Dataset> {
    let counts = CscCounts::from_slots(n_genes as usize, n_cells as usize, p, i, x).map_err(rerr)?;
    let (n, k, nc) = (n_cells as usize, n_factors.max(0) as usize, n_continuous.max(0) as usize);
    if sample.len() != n || site.len() != n * k || continuous.len() != n * nc {
        return Err(invalid("sample codes, site codes and continuous covariates must have one row per cell"));
    }
    let cell_major = |w: usize| (0..n * w).map(move |j| (j / w) + n * (j % w));
    let site = cell_major(k).map(|j| site[j] as i64).collect();
    let continuous = cell_major(nc).map(|j| continuous[j] as f32).collect();
    let data = Dataset::new(counts, sample.iter().map(|&c| c as i64).collect(), Vec::new());
    Ok(data.with_nuisance(site, k, continuous, nc))
}

extendr_module! {
    mod data;
    fn mrvi_csc_scan;
}
