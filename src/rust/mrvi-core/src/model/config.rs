//! Model and training settings. Both travel as JSON inside the fitted R object,
//! next to the weights, so that a model can be rebuilt anywhere.

use serde::{Deserialize, Serialize};

/// Which MrVI: the paper's linear sample effect, or the later attention-based one.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Flavour {
    #[default]
    Linear,
    Attention,
}

/// The prior on u: standard normal, or a mixture of diagonal Gaussians.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Prior {
    #[default]
    Normal,
    Mog,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
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
    #[serde(default)]
    pub flavour: Flavour,
    /// dimension of u; equals n_latent for the linear flavour
    #[serde(default)]
    pub n_latent_u: i64,
    #[serde(default)]
    pub prior: Prior,
    /// mixture components of the MoG prior
    #[serde(default)]
    pub n_mixture: i64,
    /// cell labels that bias the mixture weights (0: none)
    #[serde(default)]
    pub n_labels: i64,
    /// levels of each categorical nuisance covariate, in order (they sum to
    /// n_batches); empty: one covariate of n_batches levels (older fits)
    #[serde(default)]
    pub batch_levels: Vec<i64>,
    /// continuous nuisance covariates (standardised by the caller)
    #[serde(default)]
    pub n_continuous: i64,
}

impl ModelConfig {
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
        }
    }

    /// The later MrVI (MODEL.md §4): u of n_latent_u, z of n_latent, MoG prior
    /// with one component per label when labels are given, else `n_mixture`.
    pub fn attention(n_genes: i64, n_samples: i64, n_batches: i64, n_latent_u: i64, n_latent: i64) -> Self {
        Self { flavour: Flavour::Attention, n_latent_u, prior: Prior::Mog, n_mixture: 20, ..Self::new(n_genes, n_samples, n_batches, n_latent) }
    }

    /// Dimension of u (older configurations have no n_latent_u: then n_latent).
    pub fn dim_u(&self) -> i64 {
        if self.n_latent_u > 0 { self.n_latent_u } else { self.n_latent }
    }

    /// Levels of each categorical nuisance covariate.
    pub fn factor_levels(&self) -> Vec<i64> {
        if self.batch_levels.is_empty() { vec![self.n_batches] } else { self.batch_levels.clone() }
    }

    /// Several categorical nuisance covariates (levels in order, n_batches their
    /// sum) and `n_continuous` continuous ones.
    pub fn with_nuisance(mut self, batch_levels: Vec<i64>, n_continuous: i64) -> Self {
        self.n_batches = batch_levels.iter().sum();
        self.batch_levels = batch_levels;
        self.n_continuous = n_continuous;
        self
    }

    /// Mixture components actually used.
    pub fn n_components(&self) -> i64 {
        if self.n_labels > 0 { self.n_labels } else { self.n_mixture.max(1) }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainConfig {
    /// None: the heuristic min(400, round(20000 / N * 400)), at least 1
    pub max_epochs: Option<usize>,
    pub batch_size: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub adam_eps: f64,
    pub max_grad_norm: f64,
    pub n_epochs_kl_warmup: usize,
    pub early_stopping: bool,
    pub patience: usize,
    pub validation_fraction: f64,
    pub seed: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            max_epochs: None,
            batch_size: 256,
            lr: 2e-3,
            weight_decay: 1e-8,
            adam_eps: 1e-8,
            max_grad_norm: 40.0,
            n_epochs_kl_warmup: 20,
            early_stopping: true,
            patience: 15,
            validation_fraction: 0.1,
            seed: 1,
        }
    }
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
    fn older_configurations_have_one_nuisance_factor() {
        let old = r#"{"n_genes":5,"n_samples":2,"n_batches":3,"n_latent":2,"n_hidden":8,"dropout_rate":0.1}"#;
        let c: ModelConfig = serde_json::from_str(old).unwrap();
        assert_eq!((c.factor_levels(), c.n_continuous), (vec![3], 0));
    }
}
