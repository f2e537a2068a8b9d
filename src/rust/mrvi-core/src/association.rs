//! Guided analysis per cell (paper §3.3, MODEL.md §7): for a categorical sample
//! covariate y, compare the distances D(n)[a, b] over pairs of samples with
//! y_a = y_b against pairs with y_a != y_b: the one-sided two-sample
//! Kolmogorov-Smirnov statistic (within-category distances smaller) as the
//! effect size, and Mantel's test of the within-category distance sum for the
//! p-value, which accounts for the pairs that share a sample: by permutation
//! (the same relabelings of the samples for every cell), or by the normal
//! approximation with the statistic's exact moments (`stats::mantel_within`).
//! With a minimum effect delta > 0 the null is "between-category distances
//! exceed within-category ones by at most delta": the test runs on D(n) with
//! delta taken off every between-category pair, which is exchangeable (so the
//! permutation p-value exact) when the effect is exactly delta, and conservative
//! below it (a test against a threshold, as TREAT for fold changes). A fit's
//! small leaks of a covariate into cell types it does not affect are real in
//! D(n) and found by a test of "no association"; this one asks for an effect
//! worth reporting.
//! D(n) is formed one cell at a time and dropped: nothing of size cells x S x S
//! is kept.

use crate::backend;
use crate::distances::{accumulate_cell, cell_draws, DistanceSpec};
use crate::pair_distances::{accumulator_width, panels_len};
use crate::posterior::Posterior;
use crate::error::{try_vec, Error, Result};
use crate::model::MrviModel;
use crate::rng::SplitMix64;
use crate::stats::{ks_statistic, mantel_within};
use tch::{Kind, Tensor};
use rayon::prelude::*;

#[derive(Clone, Copy, Debug, Default)]
pub struct CellTest {
    /// the one-sided KS statistic of within- against between-category distances
    pub statistic: f64,
    /// mean between-category minus mean within-category distance
    pub effect: f64,
    /// Mantel's standardised statistic and its p-value
    pub z: f64,
    pub p_value: f64,
    pub n_within: usize,
    pub n_between: usize,
}

