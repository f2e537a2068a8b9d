//! extendr glue between R and mrvi-core: convert arguments, call the core, map
//! errors. No numerical logic lives here. Every `Err` and every panic reaches R
//! as an R error (extendr catches panics; `panic = "unwind"` in the profile).
//! Core errors carry their R condition class as a "[class] " prefix, which the R
//! side (`rust_error()` in R/conditions.R) turns into a classed `mrvi_error`.
//! Allocations whose size the caller controls go through `try_vec` and friends:
//! Rust's allocator aborts the process when memory runs out.

use extendr_api::prelude::*;
use mrvi_core::association::cell_association;
use mrvi_core::batch::Dataset;
use mrvi_core::infer::{encode, z_from_u};
use mrvi_core::model::config::{ModelConfig, Settings};
use mrvi_core::model::MrviModel;
use mrvi_core::checkpoint;
use mrvi_core::train::{EpochStats, Trainer};
use mrvi_core::data::{scan_slots, CscCounts, CscView};
use mrvi_core::distances::{cell_distances, group_sums, group_sums_masked, group_sums_tensor, DistanceSpec, Posterior};
use mrvi_core::replicates::{replicate_means, Replicates};
use mrvi_core::error::{try_collect, try_vec, try_with_capacity};
use mrvi_core::{backend, io};
use std::os::raw::c_int;

type RResult<T> = extendr_api::Result<T>;

fn rerr(e: mrvi_core::Error) -> extendr_api::Error {
    extendr_api::Error::Other(format!("[{}] {e}", e.class()))
}

/// An inconsistent call from the package's R code (a classed input error).
fn invalid(msg: impl Into<String>) -> extendr_api::Error {
    rerr(mrvi_core::Error::InvalidInput(msg.into()))
}

/// The external pointer `h` as an `ExternalPtr<T>`, after checking that it is one
/// that this package made for a T: extendr's own conversion reads any external
/// pointer's address as its box and segfaults on a foreign one (from another
/// package, or a `RegisteredNativeSymbol`). The tag extendr stores is T's type name.
fn checked_ptr<T: 'static>(h: &Robj, what: &str) -> RResult<ExternalPtr<T>> {
    let ours = h.is_external_pointer() && {
        let tag = unsafe { h.external_ptr_tag() };
        tag.as_str() == Some(std::any::type_name::<T>())
    };
    if !ours {
        return Err(invalid(format!("not a {what} of this package (a foreign or damaged external pointer)")));
    }
    ExternalPtr::<T>::try_from(h).map_err(|_| invalid(format!("the {what} is gone (saved and restored?)")))
}

fn model_ptr(h: &Robj) -> RResult<ExternalPtr<MrviModel>> {
    checked_ptr::<MrviModel>(h, "native model")
}

/// libtorch facts for mrviBackend().
/// @noRd
#[extendr]
fn mrvi_backend_info() -> List {
    list!(
        libtorch_version = backend::libtorch_version(),
        cuda_available = backend::cuda_available(),
        cuda_device_count = backend::cuda_device_count() as i32,
        threads = backend::num_threads()
    )
}

/// Set libtorch's intra-op thread count; returns the count now in use.
/// @noRd
#[extendr]
fn mrvi_set_threads(n: i32) -> RResult<i32> {
    backend::set_num_threads(n).map_err(rerr)
}

/// Resolve a device name ("cpu", "cuda", "cuda:K", "auto") to the one that will be used.
/// @noRd
#[extendr]
fn mrvi_resolve_device(name: &str) -> RResult<String> {
    backend::resolve_device(name).map(backend::device_name).map_err(rerr)
}

/// Hand the CSC slots of a genes x cells dgCMatrix to Rust, which checks their
/// structure (an error if broken) and scans the values in one pass: counts and
/// first positions (1-based, into x) of non-finite, negative and fractional
/// values, and the totals per cell and per gene.
/// @noRd
#[extendr]
fn mrvi_csc_scan(n_genes: i32, n_cells: i32, p: &[i32], i: &[i32], x: &[f64]) -> RResult<List> {
    let s = scan_slots(n_genes as usize, n_cells as usize, p, i, x).map_err(rerr)?;
    let one_based = |v: Vec<usize>| v.into_iter().map(|k| k as f64 + 1.0).collect::<Vec<f64>>();
    Ok(list!(
        library = s.library,
        gene_total = s.gene_total,
        n_nonfinite = s.n_nonfinite as f64,
        n_negative = s.n_negative as f64,
        n_fractional = s.n_fractional as f64,
        first_nonfinite = one_based(s.first_nonfinite),
        first_negative = one_based(s.first_negative),
        first_fractional = one_based(s.first_fractional)
    ))
}

