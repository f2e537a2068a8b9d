//! Negative-binomial log-likelihood (mean / inverse-dispersion form):
//! log NB(x; mu, theta) = lgamma(x+theta) - lgamma(theta) - lgamma(x+1)
//!                      + theta (log theta - log(theta+mu)) + x (log mu - log(theta+mu)).
//! Computed from log mu and log theta with log(theta+mu) = logaddexp, which
//! stays finite for tiny and huge means alike.

use crate::fastmath;
use tch::Tensor;

/// Element-wise log NB for dense x [B, G], log_mu [B, G] and log_theta [G].
pub fn log_prob_dense(x: &Tensor, log_mu: &Tensor, log_theta: &Tensor) -> Tensor {
    let theta = log_theta.exp();
    let log_theta_mu = log_theta.logaddexp(log_mu);
    let lgammas = (x + &theta).lgamma() - theta.lgamma() - (x + 1.0).lgamma();
    &theta * (log_theta - &log_theta_mu) + x * (log_mu - &log_theta_mu) + lgammas
}

/// The non-zero entries of a dense minibatch: flat positions (row * G + gene),
/// gene indices and counts. The lgamma and x-terms of the likelihood vanish at
/// zero counts, so they are evaluated at these entries only.
pub struct NonZeros {
    pub flat: Tensor,
    pub gene: Tensor,
    pub value: Tensor,
    /// sum of lgamma(x + 1) per cell: a constant of the data, kept for the exact ELBO
    pub lgamma_x1: Tensor,
}

/// Per-cell log NB summed over genes, using the sparsity of x:
/// sum_g theta_g (log theta_g - log(theta_g + mu_ng))             (all entries)
///   + sum_{x_ng > 0} [lgamma(x+theta) - lgamma(theta) - lgamma(x+1) + x (log mu - log(theta+mu))].
pub fn log_prob_sparse(nz: &NonZeros, log_mu: &Tensor, log_theta: &Tensor) -> Tensor {
    let (b, g) = log_mu.size2().expect("log_mu must be 2-d");
    let theta = log_theta.exp();
    let log_theta_mu = log_theta.logaddexp(log_mu); // [B, G]
    let dense = (&theta * (log_theta - &log_theta_mu)).sum_dim_intlist(1, false, log_mu.kind());
    let lt_mu_nz = log_theta_mu.reshape([b * g]).index_select(0, &nz.flat);
    let log_mu_nz = log_mu.reshape([b * g]).index_select(0, &nz.flat);
    let theta_nz = theta.index_select(0, &nz.gene);
    let per_entry = (&nz.value + &theta_nz).lgamma() - theta_nz.lgamma() + &nz.value * (log_mu_nz - lt_mu_nz);
    let rows = nz.flat.divide_scalar_mode(g, "floor");
    let sparse = Tensor::zeros([b], (log_mu.kind(), log_mu.device())).index_add(0, &rows, &per_entry);
    dense + sparse - &nz.lgamma_x1
}

/// Log-likelihood of a minibatch and its gradients with respect to the decoder
/// logits and log theta, in one fused pass on the CPU (the autograd graph of the
/// same computation makes ~15 passes over the [B, G] minibatch).
pub struct FusedNb {
    /// sum over genes of log NB, per cell
    pub log_lik: Vec<f64>,
    /// d(sum of log_lik) / d log theta, [G]
    pub d_log_theta: Vec<f32>,
}

/// A minibatch of counts as its non-zeros, row by row.
pub struct HostCounts<'a> {
    /// row r's non-zeros are entries nz_ptr[r]..nz_ptr[r + 1] of nz_gene / nz_count
    pub nz_ptr: &'a [usize],
    pub nz_gene: &'a [u32],
    pub nz_count: &'a [f32],
    /// sum_g lgamma(x + 1) per row
    pub lgamma_x1: &'a [f32],
}

const LANES: usize = 8;

/// Rows per work item of [fused_log_lik]: each item adds its rows' part of d/d log
/// theta into a [G] vector of its own, and these are summed in item order, so the
/// result does not depend on the number of threads.
const ROWS_PER_ITEM: usize = 16;

