//! The tilted mean of a context's coordinates, m(lambda) = sum_j c_j e^(lambda c_j)
//! / sum_j e^(lambda c_j), tabulated on a grid in lambda and read by cubic
//! Hermite interpolation. The attention block in closed form ([super::attention::HostAttention])
//! needs 32 of these per (cell, context) pair, 16 exponentials each; a cell's
//! lambdas are the same for every context, so one table row serves all of them
//! and the interpolation is four multiply-adds per context.
//!
//! m is the derivative of log sum_j e^(lambda c_j); its derivatives are the
//! cumulants of the tilted distribution, so on a context whose coordinates span
//! R the Hermite error is at most step^4 / 384 |kappa_5| <= step^4 R^5 / 512. With
//! step = 0.1 / R that is 2e-7 R: below the float32 error of computing m directly.
//! Rows are computed in double precision when first read (a cell's lambdas fall
//! in a few hundred of them), so building the table costs nothing up front;
//! a small table (few contexts: the decoder's nuisance levels, read for every
//! cell and sample) is filled at once into one buffer, which its many reads
//! then take without the per-row indirection (and, when the AVX2 path first reads
//! it, again in a second layout: four values per lambda and context).

use std::sync::OnceLock;

/// Grid spacing times the widest context's range.
const STEP_TIMES_RANGE: f64 = 0.1;
/// Largest grid: at most this many rows, and rows times values per row at most
/// MAX_VALUES (rows are filled as they are read, so the table stays under 128 MB
/// whatever the number of contexts); beyond it the caller computes m directly.
/// Fitted models need a few thousand rows.
const MAX_POINTS: f64 = (1u64 << 16) as f64;
const MAX_VALUES: f64 = (1u64 << 24) as f64;
/// Tables of at most this many values are filled when built (1 MB, and twice
/// that again for the AVX2 path's second layout, made when first read).
const DENSE_VALUES: f64 = (1u64 << 18) as f64;

pub struct TiltedMeans {
    /// number of contexts
    n: usize,
    /// the contexts' coordinates, [tokens, n] (token-major), as f64
    by_token: Vec<f64>,
    tokens: usize,
    origin: f64,
    step: f64,
    /// rows of the grid
    points: usize,
    /// row p (lambda = origin + p step): m for every context, then step * dm/dlambda;
    /// filled when read (empty for a dense table)
    rows: Vec<OnceLock<Box<[f32]>>>,
    /// every row, one after the other, for a small table
    dense: Option<Box<[f32]>>,
    /// the small table again as what one lambda between rows p and p + 1 reads
    /// of context j: m and step * dm/dlambda at row p, then at row p + 1, four
    /// values at [(p n + j) 4] (one load instead of four gathers); made when the
    /// AVX2 path first reads it (CPUs with AVX-512 read `dense` directly)
    quads: OnceLock<Box<[f32]>>,
}

impl TiltedMeans {
    /// A table for lambda in [lo, hi] over `n` contexts of `tokens` coordinates
    /// each (`by_token`: [tokens, n]); None when the range is not finite or the
    /// grid would be too large.
    pub fn new(by_token: &[f32], tokens: usize, n: usize, lo: f64, hi: f64) -> Option<Self> {
        if !(lo.is_finite() && hi.is_finite() && lo <= hi) || by_token.iter().any(|c| !c.is_finite()) {
            return None;
        }
        let range = (0..n)
            .map(|i| {
                let cs = (0..tokens).map(|j| by_token[j * n + i] as f64);
                cs.clone().fold(f64::NEG_INFINITY, f64::max) - cs.fold(f64::INFINITY, f64::min)
            })
            .fold(0f64, f64::max);
        // a constant context's m is its coordinate for every lambda: any step
        let step = if range > 0.0 { STEP_TIMES_RANGE / range } else { (hi - lo).max(1.0) };
        // two steps of margin on either side for lambdas rounded in float32
        let origin = lo - 2.0 * step;
        let points = ((hi - lo) / step).ceil() + 5.0;
        if points > MAX_POINTS || points * n as f64 > MAX_VALUES {
            return None;
        }
        let mut table = Self {
            n,
            by_token: by_token.iter().map(|&c| c as f64).collect(),
            tokens,
            origin,
            step,
            points: points as usize,
            rows: Vec::new(),
            dense: None,
            quads: OnceLock::new(),
        };
        if points * 2.0 * n as f64 <= DENSE_VALUES {
            table.dense = Some((0..points as usize).flat_map(|p| table.compute_row(p).into_vec()).collect());
        } else {
            table.rows = (0..points as usize).map(|_| OnceLock::new()).collect();
        }
        Some(table)
    }

