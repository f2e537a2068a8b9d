//! The attention flavour: mixture prior, shapes, gradients, training, streaming.
mod common;

use mrvi_core::batch::Dataset;
use mrvi_core::data::CscCounts;
use mrvi_core::distances::{group_sums, DistanceSpec};
use mrvi_core::posterior::Posterior;
use mrvi_core::infer::{counterfactual_z, encode, projected_counterfactuals, EffectSpread};
use mrvi_core::model::attention::{mixture_log_density, AttentionBlock, ForwardScratch, HostAttention, ManyScratch};
use mrvi_core::model::config::{Flavour, ModelSettings, Prior};
use mrvi_core::model::{Space, ZLayout};
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

/// The store's variables by name: random values drawn in this order are the same
/// every run (the store's map has no fixed order).
fn sorted_variables(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
    let mut vars: Vec<_> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}

/// An attention block under "att", with the direct path of the context when
/// `direct` (as the sample effect's block of new fits).
fn attention_block(vs: &nn::VarStore, d_in: i64, d_out: i64, direct: bool) -> AttentionBlock {
    let mut block = AttentionBlock::new(vs.root() / "att", d_in, d_out);
    if direct {
        block.direct = Some(AttentionBlock::direct_path(vs.root() / "att"));
    }
    block
}

