//! Writing [`Video`]s to files people can open — an animated GIF, an H.264 MP4 that plays in a
//! browser, or a folder of PNG frames — chosen by the output path, plus single PNG images
//! (previews, contact sheets).
//!
//! The cascade's result is raw RGB8 frames ([`vidcascade_spec::Video`]); this crate turns them
//! into files for the command line and the tools, and into in-memory files ([`encode_video`])
//! for the gateway, which sends them to clients that asked for an encoded format. Every encoder is pure
//! Rust or compiled from bundled source, so nothing needs a system ffmpeg. It only writes: the
//! readers that check the files in tests live in `vidcascade-test-support`.
//!
//! ```no_run
//! # fn main() -> Result<(), vidcascade_media::OutputError> {
//! use std::path::Path;
//! use vidcascade_media::{OutputFormat, WriteOptions, write_video};
//! use vidcascade_spec::Video;
//! # let video = Video { width: 32, height: 32, fps: 8.0, frames: vec![vec![0; 32 * 32 * 3]; 8] };
//! // The shipped model makes 32x32 clips: show them 8 times bigger (a 256x256 file).
//! let format = write_video(&video, Path::new("out/circle.mp4"), &WriteOptions { scale: 8 })?;
//! assert_eq!(format, OutputFormat::Mp4);
//! # Ok(()) }
//! ```
//!
//! Every writer takes the same path through here: validate the video, create the parent folders,
//! then hand the frames to one file per format (`gif.rs`, `mp4.rs`, `png.rs`). Every error names
//! the file it was about.

mod gif;
mod mp4;
mod png;

use std::borrow::Cow;
use std::fmt;
use std::path::{Path, PathBuf};

use vidcascade_spec::Video;

pub use self::png::{encode_png, write_png};

/// The error type of an encoder library, kept as the cause of an [`OutputError`].
pub type BoxedCause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a video (or image) could not be written. Every message names the file (or folder).
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// The output path was empty.
    #[error(
        "the output path is empty; expected a file ending in .gif or .mp4, or a folder for PNG frames"
    )]
    EmptyPath,
    /// The path's extension names no format this module writes.
    #[error(
        "{}: unknown video format `.{extension}`; expected `.gif`, `.mp4`, or no extension (or a trailing `/`) for a folder of PNG frames",
        path.display()
    )]
    UnknownExtension {
        /// The output path.
        path: PathBuf,
        /// Its extension, without the dot.
        extension: String,
    },
    /// The video (or the options) cannot be written: wrong frame sizes, no frames, bad fps, too big
    /// for the format.
    #[error("{}: cannot write this video: {reason}", path.display())]
    InvalidVideo {
        /// The output path.
        path: PathBuf,
        /// What was wrong, and what was expected.
        reason: String,
    },
    /// The file system refused: a folder could not be created, a file could not be created or
    /// written, a stale frame could not be removed.
    // The OS error is part of the message and deliberately not a `source`: a chain-printing
    // caller (anyhow's `{:#}`) would repeat it.
    #[error("{}: cannot {action}: {error}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What was being done, e.g. "create the file".
        action: &'static str,
        /// The OS error.
        error: std::io::Error,
    },
    /// The encoder (or muxer) failed.
    #[error("{}: {format} encoding failed: {error}", path.display())]
    Encode {
        /// The output path.
        path: PathBuf,
        /// The format or library, e.g. "H.264".
        format: &'static str,
        /// The library's error (in the message, as for `Io`).
        error: BoxedCause,
    },
}

impl OutputError {
    /// The file or folder the error is about (`None` only for [`OutputError::EmptyPath`]).
    pub fn path(&self) -> Option<&Path> {
        match self {
            Self::EmptyPath => None,
            Self::UnknownExtension { path, .. }
            | Self::InvalidVideo { path, .. }
            | Self::Io { path, .. }
            | Self::Encode { path, .. } => Some(path),
        }
    }

