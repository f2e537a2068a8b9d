//! libtorch in this process: version, devices, threads; and its free memory.

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
        threads = backend::num_threads(),
        matrix_products = mrvi_core::model::products::engine().name()
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

/// Give the memory this process's allocator holds free back to the system
/// (glibc's malloc_trim), so that a process forked next shares none of it:
/// after fork() every shared page this process reuses is copied, and the child
/// keeps the old copy. Returns whether memory was released (always false where
/// the allocator is not glibc's).
/// @noRd
#[extendr]
fn mrvi_release_free_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn malloc_trim(pad: usize) -> i32;
        }
        // SAFETY: malloc_trim only returns free pages to the system
        unsafe { malloc_trim(0) != 0 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
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
    fn mrvi_release_free_memory;
    fn mrvi_debug_panic;
}