#[test]
fn attention_block_shapes_and_finite_difference_gradient() {
    let _rng = common::libtorch_rng();
    tch::manual_seed(2);
    let mut vs = nn::VarStore::new(Device::Cpu);
    let block = attention_block(&vs, 6, 5, true);
    vs.double();
    // make the zero-initialised layers (the output and the direct path)
    // non-zero so that every path matters
    for (name, v) in sorted_variables(&vs).iter_mut() {
        if name.contains("mlp2") || name.contains("direct") {
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
        // the keys' bias adds the same score to every key of a query, which the
        // softmax removes: the closed form never reads it (its gradient is 0)
        let g = if v.grad().defined() { v.grad() } else { v.zeros_like() };
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

#[test]
fn closed_forms_of_attention_equal_the_block_as_written() {
    for direct in [false, true] {
        closed_forms_of_attention_equal_the_block_as_written_with(direct);
    }
}

fn closed_forms_of_attention_equal_the_block_as_written_with(direct: bool) {
    let _rng = common::libtorch_rng();
    tch::manual_seed(5);
    let (d_in, d_out, n_ctx) = (7i64, 6i64, 9i64);
    let vs = nn::VarStore::new(Device::Cpu);
    let block = attention_block(&vs, d_in, d_out, direct);
    // every parameter random (the output layer starts at zero), large enough
    // for peaked softmaxes of both signs
    for (_, mut v) in sorted_variables(&vs) {
        let _ = tch::no_grad(|| v.copy_(&(v.randn_like() * 0.8)));
    }
    let host = HostAttention::new(&block);
    for (trial, spread) in [0.5f64, 2.0, 8.0].into_iter().enumerate() {
        let x = Tensor::randn([1, d_in], (Kind::Float, Device::Cpu)) * (1.0 + trial as f64);
        let ctx = Tensor::randn([n_ctx, 16], (Kind::Float, Device::Cpu)) * spread;
        let want = tch::no_grad(|| block.reference(&x.expand([n_ctx, d_in], false), &ctx));
        let closed = tch::no_grad(|| block.forward(&x.expand([n_ctx, d_in], false), &ctx));
        let closed = Vec::<f32>::try_from(&closed.contiguous().view([-1])).unwrap();
        let want = Vec::<f32>::try_from(&want.contiguous().view([-1])).unwrap();
        let xs = Vec::<f32>::try_from(&x.view([-1])).unwrap();
        let cs = Vec::<f32>::try_from(&ctx.contiguous().view([-1])).unwrap();
        let mut by_dim = vec![f32::NAN; want.len()];
        let contexts = host.contexts(&cs);
        assert!(contexts.tabulated(), "spread {spread}: the weighted means are not tabulated");
        host.forward(&xs, &contexts, &mut by_dim, &mut ForwardScratch::default());
        // [d_out, n] to the tensors' [n, d_out]
        let (n, d) = (n_ctx as usize, d_out as usize);
        let got: Vec<f32> = (0..n * d).map(|k| by_dim[(k % d) * n + k / d]).collect();
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        for (i, ((g, c), w)) in got.iter().zip(&closed).zip(&want).enumerate() {
            assert!((g - w).abs() <= 2e-5 * (1.0 + scale), "host, spread {spread}, value {i}: {g} vs {w}");
            assert!((c - w).abs() <= 2e-5 * (1.0 + scale), "tensor, spread {spread}, value {i}: {c} vs {w}");
        }
    }
}

#[test]
fn many_inputs_against_few_contexts_equal_the_block_as_written() {
    for direct in [false, true] {
        many_inputs_against_few_contexts_equal_the_block_as_written_with(direct);
    }
}

fn many_inputs_against_few_contexts_equal_the_block_as_written_with(direct: bool) {
    let _rng = common::libtorch_rng();
    tch::manual_seed(6);
    let (d_in, d_out, n_x, n_ctx) = (7i64, 6i64, 37i64, 3i64);
    let vs = nn::VarStore::new(Device::Cpu);
    let block = attention_block(&vs, d_in, d_out, direct);
    for (_, mut v) in sorted_variables(&vs) {
        let _ = tch::no_grad(|| v.copy_(&(v.randn_like() * 0.8)));
    }
    let host = HostAttention::new(&block);
    // the last spread is too wide to tabulate: the weighted means are computed directly
    for spread in [0.5f64, 2.0, 8.0, 3000.0] {
        let x = Tensor::randn([n_x, d_in], (Kind::Float, Device::Cpu)) * 2.0;
        let ctx = Tensor::randn([n_ctx, 16], (Kind::Float, Device::Cpu)) * spread;
        let contexts = host.contexts(&Vec::<f32>::try_from(&ctx.contiguous().view([-1])).unwrap());
        if spread == 0.5 || spread == 3000.0 {
            assert_eq!(contexts.tabulated(), spread == 0.5, "spread {spread}");
        }
        let want = (0..n_ctx)
            .map(|j| tch::no_grad(|| block.reference(&x, &ctx.get(j).unsqueeze(0).expand([n_x, 16], false))))
            .fold(Tensor::zeros([n_x, d_out], (Kind::Float, Device::Cpu)), |a, b| a + b)
            / n_ctx as f64;
        let want = Vec::<f32>::try_from(&want.contiguous().view([-1])).unwrap(); // [n_x, d_out]
        let xs = Vec::<f32>::try_from(&x.tr().contiguous().view([-1])).unwrap(); // [d_in, n_x]
        let mut got = vec![f32::NAN; (n_x * d_out) as usize];
        host.mean_over_contexts(&xs, n_x as usize, &contexts, &mut got, &mut ManyScratch::default());
        let (n, d) = (n_x as usize, d_out as usize);
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        for i in 0..n {
            for o in 0..d {
                let (g, w) = (got[o * n + i], want[i * d + o]);
                assert!((g - w).abs() <= 2e-5 * (1.0 + scale), "spread {spread}, input {i}, output {o}: {g} vs {w}");
            }
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
    let settings = ModelSettings { flavour: Flavour::Attention, prior: Prior::Mog, n_latent: 8, n_latent_u: 5, n_mixture: 20, sample_context: false, nuisance_context: false, sample_hidden_term: false };
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
    let spec = DistanceSpec { mc_samples: 0, normalize: false, seed: 1, space: Space::Latent };
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
    // the host's closed form gives libtorch's counterfactual z for every cell and sample
    let cells: Vec<usize> = (0..400).step_by(7).collect();
    let mean = &mean;
    let us: Vec<f32> = cells.iter().flat_map(|&c| (0..5).map(move |d| mean[d * 400 + c] as f32)).collect();
    let mut host = vec![f32::NAN; cells.len() * 4 * 8];
    model.host_sample_effect().z_block(&us, &mut host, ZLayout::BySample);
    // the host sample effect is kept with the model (its table filled by the
    // distances above): a model made from the same weights, whose table starts
    // empty, gives the same bits
    let config = serde_json::to_string(&model.config).unwrap();
    let fresh = mrvi_core::io::model_from_bytes(&config, &mrvi_core::io::varstore_to_bytes(&model.vs).unwrap(), Device::Cpu).unwrap();
    let mut again = vec![f32::NAN; cells.len() * 4 * 8];
    fresh.host_sample_effect().z_block(&us, &mut again, ZLayout::BySample);
    assert!(host.iter().zip(&again).all(|(a, b)| a.to_bits() == b.to_bits()));
    // the same values by dimension: [cells, L, S]
    let mut by_dim = vec![f32::NAN; cells.len() * 4 * 8];
    model.host_sample_effect().z_block(&us, &mut by_dim, ZLayout::ByDimension);
    for c in 0..cells.len() {
        for (smp, d) in (0..4).flat_map(|smp| (0..8).map(move |d| (smp, d))) {
            assert_eq!(host[(c * 4 + smp) * 8 + d].to_bits(), by_dim[(c * 8 + d) * 4 + smp].to_bits());
        }
    }
    let ut = Tensor::from_slice(&us).view([cells.len() as i64, 5]);
    let want = Vec::<f32>::try_from(&tch::no_grad(|| model.z_all_samples(&ut)).contiguous().view([-1])).unwrap();
    for (i, (g, w)) in host.iter().zip(&want).enumerate() {
        assert!((g - w).abs() <= 1e-5 * (1.0 + w.abs()), "value {i}: host {g} vs libtorch {w}");
    }
    // linear maps of z over samples for several draws: the maps applied to counterfactual_z
    let (r, s, l) = (3usize, 4usize, 8usize);
    let maps: Vec<f64> = (0..r * s * 2).map(|i| ((i * 7 % 11) as f64 - 5.0) / 3.0).collect();
    let of_cell: Vec<usize> = cells.iter().map(|c| c % 2).collect();
    let draws = [None, Some(0), Some(3)];
    // the spread of two blocks of rows ({1, 2} and {0}), whitened per map
    let blocks = [vec![1usize, 2], vec![0]];
    let whitening: Vec<f64> = (0..2 * 5).map(|i| [1.5, 0.0, -0.5, 2.0, 0.7][i % 5]).collect(); // per map: 2 x 2, then 1 x 1
    let spread = EffectSpread { blocks: &blocks, whitening: &whitening };
    let res = projected_counterfactuals(&model, &post, &cells, &draws, 7, &maps, r, &of_cell, true, true, Some(&spread)).unwrap();
    let proj = res.projections.unwrap();
    let (n, samples) = (cells.len(), [0usize, 1, 2, 3]);
    let mut want_mean = vec![0f64; n * s * l];
    for (d, &draw) in draws.iter().enumerate() {
        let z = counterfactual_z(&model, &post, &cells, &samples, draw, 7).unwrap(); // [cells, S, L] column-major
        for c in 0..n {
            for li in 0..l {
                for k in 0..r {
                    let want: f64 = (0..s).map(|a| maps[of_cell[c] * r * s + k + r * a] * z[c + n * (a + s * li)]).sum();
                    let got = proj[c + n * (li + l * (k + r * d))];
                    assert!((got - want).abs() <= 1e-9 * (1.0 + want.abs()), "draw {d} cell {c}: {got} vs {want}");
                }
                for a in 0..s {
                    want_mean[c + n * (a + s * li)] += z[c + n * (a + s * li)] / 3.0;
                }
            }
        }
    }
    let mean_z = res.mean_z.unwrap();
    assert!(mean_z.iter().zip(&want_mean).all(|(g, w)| (g - w).abs() <= 1e-9 * (1.0 + w.abs())));
    // the spread from the projections, two passes: Psi = sum over draws and
    // rows of the centred W = U B_J
    let spread_got = res.spread.unwrap();
    let nd = draws.len();
    for c in 0..n {
        let mut u_at = of_cell[c] * 5;
        for (j, rows) in blocks.iter().enumerate() {
            let q = rows.len();
            let u = &whitening[u_at..u_at + q * q];
            u_at += q * q;
            let w = |d: usize, a: usize, li: usize| (0..q).map(|b| u[a + q * b] * proj[c + n * (li + l * (rows[b] + r * d))]).sum::<f64>();
            let mut psi = vec![0f64; l * l];
            for a in 0..q {
                for x in 0..l {
                    let mx = (0..nd).map(|d| w(d, a, x)).sum::<f64>() / nd as f64;
                    for y in 0..l {
                        let my = (0..nd).map(|d| w(d, a, y)).sum::<f64>() / nd as f64;
                        psi[x * l + y] += (0..nd).map(|d| (w(d, a, x) - mx) * (w(d, a, y) - my)).sum::<f64>();
                    }
                }
            }
            let trace: f64 = (0..l).map(|x| psi[x * l + x]).sum();
            let squares: f64 = psi.iter().map(|v| v * v).sum();
            let (gt, gs) = (spread_got[c + n * j], spread_got[c + n * (j + 2)]);
            assert!((gt - trace).abs() <= 1e-9 * (1.0 + trace.abs()), "cell {c} block {j}: trace {gt} vs {trace}");
            assert!((gs - squares).abs() <= 1e-9 * (1.0 + squares.abs()), "cell {c} block {j}: squares {gs} vs {squares}");
        }
    }
    // nothing asked, nothing made; a map index out of range or a block row outside the maps is refused
    let bare = projected_counterfactuals(&model, &post, &cells, &draws, 7, &maps, r, &of_cell, false, false, None).unwrap();
    assert!(bare.projections.is_none() && bare.mean_z.is_none() && bare.spread.is_none());
    assert!(projected_counterfactuals(&model, &post, &cells, &draws, 7, &maps, r, &vec![2; n], false, false, None).is_err());
    let outside = [vec![3usize]];
    let bad = EffectSpread { blocks: &outside, whitening: &[1.0, 1.0] };
    assert!(projected_counterfactuals(&model, &post, &cells, &draws, 7, &maps, r, &of_cell, false, false, Some(&bad)).is_err());
}
