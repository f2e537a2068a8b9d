//! The attention block of the later MrVI (MODEL.md §4): 16 projected coordinates
//! of LayerNorm(x) attend to the 16 coordinates of a context embedding (a sample's
//! or a site's), each coordinate lifted to 8 channels; 2 heads x 4 channels; the
//! 16 x 8 output goes through a small MLP (128 -> 32 -> out). In new fits the
//! first MLP layer also reads the context itself (`direct`): through the weighted
//! means alone a context reaches the MLP as a few smooth functionals of its
//! embedding's coordinates. That confined the fitted sample effects to 4-5
//! directions (bench/README.md, issue 14), and in the decoder it left more than
//! two nuisance levels (crossed site and chemistry) partly unexplained, so the
//! sample effects took them up (issue 20).

use super::tilted_mean::TiltedMeans;
use tch::nn::{self, Module};
use tch::Tensor;

pub const TOKENS: i64 = 16;
const CHANNELS: i64 = 8;
pub const HEADS: i64 = 2;
pub const HIDDEN: i64 = 32;

pub struct AttentionBlock {
    project: nn::Linear,
    lift_q: nn::Linear,
    lift_kv: nn::Linear,
    wq: nn::Linear,
    wk: nn::Linear,
    wv: nn::Linear,
    mlp1: nn::Linear,
    mlp2: nn::Linear,
    /// the context read directly by the first MLP layer ([HIDDEN, TOKENS], no
    /// bias), beside the attention's weighted means: a channel of full rank for
    /// the context (the means carry a few smooth functionals of its
    /// coordinates). None: the block of MODEL.md §4 alone.
    pub direct: Option<nn::Linear>,
    d_in: i64,
}

impl AttentionBlock {
    /// The direct path of the context into the first MLP layer (see
    /// [Self::direct]), starting at zero (the block starts as without it).
    pub fn direct_path(p: nn::Path) -> nn::Linear {
        let zero = nn::LinearConfig { ws_init: nn::Init::Const(0.0), bs_init: None, bias: false };
        nn::linear(&p / "direct", TOKENS, HIDDEN, zero)
    }

    /// The first MLP layer's pre-activation gains the context's direct term.
    fn with_direct(&self, hidden: Tensor, context: &Tensor) -> Tensor {
        match &self.direct {
            Some(d) => hidden + d.forward(context),
            None => hidden,
        }
    }

    pub fn new(p: nn::Path, d_in: i64, d_out: i64) -> Self {
        let lin = |name: &str, i: i64, o: i64| nn::linear(&p / name, i, o, Default::default());
        // the last layer starts at zero, so the block starts as the identity residual
        let zero = nn::LinearConfig { ws_init: nn::Init::Const(0.0), bs_init: Some(nn::Init::Const(0.0)), bias: true };
        Self {
            project: lin("project", d_in, TOKENS),
            lift_q: lin("lift_q", 1, CHANNELS),
            lift_kv: lin("lift_kv", 1, CHANNELS),
            wq: lin("wq", CHANNELS, CHANNELS),
            wk: lin("wk", CHANNELS, CHANNELS),
            wv: lin("wv", CHANNELS, CHANNELS),
            mlp1: lin("mlp1", TOKENS * CHANNELS, HIDDEN),
            mlp2: nn::linear(&p / "mlp2", HIDDEN, d_out, zero),
            direct: None,
            d_in,
        }
    }

    /// x: [N, d_in]; context: [N, TOKENS] -> [N, d_out], in closed form (see
    /// [HostAttention]): one softmax temperature per token and head, the values
    /// folded into the first MLP layer. The same function as [Self::reference].
    pub fn forward(&self, x: &Tensor, context: &Tensor) -> Tensor {
        self.forward_with(x, context, None)
    }

    /// [Self::forward] with a term per row ([N, HIDDEN]) added to the first MLP
    /// layer's pre-activation (the sample block's free per-sample term).
    pub fn forward_with(&self, x: &Tensor, context: &Tensor, hidden_term: Option<&Tensor>) -> Tensor {
        let n = x.size()[0];
        let kind = x.kind();
        let xq = self.project.forward(&x.layer_norm([self.d_in], None::<Tensor>, None::<Tensor>, 1e-5, false)); // [N, 16]
        // a token lifted from scalar c and projected: c (W w) + (W b + bias), [CHANNELS] each
        let affine = |lift: &nn::Linear, w: &nn::Linear| {
            let slope = w.ws.matmul(&lift.ws).squeeze_dim(-1);
            let offset = w.ws.matmul(&lift.bs.as_ref().expect("bias").unsqueeze(-1)).squeeze_dim(-1) + w.bs.as_ref().expect("bias");
            (slope, offset)
        };
        let (qa, qb) = affine(&self.lift_q, &self.wq);
        let (ka, _) = affine(&self.lift_kv, &self.wk);
        let (va, vb) = affine(&self.lift_kv, &self.wv);
        let scale = ((CHANNELS / HEADS) as f64).sqrt();
        let per_head = |t: Tensor| t.view([HEADS, CHANNELS / HEADS]);
        let slope = per_head(&qa * &ka).sum_dim_intlist(-1, false, kind) / scale; // [H]
        let intercept = per_head(&qb * &ka).sum_dim_intlist(-1, false, kind) / scale;
        let lambda = xq.unsqueeze(-1) * slope + intercept; // [N, 16, H]
        let c = context.view([n, 1, TOKENS]);
        let w = (lambda.view([n, TOKENS * HEADS, 1]) * &c).softmax(-1, kind); // [N, 16 H, 16]
        let m = w.bmm(&context.view([n, TOKENS, 1])).view([n, TOKENS * HEADS]); // [N, 16 H]
        // out[t, h, i] = va[h, i] m[t, h] + vb[h, i] enters mlp1 linearly
        let w1 = self.mlp1.ws.view([HIDDEN, TOKENS, HEADS, CHANNELS / HEADS]);
        let folded = (&w1 * per_head(va)).sum_dim_intlist(-1, false, kind).view([HIDDEN, TOKENS * HEADS]);
        let bias = self.mlp1.bs.as_ref().expect("bias") + (&w1 * per_head(vb)).sum_dim_intlist([1, 2, 3].as_slice(), false, kind);
        let hidden = self.with_direct(m.linear(&folded, Some(&bias)), context);
        let hidden = match hidden_term {
            Some(t) => hidden + t,
            None => hidden,
        };
        self.mlp2.forward(&hidden.relu())
    }

