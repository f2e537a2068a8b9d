//! Latent representations of cells, counterfactual latents and decoded
//! expression, streamed over chunks of cells. Matrices cross to R column-major
//! (cells x L), so helpers here read and write that layout.

use crate::batch::Dataset;
use crate::data::CountColumns;
use crate::error::{r_array, try_vec, try_with_capacity, Error, Result};
use crate::model::{HostSampleEffect, MrviModel, ZLayout};
use crate::posterior::Posterior;
use ndarray::{s, ArrayView3, Ix3};
use rayon::prelude::*;
use tch::{Device, Kind, Tensor};

/// Posterior mean and standard deviation of u for every cell (cells x L each,
/// column-major).
pub fn encode<C: CountColumns>(model: &MrviModel, data: &Dataset<C>, chunk: usize) -> Result<(Vec<f32>, Vec<f32>)> {
    if data.sample.iter().any(|&s| s < 0 || s >= model.config.n_samples) {
        crate::invalid!("sample codes outside the fitted samples");
    }
    let n = data.n_cells();
    let l = model.config.dim_u() as usize;
    let mut mean = try_vec(n.saturating_mul(l), 0f32, "the posterior means")?;
    let mut sd = try_vec(n.saturating_mul(l), 0f32, "the posterior standard deviations")?;
    let cells: Vec<usize> = (0..n).collect();
    let mut start = 0;
    tch::no_grad(|| {
        for part in cells.chunks(chunk.max(1)) {
            // only the log counts are read: the host copy needs no device transfer
            let batch = data.batch(part, model.device(), true);
            let q = model.encode(&batch.log_counts, &batch.sample);
            copy_column_major(&q.mean, &mut mean, start, n);
            copy_column_major(&q.sd, &mut sd, start, n);
            start += part.len();
        }
    });
    Ok((mean, sd))
}

/// z = u + A_s u + a_s for given u (cells x L, column-major) and samples.
pub fn z_from_u(model: &MrviModel, u: &[f32], sample: &[i64], chunk: usize) -> Result<Vec<f32>> {
    let n = sample.len();
    let (lu, l) = (model.config.dim_u() as usize, model.config.n_latent as usize);
    if u.len() != n * lu {
        crate::invalid!("u has {} values, expected {} cells x {} dimensions", u.len(), n, lu);
    }
    if sample.iter().any(|&s| s < 0 || s >= model.config.n_samples) {
        crate::invalid!("sample codes outside the fitted samples");
    }
    let mut out = try_vec(n.saturating_mul(l), 0f32, "z")?;
    tch::no_grad(|| {
        let mut start = 0;
        while start < n {
            let end = (start + chunk.max(1)).min(n);
            let ut = rows_from_column_major(u, n, lu, start, end).to_device(model.device());
            let s = Tensor::from_slice(&sample[start..end]).to_device(model.device());
            copy_column_major(&model.z_from_u(&ut, &s), &mut out, start, n);
            start = end;
        }
    });
    Ok(out)
}

/// Counterfactual z of `cells` under every sample into `out`, [cells, S, L] or
/// [cells, L, S] row-major as `layout` says, for one draw of u (or its mean).
/// `out` is resized, its values all overwritten: a buffer kept from block to
/// block is neither zeroed nor allocated again.
pub fn cells_z(effect: &HostSampleEffect, post: &Posterior, cells: &[usize], draw: Option<usize>, seed: u64, layout: ZLayout, out: &mut Vec<f32>) {
    out.resize(cells.len() * effect.n_samples * effect.n_latent, 0.0);
    effect.z_block(&post.rows(cells, draw, seed), out, layout);
}

/// The posterior fits the model's u and every cell index is in it.
fn check_cells(effect: &HostSampleEffect, post: &Posterior, cells: &[usize]) -> Result<()> {
    if post.n_latent != effect.n_latent_u {
        crate::invalid!("u has {} dimensions, the model {}", post.n_latent, effect.n_latent_u);
    }
    if cells.iter().any(|&c| c >= post.n_cells) {
        crate::invalid!("a cell index is out of range");
    }
    Ok(())
}

