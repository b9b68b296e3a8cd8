//! The text encoder's `config.json`: Hugging Face's T5 configuration, field for field, so a real
//! T5 / T5 v1.1 / Flan-T5 checkpoint's config loads as it is. Unknown fields are ignored.

use serde::{Deserialize, Serialize};

use crate::ModelError;

fn default_num_buckets() -> usize {
    32
}
fn default_max_distance() -> usize {
    128
}
fn default_eps() -> f64 {
    1e-6
}
fn default_feed_forward_proj() -> String {
    "relu".to_string()
}
fn default_max_tokens() -> usize {
    128
}

/// T5 encoder hyper-parameters (Hugging Face `T5Config` names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct T5Config {
    /// Token vocabulary size (rows of `shared.weight`).
    pub vocab_size: usize,
    /// Width of the residual stream, i.e. the embedding dimension handed to the diffusion stages.
    pub d_model: usize,
    /// Width of one attention head.
    pub d_kv: usize,
    /// Hidden width of the feed-forward block.
    pub d_ff: usize,
    /// Encoder blocks.
    pub num_layers: usize,
    /// Attention heads per block.
    pub num_heads: usize,
    /// Buckets of the relative position bias.
    #[serde(default = "default_num_buckets")]
    pub relative_attention_num_buckets: usize,
    /// Distance beyond which relative positions share a bucket.
    #[serde(default = "default_max_distance")]
    pub relative_attention_max_distance: usize,
    /// Epsilon of the RMS norms.
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f64,
    /// `relu` (T5 1.0) or `gated-gelu` (T5 1.1, Flan-T5); `gated-silu` and `gelu` also work.
    #[serde(default = "default_feed_forward_proj")]
    pub feed_forward_proj: String,
    /// Longest prompt, in tokens including the end-of-sequence token (not part of HF's config;
    /// defaults to 128).
    #[serde(default = "default_max_tokens")]
    pub max_tokens: usize,
}

/// The feed-forward activation named by `feed_forward_proj`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedForwardActivation {
    /// `max(0, x)`.
    Relu,
    /// The tanh approximation of GELU (HF's `gelu_new`, which `gated-gelu` means).
    Gelu,
    /// `x * sigmoid(x)`.
    Silu,
}

impl T5Config {
    /// `(gated, activation)` parsed from `feed_forward_proj`.
    pub fn feed_forward(&self) -> Result<(bool, FeedForwardActivation), ModelError> {
        let (gated, name) = match self.feed_forward_proj.strip_prefix("gated-") {
            Some(rest) => (true, rest),
            None => (false, self.feed_forward_proj.as_str()),
        };
        let act = match name {
            "relu" => FeedForwardActivation::Relu,
            "gelu" | "gelu_new" => FeedForwardActivation::Gelu,
            "silu" => FeedForwardActivation::Silu,
            other => {
                return Err(ModelError::InvalidConfig {
                    field: "feed_forward_proj",
                    reason: format!(
                        "unknown activation `{other}`; expected relu, gelu or silu, optionally prefixed with `gated-`"
                    ),
                });
            }
        };
        Ok((gated, act))
    }

    /// Checks sizes that would otherwise fail deep inside a forward pass.
    pub fn validate(&self) -> Result<(), ModelError> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("d_model", self.d_model),
            ("d_kv", self.d_kv),
            ("d_ff", self.d_ff),
            ("num_layers", self.num_layers),
            ("num_heads", self.num_heads),
            (
                "relative_attention_num_buckets",
                self.relative_attention_num_buckets,
            ),
            ("max_tokens", self.max_tokens),
        ];
        for (field, value) in positive {
            if value == 0 {
                return Err(ModelError::InvalidConfig {
                    field,
                    reason: "must be at least 1".into(),
                });
            }
        }
        if self.relative_attention_num_buckets < 4 {
            return Err(ModelError::InvalidConfig {
                field: "relative_attention_num_buckets",
                reason: format!(
                    "must be at least 4, got {}",
                    self.relative_attention_num_buckets
                ),
            });
        }
        self.feed_forward().map(|_| ())
    }
}
