//! Aggregated posteriors of samples (MODEL.md §8): q_s(u) = mean over (a subsample
//! of) the cells m of sample s of N(u; mu_m, diag sd_m^2), evaluated at cells'
//! posterior means. Cost O(cells x reference cells x L), streamed over cells; the
//! reference subsample keeps it from being O(N^2).

use crate::distances::Posterior;
use crate::error::{try_vec, Result};

/// out[c + n_eval * s] = log q_s(u_c) for the evaluation cells `at` (column-major
/// cells x samples). `reference[s]` lists sample s's reference cells; a cell is
/// never part of its own reference (leave-one-out). Samples without reference
/// cells give -inf.
pub fn log_sample_densities(post: &Posterior, at: &[usize], reference: &[Vec<usize>], threads: usize) -> Result<Vec<f64>> {
    let (n, l) = (post.n_cells, post.n_latent);
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
    let mut out = try_vec(n_eval.saturating_mul(s_count), f64::NEG_INFINITY, "the sample densities")?;
    let per = n_eval.div_ceil(threads.max(1)).max(1);
    // each thread's values, [cell][sample], allocated here where failure is an error
    let mut results: Vec<Vec<f64>> = at.chunks(per).map(|part| try_vec(part.len() * s_count, 0f64, "the sample densities")).collect::<Result<_>>()?;
    std::thread::scope(|scope| {
        for (part, res) in at.chunks(per).zip(results.iter_mut()) {
                let refs = &refs;
                scope.spawn(move || {
                    let mut logp = Vec::new();
                    let mut u = vec![0f64; l];
                    for (k, &c) in part.iter().enumerate() {
                        for (d, ud) in u.iter_mut().enumerate() {
                            *ud = post.mean[d * n + c];
                        }
                        for (s, r) in refs.iter().enumerate() {
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
                            let value = if count == 0 {
                                f64::NEG_INFINITY
                            } else {
                                let max = logp.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                                if max == f64::NEG_INFINITY {
                                    f64::NEG_INFINITY
                                } else {
                                    max + logp.iter().map(|&v| (v - max).exp()).sum::<f64>().ln() - (count as f64).ln()
                                }
                            };
                            res[k * s_count + s] = value;
                        }
                    }
                });
        }
    });
    for (t, res) in results.iter().enumerate() {
        for (k, row) in res.chunks(s_count.max(1)).enumerate() {
            for (s, &v) in row.iter().enumerate() {
                out[t * per + k + n_eval * s] = v;
            }
        }
    }
    Ok(out)
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
        let reference = vec![vec![0, 1], vec![2, 3]];
        let out = log_sample_densities(&post, &[0, 2], &reference, 2).unwrap();
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
