//! Gradients made on the host (the CPU training step's closed forms:
//! [super::encoder_step], [super::staged], [super::output_layer],
//! [super::attention_step]) added to the parameters' `.grad`.

use super::cpu_floats_mut;
use tch::{Device, Kind, Tensor};

/// Adds gradients computed on the host to parameters' `.grad` where it
/// exists (every step after the first); for a parameter without one it keeps
/// (parameter, gradient), and [Self::into_surrogate] makes the scalar
/// sum(parameter * gradient) whose backward creates it. Parameters that take
/// no gradient (frozen) are skipped.
#[derive(Default)]
pub struct HostGradients {
    pending: Vec<(Tensor, Tensor)>,
    terms: Vec<Tensor>,
}

impl HostGradients {
    /// `param`'s gradient as a tensor of its shape.
    pub fn add(&mut self, param: &Tensor, grad: &Tensor) {
        if !param.requires_grad() {
            return;
        }
        let mut existing = param.grad();
        if existing.defined() {
            let _ = tch::no_grad(|| existing.g_add_(grad));
        } else {
            self.pending.push((param.shallow_clone(), grad.to_device(param.device())));
        }
    }

    /// `param`'s gradient as host floats, row-major.
    pub fn add_slice(&mut self, param: &Tensor, grad: &[f32]) {
        self.add_rows(param, &[0], grad, grad.len());
    }

    /// Adds `grad` ([B, W], one row per cell) to the rows of `param` ([S, ...],
    /// W values per row) that the cells' `rows` codes name.
    pub fn add_rows(&mut self, param: &Tensor, rows: &[usize], grad: &[f32], w: usize) {
        if !param.requires_grad() {
            return;
        }
        let mut existing = param.grad();
        let mut fallback = Vec::new();
        let values: &mut [f32] = if existing.defined() && existing.device() == Device::Cpu && existing.kind() == Kind::Float && existing.is_contiguous() {
            // SAFETY: checked just above; `existing` outlives the slice.
            unsafe { cpu_floats_mut(&mut existing) }
        } else {
            fallback = vec![0f32; param.numel()];
            &mut fallback
        };
        for (r, &s) in rows.iter().enumerate() {
            values[s * w..(s + 1) * w].iter_mut().zip(&grad[r * w..(r + 1) * w]).for_each(|(a, &g)| *a += g);
        }
        if !fallback.is_empty() {
            let grad = Tensor::from_slice(&fallback).view(param.size().as_slice()).to_device(param.device());
            self.pending.push((param.shallow_clone(), grad));
        }
    }

    /// A scalar whose backward adds its gradient, taken with the rest (none
    /// when it reads no parameter that takes a gradient).
    pub fn add_term(&mut self, term: Tensor) {
        if term.requires_grad() {
            self.terms.push(term);
        }
    }

    /// The scalar whose backward adds what could not be added in place, if any
    /// (made with grad mode on, so that it keeps its graph).
    pub fn into_surrogate(self) -> Option<Tensor> {
        let pending = self.pending.into_iter().map(|(param, grad)| (param * grad).sum(Kind::Float));
        pending.chain(self.terms).reduce(|a, b| a + b)
    }
}
