//! Guided analysis per cell (paper §3.3, MODEL.md §7): for a categorical sample
//! covariate y, compare the distances D(n)[a, b] over pairs of samples with
//! y_a = y_b against pairs with y_a != y_b by a one-sided two-sample
//! Kolmogorov-Smirnov test (within-category distances smaller). D(n) is formed
//! one cell at a time and dropped: nothing of size cells x S x S is kept.

use crate::backend;
use crate::distances::{accumulate_cell, cell_draws, DistanceSpec};
use crate::pair_distances::{accumulator_width, panels_len};
use crate::posterior::Posterior;
use crate::error::{Error, Result};
use crate::model::MrviModel;
use crate::stats::ks_greater;
use rayon::prelude::*;

#[derive(Clone, Copy, Debug, Default)]
pub struct CellTest {
    pub statistic: f64,
    pub p_value: f64,
    pub n_within: usize,
    pub n_between: usize,
}

/// KS tests for `cells`. `category[s]` is sample s's covariate code (< 0: missing,
/// the sample takes no part). Cells are processed in blocks; within a block, cells
/// are shared out over the core's pool; `interrupted` is polled per block.
#[allow(clippy::too_many_arguments)]
pub fn cell_association(
    model: &MrviModel, post: &Posterior, own_sample: &[i64], cells: &[usize], category: &[i64], spec: DistanceSpec,
    block: usize, interrupted: &mut dyn FnMut() -> bool,
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
            let scratch = || (vec![0f64; s * accumulator_width(s)], vec![0f32; panels_len(1, s, l)], Vec::new(), Vec::new());
            results.par_iter_mut().enumerate().for_each_init(scratch, |(acc, t, within, between), (r, slot)| {
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
                let (statistic, p_value) = ks_greater(within, between);
                *slot = CellTest { statistic, p_value, n_within: within.len(), n_between: between.len() };
            })
        });
    }
    Ok(out)
}
