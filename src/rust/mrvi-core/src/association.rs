//! Guided analysis per cell (paper §3.3, MODEL.md §7): for a categorical sample
//! covariate y, compare the distances D(n)[a, b] over pairs of samples with
//! y_a = y_b against pairs with y_a != y_b: the one-sided two-sample
//! Kolmogorov-Smirnov statistic (within-category distances smaller) as the
//! effect size, and Mantel's test of the within-category distance sum for the
//! p-value, which accounts for the pairs that share a sample: by permutation
//! (the same relabelings of the samples for every cell), or by the normal
//! approximation with the statistic's exact moments (`stats::mantel_within`).
//! D(n) is formed one cell at a time and dropped: nothing of size cells x S x S
//! is kept.

use crate::backend;
use crate::distances::{accumulate_cell, cell_draws, DistanceSpec};
use crate::pair_distances::{accumulator_width, panels_len};
use crate::posterior::Posterior;
use crate::error::{Error, Result};
use crate::model::MrviModel;
use crate::rng::SplitMix64;
use crate::stats::{ks_greater, mantel_within, within_sum};
use rayon::prelude::*;

#[derive(Clone, Copy, Debug, Default)]
pub struct CellTest {
    /// the one-sided KS statistic of within- against between-category distances
    pub statistic: f64,
    /// Mantel's standardised statistic and its p-value
    pub z: f64,
    pub p_value: f64,
    pub n_within: usize,
    pub n_between: usize,
}

/// Per-cell tests for `cells`. `category[s]` is sample s's covariate code (< 0:
/// missing, the sample takes no part). `permutations` > 0: the p-value is
/// (1 + #{relabelings with a within-category sum at most the cell's}) / (1 +
/// permutations), over relabelings drawn from `spec.seed` alone (so a cell's
/// p-value does not depend on which other cells are tested); 0: Mantel's normal
/// approximation. Cells are processed in blocks; within a block, cells
/// are shared out over the core's pool; `interrupted` is polled per block.
#[allow(clippy::too_many_arguments)]
pub fn cell_association(
    model: &MrviModel, post: &Posterior, own_sample: &[i64], cells: &[usize], category: &[i64], spec: DistanceSpec,
    permutations: usize, block: usize, interrupted: &mut dyn FnMut() -> bool,
) -> Result<Vec<CellTest>> {
    let s = model.config.n_samples as usize;
    let l = model.config.n_latent as usize; // dimension of z
    if category.len() != s {
        crate::invalid!("the covariate has {} values for {s} samples", category.len());
    }
    if cells.iter().any(|&c| c >= post.n_cells) {
        crate::invalid!("a cell index is out of range (0..{})", post.n_cells);
    }
    let effect = model.host_sample_effect();
    // the pairs that take part, split by within / between category
    let pairs: Vec<(usize, usize, bool)> = (0..s)
        .flat_map(|a| (a + 1..s).map(move |b| (a, b)))
        .filter(|&(a, b)| category[a] >= 0 && category[b] >= 0)
        .map(|(a, b)| (a, b, category[a] == category[b]))
        .collect();
    // the samples that take part, and their codes, for Mantel's test
    let members: Vec<usize> = (0..s).filter(|&a| category[a] >= 0).collect();
    let member_codes: Vec<i64> = members.iter().map(|&a| category[a]).collect();
    let m = members.len();
    let mut rng = SplitMix64::new(spec.seed ^ 0x6d61_6e74_656c);
    let relabelings: Vec<Vec<i64>> = (0..permutations)
        .map(|_| {
            let mut codes = member_codes.clone();
            rng.shuffle(&mut codes);
            codes
        })
        .collect();
    let pool = backend::pool()?;
    let mut out = vec![CellTest::default(); cells.len()];
    let mut zs = Vec::new();
    for (bi, part) in cells.chunks(block.max(1)).enumerate() {
        if interrupted() {
            return Err(Error::Interrupted);
        }
        let own: Vec<i64> = part.iter().map(|&c| own_sample[c]).collect();
        let scale = cell_draws(&effect, post, part, &own, &spec, &mut zs)?;
        let results = &mut out[bi * block.max(1)..bi * block.max(1) + part.len()];
        pool.install(|| {
            // per worker: the cell's distance matrix, scratch, the two samples
            let scratch = || (vec![0f64; s * accumulator_width(s)], vec![0f32; panels_len(1, s, l)], Vec::new(), Vec::new(), vec![0f64; m * m]);
            results.par_iter_mut().enumerate().for_each_init(scratch, |(acc, t, within, between, square), (r, slot)| {
                acc.iter_mut().for_each(|v| *v = 0.0);
                for z in &zs {
                    accumulate_cell(&z[r * s * l..(r + 1) * s * l], s, l, scale.weight[r], scale.offset[r], t, acc);
                }
                within.clear();
                between.clear();
                let width = accumulator_width(s);
                for &(a, b, same) in &pairs {
                    let d = acc[a * width + b];
                    if same { within.push(d) } else { between.push(d) }
                }
                for (i, &a) in members.iter().enumerate() {
                    for (j, &b) in members.iter().enumerate().skip(i + 1) {
                        let d = acc[a * width + b];
                        square[i * m + j] = d;
                        square[j * m + i] = d;
                    }
                }
                let (statistic, _) = ks_greater(within, between);
                let (z, normal_p) = mantel_within(square, &member_codes);
                let p_value = if relabelings.is_empty() {
                    normal_p
                } else {
                    // at most the cell's sum, up to rounding in the summation order
                    let observed = within_sum(square, &member_codes);
                    let bound = observed + 1e-9 * observed.abs();
                    let as_small = relabelings.iter().filter(|codes| within_sum(square, codes) <= bound).count();
                    (1 + as_small) as f64 / (1 + relabelings.len()) as f64
                };
                *slot = CellTest { statistic, z, p_value, n_within: within.len(), n_between: between.len() };
            })
        });
    }
    Ok(out)
}
