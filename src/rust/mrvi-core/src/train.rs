//! Training (MODEL.md §3): Adam with L2 weight decay, gradient-norm clipping,
//! linear KL warm-up, a held-out validation ELBO (the same posterior draws every
//! epoch), early stopping that restores
//! the best weights. The caller drives it one epoch at a time (for progress
//! reporting) and passes an interrupt check that runs between minibatches.
//! Everything an epoch depends on (weights, Adam's moments, the shuffling
//! generator, libtorch's generator, reseeded per epoch, and the early-stopping
//! state) lives in the `Trainer`, so that `checkpoint` can save it between
//! epochs and a resumed run continues bit for bit.

use crate::backend;
use crate::batch::Dataset;
use crate::data::{CountColumns, CscCounts};
use std::ops::Range;
use crate::error::{Error, Result};
use crate::model::config::{default_max_epochs, ModelConfig, TrainConfig};
use crate::model::{cpu_floats, cpu_floats_mut, Draws, MrviModel};
use crate::rng::SplitMix64;
use std::time::Instant;
use tch::{Device, Tensor};

/// Fixed by MODEL.md §3, not chosen by the user.
const WEIGHT_DECAY: f64 = 1e-8;
const ADAM_EPS: f64 = 1e-8;
const MAX_GRAD_NORM: f64 = 40.0;

/// The fewest cells a shard of a minibatch gets ([train_step]): smaller
/// matrix products lose more to libtorch's cost per operation than a thread
/// of their own gains. (One thread, attention flavour, realistic data, AMD
/// EPYC: batches of 32, 64, 128 and 256 cells trained at 68%, 84%, 97% and
/// 100% of the speed per cell, so 8 shards of 32 still do ~5.4 threads' work.)
const MIN_SHARD_CELLS: usize = 32;

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
    /// leaves over the model's weights for the second and later shards of a
    /// minibatch ([MrviModel::replica], [train_step]), with the flat buffer
    /// their gradients are views of ([Adam::replica_gradients])
    replicas: Vec<(MrviModel, Tensor)>,
    pub data: Dataset,
    pub config: TrainConfig,
    pub max_epochs: usize,
    pub(crate) opt: Adam,
    pub(crate) rng: SplitMix64,
    train_cells: Vec<usize>,
    validation_cells: Vec<usize>,
    /// with `config.blocks`: the training and validation blocks (the cells
    /// above are theirs, in block order)
    train_blocks: Vec<usize>,
    validation_blocks: Vec<usize>,
    /// the counts are not in `data` but read by a `BlockLoader` (on disk)
    counts_on_disk: bool,
    /// counts on disk: their per-gene totals, which with the library sizes
    /// stand in for the counts in a checkpoint's fingerprint
    pub(crate) disk_gene_totals: Vec<f64>,
    pub history: Vec<EpochStats>,
    /// validation score, epoch and weights of the best epoch so far
    pub(crate) best: Option<(f64, usize, Vec<(String, Tensor)>)>,
    /// without early stopping: the weights at the start of the epoch that was
    /// interrupted (those of the last complete epoch), which `finish` restores
    /// (an interrupted epoch leaves the model part-trained)
    interrupted_epoch_start: Option<Vec<(String, Tensor)>>,
    pub(crate) epochs_since_best: usize,
    pub stopped_early: bool,
    /// mean loss per cell of the first [START_CELLS] cells this trainer ran, near
    /// its starting weights: the scale against which an epoch's loss counts as
    /// exploded
    first_loss: Option<f64>,
    /// the shard thread counts of the epochs resumed from a checkpoint, in the
    /// order used (results depend on them: see [train_step])
    pub(crate) resumed_threads: Vec<usize>,
    /// the devices of the epochs resumed from a checkpoint, in the order used
    pub(crate) resumed_devices: Vec<String>,
    /// when adding samples: the reference samples' rows of the per-sample
    /// parameters, restored exactly by `finish`
    reference_rows: Vec<(String, Tensor)>,
}

/// Adam with L2 weight decay, as libtorch's `torch::optim::Adam` computes it (up
/// to rounding), with its state held here so that a checkpoint can save it:
/// tch's optimiser keeps its moments out of reach. The trainable weights, their
/// gradients and their moments are views into four flat buffers, so that a step
/// (clipping included) is a dozen operations on whole buffers rather than a
/// dozen per variable: with ~55 small variables, the per-variable version spent
/// 13% of an epoch here; zeroing the gradients, and adding a replica's
/// ([train_step]), is one operation.
pub(crate) struct Adam {
    lr: f64,
    weight_decay: f64,
    eps: f64,
    /// steps taken (for the bias corrections)
    pub(crate) steps: u64,
    /// (name, variable, first moment, second moment), sorted by name; frozen
    /// variables (when adding samples) are listed too, and never change
    pub(crate) params: Vec<(String, Tensor, Tensor, Tensor)>,
    /// the trainable variables (by position in `params`)
    trainable: Vec<usize>,
    /// what the trainable variables, their gradients and moments are views of
    flat: Tensor,
    flat_grad: Tensor,
    flat_m: Tensor,
    flat_s: Tensor,
}

/// Give `vars` gradients that are views into one flat buffer (in this order),
/// zeros, and return the buffer. A backward pass adds into an existing
/// gradient in place, so they stay views.
fn flat_gradients(vars: &[&Tensor], options: (tch::Kind, Device)) -> Result<Tensor> {
    let total: i64 = vars.iter().map(|v| v.numel() as i64).sum();
    let flat = Tensor::zeros([total], options);
    let mut offset = 0;
    for v in vars {
        let n = v.numel() as i64;
        // a first gradient (zeros), whose storage then becomes the buffer's
        tch::with_grad(|| (v.sum(v.kind()) * 0.0).f_backward())?;
        let mut grad = v.grad();
        tch::no_grad(|| grad.set_data(&flat.narrow(0, offset, n).view(v.size().as_slice())));
        offset += n;
    }
    Ok(flat)
}

impl Adam {
    const BETA1: f64 = 0.9;
    const BETA2: f64 = 0.999;