/// Counterfactual z of `cells` under `samples`, for one draw of u (or its mean):
/// the values of an R array [cells, samples, L].
pub fn counterfactual_z(
    model: &MrviModel, post: &Posterior, cells: &[usize], samples: &[usize], draw: Option<usize>, seed: u64,
) -> Result<Vec<f64>> {
    let effect = model.host_sample_effect();
    let (l, s_all) = (effect.n_latent, effect.n_samples);
    check_cells(&effect, post, cells)?;
    if samples.iter().any(|&s| s >= s_all) {
        crate::invalid!("a sample index is out of range");
    }
    let mut out = r_array(Ix3(cells.len(), samples.len(), l), "the counterfactual latents")?;
    // blocks of cells: one libtorch call per block for an attention model on a GPU
    const BLOCK: usize = 256;
    let mut z = Vec::new();
    for (bi, part) in cells.chunks(BLOCK).enumerate() {
        cells_z(&effect, post, part, draw, seed, ZLayout::BySample, &mut z);
        let z = ArrayView3::from_shape((part.len(), s_all, l), &z).expect("[cells, S, L]");
        for (j, &s) in samples.iter().enumerate() {
            out.slice_mut(s![bi * BLOCK..bi * BLOCK + part.len(), j, ..]).zip_mut_with(&z.slice(s![.., s, ..]), |o, &v| *o = v as f64);
        }
    }
    Ok(out.into_raw_vec_and_offset().0)
}

/// The posterior spread of covariate effects over the draws, for
/// [projected_counterfactuals]: `blocks` are the maps' rows of each covariate
/// (its q coefficients), `whitening` per map and block a q x q matrix U
/// (column-major, the blocks of map 0 first) with U'U the covariate's
/// precision under that map's design.
pub struct EffectSpread<'a> {
    pub blocks: &'a [Vec<usize>],
    pub whitening: &'a [f64],
}

/// What [projected_counterfactuals] computes: the maps' projections of every
/// draw, the mean z over the draws, the effects' spread over the draws.
pub struct Projected {
    /// An R array [cells, L, r, draws] (a row of the maps for every cell is one block).
    pub projections: Option<Vec<f64>>,
    /// An R array [cells, S, L].
    pub mean_z: Option<Vec<f64>>,
    /// An R array [cells, blocks, 2]: tr(Psi) and the sum of squares of Psi.
    pub spread: Option<Vec<f64>>,
}

