//! H.264 in MP4, playable in browsers, without a system ffmpeg: Cisco's OpenH264 (compiled from
//! the source bundled in the `openh264` crate) encodes, the pure-Rust `mp4` crate muxes.
//!
//! What browsers need, and how it is met:
//! - H.264 constrained baseline, yuv420p: OpenH264's baseline profile (no B-frames, so decode
//!   order is display order and no `ctts` box is needed);
//! - even width and height (4:2:0 chroma), and at least 16x16 (OpenH264's smallest picture):
//!   sides are padded, never scaled, by repeating the last column or row, so the file may be one
//!   pixel wider or taller than the video (or 16 pixels for a tiny one);
//! - an `avc1` sample entry whose `avcC` carries the SPS and PPS: they are taken out of the
//!   encoder's Annex B stream, and samples hold the remaining NAL units with 4-byte lengths;
//! - colours: RGB -> YUV is BT.601 limited range (the crate's converter), and the SPS says so
//!   (VUI), so players convert back with the same matrix;
//! - a `moov` box: the muxer writes it after the media data, and it is then moved in front
//!   ("faststart"), so a browser can start playing a file served without range requests.

use std::borrow::Cow;
use std::io::Cursor;
use std::path::Path;

use ::mp4::{
    AvcConfig, FourCC, MediaConfig, Mp4Box, Mp4Config, Mp4Reader, Mp4Sample, Mp4Writer,
    TrackConfig, TrackType, WriteBox,
};
use openh264::OpenH264API;
use openh264::Timestamp;
use openh264::encoder::{
    Encoder, EncoderConfig, FrameRate, IntraFramePeriod, Profile, RateControlMode, VuiConfig,
};
use openh264::formats::{RgbSliceU8, YUVBuffer};

use super::{OutputError, upscale};
use vidcascade_spec::Video;

/// OpenH264 encodes at most 3840 pixels on the long side (and 2160 on the short one).
pub(super) const MAX_SIDE: usize = 3840;

/// OpenH264 refuses pictures under 16 pixels a side.
const MIN_SIDE: usize = 16;

/// Media time units per frame: the track's timescale is `fps * 1000`, so 8, 24 and 29.97 fps are
/// all exact.
const TICKS_PER_FRAME: u32 = 1000;

/// An IDR frame every this many seconds, so browsers can seek in long clips.
const SECONDS_PER_IDR: f32 = 2.0;

/// NAL unit types (H.264 table 7-1) this module looks at.
const NAL_IDR_SLICE: u8 = 5;
const NAL_SPS: u8 = 7;
const NAL_PPS: u8 = 8;
const NAL_AUD: u8 = 9;

/// One MP4 sample: the NAL units of one encoded frame, length-prefixed.
struct Sample {
    bytes: Vec<u8>,
    is_sync: bool,
}

/// The encoder's output, split into what the `avcC` box needs and the samples.
struct Encoded {
    sps: Vec<u8>,
    pps: Vec<u8>,
    samples: Vec<Sample>,
}

/// Encodes `video` (validated by the caller), upscaled by `scale`, as the bytes of an MP4 file;
/// errors name `path`.
pub(super) fn encode_file(
    video: &Video,
    path: &Path,
    scale: usize,
) -> Result<Vec<u8>, OutputError> {
    let (width, height) = (video.width * scale, video.height * scale);
    let (coded_width, coded_height) = (coded_side(width), coded_side(height));
    let timescale = (f64::from(video.fps) * f64::from(TICKS_PER_FRAME)).round();
    if !(1.0..=f64::from(u32::MAX)).contains(&timescale) {
        return Err(OutputError::invalid(
            path,
            format!("MP4 needs 0.001 to 4 million fps, got {}", video.fps),
        ));
    }
    let encoded = encode(video, scale, (coded_width, coded_height), path)?;
    mux(encoded, (coded_width, coded_height), timescale as u32)
        .and_then(faststart)
        .map_err(OutputError::encode(path, "MP4"))
}