    /// The block as MODEL.md §4 writes it, token by token: the reference the
    /// closed forms ([Self::forward], [HostAttention]) are tested against.
    pub fn reference(&self, x: &Tensor, context: &Tensor) -> Tensor {
        let n = x.size()[0];
        let xq = self.project.forward(&x.layer_norm([self.d_in], None::<Tensor>, None::<Tensor>, 1e-5, false));
        let q_tokens = self.lift_q.forward(&xq.unsqueeze(-1)); // [N, 16, 8]
        let kv_tokens = self.lift_kv.forward(&context.unsqueeze(-1)); // [N, 16, 8]
        let heads = |t: Tensor| t.view([n, TOKENS, HEADS, CHANNELS / HEADS]).permute([0, 2, 1, 3]); // [N, H, 16, 4]
        let q = heads(self.wq.forward(&q_tokens));
        let k = heads(self.wk.forward(&kv_tokens));
        let v = heads(self.wv.forward(&kv_tokens));
        let scale = ((CHANNELS / HEADS) as f64).sqrt();
        let att = (q.matmul(&k.transpose(-2, -1)) / scale).softmax(-1, q.kind()); // [N, H, 16, 16]
        let out = att.matmul(&v).permute([0, 2, 1, 3]).contiguous().view([n, TOKENS * CHANNELS]);
        self.mlp2.forward(&self.with_direct(self.mlp1.forward(&out), context).relu())
    }
}

/// A row-major [rows, cols] matrix transposed ([cols, rows]).
pub(crate) fn transpose<T: Copy>(m: &[T], rows: usize, cols: usize) -> Vec<T> {
    (0..rows * cols).map(|k| m[(k % rows) * cols + k / rows]).collect()
}

/// LayerNorm without affine parameters, as torch computes it (biased variance,
/// eps 1e-5): x's mean and 1 / sd, to normalise x as (x - mean) / sd.
#[inline(always)]
pub(crate) fn layer_norm_moments(x: &[f32]) -> (f32, f32) {
    let d = x.len() as f32;
    let mean = x.iter().sum::<f32>() / d;
    let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / d;
    (mean, 1.0 / (var + 1e-5).sqrt())
}

/// An attention block's own parameters on the host, in double precision:
/// (weight row-major, bias) of each layer, in [Self::tensors]' order.
pub(crate) struct HostParameters {
    pub layers: Vec<(Vec<f64>, Vec<f64>)>,
    pub direct: Option<Vec<f64>>,
}

/// The layers of [HostParameters::layers], in order.
const PROJECT: usize = 0;
const LIFT_Q: usize = 1;
const LIFT_KV: usize = 2;
const WQ: usize = 3;
const WK: usize = 4;
const WV: usize = 5;
const MLP1: usize = 6;
const MLP2: usize = 7;

impl HostParameters {
    pub fn of(block: &AttentionBlock) -> Self {
        let f64s = |t: &Tensor| {
            if t.device() == tch::Device::Cpu && t.kind() == tch::Kind::Float && t.is_contiguous() {
                // SAFETY: checked just above; the slice lives only in this expression.
                return unsafe { super::cpu_floats(t) }.iter().map(|&v| v as f64).collect();
            }
            Vec::<f64>::try_from(&t.detach().to_device(tch::Device::Cpu).to_kind(tch::Kind::Double).contiguous().view([-1])).expect("float")
        };
        let layers = Self::linears(block).iter().map(|l| (f64s(&l.ws), f64s(l.bs.as_ref().expect("attention layers have biases")))).collect();
        Self { layers, direct: block.direct.as_ref().map(|d| f64s(&d.ws)) }
    }

    fn linears(block: &AttentionBlock) -> [&nn::Linear; 8] {
        [&block.project, &block.lift_q, &block.lift_kv, &block.wq, &block.wk, &block.wv, &block.mlp1, &block.mlp2]
    }

    /// The block's parameter tensors in the order of [Self::layers] (weight,
    /// bias), then the direct path's weight.
    pub fn tensors(block: &AttentionBlock) -> Vec<Tensor> {
        let mut out: Vec<Tensor> = Self::linears(block)
            .iter()
            .flat_map(|l| [l.ws.shallow_clone(), l.bs.as_ref().expect("attention layers have biases").shallow_clone()])
            .collect();
        out.extend(block.direct.as_ref().map(|d| d.ws.shallow_clone()));
        out
    }

    /// a token lifted from scalar x and projected: x (W w) + (W b + bias), [CHANNELS] each
    fn affine(&self, lift: usize, w: usize) -> (Vec<f64>, Vec<f64>) {
        let c = CHANNELS as usize;
        let ((lw, lb), (ww, wb)) = (&self.layers[lift], &self.layers[w]);
        let slope = (0..c).map(|o| (0..c).map(|i| ww[o * c + i] * lw[i]).sum()).collect();
        let offset = (0..c).map(|o| (0..c).map(|i| ww[o * c + i] * lb[i]).sum::<f64>() + wb[o]).collect();
        (slope, offset)
    }
}

/// The block's closed form (see [HostAttention]) on the host, in double
/// precision, from [HostParameters]: pair k = t * HEADS + h.
pub(crate) struct HostClosedForm {
    /// [TOKENS, d_in], [TOKENS]
    pub project: Vec<f64>,
    pub project_bias: Vec<f64>,
    /// [HEADS] each
    pub slope: Vec<f64>,
    pub intercept: Vec<f64>,
    /// [HIDDEN, PAIRS], [HIDDEN]
    pub mlp1: Vec<f64>,
    pub mlp1_bias: Vec<f64>,
    /// [HIDDEN, TOKENS]
    pub direct: Option<Vec<f64>>,
    /// [d_out, HIDDEN], [d_out]
    pub mlp2: Vec<f64>,
    pub mlp2_bias: Vec<f64>,
}