/// Linear maps of the counterfactual z over samples, for several posterior
/// draws of u at once (regressions of z on a sample design are such maps):
/// cell c under draw d gives M_c Z_c^(d) (r x L), Z_c^(d) its z under every
/// sample (S x L) and M_c = `maps[.., .., map_of_cell[c]]` (`maps`: r x S x K,
/// column-major). Returns these projections (`want_projections`), the mean z
/// over the draws (`want_mean`) and, with `spread`, per cell and covariate
/// block J the L x L matrix Psi = sum over draws d and rows a of (W_da -
/// mean_d W_da)(W_da - mean_d W_da)', W_d = U (rows J of M_c Z_c^(d)): its
/// trace and its sum of squares (Welford's updates, draws in order). Each
/// draw's z is made once and never leaves this function.
#[allow(clippy::too_many_arguments)]
pub fn projected_counterfactuals(
    model: &MrviModel, post: &Posterior, cells: &[usize], draws: &[Option<usize>], seed: u64, maps: &[f64], r: usize,
    map_of_cell: &[usize], want_projections: bool, want_mean: bool, spread: Option<&EffectSpread>,
) -> Result<Projected> {
    let effect = model.host_sample_effect();
    let (l, s) = (effect.n_latent, effect.n_samples);
    check_cells(&effect, post, cells)?;
    let n_maps = maps.len() / (r * s).max(1);
    if r == 0 || maps.len() != r * s * n_maps || map_of_cell.len() != cells.len() || map_of_cell.iter().any(|&k| k >= n_maps) {
        crate::invalid!("the maps must be {r} x {s} x K with one map index below K per cell");
    }
    // per map: the offsets of its blocks' whitening matrices; per cell: the
    // Welford state of every block (the mean of W, q x L, Psi, L x L, and a
    // row of differences, L)
    let (blocks, whitening): (&[Vec<usize>], &[f64]) = spread.map_or((&[], &[]), |sp| (sp.blocks, sp.whitening));
    let per_map: usize = blocks.iter().map(|b| b.len() * b.len()).sum();
    if blocks.iter().flatten().any(|&k| k >= r) || whitening.len() != per_map * n_maps {
        crate::invalid!("the spread's blocks must be rows of the maps, with a q x q whitening matrix per map and block");
    }
    let state_len: usize = blocks.iter().map(|b| welford_len(b.len(), l)).sum();
    let n = cells.len();
    let n_blocks = blocks.len();
    let mut out = if want_projections { Some(try_vec(r * n * l * draws.len(), 0f64, "the projected counterfactual latents")?) } else { None };
    let mut mean = if want_mean { Some(try_vec(n * s * l, 0f64, "the mean counterfactual latents")?) } else { None };
    let mut spread_out = if spread.is_some() { Some(try_vec(n * n_blocks * 2, 0f64, "the effects' spread")?) } else { None };
    const BLOCK: usize = 256;
    let n_draws = draws.len() as f64;
    // per block: each cell's projections of one draw (r x L), its z summed over
    // the draws (L x S) and its spread state, contiguous per cell; scattered
    // into the R arrays once per draw and once per block (writing them in place
    // strides by the number of cells: a cache miss per value)
    let mut proj = try_vec(BLOCK * r * l, 0f64, "the projected counterfactual latents")?;
    let mut block_zsum = try_vec(if want_mean { BLOCK * s * l } else { 0 }, 0f64, "the mean counterfactual latents")?;
    let mut block_state = try_vec(BLOCK * state_len, 0f64, "the effects' spread")?;
    // each map's rows contiguous ([K, r, S]), as the cells' z come by dimension
    let mut maps_by_row = try_vec(maps.len(), 0f64, "the maps")?;
    for (by_row, map) in maps_by_row.chunks_exact_mut(r * s).zip(maps.chunks_exact(r * s)) {
        for (j, &w) in map.iter().enumerate() {
            by_row[(j % r) * s + j / r] = w;
        }
    }
    let mut z = Vec::new();
    #[cfg(target_arch = "x86_64")]
    let avx2 = std::arch::is_x86_feature_detected!("avx2");
    for (bi, part) in cells.chunks(BLOCK).enumerate() {
        let first = bi * BLOCK;
        block_zsum.fill(0.0);
        block_state.fill(0.0);
        for (d, &draw) in draws.iter().enumerate() {
            cells_z(&effect, post, part, draw, seed, ZLayout::ByDimension, &mut z);
            let one = |(i, (((zc, acc), zsum), state)): (usize, CellSlices)| {
                let k_map = map_of_cell[first + i];
                let work = CellDraw {
                    map: &maps_by_row[k_map * r * s..(k_map + 1) * r * s],
                    whitening: &whitening[k_map * per_map..(k_map + 1) * per_map],
                    blocks,
                    l,
                    count: (d + 1) as f64,
                    want_mean,
                };
                #[cfg(target_arch = "x86_64")]
                if avx2 {
                    // SAFETY: the CPU has AVX2
                    return unsafe { work.run_avx2(zc, acc, zsum, state) };
                }
                work.run(zc, acc, zsum, state)
            };
            let n_part = part.len();
            // without the mean or the spread, empty slices stand in for the cells' own
            let empty = || (0..n_part).map(|_| <&mut [f64]>::default()).collect::<Vec<_>>();
            let sums: Vec<&mut [f64]> = if want_mean { block_zsum.chunks_exact_mut(s * l).take(n_part).collect() } else { empty() };
            let states: Vec<&mut [f64]> = if state_len > 0 { block_state.chunks_exact_mut(state_len).take(n_part).collect() } else { empty() };
            let accs = &mut proj[..n_part * r * l];
            // each cell's arithmetic is its own, so the pool does not change it
            match crate::backend::pool() {
                Ok(pool) => pool.install(|| {
                    z.par_chunks_exact(s * l).zip(accs.par_chunks_exact_mut(r * l)).zip(sums).zip(states).enumerate().for_each(one)
                }),
                Err(_) => z.chunks_exact(s * l).zip(accs.chunks_exact_mut(r * l)).zip(sums).zip(states).enumerate().for_each(one),
            }
            if let Some(out) = out.as_mut() {
                for (i, acc) in proj.chunks_exact(r * l).take(n_part).enumerate() {
                    for k in 0..r {
                        for li in 0..l {
                            out[first + i + n * (li + l * (k + r * d))] = acc[k * l + li];
                        }
                    }
                }
            }
        }
        if let Some(m) = mean.as_mut() {
            for (i, zsum) in block_zsum.chunks_exact(s * l).take(part.len()).enumerate() {
                // zsum[li * S + a] is R's [cells, S, L] at (cell, a, li)
                for (j, &v) in zsum.iter().enumerate() {
                    m[first + i + n * j] = v / n_draws;
                }
            }
        }
        if let Some(sp) = spread_out.as_mut() {
            for (i, state) in block_state.chunks_exact(state_len.max(1)).take(part.len()).enumerate() {
                let mut rest = state;
                for (j, rows) in blocks.iter().enumerate() {
                    let (st, tail) = rest.split_at(welford_len(rows.len(), l));
                    rest = tail;
                    let (trace, squares) = welford_moments(st, rows.len(), l);
                    sp[first + i + n * j] = trace;
                    sp[first + i + n * (j + n_blocks)] = squares;
                }
            }
        }
    }
    Ok(Projected { projections: out, mean_z: mean, spread: spread_out })
}

