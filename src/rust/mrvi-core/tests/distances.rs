//! The streamed distance kernel against libtorch's cdist and a direct computation.
mod common;

use mrvi_core::distances::{cell_distances, group_sums, group_sums_masked, group_sums_tensor, DistanceSpec};
use mrvi_core::posterior::Posterior;
use mrvi_core::model::config::ModelConfig;
use mrvi_core::model::{MrviModel, Space};
use tch::{Device, Kind, Tensor};

fn setup(n: usize, s: i64, l: i64) -> (MrviModel, Vec<f64>, Vec<f64>, Vec<i64>) {
    let _rng = common::libtorch_rng(); // the fixture is the same in every test
    tch::manual_seed(4);
    let model = MrviModel::new(ModelConfig::new(20, s, 1, l), Device::Cpu);
    for (name, v) in model.vs.variables().iter_mut() {
        if name.starts_with("sample_effect") {
            let _ = tch::no_grad(|| v.copy_(&(v.randn_like() * 0.5)));
        }
    }
    let mean = Vec::<f64>::try_from(&Tensor::randn([n as i64 * l], (Kind::Double, Device::Cpu))).unwrap();
    let sd = vec![0.3; n * l as usize];
    let own = (0..n).map(|c| (c as i64) % s).collect();
    (model, mean, sd, own)
}

#[test]
fn group_sums_match_cdist_and_do_not_depend_on_the_block_size() {
    let (n, s, l) = (137usize, 9i64, 5i64);
    let (model, mean, sd, own) = setup(n, s, l);
    let post = Posterior { mean: &mean, sd: &sd, n_cells: n, n_latent: l as usize };
    let group: Vec<i64> = (0..n).map(|c| if c % 11 == 0 { -1 } else { (c % 3) as i64 }).collect();
    let spec = DistanceSpec { mc_samples: 0, normalize: false, seed: 1, space: Space::Latent };
    // blocks and threads of the pool do not change the result
    mrvi_core::backend::set_num_threads(2).unwrap();
    let a = group_sums(&model, &post, &own, &group, 3, spec, 16, &mut || false).unwrap();
    mrvi_core::backend::set_num_threads(1).unwrap();
    let b = group_sums(&model, &post, &own, &group, 3, spec, 7, &mut || false).unwrap();
    let t = group_sums_tensor(&model, &post, &group, 3, 50).unwrap();
    for g in 0..3 {
        assert_eq!(a.n_cells[g], t.n_cells[g]);
        let (ma, mb, mt) = (a.mean(g), b.mean(g), t.mean(g));
        assert_eq!(ma, mb, "block size changed group {g}");
        for (x, y) in ma.iter().zip(&mt) {
            assert!((x - y).abs() < 1e-4 * (1.0 + y.abs()), "kernel {x} vs cdist {y}");
        }
    }
    // MC draws are per cell, so the block size does not matter either
    let mc = DistanceSpec { mc_samples: 4, normalize: true, seed: 5, space: Space::Latent };
    let a = group_sums(&model, &post, &own, &group, 3, mc, 16, &mut || false).unwrap();
    let b = group_sums(&model, &post, &own, &group, 3, mc, 5, &mut || false).unwrap();
    assert_eq!(a.mean(1), b.mean(1));
}

#[test]
fn cell_distances_are_the_direct_norms() {
    let (n, s, l) = (12usize, 4i64, 3i64);
    let (model, mean, sd, own) = setup(n, s, l);
    let post = Posterior { mean: &mean, sd: &sd, n_cells: n, n_latent: l as usize };
    let cells = [3usize, 0, 11];
    let spec = DistanceSpec { mc_samples: 0, normalize: false, seed: 1, space: Space::Latent };
    let d = cell_distances(&model, &post, &own, &cells, spec, 2).unwrap();
    let nc = cells.len();
    for (i, &c) in cells.iter().enumerate() {
        let u: Vec<f32> = (0..l as usize).map(|k| mean[k * n + c] as f32).collect();
        let z = tch::no_grad(|| model.z_all_samples(&Tensor::from_slice(&u).view([1, l]))).squeeze_dim(0);
        for a in 0..s {
            for b in 0..s {
                let want = (z.get(a) - z.get(b)).square().sum(Kind::Float).sqrt().double_value(&[]);
                let got = d[i + nc * (a as usize + s as usize * b as usize)];
                assert!((got - want).abs() < 1e-5 * (1.0 + want), "cell {c} ({a},{b}): {got} vs {want}");
            }
        }
    }
}

