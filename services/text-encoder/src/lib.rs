//! vidcascade-text-encoder: the frozen text encoder of a model repository as
//! `vidcascade.v1.TextEncoder`.
//!
//! One worker thread ([`vidcascade_engine::TextEngine`]) owns the model and encodes each call's
//! prompts in one padded batch; calls wait in the engine's bounded queue (full:
//! RESOURCE_EXHAUSTED) and give up at their `grpc-timeout`. Encoding `[prompt, ""]` in one call
//! gives exactly the embeddings the in-process cascade uses.
//!
//! Metrics: `vidcascade_encoder_requests_total{outcome}`, `vidcascade_encoder_seconds`
//! (histogram of encode time), `vidcascade_encoder_queue_depth`.

pub mod config;
pub mod error;
pub mod service;

pub use config::{EncoderCli, EncoderConfig};
pub use service::EncoderServer;