/// Per-cell tests for `cells`. `category[s]` is sample s's covariate code (< 0:
/// missing, the sample takes no part); `block[s]` (empty: none) its block, the
/// samples that are not exchangeable with others (see [Relabeling]).
/// `permutations` > 0: the p-value is
/// (1 + #{relabelings with a within-category sum at most the cell's}) / (1 +
/// permutations), over relabelings drawn from `spec.seed` alone (so a cell's
/// p-value does not depend on which other cells are tested); 0: Mantel's normal
/// approximation. `min_effect` (>= 0, in the distances' units): the effect the
/// null allows (module note); 0 is Mantel's null of no association. Cells are processed in blocks (with permutations, small
/// enough that their kept distance matrices stay under 32 MB); within a block, cells
/// are shared out over the core's pool; `interrupted` is polled per block.
#[allow(clippy::too_many_arguments)]
pub fn cell_association(
    model: &MrviModel, post: &Posterior, own_sample: &[i64], cells: &[usize], category: &[i64], sample_block: &[i64],
    spec: DistanceSpec, permutations: usize, min_effect: f64, block: usize, interrupted: &mut dyn FnMut() -> bool,
) -> Result<Vec<CellTest>> {
    let s = model.config.n_samples as usize;
    let l = model.config.n_latent as usize; // dimension of z
    if category.len() != s {
        crate::invalid!("the covariate has {} values for {s} samples", category.len());
    }
    if !sample_block.is_empty() && sample_block.len() != s {
        crate::invalid!("the blocks have {} values for {s} samples", sample_block.len());
    }
    if !(min_effect >= 0.0 && min_effect.is_finite()) {
        crate::invalid!("the minimum effect must be finite and at least 0 (got {min_effect})");
    }
    if cells.iter().any(|&c| c >= post.n_cells) {
        crate::invalid!("a cell index is out of range (0..{})", post.n_cells);
    }
    let effect = model.host_sample_effect_in(spec.space);
    // the samples that take part, and their codes
    let members: Vec<usize> = (0..s).filter(|&a| category[a] >= 0).collect();
    let member_codes: Vec<i64> = members.iter().map(|&a| category[a]).collect();
    let member_blocks: Vec<i64> = if sample_block.is_empty() { Vec::new() } else { members.iter().map(|&a| sample_block[a]).collect() };
    let m = members.len();
    let labelings = if permutations > 0 { Some(relabelings(&member_codes, &member_blocks, permutations, spec.seed)?) } else { None };
    let (permuting, n_labelings) = (labelings.is_some(), permutations + 1);
    // with permutations each cell of a block keeps its m x m single-precision
    // distances for the relabelings: at most 2^23 floats (32 MB) per block, and
    // their pairs in double precision as much again while the p-values are
    // computed, with at most 16 MB of indicators (results do not depend on the block)
    let block = if permuting { block.min((1 << 23) / (m * m).max(1)) } else { block }.max(1);
    let pool = backend::pool()?;
    let mut squares = Vec::new();
    let mut out = vec![CellTest::default(); cells.len()];
    let mut zs = Vec::new();
    for (bi, part) in cells.chunks(block).enumerate() {
        if interrupted() {
            return Err(Error::Interrupted);
        }
        let own: Vec<i64> = part.iter().map(|&c| own_sample[c]).collect();
        let scale = cell_draws(&effect, post, part, &own, &spec, &mut zs)?;
        let results = &mut out[bi * block..bi * block + part.len()];
        // each cell's distances among the samples that take part, kept for the
        // permutations (without them, one unused value per cell)
        let kept = if permuting { m * m } else { 1 };
        squares.resize(part.len() * kept, 0f32);
        pool.install(|| {
            // per worker: the cell's distance matrix, scratch, the two samples
            let scratch = || (vec![0f64; s * accumulator_width(s)], vec![0f32; panels_len(1, s, l)], Vec::new(), Vec::new(), vec![0f64; m * m]);
            let cells = results.par_iter_mut().zip(squares.par_chunks_mut(kept)).enumerate();
            cells.for_each_init(scratch, |(acc, t, within, between, square), (r, (slot, square32))| {
                acc.iter_mut().for_each(|v| *v = 0.0);
                for z in &zs {
                    accumulate_cell(&z[r * s * l..(r + 1) * s * l], s, l, scale.weight[r], scale.offset[r], t, acc);
                }
                within.clear();
                between.clear();
                let width = accumulator_width(s);
                for (i, &a) in members.iter().enumerate() {
                    for (j, &b) in members.iter().enumerate().skip(i + 1) {
                        let d = acc[a * width + b];
                        let same = member_codes[i] == member_codes[j];
                        let tested = if same { d } else { d - min_effect };
                        square[i * m + j] = tested;
                        square[j * m + i] = tested;
                        if same { within.push(d) } else { between.push(d) }
                    }
                }
                let statistic = ks_statistic(within, between);
                let effect = mean(between) - mean(within);
                let (z, p_value) = mantel_within(square, &member_codes);
                if permuting {
                    square32.iter_mut().zip(square.iter()).for_each(|(o, &v)| *o = v as f32);
                }
                *slot = CellTest { statistic, effect, z, p_value, n_within: within.len(), n_between: between.len() };
            })
        });
        if let Some(labelings) = &labelings {
            let p = permutation_p_values(&squares, m, labelings, n_labelings);
            results.iter_mut().zip(p).for_each(|(slot, p)| slot.p_value = p);
        }
    }
    Ok(out)
}

fn mean(x: &[f64]) -> f64 {
    x.iter().sum::<f64>() / x.len() as f64
}

/// How samples are relabelled under the null. Samples of one block (the
/// donor of several samples) are not exchangeable with the others': a
/// covariate constant within every block is moved with whole blocks (the
/// block's samples keep one label), one that varies within blocks is shuffled
/// within each block (a paired design); without blocks, freely.
#[derive(Debug, PartialEq)]
enum Relabeling {
    Free,
    /// the blocks' members (indices into the codes), in order of first sample
    BetweenBlocks(Vec<Vec<usize>>),
    WithinBlocks(Vec<Vec<usize>>),
}

