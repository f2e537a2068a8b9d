//! Statistics for the guided analyses: the one-sided two-sample
//! Kolmogorov-Smirnov test exactly as R's `ks.test(x, y, alternative = "greater")`
//! computes it (R 4.2): statistic D+ = max(F_x - F_y) evaluated at the ends of tie
//! groups; exact p-value (conditional on ties, by counting lattice paths) when
//! m * n < 10000, else the asymptotic exp(-2 m n / (m + n) D^2). And Mantel's
//! test of a distance matrix against a same-category indicator, with the exact
//! mean and variance of its statistic over all relabelings of the samples.
//! And the Gram moments behind the effective dimension of the DE test.

use crate::backend;
use crate::error::{Error, Result};
use rayon::prelude::*;

/// Mantel's test of H1 "distances within a category are smaller" for one
/// symmetric distance matrix `d` over the samples with a category (`d[a * n + b]`,
/// n = `category.len()`): T = sum over pairs a != b of d_ab [y_a = y_b], against
/// its distribution over all n! relabelings of the samples, by its exact mean
/// and variance (Mantel 1967: the ordered pairs of pairs that share both, one or
/// no sample) and the normal approximation. Returns (z, p) with z = (E[T] - T) /
/// sd(T) (large when within-category distances are small) and p = P(N(0,1) >= z).
/// Unlike a test of the within- against the between-category distances as
/// independent values, it accounts for the pairs that share a sample. (0, 1)
/// when T does not vary over relabelings (no evidence either way); NaN with
/// fewer than 4 samples.
pub fn mantel_within(d: &[f64], category: &[i64]) -> (f64, f64) {
    let n = category.len();
    if n < 4 || d.len() != n * n {
        return (f64::NAN, f64::NAN);
    }
    // the sums of Mantel's moments for a zero-diagonal symmetric matrix:
    // (sum of entries, sum of squares, sum of squared row sums)
    let sums = |entry: &dyn Fn(usize, usize) -> f64| {
        let (mut total, mut squares, mut rows) = (0.0, 0.0, 0.0);
        for a in 0..n {
            let mut row = 0.0;
            for b in (0..n).filter(|&b| b != a) {
                let v = entry(a, b);
                row += v;
                squares += v * v;
            }
            total += row;
            rows += row * row;
        }
        (total, squares, rows)
    };
    let same = |a: usize, b: usize| if category[a] == category[b] { 1.0 } else { 0.0 };
    let (sa, a1, a2) = sums(&|a, b| d[a * n + b]);
    let (sb, b1, b2) = sums(&same);
    let t = 2.0 * within_sum(d, category);
    let nf = n as f64;
    let (n2, n3, n4) = (nf * (nf - 1.0), nf * (nf - 1.0) * (nf - 2.0), nf * (nf - 1.0) * (nf - 2.0) * (nf - 3.0));
    let mean = sa * sb / n2;
    let second = 2.0 * a1 * b1 / n2 + 4.0 * (a2 - a1) * (b2 - b1) / n3
        + (sa * sa - 4.0 * a2 + 2.0 * a1) * (sb * sb - 4.0 * b2 + 2.0 * b1) / n4;
    let var = second - mean * mean;
    // a NaN distance gives no test (the check below would take it for a constant T)
    if var.is_nan() || t.is_nan() {
        return (f64::NAN, f64::NAN);
    }
    // below rounding: T is (numerically) the same under every relabeling
    if !(var > 1e-12 * second.abs().max(f64::MIN_POSITIVE)) {
        return (0.0, 1.0);
    }
    let z = (mean - t) / var.sqrt();
    let p = 0.5 * statrs::function::erf::erfc(z / std::f64::consts::SQRT_2);
    (z, p.clamp(0.0, 1.0))
}

/// The sum of d_ab over the pairs a < b with the same category (`d`: n x n,
/// n = `category.len()`, read above the diagonal).
fn within_sum(d: &[f64], category: &[i64]) -> f64 {
    let n = category.len();
    let mut total = 0.0;
    for a in 0..n {
        let row = &d[a * n + a + 1..(a + 1) * n];
        let (ca, rest) = (category[a], &category[a + 1..]);
        total += row.iter().zip(rest).map(|(v, &cb)| if cb == ca { *v } else { 0.0 }).sum::<f64>();
    }
    total
}

/// Statistic and p-value of H1: x is stochastically smaller than y.
pub fn ks_greater(x: &[f64], y: &[f64]) -> (f64, f64) {
    let (m, n) = (x.len(), y.len());
    let Some((stat, tie_end)) = ks_sorted(x, y, true) else { return (f64::NAN, f64::NAN) };
    let p = if (m * n) < 10_000 {
        exact_upper(stat, m, n, &tie_end)
    } else {
        let en = (m * n) as f64 / (m + n) as f64;
        (-2.0 * en * stat * stat).exp()
    };
    (stat, p.clamp(0.0, 1.0))
}

