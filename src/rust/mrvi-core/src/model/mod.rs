//! The MrVI model, flavour "linear" (the paper's; MODEL.md §1–2):
//!   u ~ N(0, I_L)
//!   z = u + A_s sg(u) + a_s
//!   rho = softmax(C z + C_b drop(sg(z)) + c_b)
//!   x_g ~ NB(mean = l rho_g, inverse dispersion theta_g = exp(phi_g))
//! sg = stop-gradient, drop = dropout (training only).
//!
//! Initialisation: A_s = 0 (z starts at u + a_s), a_s ~ N(0, 0.01²),
//! C_b ~ N(0, 0.01²), c_b = 0, phi = 0 (theta = 1); linear layers use tch's
//! default (Kaiming-uniform) initialisation.

pub mod config;
pub mod encoder;
pub mod nb;

use crate::error::Result;
use config::ModelConfig;
use encoder::{Encoder, Posterior};
use nb::NonZeros;
use tch::nn;
use tch::{Device, Kind, Tensor};

pub struct MrviModel {
    pub config: ModelConfig,
    pub vs: nn::VarStore,
    encoder: Encoder,
    /// A_s: [S, L, L]
    sample_map: Tensor,
    /// a_s: [S, L]
    sample_shift: Tensor,
    /// C: z -> genes, no bias
    decoder: nn::Linear,
    /// C_b: [B, G, L]
    site_map: Tensor,
    /// c_b: [B, G]
    site_bias: Tensor,
    /// phi: [G], theta = exp(phi)
    log_theta: Tensor,
}

/// A minibatch on the model's device.
pub struct Batch {
    /// log1p(x) [B, G]
    pub log_counts: Tensor,
    /// log library size [B, 1]
    pub log_library: Tensor,
    pub sample: Tensor,
    pub site: Tensor,
    pub nonzeros: NonZeros,
}

/// Per-cell terms of the ELBO for one minibatch.
pub struct Losses {
    /// -log p(x | z, b), per cell
    pub reconstruction: Tensor,
    /// KL(q(u|x,s) || p(u)), per cell
    pub kl: Tensor,
}

impl MrviModel {
    pub fn new(config: ModelConfig, device: Device) -> Self {
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let (g, s, b, l) = (config.n_genes, config.n_samples, config.n_batches, config.n_latent);
        let small = nn::Init::Randn { mean: 0.0, stdev: 0.01 };
        let encoder = Encoder::new(&root / "encoder", g, config.n_hidden, s, l);
        let sample_map = (&root / "sample_effect").var("A", &[s, l, l], nn::Init::Const(0.0));
        let sample_shift = (&root / "sample_effect").var("a", &[s, l], small);
        let no_bias = nn::LinearConfig { bias: false, ..Default::default() };
        let decoder = nn::linear(&root / "decoder" / "C", l, g, no_bias);
        let site_map = (&root / "decoder").var("C_b", &[b, g, l], small);
        let site_bias = (&root / "decoder").var("c_b", &[b, g], nn::Init::Const(0.0));
        let log_theta = (&root / "decoder").var("log_theta", &[g], nn::Init::Const(0.0));
        Self { config, vs, encoder, sample_map, sample_shift, decoder, site_map, site_bias, log_theta }
    }

    pub fn device(&self) -> Device {
        self.vs.device()
    }

    pub fn encode(&self, log_counts: &Tensor, sample: &Tensor) -> Posterior {
        self.encoder.forward(log_counts, sample)
    }

    /// z = u + A_s sg(u) + a_s for every cell's own (or any chosen) sample.
    pub fn z_from_u(&self, u: &Tensor, sample: &Tensor) -> Tensor {
        let a = self.sample_map.index_select(0, sample); // [B, L, L]
        let au = a.bmm(&u.detach().unsqueeze(2)).squeeze_dim(2);
        u + au + self.sample_shift.index_select(0, sample)
    }

    /// z for every sample s' at once: [B, S, L], for counterfactuals.
    pub fn z_all_samples(&self, u: &Tensor) -> Tensor {
        // A: [S, L, L]; u: [B, L] -> A u: [B, S, L]
        let au = u.matmul(&self.sample_map.transpose(1, 2)).permute([1, 0, 2]); // [B, S, L]
        u.unsqueeze(1) + au + self.sample_shift.unsqueeze(0)
    }

    /// Decoder logits C z + C_b drop(sg(z)) + c_b as one matrix product: the input
    /// [z, one-hot(b) ⊗ drop(sg(z)), one-hot(b)] against [C, C_1..C_B, c_1..c_B].
    pub fn decode_logits(&self, z: &Tensor, site: &Tensor, train: bool) -> Tensor {
        let b = self.config.n_batches;
        let (l, g) = (self.config.n_latent, self.config.n_genes);
        let onehot = site.one_hot(b).to_kind(z.kind()); // [N, B]
        let zd = z.detach().dropout(self.config.dropout_rate, train); // [N, L]
        let site_in = (onehot.unsqueeze(2) * zd.unsqueeze(1)).reshape([-1, b * l]); // [N, B*L]
        let input = Tensor::cat(&[z.shallow_clone(), site_in, onehot], 1);
        // weight: [G, L + B*L + B]
        let site_w = self.site_map.permute([1, 0, 2]).reshape([g, b * l]);
        let weight = Tensor::cat(&[self.decoder.ws.shallow_clone(), site_w, self.site_bias.tr()], 1);
        input.matmul(&weight.tr())
    }

    pub fn log_theta(&self) -> &Tensor {
        &self.log_theta
    }

    /// Per-cell reconstruction loss and KL for a minibatch (one draw of u).
    pub fn losses(&self, batch: &Batch, train: bool) -> Losses {
        let q = self.encode(&batch.log_counts, &batch.sample);
        let u = q.rsample();
        let z = self.z_from_u(&u, &batch.sample);
        let logits = self.decode_logits(&z, &batch.site, train);
        let log_mu = logits.log_softmax(1, logits.kind()) + &batch.log_library;
        let ll = nb::log_prob_sparse(&batch.nonzeros, &log_mu, &self.log_theta);
        Losses { reconstruction: -ll, kl: q.kl_standard_normal() }
    }

    /// Expected normalised expression rho for latent z and sites: softmax(logits).
    pub fn expression(&self, z: &Tensor, site: &Tensor) -> Tensor {
        self.decode_logits(z, site, false).softmax(1, Kind::Float)
    }

    pub fn check_compatible(&self, n_genes: usize) -> Result<()> {
        if n_genes as i64 != self.config.n_genes {
            crate::invalid!("the data have {n_genes} genes but the model was fitted on {}", self.config.n_genes);
        }
        Ok(())
    }
}
