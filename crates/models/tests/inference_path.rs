//! The inference path (`vidcascade_models::fast`, the kernels' CPU ops) against the composed,
//! differentiable path the training tool uses, on every stage configuration: the tiny test
//! cascade's and the shipped `models/shapes` cascade's, at their real sizes.
//!
//! Both U-Nets hold the same random weights (every tensor, including the zero-initialised
//! output branches); the composed one holds them as training variables, which is exactly what
//! routes a forward pass through the differentiable ops.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use vidcascade_models::unet::{UNetInputs, VideoUNet, VideoUNetConfig, known_frames};
use vidcascade_test_support::tiny_scaffold;

/// Largest allowed `|fast - composed|`, relative to the largest `|composed|`: both paths run
/// the same maths in `f32`, in a different order of summation.
const TOLERANCE: f32 = 1e-5;

/// A stage config with the video shape it runs at: (name, config, frames, height, width).
type Stage = (String, VideoUNetConfig, usize, usize, usize);

fn stages() -> anyhow::Result<Vec<Stage>> {
    let mut stages: Vec<Stage> = tiny_scaffold()
        .stages
        .into_iter()
        .filter_map(|s| {
            let out = s.manifest.output?;
            Some((
                format!("tiny/{}", s.manifest.name),
                s.unet,
                out.frames,
                out.height,
                out.width,
            ))
        })
        .collect();
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/shapes");
    let repo = vidcascade_models::ModelRepository::open(&shipped)?;
    for stage in repo.manifest().diffusion_stages() {
        let out = stage
            .output
            .ok_or_else(|| anyhow::anyhow!("no output shape"))?;
        let config = repo.unet_config(&stage.name)?.clone();
        stages.push((
            format!("shapes/{}", stage.name),
            config,
            out.frames,
            out.height,
            out.width,
        ));
    }
    Ok(stages)
}

/// The same random weights as training variables (composed path) and as plain tensors.
fn twin_unets(config: &VideoUNetConfig) -> anyhow::Result<(VideoUNet, VideoUNet, VarMap)> {
    let varmap = VarMap::new();
    let composed = VideoUNet::new(
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
        config,
    )?;
    let mut plain = HashMap::new();
    for (name, var) in varmap
        .data()
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .iter()
    {
        let noise = Tensor::randn(0f32, 0.2, var.dims(), &Device::Cpu)?;
        var.set(&noise)?;
        plain.insert(name.clone(), var.as_tensor().detach());
    }
    let fast = VideoUNet::new(
        VarBuilder::from_tensors(plain, DType::F32, &Device::Cpu),
        config,
    )?;
    Ok((composed, fast, varmap))
}

struct Inputs {
    z: Tensor,
    t: Tensor,
    context: Tensor,
    mask: Tensor,
    cond: Option<Tensor>,
    aug: Option<Tensor>,
    known: Option<Tensor>,
}

impl Inputs {
    /// Two videos (as a guided stage batches them), the second with two padded text tokens;
    /// a stage with context frames gets the first frame of the first video and none of the
    /// second.
    fn new(config: &VideoUNetConfig, frames: usize, h: usize, w: usize) -> anyhow::Result<Self> {
        let dev = Device::Cpu;
        let sr = config.is_super_resolution();
        let video = |c: usize| Tensor::randn(0f32, 1.0, (2, c, frames, h, w), &dev);
        Ok(Self {
            z: video(config.in_channels)?,
            t: Tensor::new(&[0.3f32, 0.8], &dev)?,
            context: Tensor::randn(0f32, 1.0, (2, 6, config.context_dim), &dev)?,
            mask: Tensor::new(
                &[[1f32, 1., 1., 1., 1., 1.], [1., 1., 1., 1., 0., 0.]],
                &dev,
            )?,
            cond: sr.then(|| video(config.cond_channels)).transpose()?,
            aug: sr.then(|| Tensor::new(&[0.1f32, 0.2], &dev)).transpose()?,
            known: config
                .context_frames
                .then(|| {
                    let mut given = vec![0f32; 2 * frames];
                    given[0] = 1.0;
                    known_frames(&video(3)?, &Tensor::from_vec(given, (2, frames), &dev)?)
                })
                .transpose()?,
        })
    }

