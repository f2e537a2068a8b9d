//! Time of the pair-distance kernel (`pair_distances::add_cell_pairs`): ns per
//! (cell, sample pair) for blocks of 64 cells x S = 1,000 samples x L = 30,
//! rows in tasks of 32 and columns in passes of 256 (as the group kernel runs
//! them), one thread.
//!   cargo run --release --example pair_probe -p mrvi-core
use mrvi_core::pair_distances::{accumulator_width, add_cell_pairs_with, detected_lanes, transpose_cell, transposed_len, Lanes, PairWeight};
use std::time::Instant;

fn main() {
    let cells: usize = std::env::var("CELLS").ok().and_then(|c| c.parse().ok()).unwrap_or(64);
    let (s, l) = (1000usize, 30usize);
    let mut x = 1u64;
    let mut uniform = || {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (x >> 40) as f32 / (1u64 << 24) as f32
    };
    let zts: Vec<Vec<f32>> = (0..cells)
        .map(|_| {
            let z: Vec<f32> = (0..s * l).map(|_| uniform()).collect();
            let mut t = vec![0f32; transposed_len(s, l)];
            transpose_cell(&z, s, l, &mut t);
            t
        })
        .collect();
    let width = accumulator_width(s);
    let rows = 32;
    let mut acc = vec![0f64; rows * width];
    let pw = PairWeight { w: 1.0, offset: 0.0, mask: &[] };
    let lanes = match std::env::var("LANES").as_deref() { Ok("avx2") => Lanes::Avx2, Ok("portable") => Lanes::Portable, _ => detected_lanes() };
    let t = Instant::now();
    let reps = 10;
    for r0 in (0..s * reps).step_by(rows).map(|r| r % s) {
        let rr = r0..(r0 + rows).min(s);
        for c0 in (r0 + 1..s).step_by(256) {
            for zt in &zts {
                add_cell_pairs_with(lanes, zt, s, l, rr.clone(), c0..(c0 + 256).min(s), pw, &mut acc);
            }
        }
    }
    let pairs = reps * cells * s * (s - 1) / 2;
    println!("{lanes:?}: {:.3} ns per (cell, pair), S = {s}, L = {l} (checksum {:.3})", t.elapsed().as_secs_f64() / pairs as f64 * 1e9, acc[7]);
}
