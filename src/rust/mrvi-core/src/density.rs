//! Aggregated posteriors of samples (MODEL.md §8): q_s(u) = mean over (a subsample
//! of) the cells m of sample s of N(u; mu_m, diag sd_m^2), evaluated at cells'
//! posterior means. Cost O(cells x reference cells x L), streamed over cells; the
//! reference subsample keeps it from being O(N^2).

use crate::backend;
use crate::error::{try_collect, try_vec, Error, Result};
use crate::posterior::Posterior;
use ndarray::Array2;
use rayon::prelude::*;

/// out[c + n_eval * s] = log q_s(u_c) for the evaluation cells `at` (column-major
/// cells x samples). The reference cells `ref_cells` belong to samples
/// `ref_sample` (< `n_samples`); a cell is never part of its own reference
/// (leave-one-out). Samples without reference cells give -inf.
pub fn log_sample_densities(
    post: &Posterior, at: &[usize], ref_cells: &[usize], ref_sample: &[usize], n_samples: usize,
) -> Result<Vec<f64>> {
    let (n, l) = (post.n_cells, post.n_latent);
    if ref_cells.len() != ref_sample.len() {
        return Err(Error::InvalidInput("one sample per reference cell".into()));
    }
    if at.iter().chain(ref_cells).any(|&c| c >= n) || ref_sample.iter().any(|&s| s >= n_samples) {
        return Err(Error::InvalidInput("reference cell or sample out of range".into()));
    }
    let mut reference = vec![Vec::new(); n_samples];
    for (&c, &s) in ref_cells.iter().zip(ref_sample) {
        reference[s].push(c);
    }
    let n_eval = at.len();
    let s_count = reference.len();
    // per sample, reference means and 1 / var in [dim][cell] layout, and log-normalisers
    struct Ref {
        cells: Vec<usize>,
        mean: Vec<f64>,
        inv_var: Vec<f64>,
        log_norm: Vec<f64>,
    }
    let refs: Vec<Ref> = reference
        .iter()
        .map(|cells| {
            let m = cells.len();
            let (mut mean, mut inv_var, mut log_norm) = (vec![0f64; l * m], vec![0f64; l * m], vec![0f64; m]);
            for (j, &c) in cells.iter().enumerate() {
                let mut ln = -0.5 * l as f64 * (2.0 * std::f64::consts::PI).ln();
                for d in 0..l {
                    let sd = post.sd[d * n + c].max(1e-6);
                    mean[d * m + j] = post.mean[d * n + c];
                    inv_var[d * m + j] = 1.0 / (sd * sd);
                    ln -= sd.ln();
                }
                log_norm[j] = ln;
            }
            Ref { cells: cells.clone(), mean, inv_var, log_norm }
        })
        .collect();
    // [cell, sample], allocated here where failure is an error; each cell's row
    // is filled by one worker of the core's pool
    let mut values = Array2::from_shape_vec((n_eval, s_count), try_vec(n_eval.saturating_mul(s_count), 0f64, "the sample densities")?)
        .expect("the shape matches the length");
    if s_count > 0 {
        let rows = values.as_slice_mut().expect("a new array is contiguous");
        backend::pool()?.install(|| {
            rows.par_chunks_mut(s_count).zip(at.par_iter()).for_each_init(
                || (Vec::new(), vec![0f64; l]),
                |(logp, u), (row, &c)| {
                    for (d, ud) in u.iter_mut().enumerate() {
                        *ud = post.mean[d * n + c];
                    }
                    for (r, value) in refs.iter().zip(row.iter_mut()) {
                        let m = r.cells.len();
                        logp.clear();
                        logp.extend_from_slice(&r.log_norm);
                        for d in 0..l {
                            let (mu, iv) = (&r.mean[d * m..(d + 1) * m], &r.inv_var[d * m..(d + 1) * m]);
                            for j in 0..m {
                                let diff = u[d] - mu[j];
                                logp[j] -= 0.5 * diff * diff * iv[j];
                            }
                        }
                        let mut count = m;
                        if let Some(j) = r.cells.iter().position(|&x| x == c) {
                            logp[j] = f64::NEG_INFINITY;
                            count -= 1;
                        }
                        *value = if count == 0 {
                            f64::NEG_INFINITY
                        } else {
                            let max = logp.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                            if max == f64::NEG_INFINITY {
                                f64::NEG_INFINITY
                            } else {
                                max + logp.iter().map(|&v| (v - max).exp()).sum::<f64>().ln() - (count as f64).ln()
                            }
                        };
                    }
                },
            )
        });
    }
    // column-major cells x samples, as R stores a matrix
    try_collect(n_eval * s_count, values.t().iter().copied(), "the sample densities")
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
}