/// The statistic of [ks_greater] alone (its p-value, exact for small samples,
/// costs more than the statistic).
pub fn ks_statistic(x: &[f64], y: &[f64]) -> f64 {
    ks_sorted(x, y, false).map_or(f64::NAN, |(stat, _)| stat)
}

/// D+ of x against y and, with `ties`, the tie ends of the pooled sorted
/// sample (as [tie_ends] gives them; empty without); None when either is empty
/// or a value is NaN (no statistic then). Each sample is sorted alone as
/// integer keys in the values' order (two short sorts of plain integers cost
/// less than one of the pooled, labelled floats), then the two are walked
/// together a run of equal values at a time: D+ is read at the ends of runs.
fn ks_sorted(x: &[f64], y: &[f64], ties: bool) -> Option<(f64, Vec<bool>)> {
    let (m, n) = (x.len(), y.len());
    if m == 0 || n == 0 || x.iter().chain(y).any(|v| v.is_nan()) {
        return None;
    }
    let (mut xs, mut ys): (Vec<u64>, Vec<u64>) = (x.iter().map(|&v| order_key(v)).collect(), y.iter().map(|&v| order_key(v)).collect());
    xs.sort_unstable();
    ys.sort_unstable();
    let mut tie_end = Vec::with_capacity(if ties { m + n } else { 0 });
    let (mut i, mut j, mut stat) = (0, 0, f64::NEG_INFINITY);
    while i < m || j < n {
        let (i0, j0) = (i, j);
        let v = if j == n || (i < m && xs[i] <= ys[j]) { xs[i] } else { ys[j] };
        while i < m && xs[i] == v {
            i += 1;
        }
        while j < n && ys[j] == v {
            j += 1;
        }
        if ties {
            tie_end.extend(std::iter::repeat_n(false, i - i0 + j - j0 - 1));
            tie_end.push(true);
        }
        stat = stat.max(i as f64 / m as f64 - j as f64 / n as f64);
    }
    Some((stat, tie_end))
}

/// An integer in the order of the (not NaN) value, equal for equal values
/// (-0 and 0 included).
fn order_key(v: f64) -> u64 {
    let bits = (v + 0.0).to_bits(); // -0 + 0 is 0
    if bits >> 63 == 1 { !bits } else { bits | (1 << 63) }
}

/// tie_end[k]: the (k+1)-th smallest of `len` sorted values (`value(k)`) ends a
/// run of equal values.
fn tie_ends(len: usize, value: impl Fn(usize) -> f64) -> Vec<bool> {
    (0..len).map(|k| k + 1 == len || value(k) != value(k + 1)).collect()
}

/// D+ = max(F_x - F_y) over the ends of tie runs, walking the pooled sorted
/// sample (`from_x`: whether each value is from x; m from x, n from y).
fn ecdf_gap(from_x: impl Iterator<Item = bool>, tie_end: &[bool], m: usize, n: usize) -> f64 {
    let (mut fx, mut fy, mut stat) = (0usize, 0usize, f64::NEG_INFINITY);
    for (x, &end) in from_x.zip(tie_end) {
        if x { fx += 1 } else { fy += 1 }
        if end {
            stat = stat.max(fx as f64 / m as f64 - fy as f64 / n as f64);
        }
    }
    stat
}

/// P(D+ >= stat) under the null, conditional on the tie pattern: the share of
/// the C(m + n, m) arrangements whose path stays below `stat` at every tie end,
/// subtracted from 1 (R's psmirnov with exact = TRUE, two.sided = FALSE).
fn exact_upper(stat: f64, m: usize, n: usize, tie_end: &[bool]) -> f64 {
    let (mf, nf) = (m as f64, n as f64);
    // R: q <- (0.5 + floor(stat * m * n - 1e-7)) / (m * n), then count d < q
    let q = (0.5 + (stat * mf * nf - 1e-7).floor()) / (mf * nf);
    // diag[u] = number of admissible paths with u x-steps after k steps
    let mut diag = vec![1f64];
    for k in 1..=(m + n) {
        let lo = k.saturating_sub(n);
        let hi = k.min(m);
        let mut next = vec![0f64; hi - lo + 1];
        let prev_lo = (k - 1).saturating_sub(n);
        for u in lo..=hi {
            let mut ways = 0.0;
            // from (u - 1, v) by an x-step, or (u, v - 1) by a y-step
            if u >= 1 && u - 1 >= prev_lo && u - 1 - prev_lo < diag.len() {
                ways += diag[u - 1 - prev_lo];
            }
            if u >= prev_lo && u - prev_lo < diag.len() {
                ways += diag[u - prev_lo];
            }
            let v = k - u;
            if tie_end[k - 1] && u as f64 / mf - v as f64 / nf >= q {
                ways = 0.0;
            }
            next[u - lo] = ways;
        }
        diag = next;
    }
    let paths = diag[0]; // u = m, v = n
    let log_total = ln_choose(m + n, m);
    1.0 - (paths.ln() - log_total).exp()
}