// --- Ctrl-C -------------------------------------------------------------------------
// R's SIGINT handler only sets R_interrupts_pending (a public libR variable); R acts
// on it at its next check. We poll it between minibatches and take the interrupt
// over (clear it), so that training stops cleanly and mrvi() returns what it has.
// (R_CheckUserInterrupt would longjmp across Rust frames, which must never happen.)
extern "C" {
    static mut R_interrupts_pending: c_int;
}

fn interrupt_pending() -> bool {
    unsafe {
        let flag = std::ptr::addr_of_mut!(R_interrupts_pending);
        if std::ptr::read_volatile(flag) != 0 {
            std::ptr::write_volatile(flag, 0);
            return true;
        }
    }
    false
}

fn dataset(n_genes: i32, n_cells: i32, p: &[i32], i: &[i32], x: &[f64], sample: &[i32], site: &[i32]) -> RResult<Dataset> {
    let counts = CscCounts::from_slots(n_genes as usize, n_cells as usize, p, i, x).map_err(rerr)?;
    let to_i64 = |v: &[i32]| v.iter().map(|&c| c as i64).collect::<Vec<_>>();
    if sample.len() != n_cells as usize || site.len() != n_cells as usize {
        return Err(invalid("sample and site codes must have one value per cell"));
    }
    Ok(Dataset::new(counts, to_i64(sample), to_i64(site)))
}

// --- training ---------------------------------------------------------------------------

/// A trainer between epochs; `None` once finished.
pub struct TrainerHandle(Option<Trainer>);

fn trainer_ptr(h: &Robj) -> RResult<ExternalPtr<TrainerHandle>> {
    checked_ptr::<TrainerHandle>(h, "training run")
}

fn trainer_mut(h: &mut ExternalPtr<TrainerHandle>) -> RResult<&mut Trainer> {
    h.try_addr_mut()?.0.as_mut().ok_or_else(|| invalid("this training run has finished"))
}

/// A named list of scalars and named lists (NULL for none) as JSON, for serde to
/// read into one of the core's settings types. Whole doubles become integers,
/// so that R's numbers fill integer fields.
fn list_json(x: &Robj, at: &str) -> RResult<serde_json::Value> {
    use serde_json::Value;
    if x.is_null() {
        return Ok(Value::Null);
    }
    if let Some(l) = x.as_list() {
        let mut fields = serde_json::Map::new();
        for (name, v) in l.iter() {
            fields.insert(name.to_string(), list_json(&v, name)?);
        }
        return Ok(Value::Object(fields));
    }
    let value = if x.len() != 1 {
        None
    } else {
        match x.rtype() {
            Rtype::Logicals => x.as_bool().map(Value::Bool),
            Rtype::Integers => x.as_integer().map(Value::from),
            Rtype::Doubles => x.as_real().and_then(|v| {
                if v.fract() == 0.0 && v.abs() < 9e15 { Some(Value::from(v as i64)) } else { serde_json::Number::from_f64(v).map(Value::Number) }
            }),
            Rtype::Strings => x.as_str().map(|v| Value::String(v.into())),
            _ => None,
        }
    };
    value.ok_or_else(|| invalid(format!("setting `{at}` must be one non-missing value")))
}

