//! The kernel under every sample-distance analysis: for one cell's
//! counterfactual z (S samples x L dimensions), add
//! w * max(|| z^a - z^b || - offset, 0) to an accumulator for pairs a < b.
//!
//! Pairs are computed in register tiles of [ROWS] samples a by two vectors of
//! samples b (8 rows by 2 x 16 lanes with AVX-512): each value loaded serves
//! several pairs, and 8 (16) independent sums are in flight, enough to hide the
//! latency of the fused multiply-add (one sum per pair, as the plain loop had,
//! ran at the latency of its chain: a fifth of the core's throughput). Every pair's squared distance is the
//! same sequence of fused multiply-adds over d = 0..L on each path (AVX-512,
//! AVX2, portable), so the result does not depend on the CPU's vector width.
//!
//! The cell's z is read transposed, [L, stride] with `stride` = S + [PAD]
//! zero columns, so that vector loads past the last sample stay in the buffer.

use std::ops::Range;

/// Zero columns after the last sample: the widest tile reads 2 x 16 values.
const PAD: usize = 32;
/// Samples a per register tile: 4 x 2 vectors of sums. The compiler keeps them
/// in registers; with 8 rows it kept them on the stack and the kernel ran 10x
/// slower (`examples/pair_probe.rs` measures it).
const ROWS: usize = 4;

/// Length of the buffer [transpose_cell] fills for S samples and L dimensions.
pub fn transposed_len(s: usize, l: usize) -> usize {
    (s + PAD) * l
}

/// One cell's z from [S, L] (row-major) to [L, S + PAD]; `out` has
/// [transposed_len] values and its padding is never written (zeros when
/// allocated so).
pub fn transpose_cell(z: &[f32], s: usize, l: usize, out: &mut [f32]) {
    let stride = s + PAD;
    for a in 0..s {
        for d in 0..l {
            out[d * stride + a] = z[a * l + d];
        }
    }
}

/// max(x, 0) that keeps NaN (f32::max(NaN, 0) is 0: a NaN latent would give a
/// distance of exactly 0). Branch-free in the vectorised loop.
#[inline(always)]
fn positive_part(x: f32) -> f32 {
    if x > 0.0 || x.is_nan() { x } else { 0.0 }
}

/// How a cell's pairs enter the accumulator: w * mask[a] * mask[b] *
/// max(d - offset, 0); rows with mask[a] = 0 are skipped. `mask` is one value
/// (1 or 0) per sample and PAD more (any value), or empty when unmasked.
#[derive(Clone, Copy)]
pub struct PairWeight<'a> {
    pub w: f32,
    pub offset: f32,
    pub mask: &'a [f32],
}

/// The pairs of samples a0..a0+RA with the 2W samples from b0, added into
/// `acc` (rows of `width` >= b0 + 2W values; row a at a - first_row) where
/// b > a and b < end; the other lanes add 0.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn tile<const W: usize, const RA: usize, const MASKED: bool>(
    zt: &[f32], stride: usize, l: usize, a0: usize, b0: usize, end: usize, pw: PairWeight, acc: &mut [f64], width: usize, first_row: usize,
) {
    let mut v0 = [[0f32; W]; RA];
    let mut v1 = [[0f32; W]; RA];
    for line in zt.chunks_exact(stride).take(l) {
        let c0: &[f32; W] = line[b0..b0 + W].try_into().unwrap();
        let c1: &[f32; W] = line[b0 + W..b0 + 2 * W].try_into().unwrap();
        let za: &[f32; RA] = line[a0..a0 + RA].try_into().unwrap();
        for r in 0..RA {
            for j in 0..W {
                let diff = c0[j] - za[r];
                v0[r][j] = diff.mul_add(diff, v0[r][j]);
                let diff = c1[j] - za[r];
                v1[r][j] = diff.mul_add(diff, v1[r][j]);
            }
        }
    }
    let mask: &[f32] = if MASKED { &pw.mask[b0..b0 + 2 * W] } else { &[] };
    for r in 0..RA {
        let a = a0 + r;
        if MASKED && pw.mask[a] == 0.0 {
            continue;
        }
        let out: &mut [f64] = &mut acc[(a - first_row) * width + b0..(a - first_row) * width + b0 + 2 * W];
        for (k, vk) in [&v0[r], &v1[r]].into_iter().enumerate() {
            for j in 0..W {
                let b = b0 + k * W + j;
                let f = if MASKED { pw.w * mask[k * W + j] } else { pw.w };
                let value = (f * positive_part(vk[j].sqrt() - pw.offset)) as f64;
                out[k * W + j] += if b > a && b < end { value } else { 0.0 };
            }
        }
    }
}