/// Values of a covariate block's Welford state: the mean of W (q x L), Psi
/// (L x L, its upper triangle used) and a row of differences (L).
fn welford_len(q: usize, l: usize) -> usize {
    q * l + l * l + l
}

/// One draw's work on one cell in [projected_counterfactuals]: the map and
/// whitening matrices of the cell's design, the spread's blocks, L, which
/// draw this is (`count`, from 1), whether z is summed.
#[derive(Clone, Copy)]
struct CellDraw<'a> {
    /// the cell's map by row, r x S
    map: &'a [f64],
    whitening: &'a [f64],
    blocks: &'a [Vec<usize>],
    l: usize,
    count: f64,
    want_mean: bool,
}

impl CellDraw<'_> {
    /// The map's projections of the cell's z (L x S, by dimension) into `acc`
    /// (r x L), z added into `zsum` (with `want_mean`; L x S), and each block's
    /// Welford update of `state`.
    #[inline(always)]
    fn run(&self, zc: &[f32], acc: &mut [f64], zsum: &mut [f64], state: &mut [f64]) {
        let l = self.l;
        let s = zc.len() / l;
        for (k, row) in self.map.chunks_exact(s).enumerate() {
            for (li, zl) in zc.chunks_exact(s).enumerate() {
                acc[k * l + li] = dot_widened(row, zl);
            }
        }
        if self.want_mean {
            for (m, &v) in zsum.iter_mut().zip(zc) {
                *m += v as f64;
            }
        }
        let (mut u_at, mut rest) = (0, state);
        for rows in self.blocks {
            let q = rows.len();
            let (st, tail) = rest.split_at_mut(welford_len(q, l));
            rest = tail;
            welford_update(&self.whitening[u_at..u_at + q * q], rows, acc, l, self.count, st);
            u_at += q * q;
        }
    }

    /// [CellDraw::run] compiled for AVX2: its loops 4 values wide, the same
    /// operations in the same order (no fused multiply-adds), so the same bits.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn run_avx2(&self, zc: &[f32], acc: &mut [f64], zsum: &mut [f64], state: &mut [f64]) {
        self.run(zc, acc, zsum, state)
    }
}

/// w . z in double precision, in 8 running sums (which vectorise) added at
/// the end.
#[inline(always)]
fn dot_widened(w: &[f64], z: &[f32]) -> f64 {
    let mut sums = [0f64; 8];
    let (wc, zc) = (w.chunks_exact(8), z.chunks_exact(8));
    let tail: f64 = wc.remainder().iter().zip(zc.remainder()).map(|(&a, &b)| a * b as f64).sum();
    for (wc, zc) in wc.zip(zc) {
        for j in 0..8 {
            sums[j] += wc[j] * zc[j] as f64;
        }
    }
    sums.iter().sum::<f64>() + tail
}