    /// m(lambda) of every context into `out` ([n]); false (and `out` untouched)
    /// when lambda is off the grid or not a number. The values of
    /// [Self::interpolate_many] for this one lambda, computed with the contexts
    /// in the vector lanes (the many-lambda path puts lambdas there).
    pub fn interpolate(&self, lambda: f32, out: &mut [f32]) -> bool {
        let Some((p, t)) = self.locate(lambda) else { return false };
        let n = self.n;
        let (a, b) = self.rows_at(p);
        let h = hermite(t);
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512 (the function's features).
            unsafe { hermite_row_avx512(h, a, b, &mut out[..n]) };
            return true;
        } else if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (the function's features).
            unsafe { hermite_row_avx2(h, a, b, &mut out[..n]) };
            return true;
        }
        hermite_row(h, a, b, &mut out[..n]);
        true
    }

    /// The grid row below lambda and the fraction of a step above it; None off
    /// the grid or for NaN.
    #[inline(always)]
    fn locate(&self, lambda: f32) -> Option<(usize, f32)> {
        let u = (lambda as f64 - self.origin) / self.step;
        if !(u >= 0.0 && u < (self.points - 1) as f64) {
            return None;
        }
        // u >= 0: truncation is the floor
        let p = u as usize;
        Some((p, (u - p as f64) as f32))
    }

    /// Rows p and p + 1 of the grid.
    #[inline(always)]
    fn rows_at(&self, p: usize) -> (&[f32], &[f32]) {
        let n = self.n;
        match &self.dense {
            Some(rows) => (&rows[p * 2 * n..(p + 1) * 2 * n], &rows[(p + 1) * 2 * n..(p + 2) * 2 * n]),
            None => (self.row(p), self.row(p + 1)),
        }
    }

    /// m at each of `lambdas` for every context into `out`, [contexts, lambdas]
    /// (the values of [Self::interpolate], transposed); false at the first
    /// lambda off the grid (`out` then partly written).
    pub fn interpolate_many(&self, lambdas: &[f32], out: &mut [f32]) -> bool {
        let mut done = 0;
        #[cfg(target_arch = "x86_64")]
        if let Some(rows) = &self.dense {
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU has AVX-512 (the function's features).
                done = unsafe { self.dense_avx512(rows, lambdas, out) };
            } else if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU has AVX2 (the function's features).
                done = unsafe { self.dense_avx2(self.quads(), lambdas, out) };
            }
        }
        self.interpolate_from(done, lambdas, out)
    }

    /// The dense table in the layout of the `quads` field, made once.
    fn quads(&self) -> &[f32] {
        let n = self.n;
        self.quads.get_or_init(|| {
            let rows = self.dense.as_deref().expect("only a dense table has quads");
            let quad = |p: usize, j: usize| [rows[2 * n * p + j], rows[2 * n * p + n + j], rows[2 * n * (p + 1) + j], rows[2 * n * (p + 1) + n + j]];
            (0..self.points - 1).flat_map(|p| (0..n).flat_map(move |j| quad(p, j))).collect()
        })
    }

    /// [Self::interpolate_many] for lambdas[first..] (the same arithmetic,
    /// one lambda at a time).
    fn interpolate_from(&self, first: usize, lambdas: &[f32], out: &mut [f32]) -> bool {
        let (n, len) = (self.n, lambdas.len());
        for (i, &lambda) in lambdas.iter().enumerate().skip(first) {
            let Some((p, t)) = self.locate(lambda) else { return false };
            let (a, b) = self.rows_at(p);
            let [h00, h10, h01, h11] = hermite(t);
            for j in 0..n {
                out[j * len + i] = h00 * a[j] + h10 * a[n + j] + h01 * b[j] + h11 * b[n + j];
            }
        }
        true
    }