/// Build the model and trainer. Codes are 0-based (`label`: empty when there
/// are none); `settings` is the named list that R/fit.R makes (`Settings`).
/// @noRd
#[extendr]
#[allow(clippy::too_many_arguments)]
fn mrvi_trainer_new(
    n_genes: i32, n_cells: i32, p: &[i32], i: &[i32], x: &[f64], sample: &[i32], site: &[i32], label: &[i32],
    n_samples: i32, n_batches: i32, n_labels: i32, settings: Robj, device: &str,
) -> RResult<ExternalPtr<TrainerHandle>> {
    let settings: Settings = serde_json::from_value(list_json(&settings, "settings")?)
        .map_err(|e| invalid(format!("settings: {e}")))?;
    let mut data = dataset(n_genes, n_cells, p, i, x, sample, site)?;
    let device = backend::resolve_device(device).map_err(rerr)?;
    let model_config = settings.model.model_config(n_genes as i64, n_samples as i64, n_batches as i64, n_labels as i64);
    if model_config.n_labels > 0 {
        data = data.with_labels(label.iter().map(|&v| v as i64).collect());
    }
    let t = Trainer::new(model_config, settings.train, data, device).map_err(rerr)?;
    Ok(ExternalPtr::new(TrainerHandle(Some(t))))
}

/// @noRd
#[extendr]
fn mrvi_trainer_info(h: Robj) -> RResult<List> {
    let mut h = trainer_ptr(&h)?;
    let t = trainer_mut(&mut h)?;
    Ok(list!(
        max_epochs = t.max_epochs as i32,
        n_validation = t.n_validation() as i32,
        device = t.device_name(),
        model_config = serde_json::to_string(&t.model.config).unwrap_or_default()
    ))
}

fn epoch_list(s: &EpochStats, t: &Trainer) -> List {
    list!(
        epoch = s.epoch as i32,
        kl_weight = s.kl_weight,
        train_elbo = s.train_elbo,
        train_reconstruction = s.train_reconstruction,
        train_kl = s.train_kl,
        validation_elbo = s.validation_elbo,
        validation_reconstruction = s.validation_reconstruction,
        validation_kl = s.validation_kl,
        seconds = s.seconds,
        cells_per_second = s.cells_per_second,
        seconds_batches = s.seconds_batches,
        seconds_forward = s.seconds_forward,
        seconds_backward = s.seconds_backward,
        seconds_optimizer = s.seconds_optimizer,
        done = t.done(),
        stopped_early = t.stopped_early,
        interrupted = false
    )
}

/// Run one epoch; Ctrl-C is checked between minibatches.
/// @noRd
#[extendr]
fn mrvi_trainer_epoch(h: Robj) -> RResult<List> {
    let mut h = trainer_ptr(&h)?;
    let t = trainer_mut(&mut h)?;
    match t.run_epoch(&mut interrupt_pending) {
        Ok(s) => Ok(epoch_list(&s, t)),
        Err(mrvi_core::Error::Interrupted) => Ok(list!(interrupted = true)),
        Err(e) => Err(rerr(e)),
    }
}

/// Save the run's state after its last epoch to the file `path` (atomically).
/// @noRd
#[extendr]
fn mrvi_trainer_save(h: Robj, path: &str) -> RResult<()> {
    let mut h = trainer_ptr(&h)?;
    checkpoint::save(trainer_mut(&mut h)?, std::path::Path::new(path)).map_err(rerr)
}

/// Resume a new run from the checkpoint `path`; returns the epochs already done.
/// @noRd
#[extendr]
fn mrvi_trainer_resume(h: Robj, path: &str) -> RResult<List> {
    let mut h = trainer_ptr(&h)?;
    let t = trainer_mut(&mut h)?;
    checkpoint::load(t, std::path::Path::new(path)).map_err(rerr)?;
    Ok(List::from_values(t.history.iter().map(|s| epoch_list(s, t))))
}

/// Finish: restore the best weights and return them as safetensors bytes.
/// @noRd
#[extendr]
fn mrvi_trainer_finish(h: Robj) -> RResult<List> {
    let mut h = trainer_ptr(&h)?;
    let handle = h.try_addr_mut()?;
    let t = handle.0.take().ok_or_else(|| invalid("this training run has finished"))?;
    let best = t.best_epoch().map(|e| e as i32).unwrap_or(i32::MIN); // R's NA_integer_
    let stopped = t.stopped_early;
    let model = t.finish();
    let bytes = io::varstore_to_bytes(&model.vs).map_err(rerr)?;
    Ok(list!(weights = Raw::from_bytes(&bytes), best_epoch = best, stopped_early = stopped))
}

// --- fitted models -------------------------------------------------------------------------

