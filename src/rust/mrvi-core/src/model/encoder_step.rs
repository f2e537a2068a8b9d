//! The encoder ([Encoder]) in a training step on the CPU.
//!
//! The first layer's product with the minibatch ([B, G] x [G, H]) stays in
//! libtorch's autograd. The rest (two sample-conditional LayerNorms with ReLU,
//! the sample embedding, the mean and scale heads, the softplus) is ~20 small
//! operations each way through autograd, whose dispatch at minibatch size costs
//! more than their arithmetic. Here the element-wise parts are row passes on
//! the host (rows in fixed groups on libtorch's OpenMP team), and the products
//! with the [H, H] and [L, H] weights are libtorch products outside autograd.
//! The backward takes the gradients of mean and sd, adds the parameters' to
//! their `.grad` and returns the first layer's through the surrogate
//! sum(a1 * d_a1), whose gradient is exactly d_a1.

use super::encoder::Encoder;
use super::host_floats as host;
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

/// rows per group of work
const ROWS_PER_ITEM: usize = 32;
/// LayerNorm's epsilon, as in [Encoder::forward]
const NORM_EPS: f32 = 1e-5;
/// added to the softplus, as in [Encoder::forward]
const SD_FLOOR: f32 = 1e-5;

/// The posterior's mean and sd ([B, L] row-major) and what the backward needs.
pub struct EncoderStep<'a> {
    pub mean: Vec<f32>,
    pub sd: Vec<f32>,
    encoder: &'a Encoder,
    tape: Tape,
}

struct Tape {
    sample: Vec<usize>,
    n_hidden: usize,
    /// the first layer's output, with its graph
    a1: Tensor,
    layer1: NormTape,
    /// layer 1's output as a tensor, the second layer's input
    input2: Tensor,
    layer2: NormTape,
    /// the heads' input, h = relu(layer 2) + embedding [B, H]
    h: Tensor,
    /// the scale head's output before the softplus [B, L]
    scale_logits: Vec<f32>,
}

/// One conditional LayerNorm + ReLU over the minibatch: the normalised rows,
/// their 1 / sd, and the output.
struct NormTape {
    normalised: Vec<f32>,
    inv_sd: Vec<f32>,
    out: Vec<f32>,
}

/// The layer's gradients: the input's [B, H] and, per row, those of the
/// row's sample's scale and shift (summed per sample by the caller).
struct NormGradients {
    input: Vec<f32>,
    scale: Vec<f32>,
    shift: Vec<f32>,
}

impl<'a> EncoderStep<'a> {
    /// The forward pass on `log_counts` [B, G] with sample codes `sample` [B].
    pub fn new(encoder: &'a Encoder, log_counts: &Tensor, sample: &Tensor) -> Self {
        let h_dim = encoder.n_hidden as usize;
        let sample: Vec<usize> = Vec::<i64>::try_from(sample).expect("sample codes").into_iter().map(|s| s as usize).collect();
        let a1 = encoder.lin1.forward(log_counts);
        let layer1 = norm_forward(&host(&a1), &host(&encoder.scale1), &host(&encoder.shift1), &sample, h_dim);
        let input2 = rows_tensor(&layer1.out, h_dim);
        let a2 = affine(&input2, &encoder.lin2);
        let layer2 = norm_forward(&host(&a2), &host(&encoder.scale2), &host(&encoder.shift2), &sample, h_dim);
        let embedding = host(&encoder.sample_embedding);
        let mut h = layer2.out.clone();
        for (row, &s) in h.chunks_exact_mut(h_dim).zip(&sample) {
            row.iter_mut().zip(&embedding[s * h_dim..(s + 1) * h_dim]).for_each(|(v, e)| *v += e);
        }
        let h = rows_tensor(&h, h_dim);
        let mean = host(&affine(&h, &encoder.mean));
        let scale_logits = host(&affine(&h, &encoder.scale));
        let sd = scale_logits.iter().map(|&v| softplus(v) + SD_FLOOR).collect();
        Self { mean, sd, encoder, tape: Tape { sample, n_hidden: h_dim, a1, layer1, input2, layer2, h, scale_logits } }
    }

