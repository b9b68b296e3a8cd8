//! Videos as people and the wire see them: RGB8 frames, row-major, RGB interleaved. Tensors
//! (`[3, frames, height, width]` in [-1, 1]) are the engine's business; this type is what crosses
//! between stages, so a stage service and the in-process cascade hand over the same bytes.

/// An RGB8 video: every frame is `height * width * 3` bytes, row-major, RGB interleaved.
#[derive(Debug, Clone, PartialEq)]
pub struct Video {
    /// Frame width in pixels.
    pub width: usize,
    /// Frame height in pixels.
    pub height: usize,
    /// Frames per second.
    pub fps: f32,
    /// The frames, in order.
    pub frames: Vec<Vec<u8>>,
}

impl Video {
    /// Bytes in one frame.
    pub fn frame_len(&self) -> usize {
        self.width * self.height * 3
    }

    /// Total number of bytes of pixel data.
    pub fn byte_len(&self) -> usize {
        self.frames.iter().map(Vec::len).sum()
    }

    /// The first frame whose size is not `width * height * 3`, as a message naming it.
    pub fn check_frames(&self) -> Result<(), String> {
        let frame_len = self.frame_len();
        match self
            .frames
            .iter()
            .enumerate()
            .find(|(_, f)| f.len() != frame_len)
        {
            Some((i, frame)) => Err(format!(
                "frame {i} has {} bytes, expected {frame_len} ({}x{} RGB8)",
                frame.len(),
                self.width,
                self.height
            )),
            None => Ok(()),
        }
    }

    /// The clips of `videos` played one after another (the first one's size and frame rate).
    pub fn concat(videos: &[Video]) -> Option<Video> {
        let first = videos.first()?;
        Some(Video {
            width: first.width,
            height: first.height,
            fps: first.fps,
            frames: videos
                .iter()
                .flat_map(|v| v.frames.iter().cloned())
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_frame_is_named() {
        let video = Video {
            width: 2,
            height: 2,
            fps: 1.0,
            frames: vec![vec![0; 12], vec![0; 11]],
        };
        let err = video.check_frames().expect_err("short frame");
        assert!(err.contains("frame 1 has 11 bytes, expected 12"), "{err}");
    }

    #[test]
    fn clips_concatenate_in_order() {
        let clip = |v: u8| Video {
            width: 1,
            height: 1,
            fps: 2.0,
            frames: vec![vec![v; 3]],
        };
        let joined = Video::concat(&[clip(1), clip(2)]).expect("two clips");
        assert_eq!(joined.frames, vec![vec![1; 3], vec![2; 3]]);
        assert_eq!(Video::concat(&[]), None);
    }
}
