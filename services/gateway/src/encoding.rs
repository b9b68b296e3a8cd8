//! Encoded output: the videos of a request that asked for `OutputOptions.format` GIF, MP4 or
//! PNG frames, as `EncodedVideo` pieces a client writes to disk or hands to a player.
//!
//! The gateway encodes (it holds every clip of the final video, and a stage's output is its
//! business only once it reaches the client), on tokio's blocking pool so a long encode never
//! stalls the event loop. Every file is cut into byte ranges of at most the request's chunk
//! budget. Whether a format can hold the request's videos is checked at admission, so a valid
//! request never fails in the encoder.

use vidcascade_media::{OutputFormat, WriteOptions, check_encodable, encode_video};
use vidcascade_pipeline::{PipelineError, Plan};
use vidcascade_proto::convert::shape_to_wire;
use vidcascade_proto::v1;
use vidcascade_spec::{Video, VideoShape};

use crate::error::GatewayError;

/// The encoded format a request asked for; `None` for raw RGB8 frames. An unknown enum value
/// is INVALID_ARGUMENT naming `output.format`.
pub fn requested_format(output: &v1::OutputOptions) -> Result<Option<OutputFormat>, PipelineError> {
    match v1::VideoFormat::try_from(output.format) {
        Ok(v1::VideoFormat::Unspecified | v1::VideoFormat::RawRgb8) => Ok(None),
        Ok(v1::VideoFormat::Gif) => Ok(Some(OutputFormat::Gif)),
        Ok(v1::VideoFormat::Mp4) => Ok(Some(OutputFormat::Mp4)),
        Ok(v1::VideoFormat::Png) => Ok(Some(OutputFormat::PngFrames)),
        Err(_) => Err(PipelineError::invalid(
            "output.format",
            format!(
                "unknown VideoFormat value {}; expected RAW_RGB8, GIF, MP4 or PNG",
                output.format
            ),
        )),
    }
}

/// Checks that `format` can hold every video the plan sends (each stage's output and the final
/// video), naming the first that does not fit.
pub fn check_plan(plan: &Plan, format: OutputFormat) -> Result<(), PipelineError> {
    let stages = plan
        .stages
        .iter()
        .filter_map(|stage| Some((stage.manifest.name.as_str(), stage.manifest.output?)));
    for (name, shape) in stages.chain([("final video", plan.final_shape())]) {
        check_encodable(format, (shape.width, shape.height), shape.fps, 1).map_err(|reason| {
            PipelineError::invalid("output.format", format!("{name}: {reason}"))
        })?;
    }
    Ok(())
}

/// `format` as its wire enum.
fn format_to_wire(format: OutputFormat) -> v1::VideoFormat {
    match format {
        OutputFormat::Gif => v1::VideoFormat::Gif,
        OutputFormat::Mp4 => v1::VideoFormat::Mp4,
        OutputFormat::PngFrames => v1::VideoFormat::Png,
    }
}

/// Encodes `video` as `format` on the blocking pool and cuts its files into pieces of at most
/// `piece_bytes` bytes, in order. `what` names the video in the (internal) error.
pub async fn encode_pieces(
    video: Video,
    format: OutputFormat,
    piece_bytes: usize,
    what: String,
) -> Result<Vec<v1::EncodedVideo>, GatewayError> {
    let shape = VideoShape {
        frames: video.frames.len(),
        height: video.height,
        width: video.width,
        fps: video.fps,
    };
    let files =
        tokio::task::spawn_blocking(move || encode_video(&video, format, &WriteOptions::default()))
            .await
            .map_err(|err| GatewayError::Encode {
                what: what.clone(),
                reason: err.to_string(),
            })?
            .map_err(|err| GatewayError::Encode {
                what,
                reason: err.to_string(),
            })?;
    Ok(pieces(&files, format, &shape, piece_bytes))
}

/// The files cut into pieces of at most `piece_bytes` (at least 1) bytes; an empty file is one
/// empty piece, so every file is announced.
fn pieces(
    files: &[Vec<u8>],
    format: OutputFormat,
    shape: &VideoShape,
    piece_bytes: usize,
) -> Vec<v1::EncodedVideo> {
    let piece_bytes = piece_bytes.max(1);
    let header = |file_index: usize, file: &[u8]| v1::EncodedVideo {
        format: format_to_wire(format) as i32,
        media_type: format.media_type().to_string(),
        shape: Some(shape_to_wire(shape)),
        file_index: file_index as u32,
        file_count: files.len() as u32,
        offset: 0,
        file_bytes: file.len() as u64,
        data: Vec::new(),
    };
    let mut out = Vec::new();
    for (index, file) in files.iter().enumerate() {
        if file.is_empty() {
            out.push(header(index, file));
        }
        for (k, data) in file.chunks(piece_bytes).enumerate() {
            out.push(v1::EncodedVideo {
                offset: (k * piece_bytes) as u64,
                data: data.to_vec(),
                ..header(index, file)
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape() -> VideoShape {
        VideoShape {
            frames: 2,
            height: 4,
            width: 4,
            fps: 8.0,
        }
    }

    #[test]
    fn files_are_cut_into_ordered_ranges_that_reassemble() {
        let files = vec![vec![1u8; 10], vec![2u8; 3]];
        let pieces = pieces(&files, OutputFormat::PngFrames, &shape(), 4);
        let places: Vec<(u32, u64, usize)> = pieces
            .iter()
            .map(|p| (p.file_index, p.offset, p.data.len()))
            .collect();
        assert_eq!(places, [(0, 0, 4), (0, 4, 4), (0, 8, 2), (1, 0, 3)]);
        assert!(pieces.iter().all(|p| p.file_count == 2
            && p.media_type == "image/png"
            && p.format == v1::VideoFormat::Png as i32));
        let mut back = vec![Vec::new(); 2];
        for piece in &pieces {
            assert_eq!(
                piece.file_bytes as usize,
                files[piece.file_index as usize].len()
            );
            back[piece.file_index as usize].extend_from_slice(&piece.data);
        }
        assert_eq!(back, files);
    }

    #[test]
    fn unknown_formats_name_the_field() {
        let output = v1::OutputOptions {
            format: 99,
            ..Default::default()
        };
        let err = requested_format(&output).expect_err("99 is no format");
        assert!(err.to_string().contains("output.format"), "{err}");
        let raw = v1::OutputOptions {
            format: v1::VideoFormat::RawRgb8 as i32,
            ..Default::default()
        };
        assert_eq!(requested_format(&raw).ok(), Some(None));
    }

    #[tokio::test]
    async fn a_gif_comes_back_as_one_file() -> Result<(), GatewayError> {
        let video = Video {
            width: 4,
            height: 4,
            fps: 8.0,
            frames: vec![vec![200; 48], vec![10; 48]],
        };
        let pieces = encode_pieces(video, OutputFormat::Gif, 1 << 20, "test".into()).await?;
        assert_eq!(pieces.len(), 1);
        assert!(pieces[0].data.starts_with(b"GIF89a"));
        assert_eq!(pieces[0].shape, Some(shape_to_wire(&shape())));
        Ok(())
    }
}