#[test]
fn normalised_distances_are_clipped_at_the_noise_floor_of_the_own_sample() {
    let (n, s, l) = (10usize, 5i64, 3i64);
    let (model, mean, sd, own) = setup(n, s, l);
    let post = Posterior { mean: &mean, sd: &sd, n_cells: n, n_latent: l as usize };
    let cells = [7usize, 2];
    let m = 6;
    let spec = DistanceSpec { mc_samples: m, normalize: true, seed: 9, space: Space::Latent };
    let d = cell_distances(&model, &post, &own, &cells, spec, 1).unwrap();
    let too_few = DistanceSpec { mc_samples: 2, normalize: true, seed: 9, space: Space::Latent };
    assert!(cell_distances(&model, &post, &own, &cells, too_few, 1).is_err());
    let nc = cells.len();
    let mut clipped = 0;
    for (i, &c) in cells.iter().enumerate() {
        // z of every draw under every sample, by libtorch
        let zs: Vec<Tensor> = (0..m)
            .map(|k| {
                let u = post.rows(&[c], Some(k), 9);
                tch::no_grad(|| model.z_all_samples(&Tensor::from_slice(&u).view([1, l]))).squeeze_dim(0)
            })
            .collect();
        let norm = |a: &Tensor, b: &Tensor| (a - b).square().sum(Kind::Double).sqrt().double_value(&[]);
        let own_s = own[c];
        let floor: Vec<f64> =
            (0..m).flat_map(|p| (p + 1..m).map(move |q| (p, q))).map(|(p, q)| norm(&zs[p].get(own_s), &zs[q].get(own_s))).collect();
        let mu = floor.iter().sum::<f64>() / floor.len() as f64;
        let sigma = (floor.iter().map(|v| (v - mu).powi(2)).sum::<f64>() / (floor.len() - 1) as f64).sqrt();
        for a in 0..s {
            for b in 0..s {
                if a == b {
                    continue;
                }
                let raw: Vec<f64> = zs.iter().map(|z| norm(&z.get(a), &z.get(b))).collect();
                clipped += raw.iter().filter(|&&v| v < mu).count();
                let want = raw.iter().map(|v| (v - mu).max(0.0) / sigma).sum::<f64>() / m as f64;
                let got = d[i + nc * (a as usize + s as usize * b as usize)];
                assert!((got - want).abs() < 1e-4 * (1.0 + want), "cell {c} ({a},{b}): {got} vs {want}");
            }
        }
    }
    assert!(clipped > 0, "the check should include draws below the noise floor");
}

#[test]
fn interrupt_stops_between_blocks() {
    let (n, s, l) = (40usize, 3i64, 2i64);
    let (model, mean, sd, own) = setup(n, s, l);
    let post = Posterior { mean: &mean, sd: &sd, n_cells: n, n_latent: l as usize };
    let group = vec![0i64; n];
    let spec = DistanceSpec { mc_samples: 0, normalize: false, seed: 1, space: Space::Latent };
    let mut calls = 0;
    let r = group_sums(&model, &post, &own, &group, 1, spec, 4, &mut || {
        calls += 1;
        calls > 2
    });
    assert!(matches!(r, Err(mrvi_core::Error::Interrupted)));
}

