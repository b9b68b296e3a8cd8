//! The networks of the cascade and the model repository that holds them.
//!
//! - [`text_encoder`]: a T5 encoder that loads Hugging Face T5 checkpoints as they are, plus the
//!   tokenizer, producing the frozen text embeddings every stage is conditioned on;
//! - [`unet`]: the space-time separable Video U-Net of Imagen Video, one implementation configured
//!   per stage (base: temporal attention; SR: temporal convolution and a conditioning video);
//! - [`repository`]: `models/<cascade>/` on disk — the manifest, configs and weights, validated
//!   with errors that name the file, the tensor and the expected vs found shape.
//!
//! All code runs on candle's CPU backend and is differentiable end to end, so the training tool
//! uses these very modules; when no gradient is needed the layers run [`fast`], the same maths
//! with `vidcascade-kernels`' inference ops.

pub mod error;
pub mod fast;
pub mod layers;
pub mod repository;
pub mod text_encoder;
pub mod unet;

pub use error::ModelError;
pub use repository::ModelRepository;
pub use text_encoder::TextEncoder;
pub use unet::{UNetInputs, VideoUNet, VideoUNetConfig};
