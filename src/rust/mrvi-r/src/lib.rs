//! extendr glue between R and mrvi-core: convert arguments, call the core, map
//! errors. No numerical logic lives here. Every `Err` and every panic reaches R
//! as an R error (extendr catches panics; `panic = "unwind"` in the profile).

use extendr_api::prelude::*;
use mrvi_core::{backend, data::CscCounts};

type RResult<T> = extendr_api::Result<T>;

fn rerr(e: mrvi_core::Error) -> extendr_api::Error {
    extendr_api::Error::Other(e.to_string())
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
/// structure and values; returns the library size of every cell.
/// @noRd
#[extendr]
fn mrvi_csc_library_sizes(n_genes: i32, n_cells: i32, p: &[i32], i: &[i32], x: &[f64]) -> RResult<Vec<f64>> {
    let m = CscCounts::from_slots(n_genes as usize, n_cells as usize, p, i, x).map_err(rerr)?;
    Ok(m.library_sizes().into_iter().map(f64::from).collect())
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
    fn mrvi_csc_library_sizes;
    fn mrvi_debug_panic;
}
