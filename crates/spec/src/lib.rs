//! vidcascade-spec: the cascade as data, shared by every crate that plans, validates or
//! describes work — including the gateway, which never touches a tensor.
//!
//! - [`manifest`]: `manifest.json`, the stages of a cascade and how their shapes fit;
//! - [`sampling`]: sampler kinds, the limits of every setting, and a request's per-stage
//!   overrides resolved against the manifest (each range rule is written once, here);
//! - [`video`]: RGB8 videos, as people and the wire see them;
//! - [`request`]: what one generation asks for, its limits, and the seed of every clip and stage;
//! - [`error_type`]: the one outcome vocabulary of metrics labels and status codes.

pub mod error_type;
pub mod manifest;
pub mod request;
pub mod sampling;
pub mod video;

pub use error_type::ErrorType;
pub use manifest::{Manifest, ManifestError, StageDefaults, StageKind, StageManifest, VideoShape};
pub use request::{GenerateRequest, Segment};
pub use sampling::{ResolvedSettings, SamplerKind, StageOverrides};
pub use video::Video;
