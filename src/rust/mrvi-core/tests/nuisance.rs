//! Several nuisance covariates in the decoder, and samples added to a trained
//! model.

mod common;

use mrvi_core::batch::Dataset;
use mrvi_core::data::CscCounts;
use mrvi_core::model::config::{Flavour, ModelConfig, Prior, TrainConfig};
use mrvi_core::model::MrviModel;
use mrvi_core::train::Trainer;
use tch::{Device, Kind, Tensor};

/// A small model of either flavour (attention: u of 3, z of 4 dimensions).
fn small_config(attention: bool, n_samples: i64) -> ModelConfig {
    let linear = ModelConfig::new(6, n_samples, 1, 3);
    if attention {
        ModelConfig { flavour: Flavour::Attention, n_latent: 4, n_latent_u: 3, prior: Prior::Mog, n_mixture: 5, ..linear }
    } else {
        linear
    }
}

/// `n` cells x `g` genes of small counts (every cell has some), samples
/// cycling over `n_samples` from `first_sample` on.
fn data(n: usize, g: usize, first_sample: i64, n_samples: i64) -> Dataset {
    let (mut p, mut i, mut x) = (vec![0i32], Vec::new(), Vec::new());
    for c in 0..n {
        for gene in 0..g {
            let v = ((c * 7 + gene * 3) % 5) as f64;
            if v > 0.0 {
                i.push(gene as i32);
                x.push(v);
            }
        }
        p.push(i.len() as i32);
    }
    let counts = CscCounts::from_slots(g, n, &p, &i, &x).unwrap();
    Dataset::new(counts, (0..n).map(|c| first_sample + c as i64 % n_samples).collect(), vec![0; n])
}

/// Two categorical covariates (2 and 3 levels) and one continuous one.
fn with_covariates(d: Dataset) -> Dataset {
    let n = d.n_cells();
    let site = (0..n).flat_map(|c| [(c % 2) as i64, 2 + (c % 3) as i64]).collect();
    let x = (0..n).map(|c| c as f32 / n as f32 - 0.5).collect();
    d.with_nuisance(site, 2, x, 1)
}

fn set_random(model: &MrviModel, names: &[&str]) {
    tch::no_grad(|| {
        for (name, mut v) in model.vs.variables() {
            if names.contains(&name.as_str()) {
                v.copy_(&v.randn_like());
            }
        }
    });
}

#[test]
fn linear_decoder_adds_each_covariates_terms() {
    let _rng = common::libtorch_rng();
    tch::manual_seed(3);
    let model = MrviModel::new(ModelConfig::new(6, 2, 1, 3).with_nuisance(vec![2, 3], 1), Device::Cpu);
    set_random(&model, &["decoder.c_b", "decoder.d_x", "decoder.D_x"]);
    let v = model.vs.variables();
    let z = Tensor::randn([4, 3], (Kind::Float, Device::Cpu));
    let site = Tensor::from_slice(&[0i64, 2, 1, 4, 0, 3, 1, 2]).view([4, 2]);
    let x = Tensor::from_slice(&[0.5f32, -1.0, 2.0, 0.0]).view([4, 1]);
    let got = model.decode_logits(&z, &site, Some(&x), None);
    // C z + sum_k (C_{b_k} z + c_{b_k}) + x (D z + d), cell by cell
    for n in 0..4 {
        let zn = z.get(n);
        let mut want = v["decoder.C.weight"].matmul(&zn);
        for k in 0..2 {
            let b = site.int64_value(&[n, k]);
            want = want + v["decoder.C_b"].get(b).matmul(&zn) + v["decoder.c_b"].get(b);
        }
        let xn = x.double_value(&[n, 0]);
        want = want + (v["decoder.D_x"].get(0).matmul(&zn) + v["decoder.d_x"].get(0)) * xn;
        let dev = (got.get(n) - want).abs().max().double_value(&[]);
        assert!(dev < 1e-5, "cell {n}: {dev}");
    }
}