/// Encodes every frame of `video`, upscaled by `scale` and padded to the coded size, as H.264:
/// the track's SPS and PPS and one sample per frame.
fn encode(
    video: &Video,
    scale: usize,
    (coded_width, coded_height): (usize, usize),
    path: &Path,
) -> Result<Encoded, OutputError> {
    let mut encoder = h264_encoder(video.fps, path)?;
    let (width, height) = (video.width * scale, video.height * scale);
    let mut parameter_sets: Option<(Vec<u8>, Vec<u8>)> = None;
    let mut samples: Vec<Sample> = Vec::with_capacity(video.frames.len());
    for (index, frame) in video.frames.iter().enumerate() {
        let rgb = upscale(frame, video.width, video.height, 3, scale);
        let rgb = pad_to(&rgb, (width, height), (coded_width, coded_height));
        let yuv = YUVBuffer::from_rgb8_source(RgbSliceU8::new(&rgb, (coded_width, coded_height)));
        let millis = (index as f64 * 1000.0 / f64::from(video.fps)) as u64;
        let stream = encoder
            .encode_at(&yuv, Timestamp::from_millis(millis))
            .map_err(OutputError::encode(path, "H.264"))?
            .to_vec();

        let EncodedFrame { sample, sps, pps } = split_frame(&stream, path)?;
        keep_parameter_sets(&mut parameter_sets, sps, pps, index, path)?;
        // Frame skipping is off, so every frame must come out as a picture: one frame, one
        // sample, and the file has exactly the video's frames and timing.
        if sample.bytes.is_empty() {
            return Err(h264_error(
                path,
                format!("the encoder produced no picture for frame {index}"),
            ));
        }
        samples.push(sample);
    }
    let (sps, pps) = parameter_sets
        .filter(|(sps, pps)| sps.len() >= 4 && !pps.is_empty())
        .ok_or_else(|| h264_error(path, "the encoder produced no usable SPS/PPS".into()))?;
    if !samples.first().is_some_and(|s| s.is_sync) {
        return Err(h264_error(
            path,
            "the first frame is not an IDR frame".into(),
        ));
    }
    Ok(Encoded { sps, pps, samples })
}

/// An H.264 encoding error for the file at `path`.
fn h264_error(path: &Path, reason: String) -> OutputError {
    OutputError::encode(path, "H.264")(reason)
}

/// An OpenH264 encoder for a `fps` clip: constrained baseline, constant quantiser, an IDR frame
/// every [`SECONDS_PER_IDR`], BT.601 colours.
fn h264_encoder(fps: f32, path: &Path) -> Result<Encoder, OutputError> {
    let idr_period = (fps * SECONDS_PER_IDR).round().max(1.0) as u32;
    // Rate control off: every frame at OpenH264's base quantiser (26), so quality does not
    // depend on a bitrate guess, no frame is ever dropped, and the encoder logs nothing (the
    // rate-controlled modes warn on stderr unless they may drop frames).
    let config = EncoderConfig::new()
        .profile(Profile::Baseline)
        .rate_control_mode(RateControlMode::Off)
        .skip_frames(false)
        .max_frame_rate(FrameRate::from_hz(fps))
        .intra_frame_period(IntraFramePeriod::from_num_frames(idr_period))
        // The machine is shared with model work, and clips are small.
        .num_threads(1)
        .vui(VuiConfig::bt601());
    Encoder::with_api_config(OpenH264API::from_source(), config)
        .map_err(OutputError::encode(path, "H.264"))
}

/// One encoded frame: its sample and the SPS and PPS it carries, if any.
struct EncodedFrame<'a> {
    sample: Sample,
    sps: Option<&'a [u8]>,
    pps: Option<&'a [u8]>,
}

