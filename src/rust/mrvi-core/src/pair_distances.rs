//! The kernel under every sample-distance analysis: for a block of cells'
//! counterfactual z (S samples x L dimensions each), add
//! w * max(|| z^a - z^b || - offset, 0) to an accumulator for pairs a < b.
//!
//! Pairs are computed in register tiles of a few samples a by two vectors of
//! samples b (4 rows by 2 x 16 lanes with AVX-512, 6 rows by 2 x 8 with AVX2):
//! each value loaded serves several pairs, and 8 (12) independent sums are in
//! flight, enough to hide the latency of the fused multiply-add (one sum per
//! pair ran at the latency of its chain: a fifth of the core's throughput). A tile goes over all the
//! block's cells before the next; with AVX-512 its totals stay in registers.
//! Every pair's squared distance is the same sequence of fused multiply-adds
//! over d = 0..L on each path (AVX-512, AVX2, portable), and each pair adds
//! the cells in block order, so the result does not depend on the tiling (nor
//! on the number of threads). The AVX2 and portable paths agree bit for bit;
//! the AVX-512 path takes its square roots from a faster approximation within
//! 2 units in the last place of f32 ([sqrt_avx512]).
//!
//! The block's z is read in panels of [PANEL] samples: [panels, cells, L,
//! PANEL], so that a tile's values of every cell lie together (a cell's z
//! transposed whole, [L, S], put each of its L lines on another page: a tile
//! over 64 cells touched ~2,000 pages and ran 1.5x slower).

use std::ops::Range;

/// Samples per panel, the widest tile's columns.
pub const PANEL: usize = 32;
/// Samples a per portable register tile: 4 x 2 vectors of sums. The compiler
/// keeps them in registers; with 8 rows it kept them on the stack and the
/// kernel ran 10x slower (`examples/pair_probe.rs` measures it).
const ROWS: usize = 4;

/// Length of the buffer [fill_panel] fills for a block of cells, all panels.
pub fn panels_len(cells: usize, s: usize, l: usize) -> usize {
    s.div_ceil(PANEL) * panel_len(cells, l)
}

/// Length of one panel of a block of cells.
pub fn panel_len(cells: usize, l: usize) -> usize {
    cells * l * PANEL
}

/// Panel `p` (samples 32p..32p+32) of a block's z, from [cells, L, S]
/// (row-major) into `out` ([panel_len] values): [cells, L, PANEL], zeros past
/// the last sample.
pub fn fill_panel(z: &[f32], cells: usize, s: usize, l: usize, p: usize, out: &mut [f32]) {
    let (first, n) = (p * PANEL, PANEL.min(s - p * PANEL));
    for (src, dst) in z[..cells * l * s].chunks_exact(s).zip(out.chunks_exact_mut(PANEL)) {
        dst[..n].copy_from_slice(&src[first..first + n]);
        dst[n..].fill(0.0);
    }
}

/// A block's z in panels ([panels_len] values), every panel filled in turn.
pub fn to_panels(z: &[f32], cells: usize, s: usize, l: usize, out: &mut [f32]) {
    for (p, panel) in out[..panels_len(cells, s, l)].chunks_exact_mut(panel_len(cells, l)).enumerate() {
        fill_panel(z, cells, s, l, p, panel);
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
/// (1 or 0) per sample and PANEL more (any value), or empty when unmasked.
#[derive(Clone, Copy)]
pub struct PairWeight<'a> {
    pub w: f32,
    pub offset: f32,
    pub mask: &'a [f32],
}

/// A block of cells' z in panels ([to_panels]) and each cell's [PairWeight].
#[derive(Clone, Copy)]
pub struct Block<'a> {
    pub panels: &'a [f32],
    pub weights: &'a [PairWeight<'a>],
    pub s: usize,
    pub l: usize,
}

impl Block<'_> {
    /// Cell c's L lines of PANEL values in panel p.
    #[inline(always)]
    fn lines(&self, p: usize, c: usize) -> &[f32] {
        let start = (p * self.weights.len() + c) * self.l * PANEL;
        &self.panels[start..start + self.l * PANEL]
    }
}

