//! The attention block ([AttentionBlock]) in a training step on the CPU: its
//! forward and backward on host floats, one pass over each cell's row each way.
//!
//! Through libtorch a block is ~50 small operations forward and as many
//! backward; at minibatch size their dispatch costs far more than their
//! arithmetic (one block on 256 cells: 0.73 ms forward + 1.38 ms backward, one
//! thread, against 1.94 ms for the encoder's first layer, a product of
//! 256 x 2,000 x 128). Here a row's softmax runs over its 32 (token, head) pairs
//! in vector lanes, and the rows go to libtorch's threads in fixed groups whose
//! parameter gradients are added in group order: the same bits with any number
//! of threads.
//!
//! The block's parameters enter as its closed form ([HostClosedForm], computed
//! on the host: through autograd its dozen small operations each way cost as
//! much as the block's own arithmetic); their gradients go back through the
//! closed form by hand and are added to the parameters' `.grad`. The context's
//! (and the hidden term's) go back to autograd through the linear surrogate
//! sum(context * gradient), whose gradient is exactly the given one; the
//! caller carries the input's gradient on (see `MrviModel::step_terms`).

use super::attention::{layer_norm_moments, transpose, AttentionBlock, HostClosedForm, HostParameters, HEADS, HIDDEN, PAIRS, TOKENS};
use super::host_gradients::HostGradients;
use super::host_floats as host;
use crate::fastmath;
use tch::Tensor;

const T: usize = TOKENS as usize;
const H: usize = HIDDEN as usize;
const K: usize = PAIRS;
const NH: usize = HEADS as usize;
/// rows per group of work (and per partial sum of the parameters' gradients)
const ROWS_PER_ITEM: usize = 32;

/// A block for one step: its parameters (the tensors, to add their gradients
/// to, and host copies) and its closed form in the layouts the row loops read.
pub struct BlockStep {
    tensors: Vec<Tensor>,
    parameters: HostParameters,
    host: HostForm,
}

/// [BlockStep]'s host copies (Sync: no tensors).
struct HostForm {
    d_in: usize,
    d_out: usize,
    /// [T, d_in] and [d_in, T]
    project: Vec<f32>,
    project_t: Vec<f32>,
    project_bias: Vec<f32>,
    /// per pair k = t * NH + h: the head's slope and intercept
    slope: [f32; K],
    intercept: [f32; K],
    /// [H, K]
    mlp1: Vec<f32>,
    mlp1_bias: Vec<f32>,
    /// [H, T]
    direct: Option<Vec<f32>>,
    /// [d_out, H]
    mlp2: Vec<f32>,
    mlp2_bias: Vec<f32>,
}

/// What a block's forward keeps for its backward: its inputs (the context and
/// hidden term as tensors too, for their surrogate) and per row the
/// intermediates ([RowTape]).
pub struct Tape {
    n: usize,
    context: Tensor,
    hidden_term: Option<Tensor>,
    host_context: Vec<f32>,
    rows: Vec<f32>,
}

/// A block's gradients from its backward: the input's ([N, d_in]) for the
/// caller; the rest go back through [BlockStep::add_gradients].
pub struct BlockGradients {
    pub input: Tensor,
    context: Vec<f32>,
    hidden_term: Vec<f32>,
    params: Params,
}

/// Gradients of the closed form's parameters, in [BlockStep]'s row-major layouts.
#[derive(Clone)]
struct Params {
    project: Vec<f32>,
    project_bias: Vec<f32>,
    /// per pair, summed over tokens into heads at the end
    slope: [f32; K],
    intercept: [f32; K],
    mlp1: Vec<f32>,
    mlp1_bias: Vec<f32>,
    direct: Vec<f32>,
    mlp2: Vec<f32>,
    mlp2_bias: Vec<f32>,
}