/// Splits one frame's Annex B stream into its sample (the picture's NAL units, length-prefixed)
/// and its parameter sets.
fn split_frame<'a>(stream: &'a [u8], path: &Path) -> Result<EncodedFrame<'a>, OutputError> {
    let mut sample = Sample {
        bytes: Vec::with_capacity(stream.len()),
        is_sync: false,
    };
    let (mut sps, mut pps) = (None, None);
    for nal in split_annex_b(stream) {
        match nal[0] & 0x1f {
            NAL_SPS => sps = Some(nal),
            NAL_PPS => pps = Some(nal),
            NAL_AUD => {}
            kind => {
                sample.is_sync |= kind == NAL_IDR_SLICE;
                let len = u32::try_from(nal.len())
                    .map_err(|_| h264_error(path, "a NAL unit over 4 GiB".into()))?;
                sample.bytes.extend_from_slice(&len.to_be_bytes());
                sample.bytes.extend_from_slice(nal);
            }
        }
    }
    Ok(EncodedFrame { sample, sps, pps })
}

/// Keeps the first SPS and PPS for the track, and fails if frame `index` carries different ones.
fn keep_parameter_sets(
    parameter_sets: &mut Option<(Vec<u8>, Vec<u8>)>,
    sps: Option<&[u8]>,
    pps: Option<&[u8]>,
    index: usize,
    path: &Path,
) -> Result<(), OutputError> {
    // The `avcC` box holds one SPS and PPS for the whole track; OpenH264 (constant ids)
    // repeats the same ones before every IDR frame, which is checked, not assumed.
    match (&*parameter_sets, sps, pps) {
        (None, Some(sps), Some(pps)) => *parameter_sets = Some((sps.to_vec(), pps.to_vec())),
        (Some((first_sps, first_pps)), sps, pps)
            if sps.is_some_and(|s| s != first_sps) || pps.is_some_and(|p| p != first_pps) =>
        {
            return Err(h264_error(
                path,
                format!("the encoder changed its SPS/PPS at frame {index}"),
            ));
        }
        _ => {}
    }
    Ok(())
}

/// The encoded length of a side: even, and at least OpenH264's 16.
fn coded_side(side: usize) -> usize {
    (side + side % 2).max(MIN_SIDE)
}

/// Pads a `width x height` RGB image to `coded` size by repeating its last column and row.
fn pad_to<'a>(
    rgb: &'a [u8],
    (width, height): (usize, usize),
    coded: (usize, usize),
) -> Cow<'a, [u8]> {
    if (width, height) == coded {
        return Cow::Borrowed(rgb);
    }
    let mut out = Vec::with_capacity(coded.0 * coded.1 * 3);
    for row in rgb.chunks_exact(width * 3) {
        out.extend_from_slice(row);
        for _ in width..coded.0 {
            out.extend_from_slice(&row[(width - 1) * 3..]);
        }
    }
    let last_row = out.len() - coded.0 * 3..out.len();
    for _ in height..coded.1 {
        out.extend_from_within(last_row.clone());
    }
    Cow::Owned(out)
}

/// The NAL units of an Annex B stream, without start codes (3 or 4 bytes) or trailing zeros.
fn split_annex_b(stream: &[u8]) -> Vec<&[u8]> {
    let mut nals = Vec::new();
    let mut start = None;
    let mut i = 0;
    while i + 2 < stream.len() {
        if stream[i..i + 3] == [0, 0, 1] {
            if let Some(start) = start {
                nals.push(&stream[start..i]);
            }
            i += 3;
            start = Some(i);
        } else {
            i += 1;
        }
    }
    if let Some(start) = start {
        nals.push(&stream[start..]);
    }
    nals.into_iter()
        .map(|nal| {
            let end = nal.iter().rposition(|&b| b != 0).map_or(0, |last| last + 1);
            &nal[..end]
        })
        .filter(|nal| !nal.is_empty())
        .collect()
}

