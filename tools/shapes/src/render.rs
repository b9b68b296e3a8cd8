//! Seeded, anti-aliased rendering of a [`Scene`] at any frame count, size and frame rate.
//!
//! Motion is defined on the clip's normalised progress (frame `k` of `F` sits at `k / F`), so a
//! clip rendered with 8 frames and the same clip with 16 frames agree on every shared instant —
//! exactly what a temporal super-resolution stage must learn — and a clip rendered at 16x16 is the
//! area-average of the same clip at 32x32 up to anti-aliasing — what a spatial one must learn.

use rand::Rng;

use crate::world::{Scene, ShapeKind};

/// Where and how fast the shape moves (the per-video randomness of a scene).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Placement {
    /// Half-extent of the shape, as a fraction of the frame side.
    pub size: f64,
    /// Position across the direction of motion, as a fraction of the frame side.
    pub cross: f64,
    /// Distance travelled over the clip, as a fraction of the frame side.
    pub travel: f64,
}

impl Placement {
    /// A typical placement: centred, mid-size, travelling half the frame.
    pub const CENTRED: Placement = Placement {
        size: 0.17,
        cross: 0.5,
        travel: 0.5,
    };

    /// A random placement.
    pub fn sample(rng: &mut impl Rng) -> Self {
        Self {
            size: rng.random_range(0.14..0.20),
            cross: rng.random_range(0.35..0.65),
            travel: rng.random_range(0.40..0.60),
        }
    }

    /// The shape's centre at progress `p` in [0, 1).
    pub fn centre(&self, scene: &Scene, p: f64) -> (f64, f64) {
        let along = 0.5 - self.travel / 2.0 + self.travel * p;
        let (dx, dy) = scene.motion.vector();
        if dx != 0.0 {
            let x = if dx > 0.0 { along } else { 1.0 - along };
            (x, self.cross)
        } else {
            let y = if dy > 0.0 { along } else { 1.0 - along };
            (self.cross, y)
        }
    }
}

/// A clip that continues from known frames: the shape sits at `anchor` at progress
/// `anchor_progress` (the last known frame), came there moving `previous`, and from there moves the
/// scene's way, `travel` of the frame per clip at the same speed, stopping where its edge meets
/// the frame's. Image-to-video is the case where the first frame is the anchor; a story's next
/// segment the case where the previous segment's last frames lead up to it, possibly from another
/// direction.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Continuation {
    /// Half-extent of the shape, as a fraction of the frame side.
    pub size: f64,
    /// Where the shape is at the last known frame, in frame units `(x, y)`.
    pub anchor: (f64, f64),
    /// The clip progress (frame / frames) of the last known frame.
    pub anchor_progress: f64,
    /// The direction the shape came from before the anchor.
    pub previous: crate::world::Motion,
    /// Distance travelled over a whole clip, as a fraction of the frame side.
    pub travel: f64,
}

impl Continuation {
    /// A random continuation whose last known frame is frame `last_known` of `frames`.
    pub fn sample(rng: &mut impl Rng, last_known: usize, frames: usize) -> Self {
        let size = rng.random_range(0.14..0.20);
        let margin = size + 0.02;
        Self {
            size,
            anchor: (
                rng.random_range(margin..1.0 - margin),
                rng.random_range(margin..1.0 - margin),
            ),
            anchor_progress: last_known as f64 / frames as f64,
            previous: crate::world::Motion::ALL[rng.random_range(0..4)],
            travel: rng.random_range(0.40..0.60),
        }
    }

    /// The clip after a world clip placed at `placed` (a story's next segment with the same
    /// prompt): its frames up to `last_known` of `frames` repeat the previous clip's last ones,
    /// and the shape goes on the same way at the same speed until its edge meets the frame's.
    pub fn following(placed: &Placement, scene: &Scene, last_known: usize, frames: usize) -> Self {
        let end = (frames as f64 - 1.0) / frames as f64;
        Self {
            size: placed.size,
            anchor: placed.centre(scene, end),
            anchor_progress: last_known as f64 / frames as f64,
            previous: scene.motion,
            travel: placed.travel,
        }
    }

    /// The shape's centre at progress `p`, kept whole inside the frame.
    pub fn centre(&self, scene: &Scene, p: f64) -> (f64, f64) {
        let (motion, distance) = if p < self.anchor_progress {
            (self.previous, p - self.anchor_progress)
        } else {
            (scene.motion, p - self.anchor_progress)
        };
        let (dx, dy) = motion.vector();
        let d = distance * self.travel;
        let keep = |v: f64| v.clamp(self.size, 1.0 - self.size);
        (keep(self.anchor.0 + dx * d), keep(self.anchor.1 + dy * d))
    }
}

