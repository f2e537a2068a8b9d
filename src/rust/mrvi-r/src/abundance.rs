//! Differential abundance: the aggregated posteriors of samples at cells.

use crate::{codes, indices, rerr, RResult};
use extendr_api::prelude::*;
use mrvi_core::density::{log_level_densities, log_sample_densities};
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

/// log q_A(u_c) for the levels A of a sample covariate (`sample_level`: 0-based
/// level per sample, -1 for none) at evaluation cells `at` of samples `at_sample`:
/// [cells, levels] values.
/// @noRd
#[extendr]
#[allow(clippy::too_many_arguments)]
fn mrvi_log_level_densities(
    u_mean: &[f64], u_sd: &[f64], n_cells: i32, n_latent: i32, at: &[i32], at_sample: &[i32], ref_cells: &[i32], ref_sample: &[i32],
    sample_level: &[i32], n_levels: i32, exclude_own_sample: bool,
) -> RResult<Vec<f64>> {
    let post = Posterior::new(u_mean, u_sd, n_cells.max(0) as usize, n_latent.max(0) as usize).map_err(rerr)?;
    let (at, at_sample) = (indices(at, "cell")?, indices(at_sample, "sample")?);
    let (ref_cells, ref_sample) = (indices(ref_cells, "cell")?, indices(ref_sample, "sample")?);
    let n_levels = n_levels.max(0) as usize;
    let level: Vec<Option<usize>> = codes(sample_level, n_levels as i64, "level")?.into_iter().map(|k| usize::try_from(k).ok()).collect();
    log_level_densities(&post, &at, &at_sample, &ref_cells, &ref_sample, level.len(), &level, n_levels, exclude_own_sample).map_err(rerr)
}

extendr_module! {
    mod abundance;
    fn mrvi_log_sample_densities;
    fn mrvi_log_level_densities;
}
