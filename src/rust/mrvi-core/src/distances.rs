//! Sample x sample distances between counterfactual representations (paper
//! eq. 3-4, MODEL.md §5): D(n)[a, b] = || z_n^a - z_n^b ||, and group means
//! D(C) = mean over n in C of D(n). Streamed over blocks of cells: memory is
//! O(groups * S^2 + block * S * L); the cells x S x S array never exists.
//!
//! With `mc_samples` = 0 the posterior mean of u is used; otherwise D(n) is the
//! mean over that many posterior draws ([crate::posterior]: each depends on the
//! seed, the cell and the draw alone, so results do not depend on the block
//! size). `normalize` puts D(n) in units of the cell's own posterior noise, as
//! the later MrVI does: with b_n(m, m') = || z_n^{s_n}(u_m) - z_n^{s_n}(u_m') ||
//! over all pairs of the cell's draws (its own sample), mu_n and sigma_n their
//! mean and standard deviation, each draw's distance becomes
//! max(d - mu_n, 0) / sigma_n before the mean over draws. Sample differences
//! smaller than the noise of the cell's own representation become 0 (needs at
//! least 3 draws).

use crate::backend;
use crate::error::{r_array, try_vec, try_with_capacity, Error, Result};
use crate::infer::{cells_z, rows_from_column_major};
use crate::model::{HostSampleEffect, MrviModel, Space, ZLayout};
use crate::pair_distances::{accumulator_width, add_block_pairs, fill_panel, panel_len, panels_len, to_panels, Block, PairWeight, PANEL};
use crate::posterior::Posterior;
use ndarray::{Axis, Ix3};
use rayon::prelude::*;
use tch::{Device, Kind, Tensor};

/// What to compute from u: posterior mean or Monte Carlo draws, raw or
/// normalised, in latent or in expression space.
#[derive(Clone, Copy, Debug)]
pub struct DistanceSpec {
    pub mc_samples: usize,
    pub normalize: bool,
    pub seed: u64,
    pub space: Space,
}

/// Sums of D(n) over the cells of each group (upper triangle filled, a < b) and
/// the number of cells summed.
pub struct GroupSums {
    pub n_samples: usize,
    /// per group, S rows of `width` values: pair (a, b) at a * width + b
    pub sums: Vec<Vec<f64>>,
    pub width: usize,
    pub n_cells: Vec<usize>,
    /// With a sample mask: per group, the number of cells summed for each pair.
    pub pair_counts: Option<Vec<Vec<f64>>>,
}

impl GroupSums {
    /// Group g's mean matrix, full and symmetric, column-major S x S.
    pub fn mean(&self, g: usize) -> Vec<f64> {
        let s = self.n_samples;
        let n = self.n_cells[g].max(1) as f64;
        let mut out = vec![0f64; s * s];
        for a in 0..s {
            for b in a + 1..s {
                let count = match &self.pair_counts {
                    None => n,
                    Some(c) if c[g][a * s + b] > 0.0 => c[g][a * s + b],
                    Some(_) => f64::NAN,
                };
                let v = self.sums[g][a * self.width + b] / count;
                out[a * s + b] = v;
                out[b * s + a] = v;
            }
        }
        if self.n_cells[g] == 0 {
            out.iter_mut().for_each(|v| *v = f64::NAN);
        }
        out
    }

    /// Every group's mean matrix: the values of an R array [S, S, G].
    pub fn means(&self) -> Result<Vec<f64>> {
        let s = self.n_samples;
        let mut values = try_with_capacity(self.sums.len() * s * s, "the group means")?;
        for g in 0..self.sums.len() {
            values.extend(self.mean(g));
        }
        Ok(values)
    }
}

/// z of each cell under its own sample for draw m, [cells, L] (for the
/// normaliser), from z [cells, L, S].
fn own_sample_z(z: &[f32], own: &[i64], s: usize, l: usize) -> Vec<f32> {
    let mut out = vec![0f32; own.len() * l];
    for (r, &smp) in own.iter().enumerate() {
        for d in 0..l {
            out[r * l + d] = z[(r * l + d) * s + smp as usize];
        }
    }
    out
}

/// How each cell's draws enter D(n): d -> weight * max(d - offset, 0), summed
/// over draws. Plain distances: weight 1 / draws, offset 0.
pub(crate) struct CellScale {
    pub weight: Vec<f32>,
    pub offset: Vec<f32>,
}

