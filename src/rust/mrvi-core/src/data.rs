//! Raw counts as a compressed-sparse-column matrix (genes × cells, one column
//! per cell: the layout of R's dgCMatrix), plus the per-cell covariate codes.
//! Minibatches are densified one at a time; the whole matrix never is.

use crate::error::Result;
use crate::invalid;

/// Read access to cells (columns) of a genes x cells count matrix.
pub trait CountColumns: Sync {
    fn n_genes(&self) -> usize;
    fn n_cells(&self) -> usize;
    /// The non-zero (gene, count) pairs of one cell.
    fn column(&self, cell: usize) -> impl Iterator<Item = (usize, f32)> + '_;
    /// The number of non-zeros of one cell.
    fn column_len(&self, cell: usize) -> usize;

    /// Total count of each cell (the observed library size l_n).
    fn library_sizes(&self) -> Vec<f32> {
        (0..self.n_cells()).map(|c| self.column(c).map(|(_, v)| v).sum()).collect()
    }
}

/// An owned, compact copy (u32 indices, f32 counts) for training, which outlives
/// a single call from R.
#[derive(Clone, Debug)]
pub struct CscCounts {
    n_genes: usize,
    n_cells: usize,
    /// column pointers, length n_cells + 1
    indptr: Vec<usize>,
    /// row (gene) indices, 0-based, strictly increasing within a column
    indices: Vec<u32>,
    values: Vec<f32>,
}

impl CscCounts {
    /// Build from dgCMatrix slots (`p`, `i`, `x`), checking the structure and the
    /// values (finite, non-negative, integer), so that later code can trust them.
    /// Zeros stored explicitly (a valid dgCMatrix may hold them: arithmetic,
    /// downsampling) are left out: the likelihood reads every stored entry as a
    /// count of at least 1.
    pub fn from_slots(n_genes: usize, n_cells: usize, p: &[i32], i: &[i32], x: &[f64]) -> Result<Self> {
        scan_slots(n_genes, n_cells, p, i, x)?.require_valid_counts()?;
        let stored = x.iter().filter(|&&v| v != 0.0).count();
        let (mut indptr, mut indices, mut values) = (Vec::with_capacity(n_cells + 1), Vec::with_capacity(stored), Vec::with_capacity(stored));
        indptr.push(0);
        for cell in 0..n_cells {
            for k in p[cell] as usize..p[cell + 1] as usize {
                if x[k] != 0.0 {
                    indices.push(i[k] as u32);
                    values.push(x[k] as f32);
                }
            }
            indptr.push(indices.len());
        }
        Ok(Self { n_genes, n_cells, indptr, indices, values })
    }

    /// `n_cells` cells without counts: the place of counts that are read from
    /// disk block by block during training (`Trainer::with_counts_on_disk`).
    pub fn empty(n_genes: usize, n_cells: usize) -> Self {
        Self { n_genes, n_cells, indptr: vec![0; n_cells + 1], indices: Vec::new(), values: Vec::new() }
    }

    /// A copy of the cells in `ranges`, one range after the other.
    pub fn select(&self, ranges: &[std::ops::Range<usize>]) -> Self {
        let mut out = Self::empty(self.n_genes, 0);
        for cell in ranges.iter().flat_map(|r| r.clone()) {
            let r = self.indptr[cell]..self.indptr[cell + 1];
            out.indices.extend_from_slice(&self.indices[r.clone()]);
            out.values.extend_from_slice(&self.values[r]);
            out.indptr.push(out.indices.len());
            out.n_cells += 1;
        }
        out
    }
}

impl CountColumns for CscCounts {
    fn n_genes(&self) -> usize {
        self.n_genes
    }
    fn n_cells(&self) -> usize {
        self.n_cells
    }
    fn column(&self, cell: usize) -> impl Iterator<Item = (usize, f32)> + '_ {
        let r = self.indptr[cell]..self.indptr[cell + 1];
        self.indices[r.clone()].iter().map(|&g| g as usize).zip(self.values[r].iter().copied())
    }
    fn column_len(&self, cell: usize) -> usize {
        self.indptr[cell + 1] - self.indptr[cell]
    }
}

/// A borrowed view of dgCMatrix slots, for work done within one call from R
/// (encoding, analyses): no copy of the counts. Built only from slots that
/// `scan_slots` has checked.
pub struct CscView<'a> {
    n_genes: usize,
    p: &'a [i32],
    i: &'a [i32],
    x: &'a [f64],
}

