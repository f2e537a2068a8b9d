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
}

pub type Result<T> = std::result::Result<T, Error>;

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidInput(m) => write!(f, "{m}"),
            Error::Torch(m) => write!(f, "libtorch: {m}"),
            Error::Interrupted => write!(f, "interrupted by the user"),
            Error::Io(m) => write!(f, "{m}"),
        }
    }
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
