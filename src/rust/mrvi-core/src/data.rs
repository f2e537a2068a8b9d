//! Raw counts as a compressed-sparse-column matrix (genes × cells, one column
//! per cell: the layout of R's dgCMatrix), plus the per-cell covariate codes.
//! Minibatches are densified one at a time; the whole matrix never is.

use crate::error::Result;
use crate::invalid;

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
    pub fn from_slots(n_genes: usize, n_cells: usize, p: &[i32], i: &[i32], x: &[f64]) -> Result<Self> {
        if p.len() != n_cells + 1 {
            invalid!("CSC column pointers have length {}, expected ncol + 1 = {}", p.len(), n_cells + 1);
        }
        if i.len() != x.len() {
            invalid!("CSC row indices ({}) and values ({}) differ in length", i.len(), x.len());
        }
        if p[0] != 0 || p[n_cells] as usize != i.len() {
            invalid!("CSC column pointers must start at 0 and end at the number of non-zeros");
        }
        let mut indptr = Vec::with_capacity(p.len());
        for w in p.windows(2) {
            if w[1] < w[0] {
                invalid!("CSC column pointers must be non-decreasing");
            }
        }
        indptr.extend(p.iter().map(|&v| v as usize));
        let mut indices = Vec::with_capacity(i.len());
        for c in 0..n_cells {
            let mut prev: i64 = -1;
            for k in indptr[c]..indptr[c + 1] {
                let r = i[k];
                if r < 0 || r as usize >= n_genes || (r as i64) <= prev {
                    invalid!("CSC row indices of column {} are out of range or not strictly increasing", c + 1);
                }
                prev = r as i64;
                indices.push(r as u32);
            }
        }
        let mut values = Vec::with_capacity(x.len());
        for (k, &v) in x.iter().enumerate() {
            if !v.is_finite() || v < 0.0 || v.fract() != 0.0 {
                invalid!("count {} (value {v}) is not a finite non-negative integer", k + 1);
            }
            values.push(v as f32);
        }
        Ok(Self { n_genes, n_cells, indptr, indices, values })
    }

    pub fn n_genes(&self) -> usize {
        self.n_genes
    }
    pub fn n_cells(&self) -> usize {
        self.n_cells
    }
    pub fn nnz(&self) -> usize {
        self.values.len()
    }

    /// The non-zero (gene, count) pairs of one cell.
    pub fn column(&self, cell: usize) -> impl Iterator<Item = (usize, f32)> + '_ {
        let r = self.indptr[cell]..self.indptr[cell + 1];
        self.indices[r.clone()].iter().map(|&g| g as usize).zip(self.values[r].iter().copied())
    }

    /// Total count of each cell (the observed library size l_n).
    pub fn library_sizes(&self) -> Vec<f32> {
        (0..self.n_cells).map(|c| self.column(c).map(|(_, v)| v).sum()).collect()
    }

    /// Dense row-major [cells.len(), n_genes] block of the given cells.
    pub fn dense_rows(&self, cells: &[usize]) -> Vec<f32> {
        let g = self.n_genes;
        let mut out = vec![0f32; cells.len() * g];
        for (row, &c) in cells.iter().enumerate() {
            let dst = &mut out[row * g..(row + 1) * g];
            for (gene, v) in self.column(c) {
                dst[gene] = v;
            }
        }
        out
    }
}

/// Integer codes (0-based) of a per-cell factor with `n_levels` levels.
pub fn check_codes(name: &str, codes: &[i32], n_cells: usize, n_levels: usize) -> Result<Vec<i64>> {
    if codes.len() != n_cells {
        invalid!("{name} has {} codes for {n_cells} cells", codes.len());
    }
    codes
        .iter()
        .map(|&c| {
            if c < 0 || c as usize >= n_levels {
                Err(crate::error::Error::InvalidInput(format!("{name} code {c} outside 0..{n_levels}")))
            } else {
                Ok(c as i64)
            }
        })
        .collect()
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
    fn library_sizes_and_dense_rows() {
        let m = example();
        assert_eq!(m.library_sizes(), vec![5., 0., 8., 2.]);
        assert_eq!(m.dense_rows(&[2, 0]), vec![0., 3., 5., 1., 0., 4.]);
        assert_eq!(m.nnz(), 5);
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
            assert!(e.contains("non-negative integer"), "{e}");
        }
    }

    #[test]
    fn codes_are_checked() {
        assert_eq!(check_codes("sample", &[0, 1, 1], 3, 2).unwrap(), vec![0, 1, 1]);
        assert!(check_codes("sample", &[0, 2], 2, 2).is_err());
        assert!(check_codes("sample", &[0], 2, 2).is_err());
    }
}