impl HostClosedForm {
    pub fn new(p: &HostParameters) -> Self {
        let (c, heads, hidden) = (CHANNELS as usize, HEADS as usize, HIDDEN as usize);
        let per_head = c / heads;
        let (qa, qb) = p.affine(LIFT_Q, WQ);
        let (ka, _) = p.affine(LIFT_KV, WK);
        let (va, vb) = p.affine(LIFT_KV, WV);
        let scale = (per_head as f64).sqrt();
        let head_dot = |x: &[f64], y: &[f64], h: usize| (h * per_head..(h + 1) * per_head).map(|i| x[i] * y[i]).sum::<f64>() / scale;
        // out[t, h * per_head + i] = va[h, i] m[t, h] + vb[h, i], flattened t * c + channel
        let (w1, b1) = &p.layers[MLP1];
        let inputs = (TOKENS as usize) * c;
        let mut mlp1 = vec![0f64; hidden * PAIRS];
        let mut mlp1_bias = vec![0f64; hidden];
        for o in 0..hidden {
            let row = &w1[o * inputs..(o + 1) * inputs];
            let mut b = b1[o];
            for t in 0..TOKENS as usize {
                for h in 0..heads {
                    let channels = h * per_head..(h + 1) * per_head;
                    mlp1[o * PAIRS + t * heads + h] = channels.clone().map(|ch| row[t * c + ch] * va[ch]).sum::<f64>();
                    b += channels.map(|ch| row[t * c + ch] * vb[ch]).sum::<f64>();
                }
            }
            mlp1_bias[o] = b;
        }
        Self {
            project: p.layers[PROJECT].0.clone(),
            project_bias: p.layers[PROJECT].1.clone(),
            slope: (0..heads).map(|h| head_dot(&qa, &ka, h)).collect(),
            intercept: (0..heads).map(|h| head_dot(&qb, &ka, h)).collect(),
            mlp1,
            mlp1_bias,
            direct: p.direct.clone(),
            mlp2: p.layers[MLP2].0.clone(),
            mlp2_bias: p.layers[MLP2].1.clone(),
        }
    }

    /// The gradients of the block's own parameters ([HostParameters::tensors]'
    /// order) from those of the closed form's (`g`, laid out as `self`),
    /// by the chain rule through [Self::new].
    pub fn parameter_gradients(p: &HostParameters, g: &HostClosedForm) -> Vec<Vec<f64>> {
        let (c, heads, hidden) = (CHANNELS as usize, HEADS as usize, HIDDEN as usize);
        let per_head = c / heads;
        let scale = (per_head as f64).sqrt();
        let (qa, qb) = p.affine(LIFT_Q, WQ);
        let (ka, _) = p.affine(LIFT_KV, WK);
        let (va, vb) = p.affine(LIFT_KV, WV);
        let head = |i: usize| i / per_head;
        // the tokens' affine maps
        let d_qa: Vec<f64> = (0..c).map(|i| g.slope[head(i)] * ka[i] / scale).collect();
        let d_qb: Vec<f64> = (0..c).map(|i| g.intercept[head(i)] * ka[i] / scale).collect();
        let d_ka: Vec<f64> = (0..c).map(|i| (g.slope[head(i)] * qa[i] + g.intercept[head(i)] * qb[i]) / scale).collect();
        let (w1, _) = &p.layers[MLP1];
        let inputs = (TOKENS as usize) * c;
        let (mut d_va, mut d_vb) = (vec![0f64; c], vec![0f64; c]);
        let mut d_w1 = vec![0f64; hidden * inputs];
        for o in 0..hidden {
            for t in 0..TOKENS as usize {
                for ch in 0..c {
                    let (k, i) = (o * PAIRS + t * heads + head(ch), o * inputs + t * c + ch);
                    d_va[ch] += g.mlp1[k] * w1[i];
                    d_vb[ch] += g.mlp1_bias[o] * w1[i];
                    d_w1[i] = g.mlp1[k] * va[ch] + g.mlp1_bias[o] * vb[ch];
                }
            }
        }
        // slope = W lift_w, offset = W lift_b + bias: gradients of W, lift_w, lift_b, bias
        let back = |w: usize, d_slope: &[f64], d_offset: Option<&[f64]>, lift: usize, d_lift_w: &mut [f64], d_lift_b: &mut [f64]| {
            let ww = &p.layers[w].0;
            let (lw, lb) = &p.layers[lift];
            let mut d_w = vec![0f64; c * c];
            for o in 0..c {
                for i in 0..c {
                    d_w[o * c + i] = d_slope[o] * lw[i] + d_offset.map_or(0.0, |d| d[o] * lb[i]);
                    d_lift_w[i] += ww[o * c + i] * d_slope[o];
                    d_lift_b[i] += d_offset.map_or(0.0, |d| ww[o * c + i] * d[o]);
                }
            }
            (d_w, d_offset.map_or(vec![0.0; c], |d| d.to_vec()))
        };
        let (mut d_lq_w, mut d_lq_b, mut d_lkv_w, mut d_lkv_b) = (vec![0f64; c], vec![0f64; c], vec![0f64; c], vec![0f64; c]);
        let (d_wq, d_bq) = back(WQ, &d_qa, Some(&d_qb), LIFT_Q, &mut d_lq_w, &mut d_lq_b);
        let (d_wk, d_bk) = back(WK, &d_ka, None, LIFT_KV, &mut d_lkv_w, &mut d_lkv_b);
        let (d_wv, d_bv) = back(WV, &d_va, Some(&d_vb), LIFT_KV, &mut d_lkv_w, &mut d_lkv_b);
        let mut out = vec![
            g.project.clone(),
            g.project_bias.clone(),
            d_lq_w,
            d_lq_b,
            d_lkv_w,
            d_lkv_b,
            d_wq,
            d_bq,
            d_wk,
            d_bk,
            d_wv,
            d_bv,
            d_w1,
            g.mlp1_bias.clone(),
            g.mlp2.clone(),
            g.mlp2_bias.clone(),
        ];
        out.extend(g.direct.clone());
        out
    }
}

