//! Model-level checks: autograd gradients against finite differences, the
//! stop-gradients, training improving the ELBO, weights round-tripping.
//! Every test seeds libtorch's global generator under `common::libtorch_rng()`.

mod common;

use mrvi_core::batch::Dataset;
use mrvi_core::data::{CountColumns, CscCounts};
use mrvi_core::infer::encode;
use mrvi_core::io::{load_bytes_into, model_from_bytes, tensors_to_bytes, varstore_to_bytes};
use mrvi_core::model::config::{Flavour, ModelConfig, ModelSettings, Prior};
use mrvi_core::model::nb::NonZeros;
use mrvi_core::model::{Batch, MrviModel};
use mrvi_core::rng::SplitMix64;
use mrvi_core::model::config::{BlockShuffle, TrainConfig};
use mrvi_core::train::{BlockLoader, Trainer};
use std::ops::Range;
use tch::{Device, Kind, Tensor};

/// Poisson-ish counts for `n` cells over `g` genes from two cell types whose
/// expression differs; samples alternate.
fn toy_data(n: usize, g: usize, n_samples: i64, seed: u64) -> Dataset {
    let mut rng = SplitMix64::new(seed);
    let (mut p, mut i, mut x) = (vec![0i32], Vec::new(), Vec::new());
    for c in 0..n {
        let cell_type = c % 2;
        for gene in 0..g {
            let high = (gene < g / 2) == (cell_type == 0);
            let mean = if high { 6.0 } else { 0.5 };
            // inverse-CDF Poisson draw
            let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
            let (mut k, mut prob) = (0u32, (-mean as f64).exp());
            let mut cdf = prob;
            while u > cdf && k < 200 {
                k += 1;
                prob *= mean / k as f64;
                cdf += prob;
            }
            if k > 0 {
                i.push(gene as i32);
                x.push(k as f64);
            }
        }
        p.push(i.len() as i32);
    }
    let counts = CscCounts::from_slots(g, n, &p, &i, &x).unwrap();
    let sample = (0..n).map(|c| (c / 2) as i64 % n_samples).collect();
    Dataset::new(counts, sample, vec![0; n])
}

fn double_batch(b: &Batch) -> Batch {
    let d = |t: &Tensor| t.to_kind(Kind::Double);
    Batch {
        log_counts: d(&b.log_counts),
        log_library: d(&b.log_library),
        sample: b.sample.shallow_clone(),
        site: b.site.shallow_clone(),
        continuous: None,
        label: None,
        nonzeros: b.nonzeros.as_ref().map(|nz| NonZeros {
            flat: nz.flat.shallow_clone(),
            gene: nz.gene.shallow_clone(),
            value: d(&nz.value),
            lgamma_x1: d(&nz.lgamma_x1),
        }),
        host: None,
    }
}

#[test]
fn gradients_match_finite_differences() {
    let _rng = common::libtorch_rng();
    let data = toy_data(8, 6, 2, 11);
    tch::manual_seed(0);
    let mut model = MrviModel::new(ModelConfig { n_hidden: 5, ..ModelConfig::new(6, 2, 1, 3) }, Device::Cpu);
    model.vs.double();
    // Finite differences see the paths through sg(u) and sg(z) that autograd
    // must not: with A_s = 0 and C_b = 0 those paths have zero derivative, so
    // both must agree everywhere (A_s and C_b still get their own gradients).
    // The next test checks that the stop-gradients hold when they are non-zero.
    for (name, v) in model.vs.variables().iter_mut() {
        if name.contains("sample_effect.A") || name.contains("C_b") {
            let _ = tch::no_grad(|| v.zero_());
        }
    }
    // the tensor likelihood, in double precision
    let batch = double_batch(&data.batch(&(0..8).collect::<Vec<_>>(), Device::Cpu, false));
    let loss = |m: &MrviModel| {
        tch::manual_seed(42); // the same posterior draw at every evaluation
        let l = m.losses(&batch, false);
        (l.reconstruction + l.kl).sum(Kind::Double)
    };
    let vars = model.vs.variables();
    loss(&model).backward();
    let eps = 1e-6;
    let mut checked = 0;
    for (name, v) in vars.iter() {
        let grad = v.grad();
        let flat_n = v.numel() as i64;
        for k in [0, flat_n / 2, flat_n - 1] {
            let idx = k;
            let orig = v.view([-1]).double_value(&[idx]);
            tch::no_grad(|| { let _ = v.view([-1]).get(idx).fill_(orig + eps); });
            let up = loss(&model).double_value(&[]);
            tch::no_grad(|| { let _ = v.view([-1]).get(idx).fill_(orig - eps); });
            let down = loss(&model).double_value(&[]);
            tch::no_grad(|| { let _ = v.view([-1]).get(idx).fill_(orig); });
            let fd = (up - down) / (2.0 * eps);
            let ad = grad.view([-1]).double_value(&[idx]);
            assert!((fd - ad).abs() <= 1e-4 * (1.0 + fd.abs()), "{name}[{idx}]: autograd {ad} vs finite difference {fd}");
            checked += 1;
        }
    }
    assert!(checked >= 30);
}