impl Params {
    fn zeros(d_in: usize, d_out: usize, direct: bool) -> Self {
        Self {
            project: vec![0.0; T * d_in],
            project_bias: vec![0.0; T],
            slope: [0.0; K],
            intercept: [0.0; K],
            mlp1: vec![0.0; H * K],
            mlp1_bias: vec![0.0; H],
            direct: vec![0.0; if direct { H * T } else { 0 }],
            mlp2: vec![0.0; d_out * H],
            mlp2_bias: vec![0.0; d_out],
        }
    }

    /// Adds `other` (a group's partial sums), field by field.
    fn add(&mut self, other: &Params) {
        let add = |a: &mut [f32], b: &[f32]| a.iter_mut().zip(b).for_each(|(a, b)| *a += b);
        add(&mut self.project, &other.project);
        add(&mut self.project_bias, &other.project_bias);
        add(&mut self.slope, &other.slope);
        add(&mut self.intercept, &other.intercept);
        add(&mut self.mlp1, &other.mlp1);
        add(&mut self.mlp1_bias, &other.mlp1_bias);
        add(&mut self.direct, &other.direct);
        add(&mut self.mlp2, &other.mlp2);
        add(&mut self.mlp2_bias, &other.mlp2_bias);
    }
}

/// Sum of N (a power of two) values by halving: a fixed order that vectorises.
#[inline(always)]
fn sum_lanes<const N: usize>(mut v: [f32; N]) -> f32 {
    let mut n = N;
    while n > 1 {
        n /= 2;
        for i in 0..n {
            v[i] += v[i + n];
        }
    }
    v[0]
}

/// One row's intermediates within [Tape::rows], as the forward writes them
/// (fixed-size arrays: loops over them vectorise without bounds checks).
struct RowTape<'a> {
    /// LayerNorm(x) [d_in] and its 1 / sd
    xhat: &'a mut [f32],
    inv: &'a mut f32,
    /// each pair's query coordinate xq_t and temperature
    xq: &'a mut [f32; K],
    lambda: &'a mut [f32; K],
    /// softmax weights [T, K] (context coordinate j, pair k) and means [K]
    weights: &'a mut [[f32; K]],
    means: &'a mut [f32; K],
    /// the first MLP layer's pre-activation
    hidden: &'a mut [f32; H],
}

/// [RowTape] read back.
struct RowRead<'a> {
    xhat: &'a [f32],
    inv: f32,
    xq: &'a [f32; K],
    lambda: &'a [f32; K],
    weights: &'a [[f32; K]],
    means: &'a [f32; K],
    hidden: &'a [f32; H],
}

impl BlockStep {
    pub fn new(block: &AttentionBlock) -> Self {
        let parameters = HostParameters::of(block);
        let host = HostForm::new(&HostClosedForm::new(&parameters));
        Self { tensors: HostParameters::tensors(block), parameters, host }
    }