/// An MP4 file in memory: `ftyp`, `mdat`, `moov`, one H.264 track.
fn mux(
    encoded: Encoded,
    (width, height): (usize, usize),
    timescale: u32,
) -> Result<Vec<u8>, ::mp4::Error> {
    let brand = |name: &[u8; 4]| FourCC { value: *name };
    let config = Mp4Config {
        major_brand: brand(b"isom"),
        minor_version: 512,
        compatible_brands: vec![
            brand(b"isom"),
            brand(b"iso2"),
            brand(b"avc1"),
            brand(b"mp41"),
        ],
        timescale: 1000,
    };
    let side = |n: usize| {
        u16::try_from(n).map_err(|_| ::mp4::Error::InvalidData("frame too large for avc1"))
    };
    let mut writer = Mp4Writer::write_start(Cursor::new(Vec::new()), &config)?;
    writer.add_track(&TrackConfig {
        track_type: TrackType::Video,
        timescale,
        language: "und".to_string(),
        media_conf: MediaConfig::AvcConfig(AvcConfig {
            width: side(width)?,
            height: side(height)?,
            seq_param_set: encoded.sps,
            pic_param_set: encoded.pps,
        }),
    })?;
    for (index, sample) in encoded.samples.into_iter().enumerate() {
        writer.write_sample(
            1,
            &Mp4Sample {
                start_time: index as u64 * u64::from(TICKS_PER_FRAME),
                duration: TICKS_PER_FRAME,
                rendering_offset: 0,
                is_sync: sample.is_sync,
                bytes: sample.bytes.into(),
            },
        )?;
    }
    writer.write_end()?;
    Ok(writer.into_writer().into_inner())
}