/// The attention block in closed form, for evaluating one x against many
/// contexts on the host (counterfactual z of a cell under every sample).
///
/// Every token is affine in one scalar: a query token is xq_t a + b, a key or
/// value token c_j g + h (the lift and the head projections compose). A score
/// is then c_j (xq_t A_h + C_h) plus terms constant in j, which the softmax
/// removes, and the value a head reads is E_h m + Z_h with m the softmax-weighted
/// mean of the context coordinates. So each of the 16 x 2 (token, head) pairs
/// needs one temperature lambda = xq_t A_h + C_h and one weighted mean
/// m = sum_j c_j e^(lambda c_j) / sum_j e^(lambda c_j), and the first MLP layer
/// folds the values in (32 inputs instead of 128). The same closed form as
/// [AttentionBlock::forward], on host floats: the function of
/// [AttentionBlock::reference] for any parameters, with a fraction of its work.
/// m depends on the context and lambda only, so each context's m is tabulated
/// in lambda ([TiltedMeans], within 2e-7 of the context's range; computed
/// directly where the table does not reach).
pub struct HostAttention {
    d_in: usize,
    d_out: usize,
    /// project: [TOKENS, d_in] row-major, and its bias
    project: Vec<f32>,
    /// the same transposed, [d_in, TOKENS], for [Self::mean_over_contexts]
    project_t: Vec<f32>,
    project_bias: Vec<f32>,
    /// per head: A_h, C_h (the score scale included)
    slope: [f32; HEADS as usize],
    intercept: [f32; HEADS as usize],
    /// the folded first MLP layer, transposed: [PAIRS, HIDDEN], pair k = t * HEADS + h
    mlp1: Vec<f32>,
    mlp1_bias: Vec<f32>,
    /// the second MLP layer, transposed: [HIDDEN, d_out]
    mlp2: Vec<f32>,
    mlp2_bias: Vec<f32>,
    /// the direct path ([AttentionBlock::direct]), [HIDDEN, TOKENS] row-major
    direct: Option<Vec<f32>>,
    /// every temperature lambda = xq_t A_h + C_h lies in this range (see `new`)
    lambda_range: (f64, f64),
}

pub const PAIRS: usize = (TOKENS * HEADS) as usize;

impl HostAttention {
    pub fn new(block: &AttentionBlock) -> Self {
        let form = HostClosedForm::new(&HostParameters::of(block));
        let (heads, hidden) = (HEADS as usize, HIDDEN as usize);
        let slope: [f32; HEADS as usize] = std::array::from_fn(|h| form.slope[h] as f32);
        let intercept: [f32; HEADS as usize] = std::array::from_fn(|h| form.intercept[h] as f32);
        let to32 = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect::<Vec<f32>>();
        let mlp1 = to32(transpose(&form.mlp1, hidden, PAIRS));
        let mlp1_bias = form.mlp1_bias.iter().map(|&b| b as f32).collect();
        let d_out = form.mlp2_bias.len();
        let mlp2 = to32(transpose(&form.mlp2, d_out, hidden));
        let HostClosedForm { project, project_bias, mlp2_bias: b2, direct, .. } = form;
        let d_in = block.d_in as usize;
        // xq_t = w_t . y + b_t with y = LayerNorm(x): y sums to 0 and has norm at
        // most sqrt(d_in), so xq_t lies within |w_t - mean(w_t)| sqrt(d_in) of b_t
        let mut lambda_range = (f64::INFINITY, f64::NEG_INFINITY);
        for t in 0..TOKENS as usize {
            let w = &project[t * d_in..(t + 1) * d_in];
            let mean = w.iter().sum::<f64>() / d_in as f64;
            let reach = w.iter().map(|v| (v - mean).powi(2)).sum::<f64>().sqrt() * (d_in as f64).sqrt();
            for h in 0..heads {
                let (a, c) = (slope[h] as f64, intercept[h] as f64);
                let centre = a * project_bias[t] + c;
                lambda_range = (lambda_range.0.min(centre - a.abs() * reach), lambda_range.1.max(centre + a.abs() * reach));
            }
        }
        let project_t = to32(transpose(&project, TOKENS as usize, d_in));
        Self {
            d_in,
            d_out,
            project_t,
            project: to32(project),
            project_bias: to32(project_bias),
            slope,
            intercept,
            mlp1,
            mlp1_bias,
            mlp2,
            mlp2_bias: to32(b2),
            direct: direct.map(to32),
            lambda_range,
        }
    }

    /// Contexts ([n, TOKENS] row-major) laid out for [HostAttention::forward].
    pub fn contexts(&self, contexts: &[f32]) -> Contexts {
        let tokens = TOKENS as usize;
        let n = contexts.len() / tokens;
        let mut by_token = vec![0f32; tokens * n];
        let (mut lo, mut hi) = (vec![f32::INFINITY; n], vec![f32::NEG_INFINITY; n]);
        for (i, ctx) in contexts.chunks_exact(tokens).enumerate() {
            for (j, &c) in ctx.iter().enumerate() {
                by_token[j * n + i] = c;
                lo[i] = lo[i].min(c);
                hi[i] = hi[i].max(c);
            }
        }
        let tilted = TiltedMeans::new(&by_token, tokens, n, self.lambda_range.0, self.lambda_range.1);
        // each context's direct term, [HIDDEN, n]
        let direct = self.direct.as_ref().map(|w| {
            let mut out = vec![0f32; HIDDEN as usize * n];
            for (o, row) in out.chunks_exact_mut(n).enumerate() {
                for (i, ctx) in contexts.chunks_exact(tokens).enumerate() {
                    row[i] = w[o * tokens..(o + 1) * tokens].iter().zip(ctx).map(|(a, b)| a * b).sum();
                }
            }
            out
        });
        Contexts { n, by_token, lo, hi, tilted, direct }
    }