impl Relabeling {
    fn of(codes: &[i64], blocks: &[i64]) -> Self {
        if blocks.is_empty() {
            return Relabeling::Free;
        }
        let mut ids: Vec<i64> = Vec::new();
        let mut members: Vec<Vec<usize>> = Vec::new();
        for (a, b) in blocks.iter().enumerate() {
            match ids.iter().position(|x| x == b) {
                Some(k) => members[k].push(a),
                None => {
                    ids.push(*b);
                    members.push(vec![a]);
                }
            }
        }
        if members.iter().all(|m| m.iter().all(|&a| codes[a] == codes[m[0]])) {
            Relabeling::BetweenBlocks(members)
        } else {
            Relabeling::WithinBlocks(members)
        }
    }

    /// Relabel `labels` (the current labeling, changed in place).
    fn draw(&self, labels: &mut [i64], rng: &mut SplitMix64) {
        match self {
            Relabeling::Free => rng.shuffle(labels),
            Relabeling::BetweenBlocks(members) => {
                let mut per_block: Vec<i64> = members.iter().map(|m| labels[m[0]]).collect();
                rng.shuffle(&mut per_block);
                for (m, &y) in members.iter().zip(&per_block) {
                    m.iter().for_each(|&a| labels[a] = y);
                }
            }
            Relabeling::WithinBlocks(members) => {
                for m in members {
                    let mut part: Vec<i64> = m.iter().map(|&a| labels[a]).collect();
                    rng.shuffle(&mut part);
                    m.iter().zip(&part).for_each(|(&a, &y)| labels[a] = y);
                }
            }
        }
    }
}

/// The observed labeling and `permutations` random relabelings of the samples
/// (drawn from `seed` alone, as [Relabeling] allows for `blocks`, one per code
/// or empty), as each sample's category index under each: [labelings, m]
/// (labeling 0: observed).
fn relabelings(codes: &[i64], blocks: &[i64], permutations: usize, seed: u64) -> Result<Vec<u32>> {
    let mut levels = codes.to_vec();
    levels.sort_unstable();
    levels.dedup();
    let m = codes.len();
    let scheme = Relabeling::of(codes, blocks);
    let mut rng = SplitMix64::new(seed ^ 0x6d61_6e74_656c);
    let mut out = try_vec(m.saturating_mul(permutations + 1), 0u32, "the relabelings of the samples")?;
    let mut labels = codes.to_vec();
    for (b, row) in out.chunks_exact_mut(m.max(1)).enumerate() {
        if b > 0 {
            scheme.draw(&mut labels, &mut rng);
        }
        for (o, c) in row.iter_mut().zip(&labels) {
            *o = levels.binary_search(c).expect("a level") as u32;
        }
    }
    Ok(out)
}

/// The most same-category indicators [pairs, labelings] (16 MB of doubles) for
/// the pairs' product of [permutation_p_values]; beyond it (about 64 samples at
/// 999 permutations) the quadratic forms are faster: streamed in blocks, the
/// indicators made the products bound by memory (4x slower at 500 samples).
const INDICATOR_VALUES: usize = 1 << 21;

