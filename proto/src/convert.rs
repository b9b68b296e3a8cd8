//! `vidcascade.v1` messages to and from the cascade's own types (`vidcascade-spec`), so the
//! services, the gateway and the CLI client move videos, settings and requests across the wire
//! the same way. Tensors stay out of this crate: the services that own tensors convert them.

use vidcascade_spec::manifest::{StageKind, StageManifest, VideoShape};
use vidcascade_spec::{ErrorType, GenerateRequest, SamplerKind, Segment, StageOverrides, Video};

use crate::v1;
use crate::wire::{WireError, validate_video};

/// Per-request sampler settings from the wire; unset fields keep the stage's defaults. An enum
/// value the contract does not define is an error naming `sampler` (prefix it with
/// [`WireError::within`]), not a silent default.
pub fn overrides_from_wire(
    settings: Option<&v1::SamplerSettings>,
) -> Result<StageOverrides, WireError> {
    let Some(settings) = settings else {
        return Ok(StageOverrides::default());
    };
    let sampler = v1::Sampler::try_from(settings.sampler).map_err(|_| {
        WireError::invalid(
            "sampler",
            "SAMPLER_UNSPECIFIED (0), SAMPLER_DDIM (1) or SAMPLER_ANCESTRAL (2)",
            settings.sampler,
        )
    })?;
    Ok(StageOverrides {
        steps: settings.steps.map(|s| s as usize),
        guidance: settings.guidance.map(f64::from),
        sampler: match sampler {
            v1::Sampler::Unspecified => None,
            v1::Sampler::Ddim => Some(SamplerKind::Ddim),
            v1::Sampler::Ancestral => Some(SamplerKind::Ancestral),
        },
        noise_augmentation: settings.noise_augmentation.map(f64::from),
        threshold_quantile: settings.threshold_quantile.map(f64::from),
    })
}

/// Sampler settings for the wire (unset fields stay unset).
pub fn overrides_to_wire(overrides: &StageOverrides) -> v1::SamplerSettings {
    v1::SamplerSettings {
        steps: overrides.steps.map(|s| s.min(u32::MAX as usize) as u32),
        guidance: overrides.guidance.map(|g| g as f32),
        sampler: match overrides.sampler {
            None => v1::Sampler::Unspecified,
            Some(SamplerKind::Ddim) => v1::Sampler::Ddim,
            Some(SamplerKind::Ancestral) => v1::Sampler::Ancestral,
        } as i32,
        noise_augmentation: overrides.noise_augmentation.map(|a| a as f32),
        threshold_quantile: overrides.threshold_quantile.map(|q| q as f32),
    }
}

/// A manifest video shape on the wire.
pub fn shape_to_wire(shape: &VideoShape) -> v1::VideoShape {
    v1::VideoShape {
        frames: shape.frames as u32,
        height: shape.height as u32,
        width: shape.width as u32,
        fps: shape.fps,
    }
}

/// A stage kind on the wire.
pub fn kind_to_wire(kind: StageKind) -> v1::StageKind {
    match kind {
        StageKind::TextEncoder => v1::StageKind::TextEncoder,
        StageKind::Base => v1::StageKind::Base,
        StageKind::Tsr => v1::StageKind::Tsr,
        StageKind::Ssr => v1::StageKind::Ssr,
    }
}

/// A stage's defaults as wire sampler settings (every field set).
pub fn defaults_to_wire(stage: &StageManifest) -> v1::SamplerSettings {
    let defaults = stage.defaults;
    overrides_to_wire(&StageOverrides {
        steps: Some(defaults.steps),
        guidance: Some(defaults.guidance),
        sampler: Some(defaults.sampler),
        noise_augmentation: Some(defaults.noise_augmentation),
        threshold_quantile: defaults.threshold_quantile,
    })
}

/// A stage's manifest entry as `StageInfo` (shapes, kind, defaults; limits left for the caller).
pub fn stage_info(stage: &StageManifest) -> v1::StageInfo {
    v1::StageInfo {
        name: stage.name.clone(),
        kind: kind_to_wire(stage.kind) as i32,
        input: stage.input.as_ref().map(shape_to_wire),
        output: stage.output.as_ref().map(shape_to_wire),
        defaults: (stage.kind != StageKind::TextEncoder).then(|| defaults_to_wire(stage)),
        max_request_bytes: crate::MAX_STAGE_REQUEST_BYTES as u64,
        max_context_frames: stage.max_context_frames as u32,
        ..Default::default()
    }
}

/// A video as a `vidcascade.v1.Video` message (whole, `first_frame_index` 0).
pub fn video_to_wire(video: &Video) -> v1::Video {
    v1::Video {
        width: video.width as u32,
        height: video.height as u32,
        fps: video.fps,
        first_frame_index: 0,
        total_frames: video.frames.len() as u32,
        frames: video.frames.clone(),
    }
}

/// A whole `vidcascade.v1.Video` message as a video, after checking it against the contract.
pub fn video_from_wire(video: v1::Video) -> Result<Video, WireError> {
    validate_video(&video)?;
    Ok(Video {
        width: video.width as usize,
        height: video.height as usize,
        fps: video.fps,
        frames: video.frames,
    })
}

