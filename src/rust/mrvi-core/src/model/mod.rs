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
//!
//! Several nuisance covariates enter the decoder only, never z. Categorical
//! ones: the levels of all of them share one table of site parameters (C_b,
//! c_b, or the attention flavour's site embeddings), and a cell uses the sum of
//! its levels' entries (one level per covariate). Continuous ones (standardised)
//! act like a site scaled by the value: x_j (D_j drop(sg(z)) + d_j) in the linear
//! flavour; in the attention flavour x_j e_j is added to the site embedding and
//! x_j d_j to the logits (a technical covariate such as the mitochondrial
//! fraction moves genes log-linearly, which the attention block alone learns
//! slowly) (D_j, d_j, e_j start at N(0, 0.01²), 0 and N(0, 0.01²)). With one categorical
//! covariate and no continuous one this is the model above, parameter for
//! parameter.

pub mod config;
pub mod encoder;
mod encoder_step;
pub mod host_gradients;
pub mod expression_metric;
pub mod attention;
pub mod attention_step;
pub mod prior_step;
pub mod products;
pub mod nb;
pub mod output_layer;
mod staged;
pub mod tilted_mean;

use crate::error::Result;
use attention::AttentionBlock;
use config::{Flavour, ModelConfig, Prior};
use encoder::{Encoder, Posterior};
use nb::NonZeros;
use output_layer::{OutputLayer, WeightBlock};
use tch::nn::{self, Module};
use rayon::prelude::*;
use std::sync::OnceLock;
use tch::{Device, Kind, Tensor};

pub struct MrviModel {
    pub config: ModelConfig,
    pub vs: nn::VarStore,
    encoder: Encoder,
    sample_effect: SampleEffect,
    decoder: Decoder,
    prior: PriorParams,
    /// phi: [G], theta = exp(phi)
    log_theta: Tensor,
    /// continuous nuisance covariates; None without any
    continuous: Option<ContinuousEffect>,
    /// the attention flavour's sample effect on the host, built when first
    /// needed and kept: its tilted-mean table (at most 64 MB) fills as cells
    /// read it, and every later call (one per cell group or chunk) reads it
    /// again. Only inference reads it, on models made from saved weights,
    /// whose parameters do not change; training forgets it
    /// ([Self::forget_host_cache]).
    host_attention: OnceLock<HostAttentionParts>,
}

/// The parts of [HostKind::Attention] built from the parameters.
struct HostAttentionParts {
    /// W: [L, L_u] row-major, and c
    base: Vec<f32>,
    base_bias: Vec<f32>,
    block: attention::HostAttention,
    /// every sample's embedding, [S, TOKENS]
    embeddings: attention::Contexts,
}

/// The decoder's terms for continuous nuisance covariates.
enum ContinuousEffect {
    /// x_j (D_j drop(sg(z)) + d_j); D: [C, G, L], d: [C, G]
    Linear { map: Tensor, bias: Tensor },
    /// x_j e_j added to the site embedding, x_j d_j to the logits; e: [C, TOKENS], d: [C, G]
    Attention { embedding: Tensor, bias: Tensor },
}

/// The parameters with one row per sample: the encoder's conditioning and
/// sample embedding, and the sample effect. `MrviModel::with_new_samples`
/// learns new rows of these and nothing else.
const SAMPLE_PARAMETERS: [&str; 9] = [
    "encoder.scale1",
    "encoder.shift1",
    "encoder.scale2",
    "encoder.shift2",
    "encoder.sample_embedding",
    "sample_effect.A",
    "sample_effect.a",
    "sample_effect.embedding",
    "sample_effect.hidden_term",
];

/// z from u and a sample.
enum SampleEffect {
    /// z = u + A_s sg(u) + a_s; A: [S, L, L], a: [S, L]
    Linear { map: Tensor, shift: Tensor },
    /// z = W u + c + eps, eps = attention(u, e_s), penalised by ||eps||^2 / 2;
    /// `hidden_term` [S, HIDDEN]: each sample's free term in the block's hidden
    /// layer ([ModelConfig::sample_hidden_term])
    Attention { base: nn::Linear, block: AttentionBlock, embedding: Tensor, hidden_term: Option<Tensor> },
}

/// Logits over genes from z and a site.
enum Decoder {
    /// C z + C_b drop(sg(z)) + c_b; C: Linear(L, G), C_b: [B, G, L], c_b: [B, G]
    Linear { c: nn::Linear, site_map: Tensor, site_bias: Tensor },
    /// Linear(z + attention(z, e_b))
    Attention { out: nn::Linear, block: AttentionBlock, embedding: Tensor },
}

enum PriorParams {
    Normal,
    /// weights (logits [K]), means [K, L_u], log scales [K, L_u]: over whole vectors
    Mog { logits: Tensor, means: Tensor, log_scales: Tensor },
}

/// The data of a contiguous CPU float tensor, without a copy.
/// SAFETY: the tensor must be contiguous, on the CPU, of kind Float, and outlive the slice.
pub(crate) unsafe fn cpu_floats(t: &Tensor) -> &[f32] {
    assert!(t.device() == Device::Cpu && t.kind() == Kind::Float && t.is_contiguous());
    std::slice::from_raw_parts(t.data_ptr() as *const f32, t.numel())
}