/// Permutation p-values of Mantel's within-category sum for cells' distance
/// matrices (`squares`: cells x m x m, symmetric) under `labels` ([labelings, m],
/// the first observed): p = (1 + #{b > 0: T_b <= T_0}) / (1 + B), NaN for a
/// cell with a NaN distance. T_b, the sum of D[a, c] over the pairs a < c in one
/// category under labeling b, is computed for all labelings at once in double
/// precision: as one product of the cells' pairs [cells, pairs] with the
/// labelings' same-category indicators [pairs, labelings] where these fit in
/// [INDICATOR_VALUES] (m^2 / 2 multiply-adds per labeling, any number of
/// categories alike), else as quadratic forms ([quadratic_sums]).
/// Where the relabelings change the categories' sizes (whole blocks of unequal
/// sizes moved, [Relabeling]), T_b would follow the number of within-category
/// pairs rather than the distances: the statistic is then the mean between-
/// minus the mean within-category distance, E_b = (S - T_b) / (P - W_b) - T_b /
/// W_b (S: the sum over all P pairs, W_b: the pairs within categories), with
/// p = (1 + #{b > 0: E_b >= E_0}) / (1 + B); for fixed sizes E_b falls as T_b
/// grows, and the two rules count the same relabelings.
fn permutation_p_values(squares: &[f32], m: usize, labels: &[u32], n_labelings: usize) -> Vec<f64> {
    let pairs = m * m.saturating_sub(1) / 2;
    // the size of every T_b's terms, for the tolerance, and the sum over all pairs
    let (scale, total): (Vec<f64>, Vec<f64>) = squares
        .chunks_exact((m * m).max(1))
        .map(|sq| upper_triangle(sq, m).fold((0.0, 0.0), |(a, t), v| (a + v.abs(), t + v)))
        .unzip();
    let within = within_pairs(labels, m, n_labelings);
    let sizes_vary = within.iter().any(|&w| w != within[0]);
    let sums = if pairs * n_labelings <= INDICATOR_VALUES { pair_sums(squares, m, labels, n_labelings) } else { quadratic_sums(squares, m, labels, n_labelings) };
    sums.chunks_exact(n_labelings)
        .zip(scale.iter().zip(&total))
        .map(|(t, (&scale, &total))| {
            // NaN distances give no p-value (never a small one), whether or not
            // the products carry them into a sum
            if !(scale.is_finite() && t.iter().all(|v| v.is_finite())) {
                return f64::NAN;
            }
            // as extreme as the observed statistic, up to rounding: 1e-9 of sum |D|
            // is far above double precision's error and far below the
            // single-precision distances' own
            let as_extreme = if sizes_vary {
                let effect = |b: usize| {
                    let (w, between) = (within[b] as f64, (pairs - within[b]) as f64);
                    // (a labeling without pairs on one side has no effect to compare: counted, conservatively)
                    if w == 0.0 || between == 0.0 { f64::INFINITY } else { (total - t[b]) / between - t[b] / w }
                };
                let bound = effect(0) - 1e-9 * scale;
                (1..n_labelings).filter(|&b| effect(b) >= bound).count()
            } else {
                let bound = t[0] + 1e-9 * scale;
                t[1..].iter().filter(|&&v| v <= bound).count()
            };
            (1 + as_extreme) as f64 / n_labelings as f64
        })
        .collect()
}

/// The number of pairs of samples within one category under each labeling
/// (`labels`: [labelings, m] category indices).
fn within_pairs(labels: &[u32], m: usize, n_labelings: usize) -> Vec<usize> {
    let categories = labels.iter().max().map_or(0, |&c| c as usize + 1);
    let mut counts = vec![0usize; categories];
    labels
        .chunks_exact(m.max(1))
        .take(n_labelings)
        .map(|row| {
            counts.iter_mut().for_each(|c| *c = 0);
            row.iter().for_each(|&c| counts[c as usize] += 1);
            counts.iter().map(|&c| c * c.saturating_sub(1) / 2).sum()
        })
        .collect()
}

/// One cell's distances above the diagonal (`square`: m x m), pair (a, c) for
/// a < c in row order, in double precision.
fn upper_triangle(square: &[f32], m: usize) -> impl Iterator<Item = f64> + '_ {
    (0..m).flat_map(move |a| &square[a * m + a + 1..(a + 1) * m]).map(|&v| v as f64)
}

/// T_b for every cell and labeling, [cells, labelings]: the cells' pairs times
/// the labelings' same-category indicators, in chunks of cells whose sums stay
/// in cache (1 MB).
fn pair_sums(squares: &[f32], m: usize, labels: &[u32], n_labelings: usize) -> Vec<f64> {
    let n = squares.len() / (m * m).max(1);
    let pairs = m * m.saturating_sub(1) / 2;
    let upper = {
        let upper: Vec<f64> = squares.chunks_exact((m * m).max(1)).flat_map(|sq| upper_triangle(sq, m)).collect();
        Tensor::from_slice(&upper).view([n as i64, pairs as i64])
    };
    let mut same = vec![0f64; pairs * n_labelings];
    let mut rows = same.chunks_exact_mut(n_labelings.max(1));
    for a in 0..m {
        for c in a + 1..m {
            let row = rows.next().expect("one row per pair");
            for (o, labeling) in row.iter_mut().zip(labels.chunks_exact(m)) {
                *o = if labeling[a] == labeling[c] { 1.0 } else { 0.0 };
            }
        }
    }
    let same = Tensor::from_slice(&same).view([pairs as i64, n_labelings as i64]);
    let chunk = ((1usize << 17) / n_labelings).max(1);
    let mut out = Vec::with_capacity(n * n_labelings);
    for start in (0..n).step_by(chunk) {
        let end = (start + chunk).min(n);
        let t = upper.narrow(0, start as i64, (end - start) as i64).matmul(&same);
        out.extend(Vec::<f64>::try_from(&t.contiguous().view([-1])).expect("double"));
    }
    out
}

