//! Decoders for the files `vidcascade-media` writes: an animated GIF, an H.264 MP4 and a folder
//! of PNG frames (or one PNG image), read back into RGB8 [`Video`]s.
//!
//! Only tests read videos — to check that what the writers wrote is what a viewer will show — so
//! the readers live here rather than in the shipped library. They decode with the same libraries
//! a player would use (`gif`, `png`, OpenH264 via `openh264`, `mp4`), and every error names the
//! file (or folder) it is about, so a failing test says which output was wrong.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use gif::{ColorOutput, DecodeOptions, DisposalMethod};
use mp4::{MediaType, Mp4Reader};
use openh264::decoder::{DecodedYUV, Decoder};
use openh264::formats::YUVSource;
use png::{BitDepth, ColorType, Transformations};
use vidcascade_spec::Video;

/// `"<path>: cannot <what>"`, the context every error of this module carries.
fn cannot(path: &Path, what: &str) -> String {
    format!("{}: cannot {what}", path.display())
}

/// The file name of frame `index` in a PNG frames folder (as the media writer names them).
fn frame_path(dir: &Path, index: usize) -> PathBuf {
    dir.join(format!("frame_{index:04}.png"))
}

/// Reads an animated GIF into RGB8 frames at the GIF's full size (the logical screen), with
/// `fps` from the mean frame delay (0 when every delay is 0).
///
/// Frames are composited the way a viewer shows them: a frame may cover only part of the screen
/// and have transparent pixels, which show the previous picture; disposal to background clears
/// to black (GIF backgrounds are transparent in browsers, and the videos have no alpha).
pub fn read_gif(path: &Path) -> anyhow::Result<Video> {
    let file = File::open(path).with_context(|| cannot(path, "open the file"))?;
    let mut options = DecodeOptions::new();
    options.set_color_output(ColorOutput::RGBA);
    let mut decoder = options
        .read_info(BufReader::new(file))
        .with_context(|| cannot(path, "read GIF"))?;
    let (width, height) = (usize::from(decoder.width()), usize::from(decoder.height()));
    let mut canvas = vec![0u8; width * height * 3];
    let mut frames = Vec::new();
    let mut total_delay_cs = 0u64;
    while let Some(frame) = decoder
        .read_next_frame()
        .with_context(|| cannot(path, "read GIF"))?
    {
        total_delay_cs += u64::from(frame.delay);
        let saved = (frame.dispose == DisposalMethod::Previous).then(|| canvas.clone());
        let (left, top) = (usize::from(frame.left), usize::from(frame.top));
        let (frame_width, frame_height) = (usize::from(frame.width), usize::from(frame.height));
        let rows = frame
            .buffer
            .chunks_exact(frame_width * 4)
            .take(frame_height);
        for (y, row) in (top..height).zip(rows) {
            for (x, rgba) in (left..width).zip(row.chunks_exact(4)) {
                if rgba[3] != 0 {
                    let i = (y * width + x) * 3;
                    canvas[i..i + 3].copy_from_slice(&rgba[..3]);
                }
            }
        }
        frames.push(canvas.clone());
        match (frame.dispose, saved) {
            (DisposalMethod::Previous, Some(saved)) => canvas = saved,
            (DisposalMethod::Background, _) => {
                for y in top..(top + frame_height).min(height) {
                    let start = (y * width + left.min(width)) * 3;
                    let end = (y * width + (left + frame_width).min(width)) * 3;
                    canvas[start..end].fill(0);
                }
            }
            _ => {}
        }
    }
    if frames.is_empty() {
        bail!("{}: the GIF has no frames", cannot(path, "read GIF"));
    }
    let fps = if total_delay_cs == 0 {
        0.0
    } else {
        (frames.len() as f64 * 100.0 / total_delay_cs as f64) as f32
    };
    Ok(Video {
        width,
        height,
        fps,
        frames,
    })
}

/// Reads the first H.264 track of an MP4 into RGB8 frames (BT.601 limited range, as the media
/// writer encodes), with `fps` from the track's timing. The size is the decoded picture's, so a
/// video written with an odd side (or one under 16) comes back padded to the coded size.
pub fn read_mp4(path: &Path) -> anyhow::Result<Video> {
    let file = File::open(path).with_context(|| cannot(path, "open the file"))?;
    let size = file
        .metadata()
        .with_context(|| cannot(path, "read the file size"))?
        .len();
    let mut mp4 = Mp4Reader::read_header(BufReader::new(file), size)
        .with_context(|| cannot(path, "read MP4"))?;
    let track = H264Track::find(&mp4, path)?;
    let (pictures, total_ticks) = decode_track(&mut mp4, &track, path)?;
    let Some(&(size, _)) = pictures.first() else {
        return Err(mp4_error(path, "the track has no decodable frames"));
    };
    if pictures.iter().any(|(other, _)| *other != size) {
        return Err(mp4_error(path, "the picture size changes mid-stream"));
    }
    let (width, height) = size;
    let frames: Vec<Vec<u8>> = pictures.into_iter().map(|(_, rgb)| rgb).collect();
    let fps = if total_ticks == 0 {
        0.0
    } else {
        (f64::from(track.timescale) * frames.len() as f64 / total_ticks as f64) as f32
    };
    Ok(Video {
        width,
        height,
        fps,
        frames,
    })
}