/// Where a tile's pairs go: rows of `width` values from row `first` of
/// `acc`; only pairs with b in `cols` and b > a are added.
struct Target<'a> {
    acc: &'a mut [f64],
    width: usize,
    first: usize,
    cols: Range<usize>,
}

/// The pairs of samples a0..a0+RA with the 2W samples from b0 of one cell
/// (its `col_lines` and `row_lines` in the panels of b0 and a0), added into
/// the target; the other lanes add 0.
#[inline(always)]
fn tile<const W: usize, const RA: usize, const MASKED: bool>(
    col_lines: &[f32], row_lines: &[f32], l: usize, a0: usize, b0: usize, pw: PairWeight, t: &mut Target,
) {
    let (b_off, a_off) = (b0 % PANEL, a0 % PANEL);
    let mut v0 = [[0f32; W]; RA];
    let mut v1 = [[0f32; W]; RA];
    for (cline, rline) in col_lines.chunks_exact(PANEL).zip(row_lines.chunks_exact(PANEL)).take(l) {
        let c0: &[f32; W] = cline[b_off..b_off + W].try_into().unwrap();
        let c1: &[f32; W] = cline[b_off + W..b_off + 2 * W].try_into().unwrap();
        let za: &[f32; RA] = rline[a_off..a_off + RA].try_into().unwrap();
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
        let (lo, end) = ((a + 1).max(t.cols.start), t.cols.end);
        let row = (a - t.first) * t.width + b0;
        let out = &mut t.acc[row..row + 2 * W];
        for (k, vk) in [&v0[r], &v1[r]].into_iter().enumerate() {
            for j in 0..W {
                let b = b0 + k * W + j;
                let f = if MASKED { pw.w * mask[k * W + j] } else { pw.w };
                let value = (f * positive_part(vk[j].sqrt() - pw.offset)) as f64;
                out[k * W + j] += if b >= lo && b < end { value } else { 0.0 };
            }
        }
    }
}

/// The register tiles covering pairs (a, b), a in `rows`, b in `cols`, b > a:
/// (a0, n, b0) for n <= RA rows from a0 (within one panel) by `width` columns
/// from b0 (a multiple of `width`, which divides [PANEL]), column tiles outer
/// so that a tile's columns of every cell stay in cache while the rows pass
/// over them. (Integer work only: the tiles' arithmetic stays in the callers,
/// which carry the target features; a closure would not.)
fn block_tiles<const RA: usize>(width: usize, rows: Range<usize>, cols: Range<usize>) -> impl Iterator<Item = (usize, usize, usize)> {
    let end = cols.end;
    (cols.start - cols.start % width..end).step_by(width).flat_map(move |b0| {
        let row_end = rows.end.min((b0 + width).min(end) - 1); // rows a with a pair b > a in the tile
        let mut a = rows.start;
        std::iter::from_fn(move || {
            (a < row_end).then(|| {
                let n = RA.min(row_end - a).min(PANEL - a % PANEL);
                a += n;
                (a - n, n, b0)
            })
        })
    })
}

/// The pairs (a, b), a in `rows`, b in `cols`, b > a, of a block of cells,
/// with W lanes, into the target.
#[inline(always)]
fn block_pairs<const W: usize, const MASKED: bool>(block: &Block, rows: Range<usize>, t: &mut Target) {
    for (a0, n, b0) in block_tiles::<ROWS>(2 * W, rows, t.cols.clone()) {
        for (c, &pw) in block.weights.iter().enumerate() {
            let (col_lines, row_lines) = (block.lines(b0 / PANEL, c), block.lines(a0 / PANEL, c));
            if n == ROWS {
                tile::<W, ROWS, MASKED>(col_lines, row_lines, block.l, a0, b0, pw, t);
            } else {
                (a0..a0 + n).for_each(|a| tile::<W, 1, MASKED>(col_lines, row_lines, block.l, a, b0, pw, t));
            }
        }
    }
}

