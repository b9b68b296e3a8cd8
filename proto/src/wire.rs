//! Encoding of tensors and videos into `vidcascade.v1` messages, and the checks a
//! receiver runs before trusting them.
//!
//! Tensors: [`v1::Tensor::from_f32`] and [`v1::Tensor::to_f32`] convert between
//! `f32` values and little-endian F32/F16/BF16 bytes. Videos: a video bigger than
//! a chunk budget is split by [`chunk_video`] and put back together by
//! [`VideoAssembler`]; [`validate_video`] checks a video sent whole. Every check
//! fails with a [`WireError`] naming the field, what was expected and what was found,
//! which a server turns into INVALID_ARGUMENT with [`WireError::to_status`].

use half::{bf16, f16};
use prost::Message;

use crate::v1;

/// Default chunk budget for videos, in encoded bytes: 1 MiB, far below gRPC's
/// 4 MiB default message limit, so a chunk never needs a raised limit.
pub const DEFAULT_CHUNK_BYTES: usize = 1 << 20;

/// Bytes per pixel of a video frame (RGB8).
const CHANNELS: u64 = 3;

/// A tensor or video message that breaks the wire contract.
///
/// `field` is a path into the message (`data`, `frames[3]`); [`WireError::within`]
/// prefixes it with the enclosing field, e.g. `conditioning.frames[3]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// A field's value is outside what the contract allows.
    #[error("{field}: expected {expected}, found {found}")]
    Invalid {
        /// Path of the offending field.
        field: String,
        /// What the contract requires.
        expected: String,
        /// What the message holds.
        found: String,
    },
    /// A video chunk does not continue the video being assembled where it left off.
    #[error("{field}: expected {expected}, found {found} (video chunks must arrive in order)")]
    OutOfOrder {
        /// Path of the offending field.
        field: String,
        /// What the next chunk must hold.
        expected: String,
        /// What the chunk holds.
        found: String,
    },
    /// A video chunk disagrees with the first chunk of its video.
    #[error("{field}: expected {expected} (as in the first chunk), found {found}")]
    Inconsistent {
        /// Path of the offending field.
        field: String,
        /// The first chunk's value.
        expected: String,
        /// The chunk's value.
        found: String,
    },
}

impl WireError {
    /// A field whose value is outside what the contract allows.
    pub fn invalid(
        field: impl Into<String>,
        expected: impl Into<String>,
        found: impl ToString,
    ) -> Self {
        Self::Invalid {
            field: field.into(),
            expected: expected.into(),
            found: found.to_string(),
        }
    }

    fn out_of_order(field: &str, expected: impl ToString, found: impl ToString) -> Self {
        Self::OutOfOrder {
            field: field.to_owned(),
            expected: expected.to_string(),
            found: found.to_string(),
        }
    }

    fn inconsistent(field: &str, expected: impl ToString, found: impl ToString) -> Self {
        Self::Inconsistent {
            field: field.to_owned(),
            expected: expected.to_string(),
            found: found.to_string(),
        }
    }

    /// Prefixes the field path with the field that holds the checked message, so
    /// `data` becomes `text_embedding.data`.
    #[must_use]
    pub fn within(mut self, parent: &str) -> Self {
        let field = match &mut self {
            Self::Invalid { field, .. }
            | Self::OutOfOrder { field, .. }
            | Self::Inconsistent { field, .. } => field,
        };
        *field = format!("{parent}.{field}");
        self
    }

    /// The offending field's path.
    pub fn field(&self) -> &str {
        match self {
            Self::Invalid { field, .. }
            | Self::OutOfOrder { field, .. }
            | Self::Inconsistent { field, .. } => field,
        }
    }
}

impl v1::DType {
    /// Bytes per element, or `None` for [`v1::DType::Unspecified`].
    pub fn size_bytes(self) -> Option<usize> {
        match self {
            Self::Unspecified => None,
            Self::F32 => Some(4),
            Self::F16 | Self::Bf16 => Some(2),
        }
    }
}

/// The element type named by a tensor's raw `dtype` field, rejecting unset and
/// unknown values.
fn known_dtype(raw: i32) -> Result<(v1::DType, usize), WireError> {
    const EXPECTED: &str = "D_TYPE_F32, D_TYPE_F16 or D_TYPE_BF16";
    let dtype = v1::DType::try_from(raw)
        .map_err(|_| WireError::invalid("dtype", EXPECTED, format!("unknown value {raw}")))?;
    match dtype.size_bytes() {
        Some(size) => Ok((dtype, size)),
        None => Err(WireError::invalid("dtype", EXPECTED, dtype.as_str_name())),
    }
}

