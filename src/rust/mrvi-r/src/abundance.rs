//! Differential abundance: the aggregated posteriors of samples at cells.

use crate::{indices, rerr, RResult};
use extendr_api::prelude::*;
use mrvi_core::density::log_sample_densities;
use mrvi_core::posterior::Posterior;

/// log q_s(u_c) for evaluation cells `at` (0-based) and per-sample reference
/// cells (`ref_cells` 0-based, `ref_sample` their sample codes): [cells, S] values.
/// @noRd
#[extendr]
#[allow(clippy::too_many_arguments)]
fn mrvi_log_sample_densities(
    u_mean: &[f64], u_sd: &[f64], n_cells: i32, n_latent: i32, at: &[i32], ref_cells: &[i32], ref_sample: &[i32], n_samples: i32,
) -> RResult<Vec<f64>> {
    let post = Posterior::new(u_mean, u_sd, n_cells.max(0) as usize, n_latent.max(0) as usize).map_err(rerr)?;
    let (at, ref_cells, ref_sample) = (indices(at, "cell")?, indices(ref_cells, "cell")?, indices(ref_sample, "sample")?);
    log_sample_densities(&post, &at, &ref_cells, &ref_sample, n_samples.max(0) as usize).map_err(rerr)
}

extendr_module! {
    mod abundance;
    fn mrvi_log_sample_densities;
}
