//! What libtorch offers in this process: version, threads and devices.

use crate::error::{Error, Result};
use rayon::{ThreadPool, ThreadPoolBuilder};
use std::sync::{Arc, Mutex};
use tch::Device;

/// The libtorch version the package was built against (set by `configure`).
pub fn libtorch_version() -> &'static str {
    option_env!("MRVI_LIBTORCH_VERSION").unwrap_or("unknown")
}

pub fn cuda_available() -> bool {
    tch::Cuda::is_available()
}

pub fn cuda_device_count() -> i64 {
    tch::Cuda::device_count()
}

pub fn num_threads() -> i32 {
    tch::get_num_threads()
}

/// Set libtorch's intra-op thread count (at::set_num_threads). Works at any time,
/// unlike OMP_NUM_THREADS, which the OpenMP runtime reads once at start-up.
pub fn set_num_threads(n: i32) -> Result<i32> {
    if n < 1 {
        return Err(Error::InvalidInput(format!("the thread count must be at least 1, not {n}")));
    }
    tch::set_num_threads(n);
    Ok(tch::get_num_threads())
}

static POOL: Mutex<Option<Arc<ThreadPool>>> = Mutex::new(None);

/// The thread pool of the core's data-parallel loops (distances, guided tests,
/// densities), as large as libtorch's intra-op setting ([set_num_threads],
/// mrviSetThreads() in R): the loops run between libtorch calls, on the cores
/// libtorch's OpenMP threads were given, never beside them. Rebuilt when the
/// setting changes.
pub fn pool() -> Result<Arc<ThreadPool>> {
    let n = num_threads().max(1) as usize;
    let mut slot = POOL.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(p) = slot.as_ref().filter(|p| p.current_num_threads() == n) {
        return Ok(p.clone());
    }
    let p = ThreadPoolBuilder::new()
        .num_threads(n)
        .thread_name(|i| format!("mrvi-{i}"))
        .build()
        .map_err(|e| Error::Memory(format!("cannot start {n} worker threads: {e}")))?;
    let p = Arc::new(p);
    *slot = Some(p.clone());
    Ok(p)
}

/// Resolve "cpu", "cuda", "cuda:K" or "auto" into a device; asking for CUDA
/// where none exists is an error that says so.
pub fn resolve_device(name: &str) -> Result<Device> {
    let name = name.trim().to_ascii_lowercase();
    match name.as_str() {
        "cpu" => Ok(Device::Cpu),
        "auto" => Ok(if cuda_available() { Device::Cuda(0) } else { Device::Cpu }),
        _ if name == "cuda" || name.starts_with("cuda:") => {
            let idx: usize = match name.strip_prefix("cuda:") {
                None => 0,
                Some(k) => k.parse().map_err(|_| {
                    Error::InvalidInput(format!("device \"{name}\" is not of the form \"cuda:K\""))
                })?,
            };
            if !cuda_available() {
                return Err(Error::InvalidInput(
                    "CUDA was requested but libtorch sees no CUDA device here (no GPU, no driver, or \
                     the package was installed without MRVI_CUDA=1); use device = \"cpu\" or \"auto\""
                        .into(),
                ));
            }
            let n = cuda_device_count() as usize;
            if idx >= n {
                return Err(Error::InvalidInput(format!(
                    "device \"{name}\" does not exist: {n} CUDA device(s) are visible"
                )));
            }
            Ok(Device::Cuda(idx))
        }
        _ => Err(Error::InvalidInput(format!(
            "unknown device \"{name}\"; use \"cpu\", \"cuda\", \"cuda:K\" or \"auto\""
        ))),
    }
}

pub fn device_name(d: Device) -> String {
    match d {
        Device::Cpu => "cpu".into(),
        Device::Cuda(i) => format!("cuda:{i}"),
        other => format!("{other:?}").to_lowercase(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_resolution() {
        assert_eq!(resolve_device("cpu").unwrap(), Device::Cpu);
        assert_eq!(resolve_device(" CPU ").unwrap(), Device::Cpu);
        let auto = resolve_device("auto").unwrap();
        assert_eq!(auto == Device::Cpu, !cuda_available());
        assert!(resolve_device("tpu").unwrap_err().to_string().contains("unknown device"));
        if !cuda_available() {
            let e = resolve_device("cuda").unwrap_err().to_string();
            assert!(e.contains("CUDA was requested"), "{e}");
        }
    }

    #[test]
    fn threads_round_trip() {
        let before = num_threads();
        assert_eq!(set_num_threads(1).unwrap(), 1);
        assert_eq!(pool().unwrap().current_num_threads(), 1);
        set_num_threads(2).unwrap();
        assert_eq!(pool().unwrap().current_num_threads(), 2);
        assert!(set_num_threads(0).is_err());
        set_num_threads(before).unwrap();
        assert_eq!(num_threads(), before);
    }
}
