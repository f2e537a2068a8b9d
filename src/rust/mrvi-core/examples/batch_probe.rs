//! Times minibatch assembly (`Dataset::batch`, host path for the fused likelihood)
//! on 256 cells of 2,000 genes at ~40% non-zero, as in realistic data.
use mrvi_core::batch::Dataset;
use mrvi_core::data::CscCounts;
use std::time::Instant;
fn main() {
    let (g, n, b) = (2000usize, 4096usize, 256usize);
    let mut rng = mrvi_core::rng::SplitMix64::new(1);
    let (mut p, mut i, mut x) = (vec![0i32], Vec::new(), Vec::new());
    for _ in 0..n {
        for gene in 0..g {
            let u = (rng.next_u64() >> 40) as f64 / (1u64 << 24) as f64;
            if u < 0.4 {
                i.push(gene as i32);
                x.push((1.0 / (1.0 - u / 0.4 * 0.97)).floor());
            }
        }
        p.push(i.len() as i32);
    }
    let data = Dataset::new(CscCounts::from_slots(g, n, &p, &i, &x).unwrap(), vec![0; n], vec![0; n]);
    tch::set_num_threads(std::env::var("THREADS").ok().and_then(|v| v.parse().ok()).unwrap_or(2));
    let cells: Vec<usize> = (0..b).map(|k| (k * 997) % n).collect();
    for _ in 0..20 {
        let _ = data.batch(&cells, tch::Device::Cpu, true);
    }
    let reps = 300;
    let t = Instant::now();
    for _ in 0..reps {
        let _ = data.batch(&cells, tch::Device::Cpu, true);
    }
    println!("{:.3} ms per minibatch of {b} cells ({} non-zeros)", t.elapsed().as_secs_f64() * 1e3 / reps as f64, x.len() * b / n);
}