    fn new(vs: &tch::nn::VarStore, lr: f64) -> Self {
        let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let trainable: Vec<usize> = (0..vars.len()).filter(|&i| vars[i].1.requires_grad()).collect();
        let total: i64 = trainable.iter().map(|&i| vars[i].1.numel() as i64).sum();
        let options = vars.first().map_or((tch::Kind::Float, vs.device()), |(_, v)| (v.kind(), v.device()));
        let (flat, flat_m, flat_s) =
            (Tensor::zeros([total], options), Tensor::zeros([total], options), Tensor::zeros([total], options));
        let mut params: Vec<(String, Tensor, Tensor, Tensor)> =
            vars.into_iter().map(|(name, v)| (name, v.shallow_clone(), v.zeros_like(), v.zeros_like())).collect();
        let mut offset = 0;
        tch::no_grad(|| {
            for &i in &trainable {
                let (_, v, m, s) = &mut params[i];
                let (n, shape) = (v.numel() as i64, v.size());
                let view = |buffer: &Tensor| buffer.narrow(0, offset, n).view(shape.as_slice());
                let mut weights = view(&flat);
                weights.copy_(v);
                v.set_data(&weights);
                *m = view(&flat_m);
                *s = view(&flat_s);
                offset += n;
            }
        });
        let flat_grad = flat_gradients(&trainable.iter().map(|&i| &params[i].1).collect::<Vec<_>>(), options)
            .expect("a backward pass through one variable");
        Self { lr, weight_decay: WEIGHT_DECAY, eps: ADAM_EPS, steps: 0, params, trainable, flat, flat_grad, flat_m, flat_s }
    }

    fn zero_grad(&mut self) {
        let _ = self.flat_grad.zero_();
    }

    /// A flat gradient buffer for the leaves of a replica's variables `vs`
    /// ([MrviModel::replica]), laid out as the weights' own, for [Self::add_gradients].
    fn replica_gradients(&self, vs: &tch::nn::VarStore) -> Result<Tensor> {
        let leaves = vs.variables();
        let vars: Vec<&Tensor> = self.trainable.iter().map(|&i| &leaves[&self.params[i].0]).collect();
        flat_gradients(&vars, (self.flat_grad.kind(), self.flat_grad.device()))
    }

    /// Add a replica's gradients ([Self::replica_gradients]) to the weights' own.
    fn add_gradients(&mut self, replica_gradients: &Tensor) -> Result<()> {
        let _ = tch::no_grad(|| self.flat_grad.f_add_(replica_gradients))?;
        Ok(())
    }

    /// One step: the gradients scaled so that their joint L2 norm is at most
    /// `max_grad_norm`, then Adam's update. On the CPU one pass over the buffers
    /// (`adam_update`); elsewhere a dozen libtorch operations on them.
    fn step(&mut self, max_grad_norm: f64) -> Result<()> {
        if self.trainable.is_empty() {
            return Ok(());
        }
        self.steps += 1;
        let t = self.steps as f64;
        let (bc1, bc2) = (1.0 - Self::BETA1.powf(t), 1.0 - Self::BETA2.powf(t));
        if self.flat.device() == Device::Cpu {
            self.step_host(max_grad_norm, bc1, bc2)
        } else {
            self.step_tensors(max_grad_norm, bc1, bc2)
        }
    }

    /// `step` as libtorch operations on the buffers, on any device.
    fn step_tensors(&mut self, max_grad_norm: f64, bc1: f64, bc2: f64) -> Result<()> {
        tch::no_grad(|| {
            let mut grad = self.flat_grad.shallow_clone();
            let total = f64::try_from(grad.norm())?;
            let coef = max_grad_norm / (total + 1e-6);
            if coef < 1.0 {
                let _ = grad.g_mul_scalar_(coef);
            }
            let grad = if self.weight_decay != 0.0 { grad + &self.flat * self.weight_decay } else { grad };
            let _ = self.flat_m.lerp_(&grad, 1.0 - Self::BETA1);
            let _ = self.flat_s.g_mul_scalar_(Self::BETA2);
            let _ = self.flat_s.addcmul_(&grad, &(&grad * (1.0 - Self::BETA2)));
            let denom = self.flat_s.sqrt() / bc2.sqrt() + self.eps;
            let _ = self.flat.addcdiv_(&(&self.flat_m * (-self.lr / bc1)), &denom);
            Ok(())
        })
    }

    /// `step` on the CPU: the gradients read where libtorch left them, and the
    /// clipping, weight decay and update of each weight in one pass (the dozen
    /// libtorch operations took ~1 ms per step for ~350k weights on 2 cores,
    /// about 10% of a training step).
    fn step_host(&mut self, max_grad_norm: f64, bc1: f64, bc2: f64) -> Result<()> {
        // SAFETY: contiguous CPU float tensors, alive for the whole step; the four
        // buffers are distinct tensors.
        let (g, w, m, v) = unsafe {
            (cpu_floats(&self.flat_grad), cpu_floats_mut(&mut self.flat), cpu_floats_mut(&mut self.flat_m), cpu_floats_mut(&mut self.flat_s))
        };
        let total = sum_of_squares(g).sqrt();
        let coef = max_grad_norm / (total + 1e-6);
        let update = AdamUpdate {
            grad_scale: if coef < 1.0 { coef as f32 } else { 1.0 },
            weight_decay: self.weight_decay as f32,
            beta1: Self::BETA1 as f32,
            beta2: Self::BETA2 as f32,
            step_size: (self.lr / bc1) as f32,
            inv_sqrt_bc2: (1.0 / bc2.sqrt()) as f32,
            eps: self.eps as f32,
        };
        // every weight's update stands alone: pieces of at most ADAM_PIECE weights
        // on libtorch's OpenMP threads give the same bits as one pass
        type Piece<'a> = (&'a [f32], &'a mut [f32], &'a mut [f32], &'a mut [f32]);
        let mut pieces: Vec<Piece> = g
            .chunks(ADAM_PIECE)
            .zip(w.chunks_mut(ADAM_PIECE))
            .zip(m.chunks_mut(ADAM_PIECE).zip(v.chunks_mut(ADAM_PIECE)))
            .map(|((g, w), (m, v))| (g, w, m, v))
            .collect();
        crate::openmp::for_each_mut(&mut pieces, |(g, w, m, v)| adam_update(&update, g, w, m, v));
        Ok(())
    }
}

/// Weights per work item of the host Adam step.
const ADAM_PIECE: usize = 16384;

