//! Sample x sample distances: group means streamed over cells, per-cell
//! matrices, bootstrap replicates.

use crate::{codes, distance_spec, indices, interrupt_pending, invalid, rerr, with_cells, RResult};
use extendr_api::prelude::*;
use mrvi_core::distances::{cell_distances, group_distances, group_sums_tensor};
use mrvi_core::replicates::{replicate_means, Replicates};

/// The mean of D(n) over one group of cells (`members`, 0-based) as an [S, S]
/// matrix's values, and the number of cells it is over. `mask`: empty, or 0/1
/// per (cell, sample) for every cell, column-major (admissible pairs).
/// @noRd
#[extendr]
#[allow(clippy::too_many_arguments)]
fn mrvi_group_distances(
    h: Robj, u_mean: &[f64], u_sd: &[f64], n_cells: i32, own_sample: &[i32], members: &[i32],
    mc_samples: i32, normalize: bool, seed: f64, block: i32, mask: &[i32], expression: bool,
) -> RResult<List> {
    with_cells(&h, u_mean, u_sd, n_cells, own_sample, |model, post, own| {
        // the group's codes are built here, not in R: one n-long vector per group
        // there would be garbage that accumulates over the groups of a large fit
        let mut group = vec![-1i64; post.n_cells];
        for c in indices(members, "cell")? {
            *group.get_mut(c).ok_or_else(|| invalid(format!("cell index {c} is out of range")))? = 0;
        }
        let mask: Option<Vec<bool>> = (!mask.is_empty()).then(|| mask.iter().map(|&v| v != 0).collect());
        let spec = distance_spec(mc_samples, normalize, seed, expression);
        let sums = group_distances(model, post, own, &group, 1, spec, mask.as_deref(), block.max(1) as usize, &mut interrupt_pending)
            .map_err(rerr)?;
        Ok(list!(mean = sums.means().map_err(rerr)?, n_cells = sums.n_cells.iter().map(|&v| v as f64).collect::<Vec<f64>>()))
    })
}

/// Group means from libtorch tensor operations (cdist + index_add) on the
/// model's device: the GPU path, exposed for benchmarks and tests.
/// @noRd
#[extendr]
#[allow(clippy::too_many_arguments)]
fn mrvi_group_tensor_distances(
    h: Robj, u_mean: &[f64], u_sd: &[f64], n_cells: i32, own_sample: &[i32], group: &[i32],
    n_groups: i32, block: i32,
) -> RResult<Vec<f64>> {
    with_cells(&h, u_mean, u_sd, n_cells, own_sample, |model, post, _| {
        let group = codes(group, n_groups as i64, "group")?;
        group_sums_tensor(model, post, &group, n_groups as usize, block.max(1) as usize).and_then(|s| s.means()).map_err(rerr)
    })
}

/// D(n) of the given cells (0-based) as a [cells, S, S] array's values.
/// @noRd
#[extendr]
#[allow(clippy::too_many_arguments)]
fn mrvi_cell_distances(
    h: Robj, u_mean: &[f64], u_sd: &[f64], n_cells: i32, own_sample: &[i32], cells: &[i32],
    mc_samples: i32, normalize: bool, seed: f64, block: i32, expression: bool,
) -> RResult<Vec<f64>> {
    let cells = indices(cells, "cell")?;
    with_cells(&h, u_mean, u_sd, n_cells, own_sample, |model, post, own| {
        cell_distances(model, post, own, &cells, distance_spec(mc_samples, normalize, seed, expression), block.max(1) as usize).map_err(rerr)
    })
}

/// Bootstrap replicates of one group's mean distance matrix: `cells` (0-based),
/// `weights` cells x R (column-major), replicate r on posterior draw r mod
/// `draws` (0: the posterior mean), distances normalised or not. Values of an R
/// array [S, S, R].
/// @noRd
#[extendr]
#[allow(clippy::too_many_arguments)]
fn mrvi_replicate_distances(
    h: Robj, u_mean: &[f64], u_sd: &[f64], n_cells: i32, own_sample: &[i32], cells: &[i32], weights: &[f64],
    n_replicates: i32, draws: i32, normalize: bool, seed: f64, block: i32, expression: bool,
) -> RResult<Vec<f64>> {
    let cells = indices(cells, "cell")?;
    let reps = Replicates {
        weights, n_replicates: n_replicates.max(0) as usize, draws: draws.max(0) as usize, seed: seed as u64, normalize,
        space: crate::space(expression),
    };
    with_cells(&h, u_mean, u_sd, n_cells, own_sample, |model, post, own| {
        replicate_means(model, post, own, &cells, &reps, block.max(1) as usize, &mut interrupt_pending).map_err(rerr)
    })
}

extendr_module! {
    mod distances;
    fn mrvi_group_distances;
    fn mrvi_group_tensor_distances;
    fn mrvi_cell_distances;
    fn mrvi_replicate_distances;
}
