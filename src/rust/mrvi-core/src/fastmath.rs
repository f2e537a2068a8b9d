//! Branch-free single-precision exp and ln (the Cephes polynomials), written so
//! that loops over slices vectorise. Relative error about 1e-7, like libm's
//! expf/logf, at a fraction of the cost inside the likelihood's inner loop.

#[inline(always)]
pub fn exp(x: f32) -> f32 {
    exp_with::<false>(x)
}

/// [exp] with fused multiply-adds in the polynomial where `FMA` (for code
/// compiled with the fma target feature: fewer instructions, last-bit
/// differences from [exp]; without the feature, `mul_add` is a slow libm call).
#[inline(always)]
pub fn exp_with<const FMA: bool>(x: f32) -> f32 {
    let madd = |a: f32, b: f32, c: f32| if FMA { a.mul_add(b, c) } else { a * b + c };
    let x = x.clamp(-87.3, 88.7);
    // round x * log2(e) to the nearest integer with the 1.5 * 2^23 trick: pure
    // float arithmetic (no floor call), and the integer sits in the low mantissa bits
    const MAGIC: f32 = 12_582_912.0;
    let shifted = x * std::f32::consts::LOG2_E + MAGIC;
    let n = shifted.to_bits() as i32 - MAGIC.to_bits() as i32;
    let fx = shifted - MAGIC;
    let r = x - fx * 0.693_359_4 - fx * -2.121_944_4e-4;
    let z = r * r;
    const Q: [f32; 6] = [1.987_569_1e-4, 1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 5.000_000_1e-1];
    let mut q = Q[0];
    for c in &Q[1..] {
        q = madd(q, r, *c);
    }
    let y = madd(q, z, r) + 1.0;
    y * f32::from_bits(((n + 127) << 23) as u32)
}

/// Natural log for x > 0 (finite, normal).
#[inline(always)]
pub fn ln(x: f32) -> f32 {
    let bits = x.to_bits();
    let mut e = ((bits >> 23) & 0xff) as i32 - 126;
    let mut m = f32::from_bits((bits & 0x007f_ffff) | 0x3f00_0000); // [0.5, 1)
    // move m into [sqrt(1/2), sqrt(2)) without a branch
    let small = m < std::f32::consts::FRAC_1_SQRT_2;
    e -= small as i32;
    m = if small { m + m } else { m };
    let f = m - 1.0;
    let z = f * f;
    const P: [f32; 9] = [
        7.037_683_6e-2, -1.151_461_1e-1, 1.167_699_9e-1, -1.242_014_1e-1, 1.424_932_3e-1,
        -1.666_805_8e-1, 2.000_071_5e-1, -2.499_999_4e-1, 3.333_333_1e-1,
    ];
    let mut p = P[0];
    for c in &P[1..] {
        p = p * f + c;
    }
    let ef = e as f32;
    f * z * p + ef * -2.121_944_4e-4 - 0.5 * z + f + ef * 0.693_359_4
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_and_ln_match_std() {
        let mut worst_exp = 0f64;
        let mut x = -80.0f32;
        while x < 80.0 {
            let want = (x as f64).exp();
            worst_exp = worst_exp.max(((exp(x) as f64 - want) / want).abs());
            worst_exp = worst_exp.max(((exp_with::<true>(x) as f64 - want) / want).abs());
            x += 0.0137;
        }
        assert!(worst_exp < 5e-7, "exp relative error {worst_exp}");
        let mut worst_ln = 0f64;
        let mut v = 1e-30f32;
        while v < 1e30 {
            let want = (v as f64).ln();
            worst_ln = worst_ln.max((ln(v) as f64 - want).abs() / want.abs().max(1.0));
            v *= 1.0173;
        }
        assert!(worst_ln < 5e-7, "ln error {worst_ln}");
        assert_eq!(ln(1.0), 0.0);
    }
}
