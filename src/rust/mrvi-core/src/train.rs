//! Training (MODEL.md §3): Adam with L2 weight decay, gradient-norm clipping,
//! linear KL warm-up, a held-out validation ELBO, early stopping that restores
//! the best weights. The caller drives it one epoch at a time (for progress
//! reporting) and passes an interrupt check that runs between minibatches.
//! Everything an epoch depends on (weights, Adam's moments, the shuffling
//! generator, libtorch's generator, reseeded per epoch, and the early-stopping
//! state) lives in the `Trainer`, so that `checkpoint` can save it between
//! epochs and a resumed run continues bit for bit.

use crate::backend;
use crate::batch::Dataset;
use crate::data::CountColumns;
use crate::error::{Error, Result};
use crate::model::config::{default_max_epochs, ModelConfig, TrainConfig};
use crate::model::MrviModel;
use crate::rng::SplitMix64;
use std::time::Instant;
use tch::{Device, Tensor};

/// Fixed by MODEL.md §3, not chosen by the user.
const WEIGHT_DECAY: f64 = 1e-8;
const ADAM_EPS: f64 = 1e-8;
const MAX_GRAD_NORM: f64 = 40.0;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct EpochStats {
    pub epoch: usize,
    pub kl_weight: f64,
    /// per-cell means; the ELBO is -(reconstruction + kl) with full KL weight
    pub train_elbo: f64,
    pub train_reconstruction: f64,
    pub train_kl: f64,
    pub validation_elbo: f64,
    pub validation_reconstruction: f64,
    pub validation_kl: f64,
    pub seconds: f64,
    pub cells_per_second: f64,
    /// where the training time of the epoch went (seconds): assembling
    /// minibatches, forward pass with likelihood, backward pass, optimiser step
    /// with clipping; the rest of `seconds` is validation. On a GPU the phases are
    /// asynchronous and the split is indicative only.
    pub seconds_batches: f64,
    pub seconds_forward: f64,
    pub seconds_backward: f64,
    pub seconds_optimizer: f64,
}

pub struct Trainer {
    pub model: MrviModel,
    pub data: Dataset,
    pub config: TrainConfig,
    pub max_epochs: usize,
    pub(crate) opt: Adam,
    pub(crate) rng: SplitMix64,
    train_cells: Vec<usize>,
    validation_cells: Vec<usize>,
    pub history: Vec<EpochStats>,
    /// validation score, epoch and weights of the best epoch so far
    pub(crate) best: Option<(f64, usize, Vec<(String, Tensor)>)>,
    pub(crate) epochs_since_best: usize,
    pub stopped_early: bool,
}

/// Adam with L2 weight decay, as libtorch's `torch::optim::Adam` computes it (up
/// to rounding), with its state held here so that a checkpoint can save it:
/// tch's optimiser keeps its moments out of reach.
pub(crate) struct Adam {
    lr: f64,
    weight_decay: f64,
    eps: f64,
    /// steps taken (for the bias corrections)
    pub(crate) steps: u64,
    /// (name, variable, first moment, second moment), sorted by name
    pub(crate) params: Vec<(String, Tensor, Tensor, Tensor)>,
}

impl Adam {
    const BETA1: f64 = 0.9;
    const BETA2: f64 = 0.999;

    fn new(vs: &tch::nn::VarStore, lr: f64) -> Self {
        let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let params = vars
            .into_iter()
            .map(|(name, v)| {
                let (m, s) = (v.zeros_like(), v.zeros_like());
                (name, v, m, s)
            })
            .collect();
        Self { lr, weight_decay: WEIGHT_DECAY, eps: ADAM_EPS, steps: 0, params }
    }

    fn zero_grad(&mut self) {
        for (_, v, _, _) in self.params.iter_mut() {
            v.zero_grad();
        }
    }

    /// Scale the gradients so that their joint L2 norm is at most `max`.
    fn clip_grad_norm(&self, max: f64) -> Result<()> {
        tch::no_grad(|| {
            let norms: Vec<Tensor> =
                self.params.iter().map(|(_, v, _, _)| v.grad()).filter(|g| g.defined()).map(|g| g.norm()).collect();
            let total = f64::try_from(Tensor::stack(&norms, 0).norm())?;
            let coef = max / (total + 1e-6);
            if coef < 1.0 {
                for (_, v, _, _) in &self.params {
                    let mut g = v.grad();
                    if g.defined() {
                        let _ = g.g_mul_scalar_(coef);
                    }
                }
            }
            Ok(())
        })
    }

