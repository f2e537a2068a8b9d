//! Training: build the model and trainer from the counts and one settings
//! object, run epochs (R drives the loop for its progress bar), finish.

use crate::data::dataset;
use crate::{checked_ptr, interrupt_pending, invalid, model_ptr, rerr, RResult};
use extendr_api::prelude::*;
use mrvi_core::model::config::{Settings, TrainConfig};
use mrvi_core::checkpoint;
use mrvi_core::data::{CountColumns, CscCounts};
use mrvi_core::train::{BlockLoader, EpochStats, Trainer};
use std::ops::Range;
use mrvi_core::{backend, io};

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
    n_samples: i32, batch_levels: &[i32], continuous: &[f64], n_labels: i32, settings: Robj, device: &str,
) -> RResult<ExternalPtr<TrainerHandle>> {
    let settings: Settings = serde_json::from_value(list_json(&settings, "settings")?)
        .map_err(|e| invalid(format!("settings: {e}")))?;
    let n_continuous = continuous.len() / (n_cells.max(1) as usize);
    let mut data = dataset(n_genes, n_cells, p, i, x, sample, site, batch_levels.len() as i32, continuous, n_continuous as i32)?;
    let device = backend::resolve_device(device).map_err(rerr)?;
    let levels: Vec<i64> = batch_levels.iter().map(|&v| v as i64).collect();
    let model_config = settings.model.model_config(n_genes as i64, n_samples as i64, 1, n_labels as i64)
        .with_nuisance(levels, n_continuous as i64);
    if model_config.n_labels > 0 {
        data = data.with_labels(label.iter().map(|&v| v as i64).collect());
    }
    let t = Trainer::new(model_config, settings.train, data, device).map_err(rerr)?;
    Ok(ExternalPtr::new(TrainerHandle(Some(t))))
}

/// A trainer that learns `n_new` new samples into the fitted model `h`: the
/// cells (of new samples only; codes after the fitted ones) with their site
/// codes and continuous covariates as in `mrvi_trainer_new`; `train` is a
/// named list read into `TrainConfig`.
/// @noRd
#[extendr]
#[allow(clippy::too_many_arguments)]
fn mrvi_trainer_add_samples(
    h: Robj, n_genes: i32, n_cells: i32, p: &[i32], i: &[i32], x: &[f64], sample: &[i32], site: &[i32],
    continuous: &[f64], n_new: i32, train: Robj,
) -> RResult<ExternalPtr<TrainerHandle>> {
    let config: TrainConfig = serde_json::from_value(list_json(&train, "train")?)
        .map_err(|e| invalid(format!("train: {e}")))?;
    let h = model_ptr(&h)?;
    let base = h.try_addr()?;
    base.check_compatible(n_genes as usize).map_err(rerr)?;
    let k = base.config.factor_levels().len() as i32;
    let data = dataset(n_genes, n_cells, p, i, x, sample, site, k, continuous, base.config.n_continuous as i32)?;
    let t = Trainer::add_samples(base, n_new as i64, config, data).map_err(rerr)?;
    Ok(ExternalPtr::new(TrainerHandle(Some(t))))
}

/// @noRd
#[extendr]
fn mrvi_trainer_info(h: Robj) -> RResult<List> {
    let mut h = trainer_ptr(&h)?;
    let t = trainer_mut(&mut h)?;
    Ok(list!(
        max_epochs = t.max_epochs as i32,
        min_epochs = t.min_epochs() as i32,
        device = t.device_name(),
        model_config = serde_json::to_string(&t.model.config).unwrap_or_default()
    ))
}

fn epoch_list(s: &EpochStats, t: &Trainer, interrupted_after: bool) -> List {
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
        interrupted = false,
        interrupted_after = interrupted_after
    )
}

/// The trainer `h` reads its counts from disk (block shuffling): it keeps
/// none of them, and `library` gives each cell's library size.
/// @noRd
#[extendr]
fn mrvi_trainer_counts_on_disk(h: Robj, library: &[f64], gene_total: &[f64]) -> RResult<()> {
    let mut h = trainer_ptr(&h)?;
    let t = trainer_mut(&mut h)?;
    t.set_counts_on_disk(library.iter().map(|&v| v as f32).collect(), gene_total.to_vec()).map_err(rerr)
}

/// The counts that `read_blocks` returned for `n` cells: a dgCMatrix, or the
/// files a forked reader spooled them to (a list of paths `n`, `i`, `x`: each
/// cell's number of non-zero counts, their rows, their values, in R's native
/// binary form), read here without making R objects of them. NULL (the reader
/// failed or was interrupted, and the R side knows which) stops the epoch as an
/// interruption.
fn block_counts(m: Robj, n_genes: usize, n: usize) -> mrvi_core::Result<CscCounts> {
    if m.is_null() {
        return Err(mrvi_core::Error::Interrupted);
    }
    if let Some(files) = m.as_list() {
        return spooled_counts(&files, n_genes, n);
    }
    let slot = |name: &str| m.get_attrib(name);
    let (p, i, x) = (slot("p"), slot("i"), slot("x"));
    match (p.as_ref().and_then(|v| v.as_integer_slice()), i.as_ref().and_then(|v| v.as_integer_slice()), x.as_ref().and_then(|v| v.as_real_slice())) {
        (Some(p), Some(i), Some(x)) => CscCounts::from_slots(n_genes, n, p, i, x),
        _ => Err(mrvi_core::Error::InvalidInput("the block reader must return a dgCMatrix".into())),
    }
}

