//! Aggregated posteriors of samples (MODEL.md §8): q_s(u) = mean over (a subsample
//! of) the cells m of sample s of N(u; mu_m, diag sd_m^2), evaluated at cells'
//! posterior means. Cost O(cells x reference cells x L), streamed over cells; the
//! reference subsample keeps it from being O(N^2).
//!
//! Each log N(u; mu_m, sd_m) is written as c_m + sum_d u_d (u_d a_md + b_md)
//! (a = -1/(2 sd^2), b = mu / sd^2), two fused multiply-adds per dimension, and
//! the log-mean-exp over a sample's reference cells uses a branch-free exp, so
//! that both loops run on vector lanes (AVX2 when the CPU has it).

use crate::backend;
use crate::error::{try_collect, try_vec, Error, Result};
use crate::posterior::Posterior;
use ndarray::Array2;
use rayon::prelude::*;

/// Terms of a log-sum-exp this far below its largest term are evaluated as this
/// far below it: exp(-50) < 2e-22 each, far below the sum's rounding error.
const NEGLIGIBLE: f64 = 50.0;

/// The reference cells of every sample, in the form the kernel evaluates.
struct References {
    /// per sample: [dim][cell] coefficients a and b, and constants c
    samples: Vec<SampleReference>,
    /// (reference cell, its sample, its position there), sorted: for leaving a
    /// cell out of its own reference
    position: Vec<(usize, usize, usize)>,
}

struct SampleReference {
    a: Vec<f64>,
    b: Vec<f64>,
    c: Vec<f64>,
}

impl References {
    fn new(post: &Posterior, ref_cells: &[usize], ref_sample: &[usize], n_samples: usize) -> Result<Self> {
        let (n, l) = (post.n_cells, post.n_latent);
        if ref_cells.len() != ref_sample.len() {
            return Err(Error::InvalidInput("one sample per reference cell".into()));
        }
        if ref_cells.iter().any(|&c| c >= n) || ref_sample.iter().any(|&s| s >= n_samples) {
            return Err(Error::InvalidInput("reference cell or sample out of range".into()));
        }
        let mut members = vec![Vec::new(); n_samples];
        let mut position = Vec::with_capacity(ref_cells.len());
        for (&c, &s) in ref_cells.iter().zip(ref_sample) {
            position.push((c, s, members[s].len()));
            members[s].push(c);
        }
        let log_2pi = (2.0 * std::f64::consts::PI).ln();
        let samples = members
            .iter()
            .map(|cells| {
                let m = cells.len();
                let (mut a, mut b, mut c) = (vec![0f64; l * m], vec![0f64; l * m], vec![-0.5 * l as f64 * log_2pi; m]);
                for (j, &cell) in cells.iter().enumerate() {
                    for d in 0..l {
                        // (f64::max would turn a NaN sd, damage, into the floor)
                        let sd = post.sd[d * n + cell];
                        let sd = if sd.is_nan() { sd } else { sd.max(1e-6) };
                        let (mu, inv_var) = (post.mean[d * n + cell], 1.0 / (sd * sd));
                        a[d * m + j] = -0.5 * inv_var;
                        b[d * m + j] = mu * inv_var;
                        c[j] -= sd.ln() + 0.5 * mu * mu * inv_var;
                    }
                }
                SampleReference { a, b, c }
            })
            .collect();
        position.sort_unstable();
        Ok(References { samples, position })
    }

    /// out[k * S + s] = log q_s(u_k) for a block of cells (`u` row-major, one row
    /// of L per cell) and every sample s, leaving each cell out of the references;
    /// `logp` is scratch space. Samples are the outer loop, so that one sample's
    /// reference stays in cache for the whole block. Compiled for AVX2 + FMA when
    /// the CPU has them.
    fn log_densities(&self, u: &[f64], cells: &[usize], out: &mut [f64], logp: &mut Vec<f64>) {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                // SAFETY: the CPU supports the features the function is compiled for.
                return unsafe { self.log_densities_avx2(u, cells, out, logp) };
            }
        }
        self.log_densities_portable(u, cells, out, logp)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn log_densities_avx2(&self, u: &[f64], cells: &[usize], out: &mut [f64], logp: &mut Vec<f64>) {
        self.log_densities_portable(u, cells, out, logp)
    }

    #[inline(always)]
    fn log_densities_portable(&self, u: &[f64], cells: &[usize], out: &mut [f64], logp: &mut Vec<f64>) {
        let (l, s_count) = (u.len() / cells.len().max(1), self.samples.len());
        let left_out: Vec<&[(usize, usize, usize)]> = cells
            .iter()
            .map(|&c| {
                let start = self.position.partition_point(|p| p.0 < c);
                &self.position[start..self.position.partition_point(|p| p.0 <= c)]
            })
            .collect();
        for (s, r) in self.samples.iter().enumerate() {
            let m = r.c.len();
            for (k, uk) in u.chunks_exact(l).enumerate() {
                logp.clear();
                logp.extend_from_slice(&r.c);
                for (d, &ud) in uk.iter().enumerate() {
                    let (a, b) = (&r.a[d * m..(d + 1) * m], &r.b[d * m..(d + 1) * m]);
                    for ((lp, &aj), &bj) in logp.iter_mut().zip(a).zip(b) {
                        *lp += ud * ud.mul_add(aj, bj);
                    }
                }
                let mut count = m;
                for &(_, _, j) in left_out[k].iter().filter(|p| p.1 == s) {
                    logp[j] = f64::NEG_INFINITY;
                    count -= 1;
                }
                out[k * s_count + s] = if count == 0 { f64::NEG_INFINITY } else { log_sum_exp(logp) - (count as f64).ln() };
            }
        }
    }
}