    /// The block's output for x [N, d_in] (values only: its gradient comes back
    /// from [Self::backward]) against each row's context [N, TOKENS] plus, in
    /// the hidden layer, `hidden_term` [N, HIDDEN]; and the tape for the backward.
    pub fn forward(&self, x: &Tensor, context: &Tensor, hidden_term: Option<&Tensor>) -> (Tensor, Tape) {
        let host_form = &self.host;
        let n = x.size()[0] as usize;
        let (xs, host_context) = (host(x), host(context));
        let terms = hidden_term.map(host);
        let (d, d_out, stride) = (host_form.d_in, host_form.d_out, host_form.tape_stride());
        let mut out = vec![0f32; n * d_out];
        let mut rows = vec![0f32; n * stride];
        struct Item<'a> {
            first: usize,
            out: &'a mut [f32],
            tape: &'a mut [f32],
        }
        let mut items: Vec<Item> = out
            .chunks_mut(ROWS_PER_ITEM * d_out)
            .zip(rows.chunks_mut(ROWS_PER_ITEM * stride))
            .enumerate()
            .map(|(i, (out, tape))| Item { first: i * ROWS_PER_ITEM, out, tape })
            .collect();
        crate::openmp::for_each_mut(&mut items, |item| {
            for (r, (out, tape)) in item.out.chunks_exact_mut(d_out).zip(item.tape.chunks_exact_mut(stride)).enumerate() {
                let row = item.first + r;
                let term = terms.as_ref().map(|t| &t[row * H..(row + 1) * H]);
                host_form.forward_row_dispatch(&xs[row * d..(row + 1) * d], &host_context[row * T..(row + 1) * T], term, out, tape);
            }
        });
        let out = Tensor::from_slice(&out).view([n as i64, d_out as i64]).to_device(x.device());
        let tape = Tape { n, context: context.shallow_clone(), hidden_term: hidden_term.map(|t| t.shallow_clone()), host_context, rows };
        (out, tape)
    }

    /// The gradients of sum(output * `d_out`) ([N, d_out]) with respect to the
    /// block's input, context, hidden term and parameters.
    pub fn backward(&self, tape: &Tape, d_out: &Tensor) -> BlockGradients {
        let host_form = &self.host;
        let (n, d, width, stride) = (tape.n, host_form.d_in, host_form.d_out, host_form.tape_stride());
        let (rows, host_context) = (&tape.rows, &tape.host_context);
        let g = host(d_out);
        assert_eq!(g.len(), n * width, "the output gradient's shape");
        let mut d_x = vec![0f32; n * d];
        let mut d_context = vec![0f32; n * T];
        let mut d_term = vec![0f32; n * H];
        let zero = Params::zeros(d, width, host_form.direct.is_some());
        struct Item<'a> {
            first: usize,
            d_x: &'a mut [f32],
            d_context: &'a mut [f32],
            d_term: &'a mut [f32],
            params: Params,
            d_xhat: Vec<f32>,
        }
        let mut items: Vec<Item> = d_x
            .chunks_mut(ROWS_PER_ITEM * d)
            .zip(d_context.chunks_mut(ROWS_PER_ITEM * T))
            .zip(d_term.chunks_mut(ROWS_PER_ITEM * H))
            .enumerate()
            .map(|(i, ((d_x, d_context), d_term))| Item { first: i * ROWS_PER_ITEM, d_x, d_context, d_term, params: zero.clone(), d_xhat: vec![0.0; d] })
            .collect();
        crate::openmp::for_each_mut(&mut items, |item| {
            for r in 0..item.d_x.len() / d {
                let row = item.first + r;
                host_form.backward_row_dispatch(
                    &g[row * width..(row + 1) * width],
                    &host_context[row * T..(row + 1) * T],
                    &rows[row * stride..(row + 1) * stride],
                    &mut item.d_x[r * d..(r + 1) * d],
                    &mut item.d_context[r * T..(r + 1) * T],
                    &mut item.d_term[r * H..(r + 1) * H],
                    &mut item.params,
                    &mut item.d_xhat,
                );
            }
        });
        let mut params = zero;
        for item in &items {
            params.add(&item.params);
        }
        let input = Tensor::from_slice(&d_x).view([n as i64, d as i64]).to_device(d_out.device());
        BlockGradients { input, context: d_context, hidden_term: d_term, params }
    }

    /// Adds the block's gradients through `sink`: its parameters', and the
    /// context's and the hidden term's (the tape's tensors, with their graphs)
    /// as a term for autograd.
    pub fn add_gradients(&self, tape: &Tape, g: &BlockGradients, sink: &mut HostGradients) {
        let dot = |t: &Tensor, v: &[f32]| t.reshape([-1]).dot(&Tensor::from_slice(v).to_device(t.device()));
        sink.add_term(dot(&tape.context, &g.context));
        if let Some(t) = &tape.hidden_term {
            sink.add_term(dot(t, &g.hidden_term));
        }
        let p = &g.params;
        let f64s = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<f64>>();
        let heads = |v: &[f32; K]| -> Vec<f64> { (0..NH).map(|h| (0..T).map(|t| v[t * NH + h] as f64).sum()).collect() };
        let form = HostClosedForm {
            project: f64s(&p.project),
            project_bias: f64s(&p.project_bias),
            slope: heads(&p.slope),
            intercept: heads(&p.intercept),
            mlp1: f64s(&p.mlp1),
            mlp1_bias: f64s(&p.mlp1_bias),
            direct: self.host.direct.is_some().then(|| f64s(&p.direct)),
            mlp2: f64s(&p.mlp2),
            mlp2_bias: f64s(&p.mlp2_bias),
        };
        for (tensor, grad) in self.tensors.iter().zip(HostClosedForm::parameter_gradients(&self.parameters, &form)) {
            let grad: Vec<f32> = grad.iter().map(|&g| g as f32).collect();
            sink.add_slice(tensor, &grad);
        }
    }
}

