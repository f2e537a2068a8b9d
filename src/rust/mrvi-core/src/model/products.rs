//! The training step's large matrix products: the encoder's first layer
//! ([B, G] x [G, H]) and the decoder's output layer ([B, L'] x [L', G]), with
//! their gradients.
//!
//! libtorch multiplies dense float matrices on the CPU with MKL, and MKL picks
//! its kernels by CPU vendor: on AMD CPUs it takes a generic AVX2 path
//! (`mkl_blas_def_sgemm_kernel_0_zen`) whatever the CPU offers. oneDNN, which
//! libtorch carries too, picks its kernels by instruction set. On an AMD EPYC
//! (Zen 5, AVX-512), one thread, these products and their gradients run in
//! about half MKL's time through oneDNN, copies in and out of its layout
//! included (bench/README, session 33). On Intel CPUs MKL takes its AVX-512
//! path, and the products stay with it; so they do on CPUs without AVX-512,
//! where MKL's AVX2 path is what it has anyway.
//!
//! Which library multiplies is fixed per process ([engine]), so a fit's bits
//! stay the same run to run on one machine. oneDNN makes a kernel for each new
//! shape (2-8 ms, then cached): training has a handful (its shards, the last
//! minibatch, validation chunks), and the analyses' chunks showed no cost
//! (differential expression and grouped distances on 100,000 cells as fast as
//! with MKL).

use std::sync::OnceLock;
use tch::{Device, Kind, Tensor};

/// Which library multiplies a training step's large dense products.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    /// libtorch's default (MKL on the CPU, cuBLAS on a GPU)
    Default,
    /// oneDNN's inner product (CPU, float32)
    OneDnn,
}

impl Engine {
    /// The library's name, for mrviBackend().
    pub fn name(self) -> &'static str {
        match self {
            Engine::OneDnn => "oneDNN",
            Engine::Default if tch::utils::has_mkl() => "MKL",
            Engine::Default => "libtorch's BLAS",
        }
    }
}

/// The engine for this process: oneDNN on x86 CPUs with AVX-512 not made by
/// Intel (where MKL's generic path leaves AVX-512 unused) when libtorch was
/// built with it, libtorch's default otherwise. `MRVI_MATMUL=onednn` or
/// `=default` overrides the choice (read once, for benchmarks and tests).
pub fn engine() -> Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    *ENGINE.get_or_init(|| {
        let onednn = match std::env::var("MRVI_MATMUL").ok().as_deref() {
            Some("onednn") => true,
            Some("default") => false,
            _ => !genuine_intel() && has_avx512(),
        };
        if onednn && tch::utils::has_mkldnn() { Engine::OneDnn } else { Engine::Default }
    })
}

fn has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether the CPU is an Intel one (cpuid's vendor string), as MKL asks.
fn genuine_intel() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        let id = std::arch::x86_64::__cpuid(0);
        let vendor: Vec<u8> = [id.ebx, id.edx, id.ecx].iter().flat_map(|r| r.to_le_bytes()).collect();
        vendor == b"GenuineIntel"
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        true
    }
}

/// x W^T + b (x: [N, I], W: [O, I], b: [O]), differentiable, on this
/// process's [engine].
pub fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Tensor {
    linear_on(engine(), x, weight, bias)
}

