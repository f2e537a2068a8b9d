//! q(u | x, s): log1p(counts) -> two hidden layers, each followed by a
//! sample-conditional normalisation (LayerNorm without affine parameters, then a
//! per-sample scale and shift) and ReLU; a learned sample embedding is added
//! before the mean and scale heads. The encoder sees the sample, never the site.

use tch::nn::{self, Module};
use tch::Tensor;

pub struct Encoder {
    pub(crate) lin1: nn::Linear,
    pub(crate) lin2: nn::Linear,
    pub(crate) scale1: Tensor,
    pub(crate) shift1: Tensor,
    pub(crate) scale2: Tensor,
    pub(crate) shift2: Tensor,
    pub(crate) sample_embedding: Tensor,
    pub(crate) mean: nn::Linear,
    pub(crate) scale: nn::Linear,
    pub(crate) n_hidden: i64,
}

pub struct Posterior {
    pub mean: Tensor,
    pub sd: Tensor,
}

impl Encoder {
    pub fn new(p: nn::Path, n_genes: i64, n_hidden: i64, n_samples: i64, n_latent: i64) -> Self {
        let ones = nn::Init::Const(1.0);
        let zeros = nn::Init::Const(0.0);
        Self {
            lin1: nn::linear(&p / "lin1", n_genes, n_hidden, Default::default()),
            lin2: nn::linear(&p / "lin2", n_hidden, n_hidden, Default::default()),
            scale1: p.var("scale1", &[n_samples, n_hidden], ones),
            shift1: p.var("shift1", &[n_samples, n_hidden], zeros),
            scale2: p.var("scale2", &[n_samples, n_hidden], ones),
            shift2: p.var("shift2", &[n_samples, n_hidden], zeros),
            sample_embedding: p.var("sample_embedding", &[n_samples, n_hidden], nn::Init::Randn { mean: 0.0, stdev: 0.1 }),
            mean: nn::linear(&p / "mean", n_hidden, n_latent, Default::default()),
            scale: nn::linear(&p / "scale", n_hidden, n_latent, Default::default()),
            n_hidden,
        }
    }

    fn cond_norm(&self, h: &Tensor, scale: &Tensor, shift: &Tensor, sample: &Tensor) -> Tensor {
        let normed = h.layer_norm([self.n_hidden], None::<Tensor>, None::<Tensor>, 1e-5, false);
        normed * scale.index_select(0, sample) + shift.index_select(0, sample)
    }

    /// `log_counts`: log1p(x) [B, G]; `sample`: codes [B] (int64).
    pub fn forward(&self, log_counts: &Tensor, sample: &Tensor) -> Posterior {
        let h = self.cond_norm(&super::products::linear(log_counts, &self.lin1.ws, self.lin1.bs.as_ref()), &self.scale1, &self.shift1, sample).relu();
        let h = self.cond_norm(&self.lin2.forward(&h), &self.scale2, &self.shift2, sample).relu();
        let h = h + self.sample_embedding.index_select(0, sample);
        let mean = self.mean.forward(&h);
        let sd = self.scale.forward(&h).softplus() + 1e-5;
        Posterior { mean, sd }
    }
}

impl Posterior {
    /// The reparameterised draw u = mean + sd * noise for standard normal
    /// `noise` ([super::Draws]).
    pub fn sample_with(&self, noise: &Tensor) -> Tensor {
        &self.mean + &self.sd * noise
    }

    /// KL(q || N(0, I)) per cell, summed over dimensions.
    pub fn kl_standard_normal(&self) -> Tensor {
        let var = self.sd.square();
        ((self.mean.square() + &var - 1.0) * 0.5 - self.sd.log()).sum_dim_intlist(1, false, self.mean.kind())
    }
}