/// A tensor's values as host floats, row-major (a copy).
pub(crate) fn host_floats(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(&t.detach().to_device(Device::Cpu).to_kind(Kind::Float).contiguous().view([-1])).expect("a float tensor")
}

/// Whether autograd records operations on this thread (grad mode is per
/// thread: off in evaluation). tch does not expose libtorch's flag; an
/// operation on a leaf shows it.
pub(crate) fn grad_enabled() -> bool {
    let leaf = Tensor::zeros([], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    (&leaf + 0.0).requires_grad()
}

/// Mutable counterpart of `cpu_floats`, under the same conditions.
pub(crate) unsafe fn cpu_floats_mut(t: &mut Tensor) -> &mut [f32] {
    assert!(t.device() == Device::Cpu && t.kind() == Kind::Float && t.is_contiguous());
    std::slice::from_raw_parts_mut(t.data_ptr() as *mut f32, t.numel())
}

/// (cell, sample) rows of one libtorch evaluation of the attention flavour's
/// counterfactual z on the host (~50 MB of intermediates).
const MODEL_ROWS: usize = 8192;

/// Where sample distances are measured: between the counterfactual z (the
/// paper's) or between the decoded expression profiles (Aitchison distance in
/// log2; see [expression_metric]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Space {
    Latent,
    Expression,
}

/// Counterfactual z of one cell under every sample, on the host (in
/// expression space: its coordinates there, of the same dimension).
pub struct HostSampleEffect<'a> {
    pub n_samples: usize,
    /// dimension of z
    pub n_latent: usize,
    /// dimension of u
    pub n_latent_u: usize,
    kind: HostKind<'a>,
    metric: Option<expression_metric::ExpressionMetric>,
}

enum HostKind<'a> {
    /// A: [S, L, L] row-major, a: [S, L]
    Linear { map: Vec<f32>, shift: Vec<f32> },
    /// the attention flavour on the CPU: W u + c + the block in closed form
    /// against every sample's embedding
    Attention(&'a HostAttentionParts),
    /// the attention flavour on a GPU: libtorch, blocks of (cell, sample) rows
    Model(&'a MrviModel),
}

impl HostSampleEffect<'_> {
    /// z of a block of cells under every sample. `us`: [cells, L_u] row-major;
    /// `out`: [cells, S, L] or [cells, L, S] row-major, as `layout` says. The
    /// attention flavour on the CPU evaluates the block in closed form, cells
    /// over the core's pool (~0.16 against ~1.8 µs per (cell, sample) pair for
    /// libtorch on one AMD EPYC core); a GPU model runs libtorch, one call per
    /// block (one call per cell made per-cell analyses ~50x slower).
    pub fn z_block(&self, us: &[f32], out: &mut [f32], layout: ZLayout) {
        let (s, l, lu) = (self.n_samples, self.n_latent, self.n_latent_u);
        // index of (sample, dimension) within a cell's z
        let at = |smp: usize, i: usize| match layout {
            ZLayout::BySample => smp * l + i,
            ZLayout::ByDimension => i * s + smp,
        };
        match &self.kind {
            HostKind::Linear { map, shift } => {
                for (u, out) in us.chunks(lu).zip(out.chunks_mut(s * l)) {
                    for smp in 0..s {
                        let a = &map[smp * l * l..(smp + 1) * l * l];
                        for i in 0..l {
                            let row = &a[i * l..(i + 1) * l];
                            let au: f32 = row.iter().zip(u).map(|(x, y)| x * y).sum();
                            out[at(smp, i)] = u[i] + au + shift[smp * l + i];
                        }
                    }
                }
            }
            HostKind::Attention(HostAttentionParts { base, base_bias, block, embeddings }) => {
                // the block's output comes by dimension ([L, S]); z adds the
                // sample-free W u + c to every sample
                let one = |(scratch, by_dim): &mut (attention::ForwardScratch, Vec<f32>), (u, out): (&[f32], &mut [f32])| {
                    let target: &mut [f32] = match layout {
                        ZLayout::ByDimension => &mut *out,
                        ZLayout::BySample => {
                            by_dim.resize(s * l, 0.0);
                            by_dim
                        }
                    };
                    block.forward(u, embeddings, target, scratch);
                    for (i, row) in target.chunks_exact_mut(s).enumerate() {
                        let shared = base[i * lu..(i + 1) * lu].iter().zip(u).map(|(w, x)| w * x).sum::<f32>() + base_bias[i];
                        row.iter_mut().for_each(|z| *z += shared);
                    }
                    if layout == ZLayout::BySample {
                        for (i, row) in by_dim.chunks_exact(s).enumerate() {
                            for (smp, &z) in row.iter().enumerate() {
                                out[smp * l + i] = z;
                            }
                        }
                    }
                };
                // cells over the core's pool; each cell's arithmetic is its own
                let scratch = || (attention::ForwardScratch::default(), Vec::new());
                match crate::backend::pool() {
                    Ok(pool) => pool.install(|| us.par_chunks(lu).zip(out.par_chunks_mut(s * l)).for_each_init(scratch, one)),
                    Err(_) => {
                        let mut scratch = scratch();
                        us.chunks(lu).zip(out.chunks_mut(s * l)).for_each(|cell| one(&mut scratch, cell))
                    }
                }
            }
            HostKind::Model(model) => {
                // at most MODEL_ROWS (cell, sample) rows per call: the attention's
                // intermediates take ~6 kB per row (400 MB for a block of 69 cells
                // x 1,000 samples); each row's z is computed alone, so the split
                // does not change it
                let cells_per_call = (MODEL_ROWS / s.max(1)).max(1);
                for (us, out) in us.chunks(cells_per_call * lu).zip(out.chunks_mut(cells_per_call * s * l)) {
                    let n = (us.len() / lu) as i64;
                    let ut = Tensor::from_slice(us).view([n, lu as i64]).to_device(model.device());
                    let mut z = tch::no_grad(|| model.z_all_samples(&ut)).to_device(Device::Cpu).to_kind(Kind::Float); // [n, S, L]
                    if layout == ZLayout::ByDimension {
                        z = z.transpose(1, 2);
                    }
                    let len = out.len();
                    z.contiguous().copy_data(out, len);
                }
            }
        }
        if let Some(metric) = &self.metric {
            let by_dimension = layout == ZLayout::ByDimension;
            let one = |scratch: &mut expression_metric::MetricScratch, cell: &mut [f32]| metric.transform(cell, s, by_dimension, scratch);
            match crate::backend::pool() {
                Ok(pool) => pool.install(|| out.par_chunks_mut(s * l).for_each_init(expression_metric::MetricScratch::default, one)),
                Err(_) => {
                    let mut scratch = expression_metric::MetricScratch::default();
                    out.chunks_mut(s * l).for_each(|cell| one(&mut scratch, cell))
                }
            }
        }
    }
}

