//! `--story`, `--story-file` and `--init-image`: a prompt sequence told as one continuous video,
//! or a video that starts from a given image.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use vidcascade_spec::{GenerateRequest, Segment};

/// The story and init-image flags.
#[derive(Debug, Args)]
pub struct StoryArgs {
    /// A prompt sequence told as one video, one clip per prompt (instead of PROMPT): each clip
    /// continues the last one's motion when the model's stages take context frames.
    #[arg(long, num_args = 1.., value_name = "PROMPT", conflicts_with = "story_file")]
    pub story: Vec<String>,
    /// A story from a file: one prompt per line, optionally followed by a tab and the seconds
    /// it lasts (default: one clip); blank lines and lines starting with `#` are skipped.
    #[arg(long, value_name = "FILE")]
    pub story_file: Option<PathBuf>,
    /// Start the video from this PNG (8-bit RGB or RGBA, any size): it becomes frame 0.
    #[arg(long, value_name = "PNG")]
    pub init_image: Option<PathBuf>,
}

/// A segment's length when none is given: the shortest, so it gets exactly one clip.
const ONE_CLIP: f32 = f32::MIN_POSITIVE;

impl StoryArgs {
    /// Puts the story's segments (when there is one, replacing `prompt`) and the init image
    /// into `request`.
    pub fn apply(&self, request: &mut GenerateRequest) -> anyhow::Result<()> {
        let segments = self.segments()?;
        if !segments.is_empty() {
            request.prompt.clear();
            request.segments = segments;
        }
        if let Some(path) = &self.init_image {
            let bytes = std::fs::read(path)
                .with_context(|| format!("--init-image: cannot read {}", path.display()))?;
            request.init_image_png = Some(bytes);
        }
        Ok(())
    }

    /// Whether a story replaces the prompt.
    pub fn is_story(&self) -> bool {
        !self.story.is_empty() || self.story_file.is_some()
    }

    fn segments(&self) -> anyhow::Result<Vec<Segment>> {
        let one_clip = |prompt: &str| Segment {
            prompt: prompt.to_string(),
            seconds: ONE_CLIP,
        };
        let Some(path) = &self.story_file else {
            return Ok(self.story.iter().map(|p| one_clip(p)).collect());
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("--story-file: cannot read {}", path.display()))?;
        let segments = parse_story(&text)
            .map_err(|e| anyhow::anyhow!("--story-file {}: {e}", path.display()))?;
        if segments.is_empty() {
            anyhow::bail!("--story-file {}: no prompts in it", path.display());
        }
        Ok(segments)
    }
}

/// One segment per non-blank line that does not start with `#`: `prompt` or `prompt<TAB>seconds`.
fn parse_story(text: &str) -> Result<Vec<Segment>, String> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty() && !line.trim_start().starts_with('#'))
        .map(|(i, line)| match line.split_once('\t') {
            None => Ok(Segment {
                prompt: line.trim().to_string(),
                seconds: ONE_CLIP,
            }),
            Some((prompt, seconds)) => {
                let seconds: f32 = seconds.trim().parse().map_err(|_| {
                    format!(
                        "line {}: seconds `{}` is not a number",
                        i + 1,
                        seconds.trim()
                    )
                })?;
                Ok(Segment {
                    prompt: prompt.trim().to_string(),
                    seconds,
                })
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_story_file_has_one_segment_per_prompt_line_with_optional_seconds() {
        let story =
            parse_story("# a story\nred circle moving left\n\nblue square moving up\t3.5\n")
                .expect("valid");
        assert_eq!(story.len(), 2);
        assert_eq!(story[0].prompt, "red circle moving left");
        assert_eq!(story[0].seconds, ONE_CLIP);
        assert_eq!(
            (story[1].prompt.as_str(), story[1].seconds),
            ("blue square moving up", 3.5)
        );
        let err = parse_story("red\tsoon").expect_err("bad seconds");
        assert_eq!(err, "line 1: seconds `soon` is not a number");
    }
}
