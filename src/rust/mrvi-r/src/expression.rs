//! Decoded expression: counterfactual expression of cells under chosen
//! samples, and the expression of latent shifts.

use crate::{codes, model_ptr, rerr, RResult};
use extendr_api::prelude::*;
use mrvi_core::infer::{expression_from_u, expression_from_z, largest_lfc};

/// Expected normalised expression (softmax of the decoder) for u (cells x L_u,
/// column-major) under the given sample codes (one per cell), site codes (cells
/// x K) and continuous covariates (cells x C, standardised; both column-major);
/// values of an R matrix [genes, cells].
/// @noRd
#[extendr]
fn mrvi_counterfactual_expression(h: Robj, u: &[f64], sample: &[i32], site: &[i32], continuous: &[f64]) -> RResult<Vec<f64>> {
    let h = model_ptr(&h)?;
    let model = h.try_addr()?;
    let sample = codes(sample, model.config.n_samples, "sample")?;
    let site = codes(site, model.config.n_batches, "site")?;
    expression_from_u(model, u, &sample, &site, continuous).map_err(rerr)
}

/// Expected normalised expression decoded from z itself (cells x L_z,
/// column-major) under site codes and continuous covariates (as in
/// `mrvi_counterfactual_expression`); values of an R matrix [genes, cells].
/// Used for log fold changes of latent shifts.
/// @noRd
#[extendr]
fn mrvi_decode_z(h: Robj, z: &[f64], site: &[i32], continuous: &[f64]) -> RResult<Vec<f64>> {
    let h = model_ptr(&h)?;
    let model = h.try_addr()?;
    let site = codes(site, model.config.n_batches, "site")?;
    expression_from_z(model, z, &site, continuous).map_err(rerr)
}

/// The largest |log2 fold change| over genes of each cell from z_lo to z_hi
/// (cells x L_z, column-major), expression averaged over the nuisance settings
/// `grid` (settings x K site codes, row-major), continuous covariates at their
/// means; one value per cell (NaN where a fold change is).
/// @noRd
#[extendr]
fn mrvi_largest_lfc(h: Robj, z_hi: &[f64], z_lo: &[f64], grid: &[i32]) -> RResult<Vec<f64>> {
    let h = model_ptr(&h)?;
    let model = h.try_addr()?;
    let grid = codes(grid, model.config.n_batches, "site")?;
    largest_lfc(model, z_hi, z_lo, &grid).map_err(rerr)
}

extendr_module! {
    mod expression;
    fn mrvi_counterfactual_expression;
    fn mrvi_decode_z;
    fn mrvi_largest_lfc;
}