/// How [HostSampleEffect::z_block] lays out each cell's z.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ZLayout {
    /// [S, L]: sample by sample
    BySample,
    /// [L, S]: dimension by dimension, as the block's output comes and as the
    /// distance kernel reads it
    ByDimension,
}

/// A minibatch on the model's device.
pub struct Batch {
    /// log1p(x) [B, G]
    pub log_counts: Tensor,
    /// log library size [B, 1]
    pub log_library: Tensor,
    pub sample: Tensor,
    /// site codes [B, K], one per categorical nuisance covariate
    pub site: Tensor,
    /// continuous nuisance covariates [B, C], when the model has any
    pub continuous: Option<Tensor>,
    /// label codes, when labels bias the mixture prior
    pub label: Option<Tensor>,
    /// non-zero structure for the tensor likelihood (absent when the fused CPU
    /// likelihood is used)
    pub nonzeros: Option<NonZeros>,
    /// the same minibatch in host memory, for the fused CPU likelihood
    pub host: Option<HostCopy>,
}

/// Host-side copy of a minibatch for the fused likelihood: its non-zeros row by
/// row, log library sizes and sum_g lgamma(x + 1) per cell.
pub struct HostCopy {
    pub nz_ptr: Vec<usize>,
    pub nz_gene: Vec<u32>,
    pub nz_count: Vec<f32>,
    pub log_library: Vec<f32>,
    pub lgamma_x1: Vec<f32>,
}

/// What one optimisation step needs: the way to the gradient of the loss (sum
/// over cells of -log p + kl_weight * KL, divided by the batch size), and the
/// sums of the two terms for reporting.
pub struct StepTerms<'a> {
    pub reconstruction_sum: f64,
    pub kl_sum: f64,
    gradient: Gradient<'a>,
}

/// How a pass's gradient is taken.
enum Gradient<'a> {
    /// autograd's backward from this objective (the tensor likelihood)
    Autograd(Tensor),
    /// in closed form on the host
    Host(HostPass<'a>),
    /// none (evaluation)
    None,
}

/// A pass with its middle and the encoder on the host ([staged],
/// [encoder_step]), and the KL terms' factor (kl_weight / batch size).
struct HostPass<'a> {
    model: &'a MrviModel,
    staged: staged::Staged,
    encoder: encoder_step::EncoderTape,
    kl_scale: f64,
    /// gradients already made on the host (the output layer's and log theta's:
    /// [OutputLayer::host_gradients]), and the objective's gradient with respect
    /// to the layer's traced input
    sink: host_gradients::HostGradients,
    d_traced: Tensor,
}

impl StepTerms<'_> {
    /// Adds the step's gradients to the parameters' .grad.
    pub fn backward(self) -> std::result::Result<(), tch::TchError> {
        let host = match self.gradient {
            Gradient::Autograd(objective) => return objective.f_backward(),
            Gradient::Host(host) => host,
            Gradient::None => return Ok(()),
        };
        let mut sink = host.sink;
        let (d_mean, d_sd) = host.staged.backward(host.model, host.kl_scale, host.d_traced, &mut sink);
        host.encoder.backward(&host.model.encoder, &d_mean, &d_sd, &mut sink);
        match sink.into_surrogate() {
            Some(surrogate) => surrogate.f_backward(),
            None => Ok(()),
        }
    }
}

