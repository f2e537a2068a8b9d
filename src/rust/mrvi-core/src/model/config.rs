//! Model and training settings. Both travel as JSON inside the fitted R object,
//! next to the weights, so that a model can be rebuilt anywhere.

use serde::{Deserialize, Serialize};

/// Which MrVI: the paper's linear sample effect, or the later attention-based one.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Flavour {
    Linear,
    Attention,
}

/// The prior on u: standard normal, or a mixture of diagonal Gaussians.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Prior {
    Normal,
    Mog,
}

/// Unknown fields are refused: they come from a newer version, whose model
/// this one would build without them ([crate::io::model_from_bytes]).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub n_genes: i64,
    pub n_samples: i64,
    /// levels of all categorical nuisance covariates together (sites); 1 when
    /// there is none
    pub n_batches: i64,
    /// L: dimension of u and z
    pub n_latent: i64,
    /// width of the encoder's hidden layers
    pub n_hidden: i64,
    /// dropout on sg(z) in the site-specific decoder term, training only
    pub dropout_rate: f64,
    pub flavour: Flavour,
    /// dimension of u; equals n_latent for the linear flavour
    pub n_latent_u: i64,
    pub prior: Prior,
    /// mixture components of the MoG prior
    pub n_mixture: i64,
    /// cell labels that bias the mixture weights (0: none)
    pub n_labels: i64,
    /// levels of each categorical nuisance covariate, in order (they sum to
    /// n_batches); empty: one covariate of n_batches levels (older fits)
    #[serde(default)]
    pub batch_levels: Vec<i64>,
    /// continuous nuisance covariates (standardised by the caller)
    #[serde(default)]
    pub n_continuous: i64,
    /// attention flavour: the sample-effect block's MLP also reads the sample
    /// embedding directly ([super::attention::AttentionBlock::direct]); left
    /// out of the JSON when false, so other models are unchanged
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sample_context: bool,
    /// attention flavour: the decoder block's MLP also reads the nuisance
    /// embedding directly, when the nuisance covariates vary (more than one
    /// site, or a continuous covariate); left out of the JSON when false
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub nuisance_context: bool,
    /// attention flavour: each sample also has a free term [32] in the
    /// sample-effect block's hidden layer, beside its embedding (16 values
    /// shared by every cell type's sample structure); left out of the JSON when
    /// false
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sample_hidden_term: bool,
}

impl ModelConfig {
    /// The linear flavour with a normal prior; the other settings come from
    /// [ModelSettings::model_config].
    pub fn new(n_genes: i64, n_samples: i64, n_batches: i64, n_latent: i64) -> Self {
        Self {
            n_genes,
            n_samples,
            n_batches,
            n_latent,
            n_hidden: 128,
            dropout_rate: 0.1,
            flavour: Flavour::Linear,
            n_latent_u: n_latent,
            prior: Prior::Normal,
            n_mixture: 0,
            n_labels: 0,
            batch_levels: Vec::new(),
            n_continuous: 0,
            sample_context: false,
            nuisance_context: false,
            sample_hidden_term: false,
        }
    }

    /// Dimension of u.
    pub fn dim_u(&self) -> i64 {
        self.n_latent_u
    }

    /// Levels of each categorical nuisance covariate.
    pub fn factor_levels(&self) -> Vec<i64> {
        if self.batch_levels.is_empty() { vec![self.n_batches] } else { self.batch_levels.clone() }
    }

    /// Several categorical nuisance covariates (levels in order, n_batches their
    /// sum) and `n_continuous` continuous ones. Without either the decoder's
    /// context is one constant embedding, so it gets no direct path.
    pub fn with_nuisance(mut self, batch_levels: Vec<i64>, n_continuous: i64) -> Self {
        self.n_batches = batch_levels.iter().sum();
        self.batch_levels = batch_levels;
        self.n_continuous = n_continuous;
        self.nuisance_context &= self.n_batches > 1 || n_continuous > 0;
        self
    }

    /// Mixture components actually used.
    pub fn n_components(&self) -> i64 {
        if self.n_labels > 0 { self.n_labels } else { self.n_mixture.max(1) }
    }