impl HostForm {
    fn new(form: &HostClosedForm) -> Self {
        let f32s = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
        let (project, mlp1, mlp2) = (f32s(&form.project), f32s(&form.mlp1), f32s(&form.mlp2));
        let d_in = project.len() / T;
        let d_out = form.mlp2_bias.len();
        let per_pair = |v: &[f64]| std::array::from_fn(|k| v[k % NH] as f32);
        Self {
            d_in,
            d_out,
            project_t: transpose(&project, T, d_in),
            project,
            project_bias: f32s(&form.project_bias),
            slope: per_pair(&form.slope),
            intercept: per_pair(&form.intercept),
            mlp1,
            mlp1_bias: f32s(&form.mlp1_bias),
            direct: form.direct.as_ref().map(|d| f32s(d)),
            mlp2,
            mlp2_bias: f32s(&form.mlp2_bias),
        }
    }

    /// [RowTape], as the backward reads it.
    fn row_read<'a>(&self, row: &'a [f32]) -> RowRead<'a> {
        let (xhat, rest) = row.split_at(self.d_in);
        let (inv, rest) = rest.split_first().expect("tape row");
        let (xq, rest) = rest.split_first_chunk::<K>().expect("tape row");
        let (lambda, rest) = rest.split_first_chunk::<K>().expect("tape row");
        let (weights, rest) = rest.split_at(T * K);
        let (means, rest) = rest.split_first_chunk::<K>().expect("tape row");
        let hidden = rest.first_chunk::<H>().expect("tape row");
        RowRead { xhat, inv: *inv, xq, lambda, weights: weights.as_chunks::<K>().0, means, hidden }
    }

    fn row_tape<'a>(&self, row: &'a mut [f32]) -> RowTape<'a> {
        let (xhat, rest) = row.split_at_mut(self.d_in);
        let (inv, rest) = rest.split_first_mut().expect("tape row");
        let (xq, rest) = rest.split_first_chunk_mut::<K>().expect("tape row");
        let (lambda, rest) = rest.split_first_chunk_mut::<K>().expect("tape row");
        let (weights, rest) = rest.split_at_mut(T * K);
        let (means, rest) = rest.split_first_chunk_mut::<K>().expect("tape row");
        let hidden = rest.first_chunk_mut::<H>().expect("tape row");
        RowTape { xhat, inv, xq, lambda, weights: weights.as_chunks_mut::<K>().0, means, hidden }
    }

    fn tape_stride(&self) -> usize {
        self.d_in + 1 + 3 * K + T * K + H
    }

    fn forward_row_dispatch(&self, x: &[f32], c: &[f32], term: Option<&[f32]>, out: &mut [f32], tape: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU has the function's features.
                return unsafe { self.forward_row_avx512(x, c, term, out, tape) };
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU has the function's features.
                return unsafe { self.forward_row_avx2(x, c, term, out, tape) };
            }
        }
        self.forward_row(x, c, term, out, tape)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx2")]
    unsafe fn forward_row_avx512(&self, x: &[f32], c: &[f32], term: Option<&[f32]>, out: &mut [f32], tape: &mut [f32]) {
        self.forward_row(x, c, term, out, tape)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn forward_row_avx2(&self, x: &[f32], c: &[f32], term: Option<&[f32]>, out: &mut [f32], tape: &mut [f32]) {
        self.forward_row(x, c, term, out, tape)
    }

    /// One row forward. Every path runs these operations in this order (no
    /// fused multiply-adds, sums in fixed orders): the same bits on every CPU.
    #[inline(always)]
    fn forward_row(&self, x: &[f32], c: &[f32], term: Option<&[f32]>, out: &mut [f32], tape: &mut [f32]) {
        let RowTape { xhat, inv, xq, lambda, weights, means, hidden } = self.row_tape(tape);
        let c: &[f32; T] = c.try_into().expect("a context row");
        let mean;
        (mean, *inv) = layer_norm_moments(x);
        for (y, v) in xhat.iter_mut().zip(x) {
            *y = (v - mean) * *inv;
        }
        let mut q = [0f32; T];
        q.copy_from_slice(&self.project_bias);
        for (&y, w) in xhat.iter().zip(self.project_t.as_chunks::<T>().0) {
            for t in 0..T {
                q[t] += y * w[t];
            }
        }
        // the softmax over the context's coordinates j, all pairs k in the lanes
        for k in 0..K {
            xq[k] = q[k / NH];
            lambda[k] = xq[k] * self.slope[k] + self.intercept[k];
        }
        let mut top = [f32::NEG_INFINITY; K];
        for &cj in c {
            for k in 0..K {
                let s = lambda[k] * cj;
                top[k] = if s > top[k] { s } else { top[k] };
            }
        }
        let (mut total, mut weighted) = ([0f32; K], [0f32; K]);
        for (&cj, w) in c.iter().zip(weights.iter_mut()) {
            for k in 0..K {
                let e = fastmath::exp(lambda[k] * cj - top[k]);
                w[k] = e;
                total[k] += e;
                weighted[k] += e * cj;
            }
        }
        let mut inv_total = [0f32; K];
        for k in 0..K {
            inv_total[k] = 1.0 / total[k];
            means[k] = weighted[k] * inv_total[k];
        }
        for w in weights.iter_mut() {
            for k in 0..K {
                w[k] *= inv_total[k];
            }
        }
        // the MLP: each output a dot product (products summed by halving)
        let mut h = [0f32; H];
        for (o, (w, b)) in self.mlp1.as_chunks::<K>().0.iter().zip(&self.mlp1_bias).enumerate() {
            let mut terms = [0f32; K];
            for k in 0..K {
                terms[k] = w[k] * means[k];
            }
            h[o] = b + sum_lanes(terms);
        }
        if let Some(direct) = &self.direct {
            for (o, w) in direct.as_chunks::<T>().0.iter().enumerate() {
                let mut terms = [0f32; T];
                for j in 0..T {
                    terms[j] = w[j] * c[j];
                }
                h[o] += sum_lanes(terms);
            }
        }
        if let Some(term) = term {
            let term: &[f32; H] = term.try_into().expect("a hidden term row");
            for o in 0..H {
                h[o] += term[o];
            }
        }
        *hidden = h;
        let mut relu = [0f32; H];
        for o in 0..H {
            relu[o] = h[o].max(0.0);
        }
        for ((o, w), b) in out.iter_mut().zip(self.mlp2.as_chunks::<H>().0).zip(&self.mlp2_bias) {
            let mut terms = [0f32; H];
            for k in 0..H {
                terms[k] = relu[k] * w[k];
            }
            *o = b + sum_lanes(terms);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn backward_row_dispatch(&self, g: &[f32], c: &[f32], tape: &[f32], d_x: &mut [f32], d_c: &mut [f32], d_term: &mut [f32], p: &mut Params, d_xhat: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU has the function's features.
                return unsafe { self.backward_row_avx512(g, c, tape, d_x, d_c, d_term, p, d_xhat) };
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU has the function's features.
                return unsafe { self.backward_row_avx2(g, c, tape, d_x, d_c, d_term, p, d_xhat) };
            }
        }
        self.backward_row(g, c, tape, d_x, d_c, d_term, p, d_xhat)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx2")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn backward_row_avx512(&self, g: &[f32], c: &[f32], tape: &[f32], d_x: &mut [f32], d_c: &mut [f32], d_term: &mut [f32], p: &mut Params, d_xhat: &mut [f32]) {
        self.backward_row(g, c, tape, d_x, d_c, d_term, p, d_xhat)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn backward_row_avx2(&self, g: &[f32], c: &[f32], tape: &[f32], d_x: &mut [f32], d_c: &mut [f32], d_term: &mut [f32], p: &mut Params, d_xhat: &mut [f32]) {
        self.backward_row(g, c, tape, d_x, d_c, d_term, p, d_xhat)
    }

    /// One row backward (g: the output's gradient); adds the parameters'
    /// gradients into `p`. Same bits on every path, as [Self::forward_row].
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn backward_row(&self, g: &[f32], c: &[f32], tape: &[f32], d_x: &mut [f32], d_c: &mut [f32], d_term: &mut [f32], p: &mut Params, d_xhat: &mut [f32]) {
        let RowRead { xhat, inv, xq, lambda, weights, means, hidden } = self.row_read(tape);
        let c: &[f32; T] = c.try_into().expect("a context row");
        let d_c: &mut [f32; T] = d_c.try_into().expect("a context row");
        let d_h: &mut [f32; H] = d_term.try_into().expect("a hidden term row");
        // the second MLP layer
        let mut relu = [0f32; H];
        for o in 0..H {
            relu[o] = hidden[o].max(0.0);
        }
        let mut d_relu = [0f32; H];
        let rows = self.mlp2.as_chunks::<H>().0.iter().zip(p.mlp2.as_chunks_mut::<H>().0.iter_mut());
        for ((&gp, (w, dw)), db) in g.iter().zip(rows).zip(p.mlp2_bias.iter_mut()) {
            *db += gp;
            for o in 0..H {
                dw[o] += gp * relu[o];
                d_relu[o] += gp * w[o];
            }
        }
        // the first: its pre-activation's gradient is the hidden term's
        for o in 0..H {
            d_h[o] = if hidden[o] > 0.0 { d_relu[o] } else { 0.0 };
        }
        let mut d_means = [0f32; K];
        for ((&dh, w), dw) in d_h.iter().zip(self.mlp1.as_chunks::<K>().0).zip(p.mlp1.as_chunks_mut::<K>().0) {
            for k in 0..K {
                dw[k] += dh * means[k];
                d_means[k] += dh * w[k];
            }
        }
        for (b, dh) in p.mlp1_bias.iter_mut().zip(d_h.iter()) {
            *b += dh;
        }
        *d_c = [0.0; T];
        if let Some(direct) = &self.direct {
            for ((&dh, w), dw) in d_h.iter().zip(direct.as_chunks::<T>().0).zip(p.direct.as_chunks_mut::<T>().0) {
                for j in 0..T {
                    dw[j] += dh * c[j];
                    d_c[j] += dh * w[j];
                }
            }
        }
        // the weighted means: dm/dlambda = the weights' variance of c, dm/dc_j = w_j (1 + lambda (c_j - m))
        let mut variance = [0f32; K];
        for (&cj, w) in c.iter().zip(weights) {
            for k in 0..K {
                let dev = cj - means[k];
                variance[k] += w[k] * dev * dev;
            }
        }
        let mut d_lambda = [0f32; K];
        for k in 0..K {
            d_lambda[k] = d_means[k] * variance[k];
        }
        for ((&cj, w), dc) in c.iter().zip(weights).zip(d_c.iter_mut()) {
            let mut terms = [0f32; K];
            for k in 0..K {
                terms[k] = d_means[k] * w[k] * (1.0 + lambda[k] * (cj - means[k]));
            }
            *dc += sum_lanes(terms);
        }
        // the temperatures lambda_k = xq_t slope_h + intercept_h
        for k in 0..K {
            p.slope[k] += d_lambda[k] * xq[k];
            p.intercept[k] += d_lambda[k];
        }
        let mut d_q = [0f32; T];
        for t in 0..T {
            d_q[t] = d_lambda[t * NH] * self.slope[t * NH] + d_lambda[t * NH + 1] * self.slope[t * NH + 1];
        }
        // the projection and LayerNorm
        let d = self.d_in;
        d_xhat.fill(0.0);
        for (((&dq, w), dw), db) in d_q.iter().zip(self.project.chunks_exact(d)).zip(p.project.chunks_exact_mut(d)).zip(p.project_bias.iter_mut()) {
            *db += dq;
            for i in 0..d {
                dw[i] += dq * xhat[i];
                d_xhat[i] += dq * w[i];
            }
        }
        let df = d as f32;
        let mean_d = d_xhat.iter().sum::<f32>() / df;
        let mean_dx = d_xhat.iter().zip(xhat.iter()).map(|(a, b)| a * b).sum::<f32>() / df;
        for i in 0..d {
            d_x[i] = inv * (d_xhat[i] - mean_d - xhat[i] * mean_dx);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{nn, Device, Kind};

    /// A block with random parameters (the last layer and the direct path are
    /// not left at their zero start).
    fn block(vs: &nn::VarStore, d_in: i64, d_out: i64, direct: bool) -> AttentionBlock {
        let mut b = AttentionBlock::new(vs.root() / "b", d_in, d_out);
        if direct {
            b.direct = Some(AttentionBlock::direct_path(vs.root() / "b"));
        }
        let mut vars: Vec<_> = vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        for (_, mut v) in vars {
            let _ = tch::no_grad(|| v.copy_(&(v.randn_like() * 0.7)));
        }
        b
    }

    fn grads(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
        let mut v: Vec<(String, Tensor)> = vs.variables().into_iter().map(|(k, t)| {
            let g = t.grad();
            (k, if g.defined() { g.copy() } else { t.zeros_like() })
        }).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    fn zero_grads(vs: &nn::VarStore) {
        for v in vs.trainable_variables() {
            let mut g = v.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
    }

    fn close(name: &str, got: &Tensor, want: &Tensor) {
        let dev = (got - want).abs().max().double_value(&[]);
        let scale = want.abs().max().double_value(&[]).max(1e-3);
        assert!(dev <= 2e-5 * scale, "{name}: host and autograd differ by {dev} (scale {scale})");
    }

    /// Output and every gradient (input, context, hidden term, each parameter)
    /// against libtorch's autograd of [AttentionBlock::forward_with], with and
    /// without the direct path and the hidden term, over more rows than one group.
    #[test]
    fn host_step_matches_autograd() {
        for (d_in, d_out, direct, with_term) in [(10, 30, true, true), (30, 30, false, false), (7, 5, true, false)] {
            tch::manual_seed(5);
            let vs = nn::VarStore::new(Device::Cpu);
            let b = block(&vs, d_in, d_out, direct);
            let n = 75;
            let x = (Tensor::randn([n, d_in], (Kind::Float, Device::Cpu)) * 2.0).set_requires_grad(true);
            let context = (Tensor::randn([n, TOKENS], (Kind::Float, Device::Cpu)) * 1.5).set_requires_grad(true);
            let term = with_term.then(|| Tensor::randn([n, HIDDEN], (Kind::Float, Device::Cpu)).set_requires_grad(true));
            let weights = Tensor::randn([n, d_out], (Kind::Float, Device::Cpu));
            // autograd
            let want = b.forward_with(&x, &context, term.as_ref());
            (&want * &weights).sum(Kind::Float).backward();
            let want_grads = grads(&vs);
            let (want_dx, want_dc) = (x.grad().copy(), context.grad().copy());
            let want_dt = term.as_ref().map(|t| t.grad().copy());
            zero_grads(&vs);
            let _ = context.grad().zero_();
            if let Some(t) = &term {
                let _ = t.grad().zero_();
            }
            // host
            let step = BlockStep::new(&b);
            let (got, tape) = step.forward(&x.detach(), &context, term.as_ref());
            close("output", &got, &want.detach());
            let g = step.backward(&tape, &weights);
            close("input gradient", &g.input, &want_dx);
            let mut sink = HostGradients::default();
            step.add_gradients(&tape, &g, &mut sink);
            sink.into_surrogate().expect("the context takes a gradient").backward();
            close("context gradient", &context.grad(), &want_dc);
            if let (Some(t), Some(w)) = (&term, &want_dt) {
                close("hidden term gradient", &t.grad(), w);
            }
            for ((name, got), (_, want)) in grads(&vs).iter().zip(&want_grads) {
                close(name, got, want);
            }
        }
    }

    /// The vector paths (AVX-512, AVX2, as this CPU has them) give the portable
    /// path's bits, forward and backward.
    #[test]
    fn row_paths_agree_bitwise() {
        tch::manual_seed(7);
        let vs = nn::VarStore::new(Device::Cpu);
        let b = block(&vs, 12, 9, true);
        let step = BlockStep::new(&b);
        let f = &step.host;
        let stride = f.tape_stride();
        let x = host(&Tensor::randn([12], (Kind::Float, Device::Cpu)));
        let c = host(&(Tensor::randn([TOKENS], (Kind::Float, Device::Cpu)) * 2.0));
        let term = host(&Tensor::randn([HIDDEN], (Kind::Float, Device::Cpu)));
        let g = host(&Tensor::randn([9], (Kind::Float, Device::Cpu)));
        let run = |portable: bool| {
            let (mut out, mut tape) = (vec![0f32; 9], vec![0f32; stride]);
            let (mut d_x, mut d_c, mut d_t, mut d_xhat, mut p) = (vec![0f32; 12], vec![0f32; T], vec![0f32; H], vec![0f32; 12], Params::zeros(12, 9, true));
            if portable {
                f.forward_row(&x, &c, Some(&term), &mut out, &mut tape);
                f.backward_row(&g, &c, &tape, &mut d_x, &mut d_c, &mut d_t, &mut p, &mut d_xhat);
            } else {
                f.forward_row_dispatch(&x, &c, Some(&term), &mut out, &mut tape);
                f.backward_row_dispatch(&g, &c, &tape, &mut d_x, &mut d_c, &mut d_t, &mut p, &mut d_xhat);
            }
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
            [bits(&out), bits(&tape), bits(&d_x), bits(&d_c), bits(&d_t), bits(&p.project), bits(&p.slope), bits(&p.mlp1), bits(&p.direct), bits(&p.mlp2)]
        };
        assert_eq!(run(true), run(false));
    }

    /// The thread count does not change a bit.
    #[test]
    fn host_step_is_the_same_with_any_thread_count() {
        tch::manual_seed(6);
        let vs = nn::VarStore::new(Device::Cpu);
        let b = block(&vs, 10, 30, true);
        let x = Tensor::randn([100, 10], (Kind::Float, Device::Cpu));
        let context = Tensor::randn([100, TOKENS], (Kind::Float, Device::Cpu));
        let d_out = Tensor::randn([100, 30], (Kind::Float, Device::Cpu));
        let run = |threads: i32| {
            let before = crate::backend::num_threads();
            tch::set_num_threads(threads);
            let step = BlockStep::new(&b);
            let (out, tape) = step.forward(&x, &context, None);
            let g = step.backward(&tape, &d_out);
            tch::set_num_threads(before);
            (host(&out), host(&g.input), g.context.clone(), g.params.mlp1.clone(), g.params.slope)
        };
        let (one, two) = (run(1), run(2));
        assert!(one.0 == two.0 && one.1 == two.1 && one.2 == two.2 && one.3 == two.3 && one.4 == two.4);
    }
}