impl<'a> CscView<'a> {
    pub fn new(n_genes: usize, p: &'a [i32], i: &'a [i32], x: &'a [f64]) -> Result<Self> {
        scan_slots(n_genes, p.len().saturating_sub(1), p, i, x)?.require_valid_counts()?;
        Ok(Self { n_genes, p, i, x })
    }
}

impl CountColumns for CscView<'_> {
    fn n_genes(&self) -> usize {
        self.n_genes
    }
    fn n_cells(&self) -> usize {
        self.p.len() - 1
    }
    fn column(&self, cell: usize) -> impl Iterator<Item = (usize, f32)> + '_ {
        let r = self.p[cell] as usize..self.p[cell + 1] as usize;
        self.i[r.clone()].iter().map(|&g| g as usize).zip(self.x[r].iter().map(|&v| v as f32))
    }
    fn column_len(&self, cell: usize) -> usize {
        (self.p[cell + 1] - self.p[cell]) as usize
    }
}

/// One pass over dgCMatrix slots: the structure is checked (an error if broken);
/// bad values are counted, with the positions (0-based, into x) of the first few
/// of each kind, so that the caller can say how many and where; totals per cell
/// and per gene come along.
#[derive(Debug, Default)]
pub struct SlotScan {
    pub library: Vec<f64>,
    pub gene_total: Vec<f64>,
    pub n_nonfinite: usize,
    pub n_negative: usize,
    pub n_fractional: usize,
    /// counts above [MAX_COUNT]
    pub n_too_large: usize,
    pub first_nonfinite: Vec<usize>,
    pub first_negative: Vec<usize>,
    pub first_fractional: Vec<usize>,
    pub first_too_large: Vec<usize>,
}

/// The largest count the model takes: 2^24, the largest whole number that single
/// precision holds exactly. Above it the likelihood's terms (x log mu, of the size
/// x * 2^-24 in rounding) are noise, and at 1e11 the ELBO turned positive: no
/// count of one gene in one cell comes near it.
pub const MAX_COUNT: f64 = 16_777_216.0;

impl SlotScan {
    pub fn require_valid_counts(&self) -> Result<()> {
        if self.n_nonfinite + self.n_negative + self.n_fractional + self.n_too_large > 0 {
            invalid!(
                "counts must be finite non-negative whole numbers up to {MAX_COUNT}: {} non-finite, {} negative, {} fractional, {} larger",
                self.n_nonfinite,
                self.n_negative,
                self.n_fractional,
                self.n_too_large
            );
        }
        Ok(())
    }
}

pub fn scan_slots(n_genes: usize, n_cells: usize, p: &[i32], i: &[i32], x: &[f64]) -> Result<SlotScan> {
    if p.len() != n_cells + 1 {
        invalid!("CSC column pointers have length {}, expected ncol + 1 = {}", p.len(), n_cells + 1);
    }
    if i.len() != x.len() {
        invalid!("CSC row indices ({}) and values ({}) differ in length", i.len(), x.len());
    }
    if p[0] != 0 || p[n_cells] as usize != i.len() {
        invalid!("CSC column pointers must start at 0 and end at the number of non-zeros");
    }
    let mut scan = SlotScan { library: vec![0.0; n_cells], gene_total: vec![0.0; n_genes], ..Default::default() };
    const SHOW: usize = 3;
    for c in 0..n_cells {
        // (p[c] >= 0 by induction from p[0] = 0; a pointer past the non-zeros
        // would index beyond the row indices)
        if p[c + 1] < p[c] || p[c + 1] as usize > i.len() {
            invalid!("CSC column pointers must be non-decreasing and at most the number of non-zeros");
        }
        let mut prev: i64 = -1;
        for k in p[c] as usize..p[c + 1] as usize {
            let r = i[k];
            if r < 0 || r as usize >= n_genes || (r as i64) <= prev {
                invalid!("CSC row indices of column {} are out of range or not strictly increasing", c + 1);
            }
            prev = r as i64;
            let v = x[k];
            if !v.is_finite() {
                scan.n_nonfinite += 1;
                if scan.first_nonfinite.len() < SHOW {
                    scan.first_nonfinite.push(k);
                }
            } else if v < 0.0 {
                scan.n_negative += 1;
                if scan.first_negative.len() < SHOW {
                    scan.first_negative.push(k);
                }
            } else if v.fract() != 0.0 {
                scan.n_fractional += 1;
                if scan.first_fractional.len() < SHOW {
                    scan.first_fractional.push(k);
                }
            } else if v > MAX_COUNT {
                scan.n_too_large += 1;
                if scan.first_too_large.len() < SHOW {
                    scan.first_too_large.push(k);
                }
            } else {
                scan.library[c] += v;
                scan.gene_total[r as usize] += v;
            }
        }
    }
    Ok(scan)
}