    fn step(&mut self) {
        self.steps += 1;
        let t = self.steps as f64;
        let (bc1, bc2) = (1.0 - Self::BETA1.powf(t), 1.0 - Self::BETA2.powf(t));
        tch::no_grad(|| {
            for (_, v, m, s) in self.params.iter_mut() {
                let grad = v.grad();
                if !grad.defined() {
                    continue;
                }
                let grad = if self.weight_decay != 0.0 { grad + &*v * self.weight_decay } else { grad };
                let _ = m.lerp_(&grad, 1.0 - Self::BETA1);
                let _ = s.g_mul_scalar_(Self::BETA2);
                let _ = s.addcmul_(&grad, &(&grad * (1.0 - Self::BETA2)));
                let denom = s.sqrt() / bc2.sqrt() + self.eps;
                let _ = v.addcdiv_(&(&*m * (-self.lr / bc1)), &denom);
            }
        });
    }
}

/// The seed of libtorch's generator (posterior draws, dropout) in epoch `epoch`:
/// a function of the seed and the epoch only, so that a resumed run draws what
/// an uninterrupted one does.
fn epoch_seed(seed: u64, epoch: usize) -> i64 {
    (SplitMix64::new(seed ^ (epoch as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03)).next_u64() >> 1) as i64
}

impl Trainer {
    pub fn new(model_config: ModelConfig, config: TrainConfig, data: Dataset, device: Device) -> Result<Self> {
        if config.batch_size < 2 {
            crate::invalid!("batch_size must be at least 2, not {}", config.batch_size);
        }
        if !(0.0..0.5).contains(&config.validation_fraction) {
            crate::invalid!("validation_fraction must be in [0, 0.5), not {}", config.validation_fraction);
        }
        model_config_matches(&model_config, &data)?;
        tch::manual_seed(config.seed as i64);
        let model = MrviModel::new(model_config, device);
        let opt = Adam::new(&model.vs, config.lr);
        let mut rng = SplitMix64::new(config.seed);
        let n = data.n_cells();
        let mut cells: Vec<usize> = (0..n).collect();
        rng.shuffle(&mut cells);
        let n_val = (n as f64 * config.validation_fraction).floor() as usize;
        let validation_cells = cells[..n_val].to_vec();
        let train_cells = cells[n_val..].to_vec();
        let max_epochs = config.max_epochs.unwrap_or_else(|| default_max_epochs(n));
        Ok(Self {
            model,
            data,
            config,
            max_epochs,
            opt,
            rng,
            train_cells,
            validation_cells,
            history: Vec::new(),
            best: None,
            epochs_since_best: 0,
            stopped_early: false,
        })
    }

    pub fn n_validation(&self) -> usize {
        self.validation_cells.len()
    }

    /// Whether minibatches use the fused CPU likelihood.
    fn fused(&self) -> bool {
        self.config.fused_likelihood && self.model.device() == Device::Cpu
    }

    pub fn done(&self) -> bool {
        self.stopped_early || self.history.len() >= self.max_epochs
    }

    fn kl_weight(&self, epoch: usize, step: usize, n_steps: usize) -> f64 {
        let w = self.config.n_epochs_kl_warmup;
        if w == 0 {
            1.0
        } else {
            ((epoch as f64 + step as f64 / n_steps as f64) / w as f64).min(1.0)
        }
    }

    /// One pass over the training cells. `interrupted` is polled between
    /// minibatches; when it says yes, training stops with Error::Interrupted and
    /// the model keeps the weights of the last complete step.
    pub fn run_epoch(&mut self, interrupted: &mut dyn FnMut() -> bool) -> Result<EpochStats> {
        let start = Instant::now();
        let epoch = self.history.len();
        tch::manual_seed(epoch_seed(self.config.seed, epoch));
        let device = self.model.device();
        let mut order = self.train_cells.clone();
        self.rng.shuffle(&mut order);
        let bs = self.config.batch_size;
        // A last minibatch of one cell would make a noisy step: fold it into the previous.
        let mut chunks: Vec<&[usize]> = order.chunks(bs).collect();
        if chunks.len() > 1 && chunks[chunks.len() - 1].len() < 2 {
            let n = order.len();
            chunks.pop();
            let last = chunks.pop().unwrap().len();
            chunks.push(&order[n - last - 1..]);
        }
        let n_steps = chunks.len();
        let (mut rec_sum, mut kl_sum) = (0.0, 0.0);
        let mut kl_weight = 0.0;
        // (Assembling the next minibatch on a second thread was tried: on 2 cores it
        // competes with libtorch's threads and made epochs 25% slower.)
        let mut phase = [0f64; 4];
        let mut lap = |i: usize, since: Instant| {
            let now = Instant::now();
            phase[i] += (now - since).as_secs_f64();
            now
        };
        for (step, cells) in chunks.iter().enumerate() {
            if interrupted() {
                return Err(Error::Interrupted);
            }
            kl_weight = self.kl_weight(epoch, step, n_steps);
            let t = Instant::now();
            let batch = self.data.batch(cells, device, self.fused());
            let t = lap(0, t);
            let terms = self.model.step_terms(&batch, kl_weight, true);
            let t = lap(1, t);
            self.opt.zero_grad();
            terms.objective.f_backward()?;
            let t = lap(2, t);
            self.opt.clip_grad_norm(MAX_GRAD_NORM)?;
            self.opt.step();
            lap(3, t);
            rec_sum += terms.reconstruction_sum;
            kl_sum += terms.kl_sum;
            if !rec_sum.is_finite() {
                return Err(Error::Diverged(format!(
                    "training diverged at epoch {} (non-finite loss); try a smaller lr",
                    epoch + 1
                )));
            }
        }
        let n_train = self.train_cells.len().max(1) as f64;
        let (v_rec, v_kl) = self.validation_losses()?;
        let seconds = start.elapsed().as_secs_f64();
        let stats = EpochStats {
            epoch: epoch + 1,
            kl_weight,
            train_reconstruction: rec_sum / n_train,
            train_kl: kl_sum / n_train,
            train_elbo: -(rec_sum + kl_sum) / n_train,
            validation_reconstruction: v_rec,
            validation_kl: v_kl,
            validation_elbo: -(v_rec + v_kl),
            seconds,
            cells_per_second: n_train / seconds,
            seconds_batches: phase[0],
            seconds_forward: phase[1],
            seconds_backward: phase[2],
            seconds_optimizer: phase[3],
        };
        self.history.push(stats.clone());
        self.track_best(&stats);
        Ok(stats)
    }

