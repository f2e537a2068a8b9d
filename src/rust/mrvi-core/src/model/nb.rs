//! Negative-binomial log-likelihood (mean / inverse-dispersion form):
//! log NB(x; mu, theta) = lgamma(x+theta) - lgamma(theta) - lgamma(x+1)
//!                      + theta (log theta - log(theta+mu)) + x (log mu - log(theta+mu)).
//! Computed from log mu and log theta with log(theta+mu) = logaddexp, which
//! stays finite for tiny and huge means alike.

use tch::Tensor;

/// Element-wise log NB for dense x [B, G], log_mu [B, G] and log_theta [G].
pub fn log_prob_dense(x: &Tensor, log_mu: &Tensor, log_theta: &Tensor) -> Tensor {
    let theta = log_theta.exp();
    let log_theta_mu = log_theta.logaddexp(log_mu);
    let lgammas = (x + &theta).lgamma() - theta.lgamma() - (x + 1.0).lgamma();
    &theta * (log_theta - &log_theta_mu) + x * (log_mu - &log_theta_mu) + lgammas
}

/// The non-zero entries of a dense minibatch: flat positions (row * G + gene),
/// gene indices and counts. The lgamma and x-terms of the likelihood vanish at
/// zero counts, so they are evaluated at these entries only.
pub struct NonZeros {
    pub flat: Tensor,
    pub gene: Tensor,
    pub value: Tensor,
    /// sum of lgamma(x + 1) per cell: a constant of the data, kept for the exact ELBO
    pub lgamma_x1: Tensor,
}

/// Per-cell log NB summed over genes, using the sparsity of x:
/// sum_g theta_g (log theta_g - log(theta_g + mu_ng))             (all entries)
///   + sum_{x_ng > 0} [lgamma(x+theta) - lgamma(theta) - lgamma(x+1) + x (log mu - log(theta+mu))].
pub fn log_prob_sparse(nz: &NonZeros, log_mu: &Tensor, log_theta: &Tensor) -> Tensor {
    let (b, g) = log_mu.size2().expect("log_mu must be 2-d");
    let theta = log_theta.exp();
    let log_theta_mu = log_theta.logaddexp(log_mu); // [B, G]
    let dense = (&theta * (log_theta - &log_theta_mu)).sum_dim_intlist(1, false, log_mu.kind());
    let lt_mu_nz = log_theta_mu.reshape([b * g]).index_select(0, &nz.flat);
    let log_mu_nz = log_mu.reshape([b * g]).index_select(0, &nz.flat);
    let theta_nz = theta.index_select(0, &nz.gene);
    let per_entry = (&nz.value + &theta_nz).lgamma() - theta_nz.lgamma() + &nz.value * (log_mu_nz - lt_mu_nz);
    let rows = nz.flat.divide_scalar_mode(g, "floor");
    let sparse = Tensor::zeros([b], (log_mu.kind(), log_mu.device())).index_add(0, &rows, &per_entry);
    dense + sparse - &nz.lgamma_x1
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    /// Independent reference: R's dnbinom(x, size = theta, mu = mu, log = TRUE)
    /// evaluated by R 4.2.2 for the grid below.
    #[test]
    fn matches_r_dnbinom() {
        let cases: [(f64, f64, f64, f64); 8] = [
            // x, mu, theta, dnbinom(x, size=theta, mu=mu, log=TRUE)
            (0.0, 1.0, 1.0, -0.6931471805599453),
            (0.0, 5.0, 0.5, -1.198947636399185),
            (3.0, 2.5, 10.0, -1.666121704092037),
            (7.0, 0.3, 2.0, -12.45825583389776),
            (100.0, 80.0, 5.0, -4.887369514775971),
            (1000.0, 1200.0, 50.0, -6.64624771232004),
            (0.0, 1e-4, 3.0, -9.999833337036944e-05),
            (12.0, 12.0, 1e4, -2.168934348481651),
        ];
        for (x, mu, theta, want) in cases {
            let xt = Tensor::from_slice(&[x as f32]).view([1, 1]).to_kind(Kind::Double);
            let lm = Tensor::from_slice(&[mu.ln()]).view([1, 1]);
            let lt = Tensor::from_slice(&[theta.ln()]);
            let got = log_prob_dense(&xt, &lm, &lt).double_value(&[0, 0]);
            assert!((got - want).abs() < 1e-7 * want.abs().max(1.0), "x={x} mu={mu} theta={theta}: {got} vs {want}");
        }
    }

    #[test]
    fn sparse_form_equals_dense_form() {
        tch::manual_seed(3);
        let (b, g) = (6i64, 9i64);
        let x = Tensor::randint(4, [b, g], (Kind::Float, Device::Cpu)) * Tensor::randint(2, [b, g], (Kind::Float, Device::Cpu));
        let log_mu = Tensor::randn([b, g], (Kind::Float, Device::Cpu));
        let log_theta = Tensor::randn([g], (Kind::Float, Device::Cpu));
        let dense = log_prob_dense(&x, &log_mu, &log_theta).sum_dim_intlist(1, false, Kind::Float);
        let flat = x.reshape([b * g]).nonzero().view([-1]);
        let value = x.reshape([b * g]).index_select(0, &flat);
        let gene = flat.remainder(g);
        let rows = flat.divide_scalar_mode(g, "floor");
        let lgamma_x1 = Tensor::zeros([b], (Kind::Float, Device::Cpu)).index_add(0, &rows, &(&value + 1.0).lgamma());
        let nz = NonZeros { flat, gene, value, lgamma_x1 };
        let sparse = log_prob_sparse(&nz, &log_mu, &log_theta);
        let diff = (dense - sparse).abs().max().double_value(&[]);
        assert!(diff < 1e-4, "max difference {diff}");
    }
}
