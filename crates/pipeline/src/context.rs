//! Known frames between clips and from an init image: what each stage of a clip continues from.
//!
//! - **Image-to-video**: `init_image_png` is decoded ([`decode_init_image`]: 8-bit RGB or RGBA
//!   PNG, alpha ignored, each side 1..=[`MAX_INIT_IMAGE_SIDE`]) and resized to every stage's
//!   output size by area averaging ([`resize_area`]: each output pixel is the mean of the image
//!   area it covers, fractional pixels weighted by their overlap — a box filter for shrinking, a
//!   nearest-like blend for enlarging); stage `i` of the first clip gets it as its frame 0.
//! - **Stories**: a clip after the first continues the previous one. Its base stage gets the
//!   previous clip's last `k` base frames ([`Plan::overlap`](crate::Plan::overlap)) as its first
//!   `k`, and a stage at `r` times the base's frame rate the frames from the same instants on,
//!   `r (k - 1) + 1` of them ([`overlap_frames`]), from its own output of the previous clip; so
//!   every stage continues at its own resolution and the final video has no seam. The clip's
//!   first `r k` final frames cover the previous clip's last instants; the frames after them are
//!   new ([`new_frames_from`]).

use vidcascade_spec::Video;

use crate::PipelineError;

/// Largest side of an init image, in pixels.
pub const MAX_INIT_IMAGE_SIDE: usize = 4096;

/// Decodes `init_image_png` into a one-frame video at its own size.
pub fn decode_init_image(png_bytes: &[u8]) -> Result<Video, PipelineError> {
    let invalid = |reason: String| PipelineError::invalid("init_image_png", reason);
    let mut decoder = png::Decoder::new(std::io::Cursor::new(png_bytes));
    decoder.set_transformations(png::Transformations::EXPAND);
    let mut reader = decoder
        .read_info()
        .map_err(|e| invalid(format!("is not a readable PNG: {e}")))?;
    let (width, height) = (reader.info().width as usize, reader.info().height as usize);
    if width == 0 || height == 0 || width > MAX_INIT_IMAGE_SIDE || height > MAX_INIT_IMAGE_SIDE {
        return Err(invalid(format!(
            "is {width}x{height}; each side must be 1..={MAX_INIT_IMAGE_SIDE} pixels"
        )));
    }
    let (colour, depth) = reader.output_color_type();
    if depth != png::BitDepth::Eight
        || !matches!(colour, png::ColorType::Rgb | png::ColorType::Rgba)
    {
        return Err(invalid(format!(
            "is {colour:?} at {depth:?} bits; an 8-bit RGB or RGBA PNG is needed"
        )));
    }
    let mut buffer = vec![0; reader.output_buffer_size().unwrap_or(0)];
    let frame = reader
        .next_frame(&mut buffer)
        .map_err(|e| invalid(format!("could not be decoded: {e}")))?;
    let channels = if colour == png::ColorType::Rgba { 4 } else { 3 };
    let rgb: Vec<u8> = buffer[..frame.buffer_size()]
        .chunks_exact(channels)
        .flat_map(|p| [p[0], p[1], p[2]])
        .collect();
    Ok(Video {
        width,
        height,
        fps: 1.0,
        frames: vec![rgb],
    })
}

/// How much of the pixel span `[i, i + 1)` of a side of `to` pixels overlaps, in source
/// pixels of a side of `from`: `(first source pixel, weights)`.
fn spans(from: usize, to: usize) -> Vec<(usize, Vec<f64>)> {
    let scale = from as f64 / to as f64;
    (0..to)
        .map(|i| {
            let (start, end) = (i as f64 * scale, (i + 1) as f64 * scale);
            let first = start.floor() as usize;
            let last = (end.ceil() as usize).min(from);
            let weights = (first..last)
                .map(|s| (end.min(s as f64 + 1.0) - start.max(s as f64)).max(0.0) / scale)
                .collect();
            (first, weights)
        })
        .collect()
}

/// Resizes one RGB8 frame of `width x height` to `new_width x new_height` by area averaging.
pub fn resize_area(
    frame: &[u8],
    (width, height): (usize, usize),
    (new_width, new_height): (usize, usize),
) -> Vec<u8> {
    let (xs, ys) = (spans(width, new_width), spans(height, new_height));
    let mut out = Vec::with_capacity(new_width * new_height * 3);
    for (y0, wy) in &ys {
        for (x0, wx) in &xs {
            let mut sum = [0f64; 3];
            for (dy, a) in wy.iter().enumerate() {
                for (dx, b) in wx.iter().enumerate() {
                    let p = ((y0 + dy) * width + x0 + dx) * 3;
                    for (c, s) in sum.iter_mut().enumerate() {
                        *s += a * b * f64::from(frame[p + c]);
                    }
                }
            }
            out.extend(sum.map(|s| s.round().clamp(0.0, 255.0) as u8));
        }
    }
    out
}

