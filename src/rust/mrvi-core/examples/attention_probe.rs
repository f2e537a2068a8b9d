//! Time of the attention block in closed form on the host
//! (`HostAttention::forward`, the counterfactual z of the attention flavour):
//! microseconds per (cell, sample) pair for one cell against SAMPLES (default 64) samples' contexts,
//! L_u = 10, L = 30, random parameters, one thread. Then the decoder's block
//! (`HostAttention::mean_over_contexts`, expression-space distances): microseconds
//! per input for a cell's SAMPLES counterfactuals (L = 30) against 2 nuisance contexts.
//!   cargo run --release --example attention_probe -p mrvi-core
//! (DECODER_ONLY=1: the decoder's block alone, 50x as many repetitions, for a profiler)
use mrvi_core::model::attention::{AttentionBlock, ForwardScratch, HostAttention, ManyScratch};
use std::time::Instant;
use tch::{nn, Device, Kind, Tensor};

fn main() {
    tch::manual_seed(1);
    let vs = nn::VarStore::new(Device::Cpu);
    let block = AttentionBlock::new(vs.root() / "a", 10, 30);
    let mut vars: Vec<_> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0)); // a fixed order: the same parameters every run
    for (_, mut v) in vars {
        let _ = tch::no_grad(|| v.copy_(&(v.randn_like() * 0.5)));
    }
    let host = HostAttention::new(&block);
    let s: usize = std::env::var("SAMPLES").ok().and_then(|v| v.parse().ok()).unwrap_or(64);
    let emb = Vec::<f32>::try_from(&Tensor::randn([s as i64 * 16], (Kind::Float, Device::Cpu))).unwrap();
    let contexts = host.contexts(&emb);
    let xs = Vec::<f32>::try_from(&Tensor::randn([2000 * 10], (Kind::Float, Device::Cpu))).unwrap();
    let mut out = vec![0f32; s * 30];
    let decoder_only = std::env::var("DECODER_ONLY").is_ok();
    let (reps, mut check) = (if decoder_only { 0usize } else { 20 }, 0f64);
    let mut scratch = ForwardScratch::default();
    let t = Instant::now();
    for _ in 0..reps {
        for x in xs.chunks_exact(10) {
            host.forward(x, &contexts, &mut out, &mut scratch);
            check += out[7] as f64;
        }
    }
    let pairs = reps * (xs.len() / 10) * s;
    println!("{:.3} us per (cell, sample) pair, tabulated: {} (checksum {check:.3})", t.elapsed().as_secs_f64() / pairs as f64 * 1e6, contexts.tabulated());

    // the decoder's block: query z (30), 2 contexts, a cell's s inputs at once
    let decoder = AttentionBlock::new(vs.root() / "d", 30, 30);
    let mut vars: Vec<_> = vs.variables().into_iter().filter(|(k, _)| k.starts_with("d.")).collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    for (_, mut v) in vars {
        let _ = tch::no_grad(|| v.copy_(&(v.randn_like() * 0.5)));
    }
    let host = HostAttention::new(&decoder);
    let emb = Vec::<f32>::try_from(&Tensor::randn([2 * 16], (Kind::Float, Device::Cpu))).unwrap();
    let contexts = host.contexts(&emb);
    let ys = Vec::<f32>::try_from(&Tensor::randn([30 * s as i64], (Kind::Float, Device::Cpu))).unwrap();
    let mut out = vec![0f32; 30 * s];
    let mut scratch = ManyScratch::default();
    let reps = (200_000 / s).max(1) * if decoder_only { 50 } else { 1 };
    let t = Instant::now();
    for _ in 0..reps {
        host.mean_over_contexts(&ys, s, &contexts, &mut out, &mut scratch);
        check += out[7] as f64;
    }
    println!("decoder block: {:.4} us per input against 2 contexts, tabulated: {} (checksum {check:.3})",
             t.elapsed().as_secs_f64() / (reps * s) as f64 * 1e6, contexts.tabulated());
}
