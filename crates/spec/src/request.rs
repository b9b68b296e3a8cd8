//! What one generation asks for — a prompt or a sequence of segments, a seed, per-stage
//! overrides, previews — with the limits every entry point enforces, and the seed of every clip
//! and stage (so the in-process cascade and the services derive the same noise).

use std::collections::BTreeMap;

use crate::sampling::StageOverrides;

/// The longest prompt accepted, in bytes (the tokenizer's own limit applies as well).
pub const MAX_PROMPT_BYTES: usize = 2048;

/// One prompt of a sequence, lasting `seconds` of video.
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    /// What this part of the video shows.
    pub prompt: String,
    /// How long it lasts; rounded up to whole clips.
    pub seconds: f32,
}

/// One generation, before it is checked against a manifest.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GenerateRequest {
    /// The prompt (or empty when `segments` are given).
    pub prompt: String,
    /// A prompt sequence (or empty when `prompt` is given).
    pub segments: Vec<Segment>,
    /// A PNG to start from (no shipped model takes one yet).
    pub init_image_png: Option<Vec<u8>>,
    /// Seed of all noise; `None` lets the planner pick one.
    pub seed: Option<u64>,
    /// Per-stage overrides, keyed by stage name.
    pub overrides: BTreeMap<String, StageOverrides>,
    /// Send each stage's x0 estimate every this many steps (and after the last); 0 = never.
    pub preview_every: u32,
}

impl GenerateRequest {
    /// A request for one prompt with the manifest's defaults.
    pub fn new(prompt: impl Into<String>) -> Self {
        Self {
            prompt: prompt.into(),
            ..Self::default()
        }
    }

    /// Sets the seed.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Overrides settings of stage `stage`.
    pub fn with_overrides(mut self, stage: impl Into<String>, overrides: StageOverrides) -> Self {
        self.overrides.insert(stage.into(), overrides);
        self
    }
}

/// A prompt is 1..=[`MAX_PROMPT_BYTES`] bytes and not only white space.
pub fn check_prompt(prompt: &str) -> Result<(), String> {
    if prompt.trim().is_empty() {
        return Err("must not be empty".into());
    }
    check_prompt_length(prompt)
}

/// A prompt (or the empty prompt a text encoder also takes) is at most [`MAX_PROMPT_BYTES`].
pub fn check_prompt_length(prompt: &str) -> Result<(), String> {
    if prompt.len() > MAX_PROMPT_BYTES {
        return Err(format!(
            "is {} bytes; the limit is {MAX_PROMPT_BYTES}",
            prompt.len()
        ));
    }
    Ok(())
}

/// Most characters of a caller's input an error message repeats.
pub const MAX_ECHO_CHARS: usize = 64;

/// `text` as an error message may repeat it: at most [`MAX_ECHO_CHARS`] characters, with `...`
/// when cut (a 100 KB field name must not become a 100 KB status message).
pub fn echo(text: &str) -> String {
    match text.char_indices().nth(MAX_ECHO_CHARS) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_string(),
    }
}

/// The seed of stage `index`, decorrelated from the others (SplitMix64 finaliser).
pub fn stage_seed(seed: u64, index: usize) -> u64 {
    let mut z = seed.wrapping_add((index as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The seed of clip `clip` (clip 0 uses the request's seed).
pub fn clip_seed(seed: u64, clip: usize) -> u64 {
    if clip == 0 {
        seed
    } else {
        stage_seed(seed, 1_000_000 + clip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_are_checked_once() {
        assert!(check_prompt("a red circle").is_ok());
        assert_eq!(check_prompt("  "), Err("must not be empty".into()));
        let long = "a".repeat(MAX_PROMPT_BYTES + 1);
        assert!(check_prompt(&long).is_err_and(|e| e.contains("2049 bytes")));
    }

    #[test]
    fn echoes_are_capped_on_a_character_boundary() {
        assert_eq!(echo("base"), "base");
        let long = "é".repeat(100);
        let echoed = echo(&long);
        assert_eq!(echoed.chars().count(), MAX_ECHO_CHARS + 3);
        assert!(echoed.ends_with("..."));
    }

    #[test]
    fn seeds_differ_per_stage_and_clip_zero_keeps_the_request_seed() {
        assert_eq!(clip_seed(7, 0), 7);
        assert_ne!(clip_seed(7, 1), 7);
        assert_ne!(stage_seed(7, 0), stage_seed(7, 1));
    }
}