/// Rows per AVX-512 tile: 4 x 2 vectors of sums and their 4 x 4 vectors of
/// f64 totals over the block's cells, 24 of the 32 registers.
#[cfg(target_arch = "x86_64")]
const ROWS_AVX512: usize = 4;

/// Rows per AVX2 tile: 6 x 2 vectors of sums, 12 chains of multiply-adds
/// (with 8, the loop ran at the latency of its chains, 5 cycles on AMD Zen 2);
/// the rows left in a panel or range take a tile of their number. `examples/pair_probe.rs` on Zen 2:
/// 1.53-1.57 ns per cell and pair against 1.64 with 4-row tiles (whose
/// remainders took single rows: 6 rows that way were 5% slower).
#[cfg(target_arch = "x86_64")]
const ROWS_AVX2: usize = 6;

/// [tile] for RA (4, or 1 at the end of a range) rows and 2 x 16 lanes in
/// AVX-512 intrinsics, over all cells of the block, the totals kept in
/// registers and added to the target once: the same operations in the same
/// order as the other paths but for the square root ([sqrt_avx512]).
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn tile_avx512<const RA: usize, const MASKED: bool>(block: &Block, a0: usize, b0: usize, t: &mut Target) {
    use std::arch::x86_64::*;
    let (l, a_off) = (block.l, a0 % PANEL);
    // every access below stays inside these bounds
    assert!(b0 % PANEL == 0 && a_off + RA <= PANEL && b0 + PANEL <= t.width && (a0 + RA - t.first) * t.width <= t.acc.len());
    let mut total = [[_mm512_setzero_pd(); 4]; RA];
    let zero = _mm512_setzero_ps();
    for (c, &pw) in block.weights.iter().enumerate() {
        let (cols, rows) = (block.lines(b0 / PANEL, c).as_ptr(), block.lines(a0 / PANEL, c).as_ptr().add(a_off));
        assert!(!MASKED || b0 + PANEL <= pw.mask.len());
        let mut v0 = [_mm512_setzero_ps(); RA];
        let mut v1 = [_mm512_setzero_ps(); RA];
        for d in 0..l {
            let c0 = _mm512_loadu_ps(cols.add(d * PANEL));
            let c1 = _mm512_loadu_ps(cols.add(d * PANEL + 16));
            for r in 0..RA {
                let za = _mm512_set1_ps(*rows.add(d * PANEL + r));
                let diff = _mm512_sub_ps(c0, za);
                v0[r] = _mm512_fmadd_ps(diff, diff, v0[r]);
                let diff = _mm512_sub_ps(c1, za);
                v1[r] = _mm512_fmadd_ps(diff, diff, v1[r]);
            }
        }
        // d = sqrt(sum), then w * max(d - offset, 0); the steps that change
        // nothing (offset 0, w 1, no mask) are skipped
        let (plain, offset, w) = (!MASKED && pw.offset == 0.0 && pw.w == 1.0, _mm512_set1_ps(pw.offset), _mm512_set1_ps(pw.w));
        for r in 0..RA {
            if MASKED && pw.mask[a0 + r] == 0.0 {
                continue;
            }
            for (k, v) in [v0[r], v1[r]].into_iter().enumerate() {
                let mut x = sqrt_avx512(v);
                if !plain {
                    x = _mm512_sub_ps(x, offset);
                    // positive_part: keep x > 0 and NaN
                    x = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask::<_CMP_NLE_UQ>(x, zero), x);
                    let f = if MASKED { _mm512_mul_ps(w, _mm512_loadu_ps(pw.mask.as_ptr().add(b0 + 16 * k))) } else { w };
                    x = _mm512_mul_ps(f, x);
                }
                let low = _mm512_cvtps_pd(_mm512_castps512_ps256(x));
                let high = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(x))));
                total[r][2 * k] = _mm512_add_pd(total[r][2 * k], low);
                total[r][2 * k + 1] = _mm512_add_pd(total[r][2 * k + 1], high);
            }
        }
    }
    for (r, total) in total.iter().enumerate() {
        let a = a0 + r;
        let row = t.acc.as_mut_ptr().add((a - t.first) * t.width);
        for (q, &values) in total.iter().enumerate() {
            let b = b0 + 8 * q;
            // lanes j with max(a + 1, cols.start) <= b + j < cols.end
            let (lo, hi) = ((a + 1).max(t.cols.start).saturating_sub(b).min(8), t.cols.end.saturating_sub(b).min(8));
            let lanes: u32 = if hi > lo { ((1u32 << hi) - 1) & !((1u32 << lo) - 1) } else { 0 };
            let out = row.add(b);
            let sum = _mm512_loadu_pd(out);
            _mm512_storeu_pd(out, _mm512_mask_add_pd(sum, lanes as u8, sum, values));
        }
    }
}

