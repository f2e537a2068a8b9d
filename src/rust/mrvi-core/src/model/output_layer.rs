//! The decoder's output layer, logits = input W^T + b (+ a term), kept as its
//! pieces so that the CPU training step can take its gradients in closed form.
//!
//! The fused likelihood ([super::nb::fused_log_lik]) returns d_logits, the
//! gradient of the log-likelihood with respect to the [B, G] logits. The layer's
//! products are made from it directly ([OutputLayer::host_gradients]: d_input
//! for the input columns that carry a gradient only, dW = d_logits^T input, db
//! = column sums) instead of autograd's backward over [B, G]; for the linear
//! flavour's decoder (input [z, site x sg(z), site]) the input gradient covers
//! z's L columns instead of all of them. The weight is kept as the parameters
//! laid side by side ([WeightBlock]: the linear decoder's C, C_b and c_b, the
//! attention decoder's one matrix), so that dW's columns go to those parameters
//! directly.

use super::host_gradients::HostGradients;
use super::products;
use tch::Tensor;

/// How a parameter gives consecutive columns of the layer's weight [G, K].
pub enum WeightBlock {
    /// a [G, k] parameter: its k columns as they are
    Plain(Tensor),
    /// a [W, G, L] parameter: column w L + l is param[w, :, l]
    Levels(Tensor),
    /// a [W, G] parameter: column w is param[w, :]
    Rows(Tensor),
}

impl WeightBlock {
    fn columns(&self) -> usize {
        let size = |t: &Tensor| t.size().iter().map(|&d| d as usize).collect::<Vec<_>>();
        match self {
            WeightBlock::Plain(t) => size(t)[1],
            WeightBlock::Levels(t) => size(t)[0] * size(t)[2],
            WeightBlock::Rows(t) => size(t)[0],
        }
    }

    /// The parameter's gradient (row-major) from the weight's gradient [G, K]
    /// at column offset `first`, times `scale`.
    fn gradient(&self, d_weight: &HostMatrix, first: usize, scale: f32) -> Vec<f32> {
        let g = d_weight.rows;
        let at = |gene: usize, column: usize| scale * d_weight.at(gene, first + column);
        match self {
            WeightBlock::Plain(_) => {
                let width = self.columns();
                let mut out = vec![0f32; g * width];
                for (gene, row) in out.chunks_exact_mut(width.max(1)).enumerate() {
                    row.iter_mut().enumerate().for_each(|(c, v)| *v = at(gene, c));
                }
                out
            }
            WeightBlock::Levels(t) => {
                let (w, l) = (t.size()[0] as usize, t.size()[2] as usize);
                let mut out = vec![0f32; w * g * l];
                for (level, block) in out.chunks_exact_mut(g * l).enumerate() {
                    for (gene, row) in block.chunks_exact_mut(l).enumerate() {
                        row.iter_mut().enumerate().for_each(|(j, v)| *v = at(gene, level * l + j));
                    }
                }
                out
            }
            WeightBlock::Rows(t) => {
                let w = t.size()[0] as usize;
                let mut out = vec![0f32; w * g];
                for (level, row) in out.chunks_exact_mut(g.max(1)).enumerate() {
                    row.iter_mut().enumerate().for_each(|(gene, v)| *v = at(gene, level));
                }
                out
            }
        }
    }

    fn parameter(&self) -> &Tensor {
        match self {
            WeightBlock::Plain(t) | WeightBlock::Levels(t) | WeightBlock::Rows(t) => t,
        }
    }

    /// The weight's columns this parameter gives ([G, k]), with its graph.
    fn weight_columns(&self) -> Tensor {
        match self {
            WeightBlock::Plain(t) => t.shallow_clone(),
            WeightBlock::Levels(t) => t.permute([1, 0, 2]).reshape([t.size()[1], -1]),
            WeightBlock::Rows(t) => t.tr(),
        }
    }
}

/// A [rows, cols] matrix in host memory, row- or column-major (the weight's
/// gradient comes transposed from [products::linear_gradients]: read in place
/// rather than copied into rows).
struct HostMatrix {
    values: Vec<f32>,
    rows: usize,
    /// strides of a row and of a column
    strides: (usize, usize),
}

