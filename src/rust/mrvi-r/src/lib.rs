//! extendr glue between R and mrvi-core: convert arguments, call the core, map
//! errors; one module per step of the analysis, each with its own
//! `extendr_module!`. No numerical logic lives here. Every `Err` and every panic
//! reaches R as an R error (extendr catches panics; `panic = "unwind"` in the
//! profile). Core errors carry their R condition class as a "[class] " prefix,
//! which the R side (`rust_error()` in R/conditions.R) turns into a classed
//! `mrvi_error`. Allocations whose size the caller controls go through `try_vec`
//! and friends: Rust's allocator aborts the process when memory runs out.

use extendr_api::prelude::*;
use mrvi_core::distances::DistanceSpec;
use mrvi_core::model::Space;
use mrvi_core::model::MrviModel;
use mrvi_core::posterior::Posterior;
use std::os::raw::c_int;

mod abundance;
mod association;
mod backend;
mod data;
mod distances;
mod expression;
mod fork;
mod latent;
mod model;
mod train;

type RResult<T> = extendr_api::Result<T>;

fn rerr(e: mrvi_core::Error) -> extendr_api::Error {
    extendr_api::Error::Other(format!("[{}] {e}", e.class()))
}

/// An inconsistent call from the package's R code (a classed input error).
fn invalid(msg: impl Into<String>) -> extendr_api::Error {
    rerr(mrvi_core::Error::InvalidInput(msg.into()))
}

/// The external pointer `h` as an `ExternalPtr<T>`, after checking that it is one
/// that this package made for a T: extendr's own conversion reads any external
/// pointer's address as its box and segfaults on a foreign one (from another
/// package, or a `RegisteredNativeSymbol`). The tag extendr stores is T's type name.
fn checked_ptr<T: 'static>(h: &Robj, what: &str) -> RResult<ExternalPtr<T>> {
    let ours = h.is_external_pointer() && {
        let tag = unsafe { h.external_ptr_tag() };
        tag.as_str() == Some(std::any::type_name::<T>())
    };
    if !ours {
        return Err(invalid(format!("not a {what} of this package (a foreign or damaged external pointer)")));
    }
    ExternalPtr::<T>::try_from(h).map_err(|_| invalid(format!("the {what} is gone (saved and restored?)")))
}

fn model_ptr(h: &Robj) -> RResult<ExternalPtr<MrviModel>> {
    checked_ptr::<MrviModel>(h, "native model")
}

/// The posterior of u (column-major cells x L) of a model's cells.
fn posterior<'a>(u_mean: &'a [f64], u_sd: &'a [f64], n_cells: i32, model: &MrviModel) -> RResult<Posterior<'a>> {
    Posterior::new(u_mean, u_sd, n_cells.max(0) as usize, model.config.dim_u() as usize).map_err(rerr)
}

/// Run `f` on the model behind `h`, the posterior of u of its cells and their
/// own samples (0-based codes): what every analysis of the fitted cells needs.
fn with_cells<T>(
    h: &Robj, u_mean: &[f64], u_sd: &[f64], n_cells: i32, own_sample: &[i32],
    f: impl FnOnce(&MrviModel, &Posterior, &[i64]) -> RResult<T>,
) -> RResult<T> {
    let h = model_ptr(h)?;
    let model = h.try_addr()?;
    let post = posterior(u_mean, u_sd, n_cells, model)?;
    let own = codes(own_sample, model.config.n_samples, "sample")?;
    f(model, &post, &own)
}

/// Posterior means (`mc_samples` 0) or draws, raw or normalised distances, in
/// latent or (`expression`) in expression space.
fn distance_spec(mc_samples: i32, normalize: bool, seed: f64, expression: bool) -> DistanceSpec {
    DistanceSpec { mc_samples: mc_samples.max(0) as usize, normalize, seed: seed as u64, space: space(expression) }
}

fn space(expression: bool) -> Space {
    if expression { Space::Expression } else { Space::Latent }
}

/// 0-based indices from R (cells, samples); negative ones are an error.
fn indices(v: &[i32], what: &str) -> RResult<Vec<usize>> {
    v.iter().map(|&c| usize::try_from(c).map_err(|_| invalid(format!("{what} index {c} is negative")))).collect()
}

/// 0-based codes with -1 for none, below `upper`.
fn codes(v: &[i32], upper: i64, what: &str) -> RResult<Vec<i64>> {
    v.iter()
        .map(|&c| {
            if c < -1 || c as i64 >= upper {
                Err(invalid(format!("{what} code {c} outside -1..={}", upper - 1)))
            } else {
                Ok(c as i64)
            }
        })
        .collect()
}

/// A posterior draw from R: 0-based, or negative for the posterior mean.
fn draw(d: i32) -> Option<usize> {
    usize::try_from(d).ok()
}

// --- Ctrl-C -------------------------------------------------------------------------
// R's SIGINT handler only sets R_interrupts_pending (a public libR variable); R acts
// on it at its next check. We poll it between minibatches and blocks of cells and
// take the interrupt over (clear it), so that the work stops cleanly.
// (R_CheckUserInterrupt would longjmp across Rust frames, which must never happen.)
extern "C" {
    static mut R_interrupts_pending: c_int;
}

fn interrupt_pending() -> bool {
    unsafe {
        let flag = std::ptr::addr_of_mut!(R_interrupts_pending);
        if std::ptr::read_volatile(flag) != 0 {
            std::ptr::write_volatile(flag, 0);
            return true;
        }
    }
    false
}

extendr_module! {
    mod mrvi;
    use backend;
    use data;
    use train;
    use model;
    use latent;
    use distances;
    use association;
    use abundance;
    use expression;
    use fork;
}
