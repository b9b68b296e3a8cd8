//! The "shapes" world the shipped cascade is trained on and measured in.
//!
//! Nobody can download video weights here, so the cascade learns a closed synthetic world whose
//! every video can be checked by plain image processing: one coloured shape (circle, square,
//! triangle) moving left, right, up or down over a coloured background, captioned
//! "a red circle moving left on a black background" (or just "red circle moving left").
//!
//! - [`world`]: the vocabulary, every valid scene, captions, and the held-out split;
//! - [`render`]: seeded, anti-aliased rendering of a scene at any frames x size x fps, so the same
//!   scene renders consistently for every stage of the cascade;
//! - [`analysis`]: reading a video back — colours, shape class, motion direction;
//! - [`geometry`]: which shape a mask is, from measurements that survive blur.

pub mod analysis;
pub mod geometry;
pub mod render;
pub mod world;

pub use world::{Colour, Motion, Scene, ShapeKind};