fn ln_choose(n: usize, k: usize) -> f64 {
    use statrs::function::gamma::ln_gamma;
    ln_gamma(n as f64 + 1.0) - ln_gamma(k as f64 + 1.0) - ln_gamma((n - k) as f64 + 1.0)
}

/// The group-level statistic of the guided analysis: for each labelling of the
/// samples, the mean over cells of the one-sided KS statistic of within- against
/// between-label pairs (the statistic of [ks_greater]). `values` holds the
/// cells' distances for `pairs` (cells x pairs, column-major as R stores a
/// matrix); `labels` one label per sample for each labelling (samples x
/// labellings, column-major). Each cell's values are sorted once; a labelling
/// then costs a pass over them. Labellings are shared out over the core's pool.
pub fn mean_ks_statistics(
    values: &[f64], n_cells: usize, pairs: &[(usize, usize)], labels: &[i64], n_samples: usize,
) -> Result<Vec<f64>> {
    let p = pairs.len();
    if values.len() != n_cells * p || n_samples == 0 || labels.len() % n_samples != 0 {
        return Err(Error::InvalidInput("mean_ks_statistics: inconsistent dimensions".into()));
    }
    if pairs.iter().any(|&(a, b)| a >= n_samples || b >= n_samples) {
        return Err(Error::InvalidInput("mean_ks_statistics: pair index out of range".into()));
    }
    let labellings: Vec<&[i64]> = labels.chunks(n_samples).collect();
    // a NaN distance is damage (a non-finite latent): no statistic, as ks_sorted
    // gives none (sorted, it would count as the largest distance)
    let damaged = values.iter().any(|v| v.is_nan());
    // per cell: pair indices in increasing order of value, and whether each ends a tie run
    let sorted: Vec<(Vec<usize>, Vec<bool>)> = (0..n_cells)
        .map(|c| {
            let v: Vec<f64> = (0..p).map(|k| values[c + n_cells * k]).collect();
            let mut order: Vec<usize> = (0..p).collect();
            order.sort_unstable_by(|&a, &b| v[a].total_cmp(&v[b]));
            let tie_end = tie_ends(p, |k| v[order[k]]);
            (order, tie_end)
        })
        .collect();
    let one = |labels: &[i64]| -> f64 {
        let within: Vec<bool> = pairs.iter().map(|&(a, b)| labels[a] == labels[b]).collect();
        let m = within.iter().filter(|&&w| w).count();
        let n = p - m;
        if m == 0 || n == 0 || n_cells == 0 || damaged {
            return f64::NAN;
        }
        let total: f64 = sorted.iter().map(|(order, tie_end)| ecdf_gap(order.iter().map(|&k| within[k]), tie_end, m, n)).sum();
        total / n_cells as f64
    };
    Ok(backend::pool()?.install(|| labellings.par_iter().map(|labels| one(labels)).collect()))
}

/// For cells' K x L matrices A_i, given as the values of an R array [K, cells,
/// L] (column-major), per cell tr(A_i' A_i) and the sum of squares of the
/// L x L Gram matrix A_i' A_i (= tr((A_i A_i')^2)): the moments behind the DE
/// test's effective dimension. NaN in A_i gives NaN for cell i.
pub fn gram_moments(a: &[f64], k: usize, cells: usize, l: usize) -> Result<(Vec<f64>, Vec<f64>)> {
    if a.len() != k * cells * l {
        crate::invalid!("the array has {} values, not K x cells x L = {k} x {cells} x {l}", a.len());
    }
    let column = |i: usize, c: usize| &a[k * (i + cells * c)..k * (i + cells * c) + k];
    let moments = |i: usize| {
        let (mut trace, mut squares) = (0.0, 0.0);
        for c in 0..l {
            for d in c..l {
                let g: f64 = column(i, c).iter().zip(column(i, d)).map(|(x, y)| x * y).sum();
                if c == d {
                    trace += g;
                    squares += g * g;
                } else {
                    squares += 2.0 * g * g;
                }
            }
        }
        (trace, squares)
    };
    Ok((0..cells).map(moments).unzip())
}

#[cfg(test)]
mod tests {
    use super::*;

