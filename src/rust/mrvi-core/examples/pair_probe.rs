//! Time of the pair-distance kernel (`pair_distances::add_block_pairs`): ns per
//! (cell, sample pair) for blocks of CELLS (default 64) cells x S = 1,000
//! samples x L (default 30), rows in tasks of 32 and columns in panel-aligned
//! passes of 256 (as the group kernel runs them), one thread. LANES = avx2 or
//! portable takes a narrower path.
//!   cargo run --release --example pair_probe -p mrvi-core
use mrvi_core::pair_distances::{accumulator_width, add_block_pairs_with, detected_lanes, panels_len, to_panels, Block, Lanes, PairWeight, PANEL};
use std::time::Instant;

fn main() {
    let var = |name: &str, default: usize| std::env::var(name).ok().and_then(|c| c.parse().ok()).unwrap_or(default);
    let (cells, s, l) = (var("CELLS", 64), 1000usize, var("L", 30));
    let mut x = 1u64;
    let z: Vec<f32> = (0..cells * s * l)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (x >> 40) as f32 / (1u64 << 24) as f32
        })
        .collect();
    let mut panels = vec![0f32; panels_len(cells, s, l)];
    to_panels(&z, cells, s, l, &mut panels);
    let weights = vec![PairWeight { w: 1.0, offset: 0.0, mask: &[] }; cells];
    let block = Block { panels: &panels, weights: &weights, s, l };
    let width = accumulator_width(s);
    let (rows, columns) = (var("ROWS", 32), var("COLUMNS", 256));
    let mut acc = vec![0f64; rows * width];
    let lanes = match std::env::var("LANES").as_deref() {
        Ok("avx2") => Lanes::Avx2,
        Ok("portable") => Lanes::Portable,
        _ => detected_lanes(),
    };
    let t = Instant::now();
    let reps = 10;
    for r0 in (0..s * reps).step_by(rows).map(|r| r % s) {
        let rr = r0..(r0 + rows).min(s);
        for c0 in ((r0 + 1) / PANEL * PANEL..s).step_by(columns) {
            add_block_pairs_with(lanes, &block, rr.clone(), c0..(c0 + columns).min(s), &mut acc);
        }
    }
    let pairs = reps * cells * s * (s - 1) / 2;
    println!("{lanes:?}: {:.3} ns per (cell, pair), S = {s}, L = {l} (checksum {:.3})", t.elapsed().as_secs_f64() / pairs as f64 * 1e9, acc[7]);
}
