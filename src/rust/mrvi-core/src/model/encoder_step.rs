//! The encoder's training pass on the host ([super::MrviModel::step_terms] on
//! the CPU): its first product (log1p(x) [B, G] x [G, H], the step's largest)
//! stays with oneDNN or MKL ([products]), and what follows it on [B, H] —
//! two sample-conditional normalisations, ReLUs, the second layer, the sample
//! embedding, the mean and scale heads, softplus — runs here in plain loops
//! with its gradients in closed form. Through libtorch these were ~20 small
//! operations forward and ~30 in autograd's backward, ~0.5 ms of dispatch and
//! bookkeeping per 128-cell shard (about an eighth of a step) for ~5 million
//! multiply-adds.
//!
//! The pass returns the posterior's mean and sd (values): the rest of the step
//! (the draw of u, the KL term, z, the decoder: [super::staged]) gives the
//! objective's gradient with respect to them, and [EncoderTape::backward]
//! carries that on to the encoder's weights. Same arithmetic as [Encoder::forward] (LayerNorm without affine
//! parameters, eps 1e-5; softplus as libtorch's, linear above 20); sums in a
//! different order, so values agree to rounding.

use super::encoder::Encoder;
use super::host_gradients::HostGradients;
use super::{cpu_floats, products};
use tch::Tensor;

/// LayerNorm's eps, as [Encoder]'s
const NORM_EPS: f32 = 1e-5;
/// added to softplus for the posterior's sd, as [Encoder]'s
const SD_FLOOR: f32 = 1e-5;
/// libtorch's softplus returns its input above this
const SOFTPLUS_THRESHOLD: f32 = 20.0;
/// The engine of the small products (the second layer's, the heads'): through
/// oneDNN, its layout conversions cost more than its kernels save (epochs 2-4%
/// slower, AMD EPYC Zen 5), so they stay with libtorch's default.
const SMALL: products::Engine = products::Engine::Default;

/// What the backward pass needs of a forward pass.
pub struct EncoderTape {
    /// log1p(x) [B, G], the first layer's input ([products::prepare_input])
    input: Tensor,
    sample: Vec<usize>,
    /// per layer: the normalised values [B, H] and 1 / sd per cell
    normed: [Vec<f32>; 2],
    inv_sd: [Vec<f32>; 2],
    /// ReLU outputs [B, H] of the first layer (the second layer's input) and of the second
    relu1: Tensor,
    relu2: Vec<f32>,
    /// relu2 + the sample embedding [B, H], the heads' input
    embedded: Tensor,
    /// the scale head's output before softplus [B, L]
    scale_in: Vec<f32>,
    /// the posterior's mean and sd [B, L], row-major
    pub mean: Vec<f32>,
    pub sd: Vec<f32>,
}

fn floats(t: &Tensor) -> &[f32] {
    // SAFETY: the encoder's parameters and this module's tensors are contiguous
    // float tensors on the CPU (the host pass runs on the CPU only) that
    // outlive the borrow.
    unsafe { cpu_floats(t) }
}

/// sum_j f(j) over 0..n in 16 lanes (a serial sum of floats does not vectorise).
#[inline(always)]
fn lane_sum(n: usize, f: impl Fn(usize) -> f32) -> f32 {
    const LANES: usize = 16;
    let mut acc = [0f32; LANES];
    let full = n / LANES * LANES;
    for base in (0..full).step_by(LANES) {
        for (k, a) in acc.iter_mut().enumerate() {
            *a += f(base + k);
        }
    }
    (full..n).map(f).sum::<f32>() + acc.iter().sum::<f32>()
}