    /// The block's output for one x against each context: `out` [d_out, n]
    /// row-major, by output dimension (overwritten). The work runs over
    /// contexts in the innermost loops, which vectorise; `scratch` holds the
    /// intermediates (kept from cell to cell, it saves allocating ~400 kB per
    /// cell for 1,000 contexts).
    pub fn forward(&self, x: &[f32], contexts: &Contexts, out: &mut [f32], scratch: &mut ForwardScratch) {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has the features the function is compiled for.
                    return unsafe { self.forward_avx512(x, contexts, out, scratch) };
                }
                // SAFETY: the CPU has the features the function is compiled for.
                return unsafe { self.forward_avx2(x, contexts, out, scratch) };
            }
        }
        self.forward_portable::<false>(x, contexts, out, scratch, affine_rows::<false, 8, 8>)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn forward_avx2(&self, x: &[f32], contexts: &Contexts, out: &mut [f32], scratch: &mut ForwardScratch) {
        // a closure into the AVX2 function (session 39: the function item
        // `affine_rows::<true, ..>` passed here was called through a shim compiled
        // without FMA, one libm fmaf call per multiply-add, ~50x slower)
        // SAFETY: the CPU has AVX2 and FMA (this function's features).
        self.forward_portable::<true>(x, contexts, out, scratch, |w, bias, input, n, out| unsafe { affine_avx2(w, bias, input, n, out) })
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx2,fma")]
    unsafe fn forward_avx512(&self, x: &[f32], contexts: &Contexts, out: &mut [f32], scratch: &mut ForwardScratch) {
        // SAFETY: the CPU has AVX-512 (this function's features).
        self.forward_portable::<true>(x, contexts, out, scratch, |w, bias, input, n, out| unsafe { affine_rows_avx512(w, bias, input, n, out) })
    }

    /// `FMA`: fused multiply-adds (only where the CPU has them); `affine`: the
    /// MLP's layers on this path's vectors ([affine_avx2], [affine_rows_avx512],
    /// or [affine_rows] without FMA).
    #[inline(always)]
    fn forward_portable<const FMA: bool>(
        &self, x: &[f32], contexts: &Contexts, out: &mut [f32], scratch: &mut ForwardScratch, affine: impl Fn(&[f32], &[f32], &[f32], usize, &mut [f32]),
    ) {
        let (tokens, heads, hidden) = (TOKENS as usize, HEADS as usize, HIDDEN as usize);
        let n = contexts.n;
        let (mean, inv) = layer_norm_moments(&x[..self.d_in]);
        let mut lambda = [0f32; PAIRS];
        for t in 0..tokens {
            let row = &self.project[t * self.d_in..(t + 1) * self.d_in];
            let xq = row.iter().zip(x).map(|(w, v)| w * (v - mean) * inv).sum::<f32>() + self.project_bias[t];
            for h in 0..heads {
                lambda[t * heads + h] = xq * self.slope[h] + self.intercept[h];
            }
        }
        // the weighted mean of each (token, head) pair, [PAIRS, n]; the largest
        // score is subtracted before exp
        let ForwardScratch { means, top, total, hidden: h } = scratch;
        means.resize(PAIRS * n, 0.0);
        top.resize(n, 0.0);
        total.resize(n, 0.0);
        h.resize(hidden * n, 0.0);
        for (k, m) in means.chunks_exact_mut(n).enumerate() {
            contexts.means_at::<FMA>(lambda[k], m, top, total);
        }
        // the MLP, [HIDDEN, n] then [d_out, n]
        affine(&self.mlp1, &self.mlp1_bias, means, n, h);
        if let Some(direct) = &contexts.direct {
            h.iter_mut().zip(direct).for_each(|(r, d)| *r += d);
        }
        for r in h.iter_mut() {
            *r = r.max(0.0);
        }
        affine(&self.mlp2, &self.mlp2_bias, h, n, &mut out[..self.d_out * n]);
    }
}

