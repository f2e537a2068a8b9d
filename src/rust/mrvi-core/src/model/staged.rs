//! The CPU training pass between the encoder and the decoder's output layer on
//! the host ([MrviModel::step_terms]): the draw of u, the KL term
//! ([prior_step]) and z, for either flavour (the attention flavour's blocks
//! with [attention_step]). Through libtorch these are dozens of operations on
//! [B, 10]-sized tensors each way, whose dispatch and autograd bookkeeping cost
//! far more than their arithmetic.
//!
//! No autograd pass goes through them: the encoder ends in the posterior's mean
//! and sd ([super::encoder_step]), the output layer gives the objective's
//! gradient with respect to its traced input (z, or z + y for the attention
//! decoder) on the host ([super::output_layer::OutputLayer::host_gradients]),
//! and [Staged::backward] takes it back through the host parts to the mean and
//! sd, adding the parameters' gradients on the way ([HostGradients]).

use super::output_layer::OutputLayer;
use super::{attention_step, cpu_floats, host_floats, prior_step, Batch, Decoder, Draws, MrviModel, PriorParams, SampleEffect};
use super::host_gradients::HostGradients;
use super::products::{self, Engine};
use tch::nn::Module;
use tch::Tensor;

/// The draw of u and the KL term on the host, and the mixture prior's
/// parameters (logits, means, log scales) when it is one.
pub(super) struct HostPrior {
    /// the draw u = mean + sd * noise [B, dim_u], and its noise
    u: Vec<f32>,
    noise: Vec<f32>,
    step: prior_step::PriorStep,
    parameters: Option<[Tensor; 3]>,
}

impl HostPrior {
    /// From the gradient of the objective with respect to u (without the KL
    /// term's) and the KL terms' factor `kl_scale`: the gradients with respect
    /// to the posterior's mean and sd; the prior's parameters' go to `sink`.
    fn posterior_gradients(&self, du: &[f32], kl_scale: f32, sink: &mut HostGradients) -> (Vec<f32>, Vec<f32>) {
        let (prior, s) = (&self.step, kl_scale);
        let mut d_mean = vec![0f32; du.len()];
        let mut d_sd = vec![0f32; du.len()];
        for i in 0..du.len() {
            let du = du[i] + s * prior.d_u[i];
            d_mean[i] = du + s * prior.d_mean[i];
            d_sd[i] = du * self.noise[i] + s * prior.d_sd[i];
        }
        if let (Some(tensors), Some(grads)) = (&self.parameters, &prior.d_prior) {
            for (t, g) in tensors.iter().zip(grads) {
                let g: Vec<f32> = g.iter().map(|v| v * s).collect();
                sink.add_slice(t, &g);
            }
        }
        (d_mean, d_sd)
    }
}

/// What [Staged::backward] needs of a staged pass.
pub(super) enum Staged {
    /// z = u + A_s sg(u) + a_s: the prior's step (with u) and the cells' samples
    Linear { prior: HostPrior, sample: Vec<usize> },
    Attention(Box<AttentionStaged>),
}

/// The attention flavour's pass: z = base(u) + eps(u, s) with the penalty
/// ||eps||^2 / 2, and the logits read z + y(z, site).
pub(super) struct AttentionStaged {
    prior: HostPrior,
    /// u and eps, values [B, dim_u] and [B, L]
    u: Tensor,
    eps: Tensor,
    sample_block: (attention_step::BlockStep, attention_step::Tape),
    decoder_block: (attention_step::BlockStep, attention_step::Tape),
}

impl Staged {
    /// The backward through the host parts from `d_traced`, the objective's
    /// gradient with respect to the output layer's traced input ([B, L]: z, or
    /// z + y); returns the objective's gradient with respect to the posterior's
    /// mean and sd. The parameters' gradients go to `sink`.
    pub(super) fn backward(self, model: &MrviModel, kl_scale: f64, d_traced: Tensor, sink: &mut HostGradients) -> (Vec<f32>, Vec<f32>) {
        let s = kl_scale as f32;
        match self {
            Staged::Linear { prior, sample } => {
                let SampleEffect::Linear { map, shift } = &model.sample_effect else { unreachable!("a linear pass") };
                let dz = host_floats(&d_traced);
                let l = model.config.n_latent as usize;
                // z = u + A_s sg(u) + a_s: dA_s = dz u^T, da_s = dz, du = dz
                let mut d_map = vec![0f32; sample.len() * l * l];
                for ((d_map, dz), u) in d_map.chunks_exact_mut(l * l).zip(dz.chunks_exact(l)).zip(prior.u.chunks_exact(l)) {
                    for (row, &d) in d_map.chunks_exact_mut(l).zip(dz) {
                        row.iter_mut().zip(u).for_each(|(a, &v)| *a = d * v);
                    }
                }
                sink.add_rows(map, &sample, &d_map, l * l);
                sink.add_rows(shift, &sample, &dz, l);
                prior.posterior_gradients(&dz, s, sink)
            }
            Staged::Attention(staged) => {
                let SampleEffect::Attention { base, .. } = &model.sample_effect else { unreachable!("an attention pass") };
                let AttentionStaged { prior, u, eps, sample_block, decoder_block } = *staged;
                // the logits read z + y(z): both take the traced input's gradient
                let (step, tape) = &decoder_block;
                let g = step.backward(tape, &d_traced);
                step.add_gradients(tape, &g, sink);
                let dz = &d_traced + &g.input;
                // z = base(u) + eps, and the penalty ||eps||^2 / 2 in the KL term
                let (du, d_weight, d_bias) = products::linear_gradients_on(Engine::Default, &dz, &u, &base.ws.detach(), base.bs.is_some());
                sink.add(&base.ws, &d_weight);
                if let (Some(bias), Some(d_bias)) = (&base.bs, d_bias) {
                    sink.add(bias, &d_bias);
                }
                let (step, tape) = &sample_block;
                let g = step.backward(tape, &(&dz + &eps * kl_scale));
                step.add_gradients(tape, &g, sink);
                // u's gradient: z's part and the block's
                prior.posterior_gradients(&host_floats(&(du + &g.input)), s, sink)
            }
        }
    }
}