/// log sum_j exp(v_j); terms more than [NEGLIGIBLE] below the largest are
/// evaluated as that far below it, which cannot change the sum.
#[inline(always)]
fn log_sum_exp(v: &[f64]) -> f64 {
    // LANES partial maxima and sums, so that both loops run on vector lanes
    const LANES: usize = 4;
    let (chunks, rest) = (v.chunks_exact(LANES), v.chunks_exact(LANES).remainder());
    let mut lane_max = [f64::NEG_INFINITY; LANES];
    for chunk in chunks.clone() {
        for (m, &x) in lane_max.iter_mut().zip(chunk) {
            *m = if x > *m { x } else { *m };
        }
    }
    let max = lane_max.iter().chain(rest).fold(f64::NEG_INFINITY, |m, &x| if x > m { x } else { m });
    if max == f64::NEG_INFINITY {
        // every term -inf (no reference cell), unless some are NaN (damage)
        return if v.iter().any(|x| x.is_nan()) { f64::NAN } else { max };
    }
    // terms below max - NEGLIGIBLE (cells left out, at -inf, among them) add
    // exp(-NEGLIGIBLE) each: to a sum of at least 1, less than its rounding error.
    // Written without a branch, and so that NaN stays NaN.
    let term = |x: f64| {
        let d = x - max;
        exp_nonpositive(if d < -NEGLIGIBLE { -NEGLIGIBLE } else { d })
    };
    let mut lane_sum = [0f64; LANES];
    for chunk in chunks {
        for (acc, &x) in lane_sum.iter_mut().zip(chunk) {
            *acc += term(x);
        }
    }
    let sum = lane_sum.iter().sum::<f64>() + rest.iter().map(|&x| term(x)).sum::<f64>();
    max + sum.ln()
}

/// exp(x) for x in [-700, 0]: x = n ln 2 + r with |r| <= ln(2)/2, exp(r) by its
/// Taylor polynomial of degree 12 (remainder < 2e-16 relative), times 2^n; no
/// branch and no call, so that loops over it vectorise.
#[inline(always)]
fn exp_nonpositive(x: f64) -> f64 {
    // round x / ln 2 with the 1.5 * 2^52 trick: the integer sits in the low mantissa bits
    const MAGIC: f64 = 6_755_399_441_055_744.0;
    const LN2_HI: f64 = 6.931_471_803_691_238e-1; // fdlibm's split of ln 2: n * LN2_HI is exact
    const LN2_LO: f64 = 1.908_214_929_270_587_7e-10;
    let shifted = x * std::f64::consts::LOG2_E + MAGIC;
    let n = shifted.to_bits() as i64 - MAGIC.to_bits() as i64;
    let fx = shifted - MAGIC;
    let r = x - fx * LN2_HI - fx * LN2_LO;
    // 1 / k! for k = 12, 11, ..., 0
    const C: [f64; 13] = [
        1.0 / 479_001_600.0, 1.0 / 39_916_800.0, 1.0 / 3_628_800.0, 1.0 / 362_880.0, 1.0 / 40_320.0, 1.0 / 5_040.0,
        1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0,
    ];
    let mut p = C[0];
    for c in &C[1..] {
        p = p.mul_add(r, *c);
    }
    p * f64::from_bits(((n + 1023) << 52) as u64)
}