#[cfg(test)]
mod tests {
    use super::*;

    // 3 genes × 4 cells:
    // [1 0 0 2]
    // [0 0 3 0]
    // [4 0 5 0]
    fn example() -> CscCounts {
        CscCounts::from_slots(3, 4, &[0, 2, 2, 4, 5], &[0, 2, 1, 2, 0], &[1., 4., 3., 5., 2.]).unwrap()
    }

    #[test]
    fn stored_zeros_are_left_out() {
        // column 0: (0, 1), (1, 0 stored), (2, 4); column 1: (1, 0 stored) only
        let with_zeros = CscCounts::from_slots(3, 2, &[0, 3, 4], &[0, 1, 2, 1], &[1., 0., 4., 0.]).unwrap();
        let without = CscCounts::from_slots(3, 2, &[0, 2, 2], &[0, 2], &[1., 4.]).unwrap();
        for c in 0..2 {
            assert_eq!(with_zeros.column(c).collect::<Vec<_>>(), without.column(c).collect::<Vec<_>>());
            assert_eq!(with_zeros.column_len(c), without.column_len(c));
        }
        assert_eq!(with_zeros.library_sizes(), vec![5.0, 0.0]);
    }

    #[test]
    fn library_sizes_and_columns() {
        let m = example();
        assert_eq!(m.library_sizes(), vec![5., 0., 8., 2.]);
        assert_eq!(m.column(2).collect::<Vec<_>>(), vec![(1, 3.0), (2, 5.0)]);
    }

    #[test]
    fn rejects_bad_structure_and_values() {
        let bad_p = CscCounts::from_slots(3, 2, &[0, 1], &[0], &[1.]);
        assert!(bad_p.unwrap_err().to_string().contains("ncol + 1"));
        let unsorted = CscCounts::from_slots(3, 1, &[0, 2], &[2, 0], &[1., 1.]);
        assert!(unsorted.unwrap_err().to_string().contains("strictly increasing"));
        let out_of_range = CscCounts::from_slots(3, 1, &[0, 1], &[3], &[1.]);
        assert!(out_of_range.is_err());
        for v in [-1.0, 0.5, f64::NAN, f64::INFINITY] {
            let e = CscCounts::from_slots(3, 1, &[0, 1], &[0], &[v]).unwrap_err().to_string();
            assert!(e.contains("finite non-negative whole numbers"), "{e}");
        }
    }

    #[test]
    fn scan_counts_bad_values_and_totals() {
        let (p, i) = ([0, 2, 2, 4, 5], [0, 2, 1, 2, 0]);
        let scan = scan_slots(3, 4, &p, &i, &[1., 4., 3., 5., 2.]).unwrap();
        assert_eq!(scan.library, vec![5., 0., 8., 2.]);
        assert_eq!(scan.gene_total, vec![3., 3., 9.]);
        scan.require_valid_counts().unwrap();
        let bad = scan_slots(3, 4, &p, &i, &[-1., f64::NAN, 0.5, 5., -2.]).unwrap();
        assert_eq!((bad.n_negative, bad.n_nonfinite, bad.n_fractional), (2, 1, 1));
        assert_eq!(bad.first_negative, vec![0, 4]);
        assert!(bad.require_valid_counts().is_err());
        // 2^24 is taken, the next whole number is not
        let large = scan_slots(3, 4, &p, &i, &[MAX_COUNT, 1e12, 3., MAX_COUNT + 1., 2.]).unwrap();
        assert_eq!((large.n_too_large, large.first_too_large.clone()), (2, vec![1, 3]));
        assert_eq!(large.library[0], MAX_COUNT);
        assert!(large.require_valid_counts().is_err());
        assert!(scan_slots(3, 4, &p, &[0, 2, 2, 1, 0], &[1.; 5]).is_err());
        // a column pointer past the non-zeros, later ones back in range: an error, not a panic
        assert!(scan_slots(3, 2, &[0, 5, 2], &[0, 1], &[1.; 2]).is_err());
        let view = CscView::new(3, &p, &i, &[1., 4., 3., 5., 2.]).unwrap();
        assert_eq!(view.column(2).collect::<Vec<_>>(), vec![(1, 3.0), (2, 5.0)]);
        assert_eq!(view.n_cells(), 4);
    }
}