#[test]
fn stop_gradient_keeps_sample_and_site_maps_off_the_encoder() {
    // The gradient reaching the encoder must be the same whatever A_s and C_b are,
    // as long as the forward values agree: check that u's gradient does not flow
    // through A_s sg(u), by comparing to a model with A_s = 0 evaluated at the same z.
    let _rng = common::libtorch_rng();
    let data = toy_data(4, 6, 2, 5);
    tch::manual_seed(0);
    let model = MrviModel::new(ModelConfig::new(6, 2, 1, 3), Device::Cpu);
    let batch = data.batch(&[0, 1, 2, 3], Device::Cpu, true);
    let u = Tensor::randn([4, 3], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    for (name, v) in model.vs.variables().iter_mut() {
        if name.contains("sample_effect.A") {
            tch::no_grad(|| v.copy_(&(v.randn_like())));
        }
    }
    let z = model.z_from_u(&u, &batch.sample);
    z.sum(Kind::Float).backward();
    // dz/du through the non-detached path only is the identity: gradient of sum = 1.
    let g = u.grad();
    let max_dev = (g - 1.0).abs().max().double_value(&[]);
    assert!(max_dev < 1e-6, "u received gradient through A_s sg(u): {max_dev}");

    // d logits / d z must be C alone: the site term C_b drop(sg(z)) passes nothing back.
    for (name, v) in model.vs.variables().iter_mut() {
        if name.contains("C_b") {
            tch::no_grad(|| v.copy_(&(v.randn_like())));
        }
    }
    let z = Tensor::randn([4, 3], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    let weights = Tensor::randn([4, 6], (Kind::Float, Device::Cpu));
    (model.decode_logits(&z, &batch.site, None, None) * &weights).sum(Kind::Float).backward();
    let c = &model.vs.variables()["decoder.C.weight"]; // [G, L]
    let expected = weights.matmul(c);
    let dev = (z.grad() - expected).abs().max().double_value(&[]);
    assert!(dev < 1e-5, "z received gradient through C_b sg(z): {dev}");
}

#[test]
fn training_improves_the_elbo_and_is_reproducible() {
    let _rng = common::libtorch_rng();
    let run = || {
        let data = toy_data(600, 40, 4, 3);
        let cfg = common::train_config(40, 4, 9);
        let mut t = Trainer::new(ModelConfig::new(40, 4, 1, 4), cfg, data, Device::Cpu).unwrap();
        while !t.done() {
            t.run_epoch(&mut || false).unwrap();
        }
        let hist: Vec<f64> = t.history.iter().map(|h| h.validation_elbo).collect();
        let data = toy_data(600, 40, 4, 3);
        let model = t.finish();
        (hist, encode(&model, &data, 128).unwrap().0, varstore_to_bytes(&model.vs).unwrap())
    };
    let (hist, u1, w1) = run();
    assert!(hist.iter().all(|v| v.is_finite()));
    assert!(hist.last().unwrap() > &(hist[0] + 5.0), "validation ELBO did not improve: {hist:?}");
    let (_, u2, w2) = run();
    assert!(w1 == w2, "same seed, different weights");
    assert!(u1 == u2, "same seed, different latents");
    // the two cell types (even and odd cells) are separated along u
    let n = 600;
    let stats = |col: &[f32], parity: usize| {
        let v: Vec<f32> = (0..n).filter(|c| c % 2 == parity).map(|c| col[c]).collect();
        let m = v.iter().sum::<f32>() / v.len() as f32;
        let var = v.iter().map(|x| (x - m).powi(2)).sum::<f32>() / (v.len() - 1) as f32;
        (m, var)
    };
    // largest standardised gap between the type means over the dimensions of u
    let separation = (0..4)
        .map(|d| {
            let col = &u1[d * n..(d + 1) * n];
            let ((m0, v0), (m1, v1)) = (stats(col, 0), stats(col, 1));
            (m0 - m1).abs() / ((v0 + v1) / 2.0).sqrt()
        })
        .fold(0f32, f32::max);
    assert!(separation > 4.0, "cell types not separated in u: standardised gap {separation}");
}

/// The validation pass draws the same posterior noise every epoch: a model that
/// does not move (learning rate 0) has the same validation ELBO in every epoch,
/// so early stopping sees the model's progress, not Monte Carlo noise.
#[test]
fn validation_draws_are_the_same_every_epoch() {
    let _rng = common::libtorch_rng();
    let mut cfg = common::train_config(4, 0, 5);
    cfg.lr = 0.0;
    let mut t = Trainer::new(ModelConfig::new(40, 4, 1, 4), cfg, toy_data(600, 40, 4, 3), Device::Cpu).unwrap();
    let hist: Vec<f64> = (0..4).map(|_| t.run_epoch(&mut || false).unwrap().validation_elbo).collect();
    assert!(hist.iter().all(|v| v.is_finite() && *v == hist[0]), "validation ELBO moved without training: {hist:?}");
    // while the training draws differ between epochs
    let train: Vec<f64> = t.history.iter().map(|h| h.train_elbo).collect();
    assert!(train[1] != train[0], "training draws repeated: {train:?}");
}

/// Block shuffling (counts on disk): training that reads its blocks through a
/// loader ends bit-identical to the same shuffle over counts in memory; each
/// epoch reads every block once, a buffer of consecutive-cell blocks at a time.
#[test]
fn block_shuffle_from_a_loader_equals_counts_in_memory() {
    let _rng = common::libtorch_rng();
    let (n, g) = (600, 40);
    let cfg = TrainConfig {
        blocks: Some(BlockShuffle { block_cells: 50, buffer_blocks: 3 }),
        ..common::train_config(8, 2, 4)
    };
    let run = |on_disk: bool| {
        let data = toy_data(n, g, 4, 3);
        let source = data.counts.clone();
        let library = data.library.clone();
        let data = if on_disk { Dataset::new(CscCounts::empty(g, n), data.sample.clone(), data.site.clone()) } else { data };
        let mut t = Trainer::new(ModelConfig::new(g as i64, 4, 1, 4), cfg.clone(), data, Device::Cpu).unwrap();
        if on_disk {
            let mut gene_totals = vec![0f64; g];
            for c in 0..n {
                source.column(c).for_each(|(k, v)| gene_totals[k] += v as f64);
            }
            t.set_counts_on_disk(library, gene_totals).unwrap();
            assert!(t.run_epoch(&mut || false).unwrap_err().to_string().contains("on disk"));
        }
        let (mut reads, mut hints): (Vec<Vec<Range<usize>>>, Vec<Vec<Range<usize>>>) = (Vec::new(), Vec::new());
        let mut loader = |r: &[Range<usize>], next: &[Range<usize>]| {
            reads.push(r.to_vec());
            hints.push(next.to_vec());
            Ok(source.select(r))
        };
        while !t.done() {
            let l: Option<&mut BlockLoader> = if on_disk { Some(&mut loader) } else { None };
            t.run_epoch_from(&mut || false, l).unwrap();
        }
        let hist: Vec<f64> = t.history.iter().map(|h| h.validation_elbo).collect();
        (hist, varstore_to_bytes(&t.finish().vs).unwrap(), reads, hints)
    };
    let (h_memory, w_memory, _, _) = run(false);
    let (h_disk, w_disk, reads, hints) = run(true);
    assert!(w_memory == w_disk, "reading blocks changed the weights");
    assert_eq!(h_memory, h_disk);
    assert!(h_disk.iter().all(|v| v.is_finite()) && h_disk.last().unwrap() > &(h_disk[0] + 5.0), "{h_disk:?}");
    // 12 blocks: 1 for validation, 11 for training in buffers of 3 (4 reads) + 1 read
    assert_eq!(reads.len(), 8 * 5);
    // each read names the one after it in its epoch (training, then validation
    // blocks), so that the reader can prefetch it; the epoch's last names none
    for (epoch_reads, epoch_hints) in reads.chunks(5).zip(hints.chunks(5)) {
        assert_eq!(&epoch_hints[..4], &epoch_reads[1..]);
        assert!(epoch_hints[4].is_empty());
    }
    for epoch in reads.chunks(5) {
        let mut cells: Vec<usize> = epoch.iter().flatten().flat_map(|r| r.clone()).collect();
        assert!(epoch.iter().all(|buffer| buffer.len() <= 3 && buffer.iter().all(|r| r.len() == 50 && r.start % 50 == 0)));
        cells.sort_unstable();
        assert_eq!(cells, (0..n).collect::<Vec<_>>(), "an epoch reads every cell once");
    }
    // the training blocks come in another order each epoch
    assert_ne!(reads[0], reads[5]);
}

/// A loader that returns other cells than asked for is an error, not a silent mix-up.
#[test]
fn block_loader_must_return_the_cells_asked_for() {
    let _rng = common::libtorch_rng();
    let data = toy_data(100, 10, 2, 1);
    let source = data.counts.clone();
    let cfg = TrainConfig { blocks: Some(BlockShuffle { block_cells: 30, buffer_blocks: 2 }), ..common::train_config(1, 0, 1) };
    let mut t = Trainer::new(ModelConfig::new(10, 2, 1, 3), cfg, data, Device::Cpu).unwrap();
    let mut short = |r: &[Range<usize>], _: &[Range<usize>]| Ok(source.select(&r[..1]));
    let e = t.run_epoch_from(&mut || false, Some(&mut short)).unwrap_err().to_string();
    assert!(e.contains("expected"), "{e}");
}

#[test]
fn weights_round_trip_through_safetensors() {
    let _rng = common::libtorch_rng();
    tch::manual_seed(1);
    let a = MrviModel::new(ModelConfig::new(7, 3, 2, 4), Device::Cpu);
    let bytes = varstore_to_bytes(&a.vs).unwrap();
    tch::manual_seed(2);
    let mut b = MrviModel::new(ModelConfig::new(7, 3, 2, 4), Device::Cpu);
    load_bytes_into(&mut b.vs, &bytes).unwrap();
    assert_eq!(varstore_to_bytes(&b.vs).unwrap(), bytes);
    let mut c = MrviModel::new(ModelConfig::new(8, 3, 2, 4), Device::Cpu);
    let err = load_bytes_into(&mut c.vs, &bytes).unwrap_err().to_string();
    assert!(err.contains("shape"), "{err}");
}

/// A fit from a newer version (a configuration field or a tensor this version
/// does not know) is refused as such, not rebuilt without that part.
#[test]
fn parts_of_a_newer_version_are_refused() {
    let _rng = common::libtorch_rng();
    let config = ModelConfig::new(7, 3, 2, 4);
    let json = serde_json::to_string(&config).unwrap();
    let a = MrviModel::new(config, Device::Cpu);
    let bytes = varstore_to_bytes(&a.vs).unwrap();
    assert!(model_from_bytes(&json, &bytes, Device::Cpu).is_ok());
    let newer_json = json.replacen('{', "{\"future_part\":true,", 1);
    let e = model_from_bytes(&newer_json, &bytes, Device::Cpu).err().expect("an unknown field is refused");
    assert_eq!(e.class(), "mrvi_version_error", "{e}");
    assert!(e.to_string().contains("future_part"), "{e}");
    let extra = Tensor::zeros([3, 2], (Kind::Float, Device::Cpu));
    let mut vars: Vec<(String, Tensor)> = a.vs.variables().into_iter().collect();
    vars.push(("sample_effect.future_part".into(), extra));
    let newer_bytes = tensors_to_bytes(vars.iter().map(|(n, t)| (n.clone(), t)), None).unwrap();
    let e = model_from_bytes(&json, &newer_bytes, Device::Cpu).err().expect("an unknown tensor is refused");
    assert_eq!(e.class(), "mrvi_version_error", "{e}");
    assert!(e.to_string().contains("sample_effect.future_part"), "{e}");
    // a size no weight reaches is refused before the model is allocated at it
    let huge_json = json.replacen("\"n_genes\":7", "\"n_genes\":1000000000000", 1);
    assert_ne!(huge_json, json);
    let e = model_from_bytes(&huge_json, &bytes, Device::Cpu).err().expect("a size beyond the weights is refused");
    assert_eq!(e.class(), "mrvi_io_error", "{e}");
    assert!(e.to_string().contains("n_genes = 1000000000000"), "{e}");
    // damaged JSON stays an input/output error
    let e = model_from_bytes("{\"n_genes\": 7,", &bytes, Device::Cpu).err().unwrap();
    assert_eq!(e.class(), "mrvi_io_error", "{e}");
}

/// Models of 30 genes and 3 samples for the training-step tests: the linear
/// flavour with either prior, the attention flavour (every context and the
/// samples' hidden terms) with either prior.
fn step_test_configs() -> [ModelConfig; 4] {
    let attention = ModelSettings {
        flavour: Flavour::Attention,
        prior: Prior::Mog,
        n_latent: 6,
        n_latent_u: 4,
        n_mixture: 5,
        sample_context: true,
        nuisance_context: true,
        sample_hidden_term: true,
    };
    let normal_prior = ModelSettings { prior: Prior::Normal, ..attention.clone() };
    let linear_mixture = ModelSettings { flavour: Flavour::Linear, ..attention.clone() };
    [ModelConfig::new(30, 3, 1, 4), linear_mixture.model_config(30, 3, 1, 0), attention.model_config(30, 3, 1, 0), normal_prior.model_config(30, 3, 1, 0)]
}

/// Every weight moved by 0.1 standard normal noise, in the order of the
/// weights' names (so that a seed gives the same weights every run): away from
/// the start, where the attention blocks' last layers are zero.
fn perturb_weights(model: &MrviModel) {
    let mut vars: Vec<(String, Tensor)> = model.vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    for (_, v) in vars.iter_mut() {
        let _ = tch::no_grad(|| v.g_add_(&(v.randn_like() * 0.1)));
    }
}

/// Zero the gradients the model's trainable weights have.
fn zero_gradients(model: &MrviModel) {
    for v in model.vs.trainable_variables() {
        let mut g = v.grad();
        if g.defined() {
            let _ = g.zero_();
        }
    }
}

/// Every weight's gradient (zeros where it has none), in the order of the
/// weights' names, summed over `models`.
fn gradients(models: &[&MrviModel]) -> Vec<(String, Tensor)> {
    let mut grads: Vec<(String, Tensor)> = Vec::new();
    for m in models {
        let mut vars: Vec<(String, Tensor)> = m.vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        for (k, (name, v)) in vars.into_iter().enumerate() {
            let g = v.grad();
            let g = if g.defined() { g.copy() } else { v.zeros_like() };
            match grads.get_mut(k) {
                Some((_, total)) => *total += g,
                None => grads.push((name, g)),
            }
        }
    }
    grads
}

/// The CPU step (fused likelihood, the decoder's output layer in closed form;
/// for the attention flavour, both blocks and the KL term on the host with the
/// staged backward, either prior; the linear flavour with either prior; one site,
/// or two categorical covariates and a continuous one) has autograd's gradient
/// for every parameter, on a first step and on a later one.
#[test]
fn fused_cpu_objective_has_the_autograd_gradient() {
    let _rng = common::libtorch_rng();
    let plain = toy_data(50, 30, 3, 8);
    let site = (0..50).flat_map(|c| [(c % 2) as i64, 2 + (c % 3) as i64]).collect();
    let x = (0..50).map(|c| c as f32 / 50.0 - 0.5).collect();
    let covariates = toy_data(50, 30, 3, 8).with_nuisance(site, 2, x, 1);
    let configs = step_test_configs().into_iter().flat_map(|c| [(c.clone(), &plain), (c.with_nuisance(vec![2, 3], 1), &covariates)]);
    for (config, data) in configs {
        tch::manual_seed(3);
        let model = MrviModel::new(config, Device::Cpu);
        perturb_weights(&model);
        let build = |fused: bool| data.batch(&(0..50).collect::<Vec<_>>(), Device::Cpu, fused);
        let (fused_batch, tensor_batch) = (build(true), build(false));
        let grads = |fused: bool| {
            let batch = if fused { &fused_batch } else { &tensor_batch };
            zero_gradients(&model);
            tch::manual_seed(42);
            let t = model.step_terms(batch, &model.draws(50, false), 0.5, 50.0);
            let (rec, kl) = (t.reconstruction_sum, t.kl_sum);
            t.backward().unwrap();
            (rec, kl, gradients(&[&model]))
        };
        // the first step (no .grad yet: the host parts' surrogates) and a later
        // one (their gradients added to .grad in place)
        let (rec_f, kl_f, g_f) = grads(true);
        let (rec_a, kl_a, g_a) = grads(false);
        let (_, _, g_later) = grads(true);
        assert!((rec_f - rec_a).abs() < 1e-3 * rec_a.abs(), "reconstruction {rec_f} vs {rec_a}");
        assert!((kl_f - kl_a).abs() < 1e-3 * kl_a.abs().max(1.0), "KL {kl_f} vs {kl_a}");
        for (((name, a), (_, b)), (_, later)) in g_f.iter().zip(&g_a).zip(&g_later) {
            let scale = b.abs().max().double_value(&[]).max(1e-3);
            for fused in [a, later] {
                let dev = (fused - b).abs().max().double_value(&[]);
                assert!(dev <= 1e-3 * scale, "{name}: fused and autograd gradients differ by {dev} (scale {scale})");
            }
        }
    }
}

/// A minibatch split into shards (the training step on several threads): the
/// first shard through the model, the second through a replica made before the
/// weights last changed, each with its rows of the minibatch's draws, has the
/// gradient and the sums of the whole minibatch in one pass, for both flavours,
/// either prior, the fused and the tensor likelihood, with dropout on.
#[test]
fn a_minibatch_in_shards_has_the_gradient_of_the_whole() {
    let _rng = common::libtorch_rng();
    let data = toy_data(50, 30, 3, 9);
    for config in step_test_configs() {
        tch::manual_seed(4);
        let model = MrviModel::new(config, Device::Cpu);
        let replica = model.replica();
        // changed after the replica was made: it must see the new weights
        perturb_weights(&model);
        for fused in [true, false] {
            zero_gradients(&model);
            zero_gradients(&replica);
            tch::manual_seed(42);
            let draws = model.draws(50, true);
            let whole = model.step_terms(&data.batch(&(0..50).collect::<Vec<_>>(), Device::Cpu, fused), &draws, 0.5, 50.0);
            let (rec, kl) = (whole.reconstruction_sum, whole.kl_sum);
            whole.backward().unwrap();
            let g_whole = gradients(&[&model]);
            zero_gradients(&model);
            let (mut rec_parts, mut kl_parts) = (0.0, 0.0);
            for (m, cells) in [(&model, 0..20), (&replica, 20..50)] {
                let rows = draws.rows(cells.start as i64, cells.len() as i64);
                let t = m.step_terms(&data.batch(&cells.collect::<Vec<_>>(), Device::Cpu, fused), &rows, 0.5, 50.0);
                rec_parts += t.reconstruction_sum;
                kl_parts += t.kl_sum;
                t.backward().unwrap();
            }
            let g_parts = gradients(&[&model, &replica]);
            assert!((rec - rec_parts).abs() < 1e-4 * rec.abs(), "reconstruction {rec} vs {rec_parts} in shards");
            assert!((kl - kl_parts).abs() < 1e-4 * kl.abs().max(1.0), "KL {kl} vs {kl_parts} in shards");
            for ((name, a), (_, b)) in g_whole.iter().zip(&g_parts) {
                let scale = a.abs().max().double_value(&[]).max(1e-3);
                let dev = (a - b).abs().max().double_value(&[]);
                assert!(dev <= 1e-4 * scale, "{name} (fused {fused}): shards' gradient differs by {dev} (scale {scale})");
            }
        }
    }
}

/// Training on two threads (each full minibatch in two shards) ends with the
/// same weights every time, other weights than on one thread (the shards are
/// used), and ELBOs within 1% of one thread's; for both flavours.
#[test]
fn training_on_two_threads_is_reproducible() {
    let _rng = common::libtorch_rng();
    let before = mrvi_core::backend::num_threads();
    let attention = ModelConfig { flavour: Flavour::Attention, n_latent_u: 4, ..ModelConfig::new(40, 4, 1, 6) };
    for config in [ModelConfig::new(40, 4, 1, 4), attention] {
        let fit = |threads: i32| {
            mrvi_core::backend::set_num_threads(threads).unwrap();
            let mut t = Trainer::new(config.clone(), common::train_config(4, 1, 5), toy_data(600, 40, 4, 3), Device::Cpu).unwrap();
            while !t.done() {
                t.run_epoch(&mut || false).unwrap();
            }
            let elbo = t.history.last().unwrap().validation_elbo;
            (elbo, varstore_to_bytes(&t.finish().vs).unwrap())
        };
        let ((elbo_two, two), (_, again), (elbo_one, one)) = (fit(2), fit(2), fit(1));
        assert!(two == again, "{:?}: two runs on two threads differ", config.flavour);
        assert!(two != one, "{:?}: two threads gave one thread's weights: no shards?", config.flavour);
        assert!((elbo_two - elbo_one).abs() < 0.01 * elbo_one.abs(), "{:?}: ELBO {elbo_two} on two threads, {elbo_one} on one", config.flavour);
    }
    mrvi_core::backend::set_num_threads(before).unwrap();
}

#[test]
fn a_checkpointed_run_resumes_bit_for_bit() {
    use mrvi_core::checkpoint;
    let _rng = common::libtorch_rng();
    let new = |max_epochs: usize, seed: u64| {
        let cfg = mrvi_core::model::config::TrainConfig { patience: 2, ..common::train_config(max_epochs, 2, seed) };
        Trainer::new(ModelConfig::new(40, 4, 1, 4), cfg, toy_data(300, 40, 4, 3), Device::Cpu).unwrap()
    };
    let run = |t: &mut Trainer| {
        while !t.done() {
            t.run_epoch(&mut || false).unwrap();
        }
    };
    // the ELBOs of each epoch (not the timings)
    let elbos = |t: &Trainer| t.history.iter().map(|h| (h.train_elbo, h.validation_elbo)).collect::<Vec<_>>();
    let mut whole = new(8, 4);
    run(&mut whole);
    let path = std::env::temp_dir().join(format!("mrvi-checkpoint-test-{}.safetensors", std::process::id()));
    let mut first = new(3, 4);
    run(&mut first);
    checkpoint::save(&first, &path).unwrap();
    let mut resumed = new(8, 4);
    checkpoint::load(&mut resumed, &path).unwrap();
    assert_eq!(resumed.history, first.history);
    run(&mut resumed);
    assert_eq!(elbos(&resumed), elbos(&whole));
    assert_eq!((resumed.stopped_early, resumed.best_epoch()), (whole.stopped_early, whole.best_epoch()));
    let w = |t: Trainer| varstore_to_bytes(&t.finish().vs).unwrap();
    assert!(w(resumed) == w(whole), "the resumed run ended with other weights");
    // a run with another seed (another validation split, other draws) is refused
    let e = checkpoint::load(&mut new(8, 5), &path).unwrap_err();
    assert_eq!(e.class(), "mrvi_checkpoint_error");
    assert!(e.to_string().contains("other settings than this call"), "{e}");
    std::fs::write(&path, b"not a checkpoint").unwrap();
    let e = checkpoint::load(&mut new(8, 4), &path).unwrap_err();
    assert!(e.to_string().contains("not a whole mrvi training checkpoint"), "{e}");
    std::fs::remove_file(&path).unwrap();
}

/// A checkpoint damaged after it was written (one flipped bit in a tensor, in
/// the state, at the end) is refused as damaged, never resumed into a garbage
/// fit; the intact file loads; a file holding more epochs than `max_epochs`
/// is refused; a format-1 file (no checksum, written before) still loads.
#[test]
fn a_damaged_checkpoint_is_refused() {
    use mrvi_core::checkpoint;
    use safetensors::tensor::SafeTensors;
    let _rng = common::libtorch_rng();
    let new = |max_epochs: usize| {
        Trainer::new(ModelConfig::new(40, 4, 1, 4), common::train_config(max_epochs, 2, 4), toy_data(300, 40, 4, 3), Device::Cpu).unwrap()
    };
    let mut first = new(2);
    while !first.done() {
        first.run_epoch(&mut || false).unwrap();
    }
    let path = std::env::temp_dir().join(format!("mrvi-checkpoint-damaged-{}.safetensors", std::process::id()));
    checkpoint::save(&first, &path).unwrap();
    let intact = std::fs::read(&path).unwrap();
    let resumed = checkpoint::load(&mut new(4), &path).unwrap();
    assert_eq!(resumed.threads, vec![resumed.threads_now]);
    let header = u64::from_le_bytes(intact[..8].try_into().unwrap()) as usize;
    let state_at = intact.windows(8).position(|w| w == b"adam_ste").unwrap() + 14;
    for at in [header + 8 + 100, header + 8 + 5000, intact.len() - 1, state_at] {
        let mut bytes = intact.clone();
        bytes[at] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();
        let e = checkpoint::load(&mut new(4), &path).unwrap_err();
        assert_eq!(e.class(), "mrvi_checkpoint_error");
        assert!(e.to_string().contains("is damaged"), "byte {at}: {e}");
    }
    // asked for fewer epochs than the file holds: refused, naming both
    std::fs::write(&path, &intact).unwrap();
    let e = checkpoint::load(&mut new(1), &path).unwrap_err();
    assert_eq!(e.class(), "mrvi_checkpoint_error");
    assert!(e.to_string().contains("holds 2 epochs, more than max_epochs = 1"), "{e}");
    // the same file as the previous version wrote it: format 1, no checksum
    let st = SafeTensors::deserialize(&intact).unwrap();
    let (_, meta) = SafeTensors::read_metadata(&intact).unwrap();
    let mut meta = meta.metadata().clone().unwrap();
    meta.remove("checksum");
    meta.insert("format".into(), "mrvi training checkpoint 1".into());
    let old = safetensors::serialize(st.tensors(), &Some(meta)).unwrap();
    std::fs::write(&path, &old).unwrap();
    let mut from_old = new(4);
    let resumed = checkpoint::load(&mut from_old, &path).unwrap();
    assert_eq!(from_old.history, first.history);
    assert_eq!(resumed.threads, vec![resumed.threads_now]);
    std::fs::remove_file(&path).unwrap();
}

/// Early stopping waits for `min_epochs` (by default half of `max_epochs`):
/// a run that patience alone stops early trains on, through the same epochs.
#[test]
fn early_stopping_waits_for_min_epochs() {
    let _rng = common::libtorch_rng();
    let run = |min_epochs: Option<usize>| {
        let cfg = TrainConfig { patience: 1, min_epochs, lr: 0.1, ..common::train_config(30, 1, 7) };
        let mut t = Trainer::new(ModelConfig::new(40, 4, 1, 4), cfg, toy_data(300, 40, 4, 3), Device::Cpu).unwrap();
        while !t.done() {
            t.run_epoch(&mut || false).unwrap();
        }
        (t.stopped_early, t.history.iter().map(|h| h.validation_elbo).collect::<Vec<_>>())
    };
    let (stopped, eager) = run(Some(0));
    assert!(stopped && eager.len() < 12, "patience 1 alone should stop early ({} epochs)", eager.len());
    let (_, patient) = run(Some(12));
    assert!(patient.len() >= 12, "stopped after {} epochs, before min_epochs", patient.len());
    assert_eq!(&patient[..eager.len()], &eager[..]);
    let (_, default) = run(None);
    assert!(default.len() >= 15, "stopped after {} epochs, before half of max_epochs", default.len());
}
