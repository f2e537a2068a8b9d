//! Resampled group distance matrices, for the support of sample-tree clades
//! (bootstrap of cells within samples, plus posterior draws of u).
//!
//! Replicate r of a group is the weighted mean sum_n w[n, r] D_m(n) / sum_n w[n, r]
//! over the group's cells, where D_m(n) is the cell's distance matrix under
//! posterior draw m = r mod `draws` (the posterior mean when `draws` = 0) and
//! w[n, r] the cell's bootstrap multiplicity in replicate r. With `normalize`,
//! D_m(n) is in units of the cell's own posterior noise and clipped at its noise
//! floor, as in [crate::distances] (needs at least 3 draws). Each D_m(n) is
//! computed once and added to every replicate that uses draw m: the work is
//! O(cells * draws * S^2 * L + cells * R * S^2) and the memory O(R * S^2 + block * S * L),
//! never cells x S x S.

use crate::distances::{accumulate_cell, cell_draws, DistanceSpec};
use crate::pair_distances::{accumulator_width, panels_len};
use crate::posterior::Posterior;
use crate::error::{try_vec, Error, Result};
use crate::model::{MrviModel, Space};

/// The replicates: `weights` is cells x R, column-major (one column per replicate).
pub struct Replicates<'a> {
    pub weights: &'a [f64],
    pub n_replicates: usize,
    /// Distinct posterior draws of u, cycled over the replicates; 0: the posterior mean.
    pub draws: usize,
    pub seed: u64,
    pub normalize: bool,
    pub space: Space,
}

/// Mean distance matrix of each replicate over `cells`: the values of an R
/// array [S, S, R] (each matrix symmetric, zero diagonal; NaN when a replicate
/// gives every cell weight 0).
/// `own_sample[c]` is the sample of cell c (for the noise floor of `normalize`).
pub fn replicate_means(
    model: &MrviModel, post: &Posterior, own_sample: &[i64], cells: &[usize], reps: &Replicates, block: usize,
    interrupted: &mut dyn FnMut() -> bool,
) -> Result<Vec<f64>> {
    let s = model.config.n_samples as usize;
    let l = model.config.n_latent as usize; // dimension of z
    let (nc, nr) = (cells.len(), reps.n_replicates);
    if reps.weights.len() != nc * nr {
        return Err(Error::InvalidInput(format!("the weights must be {nc} cells x {nr} replicates")));
    }
    if cells.iter().any(|&c| c >= post.n_cells) || own_sample.len() != post.n_cells {
        return Err(Error::InvalidInput("a cell index is out of range, or the own samples do not cover the cells".into()));
    }
    let spec = DistanceSpec { mc_samples: reps.draws, normalize: reps.normalize, seed: reps.seed, space: reps.space };
    let effect = model.host_sample_effect_in(spec.space);
    let n_draws = reps.draws.max(1);
    let mut sums = try_vec(nr.saturating_mul(s * s), 0f64, "the replicate distance sums")?;
    let mut totals = vec![0f64; nr];
    let (mut cell_d, mut scratch) = (vec![0f64; s * accumulator_width(s)], vec![0f32; panels_len(1, s, l)]);
    let mut zs = Vec::new();
    for (bi, part) in cells.chunks(block.max(1)).enumerate() {
        if interrupted() {
            return Err(Error::Interrupted);
        }
        let own: Vec<i64> = part.iter().map(|&c| own_sample[c]).collect();
        // all draws of the block at once: the noise floor of `normalize` needs them
        let scale = cell_draws(&effect, post, part, &own, &spec, &mut zs)?;
        for (m, z) in zs.iter().enumerate() {
            for r in 0..part.len() {
                let i = bi * block.max(1) + r;
                let users: Vec<usize> = (m..nr).step_by(n_draws).filter(|&k| reps.weights[i + nc * k] != 0.0).collect();
                if users.is_empty() {
                    continue;
                }
                cell_d.iter_mut().for_each(|v| *v = 0.0);
                // one draw's distances, not the mean over draws: undo cell_draws' 1 / draws
                let w = scale.weight[r] * n_draws as f32;
                accumulate_cell(&z[r * s * l..(r + 1) * s * l], s, l, w, scale.offset[r], &mut scratch, &mut cell_d);
                for k in users {
                    let w = reps.weights[i + nc * k];
                    let acc = &mut sums[k * s * s..(k + 1) * s * s];
                    let width = accumulator_width(s);
                    for a in 0..s {
                        for b in a + 1..s {
                            acc[a * s + b] += w * cell_d[a * width + b];
                        }
                    }
                }
            }
        }
        for k in 0..nr {
            totals[k] += part.iter().enumerate().map(|(r, _)| reps.weights[bi * block.max(1) + r + nc * k]).sum::<f64>();
        }
    }
    // upper triangles (row-major a < b) to full symmetric column-major means
    let mut out = try_vec(nr.saturating_mul(s * s), 0f64, "the replicate distance means")?;
    for k in 0..nr {
        let (acc, o) = (&sums[k * s * s..(k + 1) * s * s], &mut out[k * s * s..(k + 1) * s * s]);
        for a in 0..s {
            for b in a + 1..s {
                let v = if totals[k] > 0.0 { acc[a * s + b] / totals[k] } else { f64::NAN };
                o[a + s * b] = v;
                o[b + s * a] = v;
            }
            if totals[k] == 0.0 {
                o[a + s * a] = f64::NAN;
            }
        }
    }
    Ok(out)
}