    // Reference values from R 4.2.2: ks.test(x, y, alternative = "greater") on
    // six cases (exact and asymptotic, with and without ties; script in the
    // R test test-association.R does the same comparison through the package).
    #[test]
    fn matches_r_ks_test() {
        let cases: &[(&[f64], &[f64], f64, f64)] = &[
            (&[-0.59099999999999997, 0.027, -1.5169999999999999, -1.363, 1.1779999999999999], &[-0.434, 1.8240000000000001, 1.125, 0.45400000000000001, -0.504, -0.32800000000000001, 0.152], 0.60000000000000009, 0.083333333333332704),
            (&[-2.0, -0.0, -1.0, 0.0, -0.0, 1.0, -1.0, -1.0], &[0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 1.0], 0.65277777777777779, 0.012217194570139256),
            (&[0.20000000000000001, 0.59999999999999998, 0.10000000000000001, 0.80000000000000004, 0.20000000000000001, 0.59999999999999998, 0.80000000000000004, 0.20000000000000001, 0.10000000000000001, 0.5, 0.20000000000000001, 0.59999999999999998, 0.69999999999999996, 0.40000000000000002, 0.40000000000000002, 0.20000000000000001, 0.90000000000000002, 0.5, 0.29999999999999999, 0.29999999999999999, 0.40000000000000002, 0.20000000000000001, 0.10000000000000001, 0.5, 0.5, 0.20000000000000001, 0.80000000000000004, 0.40000000000000002, 0.20000000000000001, 0.59999999999999998], &[0.90000000000000002, 0.29999999999999999, 0.5, 0.90000000000000002, 0.10000000000000001, 0.59999999999999998, 0.90000000000000002, 0.29999999999999999, 0.90000000000000002, 0.29999999999999999, 0.69999999999999996, 0.29999999999999999, 0.90000000000000002, 0.80000000000000004, 0.5, 0.5, 0.29999999999999999, 0.40000000000000002, 0.80000000000000004, 0.80000000000000004, 0.69999999999999996, 0.20000000000000001, 0.80000000000000004, 0.20000000000000001, 0.5], 0.27333333333333332, 0.063430797369343983),
            (&[0.92330413324553495, -0.516459704881013, -0.12920492913124704, -0.68963700494245705, -0.55539924213679936, -0.95205334486178306, -1.4611847282325658, 1.0643593763597212, 0.33419653662660537, 0.47285584600612202, 0.06161993029311115, -0.044708887301371784, 0.55073480090006044, 2.4748979641865416, 0.14725266033566367, 0.49043081122675081, 0.072533780915515961, -0.43685022835557691, -0.51237687816158017, 0.72085538972777818, 0.72479875879778122, 0.36568892901032946, -0.89807385233565029, 0.16786919111331236, -0.53429383477582049, -0.65298717071411994, 0.87330116255900558, -1.6896789241119263, -0.89232482586245054, 0.94017847576965663, 0.7501467752384372, 0.35321693729599796, 0.85101593071241166, -0.36187304111178054, -1.2519207600633342, -0.25508874913334834, -0.55886241204758635, -0.57612945151620465, 1.1522513483169308, -0.82725497659492975, 2.5001995299285245, 0.60372216266630174, 0.19370578480854664, 0.70914837075806647, -0.52853766850966766, -0.83520351235335644, 1.361195145616179, -0.92811728280471606, 0.48911137009870836, 1.4667487842934614, 0.22745054161405764, 2.478189537468781, 0.023372693041600744, 1.0094414589447724, 1.3989638465472232, 0.59712803984231055, 0.7314087633131271, -0.13954160880293826, -0.66183723552500417, -0.89480020513432745, 0.15928806259581693, 0.16037767374673306, 0.9137558965032837, -1.0889222019656697, 0.047451834025045748, 1.8046112428093193, 0.28236756256243462, 1.0500531319991053, -1.351127415316089, -0.59839149447690243, -0.92923122921092061, 0.039154702076673577, -1.4160533302995613, 0.79739921287687898, 0.30193851849856695, -1.3803450402159527, -1.2242598709693819, -0.9258758165485369, -0.55223174429844346, -0.048259561560106586, 0.69543771678405664, 1.7436784099929732, -0.02396158604621005, 0.087424844313558681, 0.94558833236506112, 0.48346347935757367, 0.16865894236744125, 0.62835101620451039, 0.23873748292522043, -0.4960565414701692], &[-1.0298480180290921, 0.55741825440177639, -0.33231421383582066, -0.87161414488389122, -0.11108300000295274, 0.26024976711170783, -0.12658836899948273, -0.30284972802386473, 0.16037930503732795, -2.0786306747024446, 0.070969841238101183, -0.38374067790868288, -1.2157069389039985, 1.2310732855992088, -0.58496496414331767, 3.0508417083268662, -0.87535225602816302, 0.24208280305577556, -0.80954260567814851, -0.79270398394970321, 1.2691809762141031, 1.1225964038995799, -1.0144473136429479, 1.1421728541589742, 0.75295789028133253, 0.57988110290058237, 0.75433380728606547, 0.22480979119150882, -0.75672252514448668, 1.4529756110946734, 1.1752000146482684, -0.97598031651151484, 0.88339368512219507, -0.10990774488660165, -0.65422917765165711, -1.0134583055963702, -0.80761120147121868, 0.65280741121663888, 0.070709794980217011, -0.31473117958342561, 0.50569696324169411, 0.45366091007966236, -1.3579697145828382, 0.04987403502647586, 0.22996858125654035, 0.80124501763068734, 1.2413608910860225, -0.18272732793562063, -0.58602163176431943, 1.0579702113397191, 0.7702414765512553, -0.60680392375769676, 1.2702558468802636, -0.48563978304039607, 0.75620005978609095, -0.00041619014461313775, -0.086367215400669273, -0.56833954002672349, -0.88028611545841984, -1.5864779086380663, -0.6422204210163629, -0.55537889718155964, 1.1257603512825598, -0.65225162064976594, 0.98429242371243397, -0.16900242764590551, 1.2463428022177028, 0.24954867576200679, 1.6532611671493491, 2.7902089266390826, -0.35039405002187546, -0.33062436703713766, -0.43468098041167186, -0.66022496487145799, 0.23867029035493403, 0.42954565720265031, 0.2609472756815101, 0.45469008975047293, -0.85867896974348801, -0.82569745804526096, -0.86239241377240261, 1.4015715394175658, 0.39887906203603851, 1.6637730570363329, 0.29216531240082366, -0.12325889519248512, -0.63845904437020229, -0.93014110337867817, -0.042929192772655722, 1.3199535840371392, 1.3547193329792389, 0.55367734746751052, -0.026773698127981582, -0.33932063356569425, -1.5724009732129967, 0.81902825212858987, 0.14427383125929857, -1.1562450889948117, 0.97579623226158341, 0.19961874195255788], 0.070000000000000021, 0.59494180214737125),
            (&[0.87245967666415947, -0.23647589027026886, 0.68071989457859894, 1.6177893056517754, -0.20254621138396695, -0.50350232501397008, 0.79135376547505587, -1.7106238861225938, -0.76716186090643113, 2.3443389908978407, 0.57242177663661931, 1.3070058446412951, -0.8167245530003765, 0.064568929668359601, -0.50984234664256567, 0.37820858551956993, -1.0182602815886848, -0.62649908481789707, -0.093723837685547762, 1.259309608338556, 0.45700747785580093, -0.75311138188260363, -0.38623012442298249, -0.6081537749118181, -1.4783059440448425, 0.26693815745248167, 0.54289059783998994, -0.86529428533942709, 0.068656154250786527, -0.3718893765774598, 0.91651954736353436, -0.040092054773636455, -1.0999994593783891, -0.41352150382108027, 0.39015306661230914, -1.14313319597967, 1.3695839860876382, -1.1013978766699797, 0.75929205866647542, 0.4080751230619209, 1.9550240294977261, 0.50037499511068706, 2.2142914274324794, 1.0083154128383367, -0.022059080462407742, 1.3719379041208264, 0.61520388109398139, -0.072610307680981548, 1.7126935033869177, 0.53769121059735525, 1.3412484521728316, 0.61006718313590025, 1.1162786667055342, 0.023630176755018984, 0.42725931473868561, -1.6491729842122793, -1.0303770649133004, 0.613255597419058, 0.74282141504848609, 0.570925356511091, -1.7635240842463227, 0.48029858737352693, 0.96479042797610204, -0.75338723727787738, 1.2840822385334347, 1.6345644108703696, -0.31479813881155522, 2.1824946379356467, -0.70061221129405515, 0.57155280269359399, -0.83808424401235659, 1.1558500832244454, -0.81499293477848311, 1.9526228668804466, -0.17019740839830722, 0.2946072999449999, 0.34635790417474888, -0.58026931642055235, 0.14796053721071054, 1.2636144635997337, 1.6991092944239383, -0.88608957076062289, 1.6733214240968808, -1.1994393414376097, 1.392258103241212, 0.86030190426063868, -1.103555350776565, -0.28648643902256377, -1.2699390495111695, 1.0924752964627886, 1.2304997227869328, -0.10101084582930366, -0.35239597304210951, -1.7769925434136542, -0.17706520047253227, 0.54114150134877048, -1.8152962383913356, -0.53336124432515675, -0.39206753806944961, -0.080747869090532359, -0.023977752050888024, 0.21466641462428138, 2.1096617540453209, 0.59948137189247697, -0.66364566159369887, 0.031305698385073952, -0.8354565990063374, -0.90438501536357796, -0.90061960928953066, 1.0285595758306658, -0.14861111329681603, -1.4509266551457951, 0.52546579322445863, 1.0165005651747516, 1.3217427810214051, -2.3110847971027937, 2.4949478521360295, -0.14518064709248291, 0.23407951242136538, 1.3176904856117315], &[-0.6677525315266446, 1.381246174943356, 0.8375303115896201, 0.12410500777783981, 0.16996730844319738, -1.442261515436885, 0.43384825495583001, 0.64280624484167048, -0.20111604085618365, -0.23633614149799467, -0.093249527680472788, -0.66497113020904497, 2.661337791866623, 0.56292969328903453, 0.32831170544598798, 1.0786101969736328, 0.66220136625992709, 0.67989827476778064, -0.28049945742987292, -0.53359657837729935, 0.23411739578998358, -0.45878774278621337, 0.35622691329349432, 0.53142163552917454, -0.089051704143862376, -1.5369179921453864, -1.1018152882449872, -1.5262074875971778, 0.0060272768791825998, -1.8976446288819775, -0.17172025020785683, 2.1586241702387445, -1.6904508662123519, -1.1362981657914244, -0.11969265018040076, -1.2084835932786691, 2.2832044603591468, -1.0335279252846554, 1.1912947043991091, -2.6630690428912707, 1.9068644358243578, -1.3005850438690849, 1.6050478443444292, -0.29872676108785268, -0.53847678693909573, 1.1035691218140316, 2.8997033140885309, -0.82947062610646483, 0.65532993354730762, 1.7068598931777381, -0.57341005363061359, -0.68535771926673406, -0.23474874030916712, -0.06993547522229171, -0.47591787415776399, 0.42383102614886037, -0.54467085362642986, 1.316433742730664, 1.1075894621250106, -0.25687539047412511, -0.15982352972417327, -0.9608482271898765, 0.88586873877411232, 0.69056749516373828, -0.67724604298225044, 0.88606176520285052, 1.5276673783849832, 1.073423322612141, -0.71618894442335024, 0.22471177036492401, 0.6745689348663173, -2.3232991981647864, 0.75937377409959006, 1.6290067101288972, 1.8799388445397993, 0.77184235969512538, 0.87731711243191901, -0.076424737950719274, 0.10923101508484312, 0.16200754839316606, -1.0627227872814045, -1.1176996115347981, 1.0515838406921605, -1.8650830817175299, -0.3117294390602513, -2.131273466107197, -0.26220908176395874, -0.72416714783870084, 0.96687227603684356, 0.014675276913305321, -0.41414892074785803, 0.69905585348905863, 0.51640419048851305, -2.4047549832028507, 0.22969837226463249, -0.018180632453984741, 0.32634550694623565, 0.063170684217730297, -1.1417227909474947, 0.22880233340073389], 0.024999999999999994, 0.93409062347794924),
            (&[-1.1000000000000001, -0.40000000000000002, -0.80000000000000004, -1.7, -1.1000000000000001, 0.69999999999999996, -1.8999999999999999, 0.5, 0.5, -0.20000000000000001, 0.90000000000000002, -0.10000000000000001, -0.20000000000000001, 0.10000000000000001, 0.69999999999999996, -0.29999999999999999, -0.20000000000000001, -2.2000000000000002, -0.20000000000000001, -0.90000000000000002, 0.10000000000000001, -0.40000000000000002, 1.6000000000000001, -0.59999999999999998, 0.40000000000000002, 0.10000000000000001, -0.5, -2.1000000000000001, 0.20000000000000001, -0.10000000000000001, -2.2000000000000002, -1.8999999999999999, 1.8999999999999999, 0.10000000000000001, 0.80000000000000004, 0.69999999999999996, 1.8999999999999999, 1.2, 2.0, 0.80000000000000004, 1.0, 0.90000000000000002, 0.80000000000000004, -0.20000000000000001, 0.59999999999999998, 0.20000000000000001, 1.1000000000000001, -0.29999999999999999, 0.10000000000000001, 0.40000000000000002, 1.3, 1.3, 0.80000000000000004, -1.1000000000000001, 0.90000000000000002, -0.5, -1.8, -0.29999999999999999, 1.3, 1.5, -0.29999999999999999, -1.2, 0.59999999999999998, -1.3999999999999999, -0.40000000000000002, 0.80000000000000004, 1.3999999999999999, -0.90000000000000002, 1.1000000000000001, 0.80000000000000004, -0.29999999999999999, -1.1000000000000001, -0.59999999999999998, -0.69999999999999996, -0.10000000000000001, -2.1000000000000001, 0.5, -1.0, 0.29999999999999999, 0.5, -1.6000000000000001, -0.69999999999999996, -0.0, 0.20000000000000001, 0.59999999999999998, 0.69999999999999996, -0.40000000000000002, 1.1000000000000001, 1.0, 0.69999999999999996, -1.1000000000000001, 0.5, -0.20000000000000001, -0.90000000000000002, -0.29999999999999999, -0.29999999999999999, 0.59999999999999998, -0.40000000000000002, 1.8999999999999999, -0.5, -2.1000000000000001, 0.29999999999999999, -0.5, -1.7, -1.3, -1.0, -0.5, -1.1000000000000001, 2.1000000000000001, -0.29999999999999999, -1.6000000000000001, -0.20000000000000001, 0.5, 0.5, 1.3999999999999999, 1.1000000000000001, 0.59999999999999998, 0.10000000000000001, -0.5, -0.0, 1.1000000000000001, -0.59999999999999998, 0.10000000000000001, -0.40000000000000002, 0.40000000000000002, -0.10000000000000001, -0.29999999999999999, 2.0, 0.69999999999999996, 0.20000000000000001, -0.69999999999999996, -0.40000000000000002, -2.7000000000000002, -0.10000000000000001, -0.10000000000000001, 0.20000000000000001, 0.59999999999999998, -0.59999999999999998, 0.59999999999999998, -0.10000000000000001, 0.80000000000000004, 0.10000000000000001, 0.0, -2.5, -0.20000000000000001, -1.8, -0.69999999999999996, 0.80000000000000004, 0.29999999999999999, 0.40000000000000002], &[0.5, -0.29999999999999999, 0.29999999999999999, 0.90000000000000002, -1.6000000000000001, 0.5, -0.10000000000000001, 1.2, -0.40000000000000002, -0.29999999999999999, 0.59999999999999998, -1.1000000000000001, -0.10000000000000001, -0.40000000000000002, -0.10000000000000001, 0.10000000000000001, 0.40000000000000002, 0.59999999999999998, -0.29999999999999999, -1.0, 0.80000000000000004, 0.10000000000000001, -1.0, -1.7, -0.59999999999999998, 0.10000000000000001, 0.5, 0.80000000000000004, -0.5, 0.90000000000000002, 1.6000000000000001, 0.5, 0.0, 0.69999999999999996, -0.59999999999999998, -2.1000000000000001, 1.8, -2.0, -0.59999999999999998, -1.8999999999999999, -1.5, -1.5, -0.59999999999999998, -1.3999999999999999, 0.29999999999999999, 0.5, -0.80000000000000004, -1.2, -0.69999999999999996, -0.5, -0.29999999999999999, -1.0, 0.20000000000000001, -0.59999999999999998, 0.59999999999999998, 1.5, -1.1000000000000001, -0.59999999999999998, -0.20000000000000001, -1.1000000000000001, -2.1000000000000001, -2.1000000000000001, 0.59999999999999998, -1.0, -1.3999999999999999, -0.40000000000000002, -1.5, -0.40000000000000002, -0.69999999999999996, -0.40000000000000002, 1.0, 1.5, -1.8999999999999999, -1.3999999999999999, 0.59999999999999998, -1.2, -1.8, -0.29999999999999999, -0.59999999999999998, 1.0], 0.026666666666666668, 0.92848328681491044),
        ];
        for (x, y, stat, p) in cases {
            let (s, pv) = ks_greater(x, y);
            assert!((s - stat).abs() < 1e-12 && (pv - p).abs() < 1e-9 * p.max(1e-300).max(1e-12), "{s} {pv} vs {stat} {p}");
            assert_eq!(ks_statistic(x, y).to_bits(), s.to_bits());
        }
        // the merged walk against one sort of the pooled, labelled sample on
        // samples with many ties and signed zeros, sizes from 1 to ~1,000: the
        // same statistic and tie ends
        let mut rng = crate::rng::SplitMix64::new(7);
        for case in 0..200 {
            let (m, n) = (1 + case * 5 % 1013, 1 + case * 11 % 997);
            let mut draw = |k: usize| (0..k).map(|_| [(rng.next_u64() % 13) as f64 / 4.0 - 1.0, -0.0, 0.0][(rng.next_u64() % 3) as usize]).collect::<Vec<f64>>();
            let (x, y) = (draw(m), draw(n));
            let mut pooled: Vec<(f64, bool)> = x.iter().map(|&v| (v, true)).chain(y.iter().map(|&v| (v, false))).collect();
            pooled.sort_unstable_by(|a, b| a.0.total_cmp(&b.0));
            let want_ties = tie_ends(m + n, |k| pooled[k].0);
            let want = ecdf_gap(pooled.iter().map(|v| v.1), &want_ties, m, n);
            let (stat, ties) = ks_sorted(&x, &y, true).unwrap();
            assert_eq!(stat.to_bits(), want.to_bits(), "case {case}");
            assert_eq!(ties, want_ties, "case {case}");
            assert_eq!(ks_statistic(&x, &y).to_bits(), want.to_bits(), "case {case}");
        }
        // a NaN gives no statistic (never a number)
        assert!(ks_statistic(&[0.1, f64::NAN], &[0.3]).is_nan());
        assert!(ks_greater(&[0.1], &[f64::NAN, 0.3]).0.is_nan());
    }

