//! Latent representations of cells, streamed over chunks of cells. Matrices
//! cross to R column-major (cells x L), so helpers here read and write that layout.

use crate::batch::Dataset;
use crate::data::CountColumns;
use crate::error::{try_vec, Result};
use crate::model::MrviModel;
use tch::{Device, Kind, Tensor};

/// Posterior mean and standard deviation of u for every cell (cells x L each,
/// column-major).
pub fn encode<C: CountColumns>(model: &MrviModel, data: &Dataset<C>, chunk: usize) -> Result<(Vec<f32>, Vec<f32>)> {
    let n = data.n_cells();
    let l = model.config.dim_u() as usize;
    let mut mean = try_vec(n.saturating_mul(l), 0f32, "the posterior means")?;
    let mut sd = try_vec(n.saturating_mul(l), 0f32, "the posterior standard deviations")?;
    let cells: Vec<usize> = (0..n).collect();
    let mut start = 0;
    tch::no_grad(|| {
        for part in cells.chunks(chunk.max(1)) {
            // only the log counts are read: the host copy needs no device transfer
            let batch = data.batch(part, model.device(), true);
            let q = model.encode(&batch.log_counts, &batch.sample);
            copy_column_major(&q.mean, &mut mean, start, n);
            copy_column_major(&q.sd, &mut sd, start, n);
            start += part.len();
        }
    });
    Ok((mean, sd))
}

/// z = u + A_s u + a_s for given u (cells x L, column-major) and samples.
pub fn z_from_u(model: &MrviModel, u: &[f32], sample: &[i64], chunk: usize) -> Result<Vec<f32>> {
    let n = sample.len();
    let (lu, l) = (model.config.dim_u() as usize, model.config.n_latent as usize);
    if u.len() != n * lu {
        crate::invalid!("u has {} values, expected {} cells x {} dimensions", u.len(), n, lu);
    }
    if sample.iter().any(|&s| s < 0 || s >= model.config.n_samples) {
        crate::invalid!("sample codes outside the fitted samples");
    }
    let mut out = try_vec(n.saturating_mul(l), 0f32, "z")?;
    tch::no_grad(|| {
        let mut start = 0;
        while start < n {
            let end = (start + chunk.max(1)).min(n);
            let ut = rows_from_column_major(u, n, lu, start, end).to_device(model.device());
            let s = Tensor::from_slice(&sample[start..end]).to_device(model.device());
            copy_column_major(&model.z_from_u(&ut, &s), &mut out, start, n);
            start = end;
        }
    });
    Ok(out)
}

/// Rows [start, end) of a column-major n x l buffer as a [end - start, l] tensor.
pub fn rows_from_column_major(v: &[f32], n: usize, l: usize, start: usize, end: usize) -> Tensor {
    let rows = end - start;
    let mut buf = vec![0f32; rows * l];
    for c in 0..l {
        for r in 0..rows {
            buf[r * l + c] = v[c * n + start + r];
        }
    }
    Tensor::from_slice(&buf).view([rows as i64, l as i64])
}

/// Write a [rows, L] tensor into rows [start, start + rows) of a column-major
/// n x L buffer.
pub fn copy_column_major(t: &Tensor, out: &mut [f32], start: usize, n: usize) {
    let t = t.to_device(Device::Cpu).to_kind(Kind::Float).contiguous();
    let (rows, cols) = t.size2().expect("2-d");
    let (rows, cols) = (rows as usize, cols as usize);
    let mut buf = vec![0f32; rows * cols];
    let len = buf.len();
    t.copy_data(&mut buf, len);
    for r in 0..rows {
        for c in 0..cols {
            out[c * n + start + r] = buf[r * cols + c];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn column_major_round_trip() {
        let (n, l) = (5, 3);
        let v: Vec<f32> = (0..(n * l)).map(|x| x as f32).collect();
        let t = rows_from_column_major(&v, n, l, 1, 4);
        assert_eq!(t.size(), vec![3, 3]);
        // row 0 of t is cell 1: values 1, 6, 11
        assert_eq!(t.double_value(&[0, 1]), 6.0);
        let mut out = vec![0f32; n * l];
        copy_column_major(&t, &mut out, 1, n);
        for c in 0..l {
            for r in 1..4 {
                assert_eq!(out[c * n + r], v[c * n + r]);
            }
        }
    }
}