/// `logits` [B, G] row-major (rho = softmax(logits)), `log_library` [B],
/// `log_theta` [G]. With mu = l rho and a_g = theta (x - mu) / (theta + mu):
///   d/d logits_g = a_g - rho_g sum_k a_k
///   d/d log theta_g = theta (log theta - log(theta + mu) + 1 - (theta + x) / (theta + mu)
///                           + psi(x + theta) - psi(theta))
/// The dense terms run over all entries in vectorised lanes (fast exp/ln), each
/// row's counts spread into a [G] row of zeros that stays in cache (and is
/// cleared after it: no dense copy of the minibatch); the lgamma/digamma terms
/// only over the non-zeros. Rows go in items of [ROWS_PER_ITEM] to libtorch's
/// OpenMP threads ([crate::openmp]).
/// d(sum of log-likelihoods) / d logits is written into `d_logits` ([B, G]);
/// without it (evaluation) only the log-likelihood is computed, with the same
/// arithmetic (the same bits), and `d_log_theta` is empty.
pub fn fused_log_lik(logits: &[f32], log_library: &[f32], log_theta: &[f32], x: &HostCounts, d_logits: Option<&mut [f32]>) -> FusedNb {
    let g = log_theta.len();
    let b = log_library.len();
    assert_eq!(logits.len(), b * g);
    assert_eq!(x.nz_ptr.len(), b + 1);
    let grad = d_logits.is_some();
    let theta: Vec<f32> = log_theta.iter().map(|&v| v.exp()).collect();
    let special = SpecialTable::new(&theta, x);
    let mut log_lik = vec![0f64; b];
    let n_items = b.div_ceil(ROWS_PER_ITEM);
    let mut partial_d_log_theta = vec![0f32; if grad { n_items * g } else { 0 }];
    struct Item<'a> {
        first: usize,
        /// the rows' d logits, or None (no gradient)
        d_logits: Option<&'a mut [f32]>,
        log_lik: &'a mut [f64],
        d_log_theta: &'a mut [f32],
    }
    let d_chunks: Vec<Option<&mut [f32]>> = match d_logits {
        Some(d) => {
            assert_eq!(d.len(), b * g);
            d.chunks_mut(ROWS_PER_ITEM * g.max(1)).map(Some).collect()
        }
        None => (0..n_items).map(|_| None).collect(),
    };
    let mut theta_chunks = partial_d_log_theta.chunks_mut(g.max(1));
    let mut items: Vec<Item> = d_chunks
        .into_iter()
        .zip(log_lik.chunks_mut(ROWS_PER_ITEM))
        .enumerate()
        .map(|(i, (d_logits, log_lik))| Item { first: i * ROWS_PER_ITEM, d_logits, log_lik, d_log_theta: theta_chunks.next().unwrap_or_default() })
        .collect();
    crate::openmp::for_each_mut(&mut items, |item| {
        // without gradients, a scratch row holds pass 1's exponentials
        let (mut rho, mut xr, mut scratch) = (vec![0f32; g], vec![0f32; g], vec![0f32; if grad { 0 } else { g }]);
        for (r, ll_row) in item.log_lik.iter_mut().enumerate() {
            let row = item.first + r;
            let eta = &logits[row * g..(row + 1) * g];
            let nz = x.nz_ptr[row]..x.nz_ptr[row + 1];
            let (genes, counts) = (&x.nz_gene[nz.clone()], &x.nz_count[nz]);
            genes.iter().zip(counts).for_each(|(&k, &v)| xr[k as usize] = v);
            let dense = match &mut item.d_logits {
                Some(d) => row_dense_dispatch::<true>(eta, &xr, &theta, log_theta, log_library[row], &mut d[r * g..(r + 1) * g], &mut rho, item.d_log_theta),
                None => row_dense_dispatch::<false>(eta, &xr, &theta, log_theta, log_library[row], &mut scratch, &mut rho, &mut []),
            };
            // the non-zeros' terms, each clearing its entry of the row of counts;
            // four running sums, not one: a single chain of dependent additions
            // was the loop's bottleneck
            let d_log_theta = &mut *item.d_log_theta;
            let mut term = |gene: u32, count: f32| {
                let gene = gene as usize;
                xr[gene] = 0.0;
                let (lg, dg) = special.get(gene, count, theta[gene]);
                if grad {
                    d_log_theta[gene] += theta[gene] * dg as f32;
                }
                lg
            };
            let mut sparse = [0f64; 4];
            let (quads, rest) = (genes.chunks_exact(4), genes.len() % 4);
            for (g4, c4) in quads.zip(counts.chunks_exact(4)) {
                sparse[0] += term(g4[0], c4[0]);
                sparse[1] += term(g4[1], c4[1]);
                sparse[2] += term(g4[2], c4[2]);
                sparse[3] += term(g4[3], c4[3]);
            }
            let tail = genes.len() - rest;
            for (j, (&gene, &count)) in genes[tail..].iter().zip(&counts[tail..]).enumerate() {
                sparse[j] += term(gene, count);
            }
            *ll_row = dense + ((sparse[0] + sparse[1]) + (sparse[2] + sparse[3])) - x.lgamma_x1[row] as f64;
        }
    });
    let mut d_log_theta = vec![0f32; if grad { g } else { 0 }];
    for part in partial_d_log_theta.chunks_exact(g.max(1)) {
        d_log_theta.iter_mut().zip(part).for_each(|(d, &p)| *d += p);
    }
    FusedNb { log_lik, d_log_theta }
}