#[test]
fn masked_group_means_average_each_pair_over_its_admissible_cells() {
    let (n, s, l) = (60usize, 7i64, 4i64);
    let (model, mean, sd, own) = setup(n, s, l);
    let su = s as usize;
    let post = Posterior { mean: &mean, sd: &sd, n_cells: n, n_latent: l as usize };
    let group: Vec<i64> = (0..n).map(|c| (c % 2) as i64).collect();
    // cell c is inadmissible in sample (c % 5) when c % 3 == 0, and sample 6 is
    // inadmissible for every cell of group 1
    let mask: Vec<bool> = (0..su)
        .flat_map(|a| (0..n).map(move |c| !(c % 3 == 0 && a == c % 5) && !(a == 6 && c % 2 == 1)))
        .collect();
    let spec = DistanceSpec { mc_samples: 0, normalize: false, seed: 1, space: Space::Latent };
    let m = group_sums_masked(&model, &post, &own, &group, 2, spec, Some(&mask), 8, &mut || false).unwrap();
    let cells: Vec<usize> = (0..n).collect();
    let d = cell_distances(&model, &post, &own, &cells, spec, 16).unwrap();
    for g in 0..2usize {
        let got = m.mean(g);
        for a in 0..su {
            for b in 0..su {
                if a == b {
                    continue;
                }
                let (mut sum, mut count) = (0f64, 0f64);
                for c in (0..n).filter(|&c| c % 2 == g && mask[c + n * a] && mask[c + n * b]) {
                    sum += d[c + n * (a + su * b)];
                    count += 1.0;
                }
                let want = if count > 0.0 { sum / count } else { f64::NAN };
                let v = got[a * su + b];
                assert!((v.is_nan() && want.is_nan()) || (v - want).abs() < 1e-4 * (1.0 + want.abs()), "pair ({a}, {b}) group {g}: {v} vs {want}");
            }
        }
    }
    // no mask at all: the unmasked means
    let all = vec![true; n * su];
    let full = group_sums_masked(&model, &post, &own, &group, 2, spec, Some(&all), 8, &mut || false).unwrap();
    let plain = group_sums(&model, &post, &own, &group, 2, spec, 8, &mut || false).unwrap();
    for (x, y) in full.mean(0).iter().zip(plain.mean(0)) {
        assert!((x - y).abs() < 1e-9);
    }
}

#[test]
fn a_nan_latent_gives_nan_distances_never_zero() {
    // f32::max(NaN, 0.0) is 0.0: the kernel must keep NaN (raw and normalised,
    // per cell and in group means), so that damage shows instead of looking like "no effect".
    let (n, s, l) = (20usize, 9i64, 4i64);
    let (model, mut mean, sd, own) = setup(n, s, l);
    let bad = 5usize;
    mean[bad] = f64::NAN; // dimension 0 of cell 5
    let post = Posterior { mean: &mean, sd: &sd, n_cells: n, n_latent: l as usize };
    for spec in [
        DistanceSpec { mc_samples: 0, normalize: false, seed: 1, space: Space::Latent },
        DistanceSpec { mc_samples: 4, normalize: true, seed: 1, space: Space::Latent },
    ] {
        let d = cell_distances(&model, &post, &own, &[bad, 0], spec, 2).unwrap();
        for a in 0..s as usize {
            for b in 0..s as usize {
                let (v_bad, v_ok) = (d[2 * (a + s as usize * b)], d[1 + 2 * (a + s as usize * b)]);
                if a != b {
                    assert!(v_bad.is_nan(), "{spec:?} ({a},{b}) of the NaN cell is {v_bad}");
                }
                assert!(v_ok.is_finite(), "a finite cell got {v_ok}");
            }
        }
        let group: Vec<i64> = (0..n).map(|c| (c % 2) as i64).collect(); // cell 5 is in group 1
        let g = group_sums(&model, &post, &own, &group, 2, spec, 16, &mut || false).unwrap();
        assert!(g.mean(0).iter().all(|v| v.is_finite()));
        assert!(g.mean(1)[1].is_nan(), "the group of the NaN cell averages to {}", g.mean(1)[1]);
    }
}
