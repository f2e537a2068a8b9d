//! Minibatches: densify the chosen cells of the sparse counts into tensors on
//! the model's device (the full matrix never is), with the non-zero structure
//! the sparse likelihood needs.

use crate::data::{CountColumns, CscCounts};
use crate::model::nb::NonZeros;
use crate::model::{Batch, HostCopy};
use tch::{Device, Tensor};

/// The data a model sees: counts plus per-cell sample codes and nuisance
/// covariates. `C` is an owned copy for training, or a borrowed view of R's
/// slots within one call.
pub struct Dataset<C: CountColumns = CscCounts> {
    pub counts: C,
    pub sample: Vec<i64>,
    /// site codes, `n_factors` per cell (cell-major), each counted over the
    /// levels of all categorical covariates together (factor k's codes start
    /// after the levels of factors 0..k)
    pub site: Vec<i64>,
    pub n_factors: usize,
    /// continuous nuisance covariates, `n_continuous` per cell (cell-major)
    pub continuous: Vec<f32>,
    pub n_continuous: usize,
    pub library: Vec<f32>,
    /// sum over genes of lgamma(x + 1) per cell: a constant of the data
    lgamma_x1: Vec<f32>,
    /// label codes per cell (for a mixture prior biased by labels)
    pub label: Option<Vec<i64>>,
}

impl<C: CountColumns> Dataset<C> {
    /// Counts with one sample and one site code per cell.
    pub fn new(counts: C, sample: Vec<i64>, site: Vec<i64>) -> Self {
        let library = counts.library_sizes();
        let lgamma_x1 = (0..counts.n_cells())
            .map(|c| counts.column(c).map(|(_, v)| ln_factorial(v) as f64).sum::<f64>() as f32)
            .collect();
        Self { counts, sample, site, n_factors: 1, continuous: Vec::new(), n_continuous: 0, library, lgamma_x1, label: None }
    }

    /// Replace the site codes by several categorical covariates (`n_factors`
    /// codes per cell) and add `n_continuous` continuous ones per cell.
    pub fn with_nuisance(mut self, site: Vec<i64>, n_factors: usize, continuous: Vec<f32>, n_continuous: usize) -> Self {
        self.site = site;
        self.n_factors = n_factors;
        self.continuous = continuous;
        self.n_continuous = n_continuous;
        self
    }

    /// Attach per-cell label codes.
    pub fn with_labels(mut self, label: Vec<i64>) -> Self {
        self.label = Some(label);
        self
    }

    /// `cells` with their covariates and the counts `counts` (their columns,
    /// in that order): a buffer of blocks read during training. Library sizes
    /// and lgamma terms come from `counts`, as `new` computes them.
    pub fn with_counts(&self, counts: CscCounts, cells: &[usize]) -> Dataset {
        let pick = |v: &[i64]| cells.iter().map(|&c| v[c]).collect::<Vec<i64>>();
        let data = Dataset::new(counts, pick(&self.sample), Vec::new()).with_nuisance(
            cell_rows(&self.site, self.n_factors, cells),
            self.n_factors,
            cell_rows(&self.continuous, self.n_continuous, cells),
            self.n_continuous,
        );
        match &self.label {
            Some(l) => data.with_labels(pick(l)),
            None => data,
        }
    }

    pub fn n_cells(&self) -> usize {
        self.counts.n_cells()
    }

    /// The minibatch of `cells`, with a host copy for the fused CPU likelihood
    /// (`fused`) or the non-zero structure for the tensor one.
    pub fn batch(&self, cells: &[usize], device: Device, fused: bool) -> Batch {
        let g = self.counts.n_genes();
        let b = cells.len();
        let mut dense = vec![0f32; b * g];
        let mut flat = Vec::new();
        let mut gene = Vec::new();
        let mut value = Vec::new();
        let lgamma_x1: Vec<f32> = cells.iter().map(|&c| self.lgamma_x1[c]).collect();
        let (mut nz_ptr, mut nz_gene, mut nz_count) = (Vec::with_capacity(b + 1), Vec::new(), Vec::new());
        nz_ptr.push(0);
        for (row, &c) in cells.iter().enumerate() {
            for (gi, v) in self.counts.column(c) {
                dense[row * g + gi] = v;
                nz_gene.push(gi as u32);
                nz_count.push(v);
                if !fused {
                    flat.push((row * g + gi) as i64);
                    gene.push(gi as i64);
                    value.push(v);
                }
            }
            nz_ptr.push(nz_gene.len());
        }
        let log_counts = Tensor::from_slice(&dense).view([b as i64, g as i64]).log1p().to_device(device);
        let lib: Vec<f32> = cells.iter().map(|&c| self.library[c].max(1.0).ln()).collect();
        let idx = |v: Vec<i64>| Tensor::from_slice(&v).to_device(device);
        Batch {
            log_counts,
            log_library: Tensor::from_slice(&lib).view([b as i64, 1]).to_device(device),
            nonzeros: (!fused).then(|| NonZeros {
                flat: idx(flat),
                gene: idx(gene),
                value: Tensor::from_slice(&value).to_device(device),
                lgamma_x1: Tensor::from_slice(&lgamma_x1).to_device(device),
            }),
            host: fused.then(|| HostCopy {
                counts: dense,
                nz_ptr,
                nz_gene,
                nz_count,
                log_library: lib.clone(),
                lgamma_x1: lgamma_x1.clone(),
            }),
            sample: idx(cells.iter().map(|&c| self.sample[c]).collect()),
            site: idx(cell_rows(&self.site, self.n_factors, cells)).view([b as i64, self.n_factors as i64]),
            continuous: (self.n_continuous > 0).then(|| {
                Tensor::from_slice(&cell_rows(&self.continuous, self.n_continuous, cells)).view([b as i64, self.n_continuous as i64]).to_device(device)
            }),
            label: self.label.as_ref().map(|l| idx(cells.iter().map(|&c| l[c]).collect())),
        }
    }
}

/// The `width` values of each of `cells`, cell after cell.
fn cell_rows<T: Copy>(v: &[T], width: usize, cells: &[usize]) -> Vec<T> {
    cells.iter().flat_map(|&c| v[c * width..(c + 1) * width].iter().copied()).collect()
}

/// ln(x!) for a whole-number count, exactly as lgamma(x + 1): small counts (most
/// of them) from a table of the same values, as training from disk computes it
/// for every block it reads.
fn ln_factorial(x: f32) -> f32 {
    const TABLED: usize = 1024;
    static TABLE: std::sync::OnceLock<Vec<f32>> = std::sync::OnceLock::new();
    let exact = |x: f64| statrs::function::gamma::ln_gamma(x + 1.0) as f32;
    let table = TABLE.get_or_init(|| (0..TABLED).map(|k| exact(k as f64)).collect());
    if x >= 0.0 && (x as usize) < TABLED { table[x as usize] } else { exact(x as f64) }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ln_factorial_table_equals_lgamma() {
        for x in [0.0f32, 1.0, 2.0, 7.0, 1023.0, 1024.0, 5000.0] {
            assert_eq!(super::ln_factorial(x), statrs::function::gamma::ln_gamma(x as f64 + 1.0) as f32);
        }
    }
}