/// The draws of a block of cells into `zs` ([cells, L, S] per draw, as the
/// distance kernel reads them; buffers kept from block to block) and their
/// [CellScale].
pub(crate) fn cell_draws(effect: &HostSampleEffect, post: &Posterior, cells: &[usize], own: &[i64], spec: &DistanceSpec, zs: &mut Vec<Vec<f32>>) -> Result<CellScale> {
    let (s, l) = (effect.n_samples, effect.n_latent);
    let draws: Vec<Option<usize>> = if spec.mc_samples == 0 { vec![None] } else { (0..spec.mc_samples).map(Some).collect() };
    zs.resize_with(draws.len(), Vec::new);
    for (z, &d) in zs.iter_mut().zip(&draws) {
        cells_z(effect, post, cells, d, spec.seed, ZLayout::ByDimension, z);
    }
    let mut scale = CellScale { weight: vec![1.0 / zs.len() as f32; cells.len()], offset: vec![0.0; cells.len()] };
    if spec.normalize {
        if zs.len() < 3 {
            return Err(Error::InvalidInput("normalize = TRUE needs mc_samples >= 3".into()));
        }
        let own_z: Vec<Vec<f32>> = zs.iter().map(|z| own_sample_z(z, own, s, l)).collect();
        for r in 0..cells.len() {
            let (mu, sigma) = noise_floor(&own_z, r, l);
            scale.weight[r] /= sigma.max(1e-8) as f32;
            scale.offset[r] = mu as f32;
        }
    }
    Ok(scale)
}

/// Mean and standard deviation of the distances between all pairs of a cell's
/// draws of its own-sample z (row `r` of each draw in `own_z`).
fn noise_floor(own_z: &[Vec<f32>], r: usize, l: usize) -> (f64, f64) {
    let mut d = Vec::with_capacity(own_z.len() * (own_z.len() - 1) / 2);
    for (i, p) in own_z.iter().enumerate() {
        for q in &own_z[i + 1..] {
            let (p, q) = (&p[r * l..(r + 1) * l], &q[r * l..(r + 1) * l]);
            d.push(p.iter().zip(q).map(|(x, y)| ((x - y) as f64).powi(2)).sum::<f64>().sqrt());
        }
    }
    let n = d.len() as f64;
    let mean = d.iter().sum::<f64>() / n;
    let var = d.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, var.sqrt())
}

/// Add the upper triangle of w * max(D(n) - offset, 0) for one cell, given its z
/// ([L, S] row-major), into `acc`: S rows of [accumulator_width] values, pair
/// (a, b) at a * width + b; `t` is scratch of [panels_len] values for one cell.
pub(crate) fn accumulate_cell(z: &[f32], s: usize, l: usize, w: f32, offset: f32, t: &mut [f32], acc: &mut [f64]) {
    to_panels(z, 1, s, l, t);
    add_block_pairs(&Block { panels: t, weights: &[PairWeight { w, offset, mask: &[] }], s, l }, 0..s, 0..s, acc);
}

/// Columns b per pass of a task (a multiple of [PANEL]): the pass's panels of
/// the block's cells stay in the core's cache while the task's rows pass over
/// them.
const COLUMNS: usize = 256;

/// Rows a per task: up to 32, so that each cell's z is read from memory once
/// per 32 rows, but at least 8 tasks per thread, so that the uneven triangle
/// shares out evenly. Results do not depend on it (each pair adds its cells in
/// cell order whatever the tiling).
fn rows_per_task(s: usize, threads: usize) -> usize {
    (s / (8 * threads.max(1))).clamp(4, 32)
}

/// Add the upper triangles of w * D(n) for the cells of one block (all of the
/// same group; `z` is [cells, L, S]) into `acc` (S rows of [accumulator_width]
/// values), pairs masked by each cell's `masks` row when there are masks (1 or
/// 0 per sample, [accumulator_width] values; rows of masked samples are
/// skipped). `panels` is the kernel's copy of the block's z, kept from block to
/// block. Tasks of a few rows are shared out over the core's pool; within a
/// task the columns go in passes of [COLUMNS], each register tile over all the
/// block's cells, added straight into the task's rows of `acc`.
fn accumulate_block(z: &[f32], scale: &CellScale, masks: Option<&[Vec<f32>]>, s: usize, l: usize, panels: &mut Vec<f32>, acc: &mut [f64]) -> Result<()> {
    let pool = backend::pool()?;
    let rows = rows_per_task(s, pool.current_num_threads());
    let width = accumulator_width(s);
    pool.install(|| -> Result<()> {
        let cells = z.len() / (s * l);
        if panels.len() < panels_len(cells, s, l) {
            *panels = try_vec(panels_len(cells, s, l), 0f32, "the block's counterfactual z")?;
        }
        panels[..panels_len(cells, s, l)].par_chunks_mut(panel_len(cells, l)).enumerate().for_each(|(p, panel)| fill_panel(z, cells, s, l, p, panel));
        let weights: Vec<PairWeight> = (0..cells)
            .map(|r| {
                let mask = masks.map_or(&[][..], |ms| ms[r].as_slice());
                PairWeight { w: scale.weight[r], offset: scale.offset[r], mask }
            })
            .collect();
        let block = Block { panels, weights: &weights, s, l };
        acc[..s * width].par_chunks_mut(rows * width).enumerate().for_each(|(task, part)| {
            let rows = task * rows..task * rows + part.len() / width;
            // passes from a panel's first column: no tile straddles two passes
            let first = (rows.start + 1) / PANEL * PANEL;
            for c0 in (first..s).step_by(COLUMNS) {
                add_block_pairs(&block, rows.clone(), c0..(c0 + COLUMNS).min(s), part);
            }
        });
        Ok(())
    })
}