/// Number of elements of `shape`, or `None` if it overflows `usize`.
fn element_count(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d))
}

impl v1::Tensor {
    /// Encodes row-major `data` of the given `shape` as `dtype` (rounding to
    /// nearest for F16 and BF16). Non-finite values are encoded as they are.
    ///
    /// Fails when `dtype` is unspecified or `data` does not hold exactly
    /// product(`shape`) values.
    pub fn from_f32(shape: &[usize], data: &[f32], dtype: v1::DType) -> Result<Self, WireError> {
        let (dtype, size) = known_dtype(dtype.into())?;
        let expected = element_count(shape).ok_or_else(|| {
            WireError::invalid(
                "shape",
                "an element count that fits in usize",
                format!("{shape:?}"),
            )
        })?;
        if data.len() != expected {
            return Err(WireError::invalid(
                "data",
                format!("{expected} values for shape {shape:?}"),
                format!("{} values", data.len()),
            ));
        }
        let mut bytes = Vec::with_capacity(data.len() * size);
        match dtype {
            v1::DType::F32 => data
                .iter()
                .for_each(|x| bytes.extend_from_slice(&x.to_le_bytes())),
            v1::DType::F16 => data
                .iter()
                .for_each(|&x| bytes.extend_from_slice(&f16::from_f32(x).to_le_bytes())),
            v1::DType::Bf16 => data
                .iter()
                .for_each(|&x| bytes.extend_from_slice(&bf16::from_f32(x).to_le_bytes())),
            // `known_dtype` has rejected it.
            v1::DType::Unspecified => {}
        }
        Ok(Self {
            dtype: dtype.into(),
            shape: shape.iter().map(|&d| d as u64).collect(),
            data: bytes,
        })
    }

    /// Decodes the tensor to its shape and row-major `f32` values. Non-finite
    /// values are returned as they are; the caller decides whether to accept them.
    ///
    /// Fails when `dtype` is unspecified or unknown, or `data` is not exactly
    /// product(`shape`) * size(`dtype`) bytes.
    pub fn to_f32(&self) -> Result<(Vec<usize>, Vec<f32>), WireError> {
        let (dtype, size) = known_dtype(self.dtype)?;
        let overflow = || {
            WireError::invalid(
                "shape",
                "a byte size that fits in usize",
                format!("{:?}", self.shape),
            )
        };
        let shape = self
            .shape
            .iter()
            .map(|&d| usize::try_from(d).map_err(|_| overflow()))
            .collect::<Result<Vec<_>, _>>()?;
        let expected = element_count(&shape)
            .and_then(|n| n.checked_mul(size))
            .ok_or_else(overflow)?;
        if self.data.len() != expected {
            return Err(WireError::invalid(
                "data",
                format!(
                    "{expected} bytes for shape {shape:?} of {}",
                    dtype.as_str_name()
                ),
                format!("{} bytes", self.data.len()),
            ));
        }
        let values = match dtype {
            v1::DType::F32 => self
                .data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            v1::DType::F16 => self
                .data
                .chunks_exact(2)
                .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            v1::DType::Bf16 => self
                .data
                .chunks_exact(2)
                .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            // `known_dtype` has rejected it.
            v1::DType::Unspecified => Vec::new(),
        };
        Ok((shape, values))
    }
}

/// Bytes of one RGB8 frame of the given size, rejecting empty frames.
fn frame_bytes(width: u32, height: u32) -> Result<usize, WireError> {
    if width == 0 {
        return Err(WireError::invalid("width", "at least 1", width));
    }
    if height == 0 {
        return Err(WireError::invalid("height", "at least 1", height));
    }
    // u32::MAX^2 * 3 does not fit in u64: multiply with checks.
    u64::from(width)
        .checked_mul(u64::from(height))
        .and_then(|pixels| pixels.checked_mul(CHANNELS))
        .and_then(|bytes| usize::try_from(bytes).ok())
        .ok_or_else(|| {
            WireError::invalid(
                "width",
                "a frame size that fits in usize",
                format!("{width}x{height}"),
            )
        })
}