impl MrviModel {
    /// The draw of u and the KL term on the host.
    fn host_prior(&self, batch: &Batch, mean: &[f32], sd: &[f32], noise: &Tensor) -> HostPrior {
        let noise = host_floats(noise);
        let d = self.config.dim_u() as usize;
        let (step, parameters) = match &self.prior {
            PriorParams::Normal => (prior_step::normal(mean, sd, d), None),
            PriorParams::Mog { logits, means, log_scales } => {
                let labels = batch.label.as_ref().filter(|_| self.config.n_labels > 0).map(|l| Vec::<i64>::try_from(l).expect("label codes"));
                let step = prior_step::mixture(mean, sd, &noise, d, &host_floats(logits), labels.as_deref(), &host_floats(means), &host_floats(log_scales));
                (step, Some([logits.shallow_clone(), means.shallow_clone(), log_scales.shallow_clone()]))
            }
        };
        let u = mean.iter().zip(sd).zip(&noise).map(|((&m, &s), &e)| m + s * e).collect();
        HostPrior { u, noise, step, parameters }
    }

    /// The pass from the posterior's `mean` and `sd` ([B, dim_u], row-major) to
    /// the decoder's output layer with the host parts: the layer, the per-cell
    /// prior terms (values) and what the backward needs.
    pub(super) fn forward_staged(&self, batch: &Batch, mean: &[f32], sd: &[f32], draws: &Draws) -> (OutputLayer, Tensor, Staged) {
        match &self.sample_effect {
            SampleEffect::Linear { map, shift } => {
                let prior = self.host_prior(batch, mean, sd, &draws.noise);
                let u = &prior.u;
                let sample: Vec<usize> = Vec::<i64>::try_from(&batch.sample).expect("sample codes").iter().map(|&s| s as usize).collect();
                let l = self.config.n_latent as usize;
                // SAFETY: the model's parameters are contiguous CPU float tensors (the staged pass runs on the CPU).
                let (a, shift_values) = unsafe { (cpu_floats(map), cpu_floats(shift)) };
                let mut z = vec![0f32; u.len()];
                for (r, &s) in sample.iter().enumerate() {
                    let (u, z) = (&u[r * l..(r + 1) * l], &mut z[r * l..(r + 1) * l]);
                    for i in 0..l {
                        let row = &a[(s * l + i) * l..(s * l + i + 1) * l];
                        z[i] = u[i] + row.iter().zip(u).map(|(&a, &v)| a * v).sum::<f32>() + shift_values[s * l + i];
                    }
                }
                let z = Tensor::from_slice(&z).view([sample.len() as i64, l as i64]);
                let output = self.output_layer(&z, &batch.site, batch.continuous.as_ref(), draws.dropout.as_ref());
                let kl = Tensor::from_slice(&prior.step.kl);
                (output, kl, Staged::Linear { prior, sample })
            }
            SampleEffect::Attention { base, block, embedding, hidden_term } => {
                let Decoder::Attention { out, block: decoder_block, embedding: nuisance } = &self.decoder else {
                    unreachable!("the attention flavour's decoder")
                };
                // the draw of u and the KL term, then the blocks on the host
                let prior = self.host_prior(batch, mean, sd, &draws.noise);
                let u = Tensor::from_slice(&prior.u).view(draws.noise.size().as_slice());
                let step = attention_step::BlockStep::new(block);
                let term = hidden_term.as_ref().map(|t| t.index_select(0, &batch.sample));
                let (eps, tape) = step.forward(&u, &embedding.index_select(0, &batch.sample), term.as_ref());
                let sample_block = (step, tape);
                let penalty = eps.square().sum_dim_intlist(1, false, eps.kind()) * 0.5;
                let z = tch::no_grad(|| base.forward(&u) + &eps);
                let continuous = batch.continuous.as_ref().zip(self.continuous.as_ref());
                let (context, logit_term) = Self::nuisance_context(nuisance, &batch.site, continuous);
                let step = attention_step::BlockStep::new(decoder_block);
                let (y, tape) = step.forward(&z, &context, None);
                let output = Self::attention_output(out, &z + &y, logit_term);
                let kl = Tensor::from_slice(&prior.step.kl).to_device(u.device()) + penalty;
                let staged = AttentionStaged { prior, u, eps, sample_block, decoder_block: (step, tape) };
                (output, kl, Staged::Attention(Box::new(staged)))
            }
        }
    }
}