/// Sums of D(n) per group by the path that suits the request: with a mask
/// ([group_sums_masked]), the masked kernel; on a GPU, for posterior means
/// without normalisation, libtorch's tensor operations ([group_sums_tensor]);
/// otherwise the streamed CPU kernel.
#[allow(clippy::too_many_arguments)]
pub fn group_distances(
    model: &MrviModel, post: &Posterior, own_sample: &[i64], group: &[i64], n_groups: usize, spec: DistanceSpec,
    mask: Option<&[bool]>, block: usize, interrupted: &mut dyn FnMut() -> bool,
) -> Result<GroupSums> {
    if mask.is_none() && model.device() != Device::Cpu && spec.mc_samples == 0 && !spec.normalize && spec.space == Space::Latent {
        group_sums_tensor(model, post, group, n_groups, block)
    } else {
        group_sums_masked(model, post, own_sample, group, n_groups, spec, mask, block, interrupted)
    }
}

/// Sums of D(n) per group. `group[c]` is the group of cell c (< 0: in none);
/// `own_sample[c]` its sample (for the normaliser). Cells are processed in group
/// order, in blocks of at most `block` cells; `interrupted` is polled per block.
#[allow(clippy::too_many_arguments)]
pub fn group_sums(
    model: &MrviModel, post: &Posterior, own_sample: &[i64], group: &[i64], n_groups: usize, spec: DistanceSpec,
    block: usize, interrupted: &mut dyn FnMut() -> bool,
) -> Result<GroupSums> {
    group_sums_masked(model, post, own_sample, group, n_groups, spec, None, block, interrupted)
}

/// [group_sums] where `mask` (cells x S, column-major, as R stores a logical
/// matrix) marks the admissible (cell, sample) pairs: a cell contributes to
/// D(C)[a, b] only when both a and b are admissible for it, and each pair is
/// averaged over the cells that contributed (`pair_counts`).
#[allow(clippy::too_many_arguments)]
pub fn group_sums_masked(
    model: &MrviModel, post: &Posterior, own_sample: &[i64], group: &[i64], n_groups: usize, spec: DistanceSpec,
    mask: Option<&[bool]>, block: usize, interrupted: &mut dyn FnMut() -> bool,
) -> Result<GroupSums> {
    let s = model.config.n_samples as usize;
    let l = model.config.n_latent as usize; // dimension of z
    if mask.is_some_and(|m| m.len() != post.n_cells * s) {
        return Err(Error::InvalidInput(format!("the mask must have {} cells x {s} samples", post.n_cells)));
    }
    let effect = model.host_sample_effect_in(spec.space);
    let mut order: Vec<usize> = (0..post.n_cells).filter(|&c| group[c] >= 0).collect();
    order.sort_by_key(|&c| group[c]); // stable: cell order within a group
    // one S x S matrix per group: many groups (e.g. one per cell) must fail as an
    // error; the sums in the kernel's padded rows, which it adds to in place
    let matrices = |width: usize| -> Result<Vec<Vec<f64>>> {
        let mut m = try_with_capacity(n_groups, "the group distance sums")?;
        for _ in 0..n_groups {
            m.push(try_vec(s * width, 0f64, "the group distance sums")?);
        }
        Ok(m)
    };
    let width = accumulator_width(s);
    let mut sums = matrices(width)?;
    let mut pair_counts = if mask.is_some() { Some(matrices(s)?) } else { None };
    let mut n_cells = vec![0usize; n_groups];
    let (mut zs, mut panels) = (Vec::new(), Vec::new()); // a block's z, and the kernel's copy, kept from block to block
    let mut start = 0;
    while start < order.len() {
        if interrupted() {
            return Err(Error::Interrupted);
        }
        let g = group[order[start]];
        let mut end = start;
        while end < order.len() && end - start < block.max(1) && group[order[end]] == g {
            end += 1;
        }
        let cells = &order[start..end];
        let own: Vec<i64> = cells.iter().map(|&c| own_sample[c]).collect();
        let scale = cell_draws(&effect, post, cells, &own, &spec, &mut zs)?;
        let masks: Option<Vec<Vec<f32>>> = mask.map(|m| {
            let admissible = |c: usize, a: usize| a < s && m[c + post.n_cells * a];
            cells.iter().map(|&c| (0..accumulator_width(s)).map(|a| if admissible(c, a) { 1.0 } else { 0.0 }).collect()).collect()
        });
        for z in &zs {
            accumulate_block(z, &scale, masks.as_deref(), s, l, &mut panels, &mut sums[g as usize])?;
        }
        if let (Some(counts), Some(masks)) = (pair_counts.as_mut(), masks.as_ref()) {
            let counts = &mut counts[g as usize];
            for m in masks {
                for a in (0..s).filter(|&a| m[a] > 0.0) {
                    for b in (a + 1..s).filter(|&b| m[b] > 0.0) {
                        counts[a * s + b] += 1.0;
                    }
                }
            }
        }
        n_cells[g as usize] += cells.len();
        start = end;
    }
    Ok(GroupSums { n_samples: s, sums, width, n_cells, pair_counts })
}

