//! The vocabulary of the shapes world, every valid scene, its captions, and the held-out split.

use serde::{Deserialize, Serialize};

/// A colour of the palette: shape colours, plus black and gray for backgrounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Colour {
    /// (220, 40, 40)
    Red,
    /// (40, 190, 60)
    Green,
    /// (40, 80, 230)
    Blue,
    /// (240, 220, 40)
    Yellow,
    /// (245, 245, 245)
    White,
    /// (220, 50, 220)
    Magenta,
    /// (40, 220, 220)
    Cyan,
    /// (10, 10, 10) — backgrounds only
    Black,
    /// (128, 128, 128) — backgrounds only
    Gray,
}

impl Colour {
    /// Colours a shape can have.
    pub const SHAPE: [Colour; 7] = [
        Colour::Red,
        Colour::Green,
        Colour::Blue,
        Colour::Yellow,
        Colour::White,
        Colour::Magenta,
        Colour::Cyan,
    ];
    /// Every colour of the palette.
    pub const ALL: [Colour; 9] = [
        Colour::Red,
        Colour::Green,
        Colour::Blue,
        Colour::Yellow,
        Colour::White,
        Colour::Magenta,
        Colour::Cyan,
        Colour::Black,
        Colour::Gray,
    ];

    /// The colour's RGB value.
    pub fn rgb(self) -> [u8; 3] {
        match self {
            Colour::Red => [220, 40, 40],
            Colour::Green => [40, 190, 60],
            Colour::Blue => [40, 80, 230],
            Colour::Yellow => [240, 220, 40],
            Colour::White => [245, 245, 245],
            Colour::Magenta => [220, 50, 220],
            Colour::Cyan => [40, 220, 220],
            Colour::Black => [10, 10, 10],
            Colour::Gray => [128, 128, 128],
        }
    }

    /// The caption word.
    pub fn word(self) -> &'static str {
        match self {
            Colour::Red => "red",
            Colour::Green => "green",
            Colour::Blue => "blue",
            Colour::Yellow => "yellow",
            Colour::White => "white",
            Colour::Magenta => "magenta",
            Colour::Cyan => "cyan",
            Colour::Black => "black",
            Colour::Gray => "gray",
        }
    }

    /// Parses a caption word ("grey" is accepted for gray).
    pub fn from_word(word: &str) -> Option<Self> {
        match word {
            "grey" => Some(Colour::Gray),
            w => Colour::ALL.into_iter().find(|c| c.word() == w),
        }
    }

    /// Backgrounds allowed under a shape of this colour: black, white, gray and every shape colour
    /// but its own.
    pub fn backgrounds_for(self) -> Vec<Colour> {
        Colour::ALL.into_iter().filter(|&c| c != self).collect()
    }
}

/// The shape's outline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ShapeKind {
    /// A disc.
    Circle,
    /// An axis-aligned square.
    Square,
    /// An upward-pointing isosceles triangle.
    Triangle,
}

impl ShapeKind {
    /// Every shape.
    pub const ALL: [ShapeKind; 3] = [ShapeKind::Circle, ShapeKind::Square, ShapeKind::Triangle];

    /// The caption word.
    pub fn word(self) -> &'static str {
        match self {
            ShapeKind::Circle => "circle",
            ShapeKind::Square => "square",
            ShapeKind::Triangle => "triangle",
        }
    }

    /// Parses a caption word.
    pub fn from_word(word: &str) -> Option<Self> {
        ShapeKind::ALL.into_iter().find(|s| s.word() == word)
    }
}

/// The direction the shape moves in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Motion {
    /// Towards smaller x.
    Left,
    /// Towards larger x.
    Right,
    /// Towards smaller y (up the screen).
    Up,
    /// Towards larger y.
    Down,
}

impl Motion {
    /// Every motion.
    pub const ALL: [Motion; 4] = [Motion::Left, Motion::Right, Motion::Up, Motion::Down];

    /// The caption word.
    pub fn word(self) -> &'static str {
        match self {
            Motion::Left => "left",
            Motion::Right => "right",
            Motion::Up => "up",
            Motion::Down => "down",
        }
    }

    /// Parses a caption word.
    pub fn from_word(word: &str) -> Option<Self> {
        Motion::ALL.into_iter().find(|m| m.word() == word)
    }

    /// Unit direction in image coordinates (x right, y down).
    pub fn vector(self) -> (f64, f64) {
        match self {
            Motion::Left => (-1.0, 0.0),
            Motion::Right => (1.0, 0.0),
            Motion::Up => (0.0, -1.0),
            Motion::Down => (0.0, 1.0),
        }
    }
}

/// One combination of the world: what a caption describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Scene {
    /// Shape colour.
    pub colour: Colour,
    /// Shape outline.
    pub shape: ShapeKind,
    /// Direction of motion.
    pub motion: Motion,
    /// Background colour (never the shape's colour).
    pub background: Colour,
}

impl Scene {
    /// The long caption: "a red circle moving left on a black background".
    pub fn caption(&self) -> String {
        format!(
            "a {} {} moving {} on a {} background",
            self.colour.word(),
            self.shape.word(),
            self.motion.word(),
            self.background.word()
        )
    }

    /// The short caption without the background: "red circle moving left".
    pub fn short_caption(&self) -> String {
        format!(
            "{} {} moving {}",
            self.colour.word(),
            self.shape.word(),
            self.motion.word()
        )
    }