    #[test]
    fn mean_ks_statistics_match_ks_greater_per_cell() {
        // 5 samples, all 10 pairs, 3 cells with ties; two labellings
        let pairs: Vec<(usize, usize)> = (0..5).flat_map(|a| (a + 1..5).map(move |b| (a, b))).collect();
        let values: Vec<f64> = (0..30).map(|i| ((i * 7) % 11) as f64 / 4.0).collect();
        let labellings = vec![vec![0, 0, 1, 1, 1], vec![1, 0, 1, 0, 2]];
        // the same values column-major (3 cells x 10 pairs), as R passes them
        let by_column: Vec<f64> = (0..10).flat_map(|k| (0..3).map(move |c| (c, k))).map(|(c, k)| values[c * 10 + k]).collect();
        let got = mean_ks_statistics(&by_column, 3, &pairs, &labellings.concat(), 5).unwrap();
        for (labels, g) in labellings.iter().zip(&got) {
            let mut want = 0.0;
            for c in 0..3 {
                let v = &values[c * 10..(c + 1) * 10];
                let (w, b): (Vec<_>, Vec<_>) = pairs.iter().zip(v).partition(|((a, bb), _)| labels[*a] == labels[*bb]);
                let w: Vec<f64> = w.into_iter().map(|(_, &x)| x).collect();
                let b: Vec<f64> = b.into_iter().map(|(_, &x)| x).collect();
                want += ks_greater(&w, &b).0 / 3.0;
            }
            assert!((g - want).abs() < 1e-12, "{g} vs {want}");
        }
        // a NaN distance (damage) gives no statistic, as ks_greater gives none
        let mut damaged = by_column.clone();
        damaged[4] = f64::NAN;
        assert!(mean_ks_statistics(&damaged, 3, &pairs, &labellings.concat(), 5).unwrap().iter().all(|v| v.is_nan()));
    }