/// Rebuild a model from its configuration JSON and weights.
/// @noRd
#[extendr]
fn mrvi_model_new(config_json: &str, weights: Raw, device: &str) -> RResult<ExternalPtr<MrviModel>> {
    let config: ModelConfig = serde_json::from_str(config_json).map_err(|e| rerr(e.into()))?;
    let device = backend::resolve_device(device).map_err(rerr)?;
    let mut model = MrviModel::new(config, device);
    io::load_bytes_into(&mut model.vs, weights.as_slice()).map_err(rerr)?;
    Ok(ExternalPtr::new(model))
}

/// Whether an external pointer still holds a model (FALSE after saveRDS/readRDS).
/// @noRd
#[extendr]
fn mrvi_model_valid(h: Robj) -> bool {
    model_ptr(&h).map(|p| p.try_addr().is_ok()).unwrap_or(false)
}

/// The checksum of a fit's weights (32 hex digits): see `io::weights_hash`.
/// @noRd
#[extendr]
fn mrvi_weights_hash(weights: Raw) -> String {
    io::weights_hash(weights.as_slice())
}

/// Posterior mean and sd of u for the cells of a count matrix (column-major cells x L).
/// @noRd
#[extendr]
fn mrvi_encode(h: Robj, n_genes: i32, n_cells: i32, p: &[i32], i: &[i32], x: &[f64], sample: &[i32]) -> RResult<List> {
    let h = model_ptr(&h)?;
    let model = h.try_addr()?;
    model.check_compatible(n_genes as usize).map_err(rerr)?;
    if sample.len() != n_cells as usize {
        return Err(invalid("sample codes must have one value per cell"));
    }
    // a view of R's slots, valid for this call: no copy of the counts
    let view = CscView::new(n_genes as usize, p, i, x).map_err(rerr)?;
    let data = Dataset::new(view, sample.iter().map(|&c| c as i64).collect(), vec![0; sample.len()]);
    if data.sample.iter().any(|&s| s < 0 || s >= model.config.n_samples) {
        return Err(invalid("sample codes outside the fitted samples"));
    }
    let (mean, sd) = encode(model, &data, 1024).map_err(rerr)?;
    let f = |v: Vec<f32>| try_collect(v.len(), v.into_iter().map(f64::from), "the posterior").map_err(rerr);
    Ok(list!(mean = f(mean)?, sd = f(sd)?))
}

/// z = u + A_s u + a_s for u (cells x L, column-major) and 0-based sample codes.
/// @noRd
#[extendr]
fn mrvi_z_from_u(h: Robj, u: &[f64], sample: &[i32]) -> RResult<Vec<f64>> {
    let h = model_ptr(&h)?;
    let model = h.try_addr()?;
    let u = to_f32(u)?;
    let s = try_collect(sample.len(), sample.iter().map(|&v| v as i64), "sample codes").map_err(rerr)?;
    let z = z_from_u(model, &u, &s, 4096).map_err(rerr)?;
    try_collect(z.len(), z.into_iter().map(f64::from), "z").map_err(rerr)
}

/// R's doubles as f32, failing as an error (not an abort) when memory is short.
fn to_f32(v: &[f64]) -> RResult<Vec<f32>> {
    try_collect(v.len(), v.iter().map(|&x| x as f32), "a single-precision copy").map_err(rerr)
}

// --- counterfactuals and distances -----------------------------------------------------

fn posterior<'a>(u_mean: &'a [f64], u_sd: &'a [f64], n_cells: i32, model: &MrviModel) -> RResult<Posterior<'a>> {
    let l = model.config.dim_u() as usize;
    let n = n_cells as usize;
    if u_mean.len() != n * l || u_sd.len() != n * l {
        return Err(invalid(format!("u has {} values, expected {n} cells x {l}", u_mean.len())));
    }
    Ok(Posterior { mean: u_mean, sd: u_sd, n_cells: n, n_latent: l })
}

fn codes(v: &[i32], upper: i64, what: &str) -> RResult<Vec<i64>> {
    v.iter()
        .map(|&c| {
            if c < -1 || c as i64 >= upper {
                Err(invalid(format!("{what} code {c} outside -1..{upper}")))
            } else {
                Ok(c as i64)
            }
        })
        .collect()
}

