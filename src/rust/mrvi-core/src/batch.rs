//! Minibatches: densify the chosen cells of the sparse counts into tensors on
//! the model's device (the full matrix never is), with the non-zero structure
//! the sparse likelihood needs.

use crate::data::{CountColumns, CscCounts};
use crate::model::nb::NonZeros;
use crate::model::{Batch, HostCopy};
use tch::{Device, Kind, Tensor};

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
        let b = cells.len() as i64;
        let lgamma_x1: Vec<f32> = cells.iter().map(|&c| self.lgamma_x1[c]).collect();
        let lib: Vec<f32> = cells.iter().map(|&c| self.library[c].max(1.0).ln()).collect();
        let (log_counts, nonzeros, host) = if fused || device == Device::Cpu {
            self.dense_on_host(cells, device, fused, &lgamma_x1, &lib)
        } else {
            let (log_counts, nonzeros) = self.dense_on_device(cells, device, &lgamma_x1);
            (log_counts, Some(nonzeros), None)
        };
        let idx = |v: Vec<i64>| Tensor::from_slice(&v).to_device(device);
        Batch {
            log_counts,
            log_library: Tensor::from_slice(&lib).view([b, 1]).to_device(device),
            nonzeros,
            host,
            sample: idx(cells.iter().map(|&c| self.sample[c]).collect()),
            site: idx(cell_rows(&self.site, self.n_factors, cells)).view([b, self.n_factors as i64]),
            continuous: (self.n_continuous > 0).then(|| {
                Tensor::from_slice(&cell_rows(&self.continuous, self.n_continuous, cells)).view([b, self.n_continuous as i64]).to_device(device)
            }),
            label: self.label.as_ref().map(|l| idx(cells.iter().map(|&c| l[c]).collect())),
        }
    }

    /// log1p(x) densified in host memory, and either the host copy the fused
    /// likelihood reads (the non-zeros row by row) or the non-zero structure of
    /// the tensor one. log1p is read from a table for the non-zeros
    /// only (~40% of the entries in real data) and written straight into the
    /// tensor: no dense log1p pass and no copy of a [B, G] buffer.
    fn dense_on_host(
        &self, cells: &[usize], device: Device, fused: bool, lgamma_x1: &[f32], lib: &[f32],
    ) -> (Tensor, Option<NonZeros>, Option<HostCopy>) {
        let g = self.counts.n_genes();
        let b = cells.len();
        let mut nz_ptr = Vec::with_capacity(b + 1);
        nz_ptr.push(0);
        for &c in cells {
            nz_ptr.push(nz_ptr[nz_ptr.len() - 1] + self.counts.column_len(c));
        }
        // zeroed row by row below, just before the row's non-zeros are written:
        // zeroing the whole [B, G] first sent it out of cache before the writes
        let mut log_counts = Tensor::empty([b as i64, g as i64], (Kind::Float, Device::Cpu));
        // SAFETY: a contiguous CPU float tensor, alive until the end of the function
        let log_dense = unsafe { crate::model::cpu_floats_mut(&mut log_counts) };
        let (mut nz_gene, mut nz_count) = (vec![0u32; nz_ptr[b]], vec![0f32; nz_ptr[b]]);
        // rows in items of ROWS_PER_ITEM on libtorch's OpenMP threads
        type Item<'a> = (&'a [usize], &'a mut [f32], &'a mut [u32], &'a mut [f32]);
        let mut items: Vec<Item> = Vec::with_capacity(b.div_ceil(ROWS_PER_ITEM));
        let (mut genes, mut counts) = (&mut nz_gene[..], &mut nz_count[..]);
        for (first, (rows, log_dense)) in cells.chunks(ROWS_PER_ITEM).zip(log_dense.chunks_mut(ROWS_PER_ITEM * g.max(1))).enumerate() {
            let first = first * ROWS_PER_ITEM;
            let n = nz_ptr[first + rows.len()] - nz_ptr[first];
            let gp = genes.split_off_mut(..n).expect("nz_ptr counts every non-zero");
            let cp = counts.split_off_mut(..n).expect("nz_ptr counts every non-zero");
            items.push((rows, log_dense, gp, cp));
        }
        let log1p = log1p_table();
        crate::openmp::for_each_mut(&mut items, |(rows, log_dense, genes, counts)| {
            let mut k = 0;
            for (row, &c) in rows.iter().enumerate() {
                let log_row = &mut log_dense[row * g..(row + 1) * g];
                log_row.fill(0.0);
                for (gi, v) in self.counts.column(c) {
                    log_row[gi] = if v < LOG1P_TABLED as f32 { log1p[whole_number_index(v)] } else { v.ln_1p() };
                    (genes[k], counts[k]) = (gi as u32, v);
                    k += 1;
                }
            }
        });
        let (mut flat, mut gene, mut value) = (Vec::new(), Vec::new(), Vec::new());
        if !fused {
            for row in 0..b {
                for k in nz_ptr[row]..nz_ptr[row + 1] {
                    flat.push((row * g + nz_gene[k] as usize) as i64);
                    gene.push(nz_gene[k] as i64);
                    value.push(nz_count[k]);
                }
            }
        }
        let log_counts = log_counts.to_device(device);
        let idx = |v: Vec<i64>| Tensor::from_slice(&v).to_device(device);
        let nonzeros = (!fused).then(|| NonZeros {
            flat: idx(flat),
            gene: idx(gene),
            value: Tensor::from_slice(&value).to_device(device),
            lgamma_x1: Tensor::from_slice(lgamma_x1).to_device(device),
        });
        let host = fused.then(|| HostCopy {
            nz_ptr,
            nz_gene,
            nz_count,
            log_library: lib.to_vec(),
            lgamma_x1: lgamma_x1.to_vec(),
        });
        (log_counts, nonzeros, host)
    }

    /// For an accelerator: only the non-zeros travel (gene index and count, 4 bytes
    /// each, and each cell's number of them), and the dense log1p(x) is assembled
    /// on the device. Densifying on the host and copying [B, G] floats over took
    /// most of a GPU training step (bench/train_phases.R).
    fn dense_on_device(&self, cells: &[usize], device: Device, lgamma_x1: &[f32]) -> (Tensor, NonZeros) {
        let (g, b) = (self.counts.n_genes() as i64, cells.len() as i64);
        let (mut gene, mut value, mut per_cell) = (Vec::<i32>::new(), Vec::<f32>::new(), Vec::with_capacity(cells.len()));
        for &c in cells {
            let before = gene.len();
            for (gi, v) in self.counts.column(c) {
                gene.push(gi as i32);
                value.push(v);
            }
            per_cell.push((gene.len() - before) as i64);
        }
        let nnz = gene.len() as i64;
        let gene = Tensor::from_slice(&gene).to_device(device).to_kind(Kind::Int64);
        let value = Tensor::from_slice(&value).to_device(device);
        // output_size given: no wait for the device to learn it
        let rows = Tensor::repeat_interleave(&Tensor::from_slice(&per_cell).to_device(device), nnz);
        let flat = rows * g + &gene;
        let log_counts = Tensor::zeros([b * g], (Kind::Float, device)).index_copy(0, &flat, &value.log1p()).view([b, g]);
        let lgamma_x1 = Tensor::from_slice(lgamma_x1).to_device(device);
        (log_counts, NonZeros { flat, gene, value, lgamma_x1 })
    }
}