    /// The sizes every model has, by name: each is the length of an axis of
    /// some parameter.
    pub fn sizes(&self) -> [(&'static str, i64); 6] {
        [
            ("n_genes", self.n_genes),
            ("n_samples", self.n_samples),
            ("n_batches", self.n_batches),
            ("n_latent", self.n_latent),
            ("n_hidden", self.n_hidden),
            ("n_latent_u", self.n_latent_u),
        ]
    }

    /// What a model can be built from: positive sizes, levels that sum to
    /// `n_batches`, a dropout rate in [0, 1). The problem, or None. (A
    /// configuration edited by hand reached libtorch's and slices' panics.)
    pub fn problem(&self) -> Option<String> {
        if let Some((name, v)) = self.sizes().into_iter().find(|&(_, v)| v < 1) {
            return Some(format!("{name} = {v}, not a positive size"));
        }
        if self.n_mixture < 0 || self.n_labels < 0 || self.n_continuous < 0 {
            return Some("a negative count of mixture components, labels or continuous covariates".into());
        }
        if !self.batch_levels.is_empty() && (self.batch_levels.iter().any(|&n| n < 1) || self.batch_levels.iter().sum::<i64>() != self.n_batches) {
            return Some(format!("batch_levels {:?} that do not sum to n_batches = {}", self.batch_levels, self.n_batches));
        }
        if self.flavour == Flavour::Linear && self.n_latent_u != self.n_latent {
            return Some("a linear model whose u and z differ in dimension".into());
        }
        if !(0.0..1.0).contains(&self.dropout_rate) {
            return Some(format!("dropout_rate = {}, outside [0, 1)", self.dropout_rate));
        }
        None
    }
}

/// Everything `mrvi()` chooses for a fit, as one object that crosses from R
/// (a named list, converted to this by serde). The user-facing defaults are
/// `mrvi()`'s (R/fit.R); what R never chooses is fixed here or in `train.rs`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub model: ModelSettings,
    pub train: TrainConfig,
}

/// The architecture chosen by the user; the data give the rest (genes,
/// samples, sites, labels).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelSettings {
    pub flavour: Flavour,
    pub prior: Prior,
    /// dimension of z (and of u for the linear flavour)
    pub n_latent: i64,
    /// dimension of u for the attention flavour (ignored by the linear one)
    pub n_latent_u: i64,
    /// mixture components of the MoG prior when no labels are given
    pub n_mixture: i64,
    /// see [ModelConfig::sample_context]
    #[serde(default)]
    pub sample_context: bool,
    /// see [ModelConfig::nuisance_context]
    #[serde(default)]
    pub nuisance_context: bool,
    /// see [ModelConfig::sample_hidden_term]
    #[serde(default)]
    pub sample_hidden_term: bool,
}

