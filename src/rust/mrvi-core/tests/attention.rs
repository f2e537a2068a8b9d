//! The attention flavour: mixture prior, shapes, gradients, training, streaming.
mod common;

use mrvi_core::batch::Dataset;
use mrvi_core::data::CscCounts;
use mrvi_core::distances::{group_sums, DistanceSpec};
use mrvi_core::posterior::Posterior;
use mrvi_core::infer::encode;
use mrvi_core::model::attention::{mixture_log_density, AttentionBlock};
use mrvi_core::model::config::{Flavour, ModelSettings, Prior};
use mrvi_core::rng::SplitMix64;
use mrvi_core::train::Trainer;
use tch::{nn, Device, Kind, Tensor};

#[test]
fn mixture_log_density_equals_a_direct_sum() {
    let _rng = common::libtorch_rng();
    tch::manual_seed(1);
    let opts = (Kind::Double, Device::Cpu);
    let (n, k, d) = (5i64, 3i64, 4i64);
    let u = Tensor::randn([n, d], opts);
    let logits = Tensor::randn([k], opts);
    let means = Tensor::randn([k, d], opts);
    let log_scales = Tensor::randn([k, d], opts) * 0.3;
    let got = mixture_log_density(&u, &logits, &means, &log_scales);
    let w = logits.softmax(0, Kind::Double);
    for i in 0..n {
        let mut total = 0.0;
        for c in 0..k {
            let mut dens = w.double_value(&[c]);
            for j in 0..d {
                let (x, m, s) = (u.double_value(&[i, j]), means.double_value(&[c, j]), log_scales.double_value(&[c, j]).exp());
                dens *= (-(x - m).powi(2) / (2.0 * s * s)).exp() / (s * (2.0 * std::f64::consts::PI).sqrt());
            }
            total += dens;
        }
        let g = got.double_value(&[i]);
        assert!((g - total.ln()).abs() < 1e-10, "cell {i}: {g} vs {}", total.ln());
    }
    // per-cell weights [N, K] give the same when all rows are equal
    let rows = logits.unsqueeze(0).expand([n, k], false);
    let again = mixture_log_density(&u, &rows, &means, &log_scales);
    assert!((again - got).abs().max().double_value(&[]) < 1e-12);
}

#[test]
fn attention_block_shapes_and_finite_difference_gradient() {
    let _rng = common::libtorch_rng();
    tch::manual_seed(2);
    let mut vs = nn::VarStore::new(Device::Cpu);
    let block = AttentionBlock::new(vs.root() / "att", 6, 5);
    vs.double();
    // make the zero-initialised output layer non-zero so that every path matters
    for (name, v) in vs.variables().iter_mut() {
        if name.contains("mlp2") {
            let _ = tch::no_grad(|| v.copy_(&(v.randn_like() * 0.3)));
        }
    }
    let x = Tensor::randn([3, 6], (Kind::Double, Device::Cpu));
    let ctx = Tensor::randn([3, 16], (Kind::Double, Device::Cpu));
    let out = block.forward(&x, &ctx);
    assert_eq!(out.size(), vec![3, 5]);
    let f = |b: &AttentionBlock| (b.forward(&x, &ctx).square().sum(Kind::Double)).double_value(&[]);
    block.forward(&x, &ctx).square().sum(Kind::Double).backward();
    let eps = 1e-6;
    for (name, v) in vs.variables() {
        let g = v.grad();
        for idx in [0i64, v.numel() as i64 - 1] {
            let orig = v.view([-1]).double_value(&[idx]);
            let _ = tch::no_grad(|| v.view([-1]).get(idx).fill_(orig + eps));
            let up = f(&block);
            let _ = tch::no_grad(|| v.view([-1]).get(idx).fill_(orig - eps));
            let down = f(&block);
            let _ = tch::no_grad(|| v.view([-1]).get(idx).fill_(orig));
            let fd = (up - down) / (2.0 * eps);
            let ad = g.view([-1]).double_value(&[idx]);
            assert!((fd - ad).abs() <= 1e-5 * (1.0 + fd.abs()), "{name}[{idx}]: autograd {ad} vs fd {fd}");
        }
    }
}

fn toy(n: usize, g: usize, s: i64) -> Dataset {
    let mut rng = SplitMix64::new(3);
    let (mut p, mut i, mut x) = (vec![0i32], Vec::new(), Vec::new());
    for c in 0..n {
        for gene in 0..g {
            let high = (gene < g / 2) == (c % 2 == 0);
            let v = (rng.below(if high { 12 } else { 2 })) as f64;
            if v > 0.0 {
                i.push(gene as i32);
                x.push(v);
            }
        }
        p.push(i.len() as i32);
    }
    let counts = CscCounts::from_slots(g, n, &p, &i, &x).unwrap();
    Dataset::new(counts, (0..n).map(|c| (c / 2) as i64 % s).collect(), vec![0; n]).with_labels((0..n).map(|c| (c % 2) as i64).collect())
}

#[test]
fn attention_flavour_trains_and_streams_distances() {
    let _rng = common::libtorch_rng();
    let settings = ModelSettings { flavour: Flavour::Attention, prior: Prior::Mog, n_latent: 8, n_latent_u: 5, n_mixture: 20 };
    let cfg = settings.model_config(30, 4, 1, 2);
    let train = common::train_config(15, 3, 4);
    let mut t = Trainer::new(cfg, train, toy(400, 30, 4), Device::Cpu).unwrap();
    while !t.done() {
        t.run_epoch(&mut || false).unwrap();
    }
    let h: Vec<f64> = t.history.iter().map(|e| e.validation_elbo).collect();
    assert!(h.iter().all(|v| v.is_finite()));
    assert!(h.last().unwrap() > &(h[0] + 2.0), "ELBO did not improve: {h:?}");
    let model = t.finish();
    let data = toy(400, 30, 4);
    let (mean, sd) = encode(&model, &data, 64).unwrap();
    assert_eq!(mean.len(), 400 * 5);
    let mean: Vec<f64> = mean.into_iter().map(f64::from).collect();
    let sd: Vec<f64> = sd.into_iter().map(f64::from).collect();
    let post = Posterior { mean: &mean, sd: &sd, n_cells: 400, n_latent: 5 };
    let own: Vec<i64> = data.sample.clone();
    let group: Vec<i64> = (0..400).map(|c| (c % 2) as i64).collect();
    let spec = DistanceSpec { mc_samples: 0, normalize: false, seed: 1 };
    // blocks and threads of the pool do not change the result
    mrvi_core::backend::set_num_threads(2).unwrap();
    let a = group_sums(&model, &post, &own, &group, 2, spec, 13, &mut || false).unwrap();
    mrvi_core::backend::set_num_threads(1).unwrap();
    let b = group_sums(&model, &post, &own, &group, 2, spec, 64, &mut || false).unwrap();
    assert_eq!(a.mean(0), b.mean(0));
    // distances agree with z_all_samples computed for the whole set at once
    let u = Tensor::from_slice(&(0..5).map(|d| mean[d * 400] as f32).collect::<Vec<_>>()).view([1, 5]);
    let z = tch::no_grad(|| model.z_all_samples(&u)).squeeze_dim(0);
    assert_eq!(z.size(), vec![4, 8]);
}
