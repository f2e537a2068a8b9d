//! One error type for the core. Every fallible core function returns `Result<T>`;
//! the R binding turns `Error` into an R error condition with the same message.

use std::fmt;

#[derive(Debug)]
pub enum Error {
    /// An argument that the caller can fix (shape, range, unknown name).
    InvalidInput(String),
    /// libtorch raised an error; the C++ stack trace is stripped.
    Torch(String),
    /// The user interrupted a long computation.
    Interrupted,
    /// Serialisation of weights or configuration failed.
    Io(String),
    /// An allocation could not be made (checked with `try_reserve`, never an abort).
    Memory(String),
    /// Training produced non-finite losses.
    Diverged(String),
    /// A training checkpoint that cannot be read, or was made for another run.
    Checkpoint(String),
    /// A fit with model parts this version does not know (made by a newer one).
    Version(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidInput(m) => write!(f, "{m}"),
            Error::Torch(m) => write!(f, "libtorch: {m}"),
            Error::Interrupted => write!(f, "interrupted by the user"),
            Error::Io(m) => write!(f, "{m}"),
            Error::Memory(m) => write!(f, "{m}"),
            Error::Diverged(m) => write!(f, "{m}"),
            Error::Checkpoint(m) => write!(f, "{m}"),
            Error::Version(m) => write!(f, "{m}"),
        }
    }
}

impl Error {
    /// The R condition class the binding gives this error (besides "mrvi_error").
    pub fn class(&self) -> &'static str {
        match self {
            Error::InvalidInput(_) => "mrvi_input_error",
            Error::Torch(m) if is_out_of_memory(m) => "mrvi_memory_error",
            Error::Torch(_) => "mrvi_backend_error",
            Error::Interrupted => "mrvi_interrupted",
            Error::Io(_) => "mrvi_io_error",
            Error::Memory(_) => "mrvi_memory_error",
            Error::Diverged(_) => "mrvi_divergence_error",
            Error::Checkpoint(_) => "mrvi_checkpoint_error",
            Error::Version(_) => "mrvi_version_error",
        }
    }
}

/// Whether a libtorch message reports a failed allocation (CPU or CUDA).
pub fn is_out_of_memory(msg: &str) -> bool {
    let m = msg.to_ascii_lowercase();
    m.contains("can't allocate memory") || m.contains("out of memory") || m.contains("failed to allocate")
}

/// A zero array of R's layout (column-major) with dimensions `dims`, allocated
/// like [try_vec]; `into_raw_vec_and_offset().0` gives the values R reads.
pub fn r_array<D: ndarray::Dimension>(dims: D, what: &str) -> Result<ndarray::Array<f64, D>> {
    use ndarray::ShapeBuilder;
    let values = try_vec(dims.size(), 0f64, what)?;
    Ok(ndarray::Array::from_shape_vec(dims.f(), values).expect("the shape matches the length"))
}

/// A vector of `n` copies of `value`, or `Error::Memory` when it cannot be
/// allocated: the global allocator aborts the process (and R with it) on failure,
/// `try_reserve` does not. Use for every allocation whose size the user controls.
pub fn try_vec<T: Clone>(n: usize, value: T, what: &str) -> Result<Vec<T>> {
    let mut v = try_with_capacity(n, what)?;
    v.resize(n, value);
    Ok(v)
}

/// An empty vector with room for `n` elements, or `Error::Memory`.
pub fn try_with_capacity<T>(n: usize, what: &str) -> Result<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| {
        let bytes = (n as f64) * std::mem::size_of::<T>() as f64;
        Error::Memory(format!("cannot allocate {:.3} GB for {what}: not enough memory", bytes / 1e9))
    })?;
    Ok(v)
}

/// `iter` collected into a vector of its exact length `n`, allocated with [try_with_capacity].
pub fn try_collect<T>(n: usize, iter: impl Iterator<Item = T>, what: &str) -> Result<Vec<T>> {
    let mut v = try_with_capacity(n, what)?;
    v.extend(iter);
    Ok(v)
}

impl std::error::Error for Error {}

impl From<tch::TchError> for Error {
    fn from(e: tch::TchError) -> Self {
        let s = e.to_string();
        // c10::Error::what() appends a long C++ stack trace: keep the message only.
        let msg = s.split("\nException raised from").next().unwrap_or(&s).trim().to_string();
        Error::Torch(msg)
    }
}

impl From<safetensors::SafeTensorError> for Error {
    fn from(e: safetensors::SafeTensorError) -> Self {
        Error::Io(format!("safetensors: {e}"))
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::Io(format!("configuration JSON: {e}"))
    }
}

/// `bail!(fmt, ..)` returns an `Error::InvalidInput` from the current function.
#[macro_export]
macro_rules! invalid {
    ($($arg:tt)*) => { return Err($crate::error::Error::InvalidInput(format!($($arg)*))) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn impossible_allocations_are_errors_not_aborts() {
        let e = try_vec(usize::MAX / 16, 0f64, "a test").unwrap_err();
        assert_eq!(e.class(), "mrvi_memory_error");
        assert!(e.to_string().contains("cannot allocate"), "{e}");
        // larger than any machine's memory, but a valid layout: the allocator says no
        let e = try_vec(1usize << 62, 0u8, "a test").unwrap_err();
        assert!(matches!(e, Error::Memory(_)));
        assert_eq!(try_vec(3, 1u8, "a test").unwrap(), vec![1, 1, 1]);
    }

    #[test]
    fn classes() {
        assert_eq!(Error::Diverged("training diverged at epoch 3".into()).class(), "mrvi_divergence_error");
        assert_eq!(Error::Torch("DefaultCPUAllocator: can't allocate memory: you tried".into()).class(), "mrvi_memory_error");
        assert_eq!(Error::Torch("shape mismatch".into()).class(), "mrvi_backend_error");
    }
}
