//! `--story`, `--story-file` and `--init-image`: a prompt sequence told as one continuous video,
//! or a video that starts from a given image.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use vidcascade_media::{WriteOptions, write_video};
use vidcascade_proto::convert::segment_to_wire;
use vidcascade_proto::v1;
use vidcascade_spec::{GenerateRequest, Segment, Video};

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
    /// Puts `prompt`, or the story's segments, and the init image into `request`.
    pub fn apply(&self, prompt: Option<&str>, request: &mut GenerateRequest) -> anyhow::Result<()> {
        let (segments, init_image) = self.read(prompt)?;
        request.prompt = prompt.unwrap_or_default().to_string();
        request.segments = segments;
        request.init_image_png = init_image;
        Ok(())
    }

    /// The same for a request on the wire (`client`).
    pub fn apply_wire(
        &self,
        prompt: Option<&str>,
        request: &mut v1::GenerateRequest,
    ) -> anyhow::Result<()> {
        let (segments, init_image) = self.read(prompt)?;
        request.prompt = prompt.unwrap_or_default().to_string();
        request.segments = segments.iter().map(segment_to_wire).collect();
        request.init_image_png = init_image;
        Ok(())
    }

    /// The story's segments (none without one) and the init image's bytes, checking that a
    /// story and a prompt are not both given.
    fn read(&self, prompt: Option<&str>) -> anyhow::Result<(Vec<Segment>, Option<Vec<u8>>)> {
        let is_story = !self.story.is_empty() || self.story_file.is_some();
        if is_story && prompt.is_some() {
            anyhow::bail!("give either PROMPT or --story / --story-file, not both");
        }
        let segments = self.segments()?;
        let init_image = match &self.init_image {
            None => None,
            Some(path) => Some(
                std::fs::read(path)
                    .with_context(|| format!("--init-image: cannot read {}", path.display()))?,
            ),
        };
        Ok((segments, init_image))
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

/// A story's final frames as its clips complete: after each segment the output file is
/// rewritten with every frame so far, so the start of a long story can be watched while the
/// rest is still being made.
#[derive(Debug, Default)]
pub struct StorySoFar {
    video: Option<Video>,
}

/// A clip's new final frames and where they go (`ClipCompleted`, in-process or from the wire).
#[derive(Debug)]
pub struct NewFrames {
    /// Which clip.
    pub clip: usize,
    /// The segment it belongs to.
    pub segment: usize,
    /// Whether it completes its segment.
    pub ends_segment: bool,
    /// Index of the first frame in the final video.
    pub first_frame: usize,
    /// The frames.
    pub video: Video,
}

impl StorySoFar {
    /// Adds a clip's frames (clips come in order); at the end of a segment, rewrites `output`.
    pub fn add(
        &mut self,
        new: NewFrames,
        output: &Path,
        options: &WriteOptions,
    ) -> anyhow::Result<()> {
        let have = self.video.as_ref().map_or(0, |v| v.frames.len());
        if new.first_frame != have {
            anyhow::bail!(
                "clip {} starts at frame {}, but {have} frames came before it",
                new.clip,
                new.first_frame
            );
        }
        let video = match self.video.take() {
            None => new.video,
            Some(mut video) => {
                video.frames.extend(new.video.frames);
                video
            }
        };
        if new.ends_segment {
            write_video(&video, output, options)?;
            eprintln!(
                "segments[{}] done: {} frames so far in {}",
                new.segment,
                video.frames.len(),
                output.display()
            );
        }
        self.video = Some(video);
        Ok(())
    }

    /// Every frame so far, leaving the story empty.
    pub fn take(&mut self) -> Option<Video> {
        self.video.take()
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