/// D(n) for the given cells: values of an R array [cells, S, S] (column-major).
pub fn cell_distances(model: &MrviModel, post: &Posterior, own_sample: &[i64], cells: &[usize], spec: DistanceSpec, block: usize) -> Result<Vec<f64>> {
    let s = model.config.n_samples as usize;
    let l = model.config.n_latent as usize; // dimension of z
    if cells.iter().any(|&c| c >= post.n_cells) {
        crate::invalid!("a cell index is out of range (0..{})", post.n_cells);
    }
    let effect = model.host_sample_effect_in(spec.space);
    let mut out = r_array(Ix3(cells.len(), s, s), "the per-cell distance matrices")?;
    let mut zs = Vec::new();
    for (bi, part) in cells.chunks(block.max(1)).enumerate() {
        let own: Vec<i64> = part.iter().map(|&c| own_sample[c]).collect();
        let scale = cell_draws(&effect, post, part, &own, &spec, &mut zs)?;
        let mut t = vec![0f32; panels_len(1, s, l)];
        let width = accumulator_width(s);
        for r in 0..part.len() {
            let mut acc = vec![0f64; s * width];
            for z in &zs {
                accumulate_cell(&z[r * s * l..(r + 1) * s * l], s, l, scale.weight[r], scale.offset[r], &mut t, &mut acc);
            }
            let mut d = out.index_axis_mut(Axis(0), bi * block.max(1) + r);
            for a in 0..s {
                for b in a + 1..s {
                    d[[a, b]] = acc[a * width + b];
                    d[[b, a]] = acc[a * width + b];
                }
            }
        }
    }
    Ok(out.into_raw_vec_and_offset().0)
}

/// The same group sums computed with libtorch tensor operations (cdist and
/// index_add) on the model's device: the GPU path, and an independent reference
/// for the CPU kernel. Posterior means only.
pub fn group_sums_tensor(model: &MrviModel, post: &Posterior, group: &[i64], n_groups: usize, block: usize) -> Result<GroupSums> {
    let s = model.config.n_samples as usize;
    let dev = model.device();
    let mean32: Vec<f32> = post.mean.iter().map(|&v| v as f32).collect();
    let all = rows_from_column_major(&mean32, post.n_cells, post.n_latent, 0, post.n_cells);
    let mut acc = Tensor::zeros([n_groups as i64, s as i64, s as i64], (Kind::Double, dev));
    let mut n_cells = vec![0usize; n_groups];
    let cells: Vec<usize> = (0..post.n_cells).filter(|&c| group[c] >= 0).collect();
    for part in cells.chunks(block.max(1)) {
        let idx = Tensor::from_slice(&part.iter().map(|&c| c as i64).collect::<Vec<_>>());
        let u = all.index_select(0, &idx).to_device(dev);
        let z = tch::no_grad(|| model.z_all_samples(&u));
        let d = Tensor::f_cdist(&z, &z, 2.0, None::<i64>)?.to_kind(Kind::Double);
        let g = Tensor::from_slice(&part.iter().map(|&c| group[c]).collect::<Vec<_>>()).to_device(dev);
        let _ = acc.f_index_add_(0, &g, &d)?;
        for &c in part {
            n_cells[group[c] as usize] += 1;
        }
    }
    let acc = acc.to_device(Device::Cpu).contiguous();
    let sums = (0..n_groups)
        .map(|g| Vec::<f64>::try_from(&acc.get(g as i64).view([-1])).map_err(Error::from))
        .collect::<Result<Vec<_>>>()?;
    Ok(GroupSums { n_samples: s, sums, width: s, n_cells, pair_counts: None })
}