/// The init image as a stage's known first frame, at `width x height` and `fps`.
pub fn image_context(image: &Video, width: usize, height: usize, fps: f32) -> Video {
    let frames = image
        .frames
        .first()
        .map(|f| vec![resize_area(f, (image.width, image.height), (width, height))])
        .unwrap_or_default();
    Video {
        width,
        height,
        fps,
        frames,
    }
}

/// Known leading frames a stage at `ratio` times the base's frame rate gets for a `k`-frame
/// base overlap.
pub fn overlap_frames(k: usize, ratio: usize) -> usize {
    ratio * k.saturating_sub(1) + 1
}

/// A stage's known frames for the next clip: its output of the previous clip, `previous`, from
/// the instant of the base's frame `base_frames - k` on ([`overlap_frames`] of them).
pub fn continuation_context(previous: &Video, base_frames: usize, k: usize) -> Video {
    let ratio = (previous.frames.len() / base_frames.max(1)).max(1);
    let start = ratio * base_frames.saturating_sub(k);
    let frames = previous
        .frames
        .iter()
        .skip(start)
        .take(overlap_frames(k, ratio))
        .cloned()
        .collect();
    Video {
        frames,
        ..previous.clone()
    }
}

/// The first final frame of a continuing clip that the previous clip does not already cover:
/// `ratio k` for a final video at `ratio` times the base's frame rate (0 for the first clip or
/// independent clips, `k` = 0).
pub fn new_frames_from(final_frames: usize, base_frames: usize, k: usize) -> usize {
    (final_frames / base_frames.max(1)) * k
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png_of(width: u32, height: u32, colour: png::ColorType, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        {
            let mut encoder = png::Encoder::new(&mut out, width, height);
            encoder.set_color(colour);
            encoder.set_depth(png::BitDepth::Eight);
            let mut writer = encoder.write_header().expect("header");
            writer.write_image_data(data).expect("data");
        }
        out
    }

    #[test]
    fn rgb_and_rgba_pngs_decode_and_everything_else_names_the_field() {
        let rgb = decode_init_image(&png_of(2, 1, png::ColorType::Rgb, &[1, 2, 3, 4, 5, 6]))
            .expect("rgb");
        assert_eq!(
            (rgb.width, rgb.height, rgb.frames[0].clone()),
            (2, 1, vec![1, 2, 3, 4, 5, 6])
        );
        let rgba =
            decode_init_image(&png_of(1, 1, png::ColorType::Rgba, &[9, 8, 7, 0])).expect("rgba");
        assert_eq!(rgba.frames[0], vec![9, 8, 7]);
        for (bytes, says) in [
            (b"not a png".to_vec(), "not a readable PNG"),
            (
                png_of(1, 1, png::ColorType::Grayscale, &[7]),
                "8-bit RGB or RGBA",
            ),
            (
                png_of(4097, 1, png::ColorType::Rgb, &vec![0; 4097 * 3]),
                "each side must be 1..=4096",
            ),
        ] {
            match decode_init_image(&bytes) {
                Err(PipelineError::InvalidArgument { field, reason }) => {
                    assert_eq!(field, "init_image_png");
                    assert!(reason.contains(says), "{reason}");
                }
                other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
            }
        }
    }

    #[test]
    fn area_resizing_averages_boxes_and_keeps_flat_colours() {
        // 4x2 -> 2x1: each output pixel is the mean of a 2x2 box.
        let frame: Vec<u8> = [0u8, 100, 200, 40]
            .iter()
            .cycle()
            .take(8)
            .flat_map(|&v| [v, v, v])
            .collect();
        assert_eq!(
            resize_area(&frame, (4, 2), (2, 1)),
            vec![50, 50, 50, 120, 120, 120]
        );
        // Any size to any size: a flat image stays flat.
        let flat = vec![77u8; 5 * 3 * 3];
        assert!(resize_area(&flat, (5, 3), (7, 2)).iter().all(|&v| v == 77));
        assert!(resize_area(&flat, (5, 3), (2, 2)).iter().all(|&v| v == 77));
    }

    #[test]
    fn a_continuation_takes_the_overlap_from_each_stage_at_its_own_rate() {
        let clip = |frames: usize| Video {
            width: 1,
            height: 1,
            fps: 1.0,
            frames: (0..frames).map(|f| vec![f as u8; 3]).collect(),
        };
        // Base: 8 frames, k = 2: its frames 6 and 7.
        let base = continuation_context(&clip(8), 8, 2);
        assert_eq!(base.frames, vec![vec![6; 3], vec![7; 3]]);
        // 16 frames (twice the base rate): frames 12, 13, 14 (base instants 6, 6.5, 7).
        let high = continuation_context(&clip(16), 8, 2);
        assert_eq!(high.frames, vec![vec![12; 3], vec![13; 3], vec![14; 3]]);
        assert_eq!(new_frames_from(16, 8, 2), 4);
        assert_eq!(new_frames_from(16, 8, 0), 0);
    }
}