/// [linear] on a given engine; oneDNN takes float32 matrices on the CPU only,
/// others go to libtorch's default.
pub fn linear_on(engine: Engine, x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Tensor {
    if takes_onednn(engine, &[x]) {
        // oneDNN's own layout in and out: a copy each way, a few percent of the product
        onednn_layout(x).mkldnn_linear(weight, bias).to_dense(None, false)
    } else {
        dense(x).linear(weight, bias)
    }
}

/// `t` in oneDNN's layout: a copy, unless it is in it already ([prepare_input]).
fn onednn_layout(t: &Tensor) -> Tensor {
    if t.is_mkldnn() {
        t.shallow_clone()
    } else {
        t.contiguous().to_mkldnn()
    }
}

/// `t` in libtorch's own layout (a tensor from [prepare_input] may be in oneDNN's).
fn dense(t: &Tensor) -> Tensor {
    if t.is_mkldnn() {
        t.to_dense(None, false)
    } else {
        t.shallow_clone()
    }
}

/// A product's input as this process's [engine] takes it: in oneDNN's layout
/// when oneDNN multiplies (a copy), else itself. For an input that enters a
/// product and its weight gradient (the encoder's first layer), so that it is
/// copied once rather than twice. Only [linear] and the gradients read the result.
pub fn prepare_input(x: &Tensor) -> Tensor {
    if takes_onednn(engine(), &[x]) {
        onednn_layout(x)
    } else {
        x.shallow_clone()
    }
}

/// Whether `engine` is oneDNN and it can take `matrices`: float32 matrices on the
/// CPU (anything else goes to libtorch's default).
fn takes_onednn(engine: Engine, matrices: &[&Tensor]) -> bool {
    engine == Engine::OneDnn && matrices.iter().all(|t| t.device() == Device::Cpu && t.kind() == Kind::Float && t.dim() == 2)
}

/// The gradients of sum(d_out * (x W^T + b)) (d_out: [N, O], x: [N, I]) with
/// respect to x's first columns (those `traced_weight` reads: [O, I'] with
/// I' <= I), to W ([O, I]) and, with `bias`, to b; on this process's [engine].
pub fn linear_gradients(d_out: &Tensor, input: &Tensor, traced_weight: &Tensor, bias: bool) -> (Tensor, Tensor, Option<Tensor>) {
    linear_gradients_on(engine(), d_out, input, traced_weight, bias)
}

/// [linear_gradients] on a given engine.
pub fn linear_gradients_on(engine: Engine, d_out: &Tensor, input: &Tensor, traced_weight: &Tensor, bias: bool) -> (Tensor, Tensor, Option<Tensor>) {
    if takes_onednn(engine, &[d_out, input, traced_weight]) && d_out.size()[0] > 0 && traced_weight.size()[1] > 0 {
        // d_out in oneDNN's layout once, for both gradients
        let d_out = onednn_layout(d_out);
        let (d_weight, d_bias) = weight_gradients_on(engine, &d_out, input, bias);
        let traced_size = [input.size()[0], traced_weight.size()[1]];
        let d_traced = Tensor::mkldnn_linear_backward_input(traced_size, &d_out, &traced_weight.contiguous()).to_dense(None, false);
        (d_traced, d_weight, d_bias)
    } else {
        let (d_weight, d_bias) = weight_gradients_on(engine, d_out, input, bias);
        (oriented_mm(d_out, traced_weight), d_weight, d_bias)
    }
}

/// The gradients of sum(d_out * (x W^T + b)) with respect to W and, with
/// `bias`, to b only (an input that takes no gradient); on this process's [engine].
pub fn weight_gradients(d_out: &Tensor, input: &Tensor, bias: bool) -> (Tensor, Option<Tensor>) {
    weight_gradients_on(engine(), d_out, input, bias)
}

/// [weight_gradients] on a given engine.
pub fn weight_gradients_on(engine: Engine, d_out: &Tensor, input: &Tensor, bias: bool) -> (Tensor, Option<Tensor>) {
    if takes_onednn(engine, &[d_out, input]) && d_out.size()[0] > 0 {
        // libtorch reads only the kind and device of the weight argument
        let like = Tensor::empty([0], (Kind::Float, Device::Cpu));
        let (d_weight, d_bias) = onednn_layout(input).mkldnn_linear_backward_weights(&onednn_layout(d_out), &like, bias);
        (d_weight, bias.then_some(d_bias))
    } else {
        let (d_out, input) = (dense(d_out), dense(input));
        (oriented_mm(&d_out.tr(), &input), bias.then(|| d_out.sum_dim_intlist(0, false, d_out.kind())))
    }
}

/// a b ([P, K] x [K, Q]), computed as (b^T a^T)^T when P > Q: BLAS (column-major)
/// runs its kernels along the result's columns, and a tall, narrow product
/// given the other way round ran at ~55% of its speed (MKL on AMD Zen 2, one
/// thread: the output layer's d weight [2,000 x 30] and d input [128 x 30] at
/// 36 against 62 GFLOP/s, `examples/gemm_probe.rs`). The result may be a
/// transposed view.
fn oriented_mm(a: &Tensor, b: &Tensor) -> Tensor {
    if a.size()[0] > b.size()[1] {
        b.tr().mm(&a.tr()).tr()
    } else {
        a.mm(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// oneDNN's product and its gradients (input, weight, bias) against
    /// libtorch's default, for the shapes of a step and odd ones (one cell, none).
    #[test]
    fn onednn_matches_default() {
        if !tch::utils::has_mkldnn() {
            return;
        }
        tch::manual_seed(3);
        let o = (Kind::Float, Device::Cpu);
        for (n, i, out, with_bias) in [(37i64, 300i64, 20i64, true), (128, 2000, 128, true), (64, 92, 2000, false), (1, 30, 7, true), (0, 30, 7, true)] {
            let x = Tensor::randn([n, i], o).set_requires_grad(true);
            let w = (Tensor::randn([out, i], o) * 0.1).set_requires_grad(true);
            let b = Tensor::randn([out], o).set_requires_grad(true);
            let g = Tensor::randn([n, out], o);
            let run = |engine: Engine| {
                for t in [&x, &w, &b] {
                    let mut grad = t.grad();
                    if grad.defined() {
                        let _ = grad.zero_();
                    }
                }
                let y = linear_on(engine, &x, &w, with_bias.then_some(&b));
                (y * &g).sum(Kind::Float).backward();
                let bias_grad = if with_bias { b.grad().copy() } else { Tensor::zeros([out], o) };
                [y_detached(&x, &w, &b, engine, with_bias), x.grad().copy(), w.grad().copy(), bias_grad]
            };
            let (reference, onednn) = (run(Engine::Default), run(Engine::OneDnn));
            for (name, (r, d)) in ["product", "d input", "d weight", "d bias"].iter().zip(reference.iter().zip(onednn.iter())) {
                assert_eq!(r.size(), d.size(), "{name} [{n}, {i}] x [{i}, {out}]");
                if r.numel() == 0 {
                    continue; // no cells: both empty
                }
                let scale = r.abs().max().double_value(&[]).max(1.0);
                let err = (r - d).abs().max().double_value(&[]);
                assert!(err <= 1e-5 * scale * (i as f64).sqrt(), "{name} [{n}, {i}] x [{i}, {out}]: off by {err} at scale {scale}");
            }
        }
    }

    /// The gradients in closed form ([linear_gradients_on]) equal autograd's, on
    /// both engines, for the input's first columns only and with or without a
    /// bias, with each product computed in either orientation.
    #[test]
    fn closed_form_gradients_match_autograd() {
        tch::manual_seed(5);
        let o = (Kind::Float, Device::Cpu);
        // products in both orientations ([oriented_mm]): tall results (transposed), wide ones (direct)
        for (n, i, traced, out, with_bias) in [(37i64, 32i64, 10i64, 300i64, false), (64, 30, 30, 2000, true), (5, 64, 64, 3, true), (200, 40, 40, 8, false), (1, 5, 2, 7, true), (0, 5, 2, 7, true)] {
            let x = Tensor::randn([n, i], o).set_requires_grad(true);
            let w = Tensor::randn([out, i], o).set_requires_grad(true);
            let b = Tensor::randn([out], o).set_requires_grad(true);
            let g = Tensor::randn([n, out], o);
            (x.linear(&w, with_bias.then_some(&b)) * &g).sum(Kind::Float).backward();
            let engines: &[Engine] = if tch::utils::has_mkldnn() { &[Engine::Default, Engine::OneDnn] } else { &[Engine::Default] };
            for &engine in engines {
                let (d_traced, d_weight, d_bias) = linear_gradients_on(engine, &g, &x.detach(), &w.detach().narrow(1, 0, traced), with_bias);
                let want_traced = x.grad().narrow(1, 0, traced);
                let close = |a: &Tensor, b: &Tensor| a.size() == b.size() && (a.numel() == 0 || (a - b).abs().max().double_value(&[]) <= 1e-4 * (i.max(n) as f64));
                assert!(close(&d_traced, &want_traced), "{engine:?} [{n}, {i}]: d input");
                assert!(close(&d_weight, &w.grad()), "{engine:?} [{n}, {i}]: d weight");
                assert_eq!(d_bias.is_some(), with_bias);
                if let Some(d_bias) = d_bias {
                    assert!(close(&d_bias, &b.grad()), "{engine:?} [{n}, {i}]: d bias");
                }
            }
        }
    }

    fn y_detached(x: &Tensor, w: &Tensor, b: &Tensor, engine: Engine, with_bias: bool) -> Tensor {
        tch::no_grad(|| linear_on(engine, x, w, with_bias.then_some(b)))
    }
}