/// `"<path>: cannot read MP4: <reason>"`.
fn mp4_error(path: &Path, reason: &str) -> anyhow::Error {
    anyhow::anyhow!("{}: {reason}", cannot(path, "read MP4"))
}

/// What decoding an MP4's H.264 track needs from its header.
struct H264Track {
    track_id: u32,
    timescale: u32,
    sample_count: u32,
    /// Bytes of each NAL unit's length prefix in a sample.
    length_size: usize,
    /// The `avcC` box's SPS and PPS, in Annex B form.
    parameter_sets: Vec<u8>,
}

impl H264Track {
    /// The first (lowest id) H.264 track of `mp4`.
    fn find(mp4: &Mp4Reader<BufReader<File>>, path: &Path) -> anyhow::Result<Self> {
        let track = mp4
            .tracks()
            .values()
            .filter(|t| matches!(t.media_type(), Ok(MediaType::H264)))
            .min_by_key(|t| t.track_id())
            .ok_or_else(|| mp4_error(path, "no H.264 video track"))?;
        let avcc = &track
            .trak
            .mdia
            .minf
            .stbl
            .stsd
            .avc1
            .as_ref()
            .ok_or_else(|| mp4_error(path, "the H.264 track has no avc1 sample entry"))?
            .avcc;
        let mut parameter_sets = Vec::new();
        for nal in avcc
            .sequence_parameter_sets
            .iter()
            .chain(&avcc.picture_parameter_sets)
        {
            parameter_sets.extend_from_slice(&[0, 0, 0, 1]);
            parameter_sets.extend_from_slice(&nal.bytes);
        }
        Ok(Self {
            track_id: track.track_id(),
            timescale: track.timescale(),
            sample_count: track.sample_count(),
            length_size: usize::from(avcc.length_size_minus_one & 3) + 1,
            parameter_sets,
        })
    }
}

/// Decodes every sample of `track`: the pictures in order, and the track's duration in ticks.
fn decode_track(
    mp4: &mut Mp4Reader<BufReader<File>>,
    track: &H264Track,
    path: &Path,
) -> anyhow::Result<(Vec<Picture>, u64)> {
    let mut decoder = Decoder::new().with_context(|| cannot(path, "read H.264"))?;
    let mut pictures = Vec::new();
    let mut total_ticks = 0u64;
    for sample_id in 1..=track.sample_count {
        let sample = mp4
            .read_sample(track.track_id, sample_id)
            .with_context(|| cannot(path, "read MP4"))?
            .ok_or_else(|| mp4_error(path, "a sample listed in the index is missing"))?;
        total_ticks += u64::from(sample.duration);
        // The parameter sets live in the avcC box; the decoder wants them in-band, once.
        let mut annex_b = if sample_id == 1 {
            track.parameter_sets.clone()
        } else {
            Vec::new()
        };
        to_annex_b(&sample.bytes, track.length_size, &mut annex_b)
            .map_err(|reason| mp4_error(path, reason))?;
        if let Some(yuv) = decoder
            .decode(&annex_b)
            .with_context(|| cannot(path, "read H.264"))?
        {
            pictures.push(to_rgb(&yuv));
        }
    }
    let remaining = decoder
        .flush_remaining()
        .with_context(|| cannot(path, "read H.264"))?;
    pictures.extend(remaining.iter().map(to_rgb));
    Ok((pictures, total_ticks))
}

/// A decoded picture's `(width, height)` and RGB8 pixels.
type Picture = ((usize, usize), Vec<u8>);

/// A decoded picture as a [`Picture`].
fn to_rgb(yuv: &DecodedYUV<'_>) -> Picture {
    let (width, height) = yuv.dimensions();
    let mut rgb = vec![0; width * height * 3];
    yuv.write_rgb8(&mut rgb);
    ((width, height), rgb)
}