fn check_fps(fps: f32) -> Result<(), WireError> {
    if fps.is_finite() && fps > 0.0 {
        Ok(())
    } else {
        Err(WireError::invalid("fps", "a finite, positive rate", fps))
    }
}

/// The header of a video's first chunk: size, rate, a frame count, and a whole video within
/// [`MAX_ASSEMBLED_BYTES`] (checked before anything accumulates).
fn check_first_chunk(chunk: &v1::Video) -> Result<(), WireError> {
    let frame = frame_bytes(chunk.width, chunk.height)?;
    check_fps(chunk.fps)?;
    if chunk.total_frames == 0 {
        return Err(WireError::invalid("total_frames", "at least 1", 0));
    }
    if frame.saturating_mul(chunk.total_frames as usize) > MAX_ASSEMBLED_BYTES {
        return Err(WireError::invalid(
            "total_frames",
            format!("a video of at most {MAX_ASSEMBLED_BYTES} bytes"),
            format!(
                "{} frames of {}x{}",
                chunk.total_frames, chunk.width, chunk.height
            ),
        ));
    }
    Ok(())
}

/// Checks that every frame of `video` holds `expected` bytes; errors name the
/// frame by its index in the whole video.
fn check_frames(video: &v1::Video, expected: usize) -> Result<(), WireError> {
    for (i, frame) in video.frames.iter().enumerate() {
        if frame.len() != expected {
            let index = u64::from(video.first_frame_index) + i as u64;
            return Err(WireError::invalid(
                format!("frames[{index}]"),
                format!("{expected} bytes ({}x{} RGB8)", video.width, video.height),
                format!("{} bytes", frame.len()),
            ));
        }
    }
    Ok(())
}

/// Checks a video sent whole: positive size and rate, at least one frame,
/// `first_frame_index == 0`, `total_frames == len(frames)`, and every frame
/// exactly `width * height * 3` bytes.
pub fn validate_video(video: &v1::Video) -> Result<(), WireError> {
    let frame_size = frame_bytes(video.width, video.height)?;
    check_fps(video.fps)?;
    if video.first_frame_index != 0 {
        return Err(WireError::invalid(
            "first_frame_index",
            "0 (a whole video, not a chunk)",
            video.first_frame_index,
        ));
    }
    if video.total_frames == 0 {
        return Err(WireError::invalid("total_frames", "at least 1", 0));
    }
    if video.frames.len() != video.total_frames as usize {
        return Err(WireError::invalid(
            "frames",
            format!("total_frames = {} frames", video.total_frames),
            format!("{} frames", video.frames.len()),
        ));
    }
    check_frames(video, frame_size)
}

/// Splits `video` into chunks whose encoded size is at most `max_chunk_bytes`,
/// each holding a contiguous run of at least one frame; a frame too big for the
/// budget goes in a chunk of its own. The chunks keep `video`'s `width`,
/// `height`, `fps` and `total_frames`, and number their frames from
/// `video.first_frame_index`. A video without frames comes back as one chunk,
/// unchanged. The budget counts the `Video` message alone, not the few bytes
/// of the event that carries it.
pub fn chunk_video(video: &v1::Video, max_chunk_bytes: usize) -> Vec<v1::Video> {
    let header = |first_frame_index: u32| v1::Video {
        width: video.width,
        height: video.height,
        fps: video.fps,
        first_frame_index,
        total_frames: video.total_frames,
        frames: Vec::new(),
    };
    // Encoded size of one `frames` entry: tag, length varint, payload.
    let entry_len =
        |frame: &Vec<u8>| 1 + prost::encoding::encoded_len_varint(frame.len() as u64) + frame.len();

    if video.frames.is_empty() {
        return vec![video.clone()];
    }
    let mut chunks = Vec::new();
    let mut chunk = header(video.first_frame_index);
    let mut chunk_len = chunk.encoded_len();
    for frame in &video.frames {
        let len = entry_len(frame);
        if !chunk.frames.is_empty() && chunk_len + len > max_chunk_bytes {
            let next_index = chunk
                .first_frame_index
                .saturating_add(chunk.frames.len() as u32);
            chunks.push(std::mem::replace(&mut chunk, header(next_index)));
            chunk_len = chunk.encoded_len();
        }
        chunk.frames.push(frame.clone());
        chunk_len += len;
    }
    chunks.push(chunk);
    chunks
}

