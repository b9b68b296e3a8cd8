//! The Video U-Net on the tiny cascade's stage configs: output shapes, what each conditioning
//! input (frame position, coordinate and layout maps, storyboard, time, text) changes, batch
//! independence, and the errors of bad configs and inputs.
//!
//! Integration tests: the configs come from `vidcascade-test-support`, which a unit test could
//! not use (it would link a second copy of this crate).

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use vidcascade_models::ModelError;
use vidcascade_models::repository::scaffold::all_finite;
use vidcascade_models::unet::{Prediction, UNetInputs, VideoUNet, VideoUNetConfig, known_frames};
use vidcascade_test_support::tiny_scaffold;

fn random_unet(config: &VideoUNetConfig) -> anyhow::Result<VideoUNet> {
    let varmap = VarMap::new();
    let unet = VideoUNet::new(
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
        config,
    )?;
    // Training init zeroes the output branches; give every weight a value so outputs depend on inputs.
    for var in varmap.all_vars() {
        let noise = Tensor::randn(0f32, 0.2, var.dims(), &Device::Cpu)?;
        var.set(&noise)?;
    }
    Ok(unet)
}

struct Batch {
    z: Tensor,
    t: Tensor,
    context: Tensor,
    mask: Tensor,
    cond: Option<Tensor>,
    aug: Option<Tensor>,
}

impl Batch {
    fn new(
        config: &VideoUNetConfig,
        b: usize,
        f: usize,
        side: usize,
        t: &[f32],
    ) -> anyhow::Result<Self> {
        let dev = Device::Cpu;
        let sr = config.is_super_resolution();
        Ok(Self {
            z: Tensor::randn(0f32, 1.0, (b, 3, f, side, side), &dev)?,
            t: Tensor::new(t, &dev)?,
            context: Tensor::randn(0f32, 1.0, (b, 5, config.context_dim), &dev)?,
            mask: Tensor::ones((b, 5), DType::F32, &dev)?,
            cond: if sr {
                Some(Tensor::randn(0f32, 1.0, (b, 3, f, side, side), &dev)?)
            } else {
                None
            },
            aug: if sr {
                Some(Tensor::full(0.1f32, b, &dev)?)
            } else {
                None
            },
        })
    }

    fn inputs(&self) -> UNetInputs<'_> {
        UNetInputs {
            z: &self.z,
            t: &self.t,
            context: &self.context,
            context_mask: &self.mask,
            cond: self.cond.as_ref(),
            aug_level: self.aug.as_ref(),
            known_frames: None,
        }
    }
}

fn stage_configs() -> Vec<(String, VideoUNetConfig, usize, usize)> {
    tiny_scaffold()
        .stages
        .into_iter()
        .map(|s| {
            let out = s.manifest.output.expect("diffusion stage output");
            (s.manifest.name, s.unet, out.frames, out.height)
        })
        .collect()
}

#[test]
fn output_shape_matches_input_for_base_tsr_and_ssr_configs() -> anyhow::Result<()> {
    for (name, config, frames, side) in stage_configs() {
        let unet = random_unet(&config)?;
        let batch = Batch::new(&config, 2, frames, side, &[0.3, 0.9])?;
        let v = unet.forward(&batch.inputs())?;
        assert_eq!(v.dims(), &[2, 3, frames, side, side], "stage {name}");
        assert!(all_finite(&v)?, "stage {name}");
    }
    Ok(())
}

#[test]
fn the_frame_embedding_tells_identical_frames_apart() -> anyhow::Result<()> {
    // Temporal attention averages identical frames into identical frames; only the frame's
    // position in the clip can make their predictions differ.
    let (_, config, frames, side) = stage_configs().remove(0);
    assert!(
        config.frame_embedding,
        "the tiny base stage embeds frame positions"
    );
    let spread_across_frames = |config: &VideoUNetConfig| -> anyhow::Result<f32> {
        let unet = random_unet(config)?;
        let mut batch = Batch::new(config, 1, frames, side, &[0.5])?;
        let frame = Tensor::randn(0f32, 1.0, (1, 3, 1, side, side), &Device::Cpu)?;
        batch.z = frame.repeat((1, 1, frames, 1, 1))?;
        let v = unet.forward(&batch.inputs())?;
        let first = v.narrow(2, 0, 1)?;
        Ok(v.broadcast_sub(&first)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?)
    };
    assert!(spread_across_frames(&config)? > 1e-3);
    // The storyboard also tells frames apart (by their place in the clip); drop it too.
    let without = VideoUNetConfig {
        frame_embedding: false,
        layout_storyboard_knots: 0,
        ..config
    };
    assert!(spread_across_frames(&without)? < 1e-5);
    Ok(())
}