/// The constants of one Adam step.
struct AdamUpdate {
    grad_scale: f32,
    weight_decay: f32,
    beta1: f32,
    beta2: f32,
    step_size: f32,
    inv_sqrt_bc2: f32,
    eps: f32,
}

/// Adam's update of weights `w` with moments `m`, `v`, for gradient `g`
/// (zeros for a variable that took no part): the gradient clipped and with
/// L2 weight decay, then m, v and w in place. Vectorised where the CPU allows.
fn adam_update(u: &AdamUpdate, g: &[f32], w: &mut [f32], m: &mut [f32], v: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports the features the function is compiled for.
            return unsafe { adam_update_avx512(u, g, w, m, v) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: as above.
            return unsafe { adam_update_avx2(u, g, w, m, v) };
        }
    }
    adam_update_portable(u, g, w, m, v)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2")]
unsafe fn adam_update_avx512(u: &AdamUpdate, g: &[f32], w: &mut [f32], m: &mut [f32], v: &mut [f32]) {
    adam_update_portable(u, g, w, m, v)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn adam_update_avx2(u: &AdamUpdate, g: &[f32], w: &mut [f32], m: &mut [f32], v: &mut [f32]) {
    adam_update_portable(u, g, w, m, v)
}

/// Without fused multiply-adds, so that every path gives the same bits.
#[inline(always)]
fn adam_update_portable(u: &AdamUpdate, g: &[f32], w: &mut [f32], m: &mut [f32], v: &mut [f32]) {
    let one = |g: f32, w: &mut f32, m: &mut f32, v: &mut f32| {
        let g = g * u.grad_scale + *w * u.weight_decay;
        *m += (1.0 - u.beta1) * (g - *m);
        *v = u.beta2 * *v + (1.0 - u.beta2) * (g * g);
        let denom = v.sqrt() * u.inv_sqrt_bc2 + u.eps;
        *w -= u.step_size * *m / denom;
    };
    for (((g, w), m), v) in g.iter().zip(w.iter_mut()).zip(m.iter_mut()).zip(v.iter_mut()) {
        one(*g, w, m, v);
    }
}

/// Sum of squares in double precision, over 8 accumulators (vectorises).
fn sum_of_squares(x: &[f32]) -> f64 {
    let mut acc = [0f64; 8];
    let chunks = x.chunks_exact(8);
    let tail: f64 = chunks.remainder().iter().map(|&v| (v as f64) * (v as f64)).sum();
    for c in chunks {
        for j in 0..8 {
            acc[j] += (c[j] as f64) * (c[j] as f64);
        }
    }
    acc.iter().sum::<f64>() + tail
}

/// The seed of libtorch's generator (posterior draws, dropout) in epoch `epoch`:
/// a function of the seed and the epoch only, so that a resumed run draws what
/// an uninterrupted one does.
fn epoch_seed(seed: u64, epoch: usize) -> i64 {
    (SplitMix64::new(seed ^ (epoch as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03)).next_u64() >> 1) as i64
}

/// The seed of libtorch's generator for every validation pass: the same draws
/// each epoch (common random numbers), so that the validation ELBO moves only
/// when the model does. With fresh draws its Monte Carlo noise (~0.2 nats per
/// cell on 2,000 validation cells) hid a slow rise and stopped training early.
fn validation_seed(seed: u64) -> i64 {
    (SplitMix64::new(seed ^ 0x5641_4C49_4441_5445).next_u64() >> 1) as i64
}

/// Reads the counts of the cells in `ranges` (consecutive cells, one range after
/// the other) from where they are kept: for counts on disk, the caller's reader.
/// The second argument names the ranges that will be read next (empty when not
/// known yet), so that a reader can fetch them while the model trains.
pub type BlockLoader<'a> = dyn FnMut(&[Range<usize>], &[Range<usize>]) -> Result<CscCounts> + 'a;

/// Minibatches of `order`: chunks of `batch_size`, where a last minibatch of one
/// cell, which would make a noisy step, is folded into the one before.
fn minibatches(order: &[usize], batch_size: usize) -> Vec<&[usize]> {
    let mut chunks: Vec<&[usize]> = order.chunks(batch_size).collect();
    if chunks.len() > 1 && chunks[chunks.len() - 1].len() < 2 {
        let n = order.len();
        chunks.pop();
        let last = chunks.pop().unwrap().len();
        chunks.push(&order[n - last - 1..]);
    }
    chunks
}

/// Summed reconstruction loss and KL of `cells` in evaluation mode (one
/// posterior draw per cell), in chunks of `chunk` cells. Every chunk's draws
/// are made first, in order; the chunks are then split into shards as
/// training's minibatches are ([train_step]) and run on the threads, and the
/// sums are added in order, so one thread gives what one pass per chunk gives.
fn evaluation_sums(model: &MrviModel, data: &Dataset, cells: &[usize], chunk: usize, fused: bool) -> (f64, f64) {
    let threads = shard_threads(model);
    let mut work: Vec<(&[usize], Draws, (f64, f64))> = Vec::new();
    for part in cells.chunks(chunk) {
        let draws = model.draws(part.len() as i64, false);
        for range in shard_ranges(part.len(), threads) {
            work.push((&part[range.clone()], draws.rows(range.start as i64, range.len() as i64), (0.0, 0.0)));
        }
    }
    let lent = ShardModel(model);
    let run = |(part, draws, sums): &mut (&[usize], Draws, (f64, f64))| {
        let model = lent.get();
        // grad mode is per thread: set on the one that runs the shard
        let terms = tch::no_grad(|| model.step_terms(&data.batch(part, model.device(), fused), draws, 1.0, part.len() as f64));
        *sums = (terms.reconstruction_sum, terms.kl_sum);
    };
    if work.len() == 1 {
        run(&mut work[0]);
    } else {
        crate::openmp::for_each_mut(&mut work, run);
    }
    work.iter().fold((0.0, 0.0), |(rec, kl), (_, _, (r, k))| (rec + r, kl + k))
}

/// What an epoch adds up over its minibatches: losses, the last KL weight, and
/// the seconds spent assembling minibatches (with reading blocks), in the
/// forward pass with the likelihood, the backward pass and the optimiser step.
#[derive(Default)]
struct StepSums {
    reconstruction: f64,
    kl: f64,
    kl_weight: f64,
    phase: [f64; 4],
}

/// One shard of a minibatch: its cells, its rows of the minibatch's draws,
/// the model whose leaves take its gradients, and what it adds up.
struct Shard<'a> {
    model: ShardModel<'a>,
    cells: &'a [usize],
    draws: Draws,
    outcome: Option<Result<ShardSums>>,
}

