//! Resumable training: the whole state of a `Trainer` between epochs in one
//! safetensors file (weights, Adam's moments and step count, the shuffling
//! generator, the best epoch's weights and score, the patience used, the
//! history), with a fingerprint of the data and settings so that a checkpoint
//! made for another run is refused. libtorch's generator needs no saving: it is
//! reseeded from the seed and the epoch. The file is written next to its place
//! and renamed over it, so that a job killed while saving leaves the previous
//! checkpoint whole. A checksum over the tensors and the state (in the
//! metadata) catches a file damaged after it was written, which would otherwise
//! resume silently into a garbage fit.

use crate::data::CountColumns;
use crate::error::{Error, Result};
use crate::io::{copy_tensor_into, hash_bytes, named_to_bytes, tensors_to_named, Hash128};
use crate::rng::SplitMix64;
use crate::train::{shard_threads, EpochStats, Trainer};
use safetensors::tensor::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;
use tch::Tensor;

/// Format 2 adds the checksum and the thread counts; format 1 (no checksum)
/// still loads, unchecked, so that runs checkpointed before can resume.
const FORMAT: &str = "mrvi training checkpoint 2";
const FORMAT_UNCHECKED: &str = "mrvi training checkpoint 1";

/// The scalars of the state (floats as their bits, which JSON keeps exactly).
#[derive(Serialize, Deserialize)]
struct State {
    epochs: usize,
    rng: u64,
    adam_steps: u64,
    /// (score bits, epoch) of the best epoch
    best: Option<(u64, usize)>,
    epochs_since_best: usize,
    stopped_early: bool,
    /// the history, one row of `stats_row` per epoch, as bits
    history: Vec<Vec<u64>>,
    /// the shard thread counts the epochs ran with, in the order used (absent
    /// in format 1)
    #[serde(default)]
    threads: Vec<usize>,
    /// the devices the epochs ran on, in the order used (absent in checkpoints
    /// written before they were recorded)
    #[serde(default)]
    devices: Vec<String>,
}

/// What a resumed run needs to know beyond the trainer's state.
#[derive(Debug, Clone, PartialEq)]
pub struct Resumed {
    /// the thread counts the checkpoint's epochs ran with (empty: unknown, a
    /// format-1 file)
    pub threads: Vec<usize>,
    /// the thread count this run uses
    pub threads_now: usize,
    /// the devices the checkpoint's epochs ran on (empty: unknown)
    pub devices: Vec<String>,
    /// the device this run uses
    pub device_now: String,
}

/// A checksum of a checkpoint's metadata (all but the checksum itself, by key)
/// and tensors (by name: dtype, shape, bytes).
fn checksum<'a>(meta: &HashMap<String, String>, tensors: impl Iterator<Item = (&'a str, Dtype, &'a [usize], &'a [u8])>) -> String {
    let mut h = Hash128::new(0x636b_7074);
    let mut keys: Vec<&String> = meta.keys().filter(|k| k.as_str() != "checksum").collect();
    keys.sort();
    for k in keys {
        hash_bytes(&mut h, k.as_bytes());
        hash_bytes(&mut h, meta[k].as_bytes());
    }
    h.word(u64::MAX);
    let mut tensors: Vec<_> = tensors.collect();
    tensors.sort_by(|a, b| a.0.cmp(b.0));
    for (name, dtype, shape, data) in tensors {
        hash_bytes(&mut h, name.as_bytes());
        hash_bytes(&mut h, format!("{dtype:?}").as_bytes());
        h.word(shape.len() as u64);
        shape.iter().for_each(|&d| h.word(d as u64));
        hash_bytes(&mut h, data);
    }
    h.finish()
}

/// Checksums of everything that decides the run except `max_epochs` and
/// `min_epochs` (a run may be continued for more epochs, as nothing else
/// depends on them): `all` of it (the checkpoint's key), and its `data` (the
/// counts, the covariate codes and continuous values) and `settings` (the model
/// and training settings) apart, so that a refusal can say which differs.
pub struct Fingerprints {
    pub all: String,
    pub data: String,
    pub settings: String,
}

pub fn fingerprints(t: &Trainer) -> Result<Fingerprints> {
    // each word goes to `word`: one pass over the counts feeds two checksums
    let feed_data = |word: &mut dyn FnMut(u64)| {
        let counts = &t.data.counts;
        for c in 0..counts.n_cells() {
            for (g, v) in counts.column(c) {
                word(g as u64 | (v.to_bits() as u64) << 32);
            }
            word(u64::MAX);
        }
        // counts on disk: `data` has none of them; their library sizes and gene
        // totals stand in (genes reordered or values moved between genes change
        // the totals; the library sizes alone missed both)
        if t.counts_on_disk() {
            t.data.library.iter().for_each(|v| word(v.to_bits() as u64));
            word(u64::MAX);
            t.disk_gene_totals.iter().for_each(|v| word(v.to_bits()));
            word(u64::MAX);
        }
        for codes in [Some(&t.data.sample), Some(&t.data.site), t.data.label.as_ref()].into_iter().flatten() {
            codes.iter().for_each(|&v| word(v as u64));
            word(u64::MAX);
        }
        // the standardised continuous covariates (a run without them hashes as before)
        if !t.data.continuous.is_empty() {
            t.data.continuous.iter().for_each(|v| word(v.to_bits() as u64));
            word(u64::MAX);
        }
    };
    let mut config = t.config.clone();
    config.max_epochs = None;
    config.min_epochs = None;
    let settings = serde_json::to_string(&(&t.model.config, &config))?;
    // (`all` hashes as checkpoints have always been keyed: the data, then the settings)
    let mut all = Hash128::new(0x6d72_7669);
    let mut data = Hash128::new(0x6461_7461);
    let mut set = Hash128::new(0x7365_7474);
    feed_data(&mut |w| {
        all.word(w);
        data.word(w);
    });
    settings.bytes().for_each(|b| {
        all.word(b as u64);
        set.word(b as u64);
    });
    Ok(Fingerprints { all: all.finish(), data: data.finish(), settings: set.finish() })
}

