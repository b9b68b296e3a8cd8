//! Which shape a mask is: two measurements that survive blur, with thresholds taken halfway
//! between the world's ideal shapes.
//!
//! Why not the fill ratio alone (area over bounding box: 1 square, pi/4 circle, 1/2 triangle):
//! any softening of the outline pulls every shape towards pi/4. A triangle rendered at 64x64 and
//! blurred by a sigma of 2 pixels loses its pointed apex first and fills 0.65-0.70 of its box,
//! a circle's reading (tests below); a square whose corners round off goes the same way. An SR
//! stage's output is exactly such a softened shape. The two measurements used instead:
//!
//! - **centroid offset**: how far below the middle of its bounding box the shape's centroid sits,
//!   in box heights. The world's triangles point up (apex on top, base below), so the centroid
//!   lies 1/6 of the height below the middle; circles and squares are symmetric (0). Blur is
//!   symmetric, so it barely moves. Threshold 1/12.
//! - **diagonal ratio**: the shape's width along the two diagonals over its width along the axes.
//!   A square's diagonal is sqrt(2) its side; a circle's width is the same every way (1).
//!   Threshold (1 + sqrt 2) / 2: a square with rounded corners still reads as a square while its
//!   corner radius is under half its half-side.
//!
//! Both are measured on the largest 4-connected part of the mask, so stray pixels of the shape's
//! colour elsewhere do not stretch the extents.

use serde::Serialize;

use crate::world::ShapeKind;

/// Fewest pixels a shape's part must have to be measured.
const MIN_PIXELS: usize = 6;
/// Centroid offset above which a shape reads as a (point-up) triangle: half the ideal 1/6.
pub const TRIANGLE_OFFSET: f64 = 1.0 / 12.0;
/// Diagonal ratio above which a symmetric shape reads as a square: halfway from 1 to sqrt 2.
pub const SQUARE_DIAGONAL_RATIO: f64 = (1.0 + std::f64::consts::SQRT_2) / 2.0;

/// The measurements of one shape in one frame.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ShapeMeasure {
    /// Pixels over bounding-box pixels.
    pub fill_ratio: f64,
    /// Centroid below the bounding box's middle, in box heights (negative: above).
    pub centroid_offset: f64,
    /// Mean width along the diagonals over mean width along the axes.
    pub diagonal_ratio: f64,
}

impl ShapeMeasure {
    /// Measures the largest part of `mask` (`height x width`, row-major), if it has at least
    /// [`MIN_PIXELS`] pixels and does not touch the frame's border (a shape cut by the border
    /// has the wrong extents).
    pub fn of_mask(mask: &[bool], height: usize, width: usize) -> Option<Self> {
        let part = largest_part(mask, height, width);
        if part.len() < MIN_PIXELS {
            return None;
        }
        let extent = Extent::of(&part);
        let touches = extent.x0 == 0
            || extent.y0 == 0
            || extent.x1 + 1 == width as i64
            || extent.y1 + 1 == height as i64;
        (!touches).then(|| extent.measure(&part))
    }

    /// The shape class these measurements read as.
    pub fn shape(&self) -> ShapeKind {
        if self.centroid_offset > TRIANGLE_OFFSET {
            ShapeKind::Triangle
        } else if self.diagonal_ratio > SQUARE_DIAGONAL_RATIO {
            ShapeKind::Square
        } else {
            ShapeKind::Circle
        }
    }

    /// The per-field medians of `measures` (`None` if empty): one reading for a whole video.
    pub fn median(measures: &[ShapeMeasure]) -> Option<Self> {
        let field = |f: fn(&ShapeMeasure) -> f64| {
            let mut values: Vec<f64> = measures.iter().map(f).collect();
            values.sort_by(f64::total_cmp);
            values[values.len() / 2]
        };
        (!measures.is_empty()).then(|| ShapeMeasure {
            fill_ratio: field(|m| m.fill_ratio),
            centroid_offset: field(|m| m.centroid_offset),
            diagonal_ratio: field(|m| m.diagonal_ratio),
        })
    }
}

