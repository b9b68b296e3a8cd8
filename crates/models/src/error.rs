//! The one error type of the model library. Every message names the file, field or tensor that
//! was wrong and what was expected, because a model repository is edited by hand.

use std::path::PathBuf;

/// What can go wrong while loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A JSON file does not parse into what it should hold.
    #[error("{path} is not a valid {what}: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// What the file should hold ("model manifest", "U-Net config", ...).
        what: &'static str,
        /// The parse error, with line and column.
        source: serde_json::Error,
    },
    /// A configuration value is out of range.
    #[error("invalid config `{field}`: {reason}")]
    InvalidConfig {
        /// The field, as spelled in the JSON file.
        field: &'static str,
        /// What was wrong and what was expected.
        reason: String,
    },
    /// The manifest or a stage's config disagrees with the rest of the cascade.
    #[error("{path}: {reason}")]
    InvalidRepository {
        /// The file at fault.
        path: PathBuf,
        /// What was wrong and what was expected.
        reason: String,
    },
    /// A weights file is not valid safetensors.
    #[error("{file}: not a valid safetensors file: {reason}")]
    Safetensors {
        /// The weights file.
        file: PathBuf,
        /// The parser's complaint.
        reason: String,
    },
    /// A tensor the network needs is not in the weights file.
    #[error("{file}: tensor `{tensor}` is missing (the config expects shape {expected:?})")]
    MissingTensor {
        /// The weights file.
        file: PathBuf,
        /// The tensor's full name.
        tensor: String,
        /// The shape the config implies.
        expected: Vec<usize>,
    },
    /// A tensor has a different shape than the config implies.
    #[error("{file}: tensor `{tensor}` has shape {found:?}, but the config expects {expected:?}")]
    ShapeMismatch {
        /// The weights file.
        file: PathBuf,
        /// The tensor's full name.
        tensor: String,
        /// The shape the config implies.
        expected: Vec<usize>,
        /// The shape in the file.
        found: Vec<usize>,
    },
    /// The weights file holds a tensor the network does not use (config and weights disagree).
    #[error(
        "{file}: unexpected tensor `{tensor}` with shape {shape:?}; does config.json match these weights?"
    )]
    UnexpectedTensor {
        /// The weights file.
        file: PathBuf,
        /// The tensor's full name.
        tensor: String,
        /// Its shape.
        shape: Vec<usize>,
    },
    /// A tensor is stored in a dtype the runtime does not load.
    #[error("{file}: tensor `{tensor}` has dtype {dtype}; expected F32, F16 or BF16")]
    UnsupportedDtype {
        /// The weights file.
        file: PathBuf,
        /// The tensor's full name.
        tensor: String,
        /// The dtype found.
        dtype: String,
    },
    /// `tokenizer.json` is missing or invalid.
    #[error("{path}: cannot load tokenizer: {reason}")]
    Tokenizer {
        /// The tokenizer file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A prompt is longer than the text encoder accepts.
    #[error("prompt {index} is {tokens} tokens long; the limit is {limit} tokens")]
    PromptTooLong {
        /// The prompt's index in its request.
        index: usize,
        /// Its length in tokens, including the end-of-sequence token.
        tokens: usize,
        /// The encoder's `max_tokens`.
        limit: usize,
    },
    /// A prompt could not be tokenized.
    #[error("cannot tokenize prompt {index}: {reason}")]
    Tokenize {
        /// The prompt's index in its request.
        index: usize,
        /// The tokenizer's complaint.
        reason: String,
    },
    /// A forward-pass input has the wrong shape or range.
    #[error("invalid input `{field}`: {reason}")]
    InvalidInput {
        /// The input's name.
        field: &'static str,
        /// What was wrong and what was expected.
        reason: String,
    },
    /// A tensor operation failed.
    #[error("tensor operation failed: {0}")]
    Tensor(#[from] candle_core::Error),
}

impl From<vidcascade_spec::ManifestError> for ModelError {
    fn from(err: vidcascade_spec::ManifestError) -> Self {
        use vidcascade_spec::ManifestError;
        match err {
            ManifestError::Io { path, source } => Self::Io { path, source },
            ManifestError::Json { path, source } => Self::Json {
                path,
                what: "model manifest",
                source,
            },
            ManifestError::Invalid { path, reason } => Self::InvalidRepository { path, reason },
        }
    }
}