/// A model lent to shards' threads. tch marks tensors Send but not Sync, since
/// they can be changed through `&`. In a training step each shard's model (the
/// trainer's own for the first) is used by that shard alone and the weights
/// all of them share are only read; in evaluation the shards share one model
/// without gradients, and only read it.
struct ShardModel<'a>(&'a MrviModel);

// SAFETY: see ShardModel.
unsafe impl Send for ShardModel<'_> {}
unsafe impl Sync for ShardModel<'_> {}

impl ShardModel<'_> {
    fn get(&self) -> &MrviModel {
        self.0
    }
}

struct ShardSums {
    reconstruction: f64,
    kl: f64,
    /// seconds assembling, in the forward pass, in the backward pass
    phase: [f64; 3],
}

impl Shard<'_> {
    /// Forward and backward pass of the shard: gradients into its model's leaves.
    fn run(&self, data: &Dataset, fused: bool, kl_weight: f64, minibatch_cells: usize) -> Result<ShardSums> {
        let model = self.model.get();
        let t0 = Instant::now();
        let batch = data.batch(self.cells, model.device(), fused);
        let t1 = Instant::now();
        let terms = model.step_terms(&batch, &self.draws, kl_weight, minibatch_cells as f64);
        let t2 = Instant::now();
        let (reconstruction, kl) = (terms.reconstruction_sum, terms.kl_sum);
        terms.backward()?;
        let secs = |a: Instant, b: Instant| (b - a).as_secs_f64();
        Ok(ShardSums { reconstruction, kl, phase: [secs(t0, t1), secs(t1, t2), secs(t2, Instant::now())] })
    }
}

/// Into how many shards a minibatch of `n` cells is split with `threads` threads.
fn shard_count(n: usize, threads: usize) -> usize {
    threads.min(n / MIN_SHARD_CELLS).max(1)
}

/// The shards of a minibatch of `n` cells with `threads` threads: consecutive
/// ranges of cells, their sizes at most one apart.
fn shard_ranges(n: usize, threads: usize) -> Vec<Range<usize>> {
    let shards = shard_count(n, threads);
    (0..shards).map(|k| k * n / shards..(k + 1) * n / shards).collect()
}

/// The threads a minibatch's shards may take: libtorch's on the CPU, one
/// elsewhere (a GPU runs one pass).
pub(crate) fn shard_threads(model: &MrviModel) -> usize {
    if model.device() == Device::Cpu { backend::num_threads().max(1) as usize } else { 1 }
}

/// One optimiser step on the minibatch `cells` of `data`. With `replicas` (of
/// `model`, with their gradient buffers; one per thread beyond the first) the
/// minibatch is split into consecutive shards, each run on a thread of its own
/// with single-threaded operations, and the replicas' gradients are then added
/// to the model's in shard order: on two cores that trains 10-40% faster than
/// one pass with two threads in every operation, whose small operations scale
/// poorly. The random draws are made for the whole minibatch first, so the
/// shards use the numbers one pass would; the result for a fixed seed depends
/// on the number of shards (the order of the sums), hence on the thread count.
fn train_step(
    model: &MrviModel, replicas: &[(&MrviModel, &Tensor)], opt: &mut Adam, data: &Dataset, cells: &[usize], fused: bool, epoch: usize,
    sums: &mut StepSums,
) -> Result<()> {
    let n = cells.len();
    let ranges = shard_ranges(n, replicas.len() + 1);
    let shards = ranges.len();
    let draws = model.draws(n as i64, true);
    opt.zero_grad();
    for (_, gradients) in &replicas[..shards - 1] {
        let _ = gradients.shallow_clone().zero_();
    }
    let models = std::iter::once(model).chain(replicas.iter().map(|r| r.0));
    let mut work: Vec<Shard> = models
        .zip(ranges)
        .map(|(model, range)| {
            let draws = draws.rows(range.start as i64, range.len() as i64);
            Shard { model: ShardModel(model), cells: &cells[range], draws, outcome: None }
        })
        .collect();
    let kl_weight = sums.kl_weight;
    let run = |shard: &mut Shard| shard.outcome = Some(shard.run(data, fused, kl_weight, n));
    if shards == 1 {
        run(&mut work[0]);
    } else {
        crate::openmp::for_each_mut(&mut work, run);
    }
    for shard in work {
        let done = shard.outcome.expect("every shard ran")?;
        sums.reconstruction += done.reconstruction;
        sums.kl += done.kl;
        for (total, seconds) in sums.phase.iter_mut().zip(done.phase) {
            *total += seconds / shards as f64;
        }
    }
    let t = Instant::now();
    for (_, gradients) in &replicas[..shards - 1] {
        opt.add_gradients(gradients)?;
    }
    opt.step(MAX_GRAD_NORM)?;
    sums.phase[3] += t.elapsed().as_secs_f64();
    if !sums.reconstruction.is_finite() {
        return Err(diverged(epoch, "the loss is not finite", opt));
    }
    Ok(())
}

fn diverged(epoch: usize, what: &str, opt: &Adam) -> Error {
    let lr = if (1e-3..1e4).contains(&opt.lr) { format!("{}", opt.lr) } else { format!("{:e}", opt.lr) };
    Error::Diverged(format!("training diverged at epoch {} ({what}) with lr = {lr}", epoch + 1))
}

/// A loss per cell this far above the start's (the mean over the first cells
/// trained, see [START_CELLS]) is a diverged fit: training lowers the loss, and a
/// fit whose loss exploded (a too large `lr`) has latents of 1e9 and saturated
/// expression while every number stays finite.
fn exploded(loss: f64, first: f64) -> bool {
    loss > 10.0 * first.max(1.0) + 1e3
}

/// The cells whose mean loss is the start's: one minibatch of a few cells may
/// hold only cells of few counts, whose loss is far below the data's (a false
/// divergence at `batch_size = 2`, even with `lr = 1e-300`).
const START_CELLS: usize = 1024;