/// The register tiles covering pairs (a, b), a in `rows`, b in `cols`, b > a:
/// (a0, n, b0) for n <= RA rows from a0 by 2W columns from b0. (Integer work
/// only: the tiles' arithmetic stays in the callers, which carry the target
/// features; a closure would not.)
fn row_tiles<const W: usize, const RA: usize>(rows: Range<usize>, cols: Range<usize>) -> impl Iterator<Item = (usize, usize, usize)> {
    let end = rows.end;
    rows.step_by(RA).flat_map(move |a0| {
        let n = (end - a0).min(RA);
        (cols.start.max(a0 + 1)..cols.end).step_by(2 * W).map(move |b0| (a0, n, b0))
    })
}

/// The pairs (a, b), a in `rows`, b in `cols`, b > a, of one cell, with W
/// lanes, into `acc`: rows of `width` >= S + PAD values, the first for a =
/// rows.start.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn cell_pairs<const W: usize, const MASKED: bool>(
    zt: &[f32], s: usize, l: usize, rows: Range<usize>, cols: Range<usize>, pw: PairWeight, acc: &mut [f64], width: usize,
) {
    let (stride, first, end) = (s + PAD, rows.start, cols.end);
    for (a0, n, b0) in row_tiles::<W, ROWS>(rows, cols) {
        if n == ROWS {
            tile::<W, ROWS, MASKED>(zt, stride, l, a0, b0, end, pw, acc, width, first);
        } else {
            (a0..a0 + n).for_each(|a| tile::<W, 1, MASKED>(zt, stride, l, a, b0, end, pw, acc, width, first));
        }
    }
}

/// Rows per AVX-512 tile: 8 x 2 vectors of sums, 20 of the 32 registers.
#[cfg(target_arch = "x86_64")]
const ROWS_AVX512: usize = 8;