/// Largest video a [`VideoAssembler`] assembles (1 GiB; Imagen Video's final 128 frames of
/// 1280x768 RGB8 are 360 MiB): a first chunk announcing more is refused before any frame is
/// kept, so a peer cannot make the receiver hold unbounded memory one small chunk at a time.
pub const MAX_ASSEMBLED_BYTES: usize = 1 << 30;

/// Puts a chunked video back together, checking each chunk as it arrives.
///
/// Push the chunks of one video in the order they came; [`VideoAssembler::push`]
/// returns the whole video with the chunk that completes it, and the assembler is
/// then ready for the next video. An error discards the partial video. When the
/// stream ends while [`VideoAssembler::is_assembling`], the video was cut short.
#[derive(Debug, Default)]
pub struct VideoAssembler {
    /// The video so far; `None` between videos.
    partial: Option<v1::Video>,
}

impl VideoAssembler {
    /// An assembler waiting for the first chunk of a video.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether a video has been started but not completed.
    pub fn is_assembling(&self) -> bool {
        self.partial.is_some()
    }

    /// Frames received so far of the video being assembled (0 between videos).
    pub fn received_frames(&self) -> usize {
        self.partial.as_ref().map_or(0, |v| v.frames.len())
    }

    /// Adds the next chunk. Returns the whole video (with `first_frame_index` 0 and
    /// every frame) when this chunk completes it, `None` while frames are missing.
    ///
    /// Fails when the chunk breaks the contract of `Video`: a bad size, rate or
    /// frame length, no frames, more frames than `total_frames`, a first chunk
    /// that does not start at frame 0, a later one that does not start where the
    /// previous one ended, or one whose `width`, `height`, `fps` or `total_frames`
    /// differs from the first chunk's.
    pub fn push(&mut self, chunk: v1::Video) -> Result<Option<v1::Video>, WireError> {
        let result = self.push_inner(chunk);
        if result.is_err() {
            self.partial = None;
        }
        result
    }

