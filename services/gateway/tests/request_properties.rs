//! Property test of request validation: any `GenerateRequest` a client can send is either
//! planned or refused as INVALID_ARGUMENT naming a field, with a bounded message — never a
//! panic, never another status.

use std::path::PathBuf;

use proptest::prelude::*;
use vidcascade_pipeline::{PipelineError, plan};
use vidcascade_proto::convert::request_from_wire;
use vidcascade_proto::v1;
use vidcascade_spec::Manifest;

fn manifest() -> Manifest {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/shapes");
    Manifest::load(&root).unwrap_or_else(|err| panic!("shipped manifest: {err}"))
}

fn floats() -> impl Strategy<Value = Option<f32>> {
    prop::option::of(prop_oneof![
        -2.0f32..40.0,
        Just(f32::NAN),
        Just(f32::INFINITY),
        any::<f32>()
    ])
}

fn settings() -> impl Strategy<Value = v1::SamplerSettings> {
    (
        prop::option::of(prop_oneof![0u32..70, any::<u32>()]),
        floats(),
        prop_oneof![0i32..4, any::<i32>()],
        floats(),
        floats(),
    )
        .prop_map(
            |(steps, guidance, sampler, noise_augmentation, threshold_quantile)| {
                v1::SamplerSettings {
                    steps,
                    guidance,
                    sampler,
                    noise_augmentation,
                    threshold_quantile,
                }
            },
        )
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("a red circle moving left".to_string()),
        "[a-z ]{0,40}",
        any::<String>(),
        Just("word ".repeat(600)),
    ]
}

fn requests() -> impl Strategy<Value = v1::GenerateRequest> {
    let stage = prop_oneof![
        Just("base".to_string()),
        Just("tsr".to_string()),
        Just("ssr".to_string()),
        Just("text-encoder".to_string()),
        any::<String>(),
    ];
    (
        text(),
        prop::collection::vec(
            (
                text(),
                prop_oneof![-1.0f32..20.0, Just(f32::NAN), any::<f32>()],
            ),
            0..4,
        ),
        prop::option::of(prop::collection::vec(any::<u8>(), 0..16)),
        prop::option::of(any::<u64>()),
        prop::collection::btree_map(stage, settings(), 0..3),
        prop_oneof![0u32..4, any::<u32>()],
    )
        .prop_map(
            |(prompt, segments, init_image_png, seed, overrides, preview_every)| {
                v1::GenerateRequest {
                    prompt,
                    segments: segments
                        .into_iter()
                        .map(|(prompt, seconds)| v1::Segment { prompt, seconds })
                        .collect(),
                    init_image_png,
                    seed,
                    stage_overrides: overrides.into_iter().collect(),
                    preview_every,
                    ..Default::default()
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_request_is_planned_or_refused_naming_a_field(request in requests()) {
        let manifest = manifest();
        let outcome = request_from_wire(&request)
            .map_err(|err| PipelineError::invalid(err.field(), err.to_string()))
            .and_then(|request| plan(&request, &manifest, 1));
        match outcome {
            Ok(planned) => {
                prop_assert!(!planned.clips.is_empty());
                prop_assert!(planned.stages.iter().all(|s| s.settings.steps >= 1));
            }
            Err(PipelineError::InvalidArgument { field, reason }) => {
                prop_assert!(!field.is_empty(), "an error without a field: {reason}");
                prop_assert!(
                    field.len() + reason.len() < 600,
                    "an unbounded message ({} + {} bytes)",
                    field.len(),
                    reason.len()
                );
            }
            Err(other) => prop_assert!(false, "not INVALID_ARGUMENT: {other}"),
        }
    }
}
