//! Synthetic clips and the measures tests use to compare them with what came back from a file.
//!
//! A lossy format (a quantised GIF, H.264) cannot be compared byte for byte, so tests compare
//! within a tolerance ([`mean_abs_error`]) and check that motion survived ([`red_centre_x`]) on a
//! clip whose content is known exactly ([`moving_square`]).

use vidcascade_spec::Video;

/// The shared test clip: `frames` frames of `size x size`, black with a red square of side
/// `size / 4` that moves right 2 pixels a frame, starting at (2, size / 4) and clipped at the
/// right edge.
pub fn moving_square(size: usize, frames: usize, fps: f32) -> Video {
    let side = size / 4;
    let frames = (0..frames)
        .map(|f| {
            let mut frame = vec![0u8; size * size * 3];
            for y in side..2 * side {
                for x in (2 + 2 * f)..(2 + 2 * f + side).min(size) {
                    frame[(y * size + x) * 3] = 255;
                }
            }
            frame
        })
        .collect();
    Video {
        width: size,
        height: size,
        fps,
        frames,
    }
}

/// Mean absolute difference per byte between two equally sized frames (0 = identical, 255 =
/// opposite).
///
/// # Panics
///
/// If the frames differ in length: that is a size mismatch, not an error to average.
pub fn mean_abs_error(a: &[u8], b: &[u8]) -> f64 {
    assert_eq!(a.len(), b.len());
    let total: u64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| u64::from(x.abs_diff(y)))
        .sum();
    total as f64 / a.len() as f64
}

/// The x of the centre of mass of the "red" pixels (R above 160, G and B under 96) of an RGB8
/// frame `width` pixels wide: where [`moving_square`]'s square is, even after lossy coding.
///
/// # Panics
///
/// If the frame has no red pixel at all (the square was lost).
pub fn red_centre_x(frame: &[u8], width: usize) -> f64 {
    let (mut sum, mut count) = (0.0, 0.0);
    for (i, px) in frame.chunks_exact(3).enumerate() {
        if px[0] > 160 && px[1] < 96 && px[2] < 96 {
            sum += (i % width) as f64;
            count += 1.0;
        }
    }
    assert!(count > 0.0, "no red pixels in the frame");
    sum / count
}