/// Appends the length-prefixed NAL units of an MP4 sample to `out` with 4-byte start codes.
fn to_annex_b(sample: &[u8], length_size: usize, out: &mut Vec<u8>) -> Result<(), &'static str> {
    let mut rest = sample;
    while !rest.is_empty() {
        if rest.len() < length_size {
            return Err("a sample ends inside a NAL length");
        }
        let (len, tail) = rest.split_at(length_size);
        let len = len.iter().fold(0usize, |n, &b| (n << 8) | usize::from(b));
        if tail.len() < len {
            return Err("a NAL unit runs past the end of its sample");
        }
        out.extend_from_slice(&[0, 0, 0, 1]);
        out.extend_from_slice(&tail[..len]);
        rest = &tail[len..];
    }
    Ok(())
}

/// Reads one PNG image, any 8- or 16-bit kind (grey, palette, RGB, with or without alpha), as
/// RGB8: 16-bit samples are cut to 8, alpha is dropped. Returns `(width, height, rgb)`, the same
/// layout `vidcascade_media::write_png` takes.
pub fn read_png(path: &Path) -> anyhow::Result<(usize, usize, Vec<u8>)> {
    let png_error = |reason: String| anyhow::anyhow!("{}: {reason}", cannot(path, "read PNG"));
    let file = File::open(path).with_context(|| cannot(path, "open the file"))?;
    let mut decoder = png::Decoder::new(BufReader::new(file));
    decoder.set_transformations(Transformations::normalize_to_color8());
    let mut reader = decoder
        .read_info()
        .with_context(|| cannot(path, "read PNG"))?;
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| png_error("the image is too large to decode in memory".into()))?;
    let mut buffer = vec![0; size];
    let info = reader
        .next_frame(&mut buffer)
        .with_context(|| cannot(path, "read PNG"))?;
    let (width, height) = (info.width as usize, info.height as usize);
    let channels = info.color_type.samples();
    let samples: Vec<u8> = buffer
        .chunks_exact(info.line_size)
        .take(height)
        .flat_map(|row| &row[..width * channels])
        .copied()
        .collect();
    let rgb: Vec<u8> = match info.color_type {
        ColorType::Rgb => samples,
        ColorType::Rgba => samples
            .chunks_exact(4)
            .flat_map(|p| [p[0], p[1], p[2]])
            .collect(),
        ColorType::Grayscale => samples.iter().flat_map(|&v| [v, v, v]).collect(),
        ColorType::GrayscaleAlpha => samples
            .chunks_exact(2)
            .flat_map(|p| [p[0], p[0], p[0]])
            .collect(),
        ColorType::Indexed => {
            return Err(png_error("the palette was not expanded to RGB".into()));
        }
    };
    if info.bit_depth != BitDepth::Eight || rgb.len() != width * height * 3 {
        return Err(png_error(format!(
            "expected 8-bit samples after conversion, got {:?} {:?}",
            info.color_type, info.bit_depth
        )));
    }
    Ok((width, height, rgb))
}

/// Reads a folder of PNG frames as the media writer writes it (`frame_0000.png`,
/// `frame_0001.png`, ... in order, up to the first missing number). The folder stores no frame
/// rate, so `fps` is 0; set it on the result if you know it. Every frame must have the size of
/// the first.
pub fn read_png_frames(dir: &Path) -> anyhow::Result<Video> {
    if !dir.is_dir() {
        bail!(
            "{}: not a folder",
            cannot(dir, "read the PNG frames folder")
        );
    }
    let mut frames = Vec::new();
    let mut size = None;
    while frame_path(dir, frames.len()).is_file() {
        let path = frame_path(dir, frames.len());
        let (width, height, rgb) = read_png(&path)?;
        match size {
            None => size = Some((width, height)),
            Some(first) if first != (width, height) => {
                bail!(
                    "{}: frame is {width}x{height}, but frame_0000.png is {}x{}",
                    cannot(&path, "read PNG"),
                    first.0,
                    first.1
                );
            }
            Some(_) => {}
        }
        frames.push(rgb);
    }
    let Some((width, height)) = size else {
        bail!(
            "{}: the folder has no frame_0000.png",
            cannot(dir, "read PNG frames")
        );
    };
    Ok(Video {
        width,
        height,
        fps: 0.0,
        frames,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_files_are_named() {
        let err = read_gif(Path::new("/nonexistent/clip.gif")).expect_err("missing");
        assert!(err.to_string().contains("/nonexistent/clip.gif"), "{err}");
    }

    #[test]
    fn length_prefixed_samples_become_annex_b() {
        let mut out = Vec::new();
        to_annex_b(&[0, 0, 0, 2, 0x65, 9], 4, &mut out).expect("well formed");
        assert_eq!(out, [0, 0, 0, 1, 0x65, 9]);
        assert!(to_annex_b(&[0, 0, 0, 5, 0x65], 4, &mut out).is_err());
    }
}