fn check_cells(post: &Posterior, at: &[usize]) -> Result<()> {
    if at.iter().any(|&c| c >= post.n_cells) {
        return Err(Error::InvalidInput("evaluation cell out of range".into()));
    }
    Ok(())
}

/// Cells evaluated together against each sample's reference: their densities
/// (CELL_BLOCK x samples) and the reference of one sample (~16 kB at 100 cells
/// and L = 10) fit in the core's cache.
const CELL_BLOCK: usize = 32;

/// Fill out[k, ...] (row-major, `width` values per cell) for each evaluation cell
/// at[k] with `per_cell(k, densities, row)`, where `densities` holds log q_s(u)
/// for every sample; blocks of cells are spread over the core's pool.
fn for_each_cell(
    post: &Posterior, at: &[usize], refs: &References, out: &mut [f64], width: usize,
    per_cell: impl Fn(usize, &[f64], &mut [f64]) + Sync,
) -> Result<()> {
    if width == 0 || at.is_empty() {
        return Ok(());
    }
    let (n, l, s_count) = (post.n_cells, post.n_latent, refs.samples.len());
    backend::pool()?.install(|| {
        out.par_chunks_mut(width * CELL_BLOCK).zip(at.par_chunks(CELL_BLOCK).enumerate()).for_each_init(
            || (Vec::new(), vec![0f64; l * CELL_BLOCK], vec![0f64; s_count * CELL_BLOCK]),
            |(logp, u, densities), (rows, (block, cells))| {
                for (k, &c) in cells.iter().enumerate() {
                    for d in 0..l {
                        u[k * l + d] = post.mean[d * n + c];
                    }
                }
                let (u, densities) = (&u[..cells.len() * l], &mut densities[..cells.len() * s_count]);
                refs.log_densities(u, cells, densities, logp);
                for (k, row) in rows.chunks_mut(width).enumerate() {
                    per_cell(block * CELL_BLOCK + k, &densities[k * s_count..(k + 1) * s_count], row);
                }
            },
        )
    });
    Ok(())
}

/// out[c + n_eval * s] = log q_s(u_c) for the evaluation cells `at` (column-major
/// cells x samples). The reference cells `ref_cells` belong to samples
/// `ref_sample` (< `n_samples`); a cell is never part of its own reference
/// (leave-one-out). Samples without reference cells give -inf.
pub fn log_sample_densities(
    post: &Posterior, at: &[usize], ref_cells: &[usize], ref_sample: &[usize], n_samples: usize,
) -> Result<Vec<f64>> {
    let refs = References::new(post, ref_cells, ref_sample, n_samples)?;
    check_cells(post, at)?;
    let n_eval = at.len();
    // [cell, sample], allocated here where failure is an error
    let mut values = Array2::from_shape_vec((n_eval, n_samples), try_vec(n_eval.saturating_mul(n_samples), 0f64, "the sample densities")?)
        .expect("the shape matches the length");
    let rows = values.as_slice_mut().expect("a new array is contiguous");
    for_each_cell(post, at, &refs, rows, n_samples, |_, densities, row| row.copy_from_slice(densities))?;
    // column-major cells x samples, as R stores a matrix
    try_collect(n_eval * n_samples, values.t().iter().copied(), "the sample densities")
}

