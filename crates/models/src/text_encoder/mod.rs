//! The frozen text encoder of the cascade: a tokenizer and a T5 encoder.
//!
//! [`TextEncoder::encode`] turns prompts into one `[tokens, d_model]` embedding each (unpadded),
//! which is what travels to the diffusion stages. The unconditional embedding used by
//! classifier-free guidance is the encoding of the empty prompt (just `</s>`), the same thing the
//! training tool substitutes when it drops the text.

pub mod config;
pub mod t5;
pub mod tokenizer;

use candle_core::{Device, Tensor};
use tokenizers::Tokenizer;

pub use config::T5Config;
pub use t5::T5Encoder;

use crate::ModelError;

/// A tokenizer and a T5 encoder, ready to embed prompts.
pub struct TextEncoder {
    tokenizer: Tokenizer,
    model: T5Encoder,
    config: T5Config,
    device: Device,
}

impl std::fmt::Debug for TextEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextEncoder")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl TextEncoder {
    /// Assembles an encoder from parts already loaded (see `repository` for loading from disk).
    pub fn new(tokenizer: Tokenizer, model: T5Encoder, config: T5Config, device: Device) -> Self {
        Self {
            tokenizer,
            model,
            config,
            device,
        }
    }

    /// The encoder's hyper-parameters.
    pub fn config(&self) -> &T5Config {
        &self.config
    }

    /// Width of every embedding this encoder produces.
    pub fn embedding_dim(&self) -> usize {
        self.config.d_model
    }

    /// Longest accepted prompt, in tokens including `</s>`.
    pub fn max_tokens(&self) -> usize {
        self.config.max_tokens
    }

    /// Token ids of every prompt, each checked against [`Self::max_tokens`].
    pub fn tokenize(&self, prompts: &[&str]) -> Result<Vec<Vec<u32>>, ModelError> {
        prompts
            .iter()
            .enumerate()
            .map(|(index, prompt)| {
                let encoding =
                    self.tokenizer
                        .encode(*prompt, true)
                        .map_err(|e| ModelError::Tokenize {
                            index,
                            reason: e.to_string(),
                        })?;
                let ids = encoding.get_ids().to_vec();
                if ids.len() > self.config.max_tokens {
                    return Err(ModelError::PromptTooLong {
                        index,
                        tokens: ids.len(),
                        limit: self.config.max_tokens,
                    });
                }
                if let Some(&bad) = ids
                    .iter()
                    .find(|&&id| id as usize >= self.config.vocab_size)
                {
                    return Err(ModelError::Tokenize {
                        index,
                        reason: format!(
                            "token id {bad} is outside the model's vocabulary of {}",
                            self.config.vocab_size
                        ),
                    });
                }
                Ok(ids)
            })
            .collect()
    }

    /// One `[tokens, d_model]` embedding per prompt, computed in one padded batch.
    pub fn encode(&self, prompts: &[&str]) -> Result<Vec<Tensor>, ModelError> {
        let ids = self.tokenize(prompts)?;
        self.encode_ids(&ids)
    }

    /// As [`Self::encode`], from token ids.
    pub fn encode_ids(&self, ids: &[Vec<u32>]) -> Result<Vec<Tensor>, ModelError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let longest = ids.iter().map(Vec::len).max().unwrap_or(0).max(1);
        let mut flat_ids = Vec::with_capacity(ids.len() * longest);
        let mut flat_mask = Vec::with_capacity(ids.len() * longest);
        for row in ids {
            for position in 0..longest {
                let id = row.get(position).copied();
                flat_ids.push(id.unwrap_or(tokenizer::PAD_ID));
                flat_mask.push(if id.is_some() { 1f32 } else { 0f32 });
            }
        }
        let input = Tensor::from_vec(flat_ids, (ids.len(), longest), &self.device)?;
        let mask = Tensor::from_vec(flat_mask, (ids.len(), longest), &self.device)?;
        let hidden = self.model.forward(&input, &mask)?;
        ids.iter()
            .enumerate()
            .map(|(i, row)| Ok(hidden.get(i)?.narrow(0, 0, row.len().max(1))?))
            .collect()
    }

    /// The unconditional embedding for classifier-free guidance: the empty prompt.
    pub fn unconditional(&self) -> Result<Tensor, ModelError> {
        let mut embeddings = self.encode(&[""])?;
        embeddings.pop().ok_or(ModelError::InvalidInput {
            field: "prompts",
            reason: "encoder returned no embedding".into(),
        })
    }
}