/// The start's loss per cell into `first`, once the `seen` cells of the first
/// epoch trained (their summed losses in `sums`) reach [START_CELLS].
fn note_start_loss(first: &mut Option<f64>, sums: &StepSums, seen: usize) {
    if first.is_none() && seen >= START_CELLS {
        *first = Some((sums.reconstruction + sums.kl) / seen as f64);
    }
}

impl Trainer {
    pub fn new(model_config: ModelConfig, config: TrainConfig, data: Dataset, device: Device) -> Result<Self> {
        check_train_config(&config)?;
        model_config_matches(&model_config, &data)?;
        tch::manual_seed(config.seed as i64);
        let model = MrviModel::new(model_config, device);
        Self::with_model(model, config, data, Vec::new())
    }

    /// Learn `n_new` new samples into a trained model (`MrviModel::with_new_samples`):
    /// `data` holds cells of the new samples only (codes after base's samples);
    /// everything but the new samples' parameters stays as in `base`. Each new
    /// sample starts from the reference sample under which its cells have the
    /// highest ELBO (`closest_reference_samples`): a start at the mean of the
    /// reference samples drew new samples towards the one nearest that mean.
    /// No KL warm-up: with the decoder and prior fixed there is no collapse to
    /// avoid.
    pub fn add_samples(base: &MrviModel, n_new: i64, mut config: TrainConfig, data: Dataset) -> Result<Self> {
        let s_old = base.config.n_samples;
        if data.sample.iter().any(|&s| s < s_old || s >= s_old + n_new) {
            crate::invalid!("cells to add must belong to the new samples");
        }
        let mut extended = base.config.clone();
        extended.n_samples += n_new;
        check_train_config(&config)?;
        model_config_matches(&extended, &data)?;
        config.n_epochs_kl_warmup = 0;
        tch::manual_seed(config.seed as i64);
        let start = closest_reference_samples(base, &data, n_new);
        let model = MrviModel::with_new_samples(base, &start)?;
        Self::with_model(model, config, data, base.sample_parameters())
    }

    fn with_model(model: MrviModel, config: TrainConfig, data: Dataset, reference_rows: Vec<(String, Tensor)>) -> Result<Self> {
        crate::allocator::settle();
        let opt = Adam::new(&model.vs, config.lr);
        let mut rng = SplitMix64::new(config.seed);
        let n = data.n_cells();
        let (mut train_blocks, mut validation_blocks) = (Vec::new(), Vec::new());
        let (train_cells, validation_cells) = match &config.blocks {
            None => {
                let mut cells: Vec<usize> = (0..n).collect();
                rng.shuffle(&mut cells);
                let n_val = (n as f64 * config.validation_fraction).floor() as usize;
                (cells[n_val..].to_vec(), cells[..n_val].to_vec())
            }
            Some(b) => {
                let mut blocks: Vec<usize> = (0..n.div_ceil(b.block_cells)).collect();
                rng.shuffle(&mut blocks);
                let n_val = (blocks.len() as f64 * config.validation_fraction).round() as usize;
                validation_blocks = blocks[..n_val].to_vec();
                validation_blocks.sort_unstable();
                train_blocks = blocks[n_val..].to_vec();
                train_blocks.sort_unstable();
                let cells = |bl: &[usize]| bl.iter().flat_map(|&k| Self::block_range(b.block_cells, n, k)).collect();
                (cells(&train_blocks), cells(&validation_blocks))
            }
        };
        let max_epochs = config.max_epochs.unwrap_or_else(|| default_max_epochs(n));
        Ok(Self {
            model,
            replicas: Vec::new(),
            data,
            config,
            max_epochs,
            opt,
            rng,
            train_cells,
            validation_cells,
            train_blocks,
            validation_blocks,
            counts_on_disk: false,
            disk_gene_totals: Vec::new(),
            history: Vec::new(),
            best: None,
            interrupted_epoch_start: None,
            epochs_since_best: 0,
            first_loss: None,
            stopped_early: false,
            resumed_threads: Vec::new(),
            resumed_devices: Vec::new(),
            reference_rows,
        })
    }

    /// Counts read from disk: `data` holds the cells' covariates but no counts
    /// (`CscCounts::empty`); `library` gives their library sizes (for the
    /// checkpoint's fingerprint). Every epoch then reads the blocks it needs
    /// through the `BlockLoader` given to `run_epoch_from`.
    pub fn set_counts_on_disk(&mut self, library: Vec<f32>, gene_totals: Vec<f64>) -> Result<()> {
        if self.config.blocks.is_none() {
            crate::invalid!("counts on disk need block shuffling (settings `blocks`)");
        }
        if library.len() != self.data.n_cells() {
            crate::invalid!("{} library sizes for {} cells", library.len(), self.data.n_cells());
        }
        if gene_totals.len() != self.data.counts.n_genes() {
            crate::invalid!("{} gene totals for {} genes", gene_totals.len(), self.data.counts.n_genes());
        }
        self.data.library = library;
        self.disk_gene_totals = gene_totals;
        self.counts_on_disk = true;
        Ok(())
    }

    pub fn counts_on_disk(&self) -> bool {
        self.counts_on_disk
    }

    /// The cells of block `k` of `n` cells cut into blocks of `block_cells`.
    fn block_range(block_cells: usize, n: usize, k: usize) -> Range<usize> {
        k * block_cells..((k + 1) * block_cells).min(n)
    }