impl ModelSettings {
    /// The model for data with these levels. Labels bias the mixture weights,
    /// so they count only under the MoG prior.
    pub fn model_config(&self, n_genes: i64, n_samples: i64, n_batches: i64, n_labels: i64) -> ModelConfig {
        let n_latent_u = match self.flavour {
            Flavour::Linear => self.n_latent,
            Flavour::Attention => self.n_latent_u,
        };
        ModelConfig {
            flavour: self.flavour,
            n_latent_u,
            prior: self.prior,
            n_mixture: self.n_mixture,
            n_labels: if self.prior == Prior::Mog { n_labels } else { 0 },
            sample_context: self.sample_context && self.flavour == Flavour::Attention,
            nuisance_context: self.nuisance_context && self.flavour == Flavour::Attention,
            sample_hidden_term: self.sample_hidden_term && self.flavour == Flavour::Attention,
            ..ModelConfig::new(n_genes, n_samples, n_batches, self.n_latent)
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// None: the heuristic min(400, round(20000 / N * 400)), at least 1
    pub max_epochs: Option<usize>,
    pub batch_size: usize,
    pub lr: f64,
    pub n_epochs_kl_warmup: usize,
    pub early_stopping: bool,
    pub patience: usize,
    /// Early stopping cannot end a run before this many epochs. None: half of
    /// the run's `max_epochs` (the validation ELBO can stall for `patience`
    /// epochs before a cell type's sample structure is learned). Left out of
    /// the JSON when None, so settings without it are unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_epochs: Option<usize>,
    pub validation_fraction: f64,
    pub seed: u64,
    /// On the CPU, the likelihood and its gradient from one fused pass
    /// (`nb::fused_log_lik`); false: autograd differentiates the tensor
    /// likelihood (slower; for comparison and tests). Ignored off the CPU.
    pub fused_likelihood: bool,
    /// None: every epoch shuffles all cells (counts in memory). Some: counts
    /// are read block by block (`BlockShuffle`). Left out of the JSON when None,
    /// so that settings (and checkpoint fingerprints) without it are unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocks: Option<BlockShuffle>,
}

/// A shuffle that keeps reads sequential, for counts on disk: the cells are cut
/// into consecutive blocks of `block_cells`; each epoch visits the training
/// blocks in random order, `buffer_blocks` at a time, and shuffles the cells
/// within each such buffer. The validation cells are whole blocks (a random
/// `validation_fraction` of them, rounded), so that validation reads only them.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BlockShuffle {
    pub block_cells: usize,
    pub buffer_blocks: usize,
}

/// MODEL.md §3: min(400, round(20000 / N * 400)), at least 1.
pub fn default_max_epochs(n_cells: usize) -> usize {
    let e = (20_000.0 / n_cells.max(1) as f64 * 400.0).round() as usize;
    e.clamp(1, 400)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_epoch_heuristic() {
        assert_eq!(default_max_epochs(1_000), 400);
        assert_eq!(default_max_epochs(20_000), 400);
        assert_eq!(default_max_epochs(100_000), 80);
        assert_eq!(default_max_epochs(100_000_000), 1);
    }

    #[test]
    fn config_json_round_trip() {
        let c = ModelConfig::new(2000, 32, 2, 10);
        let back: ModelConfig = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(c, back);
        let several = c.with_nuisance(vec![2, 3], 1);
        assert_eq!((several.n_batches, several.factor_levels()), (5, vec![2, 3]));
    }

    #[test]
    fn configurations_a_model_cannot_be_built_from_are_named() {
        let ok = ModelConfig::new(2000, 32, 5, 10).with_nuisance(vec![2, 3], 1);
        assert_eq!(ok.problem(), None);
        let mut c = ok.clone();
        c.n_genes = -5;
        assert!(c.problem().unwrap().contains("n_genes = -5"));
        let mut c = ok.clone();
        c.batch_levels = vec![3, 3];
        assert!(c.problem().unwrap().contains("do not sum to n_batches = 5"));
        let mut c = ok.clone();
        c.dropout_rate = 5.0;
        assert!(c.problem().unwrap().contains("dropout_rate"));
        let mut c = ok;
        c.n_latent_u = 3;
        assert!(c.problem().unwrap().contains("linear model"));
    }

    #[test]
    fn older_configurations_have_one_nuisance_factor() {
        let mut old = serde_json::to_value(ModelConfig::new(5, 2, 3, 2)).unwrap();
        let fields = old.as_object_mut().unwrap();
        fields.remove("batch_levels");
        fields.remove("n_continuous");
        let old = old.to_string();
        let c: ModelConfig = serde_json::from_str(&old).unwrap();
        assert_eq!((c.factor_levels(), c.n_continuous), (vec![3], 0));
    }

    #[test]
    fn the_decoder_reads_the_nuisance_directly_only_where_it_varies() {
        let settings = ModelSettings {
            flavour: Flavour::Attention,
            prior: Prior::Mog,
            n_latent: 30,
            n_latent_u: 10,
            n_mixture: 10,
            sample_context: true,
            nuisance_context: true,
            sample_hidden_term: false,
        };
        let with = |levels: Vec<i64>, n_continuous| settings.model_config(100, 4, 1, 0).with_nuisance(levels, n_continuous);
        assert!(!with(vec![1], 0).nuisance_context);
        assert!(with(vec![2], 0).nuisance_context);
        assert!(with(vec![1], 1).nuisance_context);
        assert!(with(vec![2, 3], 0).nuisance_context);
        let linear = ModelSettings { flavour: Flavour::Linear, ..settings.clone() };
        assert!(!linear.model_config(100, 4, 1, 0).with_nuisance(vec![2], 0).nuisance_context);
        // a model without it writes no field, so the JSON of older fits is unchanged
        let json = serde_json::to_string(&with(vec![1], 0)).unwrap();
        assert!(!json.contains("nuisance_context") && json.contains("sample_context"));
    }
}