/// The random numbers of one pass over a minibatch: the posterior's standard
/// normal noise [B, dim_u] and, for the linear flavour in training, the scaled
/// dropout keep-mask on sg(z) [B, L]. Drawn before the pass, so that a
/// minibatch split into shards on several threads ([crate::train]) uses the
/// numbers it would have used in one piece.
pub struct Draws {
    pub noise: Tensor,
    pub dropout: Option<Tensor>,
}

impl Draws {
    /// The draws of cells `start..start + len` of the minibatch.
    pub fn rows(&self, start: i64, len: i64) -> Draws {
        Draws { noise: self.noise.narrow(0, start, len), dropout: self.dropout.as_ref().map(|m| m.narrow(0, start, len)) }
    }
}

/// Per-cell terms of the ELBO for one minibatch.
pub struct Losses {
    /// -log p(x | z, b), per cell
    pub reconstruction: Tensor,
    /// KL(q(u|x,s) || p(u)) per cell, plus the attention flavour's ||eps||^2 / 2
    pub kl: Tensor,
}

impl MrviModel {
    pub fn new(config: ModelConfig, device: Device) -> Self {
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let (g, s, b, l) = (config.n_genes, config.n_samples, config.n_batches, config.n_latent);
        let lu = config.dim_u();
        let small = nn::Init::Randn { mean: 0.0, stdev: 0.01 };
        let encoder = Encoder::new(&root / "encoder", g, config.n_hidden, s, lu);
        let (mut sample_effect, mut decoder) = match config.flavour {
            Flavour::Linear => {
                let no_bias = nn::LinearConfig { bias: false, ..Default::default() };
                (
                    SampleEffect::Linear {
                        map: (&root / "sample_effect").var("A", &[s, l, l], nn::Init::Const(0.0)),
                        shift: (&root / "sample_effect").var("a", &[s, l], small),
                    },
                    Decoder::Linear {
                        c: nn::linear(&root / "decoder" / "C", l, g, no_bias),
                        site_map: (&root / "decoder").var("C_b", &[b, g, l], small),
                        site_bias: (&root / "decoder").var("c_b", &[b, g], nn::Init::Const(0.0)),
                    },
                )
            }
            Flavour::Attention => {
                let emb = nn::Init::Randn { mean: 0.0, stdev: 1.0 };
                (
                    SampleEffect::Attention {
                        base: nn::linear(&root / "sample_effect" / "base", lu, l, Default::default()),
                        block: AttentionBlock::new(&root / "sample_effect" / "attention", lu, l),
                        embedding: (&root / "sample_effect").var("embedding", &[s, attention::TOKENS], emb),
                        hidden_term: None,
                    },
                    Decoder::Attention {
                        out: nn::linear(&root / "decoder" / "out", l, g, Default::default()),
                        block: AttentionBlock::new(&root / "decoder" / "attention", l, l),
                        embedding: (&root / "decoder").var("site_embedding", &[b, attention::TOKENS], emb),
                    },
                )
            }
        };
        let prior = match config.prior {
            Prior::Normal => PriorParams::Normal,
            Prior::Mog => {
                let k = config.n_components();
                PriorParams::Mog {
                    logits: (&root / "prior").var("logits", &[k], nn::Init::Const(0.0)),
                    means: (&root / "prior").var("means", &[k, lu], nn::Init::Randn { mean: 0.0, stdev: 1.0 }),
                    log_scales: (&root / "prior").var("log_scales", &[k, lu], nn::Init::Const(0.0)),
                }
            }
        };
        let log_theta = (&root / "decoder").var("log_theta", &[g], nn::Init::Const(0.0));
        // created last, so that a model without them draws the same initial weights
        let nc = config.n_continuous;
        let continuous = (nc > 0).then(|| {
            let p = &root / "decoder";
            match config.flavour {
                Flavour::Linear => ContinuousEffect::Linear {
                    map: p.var("D_x", &[nc, g, l], small),
                    bias: p.var("d_x", &[nc, g], nn::Init::Const(0.0)),
                },
                Flavour::Attention => ContinuousEffect::Attention {
                    embedding: p.var("continuous_embedding", &[nc, attention::TOKENS], small),
                    bias: p.var("d_x", &[nc, g], nn::Init::Const(0.0)),
                },
            }
        });
        // the direct paths of the sample embedding into the sample-effect block
        // and of the nuisance embedding into the decoder's, and the samples' free
        // hidden terms, last too (and starting at zero), for the same reason
        if let (true, SampleEffect::Attention { block, .. }) = (config.sample_context, &mut sample_effect) {
            block.direct = Some(AttentionBlock::direct_path(&root / "sample_effect" / "attention"));
        }
        if let (true, Decoder::Attention { block, .. }) = (config.nuisance_context, &mut decoder) {
            block.direct = Some(AttentionBlock::direct_path(&root / "decoder" / "attention"));
        }
        if let (true, SampleEffect::Attention { hidden_term, .. }) = (config.sample_hidden_term, &mut sample_effect) {
            *hidden_term = Some((&root / "sample_effect").var("hidden_term", &[s, attention::HIDDEN], nn::Init::Const(0.0)));
        }
        Self { config, vs, encoder, sample_effect, decoder, prior, log_theta, continuous, host_attention: OnceLock::new() }
    }

