//! Fixtures and decoders that only tests (and benchmarks) use, kept out of the shipped crates so
//! no library carries test code in its public API.
//!
//! - [`fixtures`]: the tiny random-weight cascade ([`tiny_scaffold`], [`tiny_model`]), every
//!   kind of stage in milliseconds, no download;
//! - [`decode`]: readers for the GIF, MP4 and PNG files `vidcascade-media` writes
//!   ([`read_gif`], [`read_mp4`], [`read_png`], [`read_png_frames`]), so tests can check what a
//!   viewer would see;
//! - [`clips`]: a synthetic clip with known content ([`moving_square`]) and the measures that
//!   compare it with a lossy copy ([`mean_abs_error`], [`red_centre_x`]).
//!
//! Add it as a `[dev-dependencies]` entry only. A crate's own unit tests cannot use it if it
//! depends on that crate (`vidcascade-models`): the unit test would link a second copy of it, so
//! those tests are integration tests under `tests/`.

pub mod clips;
pub mod decode;
pub mod fixtures;

pub use clips::{mean_abs_error, moving_square, red_centre_x};
pub use decode::{read_gif, read_mp4, read_png, read_png_frames};
pub use fixtures::{tiny_model, tiny_scaffold};
