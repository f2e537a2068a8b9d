//! mrvi-core: the numerical core of the mrvi R package (Multi-resolution
//! Variational Inference, Boyeau et al.). It depends on libtorch through tch and
//! knows nothing of R, so `cargo test` exercises it alone.

pub mod allocator;
pub mod association;
pub mod backend;
pub mod batch;
pub mod checkpoint;
pub mod data;
pub mod density;
pub mod distances;
pub mod error;
pub mod fastmath;
pub mod infer;
pub mod io;
pub mod model;
pub mod openmp;
pub mod pair_distances;
pub mod posterior;
pub mod replicates;
pub mod rng;
pub mod stats;
pub mod train;

pub use error::{Error, Result};
