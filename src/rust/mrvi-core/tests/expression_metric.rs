//! Expression-space distances in the latent dimension against distances between
//! decoded profiles (libtorch's decoder, every gene).
mod common;

use mrvi_core::distances::{cell_distances, group_sums, DistanceSpec};
use mrvi_core::model::config::{Flavour, ModelSettings, Prior};
use mrvi_core::model::{MrviModel, Space};
use mrvi_core::posterior::Posterior;
use tch::{Device, Kind, Tensor};

/// A model with two categorical nuisance covariates (2 and 3 levels) and every
/// parameter random (the zero-initialised output layers, direct paths and
/// hidden terms too); `contexts`: the attention blocks' direct paths and the
/// samples' hidden terms.
fn random_model(flavour: Flavour, contexts: bool, g: i64, s: i64, l: i64, lu: i64) -> MrviModel {
    let settings = ModelSettings {
        flavour,
        prior: Prior::Normal,
        n_latent: l,
        n_latent_u: lu,
        n_mixture: 0,
        sample_context: contexts,
        nuisance_context: contexts,
        sample_hidden_term: contexts,
    };
    let config = settings.model_config(g, s, 1, 0).with_nuisance(vec![2, 3], 0);
    assert_eq!(config.nuisance_context, contexts && flavour == Flavour::Attention);
    let model = MrviModel::new(config, Device::Cpu);
    let mut names: Vec<(String, Tensor)> = model.vs.variables().into_iter().collect();
    names.sort_by(|a, b| a.0.cmp(&b.0));
    for (_, mut v) in names {
        let _ = tch::no_grad(|| v.copy_(&(v.randn_like() * 0.4)));
    }
    model
}

/// D(n) from the decoded profiles: log2 of the expected expression for every
/// combination of levels, averaged, centred over genes; Euclidean distances.
fn decoded_distances(model: &MrviModel, u: &Tensor) -> Tensor {
    let z = tch::no_grad(|| model.z_all_samples(u)); // [n, S, L]
    let (n, s, l) = (z.size()[0], z.size()[1], z.size()[2]);
    let flat = z.reshape([n * s, l]);
    let mut total = Tensor::zeros([n * s, model.config.n_genes], (Kind::Float, Device::Cpu));
    for first in 0..2i64 {
        for second in 0..3i64 {
            let site = Tensor::from_slice(&[first, 2 + second]).view([1, 2]).expand([n * s, 2], false).contiguous();
            let logits = tch::no_grad(|| model.decode_logits(&flat, &site, None, None));
            total += logits.log_softmax(1, Kind::Float) / std::f64::consts::LN_2;
        }
    }
    let clr = &total / 6.0;
    let clr = (&clr - clr.mean_dim(1, true, Kind::Float)).reshape([n, s, -1]);
    Tensor::cdist(&clr, &clr, 2.0, None::<i64>)
}

#[test]
fn expression_distances_equal_those_of_decoded_profiles() {
    let _rng = common::libtorch_rng();
    for (flavour, contexts) in [(Flavour::Linear, false), (Flavour::Attention, false), (Flavour::Attention, true)] {
        tch::manual_seed(11);
        let (n, g, s, l, lu) = (9usize, 40i64, 5i64, 6i64, 4i64);
        let model = random_model(flavour, contexts, g, s, l, lu);
        let lu = model.config.dim_u() as usize;
        let mean = Vec::<f64>::try_from(&Tensor::randn([(n * lu) as i64], (Kind::Double, Device::Cpu))).unwrap();
        let sd = vec![0.3; n * lu];
        let post = Posterior { mean: &mean, sd: &sd, n_cells: n, n_latent: lu };
        let own: Vec<i64> = (0..n as i64).map(|c| c % s).collect();
        let cells: Vec<usize> = (0..n).collect();
        let spec = DistanceSpec { mc_samples: 0, normalize: false, seed: 1, space: Space::Expression };
        let got = cell_distances(&model, &post, &own, &cells, spec, 4).unwrap(); // [cells, S, S] column-major
        // u by row from the column-major posterior means
        let rows: Vec<f32> = (0..n).flat_map(|c| (0..lu).map(|d| mean[d * n + c] as f32).collect::<Vec<_>>()).collect();
        let want = decoded_distances(&model, &Tensor::from_slice(&rows).view([n as i64, lu as i64]));
        let want = Vec::<f32>::try_from(&want.contiguous().view([-1])).unwrap(); // [cells, S, S] row-major
        let su = s as usize;
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(scale > 0.5, "{flavour:?}: the decoded profiles barely differ ({scale})");
        for c in 0..n {
            for a in 0..su {
                for b in 0..su {
                    let (x, y) = (got[c + n * (a + su * b)], want[(c * su + a) * su + b] as f64);
                    assert!((x - y).abs() <= 1e-4 * (1.0 + scale as f64), "{flavour:?}, cell {c}, pair ({a}, {b}): {x} vs {y}");
                }
            }
        }
        // the streamed group means are the means of these per-cell matrices
        let group = vec![0i64; n];
        let sums = group_sums(&model, &post, &own, &group, 1, spec, 3, &mut || false).unwrap();
        let mean_matrix = sums.mean(0);
        for a in 0..su {
            for b in 0..su {
                let direct = (0..n).map(|c| got[c + n * (a + su * b)]).sum::<f64>() / n as f64;
                assert!((mean_matrix[a * su + b] - direct).abs() <= 1e-9 * (1.0 + direct), "{flavour:?}: group mean ({a}, {b})");
            }
        }
        // latent space is unchanged by the option
        let latent = cell_distances(&model, &post, &own, &cells, DistanceSpec { space: Space::Latent, ..spec }, 4).unwrap();
        assert!(latent.iter().zip(&got).any(|(x, y)| (x - y).abs() > 1e-3), "{flavour:?}: the spaces gave the same distances");
    }
}