/// `row_dense_terms` compiled for the widest vectors the CPU has (checked at run
/// time): AVX-512 (16 entries per block, one vector), AVX2 + FMA (16, two vectors:
/// with one, the kernel ran 25% slower on AMD Zen 2, `examples/nb_kernel.rs`),
/// baseline x86-64 (8). Each path sums in lanes of its own width, so the
/// baseline's sums differ from the vector paths' in the last bits (a machine
/// always takes the same path). `GRAD`: with
/// the gradients (else `dl` is scratch and `d_phi` untouched).
#[allow(clippy::too_many_arguments)]
fn row_dense_dispatch<const GRAD: bool>(
    eta: &[f32], x: &[f32], theta: &[f32], phi: &[f32], log_l: f32, dl: &mut [f32], rho: &mut [f32], d_phi: &mut [f32],
) -> f64 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports the features the function is compiled for.
            return unsafe { row_dense_avx512::<GRAD>(eta, x, theta, phi, log_l, dl, rho, d_phi) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: as above.
            return unsafe { row_dense_avx2::<GRAD>(eta, x, theta, phi, log_l, dl, rho, d_phi) };
        }
    }
    row_dense_terms::<LANES, GRAD>(eta, x, theta, phi, log_l, dl, rho, d_phi)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn row_dense_avx512<const GRAD: bool>(
    eta: &[f32], x: &[f32], theta: &[f32], phi: &[f32], log_l: f32, dl: &mut [f32], rho: &mut [f32], d_phi: &mut [f32],
) -> f64 {
    row_dense_terms::<{ 2 * LANES }, GRAD>(eta, x, theta, phi, log_l, dl, rho, d_phi)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn row_dense_avx2<const GRAD: bool>(
    eta: &[f32], x: &[f32], theta: &[f32], phi: &[f32], log_l: f32, dl: &mut [f32], rho: &mut [f32], d_phi: &mut [f32],
) -> f64 {
    row_dense_terms::<{ 2 * LANES }, GRAD>(eta, x, theta, phi, log_l, dl, rho, d_phi)
}

/// Pass 1 on a block of W entries: e = exp(eta - max) into `dl`, added to the
/// lane sums (one lane per entry of the block: a vector register).
#[inline(always)]
fn exp_block<const W: usize>(eta: &[f32], dl: &mut [f32], max: f32, lane_sum: &mut [f32; W]) {
    let (e, d): (&[f32; W], &mut [f32; W]) = (eta.try_into().unwrap(), dl.try_into().unwrap());
    for j in 0..W {
        let v = fastmath::exp(e[j] - max);
        d[j] = v;
        lane_sum[j] += v;
    }
}

/// Pass 2 on the block of W entries starting at `i`: the likelihood terms and,
/// with `GRAD`, a.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn entry_block<const W: usize, const GRAD: bool>(
    i: usize, eta: &[f32], x: &[f32], theta: &[f32], phi: &[f32], dl: &mut [f32], rho: &mut [f32], d_phi: &mut [f32],
    scale: f32, shift: f32, inv_l: f32, lane_ll: &mut [f32; W], lane_a: &mut [f32; W],
) {
    let t: &[f32; W] = theta[i..i + W].try_into().unwrap();
    let p: &[f32; W] = phi[i..i + W].try_into().unwrap();
    let xs: &[f32; W] = x[i..i + W].try_into().unwrap();
    let e: &[f32; W] = eta[i..i + W].try_into().unwrap();
    let d: &mut [f32; W] = (&mut dl[i..i + W]).try_into().unwrap();
    if !GRAD {
        for j in 0..W {
            lane_ll[j] += entry(t[j], p[j], xs[j], e[j], d[j] * scale, shift, inv_l).ll;
        }
        return;
    }
    let r: &mut [f32; W] = (&mut rho[i..i + W]).try_into().unwrap();
    let dp: &mut [f32; W] = (&mut d_phi[i..i + W]).try_into().unwrap();
    for j in 0..W {
        let v = entry(t[j], p[j], xs[j], e[j], d[j] * scale, shift, inv_l);
        lane_ll[j] += v.ll;
        lane_a[j] += v.a;
        dp[j] += v.d_phi;
        d[j] = v.a;
        r[j] = v.rho;
    }
}

