//! glibc's malloc thresholds for training.
//!
//! A training step allocates and frees buffers of about a megabyte each (a
//! minibatch's dense rows, logits and their gradients). glibc serves blocks
//! above its mmap threshold with fresh mappings, and returns free memory at the
//! top of a heap above its trim threshold to the system; either way the next
//! step's buffers are faulted in again, page by page. Both thresholds start low
//! and rise only as the process frees large blocks, so a fit's speed depended
//! on what the process had allocated before: on one thread (AMD EPYC, realistic
//! data) the same fit trained at ~20,000 or ~26,000 cells/s with 766,000 or
//! 321,000 page faults, and ~26,000 with 153,000 faults at the thresholds set
//! here. These are the values glibc's own adjustment ends at (mmap 32 MB, trim
//! twice that), so R's allocations behave as they would after any large free.

/// Fix glibc's mmap and trim thresholds at their largest automatic values
/// (once per process; a no-op elsewhere than Linux with glibc).
pub fn settle() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::ffi::c_int;
        use std::sync::Once;
        extern "C" {
            fn mallopt(param: c_int, value: c_int) -> c_int;
        }
        // malloc.h
        const M_TRIM_THRESHOLD: c_int = -1;
        const M_MMAP_THRESHOLD: c_int = -3;
        const MMAP_THRESHOLD: c_int = 32 << 20;
        static SETTLED: Once = Once::new();
        // SAFETY: mallopt only changes the allocator's parameters.
        SETTLED.call_once(|| unsafe {
            mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD);
            mallopt(M_TRIM_THRESHOLD, 2 * MMAP_THRESHOLD);
        });
    }
}