    /// Whether the scene is valid (a shape colour, and a background other than it).
    pub fn is_valid(&self) -> bool {
        Colour::SHAPE.contains(&self.colour) && self.background != self.colour
    }

    /// Parses either caption form; the short form leaves the background unset.
    pub fn parse(caption: &str) -> Option<(Colour, ShapeKind, Motion, Option<Colour>)> {
        let lower = caption.to_lowercase();
        let words: Vec<&str> = lower.split_whitespace().collect();
        let words: &[&str] = match words.first() {
            Some(&"a") | Some(&"an") => &words[1..],
            _ => &words,
        };
        let colour = Colour::from_word(words.first()?)?;
        let shape = ShapeKind::from_word(words.get(1)?)?;
        if *words.get(2)? != "moving" {
            return None;
        }
        let motion = Motion::from_word(words.get(3)?)?;
        let background = match &words[4..] {
            [] => None,
            ["on", "a", bg, "background"] | ["on", bg, "background"] => {
                Some(Colour::from_word(bg)?)
            }
            _ => return None,
        };
        if !Colour::SHAPE.contains(&colour) || background == Some(colour) {
            return None;
        }
        Some((colour, shape, motion, background))
    }
}

/// Every valid scene, in a fixed order.
pub fn all_scenes() -> Vec<Scene> {
    let mut scenes = Vec::new();
    for colour in Colour::SHAPE {
        for shape in ShapeKind::ALL {
            for motion in Motion::ALL {
                for background in colour.backgrounds_for() {
                    scenes.push(Scene {
                        colour,
                        shape,
                        motion,
                        background,
                    });
                }
            }
        }
    }
    scenes
}

/// Held-out scenes, never seen in training: for each shape colour, two (colour, background) pairs
/// and, for each of those, one (shape, motion) pair — compositions of words the model has seen
/// only in other combinations. Chosen by a fixed rule so the split never drifts:
/// background = the colours 3 and 5 steps after the shape colour in [`Colour::ALL`], shape and
/// motion cycling with the colour's index.
pub fn is_held_out(scene: &Scene) -> bool {
    let index = |c: Colour| Colour::ALL.iter().position(|&x| x == c).unwrap_or(0);
    let ci = index(scene.colour);
    let bg_a = Colour::ALL[(ci + 3) % Colour::ALL.len()];
    let bg_b = Colour::ALL[(ci + 5) % Colour::ALL.len()];
    let shape = ShapeKind::ALL[ci % 3];
    let motion_a = Motion::ALL[ci % 4];
    let motion_b = Motion::ALL[(ci + 2) % 4];
    (scene.background == bg_a && scene.shape == shape && scene.motion == motion_a)
        || (scene.background == bg_b && scene.shape == shape && scene.motion == motion_b)
}

/// Scenes used for training.
pub fn training_scenes() -> Vec<Scene> {
    all_scenes()
        .into_iter()
        .filter(|s| !is_held_out(s))
        .collect()
}

/// Scenes held out for evaluation.
pub fn held_out_scenes() -> Vec<Scene> {
    all_scenes().into_iter().filter(is_held_out).collect()
}

/// Every word a caption can contain, for the tokenizer.
pub fn vocabulary() -> Vec<String> {
    let mut words: Vec<String> = ["a", "on", "background", "moving", "grey"]
        .iter()
        .map(|w| w.to_string())
        .collect();
    words.extend(Colour::ALL.iter().map(|c| c.word().to_string()));
    words.extend(ShapeKind::ALL.iter().map(|s| s.word().to_string()));
    words.extend(Motion::ALL.iter().map(|m| m.word().to_string()));
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_world_has_every_combination_and_no_shape_on_its_own_colour() {
        let scenes = all_scenes();
        // 7 colours x 3 shapes x 4 motions x 8 backgrounds.
        assert_eq!(scenes.len(), 7 * 3 * 4 * 8);
        assert!(scenes.iter().all(Scene::is_valid));
    }

    #[test]
    fn held_out_scenes_are_a_small_disjoint_set_covering_every_colour() {
        let held = held_out_scenes();
        assert_eq!(held.len(), 14);
        let train = training_scenes();
        assert!(held.iter().all(|s| !train.contains(s)));
        for colour in Colour::SHAPE {
            assert!(held.iter().any(|s| s.colour == colour));
            // Every word of a held-out caption still appears in training captions.
            assert!(train.iter().any(|s| s.colour == colour));
        }
    }

    #[test]
    fn captions_parse_back_in_both_forms() {
        let scene = Scene {
            colour: Colour::Red,
            shape: ShapeKind::Circle,
            motion: Motion::Left,
            background: Colour::Black,
        };
        assert_eq!(
            scene.caption(),
            "a red circle moving left on a black background"
        );
        assert_eq!(
            Scene::parse(&scene.caption()),
            Some((
                Colour::Red,
                ShapeKind::Circle,
                Motion::Left,
                Some(Colour::Black)
            ))
        );
        assert_eq!(
            Scene::parse("Red circle moving left"),
            Some((Colour::Red, ShapeKind::Circle, Motion::Left, None))
        );
        assert_eq!(
            Scene::parse("a red circle moving left on a red background"),
            None
        );
        assert_eq!(Scene::parse("a black circle moving left"), None);
        assert_eq!(Scene::parse("a red circle jumping"), None);
    }
}