    /// Adds the gradients of the encoder's parameters past its first layer to
    /// their `.grad`, given those of mean and sd ([B, L] row-major); returns a
    /// scalar whose backward adds the first layer's (and, on the first step,
    /// when a `.grad` does not exist yet, the others').
    pub fn backward(self, d_mean: &[f32], d_sd: &[f32]) -> Tensor {
        let encoder = self.encoder;
        let Tape { sample, n_hidden: h_dim, a1, layer1, input2, layer2, h, scale_logits } = self.tape;
        let l = d_mean.len() / sample.len();
        // sd = softplus(s) + floor: d s = d sd * sigmoid(s)
        let d_scale_logits: Vec<f32> = d_sd.iter().zip(&scale_logits).map(|(&d, &s)| d * sigmoid(s)).collect();
        let (d_mean, d_scale_logits) = (rows_tensor(d_mean, l), rows_tensor(&d_scale_logits, l));
        let mut surrogate = affine_backward(&encoder.mean, &d_mean, &h);
        surrogate.extend(affine_backward(&encoder.scale, &d_scale_logits, &h));
        let d_h = host(&(d_mean.mm(&encoder.mean.ws.detach()) + d_scale_logits.mm(&encoder.scale.ws.detach())));
        surrogate.extend(add_per_sample(&encoder.sample_embedding, &d_h, &sample, h_dim));
        let g2 = norm_backward(&layer2, &d_h, &host(&encoder.scale2), &sample, h_dim);
        surrogate.extend(add_per_sample(&encoder.scale2, &g2.scale, &sample, h_dim));
        surrogate.extend(add_per_sample(&encoder.shift2, &g2.shift, &sample, h_dim));
        let d_a2 = rows_tensor(&g2.input, h_dim);
        surrogate.extend(affine_backward(&encoder.lin2, &d_a2, &input2));
        let d_out1 = host(&d_a2.mm(&encoder.lin2.ws.detach()));
        let g1 = norm_backward(&layer1, &d_out1, &host(&encoder.scale1), &sample, h_dim);
        surrogate.extend(add_per_sample(&encoder.scale1, &g1.scale, &sample, h_dim));
        surrogate.extend(add_per_sample(&encoder.shift1, &g1.shift, &sample, h_dim));
        let d_a1 = rows_tensor(&g1.input, h_dim);
        surrogate.into_iter().fold(a1.reshape([-1]).dot(&d_a1.view([-1])), |acc, t| acc + t)
    }
}

/// [B * H] host floats as a [B, H] tensor (a copy).
fn rows_tensor(values: &[f32], width: usize) -> Tensor {
    Tensor::from_slice(values).view([-1, width as i64])
}

/// x W^T + b outside autograd.
fn affine(x: &Tensor, layer: &nn::Linear) -> Tensor {
    let w = layer.ws.detach();
    match &layer.bs {
        Some(b) => b.detach().addmm(x, &w.tr()),
        None => x.mm(&w.tr()),
    }
}

/// Adds the gradients of `layer`'s weight (d_out^T x) and bias (d_out summed
/// over rows) to their `.grad`; the surrogate terms where none exists yet.
fn affine_backward(layer: &nn::Linear, d_out: &Tensor, x: &Tensor) -> Vec<Tensor> {
    let mut terms: Vec<Tensor> = add_tensor_to_grad(&layer.ws, &d_out.tr().mm(x)).into_iter().collect();
    if let Some(b) = &layer.bs {
        terms.extend(add_tensor_to_grad(b, &d_out.sum_dim_intlist(0, false, Kind::Float)));
    }
    terms
}

/// As `super::add_to_grad`, for a gradient held in a tensor.
fn add_tensor_to_grad(tensor: &Tensor, grad: &Tensor) -> Option<Tensor> {
    if !tensor.requires_grad() {
        return None;
    }
    let mut existing = tensor.grad();
    if existing.defined() {
        let _ = existing.f_add_(grad).expect("a gradient of the parameter's shape");
        return None;
    }
    Some((tensor * grad.detach()).sum(Kind::Float))
}

