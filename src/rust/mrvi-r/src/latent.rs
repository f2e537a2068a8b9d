//! Latent representations: u of cells, z under their own or every sample.

use crate::{draw, indices, invalid, model_ptr, posterior, rerr, RResult};
use extendr_api::prelude::*;
use mrvi_core::batch::Dataset;
use mrvi_core::data::CscView;
use mrvi_core::error::try_collect;
use mrvi_core::infer::{counterfactual_z, encode, projected_counterfactuals, z_from_u, EffectSpread};
use mrvi_core::posterior::Posterior;

/// Posterior mean and sd of u for the cells of a count matrix (column-major cells x L).
/// @noRd
#[extendr]
fn mrvi_encode(h: Robj, n_genes: i32, n_cells: i32, p: &[i32], i: &[i32], x: &[f64], sample: &[i32]) -> RResult<List> {
    let h = model_ptr(&h)?;
    let model = h.try_addr()?;
    model.check_compatible(n_genes as usize).map_err(rerr)?;
    if sample.len() != n_cells as usize {
        return Err(invalid("sample codes must have one value per cell"));
    }
    // a view of R's slots, valid for this call: no copy of the counts
    let view = CscView::new(n_genes as usize, p, i, x).map_err(rerr)?;
    let data = Dataset::new(view, sample.iter().map(|&c| c as i64).collect(), vec![0; sample.len()]);
    let (mean, sd) = encode(model, &data, 1024).map_err(rerr)?;
    let f = |v: Vec<f32>| try_collect(v.len(), v.into_iter().map(f64::from), "the posterior").map_err(rerr);
    Ok(list!(mean = f(mean)?, sd = f(sd)?))
}

/// z = u + A_s u + a_s for u (cells x L, column-major) and 0-based sample codes.
/// @noRd
#[extendr]
fn mrvi_z_from_u(h: Robj, u: &[f64], sample: &[i32]) -> RResult<Vec<f64>> {
    let h = model_ptr(&h)?;
    let model = h.try_addr()?;
    let u = try_collect(u.len(), u.iter().map(|&x| x as f32), "a single-precision copy").map_err(rerr)?;
    let s = try_collect(sample.len(), sample.iter().map(|&v| v as i64), "sample codes").map_err(rerr)?;
    let z = z_from_u(model, &u, &s, 4096).map_err(rerr)?;
    try_collect(z.len(), z.into_iter().map(f64::from), "z").map_err(rerr)
}

/// Counterfactual z of `cells` (0-based) under `samples` (0-based), from
/// posterior draw `draw` (0-based; negative: the posterior mean) under `seed`:
/// values of an R array [cells, samples, L].
/// @noRd
#[extendr]
#[allow(clippy::too_many_arguments)]
fn mrvi_counterfactual_z(
    h: Robj, u_mean: &[f64], u_sd: &[f64], n_cells: i32, cells: &[i32], samples: &[i32], draw_index: i32, seed: f64,
) -> RResult<Vec<f64>> {
    let h = model_ptr(&h)?;
    let model = h.try_addr()?;
    let post = posterior(u_mean, u_sd, n_cells, model)?;
    let (cells, samples) = (indices(cells, "cell")?, indices(samples, "sample")?);
    counterfactual_z(model, &post, &cells, &samples, draw(draw_index), seed as u64).map_err(rerr)
}

/// Linear maps of the counterfactual z of `cells` (0-based) for posterior
/// draws `draw_indices` (0-based; negative: the mean): `maps` r x S x K
/// (column-major), `map_of_cell` 0-based; a list of `projections` (an R array
/// [cells, L, r, draws], with `want_projections`), `mean_z` ([cells, S, L], with
/// `want_mean`) and `spread` ([cells, blocks, 2]: the trace and the sum of
/// squares of each covariate effect's spread over the draws), with blocks of
/// `block_sizes` rows (0-based `block_rows`, concatenated) and their q x q
/// `whitening` matrices per map and block (no blocks: no spread).
/// @noRd
#[extendr]
#[allow(clippy::too_many_arguments)]
fn mrvi_projected_counterfactuals(
    h: Robj, u_mean: &[f64], u_sd: &[f64], n_cells: i32, cells: &[i32], draw_indices: &[i32], seed: f64, maps: &[f64],
    n_rows: i32, map_of_cell: &[i32], want_projections: bool, want_mean: bool, block_rows: &[i32], block_sizes: &[i32],
    whitening: &[f64],
) -> RResult<List> {
    let h = model_ptr(&h)?;
    let model = h.try_addr()?;
    let post = posterior(u_mean, u_sd, n_cells, model)?;
    let cells = indices(cells, "cell")?;
    let map_of_cell = indices(map_of_cell, "map")?;
    let draws: Vec<Option<usize>> = draw_indices.iter().map(|&d| draw(d)).collect();
    let rows = indices(block_rows, "row")?;
    let mut blocks = Vec::with_capacity(block_sizes.len());
    let mut at = 0;
    for &q in block_sizes {
        let q = q.max(0) as usize;
        if at + q > rows.len() {
            return Err(invalid("the block sizes exceed the block rows"));
        }
        blocks.push(rows[at..at + q].to_vec());
        at += q;
    }
    let spread = (!blocks.is_empty()).then(|| EffectSpread { blocks: &blocks, whitening });
    let res = projected_counterfactuals(
        model, &post, &cells, &draws, seed as u64, maps, n_rows.max(0) as usize, &map_of_cell, want_projections, want_mean,
        spread.as_ref(),
    )
    .map_err(rerr)?;
    let or_null = |v: Option<Vec<f64>>| v.map(Robj::from).unwrap_or(NULL.into());
    Ok(list!(projections = or_null(res.projections), mean_z = or_null(res.mean_z), spread = or_null(res.spread)))
}

/// Posterior draw `draw_index` (0-based; negative: the mean) of u for `cells`
/// (0-based) under `seed`: column-major cells x L.
/// @noRd
#[extendr]
fn mrvi_posterior_u(u_mean: &[f64], u_sd: &[f64], n_cells: i32, n_latent: i32, cells: &[i32], draw_index: i32, seed: f64) -> RResult<Vec<f64>> {
    let post = Posterior::new(u_mean, u_sd, n_cells.max(0) as usize, n_latent.max(0) as usize).map_err(rerr)?;
    post.column_major(&indices(cells, "cell")?, draw(draw_index), seed as u64).map_err(rerr)
}

extendr_module! {
    mod latent;
    fn mrvi_encode;
    fn mrvi_posterior_u;
    fn mrvi_z_from_u;
    fn mrvi_counterfactual_z;
    fn mrvi_projected_counterfactuals;
}
