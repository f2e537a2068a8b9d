//! The attention block of the later MrVI (MODEL.md §4): 16 projected coordinates
//! of LayerNorm(x) attend to the 16 coordinates of a context embedding (a sample's
//! or a site's), each coordinate lifted to 8 channels; 2 heads x 4 channels; the
//! 16 x 8 output goes through a small MLP (128 -> 32 -> out).

use tch::nn::{self, Module};
use tch::Tensor;

pub const TOKENS: i64 = 16;
const CHANNELS: i64 = 8;
const HEADS: i64 = 2;
const HIDDEN: i64 = 32;

pub struct AttentionBlock {
    project: nn::Linear,
    lift_q: nn::Linear,
    lift_kv: nn::Linear,
    wq: nn::Linear,
    wk: nn::Linear,
    wv: nn::Linear,
    mlp1: nn::Linear,
    mlp2: nn::Linear,
    d_in: i64,
}

impl AttentionBlock {
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
            d_in,
        }
    }

    /// x: [N, d_in]; context: [N, TOKENS] -> [N, d_out].
    pub fn forward(&self, x: &Tensor, context: &Tensor) -> Tensor {
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
        self.mlp2.forward(&self.mlp1.forward(&out).relu())
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