impl HostMatrix {
    fn of(t: &Tensor) -> Self {
        let (rows, cols) = (t.size()[0] as usize, t.size()[1] as usize);
        if !t.is_contiguous() && t.tr().is_contiguous() {
            Self { values: super::host_floats(&t.tr()), rows, strides: (1, rows) }
        } else {
            Self { values: super::host_floats(t), rows, strides: (cols, 1) }
        }
    }

    #[inline(always)]
    fn at(&self, row: usize, col: usize) -> f32 {
        self.values[row * self.strides.0 + col * self.strides.1]
    }
}

pub struct OutputLayer {
    /// [B, K], with its graph; its first columns, those the first block reads,
    /// carry a gradient (z, or z + y), the rest are constants (covariates,
    /// detached z)
    pub input: Tensor,
    /// the parameters that make up the weight [G, K], in column order; the first
    /// is [WeightBlock::Plain]
    pub blocks: Vec<WeightBlock>,
    pub bias: Option<Tensor>,
    /// x d added to the logits (the continuous covariates' direct term): x [B, C]
    /// (constants) and d [C, G]
    pub term: Option<(Tensor, Tensor)>,
}

impl OutputLayer {
    /// The weight [G, K], with its graph: the blocks' columns side by side.
    fn weight(&self) -> Tensor {
        match self.blocks.as_slice() {
            [only] => only.weight_columns(),
            blocks => Tensor::cat(&blocks.iter().map(WeightBlock::weight_columns).collect::<Vec<_>>(), 1),
        }
    }

    /// The logits, differentiable through autograd.
    pub fn logits(&self) -> Tensor {
        let logits = products::linear(&self.input, &self.weight(), self.bias.as_ref());
        match &self.term {
            Some((x, d)) => logits + x.matmul(d),
            None => logits,
        }
    }

    /// The logits' values, without a graph.
    pub fn logit_values(&self) -> Tensor {
        tch::no_grad(|| self.logits())
    }

    /// The gradient of `scale` sum(logits * d_logits) with respect to the
    /// layer's parameters (weight blocks, bias, the term's d), added through
    /// `sink`, and with respect to the input's columns that carry a gradient
    /// (those the first block reads), returned [B, L].
    pub(crate) fn host_gradients(&self, d_logits: &Tensor, scale: f32, sink: &mut HostGradients) -> Tensor {
        let traced_weight = self.blocks[0].parameter().detach();
        let (d_traced, d_weight, d_bias) = products::linear_gradients(d_logits, &self.input.detach(), &traced_weight, self.bias.is_some());
        let d_weight = HostMatrix::of(&d_weight);
        let mut first = 0;
        for block in &self.blocks {
            sink.add_slice(block.parameter(), &block.gradient(&d_weight, first, scale));
            first += block.columns();
        }
        if let (Some(bias), Some(d_bias)) = (&self.bias, d_bias) {
            sink.add(bias, &(d_bias * scale as f64));
        }
        if let Some((x, d)) = &self.term {
            sink.add(d, &(x.tr().mm(d_logits) * scale as f64));
        }
        d_traced * scale as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    /// The weight's gradient read in place, row-major or column-major (a tall
    /// product comes transposed from [products::linear_gradients]), with one
    /// row, one column, or square.
    #[test]
    fn host_matrix_reads_either_layout() {
        for (rows, cols) in [(7i64, 3i64), (3, 7), (1, 5), (5, 1), (4, 4)] {
            let m = Tensor::arange(rows * cols, (Kind::Float, Device::Cpu)).view([rows, cols]);
            let column_major = m.tr().contiguous().tr();
            assert!(rows == 1 || cols == 1 || !column_major.is_contiguous());
            for t in [&m, &column_major] {
                let h = HostMatrix::of(t);
                assert_eq!(h.rows, rows as usize);
                for r in 0..rows as usize {
                    for c in 0..cols as usize {
                        assert_eq!(h.at(r, c), (r * cols as usize + c) as f32, "[{rows}, {cols}] at ({r}, {c})");
                    }
                }
            }
        }
    }
}
