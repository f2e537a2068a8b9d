//! Minibatches: densify the chosen cells of the sparse counts into tensors on
//! the model's device (the full matrix never is), with the non-zero structure
//! the sparse likelihood needs.

use crate::data::CscCounts;
use crate::model::nb::NonZeros;
use crate::model::Batch;
use tch::{Device, Tensor};

/// The data a model sees: counts plus per-cell sample and site codes.
pub struct Dataset {
    pub counts: CscCounts,
    pub sample: Vec<i64>,
    pub site: Vec<i64>,
    pub library: Vec<f32>,
}

impl Dataset {
    pub fn new(counts: CscCounts, sample: Vec<i64>, site: Vec<i64>) -> Self {
        let library = counts.library_sizes();
        Self { counts, sample, site, library }
    }

    pub fn n_cells(&self) -> usize {
        self.counts.n_cells()
    }

    /// The minibatch of `cells`.
    pub fn batch(&self, cells: &[usize], device: Device) -> Batch {
        let g = self.counts.n_genes();
        let b = cells.len();
        let mut dense = vec![0f32; b * g];
        let mut flat = Vec::new();
        let mut gene = Vec::new();
        let mut value = Vec::new();
        let mut lgamma_x1 = vec![0f32; b];
        for (row, &c) in cells.iter().enumerate() {
            for (gi, v) in self.counts.column(c) {
                dense[row * g + gi] = v;
                flat.push((row * g + gi) as i64);
                gene.push(gi as i64);
                value.push(v);
                lgamma_x1[row] += ln_factorial(v);
            }
        }
        let counts = Tensor::from_slice(&dense).view([b as i64, g as i64]);
        let log_counts = counts.log1p().to_device(device);
        let lib: Vec<f32> = cells.iter().map(|&c| self.library[c].max(1.0).ln()).collect();
        let idx = |v: Vec<i64>| Tensor::from_slice(&v).to_device(device);
        Batch {
            log_counts,
            log_library: Tensor::from_slice(&lib).view([b as i64, 1]).to_device(device),
            sample: idx(cells.iter().map(|&c| self.sample[c]).collect()),
            site: idx(cells.iter().map(|&c| self.site[c]).collect()),
            nonzeros: NonZeros {
                flat: idx(flat),
                gene: idx(gene),
                value: Tensor::from_slice(&value).to_device(device),
                lgamma_x1: Tensor::from_slice(&lgamma_x1).to_device(device),
            },
        }
    }
}

/// ln(x!) for a whole-number count, exactly as lgamma(x + 1).
fn ln_factorial(x: f32) -> f32 {
    statrs::function::gamma::ln_gamma(x as f64 + 1.0) as f32
}
