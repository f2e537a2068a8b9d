//! The KL term of a training step on the host, with its gradients (the
//! attention flavour's staged step, `MrviModel::step_terms`): through libtorch
//! the one-draw KL against the mixture prior is ~25 small operations each way,
//! ~0.9 ms of a ~9 ms step on 256 cells (2 threads), for ~50,000 multiply-adds.
//!
//! Per cell, with u = mean + sd * eps (eps the draw's standard normal noise):
//! KL = log q(u) - log p(u), log q(u) = sum_d -eps_d^2 / 2 - log sd_d - log(2 pi) / 2,
//! p the mixture sum_k w_k N(u; mu_k, diag(sigma_k^2)) (labelled cells: each
//! cell's weights biased towards its label's component, +10 on that logit);
//! or, for the standard normal prior, the analytic KL. The gradients are
//! returned with respect to u and to mean and sd directly (the caller adds u's
//! other gradient and carries both through u = mean + sd * eps), and summed over
//! the cells for the prior's parameters.

/// log(2 pi) / 2
const HALF_LOG_2PI: f32 = 0.918_938_5;

/// A minibatch's KL terms and their gradients ([N, D] row-major per cell).
pub struct PriorStep {
    pub kl: Vec<f32>,
    pub d_u: Vec<f32>,
    pub d_mean: Vec<f32>,
    pub d_sd: Vec<f32>,
    /// of sum_n KL_n with respect to the mixture's logits [K], means [K, D] and
    /// log scales [K, D]
    pub d_prior: Option<[Vec<f32>; 3]>,
}

/// The analytic KL(N(mean, sd^2) || N(0, 1)) per cell.
pub fn normal(mean: &[f32], sd: &[f32], d: usize) -> PriorStep {
    let kl = mean
        .chunks_exact(d)
        .zip(sd.chunks_exact(d))
        .map(|(m, s)| m.iter().zip(s).map(|(&m, &s)| (m * m + s * s - 1.0) * 0.5 - s.ln()).sum())
        .collect();
    PriorStep {
        kl,
        d_u: vec![0.0; mean.len()],
        d_mean: mean.to_vec(),
        d_sd: sd.iter().map(|&s| s - 1.0 / s).collect(),
        d_prior: None,
    }
}

/// Cells per work item of [mixture] (and per partial sum of the prior's gradients).
const ROWS_PER_ITEM: usize = 32;

