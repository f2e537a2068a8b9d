//! libtorch in this process: version, devices, threads.

use crate::{rerr, RResult};
use extendr_api::prelude::*;
use mrvi_core::backend;

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

/// Panics on purpose: the tests check that a Rust panic becomes an R error.
/// @noRd
#[extendr]
fn mrvi_debug_panic() -> i32 {
    let v: Vec<i32> = Vec::new();
    v[1]
}

extendr_module! {
    mod backend;
    fn mrvi_backend_info;
    fn mrvi_set_threads;
    fn mrvi_resolve_device;
    fn mrvi_debug_panic;
}