/// tr(Psi) and the sum of squares of Psi (symmetric, its upper triangle
/// stored) from a block's Welford state ([welford_len]).
fn welford_moments(state: &[f64], q: usize, l: usize) -> (f64, f64) {
    let psi = &state[q * l..q * l + l * l];
    let (mut trace, mut squares) = (0.0, 0.0);
    for a in 0..l {
        trace += psi[a * l + a];
        squares += psi[a * l + a] * psi[a * l + a];
        for b in a + 1..l {
            squares += 2.0 * psi[a * l + b] * psi[a * l + b];
        }
    }
    (trace, squares)
}

/// A cell's slices in [projected_counterfactuals]: its z (L x S), projections
/// (r x L), mean z and spread state.
type CellSlices<'a> = (((&'a [f32], &'a mut [f64]), &'a mut [f64]), &'a mut [f64]);

/// One draw's Welford update of a covariate block's spread: W = U (rows of
/// `acc`, r x L by row) is q x L; `state` ([welford_len]) holds the mean of W
/// over the draws so far and Psi; `count` counts this draw.
#[inline(always)]
fn welford_update(u: &[f64], rows: &[usize], acc: &[f64], l: usize, count: f64, state: &mut [f64]) {
    let q = rows.len();
    let (mean, rest) = state.split_at_mut(q * l);
    let (psi, delta) = rest.split_at_mut(l * l);
    for a in 0..q {
        for li in 0..l {
            // W[a, li] = sum over b of U[a, b] acc[rows[b], li]
            let w: f64 = (0..q).map(|b| u[a + q * b] * acc[rows[b] * l + li]).sum();
            let m = &mut mean[a * l + li];
            let dv = w - *m;
            *m += dv / count;
            delta[li] = dv;
        }
        // Psi += (1 - 1/count) delta delta' (the symmetric form of Welford's update)
        let f = 1.0 - 1.0 / count;
        for x in 0..l {
            for y in x..l {
                psi[x * l + y] += f * delta[x] * delta[y];
            }
        }
    }
}

/// Expected normalised expression (softmax of the decoder) for u (cells x L_u,
/// column-major) under one sample per cell and the nuisance covariates (`site`:
/// cells x K codes, `continuous`: cells x C standardised values, both
/// column-major): the values of an R matrix [genes, cells].
pub fn expression_from_u(model: &MrviModel, u: &[f64], sample: &[i64], site: &[i64], continuous: &[f64]) -> Result<Vec<f64>> {
    let n = sample.len();
    if sample.iter().any(|&s| s < 0 || s >= model.config.n_samples) {
        crate::invalid!("sample codes outside the fitted samples");
    }
    let dev = model.device();
    decode_blocks(model, u, model.config.dim_u() as usize, site, continuous, n, |ut, start, end| {
        model.z_from_u(ut, &Tensor::from_slice(&sample[start..end]).to_device(dev))
    })
}

/// Expected normalised expression decoded from z itself (cells x L_z,
/// column-major) under the nuisance covariates (as in `expression_from_u`): an
/// R matrix [genes, cells].
pub fn expression_from_z(model: &MrviModel, z: &[f64], site: &[i64], continuous: &[f64]) -> Result<Vec<f64>> {
    let k = model.config.factor_levels().len();
    decode_blocks(model, z, model.config.n_latent as usize, site, continuous, site.len() / k, |zt, _, _| zt.shallow_clone())
}