/// The dense part of one row: returns sum_g [theta (phi - log(theta+mu)) + x (log mu -
/// log(theta+mu))], writes d/d logits into `dl`, adds the dense part of d/d log theta
/// into `d_phi`. `rho` is scratch. Blocks of W entries (a multiple of LANES), then one
/// of LANES where W entries no longer fit, then single entries.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn row_dense_terms<const W: usize, const GRAD: bool>(
    eta: &[f32], x: &[f32], theta: &[f32], phi: &[f32], log_l: f32, dl: &mut [f32], rho: &mut [f32], d_phi: &mut [f32],
) -> f64 {
    let g = eta.len();
    let max = eta.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let wide = g - g % W;
    let full = g - g % LANES;
    // pass 1: e = exp(eta - max) into dl, and its sum
    let (mut lane_sum, mut narrow_sum) = ([0f32; W], [0f32; LANES]);
    for i in (0..wide).step_by(W) {
        exp_block::<W>(&eta[i..i + W], &mut dl[i..i + W], max, &mut lane_sum);
    }
    for i in (wide..full).step_by(LANES) {
        exp_block::<LANES>(&eta[i..i + LANES], &mut dl[i..i + LANES], max, &mut narrow_sum);
    }
    let mut sum = lane_sum.iter().chain(&narrow_sum).map(|&v| v as f64).sum::<f64>();
    for k in full..g {
        dl[k] = fastmath::exp(eta[k] - max);
        sum += dl[k] as f64;
    }
    let l = (log_l as f64).exp();
    let scale = (l / sum) as f32; // mu = e * l / sum
    let shift = max + (sum.ln() - log_l as f64) as f32; // log mu = eta - shift
    let inv_l = (1.0 / l) as f32;
    // pass 2: likelihood terms and a = theta (x - mu) / (theta + mu)
    let (mut lane_ll, mut lane_a) = ([0f32; W], [0f32; W]);
    let (mut narrow_ll, mut narrow_a) = ([0f32; LANES], [0f32; LANES]);
    for i in (0..wide).step_by(W) {
        entry_block::<W, GRAD>(i, eta, x, theta, phi, dl, rho, d_phi, scale, shift, inv_l, &mut lane_ll, &mut lane_a);
    }
    for i in (wide..full).step_by(LANES) {
        entry_block::<LANES, GRAD>(i, eta, x, theta, phi, dl, rho, d_phi, scale, shift, inv_l, &mut narrow_ll, &mut narrow_a);
    }
    let (mut tail_ll, mut tail_a) = (0f32, 0f32);
    for k in full..g {
        let v = entry(theta[k], phi[k], x[k], eta[k], dl[k] * scale, shift, inv_l);
        tail_ll += v.ll;
        if GRAD {
            tail_a += v.a;
            d_phi[k] += v.d_phi;
            dl[k] = v.a;
            rho[k] = v.rho;
        }
    }
    let ll = lane_ll.iter().chain(&narrow_ll).map(|&v| v as f64).sum::<f64>() + tail_ll as f64;
    if !GRAD {
        return ll;
    }
    let sum_a = lane_a.iter().chain(&narrow_a).sum::<f32>() + tail_a;
    // pass 3: d/d logits = a - rho * sum(a)
    for (d, &r) in dl.iter_mut().zip(rho.iter()) {
        *d -= r * sum_a;
    }
    ll
}