/// `layer` ([B, H]) -> LayerNorm, per-sample scale and shift, ReLU: the
/// normalised values, 1 / sd per row, and the ReLU's output.
fn cond_norm_relu(layer: &[f32], sample: &[usize], scale: &[f32], shift: &[f32], h: usize) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let mut normed = vec![0f32; layer.len()];
    let mut out = vec![0f32; layer.len()];
    let mut inv_sds = Vec::with_capacity(sample.len());
    for (r, &s) in sample.iter().enumerate() {
        let row = &layer[r * h..(r + 1) * h];
        let mean = lane_sum(h, |j| row[j]) / h as f32;
        let var = lane_sum(h, |j| (row[j] - mean) * (row[j] - mean)) / h as f32;
        let inv_sd = 1.0 / (var + NORM_EPS).sqrt();
        inv_sds.push(inv_sd);
        let (sc, sh) = (&scale[s * h..(s + 1) * h], &shift[s * h..(s + 1) * h]);
        for j in 0..h {
            let n = (row[j] - mean) * inv_sd;
            normed[r * h + j] = n;
            out[r * h + j] = (n * sc[j] + sh[j]).max(0.0);
        }
    }
    (normed, inv_sds, out)
}

fn tensor(values: &[f32], rows: usize) -> Tensor {
    Tensor::from_slice(values).view([rows as i64, -1])
}

/// The heads' weights side by side: [mean; scale] ([2L, H]) and biases ([2L]).
fn heads(enc: &Encoder) -> (Tensor, Tensor) {
    let bias = |l: &tch::nn::Linear| l.bs.as_ref().expect("the heads have biases").detach();
    (Tensor::cat(&[enc.mean.ws.detach(), enc.scale.ws.detach()], 0), Tensor::cat(&[bias(&enc.mean), bias(&enc.scale)], 0))
}

/// The forward pass for `log_counts` [B, G] and sample codes [B]: the posterior
/// and the tape for [EncoderTape::backward].
pub fn forward(enc: &Encoder, log_counts: &Tensor, sample: &Tensor) -> EncoderTape {
    tch::no_grad(|| {
        let b = log_counts.size()[0] as usize;
        let h = enc.n_hidden as usize;
        let sample: Vec<usize> = Vec::<i64>::try_from(sample).expect("sample codes").iter().map(|&s| s as usize).collect();
        // in the first product's layout once, for the product and its weight gradient
        let input = products::prepare_input(log_counts);
        let first = products::linear(&input, &enc.lin1.ws, enc.lin1.bs.as_ref()).contiguous();
        let (normed1, inv_sd1, relu1) = cond_norm_relu(floats(&first), &sample, floats(&enc.scale1), floats(&enc.shift1), h);
        let relu1 = tensor(&relu1, b);
        let second = products::linear_on(SMALL, &relu1, &enc.lin2.ws, enc.lin2.bs.as_ref()).contiguous();
        let (normed2, inv_sd2, relu2) = cond_norm_relu(floats(&second), &sample, floats(&enc.scale2), floats(&enc.shift2), h);
        let embedding = floats(&enc.sample_embedding);
        let mut embedded = relu2.clone();
        for (r, &s) in sample.iter().enumerate() {
            embedded[r * h..(r + 1) * h].iter_mut().zip(&embedding[s * h..(s + 1) * h]).for_each(|(e, &v)| *e += v);
        }
        let embedded = tensor(&embedded, b);
        let (w, bias) = heads(enc);
        let out = products::linear_on(SMALL, &embedded, &w, Some(&bias)).contiguous(); // [B, 2L]
        let l = out.size()[1] as usize / 2;
        let out = floats(&out);
        let (mut mean, mut sd, mut scale_in) = (Vec::with_capacity(b * l), Vec::with_capacity(b * l), Vec::with_capacity(b * l));
        for row in out.chunks_exact(2 * l) {
            mean.extend_from_slice(&row[..l]);
            for &t in &row[l..] {
                scale_in.push(t);
                let softplus = if t > SOFTPLUS_THRESHOLD { t } else { t.exp().ln_1p() };
                sd.push(softplus + SD_FLOOR);
            }
        }
        EncoderTape {
            input,
            sample,
            normed: [normed1, normed2],
            inv_sd: [inv_sd1, inv_sd2],
            relu1,
            relu2,
            embedded,
            mean,
            sd,
            scale_in,
        }
    })
}

