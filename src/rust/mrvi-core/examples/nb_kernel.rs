//! Times the fused likelihood kernel on one 256 x 2000 minibatch.
use mrvi_core::model::nb::{fused_log_lik, HostCounts};
use std::time::Instant;
fn main() {
    let (b, g) = (256usize, 2000usize);
    let mut rng = mrvi_core::rng::SplitMix64::new(1);
    let mut unif = || (rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
    let logits: Vec<f32> = (0..b * g).map(|_| unif() * 4.0 - 2.0).collect();
    // DENSITY (default 0.2): the share of non-zero entries, counts 1 + geometric-like
    let density: f32 = std::env::var("DENSITY").ok().and_then(|v| v.parse().ok()).unwrap_or(0.2);
    let dense: Vec<f32> = (0..b * g).map(|_| { let u = unif(); if u >= density { 0.0 } else { (1.0 / (1.0 - 0.97 * u / density)).floor() } }).collect();
    let (mut nz_ptr, mut nz_gene, mut nz_count) = (vec![0usize], vec![], vec![]);
    for r in 0..b { for k in 0..g { let v = dense[r * g + k]; if v > 0.0 { nz_gene.push(k as u32); nz_count.push(v); } } nz_ptr.push(nz_gene.len()); }
    let lg = vec![0f32; b];
    let lib = vec![7.0f32; b];
    let theta: Vec<f32> = (0..g).map(|k| (k % 7) as f32 * 0.3 - 1.0).collect();
    let host = HostCounts { nz_ptr: &nz_ptr, nz_gene: &nz_gene, nz_count: &nz_count, lgamma_x1: &lg };
    let t = Instant::now();
    let mut d = vec![0f32; b * g];
    for _ in 0..500 { let _ = fused_log_lik(&logits, &lib, &theta, &host, Some(&mut d)); }
    println!("{:.2} ms per minibatch", t.elapsed().as_secs_f64() * 1e3 / 500.0);
}