/// Sums of D(n) per group (upper triangles) as an [S, S, G] array's values, and
/// the number of cells per group. `group`: 0-based, -1 = in no group. `mask`:
/// empty, or 0/1 per (cell, sample), column-major (admissible pairs).
/// @noRd
#[extendr]
#[allow(clippy::too_many_arguments)]
fn mrvi_group_distances(
    h: Robj, u_mean: &[f64], u_sd: &[f64], n_cells: i32, own_sample: &[i32], group: &[i32],
    n_groups: i32, mc_samples: i32, normalize: bool, seed: f64, block: i32, mask: &[i32],
) -> RResult<List> {
    let h = model_ptr(&h)?;
    let model = h.try_addr()?;
    let post = posterior(u_mean, u_sd, n_cells, model)?;
    let own = codes(own_sample, model.config.n_samples, "sample")?;
    let group = codes(group, n_groups as i64, "group")?;
    let spec = DistanceSpec { mc_samples: mc_samples.max(0) as usize, normalize, seed: seed as u64 };
    let threads = tch::get_num_threads().max(1) as usize;
    let sums = if !mask.is_empty() {
        let mask: Vec<bool> = mask.iter().map(|&v| v != 0).collect();
        group_sums_masked(model, &post, &own, &group, n_groups as usize, spec, Some(&mask), block.max(1) as usize, threads, &mut interrupt_pending)
    } else if model.device() != tch::Device::Cpu && spec.mc_samples == 0 && !normalize {
        group_sums_tensor(model, &post, &group, n_groups as usize, block.max(1) as usize)
    } else {
        group_sums(model, &post, &own, &group, n_groups as usize, spec, block.max(1) as usize, threads, &mut interrupt_pending)
    };
    let sums = match sums {
        Err(mrvi_core::Error::Interrupted) => return Err(rerr(mrvi_core::Error::Interrupted)),
        other => other.map_err(rerr)?,
    };
    let mut values = try_with_capacity(sums.sums.len() * sums.n_samples * sums.n_samples, "the group means").map_err(rerr)?;
    for g in 0..n_groups as usize {
        values.extend(sums.mean(g));
    }
    Ok(list!(mean = values, n_cells = sums.n_cells.iter().map(|&v| v as f64).collect::<Vec<f64>>()))
}

/// Group means from libtorch tensor operations (cdist + index_add) on the
/// model's device: the GPU path, exposed for benchmarks and tests.
/// @noRd
#[extendr]
#[allow(clippy::too_many_arguments)]
fn mrvi_group_tensor_distances(
    h: Robj, u_mean: &[f64], u_sd: &[f64], n_cells: i32, own_sample: &[i32], group: &[i32],
    n_groups: i32, block: i32,
) -> RResult<Vec<f64>> {
    let h = model_ptr(&h)?;
    let model = h.try_addr()?;
    let post = posterior(u_mean, u_sd, n_cells, model)?;
    let _ = codes(own_sample, model.config.n_samples, "sample")?;
    let group = codes(group, n_groups as i64, "group")?;
    let sums = group_sums_tensor(model, &post, &group, n_groups as usize, block.max(1) as usize).map_err(rerr)?;
    Ok((0..n_groups as usize).flat_map(|g| sums.mean(g)).collect())
}

/// D(n) of the given cells (0-based) as a [cells, S, S] array's values.
/// @noRd
#[extendr]
#[allow(clippy::too_many_arguments)]
fn mrvi_cell_distances(
    h: Robj, u_mean: &[f64], u_sd: &[f64], n_cells: i32, own_sample: &[i32], cells: &[i32],
    mc_samples: i32, normalize: bool, seed: f64, block: i32,
) -> RResult<Vec<f64>> {
    let h = model_ptr(&h)?;
    let model = h.try_addr()?;
    let post = posterior(u_mean, u_sd, n_cells, model)?;
    let own = codes(own_sample, model.config.n_samples, "sample")?;
    let cells: Vec<usize> = cells.iter().map(|&c| c as usize).filter(|&c| c < post.n_cells).collect();
    let spec = DistanceSpec { mc_samples: mc_samples.max(0) as usize, normalize, seed: seed as u64 };
    cell_distances(model, &post, &own, &cells, spec, block.max(1) as usize).map_err(rerr)
}