    /// Whether every weight is finite.
    pub fn weights_finite(&self) -> bool {
        self.vs.variables().values().all(|v| v.isfinite().all().int64_value(&[]) != 0)
    }

    /// Drop the host copy of the sample effect (after the parameters change).
    pub fn forget_host_cache(&mut self) {
        self.host_attention = OnceLock::new();
    }

    /// A model over the samples of `base` and `start.len()` more (codes after
    /// base's): base's weights, with new sample j's rows of the per-sample
    /// parameters (SAMPLE_PARAMETERS) starting as copies of reference sample
    /// `start[j]`'s. Only those parameters require gradients; base's rows of
    /// them get none from cells of new samples, and `Trainer` restores them
    /// exactly when it finishes.
    pub fn with_new_samples(base: &MrviModel, start: &[i64]) -> Result<Self> {
        let n_new = start.len() as i64;
        if n_new < 1 {
            crate::invalid!("no new samples to add");
        }
        if start.iter().any(|&r| r < 0 || r >= base.config.n_samples) {
            crate::invalid!("new samples must start from reference samples");
        }
        let mut config = base.config.clone();
        let s_old = config.n_samples;
        config.n_samples += n_new;
        let mut model = MrviModel::new(config, base.device());
        let old = base.vs.variables();
        let new = model.vs.variables();
        model.vs.freeze();
        tch::no_grad(|| {
            for (name, v) in &new {
                let from = &old[name];
                if SAMPLE_PARAMETERS.contains(&name.as_str()) {
                    let mut head = v.narrow(0, 0, s_old);
                    head.copy_(from);
                    let mut tail = v.narrow(0, s_old, n_new);
                    tail.copy_(&from.index_select(0, &Tensor::from_slice(start).to_device(from.device())));
                    let _ = v.set_requires_grad(true);
                } else {
                    let mut v = v.shallow_clone();
                    v.copy_(from);
                }
            }
        });
        Ok(model)
    }

    /// Copies of the per-sample parameters (name, tensor), for `restore_sample_rows`.
    pub fn sample_parameters(&self) -> Vec<(String, Tensor)> {
        let vars = self.vs.variables();
        SAMPLE_PARAMETERS.iter().filter_map(|&n| vars.get(n).map(|v| (n.to_string(), v.detach().copy()))).collect()
    }

    /// Put back the first rows of the per-sample parameters from `saved`
    /// (`sample_parameters` of a model with fewer samples).
    pub fn restore_sample_rows(&mut self, saved: &[(String, Tensor)]) {
        let vars = self.vs.variables();
        tch::no_grad(|| {
            for (name, rows) in saved {
                let mut head = vars[name].narrow(0, 0, rows.size()[0]);
                head.copy_(rows);
            }
        });
    }

    /// A second set of leaves over this model's weights: the same storage (so
    /// that updates of the weights reach it), gradients of its own. A shard of
    /// a minibatch on another thread runs through it ([crate::train]). Built
    /// as a new model, so it draws from libtorch's generator.
    pub fn replica(&self) -> MrviModel {
        let copy = MrviModel::new(self.config.clone(), self.device());
        let own = self.vs.variables();
        for (name, mut v) in copy.vs.variables() {
            let from = &own[&name];
            tch::no_grad(|| v.set_data(from));
            let _ = v.set_requires_grad(from.requires_grad());
        }
        copy
    }

    pub fn device(&self) -> Device {
        self.vs.device()
    }

    pub fn encode(&self, log_counts: &Tensor, sample: &Tensor) -> Posterior {
        self.encoder.forward(log_counts, sample)
    }

    /// z for every cell's own (or any chosen) sample, and the per-cell penalty
    /// ||eps||^2 / 2 of the attention flavour (zeros for the linear one).
    pub fn z_and_penalty(&self, u: &Tensor, sample: &Tensor) -> (Tensor, Tensor) {
        match &self.sample_effect {
            SampleEffect::Linear { map, shift } => {
                let a = map.index_select(0, sample); // [B, L, L]
                let au = a.bmm(&u.detach().unsqueeze(2)).squeeze_dim(2);
                let z = u + au + shift.index_select(0, sample);
                let zeros = Tensor::zeros([z.size()[0]], (z.kind(), z.device()));
                (z, zeros)
            }
            SampleEffect::Attention { base, block, embedding, hidden_term } => {
                let term = hidden_term.as_ref().map(|t| t.index_select(0, sample));
                let eps = block.forward_with(u, &embedding.index_select(0, sample), term.as_ref());
                let penalty = eps.square().sum_dim_intlist(1, false, eps.kind()) * 0.5;
                (base.forward(u) + eps, penalty)
            }
        }
    }

    /// z = u + A_s sg(u) + a_s (linear) or W u + c + eps(u, s) (attention).
    pub fn z_from_u(&self, u: &Tensor, sample: &Tensor) -> Tensor {
        self.z_and_penalty(u, sample).0
    }