impl EncoderTape {
    /// Adds to the encoder's parameters' gradients (through `sink`) what
    /// `d_mean` and `d_sd` ([B, L], of the objective with respect to the
    /// posterior's mean and sd) carry back to them.
    pub fn backward(&self, enc: &Encoder, d_mean: &[f32], d_sd: &[f32], sink: &mut HostGradients) {
        tch::no_grad(|| {
            let (b, h) = (self.sample.len(), enc.n_hidden as usize);
            let l = d_mean.len() / b.max(1);
            // heads: d out = [d mean, d sd * sigmoid(scale_in)]
            let mut d_out = vec![0f32; b * 2 * l];
            for r in 0..b {
                for k in 0..l {
                    let t = self.scale_in[r * l + k];
                    let slope = if t > SOFTPLUS_THRESHOLD { 1.0 } else { 1.0 / (1.0 + (-t).exp()) };
                    d_out[r * 2 * l + k] = d_mean[r * l + k];
                    d_out[r * 2 * l + l + k] = d_sd[r * l + k] * slope;
                }
            }
            let d_out = tensor(&d_out, b);
            let (w, _) = heads(enc);
            let (d_embedded, d_w, d_bias) = products::linear_gradients_on(SMALL, &d_out, &self.embedded, &w, true);
            let d_bias = d_bias.expect("the heads have biases");
            sink.add(&enc.mean.ws, &d_w.narrow(0, 0, l as i64));
            sink.add(&enc.scale.ws, &d_w.narrow(0, l as i64, l as i64));
            sink.add(enc.mean.bs.as_ref().expect("bias"), &d_bias.narrow(0, 0, l as i64));
            sink.add(enc.scale.bs.as_ref().expect("bias"), &d_bias.narrow(0, l as i64, l as i64));
            let d_embedded = d_embedded.contiguous();
            let d_embedded = floats(&d_embedded);
            sink.add_rows(&enc.sample_embedding, &self.sample, d_embedded, h);
            // second layer: ReLU, conditional norm, product
            let d_relu2: Vec<f32> = d_embedded.iter().zip(&self.relu2).map(|(&d, &y)| if y > 0.0 { d } else { 0.0 }).collect();
            let d_second = self.cond_norm_backward(enc, 1, &d_relu2, sink);
            let d_second = tensor(&d_second, b);
            let (d_relu1, d_w, d_bias) = products::linear_gradients_on(SMALL, &d_second, &self.relu1, &enc.lin2.ws.detach(), true);
            sink.add(&enc.lin2.ws, &d_w);
            sink.add(enc.lin2.bs.as_ref().expect("bias"), &d_bias.expect("bias"));
            let d_relu1 = d_relu1.contiguous();
            let d_relu1: Vec<f32> = floats(&d_relu1).iter().zip(floats(&self.relu1)).map(|(&d, &y)| if y > 0.0 { d } else { 0.0 }).collect();
            // first layer: conditional norm, then the large product's weight gradient
            let d_first = tensor(&self.cond_norm_backward(enc, 0, &d_relu1, sink), b);
            let trained = enc.lin1.ws.requires_grad() || enc.lin1.bs.as_ref().is_some_and(|b| b.requires_grad());
            if trained && b > 0 {
                let (d_w, d_bias) = products::weight_gradients(&d_first, &self.input, enc.lin1.bs.is_some());
                sink.add(&enc.lin1.ws, &d_w);
                if let (Some(bias), Some(d_bias)) = (&enc.lin1.bs, d_bias) {
                    sink.add(bias, &d_bias);
                }
            }
        })
    }