/// Adds per-row gradients [B, H] of a per-sample parameter [S, H] (row r's to
/// the row of its sample), summed in row order.
fn add_per_sample(parameter: &Tensor, rows: &[f32], sample: &[usize], h_dim: usize) -> Option<Tensor> {
    let mut grad = vec![0f32; parameter.numel()];
    for (row, &s) in rows.chunks_exact(h_dim).zip(sample) {
        grad[s * h_dim..(s + 1) * h_dim].iter_mut().zip(row).for_each(|(g, r)| *g += r);
    }
    super::add_to_grad(parameter, &grad)
}

fn softplus(v: f32) -> f32 {
    // as libtorch's softplus (beta 1, threshold 20): linear above the threshold
    if v > 20.0 {
        v
    } else {
        v.exp().ln_1p()
    }
}

fn sigmoid(v: f32) -> f32 {
    // softplus' derivative: linear (1) above the threshold, as libtorch's backward
    if v > 20.0 {
        1.0
    } else {
        1.0 / (1.0 + (-v).exp())
    }
}

/// Sum of a row in 8 lanes, added in a fixed order.
fn lane_sum(values: impl Iterator<Item = f32>) -> f32 {
    let mut lanes = [0f32; 8];
    for (i, v) in values.enumerate() {
        lanes[i % 8] += v;
    }
    lanes.iter().sum()
}

/// LayerNorm (no affine parameters), then each row's sample's scale and shift,
/// then ReLU, over `input` [B, H]; rows in groups on the OpenMP team.
fn norm_forward(input: &[f32], scale: &[f32], shift: &[f32], sample: &[usize], h_dim: usize) -> NormTape {
    let n = sample.len();
    let mut tape = NormTape { normalised: vec![0.0; n * h_dim], inv_sd: vec![0.0; n], out: vec![0.0; n * h_dim] };
    let block = ROWS_PER_ITEM * h_dim;
    let mut items: Vec<_> = tape
        .normalised
        .chunks_mut(block)
        .zip(tape.out.chunks_mut(block))
        .zip(tape.inv_sd.chunks_mut(ROWS_PER_ITEM))
        .enumerate()
        .collect();
    crate::openmp::for_each_mut(&mut items, |(item, ((normalised, out), inv_sd))| {
        let first = *item * ROWS_PER_ITEM;
        for (r, ((xhat, out), inv_sd)) in normalised.chunks_exact_mut(h_dim).zip(out.chunks_exact_mut(h_dim)).zip(inv_sd.iter_mut()).enumerate() {
            let row = first + r;
            let a = &input[row * h_dim..(row + 1) * h_dim];
            let s = sample[row] * h_dim;
            let (scale, shift) = (&scale[s..s + h_dim], &shift[s..s + h_dim]);
            let mean = lane_sum(a.iter().copied()) / h_dim as f32;
            let var = lane_sum(a.iter().map(|&v| (v - mean) * (v - mean))) / h_dim as f32;
            *inv_sd = 1.0 / (var + NORM_EPS).sqrt();
            for j in 0..h_dim {
                xhat[j] = (a[j] - mean) * *inv_sd;
                let c = xhat[j] * scale[j] + shift[j];
                // ReLU that keeps a NaN a NaN
                out[j] = if c <= 0.0 { 0.0 } else { c };
            }
        }
    });
    tape
}