    /// The dense table's interpolation 16 lambdas at a time, with the scalar
    /// path's operations in the same order (no fused multiply-adds), so the
    /// same bits; returns how many lambdas it did (it stops before a block
    /// with a lambda off the grid, which the scalar path then reports).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx2")]
    unsafe fn dense_avx512(&self, rows: &[f32], lambdas: &[f32], out: &mut [f32]) -> usize {
        use std::arch::x86_64::*;
        let (n, len) = (self.n, lambdas.len());
        // every gather index and store below stays inside these bounds
        assert!(out.len() >= n * len && rows.len() >= self.points * 2 * n && self.points * 2 * n < i32::MAX as usize);
        let (origin, step, last) = (_mm512_set1_pd(self.origin), _mm512_set1_pd(self.step), _mm512_set1_pd((self.points - 1) as f64));
        let (one, two, three) = (_mm512_set1_ps(1.0), _mm512_set1_ps(2.0), _mm512_set1_ps(3.0));
        let (width, shift) = (_mm512_set1_epi32(2 * n as i32), _mm512_set1_epi32(n as i32));
        let mut i = 0;
        while i + 16 <= len {
            let lo = _mm512_cvtps_pd(_mm256_loadu_ps(lambdas.as_ptr().add(i)));
            let hi = _mm512_cvtps_pd(_mm256_loadu_ps(lambdas.as_ptr().add(i + 8)));
            let (u_lo, u_hi) = (_mm512_div_pd(_mm512_sub_pd(lo, origin), step), _mm512_div_pd(_mm512_sub_pd(hi, origin), step));
            // 0 <= u < last (false for NaN) in every lane
            let inside = |u| _mm512_cmp_pd_mask::<_CMP_GE_OQ>(u, _mm512_setzero_pd()) & _mm512_cmp_pd_mask::<_CMP_LT_OQ>(u, last);
            if inside(u_lo) & inside(u_hi) != 0xff {
                break;
            }
            // truncation is the floor for u >= 0
            let (p_lo, p_hi) = (_mm512_cvttpd_epi32(u_lo), _mm512_cvttpd_epi32(u_hi));
            let t_lo = _mm512_cvtpd_ps(_mm512_sub_pd(u_lo, _mm512_cvtepi32_pd(p_lo)));
            let t_hi = _mm512_cvtpd_ps(_mm512_sub_pd(u_hi, _mm512_cvtepi32_pd(p_hi)));
            let t = _mm512_castpd_ps(_mm512_insertf64x4::<1>(_mm512_castps_pd(_mm512_castps256_ps512(t_lo)), _mm256_castps_pd(t_hi)));
            let p = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(p_lo), p_hi);
            let s = _mm512_sub_ps(one, t);
            let h00 = _mm512_mul_ps(_mm512_mul_ps(_mm512_add_ps(one, _mm512_mul_ps(two, t)), s), s);
            let h10 = _mm512_mul_ps(_mm512_mul_ps(t, s), s);
            let h01 = _mm512_mul_ps(_mm512_mul_ps(t, t), _mm512_sub_ps(three, _mm512_mul_ps(two, t)));
            let minus_t = _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(t), _mm512_set1_epi32(i32::MIN)));
            let h11 = _mm512_mul_ps(_mm512_mul_ps(minus_t, t), s);
            let a = _mm512_mullo_epi32(p, width);
            let b = _mm512_add_epi32(a, width);
            for j in 0..n {
                let (aj, bj) = (_mm512_add_epi32(a, _mm512_set1_epi32(j as i32)), _mm512_add_epi32(b, _mm512_set1_epi32(j as i32)));
                let va = _mm512_i32gather_ps::<4>(aj, rows.as_ptr());
                let da = _mm512_i32gather_ps::<4>(_mm512_add_epi32(aj, shift), rows.as_ptr());
                let vb = _mm512_i32gather_ps::<4>(bj, rows.as_ptr());
                let db = _mm512_i32gather_ps::<4>(_mm512_add_epi32(bj, shift), rows.as_ptr());
                let v = _mm512_add_ps(
                    _mm512_add_ps(_mm512_add_ps(_mm512_mul_ps(h00, va), _mm512_mul_ps(h10, da)), _mm512_mul_ps(h01, vb)),
                    _mm512_mul_ps(h11, db),
                );
                _mm512_storeu_ps(out.as_mut_ptr().add(j * len + i), v);
            }
            i += 16;
        }
        i
    }

    /// [Self::dense_avx512] 8 lambdas at a time in AVX2 (the decoder's block
    /// in expression-space distances spent a fifth of its time in the scalar
    /// path on CPUs without AVX-512): each lambda's four values of a context are
    /// one load from `quads` (AVX2 gathers are slow on AMD Zen 2), transposed
    /// into the lanes. The same operations, so the same bits.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn dense_avx2(&self, quads: &[f32], lambdas: &[f32], out: &mut [f32]) -> usize {
        use std::arch::x86_64::*;
        let (n, len) = (self.n, lambdas.len());
        // every load and store below stays inside these bounds
        assert!(out.len() >= n * len && quads.len() >= (self.points - 1) * n * 4);
        let (origin, step, last) = (_mm256_set1_pd(self.origin), _mm256_set1_pd(self.step), _mm256_set1_pd((self.points - 1) as f64));
        let (one, two, three) = (_mm256_set1_ps(1.0), _mm256_set1_ps(2.0), _mm256_set1_ps(3.0));
        let mut rows = [0i32; 8];
        let mut i = 0;
        while i + 8 <= len {
            let lo = _mm256_cvtps_pd(_mm_loadu_ps(lambdas.as_ptr().add(i)));
            let hi = _mm256_cvtps_pd(_mm_loadu_ps(lambdas.as_ptr().add(i + 4)));
            let (u_lo, u_hi) = (_mm256_div_pd(_mm256_sub_pd(lo, origin), step), _mm256_div_pd(_mm256_sub_pd(hi, origin), step));
            // 0 <= u < last (false for NaN) in every lane
            let inside = |u| _mm256_movemask_pd(_mm256_and_pd(_mm256_cmp_pd::<_CMP_GE_OQ>(u, _mm256_setzero_pd()), _mm256_cmp_pd::<_CMP_LT_OQ>(u, last)));
            if inside(u_lo) & inside(u_hi) != 0xf {
                break;
            }
            // truncation is the floor for u >= 0
            let (p_lo, p_hi) = (_mm256_cvttpd_epi32(u_lo), _mm256_cvttpd_epi32(u_hi));
            let t_lo = _mm256_cvtpd_ps(_mm256_sub_pd(u_lo, _mm256_cvtepi32_pd(p_lo)));
            let t_hi = _mm256_cvtpd_ps(_mm256_sub_pd(u_hi, _mm256_cvtepi32_pd(p_hi)));
            let t = _mm256_set_m128(t_hi, t_lo);
            _mm256_storeu_si256(rows.as_mut_ptr().cast(), _mm256_set_m128i(p_hi, p_lo));
            let s = _mm256_sub_ps(one, t);
            let h00 = _mm256_mul_ps(_mm256_mul_ps(_mm256_add_ps(one, _mm256_mul_ps(two, t)), s), s);
            let h10 = _mm256_mul_ps(_mm256_mul_ps(t, s), s);
            let h01 = _mm256_mul_ps(_mm256_mul_ps(t, t), _mm256_sub_ps(three, _mm256_mul_ps(two, t)));
            let minus_t = _mm256_xor_ps(t, _mm256_set1_ps(-0.0));
            let h11 = _mm256_mul_ps(_mm256_mul_ps(minus_t, t), s);
            // 0 <= row < points - 1 (checked above)
            let at = rows.map(|p| quads.as_ptr().add(p as usize * n * 4));
            for j in 0..n {
                // lambda r's quad in the low lane, lambda r + 4's in the high
                let pair = |r: usize| _mm256_set_m128(_mm_loadu_ps(at[r + 4].add(4 * j)), _mm_loadu_ps(at[r].add(4 * j)));
                let (q0, q1, q2, q3) = (pair(0), pair(1), pair(2), pair(3));
                let (t0, t1) = (_mm256_unpacklo_ps(q0, q1), _mm256_unpacklo_ps(q2, q3));
                let (t2, t3) = (_mm256_unpackhi_ps(q0, q1), _mm256_unpackhi_ps(q2, q3));
                let (va, da) = (_mm256_shuffle_ps::<0x44>(t0, t1), _mm256_shuffle_ps::<0xee>(t0, t1));
                let (vb, db) = (_mm256_shuffle_ps::<0x44>(t2, t3), _mm256_shuffle_ps::<0xee>(t2, t3));
                let v = _mm256_add_ps(
                    _mm256_add_ps(_mm256_add_ps(_mm256_mul_ps(h00, va), _mm256_mul_ps(h10, da)), _mm256_mul_ps(h01, vb)),
                    _mm256_mul_ps(h11, db),
                );
                _mm256_storeu_ps(out.as_mut_ptr().add(j * len + i), v);
            }
            i += 8;
        }
        i
    }

    fn row(&self, p: usize) -> &[f32] {
        self.rows[p].get_or_init(|| self.compute_row(p))
    }

    fn compute_row(&self, p: usize) -> Box<[f32]> {
        let lambda = self.origin + p as f64 * self.step;
        let n = self.n;
        let mut row = vec![0f32; 2 * n];
        let (mut c, mut w) = (vec![0f64; self.tokens], vec![0f64; self.tokens]);
        for i in 0..n {
            for (j, cj) in c.iter_mut().enumerate() {
                *cj = self.by_token[j * n + i];
            }
            let top = c.iter().map(|&cj| lambda * cj).fold(f64::NEG_INFINITY, f64::max);
            for (wj, &cj) in w.iter_mut().zip(&c) {
                *wj = (lambda * cj - top).exp();
            }
            let total: f64 = w.iter().sum();
            let m = w.iter().zip(&c).map(|(wj, cj)| wj * cj).sum::<f64>() / total;
            let var = w.iter().zip(&c).map(|(wj, cj)| wj * (cj - m).powi(2)).sum::<f64>() / total;
            row[i] = m as f32;
            row[n + i] = (var * self.step) as f32;
        }
        row.into_boxed_slice()
    }
}