#[test]
fn attention_context_is_the_sum_of_the_embeddings() {
    let _rng = common::libtorch_rng();
    tch::manual_seed(4);
    let config = small_config(true, 2).with_nuisance(vec![2, 3], 1);
    let model = MrviModel::new(config, Device::Cpu);
    set_random(&model, &["decoder.attention.mlp2.weight"]);
    let z = Tensor::randn([2, 4], (Kind::Float, Device::Cpu));
    let site = Tensor::from_slice(&[1i64, 3, 0, 4]).view([2, 2]);
    let x = Tensor::from_slice(&[0.7f32, -0.2]).view([2, 1]);
    // swapping the levels of one cell between covariates changes nothing (a sum);
    // a different continuous value does
    let swapped = Tensor::from_slice(&[3i64, 1, 4, 0]).view([2, 2]);
    let a = model.decode_logits(&z, &site, Some(&x), None);
    let b = model.decode_logits(&z, &swapped, Some(&x), None);
    assert!((a - &b).abs().max().double_value(&[]) < 1e-6);
    let c = model.decode_logits(&z, &site, Some(&(&x + 1.0)), None);
    assert!((c - b).abs().max().double_value(&[]) > 1e-4);
}

#[test]
fn training_takes_the_covariates_and_checks_their_codes() {
    let _rng = common::libtorch_rng();
    tch::manual_seed(5);
    let d = with_covariates(data(40, 6, 0, 2));
    let config = ModelConfig::new(6, 2, 1, 3).with_nuisance(vec![2, 3], 1);
    let train = TrainConfig { batch_size: 8, ..common::train_config(2, 1, 5) };
    let mut t = Trainer::new(config.clone(), train.clone(), d, Device::Cpu).unwrap();
    assert!(t.run_epoch(&mut || false).unwrap().train_elbo.is_finite());
    // a code of covariate 2 among covariate 1's levels is refused
    let bad = data(10, 6, 0, 2).with_nuisance((0..10).flat_map(|_| [0i64, 1]).collect(), 2, vec![0.0; 10], 1);
    assert!(Trainer::new(config.clone(), train.clone(), bad, Device::Cpu).is_err());
    let inf = data(10, 6, 0, 2).with_nuisance((0..10).flat_map(|_| [0i64, 2]).collect(), 2, vec![f32::INFINITY; 10], 1);
    assert!(Trainer::new(config, train, inf, Device::Cpu).is_err());
}

#[test]
fn added_samples_leave_the_reference_exactly_as_it_was() {
    let _rng = common::libtorch_rng();
    for attention in [false, true] {
        tch::manual_seed(6);
        let config = small_config(attention, 3).with_nuisance(vec![2, 3], 1);
        let train = TrainConfig { batch_size: 8, ..common::train_config(3, 1, 6) };
        let mut t = Trainer::new(config, train.clone(), with_covariates(data(60, 6, 0, 3)), Device::Cpu).unwrap();
        for _ in 0..2 {
            t.run_epoch(&mut || false).unwrap();
        }
        let base = t.finish();
        let mut add = Trainer::add_samples(&base, 2, train.clone(), with_covariates(data(30, 6, 3, 2))).unwrap();
        for _ in 0..3 {
            add.run_epoch(&mut || false).unwrap();
        }
        let extended = add.finish();
        assert_eq!(extended.config.n_samples, 5);
        let old = base.vs.variables();
        let mut learned = 0;
        for (name, v) in extended.vs.variables() {
            let o = &old[&name];
            let head = if v.size() == o.size() { v.shallow_clone() } else { v.narrow(0, 0, o.size()[0]) };
            assert!(head.equal(o), "{name}: reference values changed");
            if v.size() != o.size() {
                // the new rows moved away from their start, a copy of a reference row
                let moved = (0..3).all(|r| (v.narrow(0, 3, 1) - o.narrow(0, r, 1)).abs().max().double_value(&[]) > 0.0);
                if moved {
                    learned += 1;
                }
            }
        }
        assert!(learned >= 3, "only {learned} per-sample parameters learned");
        // cells of reference samples cannot be added, nor an empty set of samples
        assert!(Trainer::add_samples(&base, 2, train.clone(), with_covariates(data(10, 6, 0, 3))).is_err());
        assert!(MrviModel::with_new_samples(&base, &[]).is_err());
        assert!(MrviModel::with_new_samples(&base, &[3]).is_err());
    }
}