/// Moves the `moov` box of an `ftyp, mdat, moov` file in front of `mdat`, shifting the chunk
/// offsets by its size (the box keeps its size: offsets are fixed-width fields).
fn faststart(file: Vec<u8>) -> Result<Vec<u8>, ::mp4::Error> {
    let reader = Mp4Reader::read_header(Cursor::new(&file), file.len() as u64)?;
    let ftyp_size = reader.ftyp.box_size() as usize;
    let mut moov = reader.moov;
    let moov_size = moov.box_size();
    let moov_start = file
        .len()
        .checked_sub(moov_size as usize)
        .filter(|&start| start >= ftyp_size && file.get(start + 4..start + 8) == Some(b"moov"))
        .ok_or(::mp4::Error::InvalidData("moov is not the last box"))?;
    let overflow = || ::mp4::Error::InvalidData("chunk offsets overflow when moving moov first");
    for trak in &mut moov.traks {
        let stbl = &mut trak.mdia.minf.stbl;
        if let Some(stco) = &mut stbl.stco {
            let shift = u32::try_from(moov_size).map_err(|_| overflow())?;
            for offset in &mut stco.entries {
                *offset = offset.checked_add(shift).ok_or_else(overflow)?;
            }
        }
        if let Some(co64) = &mut stbl.co64 {
            for offset in &mut co64.entries {
                *offset = offset.checked_add(moov_size).ok_or_else(overflow)?;
            }
        }
    }
    let mut out = Vec::with_capacity(file.len());
    out.extend_from_slice(&file[..ftyp_size]);
    moov.write_box(&mut out)?;
    if out.len() != ftyp_size + moov_size as usize {
        return Err(::mp4::Error::InvalidData(
            "moov changed size when rewritten",
        ));
    }
    out.extend_from_slice(&file[ftyp_size..moov_start]);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{OutputFormat, WriteOptions, write_video};
    use vidcascade_test_support::{mean_abs_error, moving_square, read_mp4, red_centre_x};

    #[test]
    fn moving_square_round_trips_closely_with_scale() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("nested/clip.mp4");
        let video = moving_square(32, 8, 8.0);
        let format = write_video(&video, &path, &WriteOptions { scale: 2 })?;
        assert_eq!(format, OutputFormat::Mp4);

        let bytes = std::fs::read(&path)?;
        assert_eq!(&bytes[4..8], b"ftyp");
        let moov = bytes.windows(4).position(|w| w == b"moov");
        let mdat = bytes.windows(4).position(|w| w == b"mdat");
        assert!(moov < mdat, "moov must come first (faststart)");

        let back = read_mp4(&path)?;
        assert_eq!((back.width, back.height, back.frames.len()), (64, 64, 8));
        assert!((back.fps - 8.0).abs() < 1e-4, "fps {}", back.fps);
        let mut previous_x = f64::NEG_INFINITY;
        for (original, read) in video.frames.iter().zip(&back.frames) {
            let original = upscale(original, 32, 32, 3, 2);
            let error = mean_abs_error(&original, read);
            assert!(error < 6.0, "mean absolute error {error}");
            // The square moves 2 pixels a frame, 4 after scaling.
            let x = red_centre_x(read, 64);
            assert!(
                (x - red_centre_x(&original, 64)).abs() < 1.0,
                "square at {x}"
            );
            assert!(x > previous_x + 3.0, "square at {x}, was at {previous_x}");
            previous_x = x;
        }
        Ok(())
    }

    #[test]
    fn odd_sizes_are_padded_to_even() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("odd.mp4");
        let mut video = moving_square(32, 2, 24.0);
        // Crop to 31x17.
        video.frames = video
            .frames
            .iter()
            .map(|f| {
                f.chunks_exact(32 * 3)
                    .take(17)
                    .flat_map(|row| &row[..31 * 3])
                    .copied()
                    .collect()
            })
            .collect();
        (video.width, video.height) = (31, 17);
        write_video(&video, &path, &WriteOptions::default())?;
        let back = read_mp4(&path)?;
        assert_eq!((back.width, back.height, back.frames.len()), (32, 18, 2));
        assert!((back.fps - 24.0).abs() < 1e-3, "fps {}", back.fps);
        Ok(())
    }

    #[test]
    fn annex_b_splits_on_three_and_four_byte_start_codes() {
        let stream = [
            0, 0, 0, 1, 0x67, 1, 2, 0, 0, 1, 0x68, 3, 0, 0, 0, 1, 0x65, 4, 0,
        ];
        let nals = split_annex_b(&stream);
        assert_eq!(nals, vec![&[0x67, 1, 2][..], &[0x68, 3], &[0x65, 4]]);
    }

    #[test]
    fn padding_repeats_the_last_column_and_row() {
        // 2x1 red, blue -> 3x2.
        let (red, blue) = ([255, 0, 0], [0, 0, 255]);
        let image = [red, blue].concat();
        let padded = pad_to(&image, (2, 1), (3, 2));
        assert_eq!(padded.as_ref(), [red, blue, blue, red, blue, blue].concat());
        assert_eq!(
            (coded_side(31), coded_side(32), coded_side(3)),
            (32, 32, 16)
        );
    }

    #[test]
    fn tiny_videos_are_padded_to_16() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("tiny.mp4");
        let video = moving_square(8, 2, 8.0);
        write_video(&video, &path, &WriteOptions::default())?;
        let back = read_mp4(&path)?;
        assert_eq!((back.width, back.height, back.frames.len()), (16, 16, 2));
        Ok(())
    }

    #[test]
    fn unwritable_paths_are_named_with_the_os_error() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("taken.mp4");
        std::fs::create_dir(&path)?;
        let err = write_video(&moving_square(8, 2, 8.0), &path, &WriteOptions::default())
            .expect_err("a folder is not writable as a file");
        let message = err.to_string();
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains("os error"), "{message}");

        let err = read_mp4(&dir.path().join("missing.mp4")).expect_err("missing");
        assert!(err.to_string().contains("missing.mp4"), "{err}");
        Ok(())
    }
}