impl HostAttention {
    /// The block's output for each of n inputs, averaged over the contexts:
    /// `xs` [d_in, n] and `out` [d_out, n], by dimension (out overwritten). The
    /// transpose of [Self::forward]'s work (many x, few contexts: a decoder's
    /// nuisance levels), vectorised over the inputs; the same function.
    pub fn mean_over_contexts(&self, xs: &[f32], n: usize, contexts: &Contexts, out: &mut [f32], scratch: &mut ManyScratch) {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has the features the function is compiled for.
                    return unsafe { self.many_avx512(xs, n, contexts, out, scratch) };
                }
                // SAFETY: the CPU has the features the function is compiled for.
                return unsafe { self.many_avx2(xs, n, contexts, out, scratch) };
            }
        }
        self.many_portable::<false>(xs, n, contexts, out, scratch, affine_rows::<false, 8, 8>)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn many_avx2(&self, xs: &[f32], n: usize, contexts: &Contexts, out: &mut [f32], scratch: &mut ManyScratch) {
        // SAFETY: the CPU has AVX2 and FMA (this function's features); a closure, as in forward_avx2
        self.many_portable::<true>(xs, n, contexts, out, scratch, |w, bias, input, n, out| unsafe { affine_avx2(w, bias, input, n, out) })
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx2,fma")]
    unsafe fn many_avx512(&self, xs: &[f32], n: usize, contexts: &Contexts, out: &mut [f32], scratch: &mut ManyScratch) {
        // SAFETY: the CPU has AVX-512 (this function's features).
        self.many_portable::<true>(xs, n, contexts, out, scratch, |w, bias, input, n, out| unsafe { affine_rows_avx512(w, bias, input, n, out) })
    }

    #[inline(always)]
    fn many_portable<const FMA: bool>(
        &self, xs: &[f32], n: usize, contexts: &Contexts, out: &mut [f32], scratch: &mut ManyScratch, affine: impl Fn(&[f32], &[f32], &[f32], usize, &mut [f32]),
    ) {
        let (d, heads, hidden, c) = (self.d_in, HEADS as usize, HIDDEN as usize, contexts.n);
        let ManyScratch { y, xq, means, at_lambda, top, total, lambdas, tabulated, h, hidden_mean, mean, inv } = scratch;
        // LayerNorm of each input (torch: biased variance, eps 1e-5), over the
        // inputs in the inner loops (each input's sums still run over k in order)
        y.resize(d * n, 0.0);
        mean.clear();
        mean.resize(n, 0.0);
        inv.clear();
        inv.resize(n, 0.0);
        for row in xs[..d * n].chunks_exact(n) {
            mean.iter_mut().zip(row).for_each(|(m, &x)| *m += x);
        }
        mean.iter_mut().for_each(|m| *m /= d as f32);
        for row in xs[..d * n].chunks_exact(n) {
            inv.iter_mut().zip(row).zip(mean.iter()).for_each(|((v, &x), &m)| *v += (x - m) * (x - m));
        }
        inv.iter_mut().for_each(|v| *v = 1.0 / (*v / d as f32 + 1e-5).sqrt());
        for (out, row) in y.chunks_exact_mut(n).zip(xs[..d * n].chunks_exact(n)) {
            for (((o, &x), &m), &v) in out.iter_mut().zip(row).zip(mean.iter()).zip(inv.iter()) {
                *o = (x - m) * v;
            }
        }
        xq.resize(TOKENS as usize * n, 0.0);
        affine(&self.project_t, &self.project_bias, y, n, xq);
        // the weighted mean of each (token, head) pair under each context, [c, PAIRS, n]
        means.resize(c * PAIRS * n, 0.0);
        at_lambda.resize(c, 0.0);
        top.resize(c, 0.0);
        total.resize(c, 0.0);
        lambdas.resize(n, 0.0);
        tabulated.resize(c * n, 0.0);
        for k in 0..PAIRS {
            let (t, hd) = (k / heads, k % heads);
            for (l, &q) in lambdas.iter_mut().zip(&xq[t * n..(t + 1) * n]) {
                *l = q * self.slope[hd] + self.intercept[hd];
            }
            // the pair's means under every context from the table, in one pass
            if contexts.tilted.as_ref().is_some_and(|tb| tb.interpolate_many(lambdas, tabulated)) {
                for (j, row) in tabulated.chunks_exact(n).enumerate() {
                    means[(j * PAIRS + k) * n..(j * PAIRS + k + 1) * n].copy_from_slice(row);
                }
                continue;
            }
            for i in 0..n {
                contexts.means_at::<FMA>(lambdas[i], at_lambda, top, total);
                for (j, &m) in at_lambda.iter().enumerate() {
                    means[(j * PAIRS + k) * n + i] = m;
                }
            }
        }
        // the MLP's hidden layer under each context, averaged over contexts; its
        // output layer is affine, so the mean of its outputs is its output at
        // that average (one product instead of one per context)
        h.resize(hidden * n, 0.0);
        hidden_mean.resize(hidden * n, 0.0);
        hidden_mean.fill(0.0);
        for j in 0..c {
            affine(&self.mlp1, &self.mlp1_bias, &means[j * PAIRS * n..(j + 1) * PAIRS * n], n, h);
            if let Some(direct) = &contexts.direct {
                for (row, o) in h.chunks_exact_mut(n).zip(0..hidden) {
                    let d = direct[o * c + j];
                    row.iter_mut().for_each(|r| *r += d);
                }
            }
            for (a, r) in hidden_mean.iter_mut().zip(h.iter()) {
                *a += r.max(0.0) / c as f32;
            }
        }
        affine(&self.mlp2, &self.mlp2_bias, hidden_mean, n, &mut out[..self.d_out * n]);
    }
}

/// Intermediates of [HostAttention::mean_over_contexts].
#[derive(Default)]
pub struct ManyScratch {
    y: Vec<f32>,
    xq: Vec<f32>,
    means: Vec<f32>,
    at_lambda: Vec<f32>,
    top: Vec<f32>,
    total: Vec<f32>,
    lambdas: Vec<f32>,
    tabulated: Vec<f32>,
    h: Vec<f32>,
    hidden_mean: Vec<f32>,
    /// each input's mean and inverse standard deviation (LayerNorm)
    mean: Vec<f32>,
    inv: Vec<f32>,
}

/// Intermediates of [HostAttention::forward] for one cell: the weighted means
/// [PAIRS, n], two rows of n, the hidden layer [HIDDEN, n].
#[derive(Default)]
pub struct ForwardScratch {
    means: Vec<f32>,
    top: Vec<f32>,
    total: Vec<f32>,
    hidden: Vec<f32>,
}

/// [affine_rows] on the widest vector unit the CPU has (the others' bits may
/// differ: fused multiply-adds).
pub(crate) fn affine(w: &[f32], bias: &[f32], input: &[f32], n: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has AVX-512 (the function's features).
            return unsafe { affine_rows_avx512(w, bias, input, n, out) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has AVX2 and FMA (the function's features).
            return unsafe { affine_avx2(w, bias, input, n, out) };
        }
    }
    affine_rows::<false, 8, 8>(w, bias, input, n, out)
}

/// [affine_rows] in AVX2 intrinsics: tiles of up to 6 rows by 2 x 8 columns,
/// 12 sums in flight (enough to hide the multiply-add's latency of 5 cycles on
/// AMD Zen 2; the compiler's 8 x 8 tiles of [affine_rows] issued a broadcast
/// load per multiply-add). The same multiply-adds in the same order, so the
/// same bits as [affine_rows] with FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn affine_avx2(w: &[f32], bias: &[f32], input: &[f32], n: usize, out: &mut [f32]) {
    let rows = bias.len();
    let depth = input.len() / n.max(1);
    // every access below stays inside these bounds
    assert!(w.len() >= depth * rows && input.len() >= depth * n && out.len() >= rows * n);
    let mut o0 = 0;
    while o0 < rows {
        let tile = match rows - o0 {
            1 => 1,
            2 | 3 => 2,
            4 | 5 => 4,
            _ => 6,
        };
        match tile {
            1 => affine_tile_avx2::<1>(w, bias, input, n, out, o0, depth, rows),
            2 => affine_tile_avx2::<2>(w, bias, input, n, out, o0, depth, rows),
            4 => affine_tile_avx2::<4>(w, bias, input, n, out, o0, depth, rows),
            _ => affine_tile_avx2::<6>(w, bias, input, n, out, o0, depth, rows),
        }
        o0 += tile;
    }
}

