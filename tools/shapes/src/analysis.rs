//! Reading a video of the shapes world back with plain image processing: which colour is the
//! background, which is the shape, which shape it is, and which way it moves.
//!
//! Every pixel is assigned to the nearest palette colour. The background is the most common
//! colour on the frame borders; the shape colour is the most common other colour; the shape's mask
//! in each frame gives its centroid (the track, whose overall displacement is the direction) and
//! the measurements of [`crate::geometry`] that say which shape it is.

use serde::Serialize;

use crate::geometry::ShapeMeasure;
use crate::world::{Colour, Motion, ShapeKind};

/// What was read from a video.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Analysis {
    /// Most common border colour.
    pub background: Option<Colour>,
    /// Most common non-background colour.
    pub colour: Option<Colour>,
    /// Shape class from the median measurements, if the shape is seen whole in some frame.
    pub shape: Option<ShapeKind>,
    /// Direction of the centroid's overall displacement, if it moved at least 1/8 of the frame.
    pub motion: Option<Motion>,
    /// Median fill ratio of the shape in its bounding box (also in `measure`; kept for readers
    /// of older reports).
    pub fill_ratio: Option<f64>,
    /// Median measurements of the shape over the frames where it is seen whole.
    pub measure: Option<ShapeMeasure>,
    /// Centroid per frame in pixels `(x, y)`; `None` where the shape is not visible.
    pub track: Vec<Option<(f64, f64)>>,
}

/// The palette colour nearest the RGB pixel `p`.
pub fn nearest_colour(p: &[u8]) -> Colour {
    let mut best = Colour::Black;
    let mut best_d = i32::MAX;
    for c in Colour::ALL {
        let rgb = c.rgb();
        let d: i32 = (0..3).map(|i| (p[i] as i32 - rgb[i] as i32).pow(2)).sum();
        if d < best_d {
            best_d = d;
            best = c;
        }
    }
    best
}

fn index(c: Colour) -> usize {
    Colour::ALL.iter().position(|&x| x == c).unwrap_or(0)
}

/// Analyses RGB8 frames of `height x width`.
pub fn analyse(frames: &[Vec<u8>], height: usize, width: usize) -> Analysis {
    let classes: Vec<Vec<Colour>> = frames
        .iter()
        .map(|f| f.chunks(3).map(nearest_colour).collect())
        .collect();
    let background = background_colour(&classes, height, width);
    let colour = shape_colour(&classes, background, height, width);
    let (track, measures) = match colour {
        Some(colour) => track_shape(&classes, colour, height, width),
        None => (vec![None; classes.len()], Vec::new()),
    };
    let measure = ShapeMeasure::median(&measures);
    let shape = measure.map(|m| m.shape());
    let motion = direction(&track, height.min(width) as f64 / 8.0);
    Analysis {
        background,
        colour,
        shape,
        motion,
        fill_ratio: measure.map(|m| m.fill_ratio),
        measure,
        track,
    }
}

/// The most common colour on the frames' borders.
fn background_colour(classes: &[Vec<Colour>], height: usize, width: usize) -> Option<Colour> {
    let mut border = [0usize; 9];
    for frame in classes {
        for i in 0..height {
            for j in 0..width {
                if i == 0 || j == 0 || i + 1 == height || j + 1 == width {
                    border[index(frame[i * width + j])] += 1;
                }
            }
        }
    }
    argmax(&border).map(|i| Colour::ALL[i])
}

/// The most common colour other than `background`, if it covers at least 1% of the pixels.
fn shape_colour(
    classes: &[Vec<Colour>],
    background: Option<Colour>,
    height: usize,
    width: usize,
) -> Option<Colour> {
    let mut others = [0usize; 9];
    for frame in classes {
        for &c in frame {
            if Some(c) != background {
                others[index(c)] += 1;
            }
        }
    }
    // A few stray pixels are not a shape: need at least 1% of one frame's pixels per frame.
    let min_pixels = (classes.len() * height * width / 100).max(1);
    argmax(&others)
        .filter(|&i| others[i] >= min_pixels)
        .map(|i| Colour::ALL[i])
}

