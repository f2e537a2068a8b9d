//! Replicate means against a direct computation of weighted mean distances.
mod common;

use mrvi_core::distances::{cell_distances, group_sums, DistanceSpec};
use mrvi_core::posterior::Posterior;
use mrvi_core::model::config::ModelConfig;
use mrvi_core::model::{MrviModel, Space};
use mrvi_core::replicates::{replicate_means, Replicates};
use tch::{Device, Kind, Tensor};

fn setup(n: usize, s: i64, l: i64) -> (MrviModel, Vec<f64>, Vec<f64>) {
    let _rng = common::libtorch_rng(); // the fixture is the same in every test
    tch::manual_seed(11);
    let model = MrviModel::new(ModelConfig::new(20, s, 1, l), Device::Cpu);
    for (name, v) in model.vs.variables().iter_mut() {
        if name.starts_with("sample_effect") {
            let _ = tch::no_grad(|| v.copy_(&(v.randn_like() * 0.5)));
        }
    }
    let mean = Vec::<f64>::try_from(&Tensor::randn([n as i64 * l], (Kind::Double, Device::Cpu))).unwrap();
    (model, mean, vec![0.4; n * l as usize])
}

#[test]
fn replicate_means_are_weighted_means_of_the_drawn_cell_distances() {
    let (n, s, l) = (23usize, 5i64, 4i64);
    let (model, mean, sd) = setup(n, s, l);
    let post = Posterior { mean: &mean, sd: &sd, n_cells: n, n_latent: l as usize };
    let cells: Vec<usize> = (0..n).filter(|c| c % 4 != 1).collect();
    let nc = cells.len();
    let (nr, draws, seed) = (5usize, 2usize, 3u64);
    let weights: Vec<f64> = (0..nc * nr).map(|k| ((k * 7) % 4) as f64).collect();
    let own: Vec<i64> = (0..n).map(|c| (c as i64) % s).collect();
    let reps = Replicates { weights: &weights, n_replicates: nr, draws, seed, normalize: false, space: Space::Latent };
    let got = replicate_means(&model, &post, &own, &cells, &reps, 4, &mut || false).unwrap();
    let su = s as usize;
    for k in 0..nr {
        let mut want = vec![0f64; su * su];
        let mut total = 0.0;
        for (i, &c) in cells.iter().enumerate() {
            let w = weights[i + nc * k];
            let u = post.rows(&[c], Some(k % draws), seed);
            let z = tch::no_grad(|| model.z_all_samples(&Tensor::from_slice(&u).view([1, l]))).squeeze_dim(0);
            for a in 0..s {
                for b in 0..s {
                    want[a as usize + su * b as usize] += w * (z.get(a) - z.get(b)).square().sum(Kind::Float).sqrt().double_value(&[]);
                }
            }
            total += w;
        }
        for (j, w) in want.iter().enumerate() {
            let (g, w) = (got[k * su * su + j], w / total);
            assert!((g - w).abs() < 1e-4 * (1.0 + w), "replicate {k} entry {j}: {g} vs {w}");
        }
    }
    // the block size does not change the result
    let again = replicate_means(&model, &post, &own, &cells, &reps, 100, &mut || false).unwrap();
    for (x, y) in got.iter().zip(&again) {
        assert!((x - y).abs() < 1e-9 * (1.0 + y.abs()));
    }
}

#[test]
fn unit_weights_on_the_posterior_mean_give_the_group_mean() {
    let (n, s, l) = (31usize, 6i64, 3i64);
    let (model, mean, sd) = setup(n, s, l);
    let post = Posterior { mean: &mean, sd: &sd, n_cells: n, n_latent: l as usize };
    let cells: Vec<usize> = (0..n).collect();
    let weights = vec![1.0; n * 2];
    let own: Vec<i64> = (0..n).map(|c| (c as i64) % s).collect();
    let reps = Replicates { weights: &weights, n_replicates: 2, draws: 0, seed: 1, normalize: false, space: Space::Latent };
    let got = replicate_means(&model, &post, &own, &cells, &reps, 8, &mut || false).unwrap();
    let spec = DistanceSpec { mc_samples: 0, normalize: false, seed: 1, space: Space::Latent };
    let want = group_sums(&model, &post, &own, &vec![0; n], 1, spec, 8, &mut || false).unwrap().mean(0);
    let su = (s * s) as usize;
    for k in 0..2 {
        for (x, y) in got[k * su..(k + 1) * su].iter().zip(&want) {
            assert!((x - y).abs() < 1e-6 * (1.0 + y.abs()), "{x} vs {y}");
        }
    }
    // all-zero weights: NaN, and a wrong weight length is an error
    let zero = vec![0.0; n];
    let none = Replicates { weights: &zero, n_replicates: 1, draws: 0, seed: 1, normalize: false, space: Space::Latent };
    assert!(replicate_means(&model, &post, &own, &cells, &none, 8, &mut || false).unwrap()[1].is_nan());
    let short = Replicates { weights: &zero[..3], n_replicates: 1, draws: 0, seed: 1, normalize: false, space: Space::Latent };
    assert!(replicate_means(&model, &post, &own, &cells, &short, 8, &mut || false).is_err());
}

#[test]
fn normalised_replicates_average_to_the_normalised_cell_distances() {
    // with every replicate weighting all cells once and each draw used by one
    // replicate, the mean over replicates is the mean over draws: D(n) normalised
    let (n, s, l) = (17usize, 4i64, 3i64);
    let (model, mean, sd) = setup(n, s, l);
    let post = Posterior { mean: &mean, sd: &sd, n_cells: n, n_latent: l as usize };
    let own: Vec<i64> = (0..n).map(|c| (c as i64) % s).collect();
    let cells: Vec<usize> = (0..n).collect();
    let draws = 5;
    let weights = vec![1.0; n * draws];
    let reps = Replicates { weights: &weights, n_replicates: draws, draws, seed: 7, normalize: true, space: Space::Latent };
    let got = replicate_means(&model, &post, &own, &cells, &reps, 6, &mut || false).unwrap();
    let spec = DistanceSpec { mc_samples: draws, normalize: true, seed: 7, space: Space::Latent };
    let per_cell = cell_distances(&model, &post, &own, &cells, spec, 6).unwrap();
    let su = s as usize;
    for a in 0..su {
        for b in 0..su {
            let want: f64 = (0..n).map(|c| per_cell[c + n * (a + su * b)]).sum::<f64>() / n as f64;
            let have: f64 = (0..draws).map(|k| got[k * su * su + a + su * b]).sum::<f64>() / draws as f64;
            assert!((have - want).abs() < 1e-4 * (1.0 + want), "({a},{b}): {have} vs {want}");
        }
    }
    let too_few = Replicates { weights: &weights[..n * 2], n_replicates: 2, draws: 2, seed: 7, normalize: true, space: Space::Latent };
    assert!(replicate_means(&model, &post, &own, &cells, &too_few, 6, &mut || false).is_err());
}
