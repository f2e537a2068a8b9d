//! The posterior of u and every draw from it. Each analysis that draws u (sample
//! distances, guided tests, tree support, counterfactual latents, differential
//! expression, split genes) takes its draws from here, so that one seed
//! reproduces them all.
//!
//! Draws are counter-based: draw m of cell c under seed s is
//! u = mean_c + sd_c * eps with eps from a SplitMix64 stream keyed by (s, c, m)
//! alone. A cell's draws therefore do not depend on which other cells are asked
//! for, on the block or chunk size, or on the number of workers.

use crate::error::{Error, Result};
use crate::rng::SplitMix64;

/// The posterior of u for N cells, column-major N x L (as R stores matrices).
pub struct Posterior<'a> {
    pub mean: &'a [f64],
    pub sd: &'a [f64],
    pub n_cells: usize,
    pub n_latent: usize,
}

impl<'a> Posterior<'a> {
    pub fn new(mean: &'a [f64], sd: &'a [f64], n_cells: usize, n_latent: usize) -> Result<Self> {
        if mean.len() != n_cells * n_latent || sd.len() != n_cells * n_latent {
            return Err(Error::InvalidInput(format!(
                "u has {} means and {} sds, expected {n_cells} cells x {n_latent}",
                mean.len(),
                sd.len()
            )));
        }
        Ok(Self { mean, sd, n_cells, n_latent })
    }

    /// u of cell `c`: its posterior mean (`draw` None) or draw m under `seed`.
    pub fn draw(&self, c: usize, draw: Option<usize>, seed: u64) -> Vec<f64> {
        let n = self.n_cells;
        let mut rng = draw.map(|m| stream(seed, c, m));
        (0..self.n_latent)
            .map(|d| {
                let mean = self.mean[d * n + c];
                match rng.as_mut() {
                    None => mean,
                    Some(rng) => mean + self.sd[d * n + c] * standard_normal(rng),
                }
            })
            .collect()
    }

    /// u of `cells` for one draw (or the mean), [cells, L] row-major in single
    /// precision, as the models take it.
    pub fn rows(&self, cells: &[usize], draw: Option<usize>, seed: u64) -> Vec<f32> {
        cells.iter().flat_map(|&c| self.draw(c, draw, seed).into_iter().map(|v| v as f32)).collect()
    }

    /// u of `cells` for one draw (or the mean), column-major [cells, L], for R.
    pub fn column_major(&self, cells: &[usize], draw: Option<usize>, seed: u64) -> Result<Vec<f64>> {
        if let Some(&c) = cells.iter().find(|&&c| c >= self.n_cells) {
            return Err(Error::InvalidInput(format!("cell {c} is out of range (0..{})", self.n_cells)));
        }
        let nc = cells.len();
        let mut out = crate::error::try_vec(nc.saturating_mul(self.n_latent), 0f64, "the posterior draws")?;
        for (r, &c) in cells.iter().enumerate() {
            for (d, v) in self.draw(c, draw, seed).into_iter().enumerate() {
                out[r + nc * d] = v;
            }
        }
        Ok(out)
    }
}

/// The generator of draw m of cell c under seed s. (Keyed as since the first
/// release of the distances, so that their Monte Carlo results are unchanged:
/// for c < 2^40 no two (c, m) share a key under one seed.)
fn stream(seed: u64, c: usize, m: usize) -> SplitMix64 {
    SplitMix64::new(seed ^ (c as u64).wrapping_mul(0x9E37_79B9) ^ ((m as u64) << 40))
}

fn standard_normal(rng: &mut SplitMix64) -> f64 {
    // Box-Muller on two uniforms in (0, 1]
    let u1 = ((rng.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
    let u2 = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(n: usize, l: usize) -> (Vec<f64>, Vec<f64>) {
        let mean = (0..n * l).map(|k| k as f64 / 7.0).collect();
        let sd = (0..n * l).map(|k| 0.1 + (k % 5) as f64 / 10.0).collect();
        (mean, sd)
    }

    #[test]
    fn a_cells_draw_depends_only_on_seed_cell_and_draw() {
        let (mean, sd) = fixture(50, 3);
        let post = Posterior::new(&mean, &sd, 50, 3).unwrap();
        let all = post.column_major(&(0..50).collect::<Vec<_>>(), Some(2), 9).unwrap();
        let some = post.column_major(&[40, 7, 13], Some(2), 9).unwrap();
        for (r, &c) in [40usize, 7, 13].iter().enumerate() {
            for d in 0..3 {
                assert_eq!(some[r + 3 * d], all[c + 50 * d]);
            }
        }
        assert_ne!(post.draw(7, Some(2), 9), post.draw(7, Some(3), 9));
        assert_ne!(post.draw(7, Some(2), 9), post.draw(7, Some(2), 10));
        assert_eq!(post.draw(7, None, 9), vec![mean[7], mean[57], mean[107]]);
    }

    #[test]
    fn draws_are_normal_with_the_posterior_moments() {
        // one cell, many draws: mean and sd of (u - mean) / sd near 0 and 1
        let (mean, sd) = (vec![1.5], vec![0.5]);
        let post = Posterior::new(&mean, &sd, 1, 1).unwrap();
        let eps: Vec<f64> = (0..20_000).map(|m| (post.draw(0, Some(m), 3)[0] - 1.5) / 0.5).collect();
        let m = eps.iter().sum::<f64>() / eps.len() as f64;
        let v = eps.iter().map(|e| (e - m).powi(2)).sum::<f64>() / (eps.len() - 1) as f64;
        assert!(m.abs() < 0.03 && (v - 1.0).abs() < 0.04, "mean {m}, variance {v}");
    }

    #[test]
    fn inconsistent_shapes_are_errors() {
        assert!(Posterior::new(&[0.0; 5], &[1.0; 6], 3, 2).is_err());
        let (mean, sd) = fixture(3, 2);
        let post = Posterior::new(&mean, &sd, 3, 2).unwrap();
        assert!(post.column_major(&[3], None, 1).is_err());
    }
}
