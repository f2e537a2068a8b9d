//! The decoder's output layer, logits = input W^T + b (+ a term), kept as its
//! pieces so that the CPU training step can take its gradients in closed form.
//!
//! The fused likelihood ([super::nb::fused_log_lik]) returns d_logits, the
//! gradient of the log-likelihood with respect to the [B, G] logits. Through
//! autograd, that gradient reached the layer by a surrogate sum(logits *
//! d_logits), which costs a pass over [B, G] each way, and the layer's backward
//! then took the input gradient for every input column. Here the three
//! products are made directly (d_input = d_logits W for the columns that carry
//! a gradient only, dW = d_logits^T input, db = column sums), and autograd sees
//! them through a surrogate of the small tensors: sum(input * d_input) +
//! sum(W * dW) + sum(b * db), whose gradient is the same. For the linear
//! flavour's decoder (input [z, site x sg(z), site]) the input gradient then
//! covers z's L columns instead of all of them.

use super::products;
use tch::{Kind, Tensor};

pub struct OutputLayer {
    /// [B, K], with its graph
    pub input: Tensor,
    /// [G, K], with its graph (a weight, or weights put side by side)
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    /// the input's first columns that carry a gradient (the rest are constants:
    /// covariates, detached z), as a tensor with its graph, and the weight's
    /// columns that read them
    pub traced: Tensor,
    pub traced_weight: Tensor,
    /// [B, G] added to the logits (the continuous covariates' direct term)
    pub term: Option<Tensor>,
}

impl OutputLayer {
    /// The logits, differentiable through autograd.
    pub fn logits(&self) -> Tensor {
        let logits = products::linear(&self.input, &self.weight, self.bias.as_ref());
        match &self.term {
            Some(t) => logits + t,
            None => logits,
        }
    }

    /// The logits' values, without a graph.
    pub fn logit_values(&self) -> Tensor {
        tch::no_grad(|| self.logits())
    }

    /// Whether the layer's input carries a gradient (a training pass).
    pub fn traced(&self) -> bool {
        self.traced.requires_grad()
    }

    /// A scalar whose gradient is that of sum(logits * d_logits) for the
    /// logits' gradient `d_logits` ([B, G]): the layer's products in closed form.
    pub fn surrogate(&self, d_logits: &Tensor) -> Tensor {
        let dot = |a: &Tensor, b: &Tensor| a.reshape([-1]).dot(&b.reshape([-1]));
        let (d_traced, d_weight, d_bias) = products::linear_gradients(
            d_logits,
            &self.input.detach(),
            &self.traced_weight.detach(),
            self.bias.is_some(),
        );
        let mut surrogate = dot(&self.traced, &d_traced) + dot(&self.weight, &d_weight);
        if let (Some(b), Some(db)) = (&self.bias, &d_bias) {
            surrogate += b.dot(db);
        }
        if let Some(t) = &self.term {
            surrogate += dot(t, d_logits);
        }
        surrogate.to_kind(Kind::Float)
    }
}