    /// Mantel's moments against all 6! relabelings of six samples, enumerated.
    #[test]
    fn mantel_moments_match_every_relabeling() {
        let n = 6;
        let mut rng = crate::rng::SplitMix64::new(11);
        let mut d = vec![0.0; n * n];
        for a in 0..n {
            for b in a + 1..n {
                let v = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * 3.0;
                d[a * n + b] = v;
                d[b * n + a] = v;
            }
        }
        for category in [vec![0i64, 0, 1, 1, 1, 2], vec![0, 0, 0, 1, 1, 1], vec![3, 1, 1, 1, 1, 2]] {
            let within = |y: &[i64]| -> f64 {
                (0..n).flat_map(|a| (0..n).map(move |b| (a, b))).filter(|&(a, b)| a != b && y[a] == y[b]).map(|(a, b)| d[a * n + b]).sum()
            };
            // every permutation of the labels (Heap's algorithm)
            let mut y = category.clone();
            let mut values = vec![within(&y)];
            let mut c = vec![0usize; n];
            let mut i = 0;
            while i < n {
                if c[i] < i {
                    if i % 2 == 0 { y.swap(0, i) } else { y.swap(c[i], i) }
                    values.push(within(&y));
                    c[i] += 1;
                    i = 0;
                } else {
                    c[i] = 0;
                    i += 1;
                }
            }
            assert_eq!(values.len(), 720);
            let mean = values.iter().sum::<f64>() / 720.0;
            let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 720.0;
            let (z, p) = mantel_within(&d, &category);
            let want = (mean - within(&category)) / var.sqrt();
            assert!((z - want).abs() < 1e-9, "{category:?}: z {z} against {want} from all relabelings");
            assert!((p - 0.5 * statrs::function::erf::erfc(want / std::f64::consts::SQRT_2)).abs() < 1e-12);
        }
        // no variation over relabelings (every distance the same, or one
        // category): no evidence; fewer than 4 samples: no moments
        assert_eq!(mantel_within(&vec![1.0; n * n], &[0, 0, 0, 1, 1, 1]), (0.0, 1.0));
        assert_eq!(mantel_within(&d, &[2; 6]), (0.0, 1.0));
        assert!(mantel_within(&d[..9], &[0, 1, 1]).0.is_nan());
        // a NaN distance is no test, not a constant statistic
        let mut with_nan = d.clone();
        with_nan[1] = f64::NAN;
        with_nan[n] = f64::NAN;
        let (z, p) = mantel_within(&with_nan, &[0, 0, 0, 1, 1, 1]);
        assert!(z.is_nan() && p.is_nan());
    }

    #[test]
    fn gram_moments_match_the_gram_matrix() {
        let (k, cells, l) = (5usize, 3usize, 4usize);
        let a: Vec<f64> = (0..k * cells * l).map(|i| ((i * 37 % 23) as f64 - 11.0) / 7.0).collect();
        let (trace, squares) = gram_moments(&a, k, cells, l).unwrap();
        for i in 0..cells {
            let at = |r: usize, c: usize| a[r + k * (i + cells * c)];
            let g = |c: usize, d: usize| (0..k).map(|r| at(r, c) * at(r, d)).sum::<f64>();
            let want_trace: f64 = (0..l).map(|c| g(c, c)).sum();
            let want_squares: f64 = (0..l).flat_map(|c| (0..l).map(move |d| (c, d))).map(|(c, d)| g(c, d).powi(2)).sum();
            assert!((trace[i] - want_trace).abs() < 1e-12 * want_trace.abs().max(1.0));
            assert!((squares[i] - want_squares).abs() < 1e-12 * want_squares.abs().max(1.0));
        }
        assert!(gram_moments(&a[1..], k, cells, l).is_err());
    }
}