/// The centroid of `colour` in each frame (`None` under 2 pixels), and the shape's measurements
/// in each frame where it is seen whole.
fn track_shape(
    classes: &[Vec<Colour>],
    colour: Colour,
    height: usize,
    width: usize,
) -> (Vec<Option<(f64, f64)>>, Vec<ShapeMeasure>) {
    let mut track = Vec::with_capacity(classes.len());
    let mut measures = Vec::new();
    for frame in classes {
        let mask: Vec<bool> = frame.iter().map(|&c| c == colour).collect();
        let (mut n, mut sx, mut sy) = (0usize, 0f64, 0f64);
        for (k, _) in mask.iter().enumerate().filter(|(_, set)| **set) {
            n += 1;
            sx += (k % width) as f64 + 0.5;
            sy += (k / width) as f64 + 0.5;
        }
        if n < 2 {
            track.push(None);
            continue;
        }
        track.push(Some((sx / n as f64, sy / n as f64)));
        measures.extend(ShapeMeasure::of_mask(&mask, height, width));
    }
    (track, measures)
}

fn argmax(counts: &[usize]) -> Option<usize> {
    counts
        .iter()
        .enumerate()
        .filter(|&(_, &n)| n > 0)
        .max_by_key(|&(_, &n)| n)
        .map(|(i, _)| i)
}

/// Direction of the displacement between the mean centroid of the first and last quarter of the
/// visible track; `None` if it moved less than `min_distance` pixels.
fn direction(track: &[Option<(f64, f64)>], min_distance: f64) -> Option<Motion> {
    let visible: Vec<(f64, f64)> = track.iter().flatten().copied().collect();
    if visible.len() < 2 {
        return None;
    }
    let quarter = (visible.len() / 4).max(1);
    let mean = |points: &[(f64, f64)]| {
        let n = points.len() as f64;
        (
            points.iter().map(|p| p.0).sum::<f64>() / n,
            points.iter().map(|p| p.1).sum::<f64>() / n,
        )
    };
    let start = mean(&visible[..quarter]);
    let end = mean(&visible[visible.len() - quarter..]);
    let (dx, dy) = (end.0 - start.0, end.1 - start.1);
    if dx.abs().max(dy.abs()) < min_distance {
        return None;
    }
    Some(if dx.abs() >= dy.abs() {
        if dx < 0.0 {
            Motion::Left
        } else {
            Motion::Right
        }
    } else if dy < 0.0 {
        Motion::Up
    } else {
        Motion::Down
    })
}

/// Peak signal-to-noise ratio in dB between two equally sized RGB8 videos.
pub fn psnr(a: &[Vec<u8>], b: &[Vec<u8>]) -> f64 {
    let (mut sum, mut n) = (0f64, 0usize);
    for (fa, fb) in a.iter().zip(b) {
        for (&x, &y) in fa.iter().zip(fb) {
            sum += (x as f64 - y as f64).powi(2);
            n += 1;
        }
    }
    if n == 0 {
        return 0.0;
    }
    let mse = sum / n as f64;
    if mse == 0.0 {
        return f64::INFINITY;
    }
    10.0 * (255.0f64 * 255.0 / mse).log10()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::{Placement, render_rgb8};
    use crate::world::{Scene, all_scenes};

    #[test]
    fn rendered_scenes_are_read_back_exactly() {
        let mut wrong = Vec::new();
        for scene in all_scenes().into_iter().step_by(7) {
            let frames = render_rgb8(&scene, &Placement::CENTRED, 16, 32, 32);
            let a = analyse(&frames, 32, 32);
            if a.colour != Some(scene.colour)
                || a.background != Some(scene.background)
                || a.motion != Some(scene.motion)
                || a.shape != Some(scene.shape)
            {
                wrong.push((scene, a.colour, a.background, a.motion, a.shape, a.measure));
            }
        }
        assert!(wrong.is_empty(), "{wrong:?}");
    }

    #[test]
    fn a_flat_video_has_no_shape_and_no_motion() {
        let frame = vec![128u8; 16 * 16 * 3];
        let a = analyse(&vec![frame; 4], 16, 16);
        assert_eq!(a.background, Some(Colour::Gray));
        assert_eq!(a.colour, None);
        assert_eq!(a.motion, None);
    }

    #[test]
    fn psnr_is_infinite_for_equal_videos_and_finite_otherwise() {
        let s = Scene {
            colour: Colour::Blue,
            shape: ShapeKind::Circle,
            motion: Motion::Up,
            background: Colour::White,
        };
        let a = render_rgb8(&s, &Placement::CENTRED, 2, 16, 16);
        assert!(psnr(&a, &a).is_infinite());
        let mut b = a.clone();
        b[0][0] = b[0][0].wrapping_add(10);
        assert!(psnr(&a, &b) > 40.0);
    }
}