    /// Through one layer's per-sample scale and shift and its LayerNorm, from
    /// the gradient with respect to the normalised-then-scaled values (the ReLU
    /// already applied): the scale's and shift's gradients go to `sink`,
    /// the layer's input gradient [B, H] is returned.
    fn cond_norm_backward(&self, enc: &Encoder, layer: usize, d_scaled: &[f32], sink: &mut HostGradients) -> Vec<f32> {
        let h = enc.n_hidden as usize;
        let (scale, shift) = if layer == 0 { (&enc.scale1, &enc.shift1) } else { (&enc.scale2, &enc.shift2) };
        let (normed, inv_sd) = (&self.normed[layer], &self.inv_sd[layer]);
        let scale_values = floats(scale);
        let d_scale: Vec<f32> = d_scaled.iter().zip(normed).map(|(&d, &n)| d * n).collect();
        sink.add_rows(scale, &self.sample, &d_scale, h);
        sink.add_rows(shift, &self.sample, d_scaled, h);
        let mut d_input = vec![0f32; d_scaled.len()];
        for (r, &s) in self.sample.iter().enumerate() {
            let sc = &scale_values[s * h..(s + 1) * h];
            let (d, n) = (&d_scaled[r * h..(r + 1) * h], &normed[r * h..(r + 1) * h]);
            // d normed = d * scale; LayerNorm: (d normed - mean(d normed) - normed * mean(d normed * normed)) / sd
            let sum = lane_sum(h, |j| d[j] * sc[j]) / h as f32;
            let dot = lane_sum(h, |j| d[j] * sc[j] * n[j]) / h as f32;
            let out = &mut d_input[r * h..(r + 1) * h];
            for j in 0..h {
                out[j] = (d[j] * sc[j] - sum - n[j] * dot) * inv_sd[r];
            }
        }
        d_input
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{nn, Device, Kind};

    /// The host pass gives libtorch's posterior ([Encoder::forward]) for
    /// several samples, with ReLUs both dead and alive, and its backward
    /// autograd's gradients for every parameter (the whole step's test,
    /// `fused_cpu_objective_has_the_autograd_gradient`, checks them in place).
    #[test]
    fn host_pass_matches_the_encoder() {
        tch::manual_seed(11);
        let vs = nn::VarStore::new(Device::Cpu);
        let enc = Encoder::new(vs.root(), 40, 16, 3, 5);
        tch::no_grad(|| {
            for (_, mut v) in vs.variables() {
                let noise = Tensor::randn(v.size(), (Kind::Float, Device::Cpu)) * 0.3;
                let _ = v.g_add_(&noise);
            }
        });
        let x = (Tensor::rand([9, 40], (Kind::Float, Device::Cpu)) * 3.0).floor().log1p();
        let sample = Tensor::from_slice(&[0i64, 1, 2, 2, 1, 0, 0, 2, 1]);
        let want = enc.forward(&x, &sample);
        let (gm, gs) = (Tensor::randn([9, 5], (Kind::Float, Device::Cpu)), Tensor::randn([9, 5], (Kind::Float, Device::Cpu)));
        ((&want.mean * &gm).sum(Kind::Float) + (&want.sd * &gs).sum(Kind::Float)).backward();
        let want_grads: Vec<(String, Tensor)> = vs.variables().into_iter().map(|(k, v)| (k, v.grad().copy())).collect();
        let tape = forward(&enc, &x, &sample);
        let close = |name: &str, a: &Tensor, b: &Tensor| {
            let err = (a - b).abs().max().double_value(&[]);
            assert!(err <= 1e-4 * b.abs().max().double_value(&[]).max(1.0), "{name}: off by {err}");
        };
        close("mean", &Tensor::from_slice(&tape.mean).view([9, 5]), &want.mean.detach());
        close("sd", &Tensor::from_slice(&tape.sd).view([9, 5]), &want.sd.detach());
        for (_, v) in vs.variables() {
            let _ = v.grad().zero_();
        }
        let mut sink = HostGradients::default();
        tape.backward(&enc, &Vec::<f32>::try_from(gm.view([-1])).unwrap(), &Vec::<f32>::try_from(gs.view([-1])).unwrap(), &mut sink);
        assert!(sink.into_surrogate().is_none(), "every parameter had its .grad");
        let got = vs.variables();
        for (name, want) in &want_grads {
            close(name, &got[name].grad(), want);
        }
    }
}
