//! The T5 encoder (Raffel et al. 2020, arXiv 1910.10683), as Imagen uses it: frozen, its last
//! hidden states are the text conditioning of every diffusion stage.
//!
//! Tensor names follow Hugging Face's `T5EncoderModel` exactly (`shared.weight`,
//! `encoder.block.{i}.layer.0.SelfAttention.q.weight`, ...), so a real checkpoint in safetensors
//! form loads unchanged; the shipped cascade's encoder uses the same layout at a small size.
//! Bidirectional relative position buckets live in block 0 and are shared by every block; there is
//! no 1/sqrt(d) attention scaling (T5 folds it into the initialisation).

use candle_core::{D, DType, Device, Module, Result, Tensor};
use candle_nn::{Embedding, Linear, VarBuilder, linear_no_bias};

use super::config::{FeedForwardActivation, T5Config};
use crate::layers::{RmsNorm, attention, key_padding_bias, merge_heads, split_heads};

/// T5's bucketing of a relative position `key - query` for a bidirectional encoder.
pub fn relative_position_bucket(relative: i64, num_buckets: usize, max_distance: usize) -> usize {
    let half = num_buckets / 2;
    let mut bucket = if relative > 0 { half } else { 0 };
    let n = relative.unsigned_abs() as usize;
    let max_exact = half / 2;
    if n < max_exact {
        bucket += n;
    } else {
        let scaled = (n as f64 / max_exact as f64).ln()
            / (max_distance as f64 / max_exact as f64).ln()
            * (half - max_exact) as f64;
        bucket += (max_exact + scaled as usize).min(half - 1);
    }
    bucket
}

#[derive(Debug, Clone)]
struct SelfAttention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    heads: usize,
    relative_bias: Option<Embedding>,
    num_buckets: usize,
    max_distance: usize,
}

impl SelfAttention {
    fn new(has_relative_bias: bool, cfg: &T5Config, vb: VarBuilder) -> Result<Self> {
        let inner = cfg.num_heads * cfg.d_kv;
        let relative_bias = if has_relative_bias {
            Some(candle_nn::embedding(
                cfg.relative_attention_num_buckets,
                cfg.num_heads,
                vb.pp("relative_attention_bias"),
            )?)
        } else {
            None
        };
        Ok(Self {
            q: linear_no_bias(cfg.d_model, inner, vb.pp("q"))?,
            k: linear_no_bias(cfg.d_model, inner, vb.pp("k"))?,
            v: linear_no_bias(cfg.d_model, inner, vb.pp("v"))?,
            o: linear_no_bias(inner, cfg.d_model, vb.pp("o"))?,
            heads: cfg.num_heads,
            relative_bias,
            num_buckets: cfg.relative_attention_num_buckets,
            max_distance: cfg.relative_attention_max_distance,
        })
    }

    /// `[1, heads, L, L]` relative position bias (only block 0 owns the table).
    fn position_bias(&self, len: usize, device: &Device) -> Result<Option<Tensor>> {
        let Some(table) = &self.relative_bias else {
            return Ok(None);
        };
        let mut buckets = Vec::with_capacity(len * len);
        for query in 0..len as i64 {
            for key in 0..len as i64 {
                buckets.push(relative_position_bucket(
                    key - query,
                    self.num_buckets,
                    self.max_distance,
                ) as u32);
            }
        }
        let buckets = Tensor::from_vec(buckets, (len, len), device)?;
        let bias = table.forward(&buckets)?; // [L, L, heads]
        Ok(Some(bias.permute((2, 0, 1))?.unsqueeze(0)?))
    }

    fn forward(&self, x: &Tensor, bias: &Tensor) -> Result<Tensor> {
        let q = split_heads(&self.q.forward(x)?, self.heads)?;
        let k = split_heads(&self.k.forward(x)?, self.heads)?;
        let v = split_heads(&self.v.forward(x)?, self.heads)?;
        let out = attention(&q, &k, &v, 1.0, Some(bias))?;
        self.o.forward(&merge_heads(&out)?)
    }
}

#[derive(Debug, Clone)]
struct FeedForward {
    wi: Linear,
    wi_gate: Option<Linear>,
    wo: Linear,
    activation: FeedForwardActivation,
}

impl FeedForward {
    fn new(cfg: &T5Config, vb: VarBuilder) -> Result<Self> {
        let (gated, activation) = cfg
            .feed_forward()
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let (wi, wi_gate) = if gated {
            (
                linear_no_bias(cfg.d_model, cfg.d_ff, vb.pp("wi_1"))?,
                Some(linear_no_bias(cfg.d_model, cfg.d_ff, vb.pp("wi_0"))?),
            )
        } else {
            (linear_no_bias(cfg.d_model, cfg.d_ff, vb.pp("wi"))?, None)
        };
        Ok(Self {
            wi,
            wi_gate,
            wo: linear_no_bias(cfg.d_ff, cfg.d_model, vb.pp("wo"))?,
            activation,
        })
    }

    fn activate(&self, x: &Tensor) -> Result<Tensor> {
        match self.activation {
            FeedForwardActivation::Relu => x.relu(),
            FeedForwardActivation::Gelu => x.gelu(),
            FeedForwardActivation::Silu => x.silu(),
        }
    }
}