/// T_b for every cell and labeling, [cells, labelings], as half of sum_k x_k' D
/// x_k over the category indicators x_k of labeling b: D times the indicators
/// per cell (libtorch, double precision). With two categories only the first
/// one's indicator x is used: its complement gives 2 T_b = 2 x'Dx - 2 r'x + 1'D1
/// with r = D1 (half the product's work; its terms, of the size of 1'D1, are
/// why the sums are in double precision).
fn quadratic_sums(squares: &[f32], m: usize, labels: &[u32], n_labelings: usize) -> Vec<f64> {
    let n = squares.len() / (m * m).max(1);
    let levels = labels.iter().max().map_or(0, |&l| l as usize + 1);
    let k = if levels == 2 { 1 } else { levels };
    let mut x = vec![0f64; m * n_labelings * k];
    for (b, labeling) in labels.chunks_exact(m.max(1)).enumerate() {
        for (i, &level) in labeling.iter().enumerate() {
            if (level as usize) < k {
                x[i * n_labelings * k + b * k + level as usize] = 1.0;
            }
        }
    }
    let x = Tensor::from_slice(&x).view([m as i64, (n_labelings * k) as i64]);
    // chunks whose product (cells x m x labelings, doubles) stays in cache (1 MB);
    // a chunk of 64 MB ran 2.7x slower (20,000 cells, 32 samples, 999 permutations)
    let chunk = ((1usize << 17) / (m * n_labelings * k).max(1)).max(1);
    let mut out = Vec::with_capacity(n * n_labelings);
    for start in (0..n).step_by(chunk) {
        let end = (start + chunk).min(n);
        let d = Tensor::from_slice(&squares[start * m * m..end * m * m]).view([(end - start) as i64, m as i64, m as i64]).to_kind(Kind::Double);
        let quadratic = (d.matmul(&x) * &x).sum_dim_intlist([1].as_slice(), false, Kind::Double);
        let twice = if k == 1 && levels == 2 {
            let r = d.sum_dim_intlist([2].as_slice(), false, Kind::Double); // [cells, m]
            let total = r.sum_dim_intlist([1].as_slice(), true, Kind::Double); // [cells, 1]
            (quadratic - r.matmul(&x)) * 2.0 + total
        } else {
            quadratic.view([(end - start) as i64, n_labelings as i64, -1]).sum_dim_intlist([2].as_slice(), false, Kind::Double)
        };
        out.extend(Vec::<f64>::try_from(&(twice / 2.0).contiguous().view([-1])).expect("double"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cells' symmetric m x m matrices with a zero diagonal, pair (a < b) of cell c
    /// set to value(c, a, b), drawn in that order.
    fn symmetric_squares(cells: usize, m: usize, mut value: impl FnMut(usize, usize, usize) -> f32) -> Vec<f32> {
        let mut squares = vec![0f32; cells * m * m];
        for c in 0..cells {
            for a in 0..m {
                for b in a + 1..m {
                    let v = value(c, a, b);
                    squares[c * m * m + a * m + b] = v;
                    squares[c * m * m + b * m + a] = v;
                }
            }
        }
        squares
    }

    /// A uniform draw in [0, 1) from the top 24 bits.
    fn uniform(rng: &mut SplitMix64) -> f32 {
        (rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// The p-values against a plain count over the same relabelings of each
    /// labeling's within-category sum, for two and three categories, through
    /// the pairs' product (few samples) and the quadratic forms (70 samples).
    #[test]
    fn p_values_count_the_relabelings_within_sums() {
        assert!(9 * 8 / 2 * 200 <= INDICATOR_VALUES && 12 * 11 / 2 * 100 <= INDICATOR_VALUES);
        assert!(70 * 69 / 2 * 1000 > INDICATOR_VALUES);
        for (m, categories, cells, permutations) in [(9usize, 2i64, 5usize, 199usize), (12, 3, 4, 99), (70, 2, 3, 999), (70, 3, 2, 999)] {
            let mut rng = SplitMix64::new(3 + m as u64);
            let codes: Vec<i64> = (0..m as i64).map(|a| a % categories).collect();
            let squares = symmetric_squares(cells, m, |c, a, b| {
                // some cells with a planted split, some without
                let split = c % 2 == 0 && codes[a] != codes[b];
                uniform(&mut rng) + if split { 1.5 } else { 0.0 }
            });
            let labels = relabelings(&codes, &[], permutations, 7).unwrap();
            let p = permutation_p_values(&squares, m, &labels, permutations + 1);
            for (c, square) in squares.chunks_exact(m * m).enumerate() {
                let within = |labeling: &[u32]| -> f64 {
                    (0..m).flat_map(|a| (a + 1..m).map(move |b| (a, b))).filter(|&(a, b)| labeling[a] == labeling[b]).map(|(a, b)| square[a * m + b] as f64).sum()
                };
                let sums: Vec<f64> = labels.chunks_exact(m).map(within).collect();
                let scale: f64 = (0..m).flat_map(|a| (a + 1..m).map(move |b| (a, b))).map(|(a, b)| (square[a * m + b] as f64).abs()).sum();
                let count = sums[1..].iter().filter(|&&t| t <= sums[0] + 1e-9 * scale).count();
                assert_eq!(p[c], (1 + count) as f64 / (permutations + 1) as f64, "m = {m}, cell {c}");
            }
            if m == 9 {
                assert!(p[0] < 0.05 && p[2] < 0.05 && p[1] > 0.05, "{p:?}");
            }
        }
        // a NaN distance gives no p-value, whichever pair it is in, on either path
        let (m, codes) = (6usize, [0i64, 0, 0, 1, 1, 1]);
        for permutations in [19usize, 150_000] {
            let labels = relabelings(&codes, &[], permutations, 1).unwrap();
            for (a, b) in [(0usize, 1usize), (0, 5)] {
                let mut squares = symmetric_squares(1, m, |_, x, y| (x + y) as f32);
                (squares[a * m + b], squares[b * m + a]) = (f32::NAN, f32::NAN);
                assert!(permutation_p_values(&squares, m, &labels, permutations + 1)[0].is_nan(), "NaN in pair ({a}, {b})");
            }
        }
    }

    /// Blocks: a covariate constant within blocks moves with whole blocks, one
    /// that varies within them is shuffled within each; every relabeling keeps
    /// the categories' sizes, and the blocks' (or each block's) labels.
    #[test]
    fn relabelings_respect_blocks() {
        let sorted = |mut v: Vec<u32>| {
            v.sort_unstable();
            v
        };
        // 4 donors of 2 samples each; a donor-level covariate (2 donors each)
        let blocks = [0i64, 0, 1, 1, 2, 2, 3, 3];
        let donor_level = [0i64, 0, 1, 1, 0, 0, 1, 1];
        let labels = relabelings(&donor_level, &blocks, 200, 3).unwrap();
        let mut seen = std::collections::HashSet::new();
        for row in labels.chunks_exact(8) {
            assert!((0..8).step_by(2).all(|a| row[a] == row[a + 1]), "a donor split: {row:?}");
            assert_eq!(sorted(row.to_vec()), vec![0, 0, 0, 0, 1, 1, 1, 1]);
            seen.insert(row.to_vec());
        }
        assert_eq!(seen.len(), 6, "4 donors, 2 per category: 6 labelings");
        // a paired covariate (each donor one of each): shuffled within donors only
        let paired = [0i64, 1, 0, 1, 1, 0, 0, 1];
        let labels = relabelings(&paired, &blocks, 400, 3).unwrap();
        let mut seen = std::collections::HashSet::new();
        for row in labels.chunks_exact(8) {
            assert!((0..8).step_by(2).all(|a| row[a] != row[a + 1]), "a donor with one category: {row:?}");
            seen.insert(row.to_vec());
        }
        assert_eq!(seen.len(), 16, "4 pairs: 2^4 labelings");
        // without blocks: the free shuffle, the same stream as before blocks existed
        assert_eq!(Relabeling::of(&paired, &[]), Relabeling::Free);
        let free = relabelings(&paired, &[], 50, 3).unwrap();
        let mut rng = SplitMix64::new(3 ^ 0x6d61_6e74_656c);
        let mut labels = paired.to_vec();
        for row in free.chunks_exact(8).skip(1) {
            rng.shuffle(&mut labels);
            assert!(row.iter().zip(&labels).all(|(&r, &l)| r as i64 == l));
        }
    }

    /// Whole blocks of unequal sizes change the categories' sizes: the p-values
    /// then count the relabelings whose mean between- minus mean within-category
    /// distance is at least the observed one (a plain count over the same
    /// relabelings), not those with a within-category sum at most the observed.
    #[test]
    fn unequal_blocks_compare_mean_effects() {
        let blocks: Vec<i64> = vec![0, 0, 0, 0, 1, 1, 1, 1, 2, 3, 4, 5, 6, 7, 8, 9];
        let codes: Vec<i64> = vec![0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 1, 1, 2, 2, 2, 2];
        let m = codes.len();
        let mut rng = SplitMix64::new(21);
        let squares = symmetric_squares(4, m, |_, _, _| uniform(&mut rng));
        let labels = relabelings(&codes, &blocks, 499, 9).unwrap();
        let within = within_pairs(&labels, m, 500);
        assert!(within.iter().any(|&w| w != within[0]), "the design changes the categories' sizes");
        let p = permutation_p_values(&squares, m, &labels, 500);
        for (c, square) in squares.chunks_exact(m * m).enumerate() {
            let effect = |labeling: &[u32]| -> f64 {
                let (mut w, mut b, mut nw, mut nb) = (0.0, 0.0, 0.0, 0.0);
                for a in 0..m {
                    for d in a + 1..m {
                        let v = square[a * m + d] as f64;
                        if labeling[a] == labeling[d] { (w, nw) = (w + v, nw + 1.0) } else { (b, nb) = (b + v, nb + 1.0) }
                    }
                }
                b / nb - w / nw
            };
            let e: Vec<f64> = labels.chunks_exact(m).map(effect).collect();
            let count = e[1..].iter().filter(|&&v| v >= e[0] - 1e-9 * m as f64 * m as f64).count();
            assert_eq!(p[c], (1 + count) as f64 / 500.0, "cell {c}");
        }
    }

    /// Relabelings whose sum ties the observed one are counted, whatever the
    /// rounding: cells whose samples split 4 / 4 with no distance within the
    /// categories (clipped normalised distances) have the smallest exact
    /// p-value, 2 / 70 (the observed labeling and its swapped twin), and their
    /// Monte-Carlo p-values lie within 5 standard errors of it, on both paths
    /// (the quadratic forms' two-category shortcut has terms of the size of
    /// 1'D1). (Sums in single precision, with a tolerance relative to T_0 = 0,
    /// gave 1 / 70 for about a third of such cells.)
    #[test]
    fn tied_relabelings_count_whatever_the_rounding() {
        let (m, cells) = (8usize, 40usize);
        let mut rng = SplitMix64::new(11);
        let squares = symmetric_squares(cells, m, |_, a, b| if (a < 4) != (b < 4) { 5.0 + 5.0 * uniform(&mut rng) } else { 0.0 });
        let codes: Vec<i64> = (0..m as i64).map(|a| (a >= 4) as i64).collect();
        for permutations in [19_999usize, 99_999] {
            assert_eq!(28 * (permutations + 1) > INDICATOR_VALUES, permutations > 20_000);
            let labels = relabelings(&codes, &[], permutations, 5).unwrap();
            let p = permutation_p_values(&squares, m, &labels, permutations + 1);
            let exact = 2.0 / 70.0;
            let se = (exact * (1.0 - exact) / permutations as f64).sqrt();
            for (c, &p) in p.iter().enumerate() {
                assert!((p - exact).abs() < 5.0 * se, "{permutations} relabelings, cell {c}: p = {p}, exact {exact}");
            }
        }
    }
}