    pub(crate) fn invalid(path: &Path, reason: impl Into<String>) -> Self {
        Self::InvalidVideo {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }

    pub(crate) fn io(path: &Path, action: &'static str) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.to_path_buf();
        move |error| Self::Io {
            path,
            action,
            error,
        }
    }

    pub(crate) fn encode<E: Into<BoxedCause>>(
        path: &Path,
        format: &'static str,
    ) -> impl FnOnce(E) -> Self {
        let path = path.to_path_buf();
        move |error| Self::Encode {
            path,
            format,
            error: error.into(),
        }
    }
}

/// The file formats [`write_video`] writes, chosen by [`OutputFormat::from_path`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OutputFormat {
    /// `.gif`: an animated GIF that loops forever, at most 256 colours per frame.
    Gif,
    /// `.mp4`: H.264 (constrained baseline, yuv420p) in an MP4 with the `moov` box first, so
    /// browsers can start playing before the whole file has arrived.
    Mp4,
    /// No extension, or a trailing `/`: a folder of `frame_0000.png`, `frame_0001.png`, ...
    PngFrames,
}

impl OutputFormat {
    /// The format for an output path: `.gif` and `.mp4` (any case) are files; a path with no
    /// extension or ending in `/` is a folder of PNG frames; anything else is an error that names
    /// the extension and the accepted ones.
    pub fn from_path(path: &Path) -> Result<Self, OutputError> {
        let text = path.as_os_str().to_string_lossy();
        if text.is_empty() {
            return Err(OutputError::EmptyPath);
        }
        // `Path::extension` ignores a trailing separator ("clips.v2/" has extension "v2"), but
        // a trailing separator is how a user says "this is a folder".
        if text.chars().last().is_some_and(std::path::is_separator) {
            return Ok(Self::PngFrames);
        }
        let Some(extension) = path.extension() else {
            return Ok(Self::PngFrames);
        };
        let extension = extension.to_string_lossy();
        if extension.eq_ignore_ascii_case("gif") {
            Ok(Self::Gif)
        } else if extension.eq_ignore_ascii_case("mp4") {
            Ok(Self::Mp4)
        } else {
            Err(OutputError::UnknownExtension {
                path: path.to_path_buf(),
                extension: extension.into_owned(),
            })
        }
    }
}

impl OutputFormat {
    /// The IANA media type of the format's files.
    pub fn media_type(self) -> &'static str {
        match self {
            Self::Gif => "image/gif",
            Self::Mp4 => "video/mp4",
            Self::PngFrames => "image/png",
        }
    }
}

impl fmt::Display for OutputFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Gif => "GIF",
            Self::Mp4 => "MP4",
            Self::PngFrames => "PNG frames",
        })
    }
}

/// How [`write_video`] writes a video.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteOptions {
    /// Integer nearest-neighbour upscale for display (1 = as is): the shipped model makes 64x64
    /// videos, which are stamps on a screen; `scale: 4` writes 256x256 with crisp pixels.
    pub scale: usize,
}

impl Default for WriteOptions {
    fn default() -> Self {
        Self { scale: 1 }
    }
}

/// Checks, before any work, that `path` can be written as the video format its name says:
/// creates the folders it needs and opens the file for writing (an existing file is left as it
/// is; a file this check created is removed again). A long generation then never ends in "cannot
/// create the file".
pub fn check_writable(path: &Path) -> Result<OutputFormat, OutputError> {
    let format = OutputFormat::from_path(path)?;
    let (folder, probe) = match format {
        OutputFormat::PngFrames => (Some(path), path.join(".vidcascade-write-check")),
        OutputFormat::Gif | OutputFormat::Mp4 => (path.parent(), path.to_path_buf()),
    };
    if let Some(folder) = folder.filter(|f| !f.as_os_str().is_empty()) {
        std::fs::create_dir_all(folder).map_err(OutputError::io(path, "create its folder"))?;
    }
    let existed = probe.exists();
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&probe)
        .map_err(OutputError::io(path, "create the file"))?;
    if !existed {
        std::fs::remove_file(&probe).map_err(OutputError::io(path, "remove the write check"))?;
    }
    Ok(format)
}