    /// The cells of `blocks`, with their counts, read through `loader` (told
    /// that `next` comes after them) or taken from the counts in memory.
    fn load_blocks(&self, blocks: &[usize], next: &[usize], loader: Option<&mut BlockLoader>) -> Result<Dataset> {
        let (size, n) = (self.config.blocks.as_ref().map_or(1, |b| b.block_cells), self.data.n_cells());
        let ranges_of = |blocks: &[usize]| -> Vec<Range<usize>> { blocks.iter().map(|&k| Self::block_range(size, n, k)).collect() };
        let ranges = ranges_of(blocks);
        let counts = match loader {
            Some(read) => read(&ranges, &ranges_of(next))?,
            None => self.data.counts.select(&ranges),
        };
        let cells: Vec<usize> = ranges.iter().flat_map(|r| r.clone()).collect();
        if counts.n_cells() != cells.len() || counts.n_genes() != self.data.counts.n_genes() {
            crate::invalid!(
                "the counts read for {} cells have {} cells x {} genes, expected {} genes",
                cells.len(),
                counts.n_cells(),
                counts.n_genes(),
                self.data.counts.n_genes()
            );
        }
        Ok(self.data.with_counts(counts, &cells))
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

    /// One pass over the training cells, whose counts are in memory.
    pub fn run_epoch(&mut self, interrupted: &mut dyn FnMut() -> bool) -> Result<EpochStats> {
        self.run_epoch_from(interrupted, None)
    }

    /// One pass over the training cells; with block shuffling, `loader` reads
    /// the blocks (needed when the counts are on disk). `interrupted` is polled
    /// between minibatches; when it says yes, training stops with
    /// Error::Interrupted and the model keeps the weights of the last complete step.
    pub fn run_epoch_from(
        &mut self, interrupted: &mut dyn FnMut() -> bool, loader: Option<&mut BlockLoader<'_>>,
    ) -> Result<EpochStats> {
        // (with early stopping, `finish` restores the best complete epoch anyway)
        let start = (!self.config.early_stopping).then(|| self.weights_snapshot());
        let result = self.run_one_epoch(interrupted, loader);
        if matches!(result, Err(Error::Interrupted)) {
            self.interrupted_epoch_start = start;
        }
        result
    }

    /// A copy of every weight of the model.
    fn weights_snapshot(&self) -> Vec<(String, Tensor)> {
        self.model.vs.variables().into_iter().map(|(k, v)| (k, v.detach().copy())).collect()
    }

    fn run_one_epoch(
        &mut self, interrupted: &mut dyn FnMut() -> bool, mut loader: Option<&mut BlockLoader<'_>>,
    ) -> Result<EpochStats> {
        if self.counts_on_disk && loader.is_none() {
            crate::invalid!("the counts are on disk: training needs their reader");
        }
        let start = Instant::now();
        let epoch = self.history.len();
        let (bs, fused) = (self.config.batch_size, self.fused());
        // one model per shard of a full minibatch (replicas made before the
        // reseeding: making one draws from libtorch's generator)
        let shards = shard_count(bs, shard_threads(&self.model));
        while self.replicas.len() + 1 < shards {
            let replica = self.model.replica();
            let gradients = self.opt.replica_gradients(&replica.vs)?;
            self.replicas.push((replica, gradients));
        }
        let replicas: Vec<(&MrviModel, &Tensor)> = self.replicas.iter().take(shards - 1).map(|(m, g)| (m, g)).collect();
        tch::manual_seed(epoch_seed(self.config.seed, epoch));
        let mut sums = StepSums::default();
        let mut seen = 0;
        // (Assembling the next minibatch on a second thread was tried: on 2 cores it
        // competes with libtorch's threads and made epochs 25% slower.)
        match self.config.blocks.clone() {
            None => {
                let mut order = self.train_cells.clone();
                self.rng.shuffle(&mut order);
                let batches = minibatches(&order, bs);
                let n_steps = batches.len();
                for (step, cells) in batches.iter().enumerate() {
                    if interrupted() {
                        return Err(Error::Interrupted);
                    }
                    sums.kl_weight = self.kl_weight(epoch, step, n_steps);
                    train_step(&self.model, &replicas, &mut self.opt, &self.data, cells, fused, epoch, &mut sums)?;
                    seen += cells.len();
                    note_start_loss(&mut self.first_loss, &sums, seen);
                }
            }
            Some(blocks) => {
                let mut order = self.train_blocks.clone();
                self.rng.shuffle(&mut order);
                let n = self.data.n_cells();
                let buffers: Vec<&[usize]> = order.chunks(blocks.buffer_blocks.max(1)).collect();
                let n_steps: usize = buffers
                    .iter()
                    .map(|buffer| {
                        let cells = buffer.iter().map(|&k| Self::block_range(blocks.block_cells, n, k).len()).sum();
                        minibatches(&vec![0; cells], bs).len()
                    })
                    .sum();
                let mut step = 0;
                // after the last training buffer come the first validation blocks
                let first_validation: &[usize] = self.validation_blocks.chunks(blocks.buffer_blocks.max(1)).next().unwrap_or(&[]);
                for (b, buffer) in buffers.iter().enumerate() {
                    if interrupted() {
                        return Err(Error::Interrupted);
                    }
                    let t = Instant::now();
                    let next = buffers.get(b + 1).copied().unwrap_or(first_validation);
                    let local = self.load_blocks(buffer, next, loader.as_deref_mut())?;
                    let mut cells: Vec<usize> = (0..local.n_cells()).collect();
                    self.rng.shuffle(&mut cells);
                    sums.phase[0] += t.elapsed().as_secs_f64();
                    for part in minibatches(&cells, bs) {
                        if interrupted() {
                            return Err(Error::Interrupted);
                        }
                        sums.kl_weight = self.kl_weight(epoch, step, n_steps);
                        train_step(&self.model, &replicas, &mut self.opt, &local, part, fused, epoch, &mut sums)?;
                        seen += part.len();
                        note_start_loss(&mut self.first_loss, &sums, seen);
                        step += 1;
                    }
                }
            }
        }
        let n_train = self.train_cells.len().max(1) as f64;
        let (v_rec, v_kl) = self.validation_losses(loader)?;
        // the epoch's last step can make the weights non-finite after its loss was
        // computed; a finite loss can have exploded
        if !self.model.weights_finite() || !self.validation_cells.is_empty() && !(v_rec + v_kl).is_finite() {
            return Err(diverged(epoch, "the weights or the validation loss are not finite", &self.opt));
        }
        // (an epoch of fewer cells than START_CELLS: its mean)
        if self.first_loss.is_none() && seen > 0 {
            self.first_loss = Some((sums.reconstruction + sums.kl) / seen as f64);
        }
        let first = self.first_loss.unwrap_or(f64::INFINITY);
        if exploded((sums.reconstruction + sums.kl) / n_train, first) || exploded(v_rec + v_kl, first) {
            return Err(diverged(epoch, "the loss per cell grew far above its starting value", &self.opt));
        }
        let seconds = start.elapsed().as_secs_f64();
        let stats = EpochStats {
            epoch: epoch + 1,
            kl_weight: sums.kl_weight,
            train_reconstruction: sums.reconstruction / n_train,
            train_kl: sums.kl / n_train,
            train_elbo: -(sums.reconstruction + sums.kl) / n_train,
            validation_reconstruction: v_rec,
            validation_kl: v_kl,
            validation_elbo: -(v_rec + v_kl),
            seconds,
            cells_per_second: n_train / seconds,
            seconds_batches: sums.phase[0],
            seconds_forward: sums.phase[1],
            seconds_backward: sums.phase[2],
            seconds_optimizer: sums.phase[3],
        };
        self.history.push(stats.clone());
        self.track_best(&stats);
        Ok(stats)
    }

    /// Mean per-cell reconstruction loss and KL on the validation cells (NaN when
    /// there are none), in evaluation mode with one posterior draw per cell, the
    /// same draws every epoch.
    fn validation_losses(&self, mut loader: Option<&mut BlockLoader<'_>>) -> Result<(f64, f64)> {
        if self.validation_cells.is_empty() {
            return Ok((f64::NAN, f64::NAN));
        }
        let (chunk, fused) = (self.config.batch_size.max(1024), self.fused());
        // the next epoch reseeds the generator for training (epoch_seed)
        tch::manual_seed(validation_seed(self.config.seed));
        let (rec, kl) = match &self.config.blocks {
            None => evaluation_sums(&self.model, &self.data, &self.validation_cells, chunk, fused),
            Some(blocks) => {
                let (mut rec, mut kl) = (0.0, 0.0);
                let buffers: Vec<&[usize]> = self.validation_blocks.chunks(blocks.buffer_blocks.max(1)).collect();
                for (b, buffer) in buffers.iter().enumerate() {
                    let local = self.load_blocks(buffer, buffers.get(b + 1).copied().unwrap_or(&[]), loader.as_deref_mut())?;
                    let cells: Vec<usize> = (0..local.n_cells()).collect();
                    let (r, k) = evaluation_sums(&self.model, &local, &cells, chunk, fused);
                    rec += r;
                    kl += k;
                }
                (rec, kl)
            }
        };
        let n = self.validation_cells.len() as f64;
        Ok((rec / n, kl / n))
    }

    /// Early stopping on the validation ELBO: patience counts only after the KL
    /// warm-up (before it the ELBO's weighting still changes), and a stop waits
    /// for `min_epochs`; the best weights are kept and restored by `finish`.
    fn track_best(&mut self, stats: &EpochStats) {
        let score = if self.validation_cells.is_empty() { stats.train_elbo } else { stats.validation_elbo };
        let better = self.best.as_ref().map_or(true, |(best, _, _)| score > *best);
        if better {
            self.best = Some((score, stats.epoch, self.weights_snapshot()));
            self.epochs_since_best = 0;
        } else if stats.epoch >= self.config.n_epochs_kl_warmup {
            self.epochs_since_best += 1;
            if self.config.early_stopping && self.epochs_since_best >= self.config.patience && stats.epoch >= self.min_epochs() {
                self.stopped_early = true;
            }
        }
    }

    /// The epochs a run trains at least before early stopping may end it.
    pub fn min_epochs(&self) -> usize {
        self.config.min_epochs.unwrap_or(self.max_epochs / 2)
    }

    /// The epoch whose weights `finish` restores.
    pub fn best_epoch(&self) -> Option<usize> {
        self.best.as_ref().map(|b| b.1)
    }

    /// Restore the best weights (when early stopping is on; without it, those
    /// of the last complete epoch when the last one was interrupted) and, when
    /// samples were added, the reference samples' rows; return the model.
    pub fn finish(mut self) -> MrviModel {
        self.model.forget_host_cache();
        let restore = if self.config.early_stopping { self.best.take().map(|(_, _, snapshot)| snapshot) } else { self.interrupted_epoch_start.take() };
        if let Some(snapshot) = restore {
            let mut vars = self.model.vs.variables();
            tch::no_grad(|| {
                for (name, saved) in snapshot {
                    if let Some(v) = vars.get_mut(&name) {
                        v.copy_(&saved);
                    }
                }
            });
        }
        // Adam's weight decay moves them slightly although their gradients are 0
        self.model.restore_sample_rows(&self.reference_rows);
        self.model
    }

    pub fn device_name(&self) -> String {
        backend::device_name(self.model.device())
    }
}

/// For each new sample (codes from base's n_samples on), the reference sample
/// under which the ELBO of its cells (one posterior draw per cell, evaluation
/// mode) is highest.
fn closest_reference_samples(base: &MrviModel, data: &Dataset, n_new: i64) -> Vec<i64> {
    let (s_old, device) = (base.config.n_samples, base.device());
    let cells: Vec<usize> = (0..data.n_cells()).collect();
    let own: Vec<usize> = data.sample.iter().map(|&s| (s - s_old) as usize).collect();
    let mut best = vec![(f64::INFINITY, 0i64); n_new as usize];
    tch::no_grad(|| {
        for r in 0..s_old {
            let mut loss = vec![0f64; n_new as usize];
            for part in cells.chunks(1024) {
                let mut batch = data.batch(part, device, false);
                batch.sample = batch.sample.full_like(r);
                let l = base.losses(&batch, false);
                let per_cell = Vec::<f64>::try_from((l.reconstruction + l.kl).to_kind(tch::Kind::Double).to_device(Device::Cpu))
                    .expect("per-cell losses");
                for (&c, v) in part.iter().zip(per_cell) {
                    loss[own[c]] += v;
                }
            }
            for (b, l) in best.iter_mut().zip(loss) {
                if l < b.0 {
                    *b = (l, r);
                }
            }
        }
    });
    best.into_iter().map(|(_, r)| r).collect()
}

fn check_train_config(config: &TrainConfig) -> Result<()> {
    if config.batch_size < 2 {
        crate::invalid!("batch_size must be at least 2, not {}", config.batch_size);
    }
    if !(0.0..0.5).contains(&config.validation_fraction) {
        crate::invalid!("validation_fraction must be in [0, 0.5), not {}", config.validation_fraction);
    }
    Ok(())
}

fn model_config_matches(c: &ModelConfig, data: &Dataset) -> Result<()> {
    if c.n_genes as usize != data.counts.n_genes() {
        crate::invalid!("model has {} genes, data {}", c.n_genes, data.counts.n_genes());
    }
    if data.sample.iter().any(|&s| s < 0 || s >= c.n_samples) {
        crate::invalid!("sample codes outside the model's samples");
    }
    // each covariate's codes within its own levels
    let levels = c.factor_levels();
    let k = levels.len();
    if data.n_factors != k || data.site.len() != k * data.n_cells() {
        crate::invalid!("the data have {} nuisance factors, the model {k}", data.n_factors);
    }
    let starts: Vec<i64> = levels.iter().scan(0, |acc, &n| { *acc += n; Some(*acc - n) }).collect();
    if data.site.chunks(k).any(|codes| codes.iter().zip(&starts).zip(&levels).any(|((&b, &lo), &n)| b < lo || b >= lo + n)) {
        crate::invalid!("site codes outside the model's levels");
    }
    if data.n_continuous as i64 != c.n_continuous || data.continuous.len() != data.n_continuous * data.n_cells() {
        crate::invalid!("the data have {} continuous covariates, the model {}", data.n_continuous, c.n_continuous);
    }
    if data.continuous.iter().any(|v| !v.is_finite()) {
        crate::invalid!("continuous covariates must be finite");
    }
    if c.n_latent < 1 || c.dim_u() < 1 {
        crate::invalid!("n_latent must be at least 1");
    }
    // cells without labels (samples added later) use the mixture weights unbiased
    if let Some(l) = &data.label {
        if l.iter().any(|&v| v < 0 || v >= c.n_labels) {
            crate::invalid!("label codes outside the model's {} labels", c.n_labels);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::nn::{self, OptimizerConfig};
    use tch::Kind;

    /// Two variables (no random numbers: unit tests run in parallel) and inputs
    /// that make the gradient norm far exceed the clipping threshold at first.
    fn store() -> (nn::VarStore, Tensor) {
        let vs = nn::VarStore::new(Device::Cpu);
        let root = vs.root();
        let w = root.var("w", &[3, 4], nn::Init::Const(0.0));
        let _ = root.var("b", &[4], nn::Init::Const(0.5));
        tch::no_grad(|| w.shallow_clone().copy_(&(Tensor::arange(12, (Kind::Float, Device::Cpu)).view([3, 4]).sin())));
        let x = (Tensor::arange(24, (Kind::Float, Device::Cpu)).view([8, 3]) * 0.7).cos() * 10.0;
        (vs, x)
    }

    fn loss(vs: &nn::VarStore, x: &Tensor) -> Tensor {
        let v = vs.variables();
        (x.matmul(&v["w"]) + &v["b"] - 1.0).square().sum(Kind::Float)
    }

    #[test]
    fn adam_matches_libtorch_with_clipping_and_weight_decay() {
        let (ours_vs, x) = store();
        let (theirs_vs, _) = store();
        let mut ours = Adam::new(&ours_vs, 0.05);
        ours.weight_decay = 0.01; // large enough to matter
        let first_norm = {
            let l = loss(&ours_vs, &x);
            let g = Tensor::run_backward(&[l], &[&ours_vs.variables()["w"]], false, false);
            f64::try_from(g[0].norm()).unwrap()
        };
        assert!(first_norm > 10.0 * MAX_GRAD_NORM, "the test must clip: {first_norm}");
        let mut theirs = nn::Adam { wd: 0.01, eps: ADAM_EPS, ..Default::default() }.build(&theirs_vs, 0.05).unwrap();
        for _ in 0..30 {
            ours.zero_grad();
            loss(&ours_vs, &x).backward();
            ours.step(MAX_GRAD_NORM).unwrap();
            theirs.zero_grad();
            loss(&theirs_vs, &x).backward();
            theirs.clip_grad_norm(MAX_GRAD_NORM);
            theirs.step();
        }
        let (a, b) = (ours_vs.variables(), theirs_vs.variables());
        for name in ["w", "b"] {
            let diff = f64::try_from((&a[name] - &b[name]).abs().max()).unwrap();
            assert!(diff < 1e-4, "{name}: {diff}");
        }
        // the one-pass CPU update and the libtorch operations agree
        let (host_vs, _) = store();
        let (tensor_vs, _) = store();
        let (mut host, mut tensors) = (Adam::new(&host_vs, 0.05), Adam::new(&tensor_vs, 0.05));
        for _ in 0..30 {
            for (opt, vs) in [(&mut host, &host_vs), (&mut tensors, &tensor_vs)] {
                opt.zero_grad();
                loss(vs, &x).backward();
                opt.steps += 1;
            }
            let t = host.steps as f64;
            let (bc1, bc2) = (1.0 - Adam::BETA1.powf(t), 1.0 - Adam::BETA2.powf(t));
            host.step_host(MAX_GRAD_NORM, bc1, bc2).unwrap();
            tensors.step_tensors(MAX_GRAD_NORM, bc1, bc2).unwrap();
        }
        for name in ["w", "b"] {
            let diff = f64::try_from((&host_vs.variables()[name] - &tensor_vs.variables()[name]).abs().max()).unwrap();
            assert!(diff < 1e-5, "{name}: {diff}");
        }
        // the gradients of a backward pass land in the flat buffer (they stay its
        // views), and so do a replica's in its own
        ours.zero_grad();
        loss(&ours_vs, &x).backward();
        let vars = ours_vs.variables();
        let grads = Tensor::cat(&[vars["b"].grad().view([-1]), vars["w"].grad().view([-1])], 0);
        assert!(f64::try_from(grads.abs().sum(Kind::Double)).unwrap() > 0.0);
        assert!(grads.equal(&ours.flat_grad), "the gradients are not the flat buffer's");
        let (replica_vs, _) = store();
        for (name, mut v) in replica_vs.variables() {
            tch::no_grad(|| v.set_data(&vars[&name]));
        }
        let replica_grads = ours.replica_gradients(&replica_vs).unwrap();
        loss(&replica_vs, &x).backward();
        ours.add_gradients(&replica_grads).unwrap();
        assert!((grads * 2.0).equal(&ours.flat_grad), "a replica's gradients are not in its buffer");
        // the optimiser updated the model's own variables, and its moments are views
        assert_eq!(ours.params.len(), 2);
        assert!(f64::try_from(ours.params[0].2.abs().sum(Kind::Double)).unwrap() > 0.0);
    }
}