/// Extremes of a part's pixel coordinates along the axes and the diagonals (`x + y`, `x - y`).
struct Extent {
    x0: i64,
    x1: i64,
    y0: i64,
    y1: i64,
    sum: (i64, i64),
    difference: (i64, i64),
}

impl Extent {
    fn of(part: &[(i64, i64)]) -> Self {
        let mut e = Extent {
            x0: i64::MAX,
            x1: i64::MIN,
            y0: i64::MAX,
            y1: i64::MIN,
            sum: (i64::MAX, i64::MIN),
            difference: (i64::MAX, i64::MIN),
        };
        for &(x, y) in part {
            e.x0 = e.x0.min(x);
            e.x1 = e.x1.max(x);
            e.y0 = e.y0.min(y);
            e.y1 = e.y1.max(y);
            e.sum = (e.sum.0.min(x + y), e.sum.1.max(x + y));
            e.difference = (e.difference.0.min(x - y), e.difference.1.max(x - y));
        }
        e
    }

    /// Widths count a pixel's own extent (+1) along the axes and along the diagonals alike,
    /// so a one-pixel shape is as wide every way.
    fn measure(&self, part: &[(i64, i64)]) -> ShapeMeasure {
        let (w, h) = (
            (self.x1 - self.x0 + 1) as f64,
            (self.y1 - self.y0 + 1) as f64,
        );
        let diagonal = |(lo, hi): (i64, i64)| (hi - lo) as f64 / std::f64::consts::SQRT_2 + 1.0;
        let mean_y = part.iter().map(|&(_, y)| y as f64 + 0.5).sum::<f64>() / part.len() as f64;
        let middle_y = (self.y0 + self.y1 + 1) as f64 / 2.0;
        ShapeMeasure {
            fill_ratio: part.len() as f64 / (w * h),
            centroid_offset: (mean_y - middle_y) / h,
            diagonal_ratio: (diagonal(self.sum) + diagonal(self.difference)) / (w + h),
        }
    }
}