    /// Mean per-cell reconstruction loss and KL on the validation cells (NaN when
    /// there are none), in evaluation mode with one posterior draw per cell.
    fn validation_losses(&self) -> Result<(f64, f64)> {
        if self.validation_cells.is_empty() {
            return Ok((f64::NAN, f64::NAN));
        }
        let device = self.model.device();
        let (mut rec, mut kl) = (0.0, 0.0);
        tch::no_grad(|| {
            for cells in self.validation_cells.chunks(self.config.batch_size.max(1024)) {
                let terms = self.model.step_terms(&self.data.batch(cells, device, self.fused()), 1.0, false);
                rec += terms.reconstruction_sum;
                kl += terms.kl_sum;
            }
        });
        let n = self.validation_cells.len() as f64;
        Ok((rec / n, kl / n))
    }

    /// Early stopping on the validation ELBO: patience counts only after the KL
    /// warm-up (before it the ELBO's weighting still changes); the best weights
    /// are kept and restored by `finish`.
    fn track_best(&mut self, stats: &EpochStats) {
        let score = if self.validation_cells.is_empty() { stats.train_elbo } else { stats.validation_elbo };
        let better = self.best.as_ref().map_or(true, |(best, _, _)| score > *best);
        if better {
            let snapshot = self.model.vs.variables().into_iter().map(|(k, v)| (k, v.detach().copy())).collect();
            self.best = Some((score, stats.epoch, snapshot));
            self.epochs_since_best = 0;
        } else if stats.epoch >= self.config.n_epochs_kl_warmup {
            self.epochs_since_best += 1;
            if self.config.early_stopping && self.epochs_since_best >= self.config.patience {
                self.stopped_early = true;
            }
        }
    }

    /// The epoch whose weights `finish` restores.
    pub fn best_epoch(&self) -> Option<usize> {
        self.best.as_ref().map(|b| b.1)
    }

    /// Restore the best weights (when early stopping is on) and return the model.
    pub fn finish(mut self) -> MrviModel {
        if self.config.early_stopping {
            if let Some((_, _, snapshot)) = self.best.take() {
                let mut vars = self.model.vs.variables();
                tch::no_grad(|| {
                    for (name, saved) in snapshot {
                        if let Some(v) = vars.get_mut(&name) {
                            v.copy_(&saved);
                        }
                    }
                });
            }
        }
        self.model
    }

    pub fn device_name(&self) -> String {
        backend::device_name(self.model.device())
    }
}

fn model_config_matches(c: &ModelConfig, data: &Dataset) -> Result<()> {
    if c.n_genes as usize != data.counts.n_genes() {
        crate::invalid!("model has {} genes, data {}", c.n_genes, data.counts.n_genes());
    }
    if data.sample.iter().any(|&s| s < 0 || s >= c.n_samples) || data.site.iter().any(|&b| b < 0 || b >= c.n_batches) {
        crate::invalid!("sample or site codes outside the model's levels");
    }
    if c.n_latent < 1 || c.dim_u() < 1 {
        crate::invalid!("n_latent must be at least 1");
    }
    if c.n_labels > 0 {
        match &data.label {
            Some(l) if l.iter().all(|&v| v >= 0 && v < c.n_labels) => {}
            _ => crate::invalid!("label codes missing or outside the model's {} labels", c.n_labels),
        }
    }
    Ok(())
}