/// out[o, i] = bias[o] + sum_k w[k, o] input[k, i] for `input` [K, n], `w` [K,
/// rows] and `out` [rows, n], all row-major: a small matrix product in register
/// tiles (BLOCK rows x LANES columns) that stay in registers over k. The
/// portable path (without FMA); with FMA it is the tests' reference for the
/// intrinsics of [affine_avx2] and [affine_rows_avx512]. Each value sums bias
/// then k in order, as the plain loop would, so the tile shape never changes a bit.
#[inline(always)]
fn affine_rows<const FMA: bool, const BLOCK: usize, const LANES: usize>(w: &[f32], bias: &[f32], input: &[f32], n: usize, out: &mut [f32]) {
    let madd = |a: f32, b: f32, c: f32| if FMA { a.mul_add(b, c) } else { a * b + c };
    let rows = bias.len();
    let depth = input.len() / n.max(1);
    let full = n - n % LANES;
    // (any depth: the intrinsics' paths have no limit, nor may this one)
    let mut weights = vec![[0f32; BLOCK]; depth];
    for o0 in (0..rows).step_by(BLOCK) {
        let block = BLOCK.min(rows - o0);
        for (k, wk) in weights.iter_mut().enumerate() {
            wk[..block].copy_from_slice(&w[k * rows + o0..k * rows + o0 + block]);
        }
        for i in (0..full).step_by(LANES) {
            let mut acc = [[0f32; LANES]; BLOCK];
            for (a, &b) in acc.iter_mut().zip(&bias[o0..o0 + block]) {
                *a = [b; LANES];
            }
            for (k, wk) in weights.iter().enumerate().take(depth) {
                let x: &[f32; LANES] = input[k * n + i..k * n + i + LANES].try_into().unwrap();
                for (a, &wv) in acc.iter_mut().zip(wk) {
                    for l in 0..LANES {
                        a[l] = madd(wv, x[l], a[l]);
                    }
                }
            }
            for (b, a) in acc.iter().enumerate().take(block) {
                out[(o0 + b) * n + i..(o0 + b) * n + i + LANES].copy_from_slice(a);
            }
        }
        for i in full..n {
            for b in 0..block {
                let mut v = bias[o0 + b];
                for (k, wk) in weights.iter().enumerate().take(depth) {
                    v = madd(wk[b], input[k * n + i], v);
                }
                out[(o0 + b) * n + i] = v;
            }
        }
    }
}

/// [affine_rows] in AVX-512 intrinsics: tiles of up to 12 rows by 2 x 16
/// columns (24 sums in flight, each weight broadcast from memory once per 32
/// columns; the compiler's 6 x 16 tiles of [affine_rows] spent as many
/// instructions on the loop as on the arithmetic, and tiles of 4, 6 and 8 rows
/// were 25%, 15% and 5% slower in `examples/attention_probe.rs`). The same
/// multiply-adds in the same order, so the same bits.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn affine_rows_avx512(w: &[f32], bias: &[f32], input: &[f32], n: usize, out: &mut [f32]) {
    let rows = bias.len();
    let depth = input.len() / n.max(1);
    // every access below stays inside these bounds
    assert!(w.len() >= depth * rows && input.len() >= depth * n && out.len() >= rows * n);
    let mut o0 = 0;
    while o0 < rows {
        let tile = match rows - o0 {
            1 => 1,
            2 | 3 => 2,
            4 | 5 => 4,
            6 | 7 => 6,
            8..=11 => 8,
            _ => 12,
        };
        match tile {
            1 => affine_tile_avx512::<1>(w, bias, input, n, out, o0, depth, rows),
            2 => affine_tile_avx512::<2>(w, bias, input, n, out, o0, depth, rows),
            4 => affine_tile_avx512::<4>(w, bias, input, n, out, o0, depth, rows),
            6 => affine_tile_avx512::<6>(w, bias, input, n, out, o0, depth, rows),
            8 => affine_tile_avx512::<8>(w, bias, input, n, out, o0, depth, rows),
            _ => affine_tile_avx512::<12>(w, bias, input, n, out, o0, depth, rows),
        }
        o0 += tile;
    }
}

/// Rows o0..o0+R of an affine product in tiles of two vectors of columns (W
/// lanes each), then one vector, then one column at a time: the AVX2 and
/// AVX-512 tiles ([affine_avx2], [affine_rows_avx512]), the same code over the
/// two vector widths.
macro_rules! affine_tile {
    ($name:ident, $lanes:expr, $set1:ident, $load:ident, $fmadd:ident, $store:ident) => {
        #[cfg(target_arch = "x86_64")]
        #[inline(always)]
        #[allow(clippy::too_many_arguments)]
        unsafe fn $name<const R: usize>(w: &[f32], bias: &[f32], input: &[f32], n: usize, out: &mut [f32], o0: usize, depth: usize, rows: usize) {
            use std::arch::x86_64::*;
            const W: usize = $lanes;
            let (wp, xp, op) = (w.as_ptr(), input.as_ptr(), out.as_mut_ptr());
            let mut i = 0;
            while i + 2 * W <= n {
                let mut acc = [[$set1(0.0); 2]; R];
                for (r, a) in acc.iter_mut().enumerate() {
                    *a = [$set1(bias[o0 + r]); 2];
                }
                for k in 0..depth {
                    let x0 = $load(xp.add(k * n + i));
                    let x1 = $load(xp.add(k * n + i + W));
                    for (r, a) in acc.iter_mut().enumerate() {
                        let wv = $set1(*wp.add(k * rows + o0 + r));
                        a[0] = $fmadd(wv, x0, a[0]);
                        a[1] = $fmadd(wv, x1, a[1]);
                    }
                }
                for (r, a) in acc.iter().enumerate() {
                    $store(op.add((o0 + r) * n + i), a[0]);
                    $store(op.add((o0 + r) * n + i + W), a[1]);
                }
                i += 2 * W;
            }
            if i + W <= n {
                let mut acc = [$set1(0.0); R];
                for (r, a) in acc.iter_mut().enumerate() {
                    *a = $set1(bias[o0 + r]);
                }
                for k in 0..depth {
                    let x0 = $load(xp.add(k * n + i));
                    for (r, a) in acc.iter_mut().enumerate() {
                        *a = $fmadd($set1(*wp.add(k * rows + o0 + r)), x0, *a);
                    }
                }
                for (r, a) in acc.iter().enumerate() {
                    $store(op.add((o0 + r) * n + i), *a);
                }
                i += W;
            }
            for i in i..n {
                for r in 0..R {
                    let mut v = bias[o0 + r];
                    for k in 0..depth {
                        v = (*wp.add(k * rows + o0 + r)).mul_add(*xp.add(k * n + i), v);
                    }
                    *op.add((o0 + r) * n + i) = v;
                }
            }
        }
    };
}
affine_tile!(affine_tile_avx2, 8, _mm256_set1_ps, _mm256_loadu_ps, _mm256_fmadd_ps, _mm256_storeu_ps);
affine_tile!(affine_tile_avx512, 16, _mm512_set1_ps, _mm512_loadu_ps, _mm512_fmadd_ps, _mm512_storeu_ps);