fn stats_row(s: &EpochStats) -> Vec<u64> {
    [
        s.epoch as f64, s.kl_weight, s.train_elbo, s.train_reconstruction, s.train_kl, s.validation_elbo,
        s.validation_reconstruction, s.validation_kl, s.seconds, s.cells_per_second, s.seconds_batches,
        s.seconds_forward, s.seconds_backward, s.seconds_optimizer,
    ]
    .iter()
    .map(|v| v.to_bits())
    .collect()
}

/// A history row back as its epoch's stats; None when it has the wrong length.
fn row_stats(r: &[u64]) -> Option<EpochStats> {
    let v: Vec<f64> = r.iter().map(|&b| f64::from_bits(b)).collect();
    if v.len() != 14 {
        return None;
    }
    Some(EpochStats {
        epoch: v[0] as usize,
        kl_weight: v[1],
        train_elbo: v[2],
        train_reconstruction: v[3],
        train_kl: v[4],
        validation_elbo: v[5],
        validation_reconstruction: v[6],
        validation_kl: v[7],
        seconds: v[8],
        cells_per_second: v[9],
        seconds_batches: v[10],
        seconds_forward: v[11],
        seconds_backward: v[12],
        seconds_optimizer: v[13],
    })
}

/// What is inconsistent in a state read back, if anything: the epochs numbered
/// 1, 2, ... in order, the best epoch one of them with a finite score, and
/// thread counts an R integer can hold.
fn state_problem(state: &State) -> Option<&'static str> {
    if state.history.iter().enumerate().any(|(i, r)| f64::from_bits(r[0]) != (i + 1) as f64) {
        return Some("its history's epochs are not numbered 1, 2, ...");
    }
    if let Some((bits, epoch)) = state.best {
        if epoch == 0 || epoch > state.epochs || !f64::from_bits(bits).is_finite() {
            return Some("its best epoch is not one of its epochs");
        }
    }
    if state.epochs_since_best > state.epochs {
        return Some("more epochs since the best than epochs");
    }
    if state.threads.iter().any(|&n| n == 0 || n > i32::MAX as usize) {
        return Some("a thread count out of range");
    }
    None
}

/// The settings a run's epochs used, in order, with this run's `now` added
/// unless it goes on with the last.
fn in_order_used<T: Clone + PartialEq>(before: &[T], now: T) -> Vec<T> {
    let mut used = before.to_vec();
    if used.last() != Some(&now) {
        used.push(now);
    }
    used
}

/// Save the trainer's state after its last complete epoch.
pub fn save(t: &Trainer, path: &Path) -> Result<()> {
    let state = State {
        epochs: t.history.len(),
        rng: t.rng.state(),
        adam_steps: t.opt.steps,
        best: t.best.as_ref().map(|(score, epoch, _)| (score.to_bits(), *epoch)),
        epochs_since_best: t.epochs_since_best,
        stopped_early: t.stopped_early,
        history: t.history.iter().map(stats_row).collect(),
        threads: in_order_used(&t.resumed_threads, shard_threads(&t.model)),
        devices: in_order_used(&t.resumed_devices, t.device_name()),
    };
    let prints = fingerprints(t)?;
    let mut meta = HashMap::from([
        ("format".to_string(), FORMAT.to_string()),
        ("fingerprint".to_string(), prints.all),
        ("fingerprint_data".to_string(), prints.data),
        ("fingerprint_settings".to_string(), prints.settings),
        ("state".to_string(), serde_json::to_string(&state)?),
    ]);
    let mut tensors: Vec<(String, &Tensor)> = Vec::new();
    for (name, v, m, s) in &t.opt.params {
        tensors.push((format!("model/{name}"), v));
        tensors.push((format!("adam_m/{name}"), m));
        tensors.push((format!("adam_v/{name}"), s));
    }
    if let Some((_, _, snapshot)) = &t.best {
        tensors.extend(snapshot.iter().map(|(name, v)| (format!("best/{name}"), v)));
    }
    let named = tensors_to_named(tensors.into_iter())?;
    let sum = checksum(&meta, named.iter().map(|(n, s, b)| (n.as_str(), Dtype::F32, s.as_slice(), b.as_slice())));
    meta.insert("checksum".to_string(), sum);
    let bytes = named_to_bytes(&named, Some(meta))?;
    let tmp = path.with_file_name(format!(
        "{}.{}.tmp",
        path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default(),
        std::process::id()
    ));
    let io = |e: std::io::Error| Error::Checkpoint(format!("cannot write the checkpoint {}: {e}", path.display()));
    std::fs::write(&tmp, &bytes).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io(e)
    })
}