    fn unet_inputs(&self) -> UNetInputs<'_> {
        UNetInputs {
            z: &self.z,
            t: &self.t,
            context: &self.context,
            context_mask: &self.mask,
            cond: self.cond.as_ref(),
            aug_level: self.aug.as_ref(),
            known_frames: self.known.as_ref(),
        }
    }
}

/// `max |t|`.
fn max_abs(t: &Tensor) -> anyhow::Result<f32> {
    Ok(t.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?)
}

#[test]
fn the_inference_path_matches_the_training_path_on_every_stage() -> anyhow::Result<()> {
    for (name, config, frames, h, w) in stages()? {
        let (composed, fast, _vars) = twin_unets(&config)?;
        let inputs = Inputs::new(&config, frames, h, w)?;
        let want = composed.forward(&inputs.unet_inputs())?;
        let got = fast.forward(&inputs.unet_inputs())?;
        assert!(
            !got.track_op() && want.track_op(),
            "{name}: the paths were not the two paths"
        );
        let (diff, scale) = (max_abs(&(&got - &want)?)?, max_abs(&want)?);
        println!("{name}: max |fast - composed| = {diff:.2e}, max |composed| = {scale:.2e}");
        assert!(
            scale > 0.1,
            "{name}: outputs too small to compare ({scale})"
        );
        assert!(
            diff <= TOLERANCE * scale,
            "{name}: {diff} > {TOLERANCE} x {scale}"
        );
    }
    Ok(())
}

#[test]
fn training_variables_keep_every_gradient() -> anyhow::Result<()> {
    for (name, config, frames, h, w) in stages()?.into_iter().filter(|s| s.0.starts_with("tiny/")) {
        let (composed, _, varmap) = twin_unets(&config)?;
        let inputs = Inputs::new(&config, frames, h, w)?;
        let loss = composed.forward(&inputs.unet_inputs())?.sqr()?.mean_all()?;
        let grads = loss.backward()?;
        for (var_name, var) in varmap
            .data()
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .iter()
        {
            let grad = grads.get(var.as_tensor());
            assert!(grad.is_some(), "{name}: no gradient reaches {var_name}");
        }
    }
    Ok(())
}

/// The U-Net over `varmap`'s current values, converted to `dtype`, as plain tensors.
fn unet_as(config: &VideoUNetConfig, varmap: &VarMap, dtype: DType) -> anyhow::Result<VideoUNet> {
    let plain: HashMap<String, Tensor> = varmap
        .data()
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .iter()
        .map(|(name, var)| (name.clone(), var.as_tensor().detach()))
        .collect();
    Ok(VideoUNet::new(
        VarBuilder::from_tensors(plain, dtype, &Device::Cpu),
        config,
    )?)
}

/// f16 weights take the GPU's inference path — candle's native convolution and softmax, and the
/// flash attention op for all three attentions (on the CPU its `cpu_fwd`, the kernel's
/// algorithm with the kernel's rounding) — so the casts, the f32 islands (time sinusoids, norm
/// statistics, key-padding bias) and the attention layouts are checked here, GPU or not. (bf16
/// shares every line of it but candle's CPU has no bf16 matmul: `tests/gpu.rs` covers it.)
#[test]
fn half_precision_weights_follow_the_f32_prediction_on_every_stage() -> anyhow::Result<()> {
    // Relative to max |f32 prediction|; f16's unit roundoff is 4.9e-4 and random weights at
    // this depth amplify it (measured: 1.1e-3 to 1.9e-3).
    for (dtype, tolerance) in [(DType::F16, 1e-2f32)] {
        for (name, config, frames, h, w) in stages()? {
            let (_, fast, varmap) = twin_unets(&config)?;
            let half = unet_as(&config, &varmap, dtype)?;
            assert_eq!(half.dtype(), dtype);
            let inputs = Inputs::new(&config, frames, h, w)?;
            let want = fast.forward(&inputs.unet_inputs())?;
            let got = half.forward(&inputs.unet_inputs())?;
            assert_eq!(
                got.dtype(),
                DType::F32,
                "{name}: predictions come back as f32"
            );
            let (diff, scale) = (max_abs(&(&got - &want)?)?, max_abs(&want)?);
            println!("{name} {dtype:?}: max |half - f32| = {diff:.2e}, max |f32| = {scale:.2e}");
            assert!(
                diff <= tolerance * scale,
                "{name} {dtype:?}: {diff} > {tolerance} x {scale}"
            );
        }
    }
    Ok(())
}