    /// z for every sample s' at once: [B, S, L], for counterfactuals.
    pub fn z_all_samples(&self, u: &Tensor) -> Tensor {
        let (b, s) = (u.size()[0], self.config.n_samples);
        match &self.sample_effect {
            SampleEffect::Linear { map, shift } => {
                let au = u.matmul(&map.transpose(1, 2)).permute([1, 0, 2]); // [B, S, L]
                u.unsqueeze(1) + au + shift.unsqueeze(0)
            }
            SampleEffect::Attention { .. } => {
                let lu = u.size()[1];
                let reps = u.unsqueeze(1).expand([b, s, lu], false).reshape([b * s, lu]);
                let samples = Tensor::arange(s, (Kind::Int64, u.device())).repeat([b]);
                self.z_from_u(&reps, &samples).view([b, s, self.config.n_latent])
            }
        }
    }

    /// Counterfactual z on the host, one cell at a time: each cell's z is computed
    /// by the same arithmetic whatever the block it comes in, so streamed results
    /// do not depend on the block size.
    pub fn host_sample_effect(&self) -> HostSampleEffect<'_> {
        self.host_sample_effect_in(Space::Latent)
    }

    /// [Self::host_sample_effect] in the given space: in expression space each
    /// cell's z come out as their coordinates there ([expression_metric]).
    pub fn host_sample_effect_in(&self, space: Space) -> HostSampleEffect<'_> {
        let f = host_floats;
        let kind = match &self.sample_effect {
            SampleEffect::Linear { map, shift } => HostKind::Linear { map: f(map), shift: f(shift) },
            SampleEffect::Attention { base, block, embedding, hidden_term } if self.device() == Device::Cpu => {
                HostKind::Attention(self.host_attention.get_or_init(|| {
                    let block = attention::HostAttention::new(block);
                    let mut embeddings = block.contexts(&f(embedding));
                    if let Some(t) = hidden_term {
                        embeddings.add_hidden_terms(&f(t));
                    }
                    HostAttentionParts {
                        base: f(&base.ws),
                        base_bias: f(base.bs.as_ref().expect("the base layer has a bias")),
                        embeddings,
                        block,
                    }
                }))
            }
            SampleEffect::Attention { .. } => HostKind::Model(self),
        };
        HostSampleEffect {
            n_samples: self.config.n_samples as usize,
            n_latent: self.config.n_latent as usize,
            n_latent_u: self.config.dim_u() as usize,
            kind,
            metric: (space == Space::Expression).then(|| self.expression_metric()),
        }
    }

    /// The decoder's map from y to logits and, for the attention flavour, its
    /// block against every combination of nuisance levels (see [expression_metric]).
    fn expression_metric(&self) -> expression_metric::ExpressionMetric {
        let levels = self.config.factor_levels();
        match &self.decoder {
            Decoder::Linear { c, site_map, .. } => {
                // W = C + the sum over covariates of the mean of C_b over their levels
                let mut w = c.ws.detach();
                let mut offset = 0;
                for &n in &levels {
                    w = w + site_map.detach().narrow(0, offset, n).mean_dim(0, false, site_map.kind());
                    offset += n;
                }
                expression_metric::ExpressionMetric::new(&w, None)
            }
            Decoder::Attention { out, block, embedding } => {
                let host = attention::HostAttention::new(block);
                let rows = host_floats(embedding);
                let contexts = host.contexts(&expression_metric::ExpressionMetric::level_grid(&rows, &levels));
                expression_metric::ExpressionMetric::new(&out.ws, Some((host, contexts)))
            }
        }
    }

    /// Decoder logits for z, site codes [N, K] (one per categorical covariate)
    /// and continuous covariates [N, C] (None: all at 0, their means). Linear
    /// flavour: C z + sum_k C_{b_k} drop(sg(z)) + c_{b_k} (+ the continuous
    /// terms) as one matrix product, the input [z, h x drop(sg(z)), h] with h the
    /// cell's indicator over all levels (one 1 per covariate; then the continuous
    /// values in the same way) against [C, C_1..C_B, c_1..c_B (, D, d)].
    /// Attention flavour: Linear(z + attention(z, e)) (+ x d), e the sum of the
    /// cell's site embeddings (plus x e_x). `dropout`: the linear flavour's
    /// scaled keep-mask on sg(z) in training ([Draws]); None outside training.
    pub fn decode_logits(&self, z: &Tensor, site: &Tensor, continuous: Option<&Tensor>, dropout: Option<&Tensor>) -> Tensor {
        self.output_layer(z, site, continuous, dropout).logits()
    }

    /// The decoder up to its output layer, and that layer's pieces ([OutputLayer]);
    /// arguments as [Self::decode_logits].
    fn output_layer(&self, z: &Tensor, site: &Tensor, continuous: Option<&Tensor>, dropout: Option<&Tensor>) -> OutputLayer {
        let continuous = continuous.zip(self.continuous.as_ref());
        match &self.decoder {
            Decoder::Linear { c, site_map, site_bias } => {
                let b = self.config.n_batches;
                let l = self.config.n_latent;
                let onehot = site.one_hot(b).sum_dim_intlist(1, false, Kind::Int64).to_kind(z.kind()); // [N, B]
                let zd = match dropout {
                    Some(mask) => z.detach() * mask,
                    None => z.detach(),
                }; // [N, L]
                let interaction = |h: &Tensor| {
                    let w = h.size()[1];
                    (h.unsqueeze(2) * zd.unsqueeze(1)).reshape([-1, w * l]) // [N, W*L]
                };
                let mut input = vec![z.shallow_clone(), interaction(&onehot), onehot];
                let mut blocks = vec![WeightBlock::Plain(c.ws.shallow_clone()), WeightBlock::Levels(site_map.shallow_clone()), WeightBlock::Rows(site_bias.shallow_clone())];
                if let Some((x, ContinuousEffect::Linear { map, bias })) = continuous {
                    let x = x.to_kind(z.kind());
                    input.extend([interaction(&x), x.shallow_clone()]);
                    blocks.extend([WeightBlock::Levels(map.shallow_clone()), WeightBlock::Rows(bias.shallow_clone())]);
                }
                // z's columns first: the only ones with a gradient
                OutputLayer { input: Tensor::cat(&input, 1), blocks, bias: None, term: None }
            }
            Decoder::Attention { out, block, embedding } => {
                let (context, logit_term) = Self::nuisance_context(embedding, site, continuous);
                let input = z + block.forward(z, &context);
                Self::attention_output(out, input, logit_term)
            }
        }
    }

    /// The attention decoder's output layer on z + the block's output.
    fn attention_output(out: &nn::Linear, input: Tensor, term: Option<(Tensor, Tensor)>) -> OutputLayer {
        OutputLayer { input, blocks: vec![WeightBlock::Plain(out.ws.shallow_clone())], bias: out.bs.as_ref().map(|b| b.shallow_clone()), term }
    }

    /// The attention decoder's context for site codes and continuous
    /// covariates: the sum of the cell's nuisance embeddings (plus x e_x); and
    /// the continuous covariates' direct term in the logits (x d).
    fn nuisance_context(embedding: &Tensor, site: &Tensor, continuous: Option<(&Tensor, &ContinuousEffect)>) -> (Tensor, Option<(Tensor, Tensor)>) {
        let mut context = embedding.index_select(0, &site.select(1, 0));
        for k in 1..site.size()[1] {
            context = context + embedding.index_select(0, &site.select(1, k));
        }
        match continuous {
            Some((x, ContinuousEffect::Attention { embedding, bias })) => {
                let x = x.to_kind(embedding.kind());
                (context + x.matmul(embedding), Some((x, bias.shallow_clone())))
            }
            _ => (context, None),
        }
    }

    /// KL term per cell: analytic for the standard normal prior; for the mixture,
    /// the one-draw estimate log q(u) - log p(u), with each labelled cell's mixture
    /// weights biased towards its label's component (+10 on that logit).
    pub fn kl(&self, q: &Posterior, u: &Tensor, label: Option<&Tensor>) -> Tensor {
        match &self.prior {
            PriorParams::Normal => q.kl_standard_normal(),
            PriorParams::Mog { logits, means, log_scales } => {
                let kind = u.kind();
                let log_q = (-((u - &q.mean) / &q.sd).square() * 0.5 - q.sd.log() - 0.5 * (2.0 * std::f64::consts::PI).ln())
                    .sum_dim_intlist(1, false, kind);
                let weights = match label {
                    Some(l) if self.config.n_labels > 0 => logits.unsqueeze(0) + l.one_hot(self.config.n_labels).to_kind(kind) * 10.0,
                    _ => logits.shallow_clone(),
                };
                log_q - attention::mixture_log_density(u, &weights, means, log_scales)
            }
        }
    }

    /// Per-cell reconstruction loss and KL for a minibatch (one draw of u).
    pub fn losses(&self, batch: &Batch, train: bool) -> Losses {
        let draws = self.draws(batch.sample.size()[0], train);
        let (output, kl) = self.forward(batch, &draws);
        self.likelihood_losses(batch, output.logits(), kl)
    }

    /// [Losses] from a pass's logits and prior terms, with the likelihood as
    /// libtorch operations (differentiable on any device).
    fn likelihood_losses(&self, batch: &Batch, logits: Tensor, kl: Tensor) -> Losses {
        let log_mu = logits.log_softmax(1, logits.kind()) + &batch.log_library;
        let nz = batch.nonzeros.as_ref().expect("minibatch built without its non-zero structure");
        let ll = nb::log_prob_sparse(nz, &log_mu, &self.log_theta);
        Losses { reconstruction: -ll, kl }
    }

    /// The random numbers of one pass over `n` cells, drawn from libtorch's
    /// generator in the order the pass consumes them (see [Draws]).
    pub fn draws(&self, n: i64, train: bool) -> Draws {
        let options = (Kind::Float, self.device());
        let noise = Tensor::randn([n, self.config.dim_u()], options);
        // as libtorch's dropout on the CPU: no draw at p = 0 or 1, else a
        // Bernoulli(1 - p) mask divided by 1 - p
        let p = self.config.dropout_rate;
        let dropout = (train && matches!(self.decoder, Decoder::Linear { .. }) && p > 0.0).then(|| {
            if p >= 1.0 {
                return Tensor::zeros([n, self.config.n_latent], options);
            }
            let mut mask = Tensor::empty([n, self.config.n_latent], options);
            let _ = mask.bernoulli_float_(1.0 - p);
            let _ = mask.g_div_scalar_(1.0 - p);
            mask
        });
        Draws { noise, dropout }
    }

    /// One pass from counts to the decoder's output layer with the posterior
    /// draw of u that `draws` gives, and the per-cell prior terms (KL, plus the
    /// attention flavour's ||eps||^2 / 2), through libtorch (differentiable on
    /// any device).
    fn forward(&self, batch: &Batch, draws: &Draws) -> (OutputLayer, Tensor) {
        let q = self.encode(&batch.log_counts, &batch.sample);
        let u = q.sample_with(&draws.noise);
        let kl = self.kl(&q, &u, batch.label.as_ref());
        let (z, penalty) = self.z_and_penalty(&u, &batch.sample);
        let output = self.output_layer(&z, &batch.site, batch.continuous.as_ref(), draws.dropout.as_ref());
        (output, kl + penalty)
    }

    /// The training objective of a minibatch, or of one shard of it: `batch`
    /// holds the shard's cells and `draws` their rows of the minibatch's draws,
    /// and the objective is the shard's part (its sums divided by the
    /// `minibatch_cells` of the whole minibatch). On the CPU the likelihood and its
    /// gradient with respect to the logits and log theta come from one fused pass
    /// (`nb::fused_log_lik`); the decoder's output layer takes its gradients from
    /// there in closed form ([OutputLayer::host_gradients]), the pass between the
    /// encoder and that layer (the draw of u, the KL term, z: [staged]) and the
    /// encoder after its first product ([encoder_step]) run on the host too, and
    /// [StepTerms::backward] takes the gradient back through them without
    /// autograd. Elsewhere (or with `fused_likelihood` off) autograd
    /// differentiates the whole pass.
    pub fn step_terms(&self, batch: &Batch, draws: &Draws, kl_weight: f64, minibatch_cells: f64) -> StepTerms<'_> {
        let n = minibatch_cells;
        if batch.nonzeros.is_some() {
            let (output, kl) = self.forward(batch, draws);
            let l = self.likelihood_losses(batch, output.logits(), kl);
            let rec = l.reconstruction.sum(Kind::Float);
            let kl = l.kl.sum(Kind::Float);
            let objective = (&rec + &kl * kl_weight) / n;
            return StepTerms { reconstruction_sum: rec.double_value(&[]), kl_sum: kl.double_value(&[]), gradient: Gradient::Autograd(objective) };
        }
        let host = batch.host.as_ref().expect("minibatch built without its host copy");
        // the same pass on the host ([encoder_step], [staged]); the prior terms as values
        let encoder = encoder_step::forward(&self.encoder, &batch.log_counts, &batch.sample);
        let (output, kl, staged) = self.forward_staged(batch, &encoder.mean, &encoder.sd, draws);
        let host_logits = output.logit_values().contiguous();
        let (b, g) = host_logits.size2().expect("2-d logits");
        let host_theta = self.log_theta.detach().contiguous();
        // gradients only in training (evaluation runs without grad mode)
        let training = grad_enabled();
        let mut d_logits = Tensor::empty([if training { b } else { 0 }, g], (Kind::Float, Device::Cpu));
        let counts = nb::HostCounts {
            nz_ptr: &host.nz_ptr,
            nz_gene: &host.nz_gene,
            nz_count: &host.nz_count,
            lgamma_x1: &host.lgamma_x1,
        };
        // SAFETY: contiguous CPU float tensors that outlive the slices.
        let nb = unsafe {
            let d_logits = training.then(|| cpu_floats_mut(&mut d_logits));
            nb::fused_log_lik(cpu_floats(&host_logits), &host.log_library, cpu_floats(&host_theta), &counts, d_logits)
        };
        let kl_sum = kl.sum(Kind::Float).double_value(&[]);
        let reconstruction_sum = -nb.log_lik.iter().sum::<f64>();
        if !training {
            return StepTerms { reconstruction_sum, kl_sum, gradient: Gradient::None };
        }
        // the output layer's gradients and log theta's in closed form, added on the host
        let mut sink = host_gradients::HostGradients::default();
        let scale = (-1.0 / n) as f32;
        let d_traced = output.host_gradients(&d_logits, scale, &mut sink);
        let d_theta: Vec<f32> = nb.d_log_theta.iter().map(|&v| v * scale).collect();
        sink.add_slice(&self.log_theta, &d_theta);
        let host = HostPass { model: self, staged, encoder, kl_scale: kl_weight / n, sink, d_traced };
        StepTerms { reconstruction_sum, kl_sum, gradient: Gradient::Host(host) }
    }

    /// Expected normalised expression rho for latent z and nuisance covariates
    /// (as in `decode_logits`): softmax(logits).
    pub fn expression(&self, z: &Tensor, site: &Tensor, continuous: Option<&Tensor>) -> Tensor {
        self.decode_logits(z, site, continuous, None).softmax(1, Kind::Float)
    }

    pub fn check_compatible(&self, n_genes: usize) -> Result<()> {
        if n_genes as i64 != self.config.n_genes {
            crate::invalid!("the data have {n_genes} genes but the model was fitted on {}", self.config.n_genes);
        }
        Ok(())
    }
}