/// Restore a trainer built with the same data and settings to the state saved
/// at `path`. A damaged file (checksum), one made for another run
/// (fingerprint) and one holding more epochs than `t.max_epochs` are refused.
pub fn load(t: &mut Trainer, path: &Path) -> Result<Resumed> {
    let bytes = std::fs::read(path)
        .map_err(|e| Error::Checkpoint(format!("cannot read the checkpoint {}: {e}", path.display())))?;
    // (the file named, as in the other refusals)
    let damaged = |what: &str| Error::Checkpoint(format!("the checkpoint {} is not a whole mrvi training checkpoint ({what})", path.display()));
    let st = SafeTensors::deserialize(&bytes).map_err(|_| damaged("not a safetensors file"))?;
    let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|_| damaged("no header"))?;
    let meta = header.metadata().as_ref().ok_or_else(|| damaged("no metadata"))?;
    let format = meta.get("format").map(String::as_str);
    if format != Some(FORMAT) && format != Some(FORMAT_UNCHECKED) {
        return Err(damaged("unknown format"));
    }
    // before the fingerprint: a damaged one would read as another run's
    if format == Some(FORMAT) {
        let tensors = st.tensors();
        let sum = checksum(meta, tensors.iter().map(|(n, v)| (n.as_str(), v.dtype(), v.shape(), v.data())));
        if meta.get("checksum") != Some(&sum) {
            return Err(Error::Checkpoint(format!(
                "the checkpoint {} is damaged: its contents do not match its checksum, so it cannot be resumed; delete it to train afresh",
                path.display()
            )));
        }
    }
    let prints = fingerprints(t)?;
    if meta.get("fingerprint") != Some(&prints.all) {
        // (files written before the parts were kept say neither)
        let data_differs = meta.get("fingerprint_data").map(|d| d != &prints.data);
        let settings_differ = meta.get("fingerprint_settings").map(|s| s != &prints.settings);
        let what = match (data_differs, settings_differ) {
            (Some(true), Some(false)) => "other data than this call (counts, cells, genes or their order, samples, batches, labels or continuous covariates)",
            (Some(false), Some(true)) => "other settings than this call (an argument of the model or of training other than max_epochs and min_epochs)",
            (Some(true), Some(true)) => "other data and other settings than this call",
            _ => "other data or other settings than this call",
        };
        return Err(Error::Checkpoint(format!("the checkpoint {} was made with {what}", path.display())));
    }
    let state: State = serde_json::from_str(meta.get("state").ok_or_else(|| damaged("no state"))?)
        .map_err(|_| damaged("unreadable state"))?;
    let history = state.history.iter().map(|r| row_stats(r)).collect::<Option<Vec<_>>>().ok_or_else(|| damaged("a history row has the wrong length"))?;
    if history.len() != state.epochs {
        return Err(damaged("history and epoch count differ"));
    }
    // (unchecked files of format 1 may have been edited: values that would make
    // a fit's history or best epoch nonsense are refused as damage)
    if let Some(what) = state_problem(&state) {
        return Err(damaged(what));
    }
    // the fit would hold more epochs than it was asked for
    if state.epochs > t.max_epochs {
        return Err(Error::Checkpoint(format!(
            "the checkpoint {} already holds {} epochs, more than max_epochs = {}: give max_epochs = {} or more to resume it",
            path.display(),
            state.epochs,
            t.max_epochs,
            state.epochs
        )));
    }
    for (name, v, m, s) in t.opt.params.iter_mut() {
        copy_tensor_into(&st, &format!("model/{name}"), v)?;
        copy_tensor_into(&st, &format!("adam_m/{name}"), m)?;
        copy_tensor_into(&st, &format!("adam_v/{name}"), s)?;
    }
    t.best = match state.best {
        Some((bits, epoch)) => {
            let mut snapshot = Vec::with_capacity(t.opt.params.len());
            for (name, v, _, _) in &t.opt.params {
                let mut saved = v.detach().copy();
                copy_tensor_into(&st, &format!("best/{name}"), &mut saved)?;
                snapshot.push((name.clone(), saved));
            }
            Some((f64::from_bits(bits), epoch, snapshot))
        }
        None => None,
    };
    t.opt.steps = state.adam_steps;
    t.rng = SplitMix64::from_state(state.rng);
    t.epochs_since_best = state.epochs_since_best;
    t.stopped_early = state.stopped_early;
    t.history = history;
    t.resumed_threads = state.threads.clone();
    t.resumed_devices = state.devices.clone();
    Ok(Resumed { threads: state.threads, threads_now: shard_threads(&t.model), devices: state.devices, device_now: t.device_name() })
}