/// The gradients of [norm_forward] given its output's `d_out` [B, H].
fn norm_backward(tape: &NormTape, d_out: &[f32], scale: &[f32], sample: &[usize], h_dim: usize) -> NormGradients {
    let n = sample.len();
    let mut g = NormGradients { input: vec![0.0; n * h_dim], scale: vec![0.0; n * h_dim], shift: vec![0.0; n * h_dim] };
    let block = ROWS_PER_ITEM * h_dim;
    let mut items: Vec<_> = g.input.chunks_mut(block).zip(g.scale.chunks_mut(block)).zip(g.shift.chunks_mut(block)).enumerate().collect();
    crate::openmp::for_each_mut(&mut items, |(item, ((d_in, d_scale), d_shift))| {
        let first = *item * ROWS_PER_ITEM;
        let rows = d_in.chunks_exact_mut(h_dim).zip(d_scale.chunks_exact_mut(h_dim)).zip(d_shift.chunks_exact_mut(h_dim));
        for (r, ((d_in, d_scale), d_shift)) in rows.enumerate() {
            let row = first + r;
            let range = row * h_dim..(row + 1) * h_dim;
            let (xhat, out, d_out) = (&tape.normalised[range.clone()], &tape.out[range.clone()], &d_out[range]);
            let s = sample[row] * h_dim;
            let scale = &scale[s..s + h_dim];
            // d_in holds d xhat until the last loop
            for j in 0..h_dim {
                let d_c = if out[j] > 0.0 { d_out[j] } else { 0.0 };
                d_shift[j] = d_c;
                d_scale[j] = d_c * xhat[j];
                d_in[j] = d_c * scale[j];
            }
            let mean_d = lane_sum(d_in.iter().copied()) / h_dim as f32;
            let mean_dx = lane_sum(d_in.iter().zip(xhat).map(|(&d, &x)| d * x)) / h_dim as f32;
            let inv_sd = tape.inv_sd[row];
            for j in 0..h_dim {
                d_in[j] = inv_sd * (d_in[j] - mean_d - xhat[j] * mean_dx);
            }
        }
    });
    g
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::encoder::Encoder;
    use tch::{nn::VarStore, Device};

    /// Every output and parameter gradient against libtorch's autograd of
    /// [Encoder::forward], away from the parameters' start: on a first step
    /// (no `.grad` yet) and on a later one (added in place).
    #[test]
    fn matches_autograd() {
        tch::manual_seed(11);
        let (b, g, h, s, l) = (75i64, 40i64, 24i64, 5i64, 6i64);
        let vs = VarStore::new(Device::Cpu);
        let encoder = Encoder::new(vs.root() / "encoder", g, h, s, l);
        tch::no_grad(|| {
            for (_, mut v) in vs.variables() {
                let _ = v.f_add_(&(v.randn_like() * 0.3)).unwrap();
            }
        });
        let x = (Tensor::rand([b, g], (Kind::Float, Device::Cpu)) * 3.0).log1p();
        let sample = Tensor::randint(s, [b], (Kind::Int64, Device::Cpu));
        let d_mean = Tensor::randn([b, l], (Kind::Float, Device::Cpu));
        let d_sd = Tensor::randn([b, l], (Kind::Float, Device::Cpu));
        let close = |a: &[f32], b: &[f32], what: &str| {
            let scale = b.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
            let worst = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
            assert!(worst <= 2e-5 * scale, "{what}: largest difference {worst} (scale {scale})");
        };
        let grads = || -> Vec<(String, Vec<f32>)> {
            let mut v: Vec<_> = vs.variables().into_iter().map(|(k, v)| (k, host(&v.grad()))).collect();
            v.sort_by(|a, b| a.0.cmp(&b.0));
            v
        };
        let host_step = || {
            let step = EncoderStep::new(&encoder, &x, &sample);
            let (mean, sd) = (step.mean.clone(), step.sd.clone());
            step.backward(&host(&d_mean), &host(&d_sd)).backward();
            (mean, sd)
        };
        let (first_mean, first_sd) = host_step();
        let first = grads();
        for (_, v) in vs.variables() {
            let _ = v.grad().zero_();
        }
        let q = encoder.forward(&x, &sample);
        (q.mean.dot_all(&d_mean) + q.sd.dot_all(&d_sd)).backward();
        let reference = grads();
        for (_, v) in vs.variables() {
            let _ = v.grad().zero_();
        }
        let (mean, sd) = host_step();
        assert_eq!((&mean, &sd), (&first_mean, &first_sd));
        close(&mean, &host(&q.mean), "mean");
        close(&sd, &host(&q.sd), "sd");
        assert_eq!(reference.len(), 13);
        for (((name, expected), (_, got)), (_, got_first)) in reference.iter().zip(grads()).zip(&first) {
            close(&got, expected, name);
            close(got_first, expected, name);
        }
    }

    trait DotAll {
        fn dot_all(&self, other: &Tensor) -> Tensor;
    }
    impl DotAll for Tensor {
        fn dot_all(&self, other: &Tensor) -> Tensor {
            self.reshape([-1]).dot(&other.reshape([-1]))
        }
    }
}
