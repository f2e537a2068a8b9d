//! Latent representations of cells, streamed over chunks of cells.

use crate::batch::Dataset;
use crate::model::MrviModel;
use tch::{Kind, Tensor};

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Which {
    U,
    Z,
}

/// Cells x L matrix, column-major (R's layout), of u or z (z under each cell's
/// own sample). `use_mean`: the posterior mean of u; otherwise one draw per cell.
pub fn latent(model: &MrviModel, data: &Dataset, which: Which, use_mean: bool, chunk: usize) -> Vec<f32> {
    let n = data.n_cells();
    let l = model.config.n_latent as usize;
    let mut out = vec![0f32; n * l];
    let cells: Vec<usize> = (0..n).collect();
    let mut start = 0;
    tch::no_grad(|| {
        for part in cells.chunks(chunk.max(1)) {
            let batch = data.batch(part, model.device());
            let q = model.encode(&batch.log_counts, &batch.sample);
            let u = if use_mean { q.mean.shallow_clone() } else { q.rsample() };
            let rep = match which {
                Which::U => u,
                Which::Z => model.z_from_u(&u, &batch.sample),
            };
            copy_column_major(&rep, &mut out, start, n);
            start += part.len();
        }
    });
    out
}

/// Write rows [start, start + rows) of a [rows, L] tensor into a column-major
/// n x L buffer.
pub fn copy_column_major(t: &Tensor, out: &mut [f32], start: usize, n: usize) {
    let t = t.to_device(tch::Device::Cpu).to_kind(Kind::Float).contiguous();
    let (rows, cols) = t.size2().expect("2-d");
    let mut buf = vec![0f32; (rows * cols) as usize];
    let len = buf.len();
    t.copy_data(&mut buf, len);
    for r in 0..rows as usize {
        for c in 0..cols as usize {
            out[c * n + start + r] = buf[r * cols as usize + c];
        }
    }
}
