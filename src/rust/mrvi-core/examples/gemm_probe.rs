//! Times the decoder output layer's gradient products in both layouts, one thread.
use std::time::Instant;
use tch::{Device, Kind, Tensor};
fn main() {
    tch::set_num_threads(1);
    let o = (Kind::Float, Device::Cpu);
    let (b, g, l) = (128i64, 2000i64, std::env::var("L").ok().and_then(|v| v.parse().ok()).unwrap_or(30i64));
    let d = Tensor::randn([b, g], o);
    let z = Tensor::randn([b, l], o);
    let w = Tensor::randn([g, l], o);
    let reps = 400;
    let time = |name: &str, f: &dyn Fn() -> Tensor| { let _ = f(); let t = Instant::now(); for _ in 0..reps { let _ = f(); } let s = t.elapsed().as_secs_f64() / reps as f64; println!("{name:28} {:.3} ms {:.1} GFLOP/s", s * 1e3, 2.0 * (b * g * l) as f64 / s / 1e9); };
    time("fwd z W^T [B,G]", &|| z.mm(&w.tr()));
    time("dW = d^T z [G,L]", &|| d.tr().mm(&z));
    time("dW^T = z^T d [L,G]", &|| z.tr().mm(&d));
    time("dz = d W [B,L]", &|| d.mm(&w));
    time("dz^T = W^T d^T [L,B]", &|| w.tr().mm(&d.tr()));
    let wt = w.tr().contiguous();
    time("dz = d (W^T)^T, W^T contig", &|| d.mm(&wt.tr()));
    time("dz^T = W^T d^T, W^T contig", &|| wt.mm(&d.tr()));
}