    fn push_inner(&mut self, mut chunk: v1::Video) -> Result<Option<v1::Video>, WireError> {
        let expected_index = match &self.partial {
            None => {
                check_first_chunk(&chunk)?;
                0
            }
            Some(video) => {
                if chunk.width != video.width {
                    return Err(WireError::inconsistent("width", video.width, chunk.width));
                }
                if chunk.height != video.height {
                    return Err(WireError::inconsistent(
                        "height",
                        video.height,
                        chunk.height,
                    ));
                }
                if chunk.fps.to_bits() != video.fps.to_bits() {
                    return Err(WireError::inconsistent("fps", video.fps, chunk.fps));
                }
                if chunk.total_frames != video.total_frames {
                    return Err(WireError::inconsistent(
                        "total_frames",
                        video.total_frames,
                        chunk.total_frames,
                    ));
                }
                video.frames.len()
            }
        };
        if chunk.first_frame_index as usize != expected_index {
            return Err(WireError::out_of_order(
                "first_frame_index",
                expected_index,
                chunk.first_frame_index,
            ));
        }
        if chunk.frames.is_empty() {
            return Err(WireError::invalid(
                "frames",
                "at least 1 frame per chunk",
                "none",
            ));
        }
        let end = expected_index + chunk.frames.len();
        if end > chunk.total_frames as usize {
            return Err(WireError::invalid(
                "frames",
                format!(
                    "at most {} frames from frame {expected_index} (total_frames = {})",
                    chunk.total_frames as usize - expected_index,
                    chunk.total_frames
                ),
                format!("{} frames", chunk.frames.len()),
            ));
        }
        check_frames(&chunk, frame_bytes(chunk.width, chunk.height)?)?;

        let video = match self.partial.take() {
            None => chunk,
            Some(mut video) => {
                video.frames.append(&mut chunk.frames);
                video
            }
        };
        if video.frames.len() == video.total_frames as usize {
            Ok(Some(video))
        } else {
            self.partial = Some(video);
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHAPE: [usize; 2] = [3, 4];

    fn values() -> Vec<f32> {
        (0..12).map(|i| (i as f32 - 5.5) * 0.37).collect()
    }

    fn round_trip(dtype: v1::DType, tolerance: f32) {
        let data = values();
        let tensor = v1::Tensor::from_f32(&SHAPE, &data, dtype).expect("encode");
        assert_eq!(tensor.dtype(), dtype);
        assert_eq!(tensor.shape, vec![3, 4]);
        assert_eq!(
            tensor.data.len(),
            12 * dtype.size_bytes().expect("a sized dtype")
        );
        // Through the protobuf encoding too, as it travels.
        let tensor = v1::Tensor::decode(tensor.encode_to_vec().as_slice()).expect("decode");
        let (shape, back) = tensor.to_f32().expect("to_f32");
        assert_eq!(shape, SHAPE);
        for (a, b) in data.iter().zip(&back) {
            assert!(
                (a - b).abs() <= tolerance * a.abs().max(1e-3),
                "{dtype:?}: {a} came back as {b}"
            );
        }
    }

    #[test]
    fn f32_round_trip_is_exact() {
        round_trip(v1::DType::F32, 0.0);
    }

    #[test]
    fn f16_round_trip_within_half_precision() {
        round_trip(v1::DType::F16, 1.0 / 1024.0);
    }

    #[test]
    fn bf16_round_trip_within_bfloat_precision() {
        round_trip(v1::DType::Bf16, 1.0 / 128.0);
    }

    #[test]
    fn f32_is_little_endian() {
        let tensor = v1::Tensor::from_f32(&[1], &[1.0], v1::DType::F32).expect("encode");
        assert_eq!(tensor.data, vec![0x00, 0x00, 0x80, 0x3f]);
    }

    #[test]
    fn scalar_and_empty_tensors() {
        let scalar = v1::Tensor::from_f32(&[], &[2.5], v1::DType::F16).expect("scalar");
        assert_eq!(scalar.to_f32().expect("decode"), (Vec::new(), vec![2.5f32]));
        let empty = v1::Tensor::from_f32(&[0, 768], &[], v1::DType::Bf16).expect("empty");
        assert_eq!(
            empty.to_f32().expect("decode"),
            (vec![0usize, 768], Vec::<f32>::new())
        );
    }

    #[test]
    fn non_finite_values_travel() {
        let data = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY];
        for dtype in [v1::DType::F32, v1::DType::F16, v1::DType::Bf16] {
            let tensor = v1::Tensor::from_f32(&[3], &data, dtype).expect("encode");
            let (_, back) = tensor.to_f32().expect("decode");
            assert!(back[0].is_nan(), "{dtype:?}");
            assert_eq!(back[1..], [f32::INFINITY, f32::NEG_INFINITY], "{dtype:?}");
        }
    }

    #[test]
    fn from_f32_rejects_wrong_value_count() {
        let err = v1::Tensor::from_f32(&SHAPE, &values()[..11], v1::DType::F32)
            .expect_err("11 values for a 3x4 shape");
        assert_eq!(err.field(), "data");
        assert_eq!(
            err.to_string(),
            "data: expected 12 values for shape [3, 4], found 11 values"
        );
    }

    #[test]
    fn from_f32_rejects_unspecified_dtype() {
        let err = v1::Tensor::from_f32(&SHAPE, &values(), v1::DType::Unspecified)
            .expect_err("unspecified dtype");
        assert_eq!(
            err.to_string(),
            "dtype: expected D_TYPE_F32, D_TYPE_F16 or D_TYPE_BF16, found D_TYPE_UNSPECIFIED"
        );
    }

    #[test]
    fn from_f32_rejects_overflowing_shape() {
        let err = v1::Tensor::from_f32(&[usize::MAX, 2], &[], v1::DType::F32)
            .expect_err("overflowing shape");
        assert_eq!(err.field(), "shape");
    }

    #[test]
    fn to_f32_rejects_bad_data_length() {
        let mut tensor = v1::Tensor::from_f32(&SHAPE, &values(), v1::DType::F16).expect("encode");
        tensor.data.pop();
        let err = tensor.to_f32().expect_err("one byte short");
        assert_eq!(
            err.to_string(),
            "data: expected 24 bytes for shape [3, 4] of D_TYPE_F16, found 23 bytes"
        );
        assert_eq!(err.within("text_embedding").field(), "text_embedding.data");
    }

    #[test]
    fn to_f32_rejects_unspecified_and_unknown_dtype() {
        let mut tensor = v1::Tensor::from_f32(&SHAPE, &values(), v1::DType::F32).expect("encode");
        tensor.dtype = v1::DType::Unspecified.into();
        let err = tensor.to_f32().expect_err("unspecified");
        assert!(
            err.to_string().ends_with("found D_TYPE_UNSPECIFIED"),
            "{err}"
        );
        tensor.dtype = 7;
        let err = tensor.to_f32().expect_err("unknown");
        assert!(err.to_string().ends_with("found unknown value 7"), "{err}");
        assert!(matches!(err, WireError::Invalid { .. }), "{err}");
    }

    #[test]
    fn to_f32_rejects_overflowing_shape() {
        let tensor = v1::Tensor {
            dtype: v1::DType::F32.into(),
            shape: vec![u64::MAX, u64::MAX],
            data: Vec::new(),
        };
        assert_eq!(tensor.to_f32().expect_err("overflow").field(), "shape");
    }

    /// A field name and a change that breaks that field.
    type Mutation = (&'static str, fn(&mut v1::Video));

    /// A whole video whose frames are distinguishable by their bytes.
    fn video(width: u32, height: u32, frames: u32) -> v1::Video {
        let size = (width * height * 3) as usize;
        v1::Video {
            width,
            height,
            fps: 24.0,
            first_frame_index: 0,
            total_frames: frames,
            frames: (0..frames)
                .map(|f| (0..size).map(|i| (f as usize * 31 + i) as u8).collect())
                .collect(),
        }
    }

    fn assemble(chunks: Vec<v1::Video>) -> Result<Option<v1::Video>, WireError> {
        let mut assembler = VideoAssembler::new();
        let mut whole = None;
        for chunk in chunks {
            assert!(whole.is_none(), "a chunk after the video was complete");
            whole = assembler.push(chunk)?;
        }
        assert!(!assembler.is_assembling() || whole.is_none());
        Ok(whole)
    }

    #[test]
    fn chunks_reassemble_to_the_original() {
        // 16 frames of 32x24 RGB8 = 2304 bytes each; 5000 bytes fit 2 frames.
        let original = video(32, 24, 16);
        validate_video(&original).expect("valid");
        let chunks = chunk_video(&original, 5000);
        assert_eq!(chunks.len(), 8);
        let mut next = 0;
        for chunk in &chunks {
            assert!(chunk.encoded_len() <= 5000, "{} bytes", chunk.encoded_len());
            assert!(!chunk.frames.is_empty());
            assert_eq!(chunk.first_frame_index, next);
            assert_eq!(chunk.total_frames, 16);
            next += chunk.frames.len() as u32;
        }
        let whole = assemble(chunks).expect("assemble").expect("complete");
        assert_eq!(whole, original);
    }

    #[test]
    fn default_budget_keeps_small_videos_whole() {
        let original = video(40, 24, 16);
        let chunks = chunk_video(&original, DEFAULT_CHUNK_BYTES);
        assert_eq!(chunks, vec![original]);
    }

    #[test]
    fn oversized_frames_go_alone() {
        let original = video(32, 24, 3);
        let chunks = chunk_video(&original, 100);
        assert_eq!(chunks.len(), 3);
        assert!(chunks.iter().all(|c| c.frames.len() == 1));
        assert_eq!(assemble(chunks).expect("assemble"), Some(original));
    }

    #[test]
    fn one_frame_video() {
        let original = video(8, 8, 1);
        validate_video(&original).expect("valid");
        let chunks = chunk_video(&original, 1);
        assert_eq!(chunks, vec![original.clone()]);
        assert_eq!(assemble(chunks).expect("assemble"), Some(original));
    }

    #[test]
    fn assembler_reports_progress_and_is_reusable() {
        let first = video(8, 8, 4);
        let mut assembler = VideoAssembler::new();
        let mut chunks = chunk_video(&first, 450).into_iter();
        assert_eq!(assembler.push(chunks.next().expect("chunk")), Ok(None));
        assert!(assembler.is_assembling());
        assert_eq!(assembler.received_frames(), 2);
        let whole = assembler.push(chunks.next().expect("chunk")).expect("push");
        assert_eq!(whole, Some(first));
        assert!(!assembler.is_assembling());

        let second = video(4, 4, 2);
        assert_eq!(assembler.push(second.clone()), Ok(Some(second)));
    }

    #[test]
    fn out_of_order_chunks_are_rejected() {
        let chunks = chunk_video(&video(8, 8, 6), 450);
        assert_eq!(chunks.len(), 3);

        let err = assemble(vec![chunks[1].clone()]).expect_err("starts mid-video");
        assert_eq!(
            err.to_string(),
            "first_frame_index: expected 0, found 2 (video chunks must arrive in order)"
        );
        assert!(matches!(err, WireError::OutOfOrder { .. }), "{err}");

        let err = assemble(vec![chunks[0].clone(), chunks[2].clone()]).expect_err("skips");
        assert_eq!(err.field(), "first_frame_index");

        let err = assemble(vec![chunks[0].clone(), chunks[0].clone()]).expect_err("repeats");
        assert_eq!(err.field(), "first_frame_index");
    }

    #[test]
    fn mismatched_chunks_are_rejected() {
        let chunks = chunk_video(&video(8, 8, 4), 450);
        let cases: [Mutation; 4] = [
            ("width", |c| c.width = 4),
            ("height", |c| c.height = 4),
            ("fps", |c| c.fps = 12.0),
            ("total_frames", |c| c.total_frames = 5),
        ];
        for (field, change) in cases {
            let mut second = chunks[1].clone();
            change(&mut second);
            let mut assembler = VideoAssembler::new();
            assembler.push(chunks[0].clone()).expect("first chunk");
            let err = assembler.push(second).expect_err(field);
            assert_eq!(err.field(), field);
            assert!(matches!(err, WireError::Inconsistent { .. }), "{err}");
            assert!(!assembler.is_assembling(), "an error discards the video");
        }
    }

    #[test]
    fn too_many_or_no_frames_are_rejected() {
        let mut long = video(8, 8, 3);
        long.total_frames = 2;
        let err = assemble(vec![long]).expect_err("3 frames of 2");
        assert_eq!(
            err.to_string(),
            "frames: expected at most 2 frames from frame 0 (total_frames = 2), found 3 frames"
        );

        let mut empty = video(8, 8, 2);
        empty.frames.clear();
        assert_eq!(
            assemble(vec![empty]).expect_err("no frames").field(),
            "frames"
        );
    }

    #[test]
    fn wrong_frame_size_is_rejected() {
        let mut bad = video(8, 8, 4);
        bad.frames[2].pop();
        let err = validate_video(&bad).expect_err("short frame");
        assert_eq!(
            err.to_string(),
            "frames[2]: expected 192 bytes (8x8 RGB8), found 191 bytes"
        );

        let err = assemble(chunk_video(&bad, 450)).expect_err("short frame in chunk 2");
        assert_eq!(err.within("output_chunk").field(), "output_chunk.frames[2]");
    }

    #[test]
    fn a_frame_size_past_u64_is_an_error_not_an_overflow() {
        // Found by proto/tests/wire_properties.rs: u32::MAX^2 * 3 overflowed u64.
        let mut assembler = VideoAssembler::new();
        let huge = v1::Video {
            width: u32::MAX,
            height: u32::MAX,
            fps: 8.0,
            ..v1::Video::default()
        };
        let err = assembler.push(huge).expect_err("no such frame fits");
        assert_eq!(err.field(), "width");
        // A small first chunk announcing a video past the limit is refused at once.
        let announced = v1::Video {
            width: 1280,
            height: 768,
            fps: 8.0,
            total_frames: u32::MAX,
            frames: vec![vec![0; 1280 * 768 * 3]],
            ..v1::Video::default()
        };
        let err = assembler.push(announced).expect_err("4 billion frames");
        assert_eq!(err.field(), "total_frames");
    }

    #[test]
    fn validate_video_checks_the_header() {
        let good = video(8, 8, 2);
        let cases: [Mutation; 7] = [
            ("width", |v| v.width = 0),
            ("height", |v| v.height = 0),
            ("fps", |v| v.fps = 0.0),
            ("fps", |v| v.fps = f32::NAN),
            ("first_frame_index", |v| v.first_frame_index = 1),
            ("total_frames", |v| v.total_frames = 0),
            ("frames", |v| v.total_frames = 3),
        ];
        for (field, change) in cases {
            let mut bad = good.clone();
            change(&mut bad);
            assert_eq!(validate_video(&bad).expect_err(field).field(), field);
        }
    }
}