/// The largest |log2 fold change| over genes of each cell from z_lo to z_hi
/// (cells x L_z, column-major), the decoder's expression of each averaged over
/// the nuisance settings `grid` (settings x K site codes, row-major; continuous
/// covariates at their means): per cell, what R's `decode_expression()` and
/// `effect_lfc()` give as genes x cells matrices, reduced where it is decoded
/// (the same operations in f64, so the same values; NaN where a fold change is
/// NaN). Cells go in blocks of [DECODE_BLOCK].
pub fn largest_lfc(model: &MrviModel, z_hi: &[f64], z_lo: &[f64], grid: &[i64]) -> Result<Vec<f64>> {
    let (k, nc) = (model.config.factor_levels().len(), model.config.n_continuous as usize);
    let (l, genes) = (model.config.n_latent as usize, model.config.n_genes as usize);
    let n = z_hi.len() / l.max(1);
    if z_hi.len() != n * l || z_lo.len() != z_hi.len() || k == 0 || grid.is_empty() || grid.len() % k != 0 {
        crate::invalid!("z_hi and z_lo must be cells x {l} and the grid settings x {k} site codes");
    }
    check_site_codes(model, grid)?;
    let settings = grid.len() / k;
    let hi32: Vec<f32> = crate::error::try_collect(z_hi.len(), z_hi.iter().map(|&x| x as f32), "a single-precision copy")?;
    let lo32: Vec<f32> = crate::error::try_collect(z_lo.len(), z_lo.iter().map(|&x| x as f32), "a single-precision copy")?;
    let dev = model.device();
    let mut out = try_with_capacity(n, "the largest fold changes")?;
    // sums over the settings, [cells, genes], as R adds the decoded matrices;
    // a setting's expression in single precision, as decoded
    let block = DECODE_BLOCK.min(n);
    let mut sums = [try_vec(block * genes, 0f64, "the decoded expression")?, try_vec(block * genes, 0f64, "the decoded expression")?];
    let mut rho = try_vec(block * genes, 0f32, "the decoded expression")?;
    for start in (0..n).step_by(DECODE_BLOCK) {
        let (end, m) = ((start + DECODE_BLOCK).min(n), (start + DECODE_BLOCK).min(n) - start);
        let zs = [rows_from_column_major(&hi32, n, l, start, end).to_device(dev), rows_from_column_major(&lo32, n, l, start, end).to_device(dev)];
        let x = (nc > 0).then(|| Tensor::zeros([m as i64, nc as i64], (Kind::Float, dev)));
        sums.iter_mut().for_each(|sum| sum[..m * genes].fill(0.0));
        for setting in grid.chunks_exact(k) {
            let b = Tensor::from_slice(&setting.repeat(m)).view([m as i64, k as i64]).to_device(dev);
            for (z, sum) in zs.iter().zip(sums.iter_mut()) {
                let expression = tch::no_grad(|| model.expression(z, &b, x.as_ref())).to_device(Device::Cpu).contiguous();
                expression.f_copy_data(&mut rho[..m * genes], m * genes)?;
                // widened to f64 as R's matrices are (exactly), then added
                sum[..m * genes].iter_mut().zip(&rho[..m * genes]).for_each(|(t, &v)| *t += v as f64);
            }
        }
        let count = settings as f64;
        for (hi, lo) in sums[0][..m * genes].chunks_exact(genes).zip(sums[1][..m * genes].chunks_exact(genes)) {
            // the largest |log2 r| is at the largest or the smallest ratio r
            // (log2 is monotone): two logarithms per cell instead of one per gene
            let (mut low, mut high, mut nan) = (f64::INFINITY, f64::NEG_INFINITY, false);
            for (&h, &w) in hi.iter().zip(lo) {
                let r = (h / count) / (w / count);
                nan |= r.is_nan();
                low = low.min(r);
                high = high.max(r);
            }
            out.push(if nan { f64::NAN } else { high.log2().abs().max(low.log2().abs()) });
        }
    }
    Ok(out)
}

/// Cells decoded at once: a block's expression is [DECODE_BLOCK, genes].
const DECODE_BLOCK: usize = 1024;

/// Site codes (any layout) within the fitted sites.
fn check_site_codes(model: &MrviModel, site: &[i64]) -> Result<()> {
    if site.iter().any(|&b| b < 0 || b >= model.config.n_batches) {
        crate::invalid!("site codes outside the fitted sites");
    }
    Ok(())
}

/// The decoder's expression of z ([cells, L_z]) under site codes `b` ([cells,
/// K]) and continuous covariates `x`, as f64 values [cells, genes] (row-major).
fn decoded(model: &MrviModel, z: &Tensor, b: &Tensor, x: Option<&Tensor>) -> Result<Vec<f64>> {
    let rho = tch::no_grad(|| model.expression(z, b, x));
    Vec::<f64>::try_from(&rho.to_device(Device::Cpu).to_kind(Kind::Double).contiguous().view([-1])).map_err(Error::from)
}