/// sqrt(x) from the 14-bit reciprocal square root and one Newton step, within
/// 2 units in the last place of the exact square root: `vsqrtps` takes 12
/// cycles a vector on these cores, a fifth of the kernel's time. Below the
/// smallest normal number (where rsqrt14 sees 0) it gives 0, an error under
/// 1e-19; NaN and infinity are kept.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn sqrt_avx512(x: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    let y = _mm512_rsqrt14_ps(x);
    let r = _mm512_mul_ps(x, y);
    let h = _mm512_mul_ps(y, _mm512_set1_ps(0.5));
    let e = _mm512_fnmadd_ps(r, h, _mm512_set1_ps(0.5)); // 0.5 - r y / 2: the relative error of r, halved
    let r = _mm512_fmadd_ps(r, e, r);
    let r = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask::<_CMP_NLT_UQ>(x, _mm512_set1_ps(f32::MIN_POSITIVE)), r);
    _mm512_mask_mov_ps(r, _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(x, _mm512_set1_ps(f32::INFINITY)), x)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn block_pairs_avx512<const MASKED: bool>(block: &Block, rows: Range<usize>, t: &mut Target) {
    for (a0, n, b0) in block_tiles::<ROWS_AVX512>(PANEL, rows, t.cols.clone()) {
        if n == ROWS_AVX512 {
            tile_avx512::<ROWS_AVX512, MASKED>(block, a0, b0, t);
        } else {
            (a0..a0 + n).for_each(|a| tile_avx512::<1, MASKED>(block, a, b0, t));
        }
    }
}