struct Entry {
    ll: f32,
    a: f32,
    d_phi: f32,
    rho: f32,
}

/// The dense terms of one (cell, gene) entry, given mu and log mu = eta - shift.
#[inline(always)]
fn entry(t: f32, phi: f32, x: f32, eta: f32, mu: f32, shift: f32, inv_l: f32) -> Entry {
    let t_mu = t + mu;
    let log_t_mu = fastmath::ln(t_mu);
    let inv = 1.0 / t_mu;
    Entry {
        ll: t * (phi - log_t_mu) + x * (eta - shift - log_t_mu),
        a: t * (x - mu) * inv,
        d_phi: t * (phi - log_t_mu + 1.0 - (t + x) * inv),
        rho: mu * inv_l,
    }
}

/// lgamma(x + theta) - lgamma(theta) and psi(x + theta) - psi(theta), tabulated per
/// gene for counts 1..=TABLE (sums of log(theta + k) and 1 / (theta + k)), from the
/// special functions beyond. Each gene's table runs only up to the largest count it
/// has in the minibatch: theta changes every step, and most genes' counts are small
/// (the full table cost ~1 ms per minibatch of 2,000 genes). Built in items of
/// [GENES_PER_ITEM] genes on libtorch's OpenMP threads, then joined into one table.
struct SpecialTable {
    /// every gene's entries, gene after gene, summed in double precision and
    /// kept in single: half the memory (a table over all genes outgrew the L2
    /// cache, and its reads took a quarter of the kernel's time)
    table: Vec<(f32, f32)>,
    /// gene k's entries start at offset[k]
    offset: Vec<usize>,
    lgamma_theta: Vec<f64>,
    digamma_theta: Vec<f64>,
}

impl SpecialTable {
    fn new(theta: &[f32], x: &HostCounts) -> Self {
        let g = theta.len();
        let largest = largest_counts(g, x);
        let mut offset = vec![0usize; g];
        let (mut lgamma_theta, mut digamma_theta) = (vec![f64::NAN; g], vec![f64::NAN; g]);
        struct Item<'a> {
            first: usize,
            table: Vec<(f32, f32)>,
            offset: &'a mut [usize],
            lgamma_theta: &'a mut [f64],
            digamma_theta: &'a mut [f64],
        }
        let mut items: Vec<Item> = offset
            .chunks_mut(GENES_PER_ITEM)
            .zip(lgamma_theta.chunks_mut(GENES_PER_ITEM))
            .zip(digamma_theta.chunks_mut(GENES_PER_ITEM))
            .enumerate()
            .map(|(i, ((offset, lgamma_theta), digamma_theta))| Item {
                first: i * GENES_PER_ITEM,
                table: Vec::new(),
                offset,
                lgamma_theta,
                digamma_theta,
            })
            .collect();
        crate::openmp::for_each_mut(&mut items, |item| {
            let largest = &largest[item.first..item.first + item.offset.len()];
            let mut total = 0;
            for (k, &m) in largest.iter().enumerate() {
                item.offset[k] = total;
                total += (m as usize).min(TABLE);
            }
            item.table.reserve_exact(total);
            for (k, &m) in largest.iter().enumerate() {
                let t = theta[item.first + k] as f64;
                // lgamma and digamma of theta only where counts pass the table
                if m as usize > TABLE {
                    item.lgamma_theta[k] = statrs::function::gamma::ln_gamma(t);
                    item.digamma_theta[k] = statrs::function::gamma::digamma(t);
                }
                let (mut lg, mut dg) = (0.0, 0.0);
                for c in 0..(m as usize).min(TABLE) {
                    lg += (t + c as f64).ln();
                    dg += 1.0 / (t + c as f64);
                    item.table.push((lg as f32, dg as f32));
                }
            }
        });
        // one table: each item's offsets moved by the entries before it
        let mut table = Vec::with_capacity(items.iter().map(|item| item.table.len()).sum());
        for item in &mut items {
            let before = table.len();
            item.offset.iter_mut().for_each(|o| *o += before);
            table.append(&mut item.table);
        }
        Self { table, offset, lgamma_theta, digamma_theta }
    }

    /// For a count of `gene` in the minibatch the table was built for.
    fn get(&self, gene: usize, count: f32, theta: f32) -> (f64, f64) {
        let c = count as usize;
        if c <= TABLE {
            let (lg, dg) = self.table[self.offset[gene] + c - 1];
            (lg as f64, dg as f64)
        } else {
            let v = count as f64 + theta as f64;
            (
                statrs::function::gamma::ln_gamma(v) - self.lgamma_theta[gene],
                statrs::function::gamma::digamma(v) - self.digamma_theta[gene],
            )
        }
    }
}