#[test]
fn a_residual_prediction_needs_a_matching_conditioning_video() {
    let (_, base, _, _) = stage_configs().remove(0);
    let config = VideoUNetConfig {
        prediction: Prediction::X0Residual,
        ..base
    };
    match config.validate() {
        Err(ModelError::InvalidConfig { field, .. }) => assert_eq!(field, "prediction"),
        other => panic!("expected an invalid prediction, got {other:?}"),
    }
}

#[test]
fn position_and_layout_maps_tell_interior_pixels_of_a_uniform_frame_apart() -> anyhow::Result<()> {
    // Far from the borders a translation-equivariant network maps a uniform input to a
    // uniform output; only the coordinate maps tell it where a pixel is.
    let (_, config, frames, _) = stage_configs().remove(0);
    assert!(config.position_channels, "the tiny base stage has them");
    let side = 64;
    let interior_spread = |config: &VideoUNetConfig| -> anyhow::Result<f32> {
        let unet = random_unet(config)?;
        let mut batch = Batch::new(config, 1, frames, side, &[0.5])?;
        batch.z = Tensor::full(0.3f32, (1, 3, frames, side, side), &Device::Cpu)?;
        let v = unet.forward(&batch.inputs())?;
        let pixel = |y: usize, x: usize| -> anyhow::Result<Tensor> {
            Ok(v.narrow(3, y, 1)?.narrow(4, x, 1)?)
        };
        Ok((pixel(32, 28)? - pixel(32, 36)?)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?)
    };
    assert!(interior_spread(&config)? > 1e-3);
    // The layout map, computed from the conditioning vector, also varies across the frame.
    let layout_only = VideoUNetConfig {
        position_channels: false,
        ..config.clone()
    };
    assert!(layout_only.layout_channels > 0);
    assert!(interior_spread(&layout_only)? > 1e-3);
    let neither = VideoUNetConfig {
        position_channels: false,
        layout_channels: 0,
        layout_storyboard_knots: 0,
        ..config
    };
    assert!(interior_spread(&neither)? < 1e-4);
    Ok(())
}

#[test]
fn a_zero_storyboard_changes_nothing_and_a_trained_one_depends_on_the_caption() -> anyhow::Result<()>
{
    let (_, config, frames, side) = stage_configs().remove(0);
    assert!(config.layout_storyboard_knots > 0, "the tiny base has one");
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let with = VideoUNet::new(vb.clone(), &config)?;
    let without = VideoUNet::new(
        vb,
        &VideoUNetConfig {
            layout_storyboard_knots: 0,
            ..config.clone()
        },
    )?;
    let storyboard = |name: &str| name.starts_with("layout.storyboard.");
    let vars = varmap.data().lock().expect("varmap lock").clone();
    for (name, var) in &vars {
        let value = if storyboard(name) {
            Tensor::zeros(var.dims(), DType::F32, &Device::Cpu)?
        } else {
            Tensor::randn(0f32, 0.2, var.dims(), &Device::Cpu)?
        };
        var.set(&value)?;
    }
    let batch = Batch::new(&config, 2, frames, side, &[0.9, 0.9])?;
    let gap = |a: &Tensor, b: &Tensor| -> anyhow::Result<f32> {
        Ok((a - b)?.abs()?.max_all()?.to_scalar::<f32>()?)
    };
    // Zero storyboard (a migration's starting point): the same function as without it.
    let v_with = with.forward(&batch.inputs())?;
    assert!(gap(&v_with, &without.forward(&batch.inputs())?)? < 1e-6);
    // Trained: two clips with the same noise and time but different captions come apart more.
    let same_noise = Batch {
        z: batch.z.narrow(0, 0, 1)?.repeat((2, 1, 1, 1, 1))?,
        ..batch
    };
    let caption_gap = |unet: &VideoUNet| -> anyhow::Result<f32> {
        let v = unet.forward(&same_noise.inputs())?;
        gap(&v.narrow(0, 0, 1)?, &v.narrow(0, 1, 1)?)
    };
    let before = caption_gap(&with)?;
    for (name, var) in &vars {
        if storyboard(name) {
            var.set(&Tensor::randn(0f32, 1.0, var.dims(), &Device::Cpu)?)?;
        }
    }
    assert!(caption_gap(&with)? > before + 1e-3);
    Ok(())
}