/// The aggregated posterior of each level of a sample covariate at the cells `at`:
/// out[c + n_eval * k] = log of the mean of q_s(u_c) over the samples s of level k
/// (`sample_level[s]`, None for a sample in no level) whose q_s is positive
/// (samples without reference cells do not count), leaving out the cell's own
/// sample `at_sample[c]` when `exclude_own_sample`; -inf when no sample is left.
/// Column-major cells x levels; only cells x levels are ever held.
#[allow(clippy::too_many_arguments)]
pub fn log_level_densities(
    post: &Posterior, at: &[usize], at_sample: &[usize], ref_cells: &[usize], ref_sample: &[usize], n_samples: usize,
    sample_level: &[Option<usize>], n_levels: usize, exclude_own_sample: bool,
) -> Result<Vec<f64>> {
    let refs = References::new(post, ref_cells, ref_sample, n_samples)?;
    check_cells(post, at)?;
    if at_sample.len() != at.len() || sample_level.len() != n_samples {
        return Err(Error::InvalidInput("one sample per evaluation cell and one level per sample".into()));
    }
    if at_sample.iter().any(|&s| s >= n_samples) || sample_level.iter().flatten().any(|&k| k >= n_levels) {
        return Err(Error::InvalidInput("sample or level out of range".into()));
    }
    let n_eval = at.len();
    let mut values = Array2::from_shape_vec((n_eval, n_levels), try_vec(n_eval.saturating_mul(n_levels), 0f64, "the level densities")?)
        .expect("the shape matches the length");
    let rows = values.as_slice_mut().expect("a new array is contiguous");
    for_each_cell(post, at, &refs, rows, n_levels, |k, densities, row| {
        let own = at_sample[k];
        let mut terms = Vec::new();
        for (level, value) in row.iter_mut().enumerate() {
            terms.clear();
            terms.extend(
                densities
                    .iter()
                    .zip(sample_level)
                    .enumerate()
                    // (samples without a reference cell are -inf; NaN, damage, stays)
                    .filter(|&(s, (v, l))| *l == Some(level) && *v != f64::NEG_INFINITY && !(exclude_own_sample && s == own))
                    .map(|(_, (v, _))| *v),
            );
            *value = if terms.is_empty() { f64::NEG_INFINITY } else { log_sum_exp(&terms) - (terms.len() as f64).ln() };
        }
    })?;
    try_collect(n_eval * n_levels, values.t().iter().copied(), "the level densities")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn densities_match_a_direct_sum_and_leave_the_cell_out() {
        // 4 cells, 1 dimension: means 0, 1, 3, 4; sds 1, 0.5, 1, 2
        let mean = [0.0, 1.0, 3.0, 4.0];
        let sd = [1.0, 0.5, 1.0, 2.0];
        let post = Posterior { mean: &mean, sd: &sd, n_cells: 4, n_latent: 1 };
        let out = log_sample_densities(&post, &[0, 2], &[0, 1, 2, 3], &[0, 0, 1, 1], 2).unwrap();
        let dnorm = |x: f64, m: f64, s: f64| (-(x - m).powi(2) / (2.0 * s * s)).exp() / (s * (2.0 * std::f64::consts::PI).sqrt());
        // cell 0 under sample 0: only cell 1 remains (leave-one-out)
        assert!((out[0] - dnorm(0.0, 1.0, 0.5).ln()).abs() < 1e-12);
        // cell 2 under sample 0: mean of both references
        assert!((out[1] - ((dnorm(3.0, 0.0, 1.0) + dnorm(3.0, 1.0, 0.5)) / 2.0).ln()).abs() < 1e-12);
        // cell 0 under sample 1
        assert!((out[2] - ((dnorm(0.0, 3.0, 1.0) + dnorm(0.0, 4.0, 2.0)) / 2.0).ln()).abs() < 1e-12);
        // cell 2 under sample 1: only cell 3
        assert!((out[3] - dnorm(3.0, 4.0, 2.0).ln()).abs() < 1e-12);
    }

    #[test]
    fn level_densities_are_log_means_of_sample_densities_without_the_own_sample() {
        // 12 cells in 2 dimensions, 4 samples; levels: samples 0 and 2 -> level 1,
        // sample 1 -> level 0, sample 3 -> no level
        let n = 12;
        let mean: Vec<f64> = (0..2 * n).map(|i| ((i * 7 % 11) as f64 - 5.0) / 2.0).collect();
        let sd: Vec<f64> = (0..2 * n).map(|i| 0.3 + (i % 5) as f64 * 0.2).collect();
        let post = Posterior { mean: &mean, sd: &sd, n_cells: n, n_latent: 2 };
        let sample: Vec<usize> = (0..n).map(|c| c % 4).collect();
        let (ref_cells, at): (Vec<usize>, Vec<usize>) = ((0..n).collect(), vec![0, 3, 5, 10]);
        let per_sample = log_sample_densities(&post, &at, &ref_cells, &sample, 4).unwrap();
        let level = [Some(1), Some(0), Some(1), None];
        for exclude in [false, true] {
            let at_sample: Vec<usize> = at.iter().map(|&c| sample[c]).collect();
            let out = log_level_densities(&post, &at, &at_sample, &ref_cells, &sample, 4, &level, 2, exclude).unwrap();
            for (k, &own) in at_sample.iter().enumerate() {
                for lev in 0..2 {
                    let members: Vec<f64> = (0..4)
                        .filter(|&s| level[s] == Some(lev) && !(exclude && s == own))
                        .map(|s| per_sample[k + at.len() * s].exp())
                        .collect();
                    let want = if members.is_empty() {
                        f64::NEG_INFINITY
                    } else {
                        (members.iter().sum::<f64>() / members.len() as f64).ln()
                    };
                    let got = out[k + at.len() * lev];
                    assert!(got == want || (got - want).abs() < 1e-10, "cell {k} level {lev}: {got} vs {want}");
                }
            }
        }
    }

    #[test]
    fn exp_nonpositive_equals_libm() {
        for i in 0..=70_000 {
            let x = -(i as f64) * 0.01;
            let (got, want) = (exp_nonpositive(x), x.exp());
            assert!(((got - want) / want).abs() < 1e-15, "exp({x}): {got} vs {want}");
        }
    }

    #[test]
    fn log_sum_exp_leaves_out_only_terms_below_rounding() {
        let v: Vec<f64> = (0..200).map(|i| -((i * 37 % 101) as f64) * 0.9).collect();
        let naive = v.iter().map(|x| x.exp()).sum::<f64>().ln();
        assert!((log_sum_exp(&v) - naive).abs() < 1e-14);
        assert_eq!(log_sum_exp(&[f64::NEG_INFINITY, f64::NEG_INFINITY]), f64::NEG_INFINITY);
        assert_eq!(log_sum_exp(&[-1000.0, -2000.0]), -1000.0);
        // NaN is damage: it stays NaN, also beside -inf terms only
        assert!(log_sum_exp(&[f64::NAN, f64::NEG_INFINITY]).is_nan());
        assert!(log_sum_exp(&[f64::NAN; 3]).is_nan());
        assert!(log_sum_exp(&[0.0, 1.0, f64::NAN, 2.0, 3.0]).is_nan());
    }

    #[test]
    fn a_nan_posterior_gives_nan_densities_never_a_number() {
        // 3 cells, 1 dimension, one sample; cell 1 damaged in its mean, then its sd
        let sd = [1.0, 1.0, 1.0];
        let mean = [0.0, f64::NAN, 1.0];
        let post = Posterior { mean: &mean, sd: &sd, n_cells: 3, n_latent: 1 };
        // cell 0 under the references 1 (NaN) and 2
        assert!(log_sample_densities(&post, &[0], &[1, 2], &[0, 0], 1).unwrap()[0].is_nan());
        // ... and under the damaged one alone
        assert!(log_sample_densities(&post, &[0], &[1], &[0], 1).unwrap()[0].is_nan());
        let mean = [0.0, 0.5, 1.0];
        let sd = [1.0, f64::NAN, 1.0];
        let post = Posterior { mean: &mean, sd: &sd, n_cells: 3, n_latent: 1 };
        assert!(log_sample_densities(&post, &[0], &[1], &[0], 1).unwrap()[0].is_nan());
        // a level over a damaged sample's density is NaN too
        let out = log_level_densities(&post, &[0], &[0], &[1, 2], &[0, 1], 2, &[Some(0), Some(0)], 1, false).unwrap();
        assert!(out[0].is_nan());
    }

    #[test]
    fn blocks_of_cells_give_each_cell_its_own_densities() {
        // 100 evaluation cells (several blocks of CELL_BLOCK), every cell a reference
        let (n, l, samples) = (100, 3, 5);
        let mean: Vec<f64> = (0..n * l).map(|i| ((i * 13 % 17) as f64 - 8.0) / 3.0).collect();
        let sd: Vec<f64> = (0..n * l).map(|i| 0.4 + (i % 7) as f64 * 0.1).collect();
        let post = Posterior { mean: &mean, sd: &sd, n_cells: n, n_latent: l };
        let sample: Vec<usize> = (0..n).map(|c| c % samples).collect();
        let cells: Vec<usize> = (0..n).rev().collect();
        let all = log_sample_densities(&post, &cells, &(0..n).collect::<Vec<_>>(), &sample, samples).unwrap();
        for (k, &c) in cells.iter().enumerate() {
            let one = log_sample_densities(&post, &[c], &(0..n).collect::<Vec<_>>(), &sample, samples).unwrap();
            for s in 0..samples {
                assert_eq!(all[k + n * s], one[s], "cell {c}, sample {s}");
                // direct: log mean over the sample's other cells of the normal density
                let terms: Vec<f64> = (0..n)
                    .filter(|&m| sample[m] == s && m != c)
                    .map(|m| {
                        (0..l)
                            .map(|d| {
                                let (x, mu, sg) = (mean[d * n + c], mean[d * n + m], sd[d * n + m]);
                                -0.5 * ((x - mu) / sg).powi(2) - sg.ln() - 0.5 * (2.0 * std::f64::consts::PI).ln()
                            })
                            .sum::<f64>()
                            .exp()
                    })
                    .collect();
                let want = (terms.iter().sum::<f64>() / terms.len() as f64).ln();
                assert!((one[s] - want).abs() < 1e-10, "cell {c}, sample {s}: {} vs {want}", one[s]);
            }
        }
    }
}