/// Each gene's largest count in the minibatch, from the rows' non-zeros (in
/// items of [ROWS_PER_ITEM] rows on libtorch's OpenMP threads).
fn largest_counts(g: usize, x: &HostCounts) -> Vec<f32> {
    let rows = x.nz_ptr.len() - 1;
    let mut parts: Vec<(usize, Vec<f32>)> = (0..rows).step_by(ROWS_PER_ITEM).map(|first| (first, Vec::new())).collect();
    crate::openmp::for_each_mut(&mut parts, |(first, largest)| {
        *largest = vec![0f32; g];
        let nz = x.nz_ptr[*first]..x.nz_ptr[(*first + ROWS_PER_ITEM).min(rows)];
        for (&gene, &count) in x.nz_gene[nz.clone()].iter().zip(&x.nz_count[nz]) {
            let m = &mut largest[gene as usize];
            *m = m.max(count);
        }
    });
    let mut largest = vec![0f32; g];
    for (_, part) in &parts {
        largest.iter_mut().zip(part).for_each(|(m, &v)| *m = m.max(v));
    }
    largest
}

/// Counts up to this size take lgamma/digamma differences from a per-gene table.
const TABLE: usize = 32;
/// Genes per work item of [SpecialTable::new].
const GENES_PER_ITEM: usize = 128;

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    /// libtorch's generator is global: the tests that seed it take turns.
    static LIBTORCH_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn seed(s: i64) -> std::sync::MutexGuard<'static, ()> {
        let guard = LIBTORCH_RNG.lock().unwrap_or_else(|p| p.into_inner());
        tch::manual_seed(s);
        guard
    }

    /// The dense row terms: the AVX2 path gives the bits of the plain code's 16
    /// lanes, the dispatched path those of its block width, and the 16-lane sums
    /// agree with the 8-lane ones to float precision.
    #[test]
    fn dense_row_paths_agree() {
        let mut rng = crate::rng::SplitMix64::new(11);
        let mut unif = || (rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
        for g in [2000usize, 2008, 2011, 7, 3] {
            let eta: Vec<f32> = (0..g).map(|_| unif() * 6.0 - 3.0).collect();
            let x: Vec<f32> = (0..g).map(|_| if unif() < 0.4 { (unif() * 9.0).floor() + 1.0 } else { 0.0 }).collect();
            let phi: Vec<f32> = (0..g).map(|_| unif() * 4.0 - 2.0).collect();
            let theta: Vec<f32> = phi.iter().map(|v| v.exp()).collect();
            let run = |f: &dyn Fn(&mut [f32], &mut [f32], &mut [f32]) -> f64| {
                let (mut dl, mut rho, mut dphi) = (vec![0f32; g], vec![0f32; g], vec![0.5f32; g]);
                let ll = f(&mut dl, &mut rho, &mut dphi);
                (ll.to_bits(), dl.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), dphi.iter().map(|v| v.to_bits()).collect::<Vec<_>>())
            };
            let want = run(&|dl, rho, dp| row_dense_terms::<LANES, true>(&eta, &x, &theta, &phi, 7.5, dl, rho, dp));
            let wide = run(&|dl, rho, dp| row_dense_terms::<{ 2 * LANES }, true>(&eta, &x, &theta, &phi, 7.5, dl, rho, dp));
            let chosen = run(&|dl, rho, dp| row_dense_dispatch::<true>(&eta, &x, &theta, &phi, 7.5, dl, rho, dp));
            #[cfg(target_arch = "x86_64")]
            let vector = std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma");
            #[cfg(not(target_arch = "x86_64"))]
            let vector = false;
            assert!(chosen == if vector { wide.clone() } else { want.clone() }, "g = {g}: the dispatched path differs from its block width's");
            let value = |bits: u64| f64::from_bits(bits);
            assert!((value(want.0) - value(wide.0)).abs() <= 1e-5 * value(want.0).abs().max(1.0), "g = {g}: 8 and 16 lanes' log-likelihoods differ");
            for (a, b) in want.1.iter().zip(&wide.1).chain(want.2.iter().zip(&wide.2)) {
                let (a, b) = (f32::from_bits(*a), f32::from_bits(*b));
                assert!((a - b).abs() <= 1e-5 * a.abs().max(1.0), "g = {g}: 8 and 16 lanes' gradients differ: {a} vs {b}");
            }
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                // SAFETY: the CPU has the features.
                let avx2 = run(&|dl, rho, dp| unsafe { row_dense_avx2::<true>(&eta, &x, &theta, &phi, 7.5, dl, rho, dp) });
                assert!(wide == avx2, "g = {g}: the AVX2 path differs");
            }
        }
    }

    /// Independent reference: R's dnbinom(x, size = theta, mu = mu, log = TRUE)
    /// evaluated by R 4.2.2 for the grid below.
    #[test]
    fn matches_r_dnbinom() {
        let cases: [(f64, f64, f64, f64); 8] = [
            // x, mu, theta, dnbinom(x, size=theta, mu=mu, log=TRUE)
            (0.0, 1.0, 1.0, -0.6931471805599453),
            (0.0, 5.0, 0.5, -1.198947636399185),
            (3.0, 2.5, 10.0, -1.666121704092037),
            (7.0, 0.3, 2.0, -12.45825583389776),
            (100.0, 80.0, 5.0, -4.887369514775971),
            (1000.0, 1200.0, 50.0, -6.64624771232004),
            (0.0, 1e-4, 3.0, -9.999833337036944e-05),
            (12.0, 12.0, 1e4, -2.168934348481651),
        ];
        for (x, mu, theta, want) in cases {
            let xt = Tensor::from_slice(&[x as f32]).view([1, 1]).to_kind(Kind::Double);
            let lm = Tensor::from_slice(&[mu.ln()]).view([1, 1]);
            let lt = Tensor::from_slice(&[theta.ln()]);
            let got = log_prob_dense(&xt, &lm, &lt).double_value(&[0, 0]);
            assert!((got - want).abs() < 1e-7 * want.abs().max(1.0), "x={x} mu={mu} theta={theta}: {got} vs {want}");
        }
    }

    #[test]
    fn sparse_form_equals_dense_form() {
        let _rng = seed(3);
        let (b, g) = (6i64, 9i64);
        let x = Tensor::randint(4, [b, g], (Kind::Float, Device::Cpu)) * Tensor::randint(2, [b, g], (Kind::Float, Device::Cpu));
        let log_mu = Tensor::randn([b, g], (Kind::Float, Device::Cpu));
        let log_theta = Tensor::randn([g], (Kind::Float, Device::Cpu));
        let dense = log_prob_dense(&x, &log_mu, &log_theta).sum_dim_intlist(1, false, Kind::Float);
        let flat = x.reshape([b * g]).nonzero().view([-1]);
        let value = x.reshape([b * g]).index_select(0, &flat);
        let gene = flat.remainder(g);
        let rows = flat.divide_scalar_mode(g, "floor");
        let lgamma_x1 = Tensor::zeros([b], (Kind::Float, Device::Cpu)).index_add(0, &rows, &(&value + 1.0).lgamma());
        let nz = NonZeros { flat, gene, value, lgamma_x1 };
        let sparse = log_prob_sparse(&nz, &log_mu, &log_theta);
        let diff = (dense - sparse).abs().max().double_value(&[]);
        assert!(diff < 1e-4, "max difference {diff}");
    }

    /// Several row items and gene items (rows per item 16, genes 128), counts past
    /// the table, on 1 and 2 threads.
    #[test]
    fn fused_kernel_matches_autograd() {
        fused_kernel_matches_autograd_at(7, 21);
        fused_kernel_matches_autograd_at(40, 300);
    }

    fn fused_kernel_matches_autograd_at(b: i64, g: i64) {
        let _rng = seed(5);
        let x = (Tensor::randint(60, [b, g], (Kind::Float, Device::Cpu))
            * Tensor::randint(2, [b, g], (Kind::Float, Device::Cpu)))
        .to_kind(Kind::Double);
        let logits = Tensor::randn([b, g], (Kind::Double, Device::Cpu)).set_requires_grad(true);
        let log_theta = (Tensor::randn([g], (Kind::Double, Device::Cpu)) * 2.0).set_requires_grad(true);
        let log_lib = Tensor::randn([b, 1], (Kind::Double, Device::Cpu)) + 6.0;
        let log_mu = logits.log_softmax(1, Kind::Double) + &log_lib;
        let per_cell = log_prob_dense(&x, &log_mu, &log_theta).sum_dim_intlist(1, false, Kind::Double);
        per_cell.sum(Kind::Double).backward();
        let f = |t: &Tensor| -> Vec<f32> {
            let t = t.to_kind(Kind::Float).contiguous().view([-1]);
            Vec::<f32>::try_from(&t).unwrap()
        };
        let lgx1 = f(&(&x + 1.0).lgamma().sum_dim_intlist(1, false, Kind::Double));
        let dense = f(&x);
        let (mut nz_ptr, mut nz_gene, mut nz_count) = (vec![0usize], Vec::new(), Vec::new());
        for r in 0..b as usize {
            for k in 0..g as usize {
                let v = dense[r * g as usize + k];
                if v > 0.0 {
                    nz_gene.push(k as u32);
                    nz_count.push(v);
                }
            }
            nz_ptr.push(nz_gene.len());
        }
        let host = HostCounts { nz_ptr: &nz_ptr, nz_gene: &nz_gene, nz_count: &nz_count, lgamma_x1: &lgx1 };
        let run = |threads: i32| {
            crate::backend::set_num_threads(threads).unwrap();
            let mut d_logits = vec![0f32; (b * g) as usize];
            let fused = fused_log_lik(&f(&logits.detach()), &f(&log_lib.view([-1])), &f(&log_theta.detach()), &host, Some(&mut d_logits));
            (fused, d_logits)
        };
        let before = crate::backend::num_threads();
        let ((fused, d_logits), (fused_2, d_logits_2)) = (run(1), run(2));
        crate::backend::set_num_threads(before).unwrap();
        // the same bits whatever the number of threads
        assert_eq!((&fused.log_lik, &fused.d_log_theta, &d_logits), (&fused_2.log_lik, &fused_2.d_log_theta, &d_logits_2));
        // without gradients (evaluation): the same log-likelihood, bit for bit
        let value_only = fused_log_lik(&f(&logits.detach()), &f(&log_lib.view([-1])), &f(&log_theta.detach()), &host, None);
        assert_eq!(value_only.log_lik, fused.log_lik);
        assert!(value_only.d_log_theta.is_empty());
        let want_ll = Vec::<f64>::try_from(&per_cell.detach()).unwrap();
        for (a, w) in fused.log_lik.iter().zip(&want_ll) {
            assert!((a - w).abs() < 1e-3 * (1.0 + w.abs()), "log-lik {a} vs {w}");
        }
        for (a, w) in d_logits.iter().zip(f(&logits.grad())) {
            assert!((a - w).abs() < 1e-4 * (1.0 + w.abs()), "d logits {a} vs {w}");
        }
        for (a, w) in fused.d_log_theta.iter().zip(f(&log_theta.grad())) {
            assert!((a - w).abs() < 1e-3 * (1.0 + w.abs()), "d log theta {a} vs {w}");
        }
    }
}