/// Contexts laid out for [HostAttention::forward]: token-major, with each
/// context's smallest and largest coordinate.
pub struct Contexts {
    n: usize,
    /// [TOKENS, n]
    by_token: Vec<f32>,
    lo: Vec<f32>,
    hi: Vec<f32>,
    /// the weighted means tabulated in lambda (None: computed directly)
    tilted: Option<TiltedMeans>,
    /// each context's term of the block's direct path, plus any hidden term
    /// ([Contexts::add_hidden_terms]), [HIDDEN, n] (None: neither)
    direct: Option<Vec<f32>>,
}

impl Contexts {
    /// Adds a term per context ([n, HIDDEN] row-major) to the first MLP layer's
    /// pre-activation, as the direct path's term (the sample block's free
    /// per-sample term, [AttentionBlock::forward_with]).
    pub fn add_hidden_terms(&mut self, terms: &[f32]) {
        let (n, h) = (self.n, HIDDEN as usize);
        assert_eq!(terms.len(), n * h, "one term of HIDDEN values per context");
        let direct = self.direct.get_or_insert_with(|| vec![0f32; h * n]);
        for (i, term) in terms.chunks_exact(h).enumerate() {
            for (o, &t) in term.iter().enumerate() {
                direct[o * n + i] += t;
            }
        }
    }

    /// The number of contexts.
    pub fn len(&self) -> usize {
        self.n
    }

    /// m(lambda) of every context into `m` ([n]): from the table, or computed
    /// directly where it does not reach (the largest score subtracted before
    /// exp); `top` and `total` are scratch of n values.
    #[inline(always)]
    fn means_at<const FMA: bool>(&self, lam: f32, m: &mut [f32], top: &mut [f32], total: &mut [f32]) {
        if self.tilted.as_ref().is_some_and(|t| t.interpolate(lam, m)) {
            return;
        }
        let madd = |a: f32, b: f32, c: f32| if FMA { a.mul_add(b, c) } else { a * b + c };
        let edge = if lam >= 0.0 { &self.hi } else { &self.lo };
        for (t, &e) in top.iter_mut().zip(edge) {
            *t = lam * e;
        }
        total.fill(0.0);
        m.fill(0.0);
        for c in self.by_token.chunks_exact(self.n) {
            for (((tot, w), &ci), &t) in total.iter_mut().zip(m.iter_mut()).zip(c).zip(top.iter()) {
                let e = crate::fastmath::exp_with::<FMA>(madd(lam, ci, -t));
                *tot += e;
                *w = madd(e, ci, *w);
            }
        }
        for (w, tot) in m.iter_mut().zip(total.iter()) {
            *w /= tot;
        }
    }

    /// Whether the weighted means come from the table (rather than directly).
    pub fn tabulated(&self) -> bool {
        self.tilted.is_some()
    }
}

/// Log-density of u under a mixture of diagonal Gaussians over whole vectors:
/// log sum_k softmax(logits)_k prod_d N(u_d; mean_kd, exp(log_scale_kd)^2).
/// `logits`: [K] or [N, K] (per-cell weights); u: [N, D] -> [N].
pub fn mixture_log_density(u: &Tensor, logits: &Tensor, means: &Tensor, log_scales: &Tensor) -> Tensor {
    let kind = u.kind();
    let diff = u.unsqueeze(1) - means.unsqueeze(0); // [N, K, D]
    let scales = log_scales.exp().unsqueeze(0);
    let log_norm = -(diff / &scales).square() * 0.5 - log_scales.unsqueeze(0) - 0.5 * (2.0 * std::f64::consts::PI).ln();
    let per_component = log_norm.sum_dim_intlist(2, false, kind); // [N, K]
    let log_w = logits.log_softmax(-1, kind);
    let log_w = if log_w.dim() == 1 { log_w.unsqueeze(0) } else { log_w };
    (per_component + log_w).logsumexp([1], false)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The AVX2 and AVX-512 products against the plain loop with fused
    /// multiply-adds: the same bits for every tile shape and tail (rows 1 to
    /// 32, inputs 1 to 40, depths 3 to 100).
    #[test]
    fn vector_products_equal_the_plain_loop() {
        let mut x = 7u64;
        let mut draw = move || {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (x >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        };
        for (rows, n, depth) in [(1, 1, 3), (2, 7, 5), (3, 8, 30), (5, 15, 16), (6, 16, 32), (7, 23, 10), (13, 40, 64), (32, 33, 32), (9, 17, 100)] {
            let w: Vec<f32> = (0..depth * rows).map(|_| draw()).collect();
            let bias: Vec<f32> = (0..rows).map(|_| draw()).collect();
            let input: Vec<f32> = (0..depth * n).map(|_| draw()).collect();
            let mut want = vec![f32::NAN; rows * n];
            affine_rows::<true, 8, 8>(&w, &bias, &input, n, &mut want);
            #[cfg(target_arch = "x86_64")]
            for (feature, path) in [("avx2", affine_avx2 as unsafe fn(&[f32], &[f32], &[f32], usize, &mut [f32])), ("avx512f", affine_rows_avx512)] {
                let avx512 = std::arch::is_x86_feature_detected!("avx512f");
                if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") && (feature == "avx2" || avx512) {
                    let mut got = vec![f32::NAN; rows * n];
                    // SAFETY: the CPU has the path's features (checked above)
                    unsafe { path(&w, &bias, &input, n, &mut got) };
                    assert!(got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()), "{feature}: {rows} rows, {n} inputs");
                }
            }
        }
    }
}
