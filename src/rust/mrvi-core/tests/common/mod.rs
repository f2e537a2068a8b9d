//! Shared by the integration tests.
#![allow(dead_code)] // each test binary uses its own part

use mrvi_core::model::config::TrainConfig;
use std::sync::{Mutex, MutexGuard};

static LIBTORCH_RNG: Mutex<()> = Mutex::new(());

/// libtorch's random generator is global to the process: a test that seeds it
/// (directly, by building a model, or through `Trainer::new`) holds this lock,
/// so that tests running in parallel do not draw from each other's sequence.
pub fn libtorch_rng() -> MutexGuard<'static, ()> {
    LIBTORCH_RNG.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Training settings for small test fits (mrvi()'s defaults otherwise).
pub fn train_config(max_epochs: usize, n_epochs_kl_warmup: usize, seed: u64) -> TrainConfig {
    TrainConfig {
        max_epochs: Some(max_epochs),
        batch_size: 256,
        lr: 2e-3,
        n_epochs_kl_warmup,
        early_stopping: true,
        patience: 15,
        min_epochs: None,
        validation_fraction: 0.1,
        seed,
        fused_likelihood: true,
        blocks: None,
    }
}