/// Counts spooled by R's writeBin() to the files `files$n`, `files$i`, `files$x`
/// (spool_cells() in R/on-disk.R, which also reads them back: unspool_cells()).
fn spooled_counts(files: &List, n_genes: usize, n: usize) -> mrvi_core::Result<CscCounts> {
    let bytes = |name: &str| -> mrvi_core::Result<Vec<u8>> {
        let path = files.dollar(name).ok().and_then(|p| p.as_str().map(String::from));
        let path = path.ok_or_else(|| mrvi_core::Error::InvalidInput(format!("the spooled counts name no file `{name}`")))?;
        std::fs::read(&path).map_err(|e| mrvi_core::Error::InvalidInput(format!("reading spooled counts {path}: {e}")))
    };
    let ints = |b: Vec<u8>| -> Vec<i32> { b.chunks_exact(4).map(|c| i32::from_ne_bytes(c.try_into().unwrap())).collect() };
    let per_cell = ints(bytes("n")?);
    if per_cell.len() != n {
        return Err(mrvi_core::Error::InvalidInput(format!("the spooled counts hold {} cells, expected {n}", per_cell.len())));
    }
    let mut p = Vec::with_capacity(n + 1);
    p.push(0i32);
    for c in &per_cell {
        p.push(p[p.len() - 1] + c);
    }
    let i = ints(bytes("i")?);
    let x: Vec<f64> = bytes("x")?.chunks_exact(8).map(|c| f64::from_ne_bytes(c.try_into().unwrap())).collect();
    CscCounts::from_slots(n_genes, n, &p, &i, &x)
}

/// Run one epoch; Ctrl-C is checked between minibatches. `read_blocks`: NULL
/// for counts in memory, or for counts on disk an R function of the first and
/// last cells (1-based) of consecutive ranges that returns their counts as one
/// genes x cells dgCMatrix or the files they were spooled to (NULL when it
/// failed), and of the first and last
/// cells of the ranges it will be asked for next (empty when not known).
/// @noRd
#[extendr]
fn mrvi_trainer_epoch(h: Robj, read_blocks: Robj) -> RResult<List> {
    let mut h = trainer_ptr(&h)?;
    let t = trainer_mut(&mut h)?;
    let n_genes = t.data.counts.n_genes();
    let reader = if read_blocks.is_null() {
        None
    } else {
        Some(read_blocks.as_function().ok_or_else(|| invalid("read_blocks must be a function"))?)
    };
    let mut read = |ranges: &[Range<usize>], next: &[Range<usize>]| -> mrvi_core::Result<CscCounts> {
        let first = |ranges: &[Range<usize>]| -> Vec<i32> { ranges.iter().map(|r| r.start as i32 + 1).collect() };
        let last = |ranges: &[Range<usize>]| -> Vec<i32> { ranges.iter().map(|r| r.end as i32).collect() };
        let n = ranges.iter().map(|r| r.len()).sum();
        let f = reader.as_ref().expect("a reader");
        let m = f
            .call(pairlist!(first(ranges), last(ranges), first(next), last(next)))
            .map_err(|e| mrvi_core::Error::InvalidInput(format!("reading counts: {e}")))?;
        block_counts(m, n_genes, n)
    };
    let loader: Option<&mut BlockLoader> = if reader.is_some() { Some(&mut read) } else { None };
    match t.run_epoch_from(&mut interrupt_pending, loader) {
        // a Ctrl-C during the epoch's last minibatch or its validation pass, which
        // no poll saw: the epoch is complete and training stops after it (left
        // pending, R would act on it when this call returns and lose the run)
        Ok(s) => Ok(epoch_list(&s, t, interrupt_pending())),
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

/// Resume a new run from the checkpoint `path`: the epochs already done, the
/// thread counts and devices they ran with (empty: unknown) and this run's.
/// @noRd
#[extendr]
fn mrvi_trainer_resume(h: Robj, path: &str) -> RResult<List> {
    let mut h = trainer_ptr(&h)?;
    let t = trainer_mut(&mut h)?;
    let resumed = checkpoint::load(t, std::path::Path::new(path)).map_err(rerr)?;
    let epochs = List::from_values(t.history.iter().map(|s| epoch_list(s, t, false)));
    let threads: Vec<i32> = resumed.threads.iter().map(|&n| n as i32).collect();
    Ok(list!(epochs = epochs, threads = threads, threads_now = resumed.threads_now as i32,
             devices = resumed.devices, device_now = resumed.device_now))
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

extendr_module! {
    mod train;
    fn mrvi_trainer_new;
    fn mrvi_trainer_add_samples;
    fn mrvi_trainer_info;
    fn mrvi_trainer_epoch;
    fn mrvi_trainer_counts_on_disk;
    fn mrvi_trainer_save;
    fn mrvi_trainer_resume;
    fn mrvi_trainer_finish;
}
