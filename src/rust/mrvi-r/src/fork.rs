//! A forked child process that runs one R function and exits: the reader that
//! prefetches counts from disk (block_prefetcher() in R/on-disk.R).
//!
//! Forked here rather than with parallel::mcparallel(): parallel reaps its
//! children only in its SIGCHLD handler, and a package that installs its own
//! handler (processx, hence callr) leaves every later parallel child a zombie
//! until R exits: one per buffer read, which can exhaust a user's process limit
//! on a long fit. These children are reaped by their pid (waitpid), whatever
//! handler is installed.

use crate::RResult;
use extendr_api::prelude::*;
use std::os::raw::{c_char, c_int, c_void};

#[cfg(unix)]
extern "C" {
    fn fork() -> c_int;
    fn waitpid(pid: c_int, status: *mut c_int, options: c_int) -> c_int;
    fn kill(pid: c_int, sig: c_int) -> c_int;
    fn _exit(status: c_int) -> !;
    fn open(path: *const c_char, flags: c_int, ...) -> c_int;
    fn dup2(old: c_int, new: c_int) -> c_int;
    fn fflush(stream: *mut c_void) -> c_int;
    // R's flag for a forked child (Rinterface.h), as parallel and sys set it: R's
    // event handlers (X11 and tcltk windows) then leave the connections they share
    // with the parent alone. Not in R's API (R CMD check notes it), but without it
    // a child reading while a graphics window is open could take the parent's events.
    static mut R_isForkedChild: c_int;
}

#[cfg(target_os = "linux")]
extern "C" {
    fn prctl(option: c_int, ...) -> c_int;
    fn getpid() -> c_int;
    fn getppid() -> c_int;
}
#[cfg(target_os = "linux")]
const PR_SET_PDEATHSIG: c_int = 1;

#[cfg(unix)]
const WNOHANG: c_int = 1;
#[cfg(unix)]
const SIGKILL: c_int = 9;
#[cfg(unix)]
const EINTR: c_int = 4;
#[cfg(unix)]
const O_WRONLY: c_int = 1;

/// Fork this R process; the child calls `f()` with its output sent to
/// /dev/null and exits (status 0 when `f()` returned TRUE, 1 otherwise: an
/// error, an interrupt, a panic), never returning to R. Returns the child's pid.
/// @noRd
#[extendr]
fn mrvi_fork_call(f: Function) -> RResult<i32> {
    #[cfg(unix)]
    {
        #[cfg(target_os = "linux")]
        let parent = unsafe { getpid() };
        // SAFETY: fork() in the parent only duplicates the process; pending
        // stdio is flushed first so the child does not print it again.
        let pid = unsafe {
            fflush(std::ptr::null_mut());
            fork()
        };
        if pid < 0 {
            return Err(extendr_api::Error::Other("could not fork a reader process".into()));
        }
        if pid == 0 {
            // The child: whatever happens, it ends here, never back in R's
            // evaluation of the parent's call.
            // A parent killed (a job ended by its scheduler) takes the reader
            // with it (Linux): no orphan reading a buffer into a dead session's
            // temporary folder. (A parent gone before that was set: end now.)
            #[cfg(target_os = "linux")]
            unsafe {
                prctl(PR_SET_PDEATHSIG, SIGKILL);
                if getppid() != parent {
                    _exit(1);
                }
            }
            let ok = std::panic::catch_unwind(|| {
                unsafe {
                    R_isForkedChild = 1;
                    let null = open(c"/dev/null".as_ptr(), O_WRONLY);
                    if null >= 0 {
                        dup2(null, 1);
                        dup2(null, 2);
                    }
                }
                f.call(pairlist!()).map(|r| r.as_bool() == Some(true)).unwrap_or(false)
            })
            .unwrap_or(false);
            unsafe { _exit(if ok { 0 } else { 1 }) }
        }
        Ok(pid)
    }
    #[cfg(not(unix))]
    {
        let _ = f;
        Err(extendr_api::Error::Other("forking needs a unix system".into()))
    }
}

/// The state of the forked child `pid`: NA while it runs; once it has ended
/// (it is then reaped), TRUE when it exited with status 0, FALSE otherwise
/// (also when it cannot be waited for, e.g. reaped elsewhere). `stop`: kill it
/// first and wait for its end.
/// @noRd
#[extendr]
fn mrvi_child_status(pid: i32, stop: bool) -> Rbool {
    #[cfg(unix)]
    {
        if pid <= 0 {
            return Rbool::from(false);
        }
        let mut status: c_int = 0;
        let got = loop {
            // SAFETY: plain system calls on a pid this process forked
            let got = unsafe {
                if stop {
                    kill(pid, SIGKILL);
                }
                waitpid(pid, &mut status, if stop { 0 } else { WNOHANG })
            };
            if got >= 0 || std::io::Error::last_os_error().raw_os_error() != Some(EINTR) {
                break got;
            }
        };
        match got {
            0 => Rbool::na(),
            g if g == pid => {
                let exited = status & 0x7f == 0;
                Rbool::from(exited && (status >> 8) & 0xff == 0)
            }
            _ => Rbool::from(false),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (pid, stop);
        Rbool::from(false)
    }
}

extendr_module! {
    mod fork;
    fn mrvi_fork_call;
    fn mrvi_child_status;
}