/// Cells per work item of a minibatch's assembly.
const ROWS_PER_ITEM: usize = 16;

/// The `width` values of each of `cells`, cell after cell.
fn cell_rows<T: Copy>(v: &[T], width: usize, cells: &[usize]) -> Vec<T> {
    cells.iter().flat_map(|&c| v[c * width..(c + 1) * width].iter().copied()).collect()
}

/// The index of a whole number 0 <= v < 2^23 held as a float: in v + 2^23 the
/// mantissa is v itself (cheaper than a float-to-integer conversion, whose
/// saturating semantics took most of the minibatch assembly's time).
#[inline(always)]
fn whole_number_index(v: f32) -> usize {
    ((v + 8_388_608.0).to_bits() & 0x007f_ffff) as usize
}

/// Counts below this take log1p from [log1p_table].
const LOG1P_TABLED: usize = 1 << 16;

/// log1p(k) for the counts k = 0, 1, ... below 2^16, computed once by
/// libtorch's own kernel, in slices whose lengths are multiples of 32 and under
/// its parallel grain, so that every value takes its vector path: the same bits
/// as `log1p_` over a dense minibatch. Larger counts (rare) use `f32::ln_1p`.
fn log1p_table() -> &'static [f32] {
    const TABLED: i64 = LOG1P_TABLED as i64;
    const SLICE: i64 = 1 << 14;
    static TABLE: std::sync::OnceLock<Vec<f32>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        let mut table = Vec::with_capacity(TABLED as usize);
        for start in (0..TABLED).step_by(SLICE as usize) {
            let slice = Tensor::arange_start(start, start + SLICE, (Kind::Float, Device::Cpu)).log1p();
            table.extend(Vec::<f32>::try_from(&slice).expect("a float tensor"));
        }
        table
    })
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
    use super::*;

    #[test]
    fn whole_number_index_is_the_number() {
        for v in [0u32, 1, 2, 3, 255, 256, 65_535, 1 << 22, (1 << 23) - 1] {
            assert_eq!(whole_number_index(v as f32), v as usize);
        }
    }

    #[test]
    fn ln_factorial_table_equals_lgamma() {
        for x in [0.0f32, 1.0, 2.0, 7.0, 1023.0, 1024.0, 5000.0] {
            assert_eq!(super::ln_factorial(x), statrs::function::gamma::ln_gamma(x as f64 + 1.0) as f32);
        }
    }

    /// The minibatch's log1p(x), read from the table for the non-zeros, has the
    /// bits of libtorch's log1p over the dense counts (the assembly before the
    /// table), small and large counts alike; past the table it is ln_1p.
    #[test]
    fn tabled_log1p_equals_libtorch() {
        let (g, n) = (40usize, 32usize);
        // counts from 0 to ~65,000 in uneven steps, then a few past the table
        let mut counts: Vec<f32> = (0..g * n).map(|k| if k % 2 == 0 { ((k * k * 37) % 65_536) as f32 } else { 0.0 }).collect();
        counts[1] = 65_535.0;
        counts[3] = 65_536.0;
        counts[5] = 1.0e6;
        let data = Dataset::new(csc(&counts, g), vec![0; n], vec![0; n]);
        let cells: Vec<usize> = (0..n).collect();
        let lgx = vec![0.0; n];
        let lib = vec![0.0; n];
        let (logs, _, _) = data.dense_on_host(&cells, Device::Cpu, true, &lgx, &lib);
        let got = Vec::<f32>::try_from(&logs.view([-1])).unwrap();
        let tabled: Vec<usize> = (0..g * n).filter(|&k| counts[k] < 65_536.0).collect();
        // libtorch over the dense counts, 1,280 values: its vector path throughout
        let want = Vec::<f32>::try_from(&Tensor::from_slice(&counts).log1p()).unwrap();
        for &k in &tabled {
            assert_eq!(got[k].to_bits(), want[k].to_bits(), "count {}", counts[k]);
        }
        for k in [3, 5] {
            assert_eq!(got[k], counts[k].ln_1p());
        }
    }

    /// Cells of `g` genes each, one after the other in `dense`, as counts.
    fn csc(dense: &[f32], g: usize) -> CscCounts {
        let (mut p, mut i, mut x) = (vec![0i32], Vec::new(), Vec::new());
        for cell in dense.chunks(g) {
            for (gi, &v) in cell.iter().enumerate().filter(|(_, &v)| v > 0.0) {
                i.push(gi as i32);
                x.push(v as f64);
            }
            p.push(i.len() as i32);
        }
        CscCounts::from_slots(g, dense.len() / g, &p, &i, &x).unwrap()
    }

    /// The accelerator's assembly (run here on the CPU) gives the host's minibatch.
    #[test]
    fn dense_on_device_matches_dense_on_host() {
        let (g, n) = (7usize, 60usize);
        let counts: Vec<f32> = (0..g * n).map(|k| if k % 3 == 0 { (k % 11) as f32 } else { 0.0 }).collect();
        let data = Dataset::new(csc(&counts, g), vec![0; n], vec![0; n]);
        // several items of rows, in another order than the data's
        let cells: Vec<usize> = (0..n).rev().step_by(2).chain([4, 0, 2]).collect();
        let lgx: Vec<f32> = cells.iter().map(|&c| data.lgamma_x1[c]).collect();
        let lib: Vec<f32> = cells.iter().map(|&c| data.library[c].max(1.0).ln()).collect();
        let (host_logs, host_nz, _) = data.dense_on_host(&cells, Device::Cpu, false, &lgx, &lib);
        let (dev_logs, dev_nz) = data.dense_on_device(&cells, Device::Cpu, &lgx);
        let host_nz = host_nz.unwrap();
        assert_eq!(dev_logs.size(), host_logs.size());
        assert!(f64::try_from((&dev_logs - &host_logs).abs().max()).unwrap() < 1e-6);
        for (a, b) in [(&dev_nz.flat, &host_nz.flat), (&dev_nz.gene, &host_nz.gene), (&dev_nz.value, &host_nz.value), (&dev_nz.lgamma_x1, &host_nz.lgamma_x1)] {
            assert!(a.equal(b));
        }
        // the fused likelihood's host copy: the same rows and non-zeros
        let (fused_logs, _, host) = data.dense_on_host(&cells, Device::Cpu, true, &lgx, &lib);
        let host = host.unwrap();
        assert!(fused_logs.equal(&host_logs));
        let nz_gene: Vec<i64> = host.nz_gene.iter().map(|&k| k as i64).collect();
        assert_eq!(nz_gene, Vec::<i64>::try_from(&host_nz.gene).unwrap());
        assert_eq!(host.nz_count, Vec::<f32>::try_from(&host_nz.value).unwrap());
        let per_row: Vec<usize> = cells.iter().map(|&c| counts[c * g..(c + 1) * g].iter().filter(|&&v| v > 0.0).count()).collect();
        assert_eq!(host.nz_ptr.windows(2).map(|w| w[1] - w[0]).collect::<Vec<_>>(), per_row);
        // a cell without counts
        let empty = Dataset::new(csc(&[0.0; 14], g), vec![0; 2], vec![0; 2]);
        let (logs, nz) = empty.dense_on_device(&[1, 0], Device::Cpu, &[0.0, 0.0]);
        assert_eq!(logs.size(), vec![2, g as i64]);
        assert_eq!(nz.flat.numel(), 0);
    }
}