/// [tile] for 8 rows and 2 x 16 lanes in AVX-512 intrinsics: the same
/// operations in the same order (so the same bits), but a tile this size is
/// only kept in registers when written out.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_avx512<const MASKED: bool>(
    zt: &[f32], stride: usize, l: usize, a0: usize, b0: usize, end: usize, pw: PairWeight, acc: &mut [f64], width: usize, first_row: usize,
) {
    use std::arch::x86_64::*;
    const RA: usize = ROWS_AVX512;
    // every read and write below stays inside these bounds
    assert!(l == 0 || ((l - 1) * stride + b0 + 32 <= zt.len() && a0 + RA <= stride));
    assert!(b0 + 32 <= width && (a0 + RA - first_row) * width <= acc.len() && (!MASKED || b0 + 32 <= pw.mask.len()));
    let mut v0 = [_mm512_setzero_ps(); RA];
    let mut v1 = [_mm512_setzero_ps(); RA];
    for d in 0..l {
        let line = zt.as_ptr().add(d * stride);
        let c0 = _mm512_loadu_ps(line.add(b0));
        let c1 = _mm512_loadu_ps(line.add(b0 + 16));
        for r in 0..RA {
            let za = _mm512_set1_ps(*line.add(a0 + r));
            let diff = _mm512_sub_ps(c0, za);
            v0[r] = _mm512_fmadd_ps(diff, diff, v0[r]);
            let diff = _mm512_sub_ps(c1, za);
            v1[r] = _mm512_fmadd_ps(diff, diff, v1[r]);
        }
    }
    let (zero, offset) = (_mm512_setzero_ps(), _mm512_set1_ps(pw.offset));
    for r in 0..RA {
        let a = a0 + r;
        if MASKED && pw.mask[a] == 0.0 {
            continue;
        }
        let row = acc.as_mut_ptr().add((a - first_row) * width);
        for (k, v) in [v0[r], v1[r]].into_iter().enumerate() {
            let b = b0 + 16 * k;
            let x = _mm512_sub_ps(_mm512_sqrt_ps(v), offset);
            // positive_part: keep x > 0 and NaN
            let x = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask::<_CMP_NLE_UQ>(x, zero), x);
            let f = if MASKED { _mm512_mul_ps(_mm512_set1_ps(pw.w), _mm512_loadu_ps(pw.mask.as_ptr().add(b))) } else { _mm512_set1_ps(pw.w) };
            let x = _mm512_mul_ps(f, x);
            // lanes j with a < b + j < end
            let (lo, hi) = ((a + 1).saturating_sub(b).min(16), end.saturating_sub(b).min(16));
            let lanes: u32 = if hi > lo { ((1u32 << hi) - 1) & !((1u32 << lo) - 1) } else { 0 };
            let low = _mm512_cvtps_pd(_mm512_castps512_ps256(x));
            let high = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(x))));
            for (half, values) in [low, high].into_iter().enumerate() {
                let out = row.add(b + 8 * half);
                let sum = _mm512_loadu_pd(out);
                _mm512_storeu_pd(out, _mm512_mask_add_pd(sum, (lanes >> (8 * half)) as u8, sum, values));
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn cell_pairs_avx512<const MASKED: bool>(
    zt: &[f32], s: usize, l: usize, rows: Range<usize>, cols: Range<usize>, pw: PairWeight, acc: &mut [f64], width: usize,
) {
    let (stride, first, end) = (s + PAD, rows.start, cols.end);
    for (a0, n, b0) in row_tiles::<16, ROWS_AVX512>(rows, cols) {
        if n == ROWS_AVX512 {
            tile_avx512::<MASKED>(zt, stride, l, a0, b0, end, pw, acc, width, first);
        } else {
            for a in a0..a0 + n {
                tile::<16, 1, MASKED>(zt, stride, l, a, b0, end, pw, acc, width, first);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn cell_pairs_avx2<const MASKED: bool>(
    zt: &[f32], s: usize, l: usize, rows: Range<usize>, cols: Range<usize>, pw: PairWeight, acc: &mut [f64], width: usize,
) {
    cell_pairs::<8, MASKED>(zt, s, l, rows, cols, pw, acc, width)
}

/// A vector path of the kernel, from the least to the most the CPU must have.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Lanes {
    Portable,
    Avx2,
    Avx512,
}

/// The widest path this CPU can take.
pub fn detected_lanes() -> Lanes {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("fma") && std::arch::is_x86_feature_detected!("avx2") {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return Lanes::Avx512;
            }
            return Lanes::Avx2;
        }
    }
    Lanes::Portable
}

/// Width of the rows of the accumulator [add_cell_pairs] fills, for S samples.
pub fn accumulator_width(s: usize) -> usize {
    s + PAD
}

/// Add one cell's weighted pair distances for a in `rows`, b in `cols`, b > a,
/// into `acc`: one row of [accumulator_width] values per a in `rows` (the
/// padding after column S - 1 only ever gets zeros). `zt` is the cell's z from
/// [transpose_cell].
#[allow(clippy::too_many_arguments)]
pub fn add_cell_pairs(zt: &[f32], s: usize, l: usize, rows: Range<usize>, cols: Range<usize>, pw: PairWeight, acc: &mut [f64]) {
    add_cell_pairs_with(detected_lanes(), zt, s, l, rows, cols, pw, acc)
}

/// [add_cell_pairs] on a given vector path (for the tests and
/// `examples/pair_probe.rs`, which compare them); panics on a path this CPU
/// cannot take.
#[allow(clippy::too_many_arguments)]
pub fn add_cell_pairs_with(lanes: Lanes, zt: &[f32], s: usize, l: usize, rows: Range<usize>, cols: Range<usize>, pw: PairWeight, acc: &mut [f64]) {
    assert!(lanes <= detected_lanes(), "this CPU cannot take the {lanes:?} path");
    let width = accumulator_width(s);
    assert!(zt.len() >= transposed_len(s, l) && acc.len() >= rows.len() * width && rows.end <= s && cols.end <= s);
    assert!(pw.mask.is_empty() || pw.mask.len() >= s + PAD);
    let masked = !pw.mask.is_empty();
    match (lanes, masked) {
        // SAFETY (all four): detected_lanes() found the features the functions are compiled for (asserted above).
        #[cfg(target_arch = "x86_64")]
        (Lanes::Avx512, false) => unsafe { cell_pairs_avx512::<false>(zt, s, l, rows, cols, pw, acc, width) },
        #[cfg(target_arch = "x86_64")]
        (Lanes::Avx512, true) => unsafe { cell_pairs_avx512::<true>(zt, s, l, rows, cols, pw, acc, width) },
        #[cfg(target_arch = "x86_64")]
        (Lanes::Avx2, false) => unsafe { cell_pairs_avx2::<false>(zt, s, l, rows, cols, pw, acc, width) },
        #[cfg(target_arch = "x86_64")]
        (Lanes::Avx2, true) => unsafe { cell_pairs_avx2::<true>(zt, s, l, rows, cols, pw, acc, width) },
        (_, false) => cell_pairs::<8, false>(zt, s, l, rows, cols, pw, acc, width),
        (_, true) => cell_pairs::<8, true>(zt, s, l, rows, cols, pw, acc, width),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random_z(s: usize, l: usize, seed: u64) -> Vec<f32> {
        let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (0..s * l)
            .map(|_| {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((x >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 4.0
            })
            .collect()
    }

    /// Every path against distances computed pair by pair in f64, for sizes
    /// that leave partial tiles, with and without masks, over row and column
    /// ranges as the group kernel splits them; and the paths agree bit for bit.
    #[test]
    fn tiles_match_pairwise_distances() {
        let mut lanes = vec![Lanes::Portable];
        if detected_lanes() != Lanes::Portable {
            lanes.push(Lanes::Avx2);
        }
        if detected_lanes() == Lanes::Avx512 {
            lanes.push(Lanes::Avx512);
        }
        for &(s, l) in &[(1usize, 3usize), (2, 1), (7, 5), (37, 10), (70, 30), (133, 4)] {
            let z = random_z(s, l, (s * 100 + l) as u64);
            let mut zt = vec![0f32; transposed_len(s, l)];
            transpose_cell(&z, s, l, &mut zt);
            let mask: Vec<f32> = (0..s + PAD).map(|a| if a % 5 == 3 { 0.0 } else { 1.0 }).collect();
            let width = accumulator_width(s);
            for masked in [false, true] {
                let (w, offset) = (0.7f32, if masked { 0.5f32 } else { 0.0 });
                let pw = PairWeight { w, offset, mask: if masked { &mask } else { &[] } };
                let mut expected = vec![0f64; s * width];
                for a in 0..s {
                    for b in a + 1..s {
                        let d2: f64 = (0..l).map(|d| (z[a * l + d] as f64 - z[b * l + d] as f64).powi(2)).sum();
                        let f = if masked { mask[a] * mask[b] } else { 1.0 };
                        expected[a * width + b] = (w * f) as f64 * (d2.sqrt() - offset as f64).max(0.0);
                    }
                }
                let mut results = Vec::new();
                for &lane in &lanes {
                    // rows in blocks of 3 and columns in passes of 17, as a group task would
                    let mut acc = vec![0f64; s * width];
                    for r0 in (0..s).step_by(3) {
                        let rows = r0..(r0 + 3).min(s);
                        for c0 in (0..s).step_by(17) {
                            add_cell_pairs_with(lane, &zt, s, l, rows.clone(), c0..(c0 + 17).min(s), pw, &mut acc[r0 * width..rows.end * width]);
                        }
                    }
                    for (i, (&got, &want)) in acc.iter().zip(&expected).enumerate() {
                        assert!((got - want).abs() <= 1e-5 * (1.0 + want.abs()), "{lane:?} s={s} l={l} masked={masked} pair {i}: {got} vs {want}");
                    }
                    results.push(acc);
                }
                assert!(results.iter().all(|r| r == &results[0]), "the vector paths differ in bits (s={s}, l={l})");
            }
        }
    }

    #[test]
    fn nan_latents_give_nan_distances() {
        let (s, l) = (20, 4);
        let mut z = random_z(s, l, 9);
        z[5 * l + 2] = f32::NAN;
        let mut zt = vec![0f32; transposed_len(s, l)];
        transpose_cell(&z, s, l, &mut zt);
        let width = accumulator_width(s);
        let mut acc = vec![0f64; s * width];
        add_cell_pairs(&zt, s, l, 0..s, 0..s, PairWeight { w: 1.0, offset: 0.3, mask: &[] }, &mut acc);
        assert!(acc[5 * width + 6].is_nan() && acc[2 * width + 5].is_nan() && acc[2 * width + 6].is_finite());
    }
}