/// Writes `video` to `path` in the format its extension names (see [`OutputFormat::from_path`]),
/// creating parent folders as needed, and returns the format written.
///
/// - GIF: per-frame delays follow `video.fps` (in centiseconds, alternating so the total stays
///   exact), loops forever; frames with at most 256 colours keep them exactly, others are reduced
///   with NeuQuant.
/// - MP4: H.264 constrained baseline, yuv420p, BT.601 limited range. H.264 needs even sizes, so an
///   odd width or height (after scaling) is padded by one pixel that repeats the last column or
///   row: the file can be one pixel wider or taller than the video.
/// - PNG frames: `path` is a folder; `frame_0000.png`, ... are written into it and stale
///   `frame_NNNN.png` left by a longer earlier video are removed (fps is not stored).
pub fn write_video(
    video: &Video,
    path: &Path,
    options: &WriteOptions,
) -> Result<OutputFormat, OutputError> {
    let format = OutputFormat::from_path(path)?;
    validate(video, path, options, format)?;
    let folder = match format {
        OutputFormat::PngFrames => Some(path),
        OutputFormat::Gif | OutputFormat::Mp4 => path.parent(),
    };
    if let Some(folder) = folder.filter(|f| !f.as_os_str().is_empty()) {
        // Named after the output path, not the folder: that is what the user typed.
        let action = match format {
            OutputFormat::PngFrames => "create the folder",
            OutputFormat::Gif | OutputFormat::Mp4 => "create its folder",
        };
        std::fs::create_dir_all(folder).map_err(OutputError::io(path, action))?;
    }
    match format {
        OutputFormat::Gif => write_file(path, &gif::encode(video, path, options.scale)?)?,
        OutputFormat::Mp4 => write_file(path, &mp4::encode_file(video, path, options.scale)?)?,
        OutputFormat::PngFrames => png::write_frames(video, path, options.scale)?,
    }
    Ok(format)
}

/// Encodes `video` in memory as the files [`write_video`] would write for `format` (one GIF or
/// MP4, or one PNG per frame), for a server that sends them instead of writing them. Errors
/// name the file as `video.gif`, `video.mp4` or `frames/`.
pub fn encode_video(
    video: &Video,
    format: OutputFormat,
    options: &WriteOptions,
) -> Result<Vec<Vec<u8>>, OutputError> {
    let name = Path::new(match format {
        OutputFormat::Gif => "video.gif",
        OutputFormat::Mp4 => "video.mp4",
        OutputFormat::PngFrames => "frames/",
    });
    validate(video, name, options, format)?;
    match format {
        OutputFormat::Gif => Ok(vec![gif::encode(video, name, options.scale)?]),
        OutputFormat::Mp4 => Ok(vec![mp4::encode_file(video, name, options.scale)?]),
        OutputFormat::PngFrames => png::encode_frames(video, name, options.scale),
    }
}

/// Writes `bytes` to the file `path` (created or truncated), naming it in the error.
fn write_file(path: &Path, bytes: &[u8]) -> Result<(), OutputError> {
    use std::io::Write;
    let mut file = std::fs::File::create(path).map_err(OutputError::io(path, "create the file"))?;
    file.write_all(bytes)
        .and_then(|()| file.flush())
        .map_err(OutputError::io(path, "write the file"))
}