/// Bootstrap replicates of one group's mean distance matrix: `cells` (0-based),
/// `weights` cells x R (column-major), replicate r on posterior draw r mod
/// `draws` (0: the posterior mean), distances normalised or not. Values of an R
/// array [S, S, R].
/// @noRd
#[extendr]
#[allow(clippy::too_many_arguments)]
fn mrvi_replicate_distances(
    h: Robj, u_mean: &[f64], u_sd: &[f64], n_cells: i32, own_sample: &[i32], cells: &[i32], weights: &[f64],
    n_replicates: i32, draws: i32, normalize: bool, seed: f64, block: i32,
) -> RResult<Vec<f64>> {
    let h = model_ptr(&h)?;
    let model = h.try_addr()?;
    let post = posterior(u_mean, u_sd, n_cells, model)?;
    let own = codes(own_sample, model.config.n_samples, "sample")?;
    if cells.iter().any(|&c| c < 0 || c >= n_cells) {
        return Err(invalid("cell index out of range"));
    }
    let cells: Vec<usize> = cells.iter().map(|&c| c as usize).collect();
    let reps = Replicates { weights, n_replicates: n_replicates.max(0) as usize, draws: draws.max(0) as usize, seed: seed as u64, normalize };
    match replicate_means(model, &post, &own, &cells, &reps, block.max(1) as usize, &mut interrupt_pending) {
        Err(mrvi_core::Error::Interrupted) => Err(rerr(mrvi_core::Error::Interrupted)),
        other => other.map_err(rerr),
    }
}

/// Counterfactual z for u (cells x L, column-major) under the chosen samples
/// (0-based): values of an R array [cells, samples, L].
/// @noRd
#[extendr]
fn mrvi_counterfactual_z(h: Robj, u: &[f64], n_cells: i32, samples: &[i32]) -> RResult<Vec<f64>> {
    let h = model_ptr(&h)?;
    let model = h.try_addr()?;
    let effect = model.host_sample_effect();
    let (n, lu, l, s_all) = (n_cells as usize, effect.n_latent_u, effect.n_latent, effect.n_samples);
    if u.len() != n * lu {
        return Err(invalid("u does not match the model's latent dimension"));
    }
    let chosen: Vec<usize> = samples.iter().map(|&s| s as usize).filter(|&s| s < s_all).collect();
    let ns = chosen.len();
    let mut out = try_vec(n.saturating_mul(ns).saturating_mul(l), 0f64, "the counterfactual latents").map_err(rerr)?;
    // blocks of cells: one libtorch call per block for the attention flavour
    const BLOCK: usize = 256;
    let mut z = vec![0f32; BLOCK * s_all * l];
    for start in (0..n).step_by(BLOCK) {
        let end = (start + BLOCK).min(n);
        let us: Vec<f32> = (start..end).flat_map(|c| (0..lu).map(move |d| u[d * n + c] as f32)).collect();
        let zb = &mut z[..(end - start) * s_all * l];
        effect.z_block(&us, zb);
        for c in start..end {
            let zc = &zb[(c - start) * s_all * l..(c - start + 1) * s_all * l];
            for (j, &s) in chosen.iter().enumerate() {
                for d in 0..l {
                    out[c + n * (j + ns * d)] = zc[s * l + d] as f64;
                }
            }
        }
    }
    Ok(out)
}

/// Expected normalised expression (softmax of the decoder) for u (cells x L_u,
/// column-major) under the given sample and site codes (one per cell); values of
/// an R matrix [genes, cells].
/// @noRd
#[extendr]
fn mrvi_counterfactual_expression(h: Robj, u: &[f64], n_cells: i32, sample: &[i32], site: &[i32]) -> RResult<Vec<f64>> {
    let h = model_ptr(&h)?;
    let model = h.try_addr()?;
    let (n, lu) = (n_cells as usize, model.config.dim_u() as usize);
    if u.len() != n * lu || sample.len() != n {
        return Err(invalid("u and sample must describe the same cells"));
    }
    let sample = codes(sample, model.config.n_samples, "sample")?;
    let dev = model.device();
    decode_blocks(model, u, n, lu, site, |ut, start, end| {
        let s = tch::Tensor::from_slice(&sample[start..end]).to_device(dev);
        model.z_from_u(ut, &s)
    })
}