/// The pixels `(x, y)` of the largest 4-connected part of `mask` (empty if none is set).
fn largest_part(mask: &[bool], height: usize, width: usize) -> Vec<(i64, i64)> {
    let mut seen = vec![false; mask.len()];
    let mut best = Vec::new();
    for start in 0..mask.len() {
        if !mask[start] || seen[start] {
            continue;
        }
        seen[start] = true;
        let (mut part, mut stack) = (Vec::new(), vec![start]);
        while let Some(k) = stack.pop() {
            let (y, x) = (k / width, k % width);
            part.push((x as i64, y as i64));
            let neighbours = [
                (y > 0).then(|| k - width),
                (y + 1 < height).then(|| k + width),
                (x > 0).then(|| k - 1),
                (x + 1 < width).then(|| k + 1),
            ];
            for n in neighbours.into_iter().flatten() {
                if mask[n] && !seen[n] {
                    seen[n] = true;
                    stack.push(n);
                }
            }
        }
        if part.len() > best.len() {
            best = part;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::nearest_colour;
    use crate::render::{Placement, render_rgb8};
    use crate::world::{Colour, Motion, Scene};

    /// The shape-colour mask of a scene's first frame at `side x side`, RGB-blurred by `sigma`
    /// pixels first (0: as rendered).
    fn mask(shape: ShapeKind, placement: &Placement, side: usize, sigma: f64) -> Vec<bool> {
        let scene = Scene {
            colour: Colour::Blue,
            shape,
            motion: Motion::Right,
            background: Colour::Black,
        };
        let frame = &render_rgb8(&scene, placement, 1, side, side)[0];
        let frame = blur(frame, side, sigma);
        frame
            .chunks(3)
            .map(|p| nearest_colour(p) == Colour::Blue)
            .collect()
    }

    /// A separable Gaussian blur of an RGB8 `side x side` frame, edges clamped.
    fn blur(frame: &[u8], side: usize, sigma: f64) -> Vec<u8> {
        if sigma == 0.0 {
            return frame.to_vec();
        }
        let radius = (3.0 * sigma).ceil() as i64;
        let taps: Vec<(i64, f64)> = (-radius..=radius)
            .map(|d| (d, (-(d * d) as f64 / (2.0 * sigma * sigma)).exp()))
            .collect();
        let total: f64 = taps.iter().map(|t| t.1).sum();
        let clamp = |v: i64| v.clamp(0, side as i64 - 1) as usize;
        // One pass along x (step 1 pixel) or y (step one row), for every pixel and channel.
        let pass = |src: &[f64], along_x: bool| -> Vec<f64> {
            (0..src.len())
                .map(|k| {
                    let (pixel, channel) = (k / 3, k % 3);
                    let (i, j) = ((pixel / side) as i64, (pixel % side) as i64);
                    let tap = |&(d, t): &(i64, f64)| {
                        let (ii, jj) = if along_x { (i, j + d) } else { (i + d, j) };
                        t * src[(clamp(ii) * side + clamp(jj)) * 3 + channel]
                    };
                    taps.iter().map(tap).sum::<f64>() / total
                })
                .collect()
        };
        let src: Vec<f64> = frame.iter().map(|&v| v as f64).collect();
        pass(&pass(&src, true), false)
            .into_iter()
            .map(|v| v.round().clamp(0.0, 255.0) as u8)
            .collect()
    }

    /// Placements across the world's sizes (half-extent 0.14-0.20) and off-centre positions
    /// (frame 0 of a rightward clip sits at x = 0.5 - travel / 2, y = cross).
    fn placements() -> Vec<Placement> {
        let mut out = Vec::new();
        for size in [0.14, 0.17, 0.20] {
            for (cross, travel) in [(0.5, 0.0), (0.61, 0.26), (0.42, -0.27)] {
                out.push(Placement {
                    size,
                    cross,
                    travel,
                });
            }
        }
        out
    }

    fn read_as(sigma: f64, side: usize) -> Vec<(ShapeKind, ShapeKind, ShapeMeasure)> {
        let mut readings = Vec::new();
        for shape in ShapeKind::ALL {
            for placement in placements() {
                let m = ShapeMeasure::of_mask(&mask(shape, &placement, side, sigma), side, side)
                    .expect("a whole shape");
                readings.push((shape, m.shape(), m));
            }
        }
        readings
    }

    #[test]
    fn rendered_shapes_read_as_themselves_at_every_resolution() {
        for side in [32, 64] {
            let wrong: Vec<_> = read_as(0.0, side)
                .into_iter()
                .filter(|r| r.0 != r.1)
                .collect();
            assert!(wrong.is_empty(), "{side}x{side}: {wrong:?}");
        }
    }

    #[test]
    fn blurred_shapes_still_read_as_themselves_where_the_fill_ratio_fails() {
        let readings = read_as(2.0, 64);
        let wrong: Vec<_> = readings.iter().filter(|r| r.0 != r.1).collect();
        assert!(wrong.is_empty(), "{wrong:?}");
        // The fill-ratio reading (triangle under 0.64) calls a third or more of the blurred
        // triangles circles: the apex goes first.
        let triangles: Vec<_> = readings
            .iter()
            .filter(|r| r.0 == ShapeKind::Triangle)
            .collect();
        let circles_by_fill = triangles.iter().filter(|r| r.2.fill_ratio >= 0.64).count();
        assert!(circles_by_fill * 3 >= triangles.len(), "{triangles:?}");
    }

    #[test]
    fn stray_pixels_do_not_stretch_the_shape() {
        let side = 32;
        let mut m = mask(ShapeKind::Circle, &Placement::CENTRED, side, 0.0);
        m[3 * side + 3] = true;
        m[28 * side + 27] = true;
        let reading = ShapeMeasure::of_mask(&m, side, side).expect("a whole shape");
        assert_eq!(reading.shape(), ShapeKind::Circle, "{reading:?}");
    }

    #[test]
    fn a_shape_on_the_border_or_too_small_is_not_measured() {
        let (side, mut m) = (16, vec![false; 16 * 16]);
        for k in [0, 1, 16, 17, 32, 33] {
            m[k] = true;
        }
        assert_eq!(ShapeMeasure::of_mask(&m, side, side), None);
        let mut small = vec![false; 16 * 16];
        small[5 * 16 + 5] = true;
        assert_eq!(ShapeMeasure::of_mask(&small, side, side), None);
    }
}