/// Decoder expression of `values` (n cells x width, column-major) in blocks of
/// [DECODE_BLOCK] cells, after `to_z` maps a block's rows [start, end) to z.
#[allow(clippy::too_many_arguments)]
fn decode_blocks(
    model: &MrviModel, values: &[f64], width: usize, site: &[i64], continuous: &[f64], n: usize,
    to_z: impl Fn(&Tensor, usize, usize) -> Tensor,
) -> Result<Vec<f64>> {
    let (k, nc) = (model.config.factor_levels().len(), model.config.n_continuous as usize);
    if values.len() != n * width || site.len() != n * k || continuous.len() != n * nc {
        crate::invalid!(
            "{} values, {} site codes and {} continuous values for {n} cells x {width} dimensions, {k} factors and {nc} covariates",
            values.len(), site.len(), continuous.len()
        );
    }
    check_site_codes(model, site)?;
    let v32: Vec<f32> = crate::error::try_collect(values.len(), values.iter().map(|&x| x as f32), "a single-precision copy")?;
    let x32: Vec<f32> = crate::error::try_collect(continuous.len(), continuous.iter().map(|&x| x as f32), "a single-precision copy")?;
    let mut out = try_with_capacity(n.saturating_mul(model.config.n_genes as usize), "the expression matrix")?;
    let dev = model.device();
    for start in (0..n).step_by(DECODE_BLOCK) {
        let end = (start + DECODE_BLOCK).min(n);
        let rows = rows_from_column_major(&v32, n, width, start, end).to_device(dev);
        let b = rows_from_column_major(site, n, k, start, end).to_device(dev);
        let x = (nc > 0).then(|| rows_from_column_major(&x32, n, nc, start, end).to_device(dev));
        out.extend(decoded(model, &to_z(&rows, start, end), &b, x.as_ref())?);
    }
    Ok(out)
}

/// Rows [start, end) of a column-major n x l buffer as a [end - start, l] tensor.
pub fn rows_from_column_major<T: tch::kind::Element + Copy + Default>(v: &[T], n: usize, l: usize, start: usize, end: usize) -> Tensor {
    let rows = end - start;
    let mut buf = vec![T::default(); rows * l];
    for c in 0..l {
        for r in 0..rows {
            buf[r * l + c] = v[c * n + start + r];
        }
    }
    Tensor::from_slice(&buf).view([rows as i64, l as i64])
}

/// Write a [rows, L] tensor into rows [start, start + rows) of a column-major
/// n x L buffer.
pub fn copy_column_major(t: &Tensor, out: &mut [f32], start: usize, n: usize) {
    let t = t.to_device(Device::Cpu).to_kind(Kind::Float).contiguous();
    let (rows, cols) = t.size2().expect("2-d");
    let (rows, cols) = (rows as usize, cols as usize);
    let mut buf = vec![0f32; rows * cols];
    let len = buf.len();
    t.copy_data(&mut buf, len);
    for r in 0..rows {
        for c in 0..cols {
            out[c * n + start + r] = buf[r * cols + c];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn column_major_round_trip() {
        let (n, l) = (5, 3);
        let v: Vec<f32> = (0..(n * l)).map(|x| x as f32).collect();
        let t = rows_from_column_major(&v, n, l, 1, 4);
        assert_eq!(t.size(), vec![3, 3]);
        // row 0 of t is cell 1: values 1, 6, 11
        assert_eq!(t.double_value(&[0, 1]), 6.0);
        let mut out = vec![0f32; n * l];
        copy_column_major(&t, &mut out, 1, n);
        for c in 0..l {
            for r in 1..4 {
                assert_eq!(out[c * n + r], v[c * n + r]);
            }
        }
    }

    #[test]
    fn widened_dot_products_equal_the_plain_sum() {
        // lengths with and without a tail beside the blocks of 8
        for len in [0usize, 1, 7, 8, 9, 16, 30, 64, 67] {
            let w: Vec<f64> = (0..len).map(|i| ((i * 13 % 7) as f64 - 3.0) / 4.0).collect();
            let z: Vec<f32> = (0..len).map(|i| ((i * 5 % 11) as f32 - 5.0) / 8.0).collect();
            // exact in f64: both sum multiples of 1/32 far below 2^52
            let want: f64 = w.iter().zip(&z).map(|(a, b)| a * *b as f64).sum();
            assert_eq!(dot_widened(&w, &z), want, "length {len}");
        }
    }
}