/// Expected normalised expression decoded from z itself (cells x L_z,
/// column-major) under site codes (one per cell); values of an R matrix
/// [genes, cells]. Used for log fold changes of latent shifts.
/// @noRd
#[extendr]
fn mrvi_decode_z(h: Robj, z: &[f64], n_cells: i32, site: &[i32]) -> RResult<Vec<f64>> {
    let h = model_ptr(&h)?;
    let model = h.try_addr()?;
    let (n, l) = (n_cells as usize, model.config.n_latent as usize);
    if z.len() != n * l {
        return Err(invalid("z does not match the model's latent dimension"));
    }
    decode_blocks(model, z, n, l, site, |zt, _, _| zt.shallow_clone())
}

/// Decoder expression of `values` (cells x width, column-major) in blocks of
/// 1024 cells, after `to_z` maps a block's rows to z; [genes, cells] values.
fn decode_blocks(
    model: &MrviModel, values: &[f64], n: usize, width: usize, site: &[i32], to_z: impl Fn(&tch::Tensor, usize, usize) -> tch::Tensor,
) -> RResult<Vec<f64>> {
    if site.len() != n {
        return Err(invalid(format!("{} site codes for {n} cells", site.len())));
    }
    let site = codes(site, model.config.n_batches, "site")?;
    let v32 = to_f32(values)?;
    let mut out = try_with_capacity(n.saturating_mul(model.config.n_genes as usize), "the expression matrix").map_err(rerr)?;
    let dev = model.device();
    for start in (0..n).step_by(1024) {
        let end = (start + 1024).min(n);
        let rows = mrvi_core::infer::rows_from_column_major(&v32, n, width, start, end).to_device(dev);
        let b = tch::Tensor::from_slice(&site[start..end]).to_device(dev);
        let rho = tch::no_grad(|| model.expression(&to_z(&rows, start, end), &b));
        let rho = rho.to_device(tch::Device::Cpu).to_kind(tch::Kind::Double).contiguous().view([-1]);
        out.extend(Vec::<f64>::try_from(&rho).map_err(|e| rerr(e.into()))?);
    }
    Ok(out)
}

/// log q_s(u_c) for evaluation cells `at` (0-based) and per-sample reference
/// cells (`ref_cells` 0-based, `ref_sample` their sample codes): [cells, S] values.
/// @noRd
#[extendr]
fn mrvi_log_sample_densities(u_mean: &[f64], u_sd: &[f64], n_cells: i32, n_latent: i32, at: &[i32], ref_cells: &[i32], ref_sample: &[i32], n_samples: i32) -> RResult<Vec<f64>> {
    let (n, l) = (n_cells as usize, n_latent as usize);
    if u_mean.len() != n * l || u_sd.len() != n * l || ref_cells.len() != ref_sample.len() {
        return Err(invalid("inconsistent posterior or reference"));
    }
    let post = Posterior { mean: u_mean, sd: u_sd, n_cells: n, n_latent: l };
    let mut reference = vec![Vec::new(); n_samples as usize];
    for (&c, &s) in ref_cells.iter().zip(ref_sample) {
        if c < 0 || c as usize >= n || s < 0 || s >= n_samples {
            return Err(invalid("reference cell or sample out of range"));
        }
        reference[s as usize].push(c as usize);
    }
    let at: Vec<usize> = at.iter().map(|&c| c as usize).filter(|&c| c < n).collect();
    let threads = tch::get_num_threads().max(1) as usize;
    mrvi_core::density::log_sample_densities(&post, &at, &reference, threads).map_err(rerr)
}