impl Module for FeedForward {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let hidden = match &self.wi_gate {
            // HF: act(wi_0(x)) * wi_1(x)
            Some(gate) => (self.activate(&gate.forward(x)?)? * self.wi.forward(x)?)?,
            None => self.activate(&self.wi.forward(x)?)?,
        };
        self.wo.forward(&hidden)
    }
}

#[derive(Debug, Clone)]
struct Block {
    attention: SelfAttention,
    attention_norm: RmsNorm,
    feed_forward: FeedForward,
    feed_forward_norm: RmsNorm,
}

impl Block {
    fn new(index: usize, cfg: &T5Config, vb: VarBuilder) -> Result<Self> {
        let attn_vb = vb.pp("layer").pp("0");
        let ff_vb = vb.pp("layer").pp("1");
        Ok(Self {
            attention: SelfAttention::new(index == 0, cfg, attn_vb.pp("SelfAttention"))?,
            attention_norm: RmsNorm::new(
                cfg.d_model,
                cfg.layer_norm_epsilon,
                attn_vb.pp("layer_norm"),
            )?,
            feed_forward: FeedForward::new(cfg, ff_vb.pp("DenseReluDense"))?,
            feed_forward_norm: RmsNorm::new(
                cfg.d_model,
                cfg.layer_norm_epsilon,
                ff_vb.pp("layer_norm"),
            )?,
        })
    }
}

/// The encoder stack. Inputs are token ids `[B, L]` (u32) and a mask `[B, L]` (1 = token,
/// 0 = padding); the output is `[B, L, d_model]`.
#[derive(Debug, Clone)]
pub struct T5Encoder {
    embed_tokens: Embedding,
    blocks: Vec<Block>,
    final_norm: RmsNorm,
}

/// Where the token embedding table lives: `shared.weight` in most checkpoints,
/// `encoder.embed_tokens.weight` in some encoder-only exports.
pub const EMBEDDING_NAMES: [&str; 2] = ["shared", "encoder.embed_tokens"];

impl T5Encoder {
    /// Builds the encoder; `embedding_prefix` is one of [`EMBEDDING_NAMES`].
    pub fn new(vb: VarBuilder, cfg: &T5Config, embedding_prefix: &str) -> Result<Self> {
        let embed_tokens =
            candle_nn::embedding(cfg.vocab_size, cfg.d_model, vb.pp(embedding_prefix))?;
        let encoder = vb.pp("encoder");
        let blocks = (0..cfg.num_layers)
            .map(|i| Block::new(i, cfg, encoder.pp("block").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        let final_norm = RmsNorm::new(
            cfg.d_model,
            cfg.layer_norm_epsilon,
            encoder.pp("final_layer_norm"),
        )?;
        Ok(Self {
            embed_tokens,
            blocks,
            final_norm,
        })
    }

    /// Last hidden states `[B, L, d_model]` of `input_ids` `[B, L]` under `mask` `[B, L]`.
    pub fn forward(&self, input_ids: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (_, len) = input_ids.dims2()?;
        let mut x = self.embed_tokens.forward(input_ids)?;
        let relative = match self.blocks.first() {
            Some(block) => block.attention.position_bias(len, x.device())?,
            None => None,
        };
        let padding = key_padding_bias(mask)?;
        let bias = match relative {
            Some(r) => r.broadcast_add(&padding)?,
            None => padding,
        };
        for block in &self.blocks {
            let h = block
                .attention
                .forward(&block.attention_norm.forward(&x)?, &bias)?;
            x = (x + h)?;
            let h = block
                .feed_forward
                .forward(&block.feed_forward_norm.forward(&x)?)?;
            x = (x + h)?;
        }
        self.final_norm.forward(&x)
    }

    /// Mean of the hidden states over real tokens: `[B, L, D]`, `[B, L]` -> `[B, D]`.
    pub fn masked_mean(hidden: &Tensor, mask: &Tensor) -> Result<Tensor> {
        // In f32 whatever the activations' dtype: a sum over tokens can overflow f16.
        let mask = mask.to_dtype(DType::F32)?.unsqueeze(D::Minus1)?;
        let total = hidden.to_dtype(DType::F32)?.broadcast_mul(&mask)?.sum(1)?;
        let count = mask.sum(1)?.clamp(1f32, f32::MAX)?;
        total.broadcast_div(&count)?.to_dtype(hidden.dtype())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_match_hugging_face_for_the_default_configuration() {
        // Values from transformers' T5Attention._relative_position_bucket(bidirectional=True,
        // num_buckets=32, max_distance=128).
        let cases = [
            (0, 0),
            (1, 17),
            (-1, 1),
            (7, 23),
            (-7, 7),
            (8, 24),
            (-8, 8),
            (12, 25),
            (20, 26),
            (-20, 10),
            (100, 31),
            (-1000, 15),
        ];
        for (relative, expected) in cases {
            assert_eq!(
                relative_position_bucket(relative, 32, 128),
                expected,
                "relative {relative}"
            );
        }
    }
}
