//! Data-parallel loops of the training step on libtorch's own OpenMP team.
//!
//! Between libtorch's parallel regions its OpenMP workers keep spinning for a
//! while, waiting for the next one. Host work of a training step run on threads
//! of our own (rayon) would compete with those spinning workers for the cores
//! (measured on 2 cores: 28k cells/s against 32.9k with one thread), and run on
//! the calling thread alone it leaves the workers spinning idle (~30% of a
//! 2-thread fit's CPU time on a realistic minibatch). Handed to the same team
//! with `GOMP_parallel`, the work goes to the threads that are already awake.
//! libtorch's CPU build links GNU OpenMP (libgomp), and so do R and this crate,
//! so the process has one team: the same threads libtorch uses.

use std::ffi::{c_int, c_uint, c_void};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

#[link(name = "gomp")]
extern "C" {
    /// Runs `f(data)` on `num_threads` threads of the calling thread's team (the
    /// caller is one of them) and returns when all have returned.
    fn GOMP_parallel(f: unsafe extern "C" fn(*mut c_void), data: *mut c_void, num_threads: c_uint, flags: c_uint);
    /// Whether the calling thread is inside a parallel region.
    fn omp_in_parallel() -> c_int;
}

/// The items, handed out one at a time: an index is taken by exactly one
/// thread, which gets the only reference to that item.
struct Job<'a, T, F> {
    items: *mut T,
    len: usize,
    next: AtomicUsize,
    f: &'a F,
    panic: Mutex<Option<Box<dyn std::any::Any + Send>>>,
}

unsafe extern "C" fn run<T: Send, F: Fn(&mut T) + Sync>(data: *mut c_void) {
    // SAFETY: `data` is the Job that `for_each_mut` keeps alive until every
    // thread has returned.
    let job = unsafe { &*(data as *const Job<T, F>) };
    loop {
        let i = job.next.fetch_add(1, Ordering::Relaxed);
        if i >= job.len {
            return;
        }
        // SAFETY: i < len, and no other thread takes index i.
        let item = unsafe { &mut *job.items.add(i) };
        // a panic must not unwind into C: keep the first, stop handing out items
        if let Err(payload) = catch_unwind(AssertUnwindSafe(|| (job.f)(item))) {
            job.panic.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(payload);
            job.next.store(job.len, Ordering::Relaxed);
        }
    }
}

/// `f` on every item, on libtorch's intra-op threads (the calling thread among
/// them; [crate::backend::num_threads] of them, or fewer when there are fewer
/// items). Items go to threads as they free up, so which thread runs an item
/// varies; a result that must not depend on the thread count should therefore
/// depend only on each item's own work (as every caller's does). Called from a
/// thread of the crate's rayon pool, or from an item of another call (a shard
/// of a training step), it runs serially there, never starting a second team. A panic in `f` is raised again here after all threads return.
pub fn for_each_mut<T: Send, F: Fn(&mut T) + Sync>(items: &mut [T], f: F) {
    let threads = (crate::backend::num_threads().max(1) as usize).min(items.len());
    // SAFETY: a query of the OpenMP runtime, callable from any thread.
    if threads <= 1 || rayon::current_thread_index().is_some() || unsafe { omp_in_parallel() } != 0 {
        items.iter_mut().for_each(f);
        return;
    }
    let job = Job { items: items.as_mut_ptr(), len: items.len(), next: AtomicUsize::new(0), f: &f, panic: Mutex::new(None) };
    // SAFETY: `run` matches the job's types, and GOMP_parallel returns only after
    // every thread has finished with the job.
    unsafe { GOMP_parallel(run::<T, F>, &job as *const Job<T, F> as *mut c_void, threads as c_uint, 0) };
    if let Some(payload) = job.panic.into_inner().unwrap_or_else(|p| p.into_inner()) {
        resume_unwind(payload);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_item_once_on_several_threads() {
        let before = crate::backend::num_threads();
        crate::backend::set_num_threads(2).unwrap();
        let mut items: Vec<(usize, usize)> = (0..1000).map(|i| (i, 0)).collect();
        for_each_mut(&mut items, |(i, out)| *out += 2 * *i + 1);
        assert!(items.iter().all(|&(i, out)| out == 2 * i + 1));
        // the work is shared: both threads take items
        let seen = Mutex::new(std::collections::HashSet::new());
        for_each_mut(&mut items[..50], |_| {
            seen.lock().unwrap().insert(std::thread::current().id());
            std::thread::sleep(std::time::Duration::from_millis(1));
        });
        assert_eq!(seen.into_inner().unwrap().len(), 2);
        // a panic in an item comes back to the caller, and the team is usable after it
        // (resume_unwind: a panic that prints nothing into the test log)
        let caught = catch_unwind(AssertUnwindSafe(|| {
            for_each_mut(&mut items, |(i, _)| {
                if *i == 500 {
                    resume_unwind(Box::new("item 500"));
                }
            })
        }));
        assert_eq!(caught.err().and_then(|p| p.downcast::<&str>().ok()).map(|p| *p), Some("item 500"));
        for_each_mut(&mut items, |(_, out)| *out = 1);
        assert!(items.iter().all(|&(_, out)| out == 1));
        crate::backend::set_num_threads(before).unwrap();
    }
}
