//! The outside colour check: does the shape (and the background) read as the prompt's colour
//! against a *wider* set of named colours than the world's palette?
//!
//! [`vidcascade_shapes::analysis`] assigns every pixel to the nearest palette colour, so a dull
//! yellow still counts as yellow. Here the median colour of the pixels it assigned to the shape
//! (or to the background, on the frame borders) is named against the palette plus the colours a
//! washed-out or shifted rendering would be mistaken for — orange, pink, purple, brown, light
//! blue, olive, navy, dark and light gray — and must come out as the prompt's word.

use vidcascade_shapes::analysis::nearest_colour;
use vidcascade_shapes::world::Colour;

/// Named colours beyond the palette: (name, RGB).
const DISTRACTORS: [(&str, [u8; 3]); 9] = [
    ("orange", [255, 140, 0]),
    ("pink", [255, 150, 200]),
    ("purple", [128, 0, 160]),
    ("brown", [140, 80, 30]),
    ("light blue", [150, 200, 240]),
    ("olive", [128, 128, 0]),
    ("navy", [0, 0, 110]),
    ("dark gray", [64, 64, 64]),
    ("light gray", [192, 192, 192]),
];

/// The name of the nearest colour among the palette and [`DISTRACTORS`].
pub fn wide_name(rgb: [u8; 3]) -> &'static str {
    let distance =
        |c: [u8; 3]| -> i32 { (0..3).map(|i| (rgb[i] as i32 - c[i] as i32).pow(2)).sum() };
    let palette = Colour::ALL.iter().map(|c| (c.word(), c.rgb()));
    palette
        .chain(DISTRACTORS)
        .min_by_key(|(_, c)| distance(*c))
        .map(|(name, _)| name)
        .unwrap_or("?")
}

/// Per-channel median of `pixels`, if any.
fn median_rgb(pixels: &mut [[u8; 3]]) -> Option<[u8; 3]> {
    if pixels.is_empty() {
        return None;
    }
    let mut out = [0u8; 3];
    for (ch, slot) in out.iter_mut().enumerate() {
        pixels.sort_by_key(|p| p[ch]);
        *slot = pixels[pixels.len() / 2][ch];
    }
    Some(out)
}

/// The median RGB of the pixels nearest to `colour` in `frames` (`height x width`), over every
/// pixel (`border_only` false) or the frame borders.
pub fn median_of(
    frames: &[Vec<u8>],
    height: usize,
    width: usize,
    colour: Colour,
    border_only: bool,
) -> Option<[u8; 3]> {
    let mut pixels = Vec::new();
    for frame in frames {
        for (i, px) in frame.chunks_exact(3).enumerate() {
            let (y, x) = (i / width, i % width);
            let border = y == 0 || x == 0 || y + 1 == height || x + 1 == width;
            let p = [px[0], px[1], px[2]];
            if (border || !border_only) && nearest_colour(&p) == colour {
                pixels.push(p);
            }
        }
    }
    median_rgb(&mut pixels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn palette_colours_name_themselves_and_washed_out_ones_do_not() {
        for c in Colour::ALL {
            assert_eq!(wide_name(c.rgb()), c.word());
        }
        // A dull yellow reads as olive or orange, a light blue as light blue, not as the palette's.
        assert_ne!(wide_name([200, 160, 40]), "yellow");
        assert_eq!(wide_name([150, 195, 235]), "light blue");
    }

    #[test]
    fn the_median_ignores_a_few_stray_pixels() {
        let mut frame = Vec::new();
        for i in 0..16 {
            let px = if i == 3 { [255, 140, 0] } else { [220, 40, 40] };
            frame.extend_from_slice(&px);
        }
        let median = median_of(&[frame], 4, 4, Colour::Red, false);
        assert_eq!(median, Some([220, 40, 40]));
    }
}