/// Where the shape is in each frame of a clip: a scene's own [`Placement`] or a [`Continuation`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Trajectory {
    /// The world's clips: centred travel along the motion.
    Placed(Placement),
    /// A clip continuing from known frames.
    Continued(Continuation),
}

impl Trajectory {
    /// Half-extent of the shape.
    pub fn size(&self) -> f64 {
        match self {
            Trajectory::Placed(p) => p.size,
            Trajectory::Continued(c) => c.size,
        }
    }

    /// The shape's centre at progress `p` in [0, 1).
    pub fn centre(&self, scene: &Scene, p: f64) -> (f64, f64) {
        match self {
            Trajectory::Placed(placement) => placement.centre(scene, p),
            Trajectory::Continued(c) => c.centre(scene, p),
        }
    }
}

/// Whether point `(x, y)` (frame units) is inside `shape` centred at `c` with half-extent `r`.
fn inside(shape: ShapeKind, c: (f64, f64), r: f64, x: f64, y: f64) -> bool {
    let (dx, dy) = (x - c.0, y - c.1);
    match shape {
        ShapeKind::Circle => dx * dx + dy * dy <= r * r,
        ShapeKind::Square => dx.abs() <= r && dy.abs() <= r,
        ShapeKind::Triangle => {
            // Apex at (0, -r), base from (-r, r) to (r, r).
            if !(-r..=r).contains(&dy) {
                return false;
            }
            dx.abs() <= (dy + r) / 2.0
        }
    }
}

/// Sub-samples per pixel side used for anti-aliasing.
const SUPERSAMPLE: usize = 4;

/// Renders `frames` RGB8 frames of `height x width` (row-major, RGB interleaved).
pub fn render_rgb8(
    scene: &Scene,
    placement: &Placement,
    frames: usize,
    height: usize,
    width: usize,
) -> Vec<Vec<u8>> {
    render_trajectory_rgb8(
        scene,
        &Trajectory::Placed(*placement),
        frames,
        height,
        width,
    )
}

/// [`render_rgb8`] along any [`Trajectory`].
pub fn render_trajectory_rgb8(
    scene: &Scene,
    trajectory: &Trajectory,
    frames: usize,
    height: usize,
    width: usize,
) -> Vec<Vec<u8>> {
    let fg = scene.colour.rgb().map(f64::from);
    let bg = scene.background.rgb().map(f64::from);
    let side = height.min(width) as f64;
    let r = trajectory.size();
    (0..frames)
        .map(|k| {
            let centre = trajectory.centre(scene, k as f64 / frames as f64);
            let mut frame = Vec::with_capacity(height * width * 3);
            for i in 0..height {
                for j in 0..width {
                    let mut hits = 0;
                    for si in 0..SUPERSAMPLE {
                        for sj in 0..SUPERSAMPLE {
                            let y = (i as f64 + (si as f64 + 0.5) / SUPERSAMPLE as f64) / side;
                            let x = (j as f64 + (sj as f64 + 0.5) / SUPERSAMPLE as f64) / side;
                            if inside(scene.shape, centre, r, x, y) {
                                hits += 1;
                            }
                        }
                    }
                    let coverage = hits as f64 / (SUPERSAMPLE * SUPERSAMPLE) as f64;
                    for ch in 0..3 {
                        frame.push((bg[ch] + (fg[ch] - bg[ch]) * coverage).round() as u8);
                    }
                }
            }
            frame
        })
        .collect()
}

/// Renders as model data: `[3, frames, height, width]` values in [-1, 1], flattened.
pub fn render_chw(
    scene: &Scene,
    placement: &Placement,
    frames: usize,
    height: usize,
    width: usize,
) -> Vec<f32> {
    render_trajectory_chw(
        scene,
        &Trajectory::Placed(*placement),
        frames,
        height,
        width,
    )
}