/// Checks everything about the video that would otherwise fail halfway through a file.
fn validate(
    video: &Video,
    path: &Path,
    options: &WriteOptions,
    format: OutputFormat,
) -> Result<(), OutputError> {
    if options.scale == 0 {
        return Err(OutputError::invalid(
            path,
            "scale must be at least 1, got 0",
        ));
    }
    if video.width == 0 || video.height == 0 {
        return Err(OutputError::invalid(
            path,
            format!(
                "a frame must be at least 1x1 pixels, got {}x{}",
                video.width, video.height
            ),
        ));
    }
    if video.frames.is_empty() {
        return Err(OutputError::invalid(path, "the video has no frames"));
    }
    let frame_len = video
        .width
        .checked_mul(video.height)
        .and_then(|n| n.checked_mul(3))
        .ok_or_else(|| OutputError::invalid(path, "the frame size overflows"))?;
    if let Some((i, frame)) = video
        .frames
        .iter()
        .enumerate()
        .find(|(_, f)| f.len() != frame_len)
    {
        return Err(OutputError::invalid(
            path,
            format!(
                "frame {i} has {} bytes, expected {frame_len} ({}x{} RGB8)",
                frame.len(),
                video.width,
                video.height
            ),
        ));
    }
    check_encodable(
        format,
        (video.width, video.height),
        video.fps,
        options.scale,
    )
    .map_err(|reason| OutputError::invalid(path, reason))
}

/// Whether `format` can hold a `width x height` video at `fps` upscaled by `scale` (sides within
/// the format's limit, a positive frame rate for GIF and MP4); the reason when not. A server
/// checks this when it admits a request, before any work.
pub fn check_encodable(
    format: OutputFormat,
    (width, height): (usize, usize),
    fps: f32,
    scale: usize,
) -> Result<(), String> {
    let scaled = width
        .checked_mul(scale)
        .zip(height.checked_mul(scale))
        .filter(|&(w, h)| w.checked_mul(h).and_then(|n| n.checked_mul(3)).is_some())
        .ok_or_else(|| format!("scale {scale} overflows"))?;
    let needs_fps = matches!(format, OutputFormat::Gif | OutputFormat::Mp4);
    if needs_fps && !(fps.is_finite() && fps > 0.0) {
        return Err(format!(
            "{format} needs a positive frame rate, got fps = {fps}"
        ));
    }
    let max_side = match format {
        OutputFormat::Gif => usize::from(u16::MAX),
        OutputFormat::Mp4 => mp4::MAX_SIDE,
        OutputFormat::PngFrames => i32::MAX as usize,
    };
    if scaled.0 > max_side || scaled.1 > max_side {
        return Err(format!(
            "{}x{} (after scale {scale}) is too big for {format}: at most {max_side} pixels a side",
            scaled.0, scaled.1
        ));
    }
    Ok(())
}

