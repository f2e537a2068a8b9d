//! Guided analyses: per-cell KS tests of within- against between-category
//! distances, and their group-level statistic.

use crate::{distance_spec, indices, interrupt_pending, invalid, rerr, with_cells, RResult};
use extendr_api::prelude::*;
use mrvi_core::association::cell_association;
use mrvi_core::stats::{gram_moments, ks_greater, mean_ks_statistics};

/// Per-cell tests of within- against between-category distances: the one-sided
/// KS statistic, and Mantel's z and p-value (by `permutations` relabelings; 0:
/// normal approximation), against an effect of at most `min_effect`. `category`: one code per sample (-1 = missing);
/// `sample_block`: one block per sample, or none (see cell_association()); `cells`:
/// 0-based.
/// @noRd
#[extendr]
#[allow(clippy::too_many_arguments)]
fn mrvi_cell_association(
    h: Robj, u_mean: &[f64], u_sd: &[f64], n_cells: i32, own_sample: &[i32], cells: &[i32],
    category: &[i32], sample_block: &[i32], mc_samples: i32, normalize: bool, seed: f64, permutations: i32, min_effect: f64,
    block: i32, expression: bool,
) -> RResult<List> {
    let category: Vec<i64> = category.iter().map(|&c| c as i64).collect();
    let sample_block: Vec<i64> = sample_block.iter().map(|&b| b as i64).collect();
    let cells = indices(cells, "cell")?;
    let spec = distance_spec(mc_samples, normalize, seed, expression);
    let res = with_cells(&h, u_mean, u_sd, n_cells, own_sample, |model, post, own| {
        cell_association(model, post, own, &cells, &category, &sample_block, spec, permutations.max(0) as usize, min_effect, block.max(1) as usize, &mut interrupt_pending)
            .map_err(rerr)
    })?;
    Ok(list!(
        statistic = res.iter().map(|r| r.statistic).collect::<Vec<f64>>(),
        effect = res.iter().map(|r| r.effect).collect::<Vec<f64>>(),
        z = res.iter().map(|r| r.z).collect::<Vec<f64>>(),
        p_value = res.iter().map(|r| r.p_value).collect::<Vec<f64>>(),
        n_within = res.iter().map(|r| r.n_within as i32).collect::<Vec<i32>>(),
        n_between = res.iter().map(|r| r.n_between as i32).collect::<Vec<i32>>()
    ))
}

/// Mean per-cell KS statistics of within- against between-label pairs, for each
/// labelling. `values`: cells x pairs (R matrix, column-major); `pair_a`,
/// `pair_b`: the pairs' samples (0-based); `labels`: samples x labellings.
/// @noRd
#[extendr]
fn mrvi_mean_ks_statistics(values: &[f64], n_cells: i32, pair_a: &[i32], pair_b: &[i32], labels: &[i32], n_samples: i32) -> RResult<Vec<f64>> {
    if pair_a.len() != pair_b.len() {
        return Err(invalid("mrvi_mean_ks_statistics: pair_a and pair_b differ in length"));
    }
    let pairs: Vec<(usize, usize)> = indices(pair_a, "pair")?.into_iter().zip(indices(pair_b, "pair")?).collect();
    let labels: Vec<i64> = labels.iter().map(|&x| x as i64).collect();
    mean_ks_statistics(values, n_cells.max(0) as usize, &pairs, &labels, n_samples.max(0) as usize).map_err(rerr)
}

/// The KS test on two vectors (exposed to test it against R's ks.test).
/// @noRd
#[extendr]
fn mrvi_ks_greater(x: &[f64], y: &[f64]) -> Vec<f64> {
    let (s, p) = ks_greater(x, y);
    vec![s, p]
}

/// Per cell, the trace and the sum of squares of the Gram matrix of its K x L
/// slice of `a` ([K, cells, L]): a list of `trace` and `squares`.
/// @noRd
#[extendr]
fn mrvi_gram_moments(a: &[f64], k: i32, cells: i32, l: i32) -> RResult<List> {
    let (trace, squares) = gram_moments(a, k.max(0) as usize, cells.max(0) as usize, l.max(0) as usize).map_err(rerr)?;
    Ok(list!(trace = trace, squares = squares))
}

extendr_module! {
    mod association;
    fn mrvi_cell_association;
    fn mrvi_mean_ks_statistics;
    fn mrvi_ks_greater;
    fn mrvi_gram_moments;
}