/// The cubic Hermite basis at fraction t of a step: the weights of m and
/// step * dm/dlambda at the row below, then at the row above.
#[inline(always)]
fn hermite(t: f32) -> [f32; 4] {
    let s = 1.0 - t;
    [(1.0 + 2.0 * t) * s * s, t * s * s, t * t * (3.0 - 2.0 * t), -t * t * s]
}

/// One lambda's interpolation for every context, `a` and `b` the rows below
/// and above it (m for each context, then step * dm/dlambda): the scalar
/// path's operations in its order, no fused multiply-adds, so the same bits
/// at any vector width.
#[inline(always)]
fn hermite_row([h00, h10, h01, h11]: [f32; 4], a: &[f32], b: &[f32], out: &mut [f32]) {
    let n = out.len();
    let (a, da, b, db) = (&a[..n], &a[n..2 * n], &b[..n], &b[n..2 * n]);
    for ((((o, &a), &da), &b), &db) in out.iter_mut().zip(a).zip(da).zip(b).zip(db) {
        *o = h00 * a + h10 * da + h01 * b + h11 * db;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2")]
unsafe fn hermite_row_avx512(h: [f32; 4], a: &[f32], b: &[f32], out: &mut [f32]) {
    hermite_row(h, a, b, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn hermite_row_avx2(h: [f32; 4], a: &[f32], b: &[f32], out: &mut [f32]) {
    hermite_row(h, a, b, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// m and its derivative computed directly, in f64.
    fn direct(cs: &[f64], lambda: f64) -> f64 {
        let top = cs.iter().map(|c| lambda * c).fold(f64::NEG_INFINITY, f64::max);
        let w: Vec<f64> = cs.iter().map(|c| (lambda * c - top).exp()).collect();
        w.iter().zip(cs).map(|(w, c)| w * c).sum::<f64>() / w.iter().sum::<f64>()
    }

    #[test]
    fn interpolation_matches_the_tilted_mean() {
        // contexts of different spreads, one constant
        let (tokens, n) = (16usize, 5usize);
        let mut by_token = vec![0f32; tokens * n];
        for i in 0..n {
            for j in 0..tokens {
                let spread = [0.3f32, 1.0, 3.0, 8.0, 0.0][i];
                by_token[j * n + i] = spread * (((j * 37 + i * 11) % 17) as f32 / 8.0 - 1.0) + i as f32 * 0.1;
            }
        }
        let table = TiltedMeans::new(&by_token, tokens, n, -6.0, 4.0).unwrap();
        let mut out = vec![0f32; n];
        let mut worst = 0f64;
        for k in 0..=2000 {
            let lambda = -6.0 + 10.0 * k as f64 / 2000.0 + 1e-4;
            assert!(table.interpolate(lambda as f32, &mut out));
            for i in 0..n {
                let cs: Vec<f64> = (0..tokens).map(|j| by_token[j * n + i] as f64).collect();
                let range = cs.iter().cloned().fold(f64::NEG_INFINITY, f64::max) - cs.iter().cloned().fold(f64::INFINITY, f64::min);
                let err = (out[i] as f64 - direct(&cs, lambda as f32 as f64)).abs() / range.max(1.0);
                worst = worst.max(err);
            }
        }
        assert!(worst < 1e-6, "largest error {worst} of the range");
        // many lambdas at once: the same values, by context
        let lambdas: Vec<f32> = (0..50).map(|k| -5.9 + 0.19 * k as f32).collect();
        let mut many = vec![f32::NAN; n * lambdas.len()];
        assert!(table.interpolate_many(&lambdas, &mut many));
        for (i, &lambda) in lambdas.iter().enumerate() {
            assert!(table.interpolate(lambda, &mut out));
            for j in 0..n {
                assert_eq!(many[j * lambdas.len() + i].to_bits(), out[j].to_bits());
            }
        }
        // the AVX2 path (which an AVX-512 CPU does not take) against the scalar
        // path: the same bits, and it stops before the block with the lambda off the grid
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            let quads = table.quads();
            let (mut vector, mut scalar) = (vec![f32::NAN; n * lambdas.len()], vec![f32::NAN; n * lambdas.len()]);
            // SAFETY: the CPU has AVX2 (checked above)
            let done = unsafe { table.dense_avx2(quads, &lambdas, &mut vector) };
            assert_eq!(done, 48);
            assert!(table.interpolate_from(0, &lambdas, &mut scalar));
            for j in 0..n {
                let (v, s) = (&vector[j * lambdas.len()..j * lambdas.len() + done], &scalar[j * lambdas.len()..j * lambdas.len() + done]);
                assert!(v.iter().zip(s).all(|(x, y)| x.to_bits() == y.to_bits()), "context {j}");
            }
            let mut off = lambdas.clone();
            off[20] = f32::NAN;
            // SAFETY: as above
            assert_eq!(unsafe { table.dense_avx2(quads, &off, &mut vector) }, 16);
        }
        assert!(!table.interpolate_many(&[0.0, 100.0], &mut many));
        // a lambda off the grid inside a block of 16
        let mut off = lambdas.clone();
        off[20] = 100.0;
        assert!(!table.interpolate_many(&off, &mut many));
        // the same contexts repeated 60 times: too many values to fill at once,
        // so rows are filled as read; the same bits
        assert!(table.dense.is_some());
        let wide = 60 * n;
        let by_token_wide: Vec<f32> = (0..tokens).flat_map(|j| (0..wide).map(move |i| (j, i))).map(|(j, i)| by_token[j * n + i % n]).collect();
        let lazy = TiltedMeans::new(&by_token_wide, tokens, wide, -6.0, 4.0).unwrap();
        assert!(lazy.dense.is_none());
        let mut many_wide = vec![f32::NAN; wide * lambdas.len()];
        assert!(lazy.interpolate_many(&lambdas, &mut many_wide));
        assert!(table.interpolate_many(&lambdas, &mut many));
        for i in 0..wide {
            let (a, b) = (&many_wide[i * lambdas.len()..(i + 1) * lambdas.len()], &many[(i % n) * lambdas.len()..(i % n + 1) * lambdas.len()]);
            assert!(a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()));
        }
        // one lambda's row on every vector path: the same bits (odd n: a tail)
        let rows: Vec<f32> = (0..4 * 37).map(|k| ((k * 7919) % 101) as f32 / 37.0 - 1.3).collect();
        let (a, b) = rows.split_at(2 * 37);
        for t in [0.0f32, 0.013, 0.5, 0.77, 0.999] {
            let mut portable = vec![0f32; 37];
            hermite_row(hermite(t), a, b, &mut portable);
            #[cfg(target_arch = "x86_64")]
            for (feature, path) in [("avx2", hermite_row_avx2 as unsafe fn([f32; 4], &[f32], &[f32], &mut [f32])), ("avx512f", hermite_row_avx512)] {
                if std::arch::is_x86_feature_detected!("avx2") && (feature == "avx2" || std::arch::is_x86_feature_detected!("avx512f")) {
                    let mut vector = vec![f32::NAN; 37];
                    // SAFETY: the CPU has the path's features (checked above)
                    unsafe { path(hermite(t), a, b, &mut vector) };
                    assert!(vector.iter().zip(&portable).all(|(x, y)| x.to_bits() == y.to_bits()), "{feature} at t = {t}");
                }
            }
        }
        // off the grid, NaN: not interpolated
        assert!(!table.interpolate(100.0, &mut out));
        assert!(!table.interpolate(f32::NAN, &mut out));
        assert!(TiltedMeans::new(&by_token, tokens, n, 0.0, f64::INFINITY).is_none());
    }
}
