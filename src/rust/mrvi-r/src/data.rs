//! Counts from R: the slots of a genes x cells dgCMatrix.

use crate::{invalid, rerr, RResult};
use extendr_api::prelude::*;
use mrvi_core::batch::Dataset;
use mrvi_core::data::{scan_slots, CscCounts};

/// Hand the CSC slots of a genes x cells dgCMatrix to Rust, which checks their
/// structure (an error if broken) and scans the values in one pass: counts and
/// first positions (1-based, into x) of non-finite, negative and fractional
/// values, and the totals per cell and per gene.
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
        first_nonfinite = one_based(s.first_nonfinite),
        first_negative = one_based(s.first_negative),
        first_fractional = one_based(s.first_fractional)
    ))
}

/// An owned copy of the counts with per-cell sample and site codes (0-based).
pub(crate) fn dataset(n_genes: i32, n_cells: i32, p: &[i32], i: &[i32], x: &[f64], sample: &[i32], site: &[i32]) -> RResult<Dataset> {
    let counts = CscCounts::from_slots(n_genes as usize, n_cells as usize, p, i, x).map_err(rerr)?;
    let to_i64 = |v: &[i32]| v.iter().map(|&c| c as i64).collect::<Vec<_>>();
    if sample.len() != n_cells as usize || site.len() != n_cells as usize {
        return Err(invalid("sample and site codes must have one value per cell"));
    }
    Ok(Dataset::new(counts, to_i64(sample), to_i64(site)))
}

extendr_module! {
    mod data;
    fn mrvi_csc_scan;
}