#[test]
fn a_storyboard_needs_a_layout_map_and_two_knots() {
    let (_, base, _, _) = stage_configs().remove(0);
    for bad in [
        VideoUNetConfig {
            layout_channels: 0,
            ..base.clone()
        },
        VideoUNetConfig {
            layout_storyboard_knots: 1,
            ..base.clone()
        },
    ] {
        match bad.validate() {
            Err(ModelError::InvalidConfig { field, .. }) => {
                assert_eq!(field, "layout_storyboard_knots")
            }
            other => panic!("expected an invalid storyboard, got {other:?}"),
        }
    }
}

#[test]
fn configs_written_before_frame_embedding_and_prediction_still_load() -> anyhow::Result<()> {
    let (_, config, _, _) = stage_configs().remove(1);
    let mut json = serde_json::to_value(&config)?;
    let fields = json.as_object_mut().expect("a JSON object");
    fields.remove("frame_embedding");
    fields.remove("prediction");
    fields.remove("position_channels");
    fields.remove("layout_channels");
    fields.remove("layout_grid");
    fields.remove("layout_storyboard_knots");
    let old: VideoUNetConfig = serde_json::from_value(json)?;
    assert!(!old.frame_embedding && !old.position_channels);
    assert_eq!(old.layout_channels, 0);
    assert_eq!(old.layout_storyboard_knots, 0);
    assert_eq!(old.prediction, Prediction::V);
    Ok(())
}

#[test]
fn each_row_of_a_mixed_timestep_batch_is_computed_independently() -> anyhow::Result<()> {
    let (_, config, frames, side) = stage_configs().remove(0);
    let unet = random_unet(&config)?;
    let batch = Batch::new(&config, 3, frames, side, &[0.05, 0.5, 1.0])?;
    let together = unet.forward(&batch.inputs())?;
    for row in 0..3 {
        let single = Batch {
            z: batch.z.narrow(0, row, 1)?,
            t: batch.t.narrow(0, row, 1)?,
            context: batch.context.narrow(0, row, 1)?,
            mask: batch.mask.narrow(0, row, 1)?,
            cond: None,
            aug: None,
        };
        let alone = unet.forward(&single.inputs())?;
        let diff = (together.narrow(0, row, 1)? - alone)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(diff < 1e-4, "row {row} differs by {diff}");
    }
    // And the time input matters: the same video at two times gives two predictions.
    let a = together.get(0)?;
    let b = together.get(1)?;
    assert!((a - b)?.abs()?.sum_all()?.to_scalar::<f32>()? > 0.0);
    Ok(())
}

#[test]
fn padded_text_tokens_do_not_change_the_prediction() -> anyhow::Result<()> {
    let (_, config, frames, side) = stage_configs().remove(0);
    let unet = random_unet(&config)?;
    let batch = Batch::new(&config, 1, frames, side, &[0.5])?;
    let short = Batch {
        context: batch.context.narrow(1, 0, 3)?,
        mask: batch.mask.narrow(1, 0, 3)?,
        z: batch.z.clone(),
        t: batch.t.clone(),
        cond: None,
        aug: None,
    };
    let padded_mask = Tensor::new(&[[1f32, 1.0, 1.0, 0.0, 0.0]], &Device::Cpu)?;
    let padded = Batch {
        mask: padded_mask,
        ..batch
    };
    let a = unet.forward(&short.inputs())?;
    let b = unet.forward(&padded.inputs())?;
    let diff = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
    assert!(diff < 1e-4, "padding leaked into the prediction: {diff}");
    Ok(())
}

