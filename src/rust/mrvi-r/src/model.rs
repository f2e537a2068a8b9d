//! Fitted models: rebuilt from their configuration and weights, checked, hashed.

use crate::{model_ptr, rerr, RResult};
use extendr_api::prelude::*;
use mrvi_core::model::MrviModel;
use mrvi_core::{backend, io};

/// Rebuild a model from its configuration JSON and weights.
/// @noRd
#[extendr]
fn mrvi_model_new(config_json: &str, weights: Raw, device: &str) -> RResult<ExternalPtr<MrviModel>> {
    let device = backend::resolve_device(device).map_err(rerr)?;
    io::model_from_bytes(config_json, weights.as_slice(), device).map(ExternalPtr::new).map_err(rerr)
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

extendr_module! {
    mod model;
    fn mrvi_model_new;
    fn mrvi_model_valid;
    fn mrvi_weights_hash;
}