/// A segment of a prompt sequence on the wire.
pub fn segment_to_wire(segment: &Segment) -> v1::Segment {
    v1::Segment {
        prompt: segment.prompt.clone(),
        seconds: segment.seconds,
    }
}

/// A `Gateway.Generate` request as the pipeline reads it (limits are checked by its plan);
/// undefined enum values are errors naming the field (`stage_overrides[base].sampler`).
pub fn request_from_wire(request: &v1::GenerateRequest) -> Result<GenerateRequest, WireError> {
    let overrides = request
        .stage_overrides
        .iter()
        .map(|(stage, settings)| {
            let overrides = overrides_from_wire(Some(settings))
                .map_err(|err| err.within(&format!("stage_overrides[{stage}]")))?;
            Ok((stage.clone(), overrides))
        })
        .collect::<Result<_, WireError>>()?;
    Ok(GenerateRequest {
        prompt: request.prompt.clone(),
        segments: request
            .segments
            .iter()
            .map(|s| Segment {
                prompt: s.prompt.clone(),
                seconds: s.seconds,
            })
            .collect(),
        init_image_png: request.init_image_png.clone(),
        seed: request.seed,
        overrides,
        preview_every: request.preview_every,
    })
}

/// The gRPC status code of each outcome: one table for every service.
pub fn status_code(error_type: ErrorType) -> tonic::Code {
    match error_type {
        ErrorType::InvalidArgument => tonic::Code::InvalidArgument,
        ErrorType::ResourceExhausted => tonic::Code::ResourceExhausted,
        ErrorType::Unavailable => tonic::Code::Unavailable,
        ErrorType::DeadlineExceeded => tonic::Code::DeadlineExceeded,
        ErrorType::Cancelled => tonic::Code::Cancelled,
        ErrorType::Internal => tonic::Code::Internal,
    }
}

/// A status from an outcome and its message.
pub fn status(error_type: ErrorType, message: impl Into<String>) -> tonic::Status {
    tonic::Status::new(status_code(error_type), message)
}

/// The canonical name of a gRPC status code, e.g. `DEADLINE_EXCEEDED` (as the gRPC spec, the
/// HTTP API's error bodies and load reports spell it).
pub fn code_name(code: tonic::Code) -> String {
    let words = format!("{code:?}");
    let mut name = String::with_capacity(words.len() + 4);
    for (i, c) in words.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            name.push('_');
        }
        name.push(c.to_ascii_uppercase());
    }
    name
}

/// The outcome a status code reports, as seen by a caller of another service.
pub fn error_type_of(code: tonic::Code) -> ErrorType {
    match code {
        tonic::Code::InvalidArgument | tonic::Code::OutOfRange => ErrorType::InvalidArgument,
        tonic::Code::ResourceExhausted => ErrorType::ResourceExhausted,
        tonic::Code::Unavailable => ErrorType::Unavailable,
        tonic::Code::DeadlineExceeded => ErrorType::DeadlineExceeded,
        tonic::Code::Cancelled => ErrorType::Cancelled,
        _ => ErrorType::Internal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_names_are_canonical() {
        assert_eq!(
            code_name(tonic::Code::DeadlineExceeded),
            "DEADLINE_EXCEEDED"
        );
        assert_eq!(code_name(tonic::Code::InvalidArgument), "INVALID_ARGUMENT");
        assert_eq!(code_name(tonic::Code::Unavailable), "UNAVAILABLE");
        assert_eq!(code_name(tonic::Code::Ok), "OK");
    }

    #[test]
    fn videos_round_trip() -> Result<(), WireError> {
        let video = Video {
            width: 2,
            height: 1,
            fps: 4.0,
            frames: vec![vec![0, 1, 2, 3, 4, 5], vec![250, 251, 252, 253, 254, 255]],
        };
        assert_eq!(video_from_wire(video_to_wire(&video))?, video);
        Ok(())
    }

    #[test]
    fn sampler_settings_round_trip() {
        let overrides = StageOverrides {
            steps: Some(7),
            guidance: Some(2.5),
            sampler: Some(SamplerKind::Ancestral),
            noise_augmentation: None,
            threshold_quantile: Some(0.5),
        };
        let back = overrides_from_wire(Some(&overrides_to_wire(&overrides)));
        assert_eq!(back, Ok(overrides));
        assert_eq!(overrides_from_wire(None), Ok(StageOverrides::default()));
    }

    #[test]
    fn an_undefined_sampler_is_rejected_naming_the_field() {
        let mut request = v1::GenerateRequest {
            prompt: "red".into(),
            ..Default::default()
        };
        let settings = v1::SamplerSettings {
            sampler: 99,
            ..Default::default()
        };
        request.stage_overrides.insert("base".into(), settings);
        let err = request_from_wire(&request).expect_err("sampler 99");
        assert_eq!(err.field(), "stage_overrides[base].sampler");
        assert!(err.to_string().contains("found 99"), "{err}");
    }

    #[test]
    fn every_outcome_maps_to_a_code_and_back() {
        for error_type in [
            ErrorType::InvalidArgument,
            ErrorType::ResourceExhausted,
            ErrorType::Unavailable,
            ErrorType::DeadlineExceeded,
            ErrorType::Cancelled,
            ErrorType::Internal,
        ] {
            assert_eq!(error_type_of(status_code(error_type)), error_type);
        }
    }
}