#[test]
fn bad_inputs_name_the_field() -> anyhow::Result<()> {
    let (_, base, frames, side) = stage_configs().remove(0);
    let unet = random_unet(&base)?;
    let good = Batch::new(&base, 1, frames, side, &[0.5])?;

    let odd_size = Batch::new(&base, 1, frames, side + 1, &[0.5])?;
    let err = unet.forward(&odd_size.inputs()).expect_err("odd size");
    assert!(
        err.to_string().contains("`z`") && err.to_string().contains("multiples of 2"),
        "{err}"
    );

    let too_long = Batch::new(&base, 1, base.max_frames + 1, side, &[0.5])?;
    let err = unet
        .forward(&too_long.inputs())
        .expect_err("too many frames");
    assert!(err.to_string().contains("at most 8"), "{err}");

    let mut inputs = good.inputs();
    let wrong_t = Tensor::new(&[0.5f32, 0.5], &Device::Cpu)?;
    inputs.t = &wrong_t;
    assert!(
        unet.forward(&inputs)
            .expect_err("t")
            .to_string()
            .contains("`t`")
    );

    let mut inputs = good.inputs();
    let cond = good.z.clone();
    inputs.cond = Some(&cond);
    assert!(
        unet.forward(&inputs)
            .expect_err("cond")
            .to_string()
            .contains("`cond`")
    );
    Ok(())
}

#[test]
fn zero_context_weights_change_nothing_and_trained_ones_read_the_known_frames() -> anyhow::Result<()>
{
    for (name, config, frames, side) in stage_configs() {
        assert!(
            config.context_frames,
            "the tiny {name} takes context frames"
        );
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let with = VideoUNet::new(vb.clone(), &config)?;
        let without = VideoUNet::new(
            vb,
            &VideoUNetConfig {
                context_frames: false,
                ..config.clone()
            },
        )?;
        let context_in = |n: &str| n.starts_with("context_in.");
        let vars = varmap.data().lock().expect("varmap lock").clone();
        assert!(vars.keys().any(|n| context_in(n)), "stage {name}");
        for (n, var) in &vars {
            if !context_in(n) {
                var.set(&Tensor::randn(0f32, 0.2, var.dims(), &Device::Cpu)?)?;
            }
        }
        let batch = Batch::new(&config, 2, frames, side, &[0.5, 0.9])?;
        let video = Tensor::randn(0f32, 1.0, (2, 3, frames, side, side), &Device::Cpu)?;
        let mut first = vec![0f32; 2 * frames];
        first[0] = 1.0;
        first[frames] = 1.0;
        let given = Tensor::from_vec(first, (2, frames), &Device::Cpu)?;
        let known = known_frames(&video, &given)?;
        let with_known = |known: Option<&Tensor>| -> anyhow::Result<Tensor> {
            Ok(with.forward(&UNetInputs {
                known_frames: known,
                ..batch.inputs()
            })?)
        };
        let gap = |a: &Tensor, b: &Tensor| -> anyhow::Result<f32> {
            Ok((a - b)?.abs()?.max_all()?.to_scalar::<f32>()?)
        };
        // Untrained (zero) context weights: the stage computes what it did without them, given
        // frames or not.
        let plain = without.forward(&batch.inputs())?;
        assert!(gap(&with_known(None)?, &plain)? < 1e-6, "stage {name}");
        assert!(
            gap(&with_known(Some(&known))?, &plain)? < 1e-6,
            "stage {name}"
        );
        // Trained: the known frames change the output; "nothing given" equals all-zero input.
        for (n, var) in &vars {
            if context_in(n) {
                var.set(&Tensor::randn(0f32, 0.5, var.dims(), &Device::Cpu)?)?;
            }
        }
        let nothing = known_frames(
            &video,
            &Tensor::zeros((2, frames), DType::F32, &Device::Cpu)?,
        )?;
        assert!(
            gap(&with_known(None)?, &with_known(Some(&nothing))?)? < 1e-5,
            "stage {name}"
        );
        assert!(
            gap(&with_known(Some(&known))?, &with_known(None)?)? > 1e-3,
            "stage {name}"
        );
        // Wrong shapes, and known frames for a stage without context, are named errors.
        let short = known.narrow(2, 0, frames - 1)?;
        for (unet, known) in [(&with, &short), (&without, &known)] {
            let err = unet.forward(&UNetInputs {
                known_frames: Some(known),
                ..batch.inputs()
            });
            assert!(
                matches!(
                    err,
                    Err(ModelError::InvalidInput {
                        field: "known_frames",
                        ..
                    })
                ),
                "stage {name}: {err:?}"
            );
        }
    }
    Ok(())
}
