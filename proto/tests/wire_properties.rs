//! Property tests of every wire decoder: whatever bytes a peer sends, decoding answers (a value
//! or an error naming the field) and never panics, overflows or allocates past what the message
//! itself holds; what it accepts is consistent.

use proptest::prelude::*;
use vidcascade_proto::v1;
use vidcascade_proto::wire::{VideoAssembler, chunk_video, validate_video};

/// Shapes from tiny to absurd (overflowing products included).
fn shapes() -> impl Strategy<Value = Vec<u64>> {
    prop::collection::vec(
        prop_oneof![0u64..6, Just(u64::MAX), Just(1 << 32), any::<u64>()],
        0..5,
    )
}

fn tensors() -> impl Strategy<Value = v1::Tensor> {
    (
        -1i32..6,
        shapes(),
        prop::collection::vec(any::<u8>(), 0..256),
    )
        .prop_map(|(dtype, shape, data)| v1::Tensor { dtype, shape, data })
}

fn videos() -> impl Strategy<Value = v1::Video> {
    (
        prop_oneof![0u32..5, Just(u32::MAX), any::<u32>()],
        prop_oneof![0u32..5, Just(u32::MAX), any::<u32>()],
        prop_oneof![
            Just(8.0f32),
            Just(0.0),
            Just(f32::NAN),
            Just(f32::INFINITY),
            any::<f32>()
        ],
        0u32..6,
        prop_oneof![0u32..8, Just(u32::MAX)],
        prop::collection::vec(prop::collection::vec(any::<u8>(), 0..80), 0..6),
    )
        .prop_map(
            |(width, height, fps, first_frame_index, total_frames, frames)| v1::Video {
                width,
                height,
                fps,
                first_frame_index,
                total_frames,
                frames,
            },
        )
}

/// A valid whole video: `frames` frames of `width` x `height`.
fn valid_videos() -> impl Strategy<Value = v1::Video> {
    (1u32..6, 1u32..6, 1u32..9).prop_flat_map(|(width, height, frames)| {
        let frame = (width * height * 3) as usize;
        prop::collection::vec(prop::collection::vec(any::<u8>(), frame), frames as usize).prop_map(
            move |frames| v1::Video {
                width,
                height,
                fps: 8.0,
                first_frame_index: 0,
                total_frames: frames.len() as u32,
                frames,
            },
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn tensor_decoding_never_panics_and_accepts_only_consistent_tensors(tensor in tensors()) {
        if let Ok((shape, values)) = tensor.to_f32() {
            let count: usize = shape.iter().product();
            prop_assert_eq!(values.len(), count);
            prop_assert!(values.len() * 2 <= tensor.data.len(), "more values than the bytes hold");
        }
    }

    #[test]
    fn f32_tensors_survive_the_wire_exactly(
        shape in prop::collection::vec(1usize..5, 1..4),
        seed in any::<u32>(),
    ) {
        let count: usize = shape.iter().product();
        let values: Vec<f32> = (0..count).map(|i| (i as f32 + seed as f32) * 0.37 - 1.0).collect();
        let tensor = v1::Tensor::from_f32(&shape, &values, v1::DType::F32)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let (back_shape, back) = tensor.to_f32().map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(back_shape, shape);
        prop_assert_eq!(back, values);
    }

    #[test]
    fn assembling_any_chunks_never_panics_and_yields_only_valid_videos(
        chunks in prop::collection::vec(videos(), 1..6),
    ) {
        let mut assembler = VideoAssembler::new();
        for chunk in chunks {
            if let Ok(Some(video)) = assembler.push(chunk) {
                prop_assert!(validate_video(&video).is_ok());
            }
        }
    }

    #[test]
    fn a_chunked_video_reassembles_to_itself(video in valid_videos(), budget in 1usize..400) {
        prop_assert!(validate_video(&video).is_ok());
        let mut assembler = VideoAssembler::new();
        let mut whole = None;
        for chunk in chunk_video(&video, budget) {
            prop_assert!(whole.is_none(), "a chunk after the last");
            whole = assembler.push(chunk).map_err(|e| TestCaseError::fail(e.to_string()))?;
        }
        prop_assert_eq!(whole, Some(video));
    }
}