/// [`render_chw`] along any [`Trajectory`].
pub fn render_trajectory_chw(
    scene: &Scene,
    trajectory: &Trajectory,
    frames: usize,
    height: usize,
    width: usize,
) -> Vec<f32> {
    let rgb = render_trajectory_rgb8(scene, trajectory, frames, height, width);
    let plane = height * width;
    let mut out = vec![0f32; 3 * frames * plane];
    for (f, frame) in rgb.iter().enumerate() {
        for p in 0..plane {
            for c in 0..3 {
                out[(c * frames + f) * plane + p] = frame[p * 3 + c] as f32 / 127.5 - 1.0;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::world::{Colour, Motion};

    fn scene(motion: Motion) -> Scene {
        Scene {
            colour: Colour::Red,
            shape: ShapeKind::Square,
            motion,
            background: Colour::Black,
        }
    }

    #[test]
    fn the_shape_moves_the_captioned_way() {
        for motion in Motion::ALL {
            let s = scene(motion);
            let a = Placement::CENTRED.centre(&s, 0.0);
            let b = Placement::CENTRED.centre(&s, 0.9);
            let (dx, dy) = motion.vector();
            assert!((b.0 - a.0) * dx >= 0.0 && (b.1 - a.1) * dy >= 0.0);
            assert!(((b.0 - a.0).abs() + (b.1 - a.1).abs()) > 0.4);
        }
    }

    #[test]
    fn a_following_clip_repeats_the_previous_clips_last_frames_and_goes_on_at_its_speed() {
        let frames = 8;
        let (known, placed) = (2, Placement::CENTRED);
        for motion in Motion::ALL {
            let s = scene(motion);
            let next = Continuation::following(&placed, &s, known - 1, frames);
            for f in 0..known {
                let before = placed.centre(&s, (frames - known + f) as f64 / frames as f64);
                let now = next.centre(&s, f as f64 / frames as f64);
                assert!(
                    distance(before, now) < 1e-9,
                    "{motion:?} frame {f}: {before:?} {now:?}"
                );
            }
            let step = |p: f64, q: f64| distance(next.centre(&s, p), next.centre(&s, q));
            let speed = placed.travel / frames as f64;
            assert!(
                (step(1.0 / 8.0, 2.0 / 8.0) - speed).abs() < 1e-9,
                "{motion:?}"
            );
            assert!(
                step(5.0 / 8.0, 7.0 / 8.0) < 1e-9,
                "{motion:?} stops at the edge"
            );
        }
    }

    fn distance(a: (f64, f64), b: (f64, f64)) -> f64 {
        ((a.0 - b.0).powi(2) + (a.1 - b.1).powi(2)).sqrt()
    }

    #[test]
    fn a_continuation_comes_in_the_previous_way_and_leaves_the_scene_way_without_leaving_the_frame()
    {
        let s = scene(Motion::Up);
        let c = Continuation {
            size: 0.15,
            anchor: (0.5, 0.5),
            anchor_progress: 0.25,
            previous: Motion::Right,
            travel: 0.5,
        };
        let before = c.centre(&s, 0.0);
        assert!((before.0 - (0.5 - 0.125)).abs() < 1e-12 && (before.1 - 0.5).abs() < 1e-12);
        assert_eq!(c.centre(&s, 0.25), (0.5, 0.5));
        let after = c.centre(&s, 0.75);
        assert!((after.0 - 0.5).abs() < 1e-12 && (after.1 - 0.25).abs() < 1e-12);
        // Far enough, the shape stops with its edge on the frame's.
        let far = Continuation { travel: 5.0, ..c };
        assert_eq!(far.centre(&s, 0.9).1, 0.15);
        // The 8- and 16-frame renderings agree on shared instants, as for placements.
        let t = Trajectory::Continued(c);
        let low = render_trajectory_rgb8(&s, &t, 8, 16, 16);
        let high = render_trajectory_rgb8(&s, &t, 16, 16, 16);
        for (j, frame) in low.iter().enumerate() {
            assert_eq!(frame, &high[2 * j]);
        }
    }

    #[test]
    fn sixteen_frames_contain_the_eight_frame_clip() {
        let s = scene(Motion::Right);
        let low = render_rgb8(&s, &Placement::CENTRED, 8, 16, 16);
        let high = render_rgb8(&s, &Placement::CENTRED, 16, 16, 16);
        for (j, frame) in low.iter().enumerate() {
            assert_eq!(frame, &high[2 * j]);
        }
    }

    #[test]
    fn pixels_are_background_far_from_the_shape_and_foreground_at_its_centre() {
        let s = scene(Motion::Left);
        let frames = render_rgb8(&s, &Placement::CENTRED, 4, 32, 32);
        assert_eq!(&frames[0][0..3], &Colour::Black.rgb());
        let (cx, cy) = Placement::CENTRED.centre(&s, 0.0);
        let (i, j) = ((cy * 32.0) as usize, (cx * 32.0) as usize);
        assert_eq!(
            &frames[0][(i * 32 + j) * 3..(i * 32 + j) * 3 + 3],
            &Colour::Red.rgb()
        );
        let chw = render_chw(&s, &Placement::CENTRED, 4, 32, 32);
        assert_eq!(chw.len(), 3 * 4 * 32 * 32);
        assert!(chw.iter().all(|v| (-1.0..=1.0).contains(v)));
    }
}