/// The one-draw KL against the mixture prior per cell. `logits` [K], `means`
/// and `log_scales` [K, D]; `labels`: each cell's label (its component), or None.
/// Cells go to libtorch's threads in fixed groups whose prior gradients are
/// added in group order: the same bits with any number of threads.
#[allow(clippy::too_many_arguments)]
pub fn mixture(mean: &[f32], sd: &[f32], eps: &[f32], d: usize, logits: &[f32], labels: Option<&[i64]>, means: &[f32], log_scales: &[f32]) -> PriorStep {
    let (n, k) = (mean.len() / d, logits.len());
    let inv_scales: Vec<f32> = log_scales.iter().map(|&l| (-l).exp()).collect();
    // each component's normalising constant, sum_d -log sigma_kd - log(2 pi) / 2
    let norms: Vec<f32> = log_scales.chunks_exact(d).map(|l| l.iter().map(|&l| -l - HALF_LOG_2PI).sum()).collect();
    let mut step = PriorStep { kl: vec![0.0; n], d_u: vec![0.0; n * d], d_mean: vec![0.0; n * d], d_sd: vec![0.0; n * d], d_prior: None };
    struct Item<'a> {
        first: usize,
        kl: &'a mut [f32],
        d_u: &'a mut [f32],
        d_mean: &'a mut [f32],
        d_sd: &'a mut [f32],
        d_prior: [Vec<f32>; 3],
    }
    let mut items: Vec<Item> = step
        .kl
        .chunks_mut(ROWS_PER_ITEM)
        .zip(step.d_u.chunks_mut(ROWS_PER_ITEM * d))
        .zip(step.d_mean.chunks_mut(ROWS_PER_ITEM * d))
        .zip(step.d_sd.chunks_mut(ROWS_PER_ITEM * d))
        .enumerate()
        .map(|(i, (((kl, d_u), d_mean), d_sd))| Item { first: i * ROWS_PER_ITEM, kl, d_u, d_mean, d_sd, d_prior: [vec![0.0; k], vec![0.0; k * d], vec![0.0; k * d]] })
        .collect();
    crate::openmp::for_each_mut(&mut items, |item| {
        let [d_logits, d_means, d_log_scales] = &mut item.d_prior;
        let (mut u, mut log_w, mut a) = (vec![0f32; d], vec![0f32; k], vec![0f32; k]);
        for (r, kl) in item.kl.iter_mut().enumerate() {
            let row = item.first + r;
            let (m, s, e) = (&mean[row * d..(row + 1) * d], &sd[row * d..(row + 1) * d], &eps[row * d..(row + 1) * d]);
            let mut log_q = 0f32;
            for j in 0..d {
                u[j] = m[j] + s[j] * e[j];
                log_q += -e[j] * e[j] * 0.5 - s[j].ln() - HALF_LOG_2PI;
            }
            // the cell's log weights: log_softmax of the (label-biased) logits
            log_w.copy_from_slice(logits);
            if let Some(labels) = labels {
                log_w[labels[row] as usize] += 10.0;
            }
            let top = log_w.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
            let log_total = top + log_w.iter().map(|&l| (l - top).exp()).sum::<f32>().ln();
            log_w.iter_mut().for_each(|l| *l -= log_total);
            // log p(u) = logsumexp_k (log w_k + log N(u; mu_k, sigma_k))
            for c in 0..k {
                let (mu, inv) = (&means[c * d..(c + 1) * d], &inv_scales[c * d..(c + 1) * d]);
                let quad: f32 = (0..d).map(|j| ((u[j] - mu[j]) * inv[j]).powi(2)).sum();
                a[c] = log_w[c] + norms[c] - 0.5 * quad;
            }
            let top = a.iter().fold(f32::NEG_INFINITY, |x, &y| x.max(y));
            let log_p = top + a.iter().map(|&v| (v - top).exp()).sum::<f32>().ln();
            *kl = log_q - log_p;
            // gradients: responsibilities r_k = exp(a_k - log p)
            let cells = r * d..(r + 1) * d;
            let (d_u, d_mean, d_sd) = (&mut item.d_u[cells.clone()], &mut item.d_mean[cells.clone()], &mut item.d_sd[cells]);
            for j in 0..d {
                d_mean[j] = e[j] / s[j];
                d_sd[j] = (e[j] * e[j] - 1.0) / s[j];
                d_u[j] = -e[j] / s[j];
            }
            for c in 0..k {
                let resp = (a[c] - log_p).exp();
                d_logits[c] += log_w[c].exp() - resp;
                for j in 0..d {
                    let i = c * d + j;
                    let z = (u[j] - means[i]) * inv_scales[i];
                    d_u[j] += resp * z * inv_scales[i];
                    d_means[i] -= resp * z * inv_scales[i];
                    d_log_scales[i] -= resp * (z * z - 1.0);
                }
            }
        }
    });
    let mut d_prior = [vec![0f32; k], vec![0f32; k * d], vec![0f32; k * d]];
    for item in &items {
        for (total, part) in d_prior.iter_mut().zip(&item.d_prior) {
            total.iter_mut().zip(part).for_each(|(t, p)| *t += p);
        }
    }
    drop(items);
    step.d_prior = Some(d_prior);
    step
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::attention::mixture_log_density;
    use crate::model::host_floats as floats;
    use tch::{Device, Kind, Tensor};

    fn close(name: &str, got: &[f32], want: &Tensor) {
        let want = floats(want);
        let scale = want.iter().fold(1e-3f32, |a, b| a.max(b.abs()));
        let dev = got.iter().zip(&want).fold(0f32, |a, (g, w)| a.max((g - w).abs()));
        assert!(dev <= 2e-5 * scale, "{name}: host and autograd differ by {dev} (scale {scale})");
    }

    /// Values and every gradient against libtorch's autograd of the model's own
    /// formulas (`MrviModel::kl`): the mixture with and without labels, and the
    /// standard normal.
    #[test]
    fn host_kl_matches_autograd() {
        tch::manual_seed(11);
        let (n, d, k) = (40i64, 6i64, 5i64);
        let o = (Kind::Float, Device::Cpu);
        let mean = Tensor::randn([n, d], o).set_requires_grad(true);
        let sd = (Tensor::rand([n, d], o) + 0.2).set_requires_grad(true);
        let noise = Tensor::randn([n, d], o);
        let logits = Tensor::randn([k], o).set_requires_grad(true);
        let means = Tensor::randn([k, d], o).set_requires_grad(true);
        let log_scales = (Tensor::randn([k, d], o) * 0.3).set_requires_grad(true);
        let labels = Tensor::randint(k, [n], (Kind::Int64, Device::Cpu));
        let host_labels = Vec::<i64>::try_from(&labels).unwrap();
        let leaves = [&mean, &sd, &logits, &means, &log_scales];
        for labelled in [false, true] {
            for t in leaves {
                let mut g = t.grad();
                if g.defined() {
                    let _ = g.zero_();
                }
            }
            let u = &mean + &sd * &noise;
            let log_q = (-((&u - &mean) / &sd).square() * 0.5 - sd.log() - 0.5 * (2.0 * std::f64::consts::PI).ln()).sum_dim_intlist(1, false, Kind::Float);
            let weights = if labelled { logits.unsqueeze(0) + labels.one_hot(k).to_kind(Kind::Float) * 10.0 } else { logits.shallow_clone() };
            let kl = log_q - mixture_log_density(&u, &weights, &means, &log_scales);
            kl.sum(Kind::Float).backward();
            let step = mixture(&floats(&mean), &floats(&sd), &floats(&noise), d as usize, &floats(&logits), labelled.then_some(host_labels.as_slice()), &floats(&means), &floats(&log_scales));
            close("kl", &step.kl, &kl);
            // through u = mean + sd * noise, as the caller takes it
            let noise = floats(&noise);
            let d_mean: Vec<f32> = step.d_mean.iter().zip(&step.d_u).map(|(a, b)| a + b).collect();
            let d_sd: Vec<f32> = step.d_sd.iter().zip(&step.d_u).zip(&noise).map(|((a, b), e)| a + b * e).collect();
            close("mean", &d_mean, &mean.grad());
            close("sd", &d_sd, &sd.grad());
            let [d_logits, d_means, d_log_scales] = step.d_prior.as_ref().unwrap();
            close("logits", d_logits, &logits.grad());
            close("means", d_means, &means.grad());
            close("log scales", d_log_scales, &log_scales.grad());
        }
        let _ = mean.grad().zero_();
        let _ = sd.grad().zero_();
        let kl = ((mean.square() + sd.square() - 1.0) * 0.5 - sd.log()).sum_dim_intlist(1, false, Kind::Float);
        kl.sum(Kind::Float).backward();
        let step = normal(&floats(&mean), &floats(&sd), d as usize);
        close("normal kl", &step.kl, &kl);
        close("normal mean", &step.d_mean, &mean.grad());
        close("normal sd", &step.d_sd, &sd.grad());
    }
}