/// Nearest-neighbour integer upscale of a `width x height` image with `channels` bytes per
/// pixel (3 for RGB, 1 for palette indices). Borrows when `scale` is 1.
fn upscale(
    pixels: &[u8],
    width: usize,
    height: usize,
    channels: usize,
    scale: usize,
) -> Cow<'_, [u8]> {
    if scale == 1 {
        return Cow::Borrowed(pixels);
    }
    let row_len = width * channels;
    let mut out = Vec::with_capacity(pixels.len() * scale * scale);
    for row in pixels.chunks_exact(row_len).take(height) {
        let start = out.len();
        for pixel in row.chunks_exact(channels) {
            for _ in 0..scale {
                out.extend_from_slice(pixel);
            }
        }
        let scaled_row = start..out.len();
        for _ in 1..scale {
            out.extend_from_within(scaled_row.clone());
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vidcascade_test_support::moving_square;

    #[test]
    fn formats_follow_the_extension() -> anyhow::Result<()> {
        let cases = [
            ("out/a.gif", OutputFormat::Gif),
            ("out/a.GIF", OutputFormat::Gif),
            ("a.mp4", OutputFormat::Mp4),
            ("out/frames", OutputFormat::PngFrames),
            ("out/frames.v2/", OutputFormat::PngFrames),
            ("frames/", OutputFormat::PngFrames),
        ];
        for (path, expected) in cases {
            assert_eq!(
                OutputFormat::from_path(Path::new(path))?,
                expected,
                "{path}"
            );
        }
        Ok(())
    }

    #[test]
    fn unknown_extensions_are_named_with_the_accepted_ones() {
        let err = OutputFormat::from_path(Path::new("out/clip.webm")).expect_err("webm");
        let message = err.to_string();
        for needle in ["out/clip.webm", "`.webm`", ".gif", ".mp4", "PNG frames"] {
            assert!(message.contains(needle), "{needle:?} missing in {message}");
        }
        assert_eq!(err.path(), Some(Path::new("out/clip.webm")));
        assert!(matches!(
            OutputFormat::from_path(Path::new("")),
            Err(OutputError::EmptyPath)
        ));
    }

    #[test]
    fn unknown_extensions_write_nothing() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("new/clip.avi");
        let err = write_video(&moving_square(8, 1, 8.0), &path, &WriteOptions::default())
            .expect_err("avi");
        assert!(err.to_string().contains("`.avi`"), "{err}");
        assert!(!dir.path().join("new").exists());
        Ok(())
    }

    #[test]
    fn bad_videos_are_rejected_before_any_file_is_made() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("sub/clip.gif");
        let mut video = moving_square(8, 2, 8.0);
        video.frames[1].pop();
        let err = write_video(&video, &path, &WriteOptions::default()).expect_err("short frame");
        let message = err.to_string();
        assert!(message.contains("clip.gif"), "{message}");
        assert!(
            message.contains("frame 1 has 191 bytes, expected 192"),
            "{message}"
        );

        let video = Video {
            fps: 0.0,
            ..moving_square(8, 2, 8.0)
        };
        let err = write_video(&video, &path, &WriteOptions::default()).expect_err("fps 0");
        assert!(err.to_string().contains("positive frame rate"), "{err}");

        let err = write_video(&moving_square(8, 2, 8.0), &path, &WriteOptions { scale: 0 })
            .expect_err("scale 0");
        assert!(
            err.to_string().contains("scale must be at least 1"),
            "{err}"
        );
        assert!(!path.exists() && !dir.path().join("sub").exists());
        Ok(())
    }

    #[test]
    fn in_memory_files_are_the_written_files() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let video = moving_square(16, 4, 8.0);
        let options = WriteOptions { scale: 2 };
        for (name, format) in [
            ("a.gif", OutputFormat::Gif),
            ("a.mp4", OutputFormat::Mp4),
            ("frames", OutputFormat::PngFrames),
        ] {
            let path = dir.path().join(name);
            write_video(&video, &path, &options)?;
            let files = encode_video(&video, format, &options)?;
            let written: Vec<Vec<u8>> = match format {
                OutputFormat::PngFrames => (0..4)
                    .map(|i| std::fs::read(path.join(format!("frame_{i:04}.png"))))
                    .collect::<Result<_, _>>()?,
                _ => vec![std::fs::read(&path)?],
            };
            assert_eq!(files, written, "{format}");
        }
        let err = encode_video(&moving_square(16, 0, 8.0), OutputFormat::Gif, &options)
            .expect_err("no frames");
        assert!(err.to_string().starts_with("video.gif: "), "{err}");
        Ok(())
    }

    #[test]
    fn upscaling_repeats_pixels_and_rows() {
        // 2x1 RGB: red, blue -> 4x2.
        let pixels = [255, 0, 0, 0, 0, 255];
        let up = upscale(&pixels, 2, 1, 3, 2);
        let red = [255, 0, 0];
        let blue = [0, 0, 255];
        let row = [red, red, blue, blue].concat();
        assert_eq!(up.as_ref(), [row.clone(), row].concat().as_slice());
        assert!(matches!(upscale(&pixels, 2, 1, 3, 1), Cow::Borrowed(_)));
        // 1 byte per pixel (palette indices).
        assert_eq!(
            upscale(&[1, 2], 1, 2, 1, 2).as_ref(),
            &[1, 1, 1, 1, 2, 2, 2, 2]
        );
    }
}
