//! Sample distances in expression space, computed in the latent dimension.
//!
//! The decoder's expected expression of z is softmax(W y + c) with y a vector of
//! L numbers: y = z for the linear flavour (whose site term is linear in z, so W
//! = C + the mean over levels of C_b), y = z + the mean over nuisance levels of
//! attention(z, e_b) for the attention flavour (W its output layer). The
//! centred log of a composition (clr) is then P (W y + c) / ln 2 in log2 units,
//! P the centring over genes, and the Aitchison distance between the
//! counterfactual expression of a cell as if from sample a and as if from b is
//! || P W (y_a - y_b) || / ln 2 = || R (y_a - y_b) || with R any L x L factor of
//! W' P W / ln(2)^2. So every gene counts by its log2 fold change, as in a
//! distance between decoded profiles, at the cost of a latent distance: the
//! decoded profiles (G numbers per cell and sample) are never formed. Levels of
//! the nuisance covariates are averaged in log space (the geometric mean of the
//! expression over their grid); continuous covariates sit at their means (0).

use super::attention::{affine, Contexts, HostAttention, ManyScratch, TOKENS};
use tch::{Kind, Tensor};

/// Maps counterfactual z to coordinates whose Euclidean distances are
/// Aitchison distances (log2) between the decoded expression profiles.
pub struct ExpressionMetric {
    n_latent: usize,
    /// R transposed: [L, L] row-major, element (k, i) = R[i, k]
    factor_t: Vec<f32>,
    /// L zeros (the product's bias)
    zeros: Vec<f32>,
    /// the attention flavour: the decoder's block and one context per
    /// combination of nuisance levels
    decoder: Option<(HostAttention, Contexts)>,
}

impl ExpressionMetric {
    /// `weight`: the decoder's map from y to logits, [G, L]; `decoder`: the
    /// attention flavour's block and its contexts (every combination of levels).
    pub(crate) fn new(weight: &Tensor, decoder: Option<(HostAttention, Contexts)>) -> Self {
        let w = weight.detach().to_device(tch::Device::Cpu).to_kind(Kind::Double);
        let centred = &w - w.mean_dim(0, true, Kind::Double);
        let gram = centred.tr().matmul(&centred) / std::f64::consts::LN_2.powi(2);
        // gram = V diag(e) V', so R = diag(sqrt(e)) V' (any factor gives the same norms)
        let (values, vectors) = gram.linalg_eigh("L");
        let factor = values.clamp_min(0.0).sqrt().unsqueeze(1) * vectors.tr();
        let n_latent = weight.size()[1] as usize;
        let factor_t = Vec::<f32>::try_from(&factor.tr().to_kind(Kind::Float).contiguous().view([-1])).expect("float");
        Self { n_latent, factor_t, zeros: vec![0.0; n_latent], decoder }
    }

    /// Contexts of the attention decoder for every combination of the levels of
    /// the categorical covariates (`levels` per covariate; the embedding rows of
    /// covariate k follow those of covariates before it): [combinations, TOKENS]
    /// row-major, each the sum of its levels' rows of `embedding` [B, TOKENS].
    pub(crate) fn level_grid(embedding: &[f32], levels: &[i64]) -> Vec<f32> {
        let tokens = TOKENS as usize;
        let mut grid = vec![vec![0f32; tokens]];
        let mut offset = 0;
        for &n in levels {
            let n = n as usize;
            grid = grid
                .iter()
                .flat_map(|ctx| {
                    (offset..offset + n).map(move |row| ctx.iter().zip(&embedding[row * tokens..(row + 1) * tokens]).map(|(a, b)| a + b).collect::<Vec<f32>>())
                })
                .collect();
            offset += n;
        }
        grid.concat()
    }

    /// Replaces one cell's z under `s` samples, [L, S] by dimension (`by_dimension`)
    /// or [S, L], by its expression coordinates R y.
    pub fn transform(&self, z: &mut [f32], s: usize, by_dimension: bool, scratch: &mut MetricScratch) {
        let l = self.n_latent;
        let MetricScratch { y, block_out, many } = scratch;
        // y = z by dimension, [L, S]
        y.resize(l * s, 0.0);
        if by_dimension {
            y.copy_from_slice(&z[..l * s]);
        } else {
            for smp in 0..s {
                for i in 0..l {
                    y[i * s + smp] = z[smp * l + i];
                }
            }
        }
        if let Some((block, contexts)) = &self.decoder {
            block_out.resize(l * s, 0.0);
            block.mean_over_contexts(y, s, contexts, block_out, many);
            for (v, b) in y.iter_mut().zip(block_out.iter()) {
                *v += b;
            }
        }
        // R y by dimension, [L, S]
        block_out.resize(l * s, 0.0);
        affine(&self.factor_t, &self.zeros, y, s, block_out);
        if by_dimension {
            z[..l * s].copy_from_slice(block_out);
        } else {
            for smp in 0..s {
                for i in 0..l {
                    z[smp * l + i] = block_out[i * s + smp];
                }
            }
        }
    }
}

/// Per-thread buffers of [ExpressionMetric::transform].
#[derive(Default)]
pub struct MetricScratch {
    y: Vec<f32>,
    block_out: Vec<f32>,
    many: ManyScratch,
}