/// Per-cell one-sided KS tests of within- against between-category distances.
/// `category`: one code per sample (-1 = missing); `cells`: 0-based.
/// @noRd
#[extendr]
#[allow(clippy::too_many_arguments)]
fn mrvi_cell_association(
    h: Robj, u_mean: &[f64], u_sd: &[f64], n_cells: i32, own_sample: &[i32], cells: &[i32],
    category: &[i32], mc_samples: i32, normalize: bool, seed: f64, block: i32,
) -> RResult<List> {
    let h = model_ptr(&h)?;
    let model = h.try_addr()?;
    let post = posterior(u_mean, u_sd, n_cells, model)?;
    let own = codes(own_sample, model.config.n_samples, "sample")?;
    let category: Vec<i64> = category.iter().map(|&c| c as i64).collect();
    let cells: Vec<usize> = cells.iter().map(|&c| c as usize).filter(|&c| c < post.n_cells).collect();
    let spec = DistanceSpec { mc_samples: mc_samples.max(0) as usize, normalize, seed: seed as u64 };
    let threads = tch::get_num_threads().max(1) as usize;
    let res = match cell_association(model, &post, &own, &cells, &category, spec, block.max(1) as usize, threads, &mut interrupt_pending) {
        Err(mrvi_core::Error::Interrupted) => return Err(rerr(mrvi_core::Error::Interrupted)),
        other => other.map_err(rerr)?,
    };
    Ok(list!(
        statistic = res.iter().map(|r| r.statistic).collect::<Vec<f64>>(),
        p_value = res.iter().map(|r| r.p_value).collect::<Vec<f64>>(),
        n_within = res.iter().map(|r| r.n_within as i32).collect::<Vec<i32>>(),
        n_between = res.iter().map(|r| r.n_between as i32).collect::<Vec<i32>>()
    ))
}

/// Mean per-cell KS statistics of within- against between-label pairs, for each
/// labelling. `values`: cells x pairs (R matrix, column-major); `pair_a`,
/// `pair_b`: the pairs' samples (0-based); `labels`: samples x labellings.
/// @noRd
#[extendr]
fn mrvi_mean_ks_statistics(values: &[f64], n_cells: i32, pair_a: &[i32], pair_b: &[i32], labels: &[i32], n_samples: i32) -> RResult<Vec<f64>> {
    let (nc, p, s) = (n_cells.max(0) as usize, pair_a.len(), n_samples.max(0) as usize);
    if values.len() != nc * p || pair_b.len() != p || s == 0 || labels.len() % s != 0 {
        return Err(invalid("mrvi_mean_ks_statistics: inconsistent dimensions"));
    }
    if pair_a.iter().chain(pair_b).any(|&x| x < 0 || x as usize >= s) {
        return Err(invalid("mrvi_mean_ks_statistics: pair index out of range"));
    }
    let pairs: Vec<(usize, usize)> = pair_a.iter().zip(pair_b).map(|(&a, &b)| (a as usize, b as usize)).collect();
    let rows = try_collect(nc * p, (0..nc).flat_map(|c| (0..p).map(move |k| values[c + nc * k])), "the distances by cell").map_err(rerr)?;
    let labellings: Vec<Vec<i64>> = labels.chunks(s).map(|l| l.iter().map(|&x| x as i64).collect()).collect();
    let threads = tch::get_num_threads().max(1) as usize;
    Ok(mrvi_core::stats::mean_ks_statistics(&rows, &pairs, &labellings, threads))
}

/// The KS test on two vectors (exposed to test it against R's ks.test).
/// @noRd
#[extendr]
fn mrvi_ks_greater(x: &[f64], y: &[f64]) -> Vec<f64> {
    let (s, p) = mrvi_core::stats::ks_greater(x, y);
    vec![s, p]
}

/// Panics on purpose: the tests check that a Rust panic becomes an R error.
/// @noRd
#[extendr]
fn mrvi_debug_panic() -> i32 {
    let v: Vec<i32> = Vec::new();
    v[1]
}

extendr_module! {
    mod mrvi;
    fn mrvi_backend_info;
    fn mrvi_set_threads;
    fn mrvi_resolve_device;
    fn mrvi_csc_scan;
    fn mrvi_debug_panic;
    fn mrvi_trainer_new;
    fn mrvi_trainer_info;
    fn mrvi_trainer_epoch;
    fn mrvi_trainer_save;
    fn mrvi_trainer_resume;
    fn mrvi_trainer_finish;
    fn mrvi_model_new;
    fn mrvi_model_valid;
    fn mrvi_weights_hash;
    fn mrvi_encode;
    fn mrvi_z_from_u;
    fn mrvi_group_distances;
    fn mrvi_group_tensor_distances;
    fn mrvi_cell_distances;
    fn mrvi_replicate_distances;
    fn mrvi_counterfactual_z;
    fn mrvi_cell_association;
    fn mrvi_counterfactual_expression;
    fn mrvi_decode_z;
    fn mrvi_log_sample_densities;
    fn mrvi_ks_greater;
    fn mrvi_mean_ks_statistics;
}