/// [tile] for RA rows (up to [ROWS_AVX2]) and 2 x 8 lanes in AVX2 intrinsics,
/// one cell: the same operations in the same order, so the same bits (16
/// registers leave no room for totals over cells, as the AVX-512 tile keeps).
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_avx2<const RA: usize, const MASKED: bool>(col_lines: &[f32], row_lines: &[f32], l: usize, a0: usize, b0: usize, pw: PairWeight, t: &mut Target) {
    use std::arch::x86_64::*;
    let (b_off, a_off) = (b0 % PANEL, a0 % PANEL);
    // every access below stays inside these bounds
    assert!(b_off + 16 <= PANEL && a_off + RA <= PANEL && col_lines.len() >= l * PANEL && row_lines.len() >= l * PANEL);
    assert!(b0 + 16 <= t.width && (a0 + RA - t.first) * t.width <= t.acc.len() && (!MASKED || b0 + 16 <= pw.mask.len()));
    let (cols, rows) = (col_lines.as_ptr().add(b_off), row_lines.as_ptr().add(a_off));
    let mut v0 = [_mm256_setzero_ps(); RA];
    let mut v1 = [_mm256_setzero_ps(); RA];
    for d in 0..l {
        let c0 = _mm256_loadu_ps(cols.add(d * PANEL));
        let c1 = _mm256_loadu_ps(cols.add(d * PANEL + 8));
        for r in 0..RA {
            let za = _mm256_set1_ps(*rows.add(d * PANEL + r));
            let diff = _mm256_sub_ps(c0, za);
            v0[r] = _mm256_fmadd_ps(diff, diff, v0[r]);
            let diff = _mm256_sub_ps(c1, za);
            v1[r] = _mm256_fmadd_ps(diff, diff, v1[r]);
        }
    }
    let (zero, offset, w) = (_mm256_setzero_ps(), _mm256_set1_ps(pw.offset), _mm256_set1_ps(pw.w));
    for r in 0..RA {
        let a = a0 + r;
        if MASKED && pw.mask[a] == 0.0 {
            continue;
        }
        let (lo, end) = ((a + 1).max(t.cols.start), t.cols.end);
        let out = t.acc.as_mut_ptr().add((a - t.first) * t.width + b0);
        for (k, v) in [v0[r], v1[r]].into_iter().enumerate() {
            let x = _mm256_sub_ps(_mm256_sqrt_ps(v), offset);
            // positive_part: keep x > 0 and NaN
            let x = _mm256_and_ps(x, _mm256_cmp_ps::<_CMP_NLE_UQ>(x, zero));
            let f = if MASKED { _mm256_mul_ps(w, _mm256_loadu_ps(pw.mask.as_ptr().add(b0 + 8 * k))) } else { w };
            let x = _mm256_mul_ps(f, x);
            let b = b0 + 8 * k;
            if b >= lo && b + 8 <= end {
                for (half, values) in [_mm256_cvtps_pd(_mm256_castps256_ps128(x)), _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(x))].into_iter().enumerate() {
                    let o = out.add(8 * k + 4 * half);
                    _mm256_storeu_pd(o, _mm256_add_pd(_mm256_loadu_pd(o), values));
                }
            } else {
                let mut values = [0f32; 8];
                _mm256_storeu_ps(values.as_mut_ptr(), x);
                for (j, &value) in values.iter().enumerate() {
                    *out.add(8 * k + j) += if b + j >= lo && b + j < end { value as f64 } else { 0.0 };
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn block_pairs_avx2<const MASKED: bool>(block: &Block, rows: Range<usize>, t: &mut Target) {
    for (a0, n, b0) in block_tiles::<ROWS_AVX2>(16, rows, t.cols.clone()) {
        for (c, &pw) in block.weights.iter().enumerate() {
            let (col_lines, row_lines) = (block.lines(b0 / PANEL, c), block.lines(a0 / PANEL, c));
            match n {
                6 => tile_avx2::<6, MASKED>(col_lines, row_lines, block.l, a0, b0, pw, t),
                5 => tile_avx2::<5, MASKED>(col_lines, row_lines, block.l, a0, b0, pw, t),
                4 => tile_avx2::<4, MASKED>(col_lines, row_lines, block.l, a0, b0, pw, t),
                3 => tile_avx2::<3, MASKED>(col_lines, row_lines, block.l, a0, b0, pw, t),
                2 => tile_avx2::<2, MASKED>(col_lines, row_lines, block.l, a0, b0, pw, t),
                _ => tile_avx2::<1, MASKED>(col_lines, row_lines, block.l, a0, b0, pw, t),
            }
        }
    }
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

/// Width of the rows of the accumulator [add_block_pairs] fills, for S samples.
pub fn accumulator_width(s: usize) -> usize {
    s + PANEL
}

/// Add the weighted pair distances of a block of cells for a in `rows`, b in
/// `cols`, b > a, into `acc`: one row of [accumulator_width] values per a in
/// `rows` (the padding after column S - 1 only ever gets zeros).
pub fn add_block_pairs(block: &Block, rows: Range<usize>, cols: Range<usize>, acc: &mut [f64]) {
    add_block_pairs_with(detected_lanes(), block, rows, cols, acc)
}

/// [add_block_pairs] on a given vector path (for the tests and
/// `examples/pair_probe.rs`, which compare them); panics on a path this CPU
/// cannot take.
pub fn add_block_pairs_with(lanes: Lanes, block: &Block, rows: Range<usize>, cols: Range<usize>, acc: &mut [f64]) {
    assert!(lanes <= detected_lanes(), "this CPU cannot take the {lanes:?} path");
    let (s, l, cells) = (block.s, block.l, block.weights.len());
    let width = accumulator_width(s);
    assert!(acc.len() >= rows.len() * width && rows.end <= s && cols.end <= s && block.panels.len() >= panels_len(cells, s, l));
    let Some(first) = block.weights.first() else { return };
    let masked = !first.mask.is_empty();
    for pw in block.weights {
        assert!(if masked { pw.mask.len() >= s + PANEL } else { pw.mask.is_empty() }, "a block's cells are all masked or none");
    }
    let t = &mut Target { acc, width, first: rows.start, cols };
    match (lanes, masked) {
        // SAFETY (all four): detected_lanes() found the features the functions are compiled for (asserted above).
        #[cfg(target_arch = "x86_64")]
        (Lanes::Avx512, false) => unsafe { block_pairs_avx512::<false>(block, rows, t) },
        #[cfg(target_arch = "x86_64")]
        (Lanes::Avx512, true) => unsafe { block_pairs_avx512::<true>(block, rows, t) },
        #[cfg(target_arch = "x86_64")]
        (Lanes::Avx2, false) => unsafe { block_pairs_avx2::<false>(block, rows, t) },
        #[cfg(target_arch = "x86_64")]
        (Lanes::Avx2, true) => unsafe { block_pairs_avx2::<true>(block, rows, t) },
        (_, false) => block_pairs::<8, false>(block, rows, t),
        (_, true) => block_pairs::<8, true>(block, rows, t),
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

    /// Every path against distances computed pair by pair in f64, for blocks
    /// of several cells with their own weights and masks, sizes that leave
    /// partial tiles and panels, over row and column ranges as the group kernel
    /// splits them; and the paths agree bit for bit.
    #[test]
    fn tiles_match_pairwise_distances() {
        let mut lanes = vec![Lanes::Portable];
        if detected_lanes() != Lanes::Portable {
            lanes.push(Lanes::Avx2);
        }
        if detected_lanes() == Lanes::Avx512 {
            lanes.push(Lanes::Avx512);
        }
        for &(s, l, cells) in &[(1usize, 3usize, 1usize), (2, 1, 2), (7, 5, 3), (37, 10, 1), (70, 30, 3), (133, 4, 2)] {
            let z = random_z(s * cells, l, (s * 100 + l) as u64);
            let mut panels = vec![0f32; panels_len(cells, s, l)];
            to_panels(&z, cells, s, l, &mut panels);
            let masks: Vec<Vec<f32>> = (0..cells).map(|c| (0..s + PANEL).map(|a| if a % 5 == 3 - c.min(3) { 0.0 } else { 1.0 }).collect()).collect();
            let width = accumulator_width(s);
            for masked in [false, true] {
                let weights: Vec<PairWeight> = (0..cells)
                    .map(|c| PairWeight { w: 0.7 - 0.2 * c as f32, offset: if masked { 0.5 } else { 0.0 }, mask: if masked { &masks[c] } else { &[] } })
                    .collect();
                let mut expected = vec![0f64; s * width];
                for (c, pw) in weights.iter().enumerate() {
                    let zc = &z[c * s * l..(c + 1) * s * l]; // [L, S]
                    for a in 0..s {
                        for b in a + 1..s {
                            let d2: f64 = (0..l).map(|d| (zc[d * s + a] as f64 - zc[d * s + b] as f64).powi(2)).sum();
                            let f = if masked { masks[c][a] * masks[c][b] } else { 1.0 };
                            expected[a * width + b] += (pw.w * f) as f64 * (d2.sqrt() - pw.offset as f64).max(0.0);
                        }
                    }
                }
                let block = Block { panels: &panels, weights: &weights, s, l };
                let mut results = Vec::new();
                for &lane in &lanes {
                    // rows in blocks of 3 and columns in passes of 17, as a group task would
                    let mut acc = vec![0f64; s * width];
                    for r0 in (0..s).step_by(3) {
                        let rows = r0..(r0 + 3).min(s);
                        for c0 in (0..s).step_by(17) {
                            add_block_pairs_with(lane, &block, rows.clone(), c0..(c0 + 17).min(s), &mut acc[r0 * width..rows.end * width]);
                        }
                    }
                    for (i, (&got, &want)) in acc.iter().zip(&expected).enumerate() {
                        assert!((got - want).abs() <= 1e-5 * (1.0 + want.abs()), "{lane:?} s={s} l={l} masked={masked} pair {i}: {got} vs {want}");
                    }
                    // one task of all rows and all columns: the same bits as any tiling
                    let mut whole = vec![0f64; s * width];
                    add_block_pairs_with(lane, &block, 0..s, 0..s, &mut whole);
                    assert!(whole == acc, "{lane:?}: the tilings differ in bits (s={s}, l={l})");
                    results.push((lane, acc));
                }
                let exact: Vec<_> = results.iter().filter(|(lane, _)| *lane != Lanes::Avx512).collect();
                assert!(exact.iter().all(|(_, r)| r == &exact[0].1), "the AVX2 and portable paths differ in bits (s={s}, l={l})");
            }
        }
    }

    /// The AVX-512 square root against the exact one: within 2 units in the
    /// last place from the smallest normal number to the largest, 0 below, and
    /// NaN and infinity kept.
    #[test]
    fn fast_square_root_is_within_two_ulp() {
        if detected_lanes() != Lanes::Avx512 {
            return;
        }
        let mut xs: Vec<f32> = vec![0.0, -0.0, 1e-40, f32::MIN_POSITIVE, 1.0, 2.0, 3.0, f32::MAX, f32::INFINITY, f32::NAN];
        let mut x = 1.0e-37f32;
        while x < 3.0e38 {
            xs.push(x);
            x *= 1.0137;
        }
        xs.extend(random_z(4096, 1, 5).iter().map(|v| v * v));
        for chunk in xs.chunks(16) {
            let mut lanes = [0f32; 16];
            lanes[..chunk.len()].copy_from_slice(chunk);
            let mut got = [0f32; 16];
            // SAFETY: the CPU has AVX-512 (checked above).
            unsafe {
                use std::arch::x86_64::*;
                _mm512_storeu_ps(got.as_mut_ptr(), sqrt_avx512(_mm512_loadu_ps(lanes.as_ptr())));
            }
            for (&x, &g) in lanes.iter().zip(&got) {
                let want = x.sqrt();
                if x.is_nan() || x < 0.0 {
                    assert!(g.is_nan() || (x == 0.0 && g == 0.0), "sqrt({x}) gave {g}");
                } else if x < f32::MIN_POSITIVE {
                    assert_eq!(g, 0.0, "sqrt({x})");
                } else if x.is_infinite() {
                    assert_eq!(g, f32::INFINITY);
                } else {
                    let ulps = (g.to_bits() as i64 - want.to_bits() as i64).abs();
                    assert!(ulps <= 2, "sqrt({x}) = {g}, exact {want}: {ulps} ulp");
                }
            }
        }
    }

    #[test]
    fn nan_latents_give_nan_distances() {
        let (s, l) = (20, 4);
        let mut z = random_z(s, l, 9);
        z[2 * s + 5] = f32::NAN; // sample 5, dimension 2
        let mut panels = vec![0f32; panels_len(1, s, l)];
        to_panels(&z, 1, s, l, &mut panels);
        let width = accumulator_width(s);
        let mut acc = vec![0f64; s * width];
        let block = Block { panels: &panels, weights: &[PairWeight { w: 1.0, offset: 0.3, mask: &[] }], s, l };
        add_block_pairs(&block, 0..s, 0..s, &mut acc);
        assert!(acc[5 * width + 6].is_nan() && acc[2 * width + 5].is_nan() && acc[2 * width + 6].is_finite());
    }
}
