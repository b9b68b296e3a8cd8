//! A fused sampler step for a batch in which every sample has its own time: the GPU path of
//! `vidcascade_diffusion::step_batch`, with its CPU reference.
//!
//! Per sample `b` of `B` (each `N` elements), from the batched model output `v_all` (`R` rows:
//! the conditional rows and, for guided samples, the unconditional ones):
//!
//! 1. guidance `v = v_u + w (v_c - v_u)` (or `v_c`), `x0 = alpha_t z - sigma_t v`,
//!    `eps = sigma_t z + alpha_t v`, and a sticky per-sample non-finite flag;
//! 2. dynamic thresholding of `x0` with the exact `p`-quantile of `|x0|` (numpy's
//!    interpolation), found on the device by a radix select ([`radix`]);
//! 3. the last-step clamp, DDIM `alpha_s x0 + sigma_s eps`, or the ancestral posterior draw
//!    `c_z z + c_x x0 + std n` with counter-based Philox noise ([`philox`]).
//!
//! Why fused: done per sample with tensor ops, a step costs about fifteen launches per sample
//! and two host round trips (the non-finite check and the quantile read the sample back), so
//! the GPU idles between them. Here the whole batch's step is at most seven launches on
//! candle's stream and nothing returns to the host: the quantile never leaves the device, and
//! the flags are read only when the caller reads the samples anyway (the sampler: at a
//! sample's last step).
//!
//! The CUDA source is `kernels/cuda/sampler_step.cu` (PTX checked in under `kernels/ptx/`);
//! `reference.rs` is the same algorithm over plain slices, phase by phase, so the CPU tests
//! test what the GPU runs. Each arithmetic step is one IEEE operation in both (the kernels use
//! `__fmul_rn` & co., which the compiler may not fuse into FMAs), in the order the existing
//! tensor code uses: the reference equals `vidcascade_diffusion::{guidance, step, threshold}`
//! bit for bit (up to the sign of zero), and so should the GPU for last and DDIM steps; its
//! ancestral noise differs from the reference's in the last bits (CUDA's `logf`, `sinf`, `cosf`).
//!
//! [`FusedSamplerStep`] is not a candle `CustomOp`: those return one tensor, and this step
//! returns three (`z_next`, `x0`, flags). It is the same shape otherwise: `cpu_fwd` runs the
//! reference, `cuda_fwd` (feature `cuda`) launches the kernels on the tensors' own buffers.

#[cfg(feature = "cuda")]
mod cuda;
pub mod philox;
pub mod radix;
mod reference;

use candle_core::{DType, Device, Result, Tensor, bail};

pub use philox::NoiseKey;

/// What a step does after thresholding.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Update {
    /// The last step lands on t = 0: `z = clamp(x0, -1, 1)`.
    Last,
    /// DDIM (eta = 0) to `(alpha_s, sigma_s)`: `z = alpha_s x0 + sigma_s eps`.
    Ddim {
        /// `alpha` at the next time.
        alpha_s: f64,
        /// `sigma` at the next time.
        sigma_s: f64,
    },
    /// A draw from the DDPM posterior: `z = c_z z + c_x x0 + std n`, `n` from Philox.
    Ancestral {
        /// Coefficient of the current latent.
        c_z: f64,
        /// Coefficient of the x0 estimate.
        c_x: f64,
        /// Posterior standard deviation.
        std: f64,
        /// The request's seed (the Philox key).
        seed: u64,
        /// The sample's noise stream.
        stream: u64,
    },
}

/// How one sample of the batch is advanced. Scales are exact (f64) here and rounded to f32 once,
/// the way candle rounds a scalar operand of an f32 tensor op.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SampleSpec {
    /// Row of `v_all` with this sample's conditional prediction.
    pub cond_row: usize,
    /// Row with the unconditional prediction; ignored (no guidance) when `guidance == 1`.
    pub uncond_row: Option<usize>,
    /// Classifier-free guidance weight `w`.
    pub guidance: f64,
    /// `alpha` at the current time.
    pub alpha_t: f64,
    /// `sigma` at the current time.
    pub sigma_t: f64,
    /// Dynamic thresholding quantile `p` in (0, 1]; `None` for no thresholding.
    pub threshold_quantile: Option<f64>,
    /// The update after thresholding.
    pub update: Update,
    /// The 1-based step being run: recorded in the non-finite flag and, for ancestral steps,
    /// part of the Philox counter.
    pub step: u32,
}

/// Whether [`FusedSamplerStep::forward`] runs on CUDA tensors in this build (the `cuda`
/// feature); without it, callers keep their own path for CUDA latents.
pub const CUDA_ENABLED: bool = cfg!(feature = "cuda");

/// Flag bit: the guided model output held NaN or infinity.
pub const FLAG_MODEL_OUTPUT: u32 = 1;
/// Flag bit: the x0 estimate held NaN or infinity (checked only when thresholding, as the
/// tensor path does).
pub const FLAG_X0_ESTIMATE: u32 = 2;
/// The largest step a flag can record (the step sits above the two kind bits).
pub const MAX_FLAG_STEP: u32 = u32::MAX >> 2;

/// The first non-finite value a sample met, decoded from its flag word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NonFiniteFlag {
    /// The step at which it was found.
    pub step: u32,
    /// Whether the model output itself was non-finite (else only the x0 estimate was).
    pub model_output: bool,
}

impl NonFiniteFlag {
    /// Decodes a flag word: 0 means finite so far; otherwise `(step << 2) | kinds` of the first
    /// step that found a non-finite value (later steps leave the word as it is).
    pub fn decode(flag: u32) -> Option<Self> {
        (flag != 0).then_some(Self {
            step: flag >> 2,
            model_output: flag & FLAG_MODEL_OUTPUT != 0,
        })
    }

    /// What was non-finite, in the words of `vidcascade_diffusion`'s errors.
    pub fn what(&self) -> &'static str {
        if self.model_output {
            "model output"
        } else {
            "x0 estimate"
        }
    }
}

/// The outputs of one fused step.
#[derive(Debug, Clone)]
pub struct FusedStepOutput {
    /// The next latents `[B, N]` (after the last step: the clamped video).
    pub z_next: Tensor,
    /// The (thresholded) x0 estimates `[B, N]`.
    pub x0: Tensor,
    /// The sticky non-finite flags `[B]` u32 (see [`NonFiniteFlag::decode`]).
    pub flags: Tensor,
}

/// One sampler step for a whole batch, each sample with its own [`SampleSpec`].
#[derive(Debug, Clone)]
pub struct FusedSamplerStep {
    specs: Vec<SampleSpec>,
}

/// Shapes of one call: `batch` samples of `n` elements, `rows` rows of model output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Dims {
    pub(crate) batch: usize,
    pub(crate) rows: usize,
    pub(crate) n: usize,
}

impl FusedSamplerStep {
    /// A step for `specs.len()` samples; sample `b` is row `b` of `z`.
    pub fn new(specs: Vec<SampleSpec>) -> Self {
        Self { specs }
    }

    /// Runs the step: `z` `[B, N]` f32, `v_all` `[R, N]` f32, `flags` `[B]` u32 (the flags the
    /// previous steps returned, zeros at first), all on one device. CPU tensors run the
    /// reference; CUDA tensors the kernels (with the `cuda` feature).
    pub fn forward(&self, z: &Tensor, v_all: &Tensor, flags: &Tensor) -> Result<FusedStepOutput> {
        let dims = self.check(z, v_all, flags)?;
        let params = self.device_params(dims)?;
        match z.device() {
            Device::Cpu => self.cpu_fwd(z, v_all, flags, &params, dims),
            #[cfg(feature = "cuda")]
            Device::Cuda(_) => self.cuda_fwd(z, v_all, flags, &params, dims),
            other => bail!(
                "fused sampler step: no implementation for {other:?} (CPU, or CUDA with the \
                 `cuda` feature of vidcascade-kernels)"
            ),
        }
    }

    /// The CPU path: the reference over the tensors' values.
    fn cpu_fwd(
        &self,
        z: &Tensor,
        v_all: &Tensor,
        flags: &Tensor,
        params: &[DeviceParams],
        dims: Dims,
    ) -> Result<FusedStepOutput> {
        let z_values = z.flatten_all()?.to_vec1::<f32>()?;
        let v_values = v_all.flatten_all()?.to_vec1::<f32>()?;
        let flag_values = flags.to_vec1::<u32>()?;
        let out = reference::fused_step(&z_values, &v_values, dims.n, params, &flag_values);
        let shape = (dims.batch, dims.n);
        Ok(FusedStepOutput {
            z_next: Tensor::from_vec(out.z_next, shape, &Device::Cpu)?,
            x0: Tensor::from_vec(out.x0, shape, &Device::Cpu)?,
            flags: Tensor::from_vec(out.flags, dims.batch, &Device::Cpu)?,
        })
    }

    /// The CUDA path: the kernels on the tensors' buffers, on candle's stream.
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        z: &Tensor,
        v_all: &Tensor,
        flags: &Tensor,
        params: &[DeviceParams],
        dims: Dims,
    ) -> Result<FusedStepOutput> {
        let (z, v_all, flags) = (z.contiguous()?, v_all.contiguous()?, flags.contiguous()?);
        cuda::forward(&z, &v_all, &flags, params, dims)
    }

    /// Checks shapes, dtypes and devices; every message names the tensor and what was expected.
    fn check(&self, z: &Tensor, v_all: &Tensor, flags: &Tensor) -> Result<Dims> {
        let (batch, n) = z.dims2()?;
        let (rows, v_n) = v_all.dims2()?;
        let op = "fused sampler step";
        if (z.dtype(), v_all.dtype(), flags.dtype()) != (DType::F32, DType::F32, DType::U32) {
            bail!(
                "{op}: z and v_all must be f32 and flags u32, got {:?}, {:?}, {:?}",
                z.dtype(),
                v_all.dtype(),
                flags.dtype()
            );
        }
        if v_n != n || flags.dims() != [batch] || self.specs.len() != batch {
            bail!(
                "{op}: z is [{batch}, {n}], so v_all must be [R, {n}], flags [{batch}] and there \
                 must be {batch} specs; got v_all {:?}, flags {:?}, {} specs",
                v_all.dims(),
                flags.dims(),
                self.specs.len()
            );
        }
        if !z.device().same_device(v_all.device()) || !z.device().same_device(flags.device()) {
            bail!("{op}: z, v_all and flags must be on one device");
        }
        // Grid y is the sample (at most 65535); element indices of the noise counter are u32.
        if batch == 0 || batch > 65_535 || n == 0 || n > u32::MAX as usize {
            bail!("{op}: need 1..=65535 samples of 1..=2^32-1 elements, got [{batch}, {n}]");
        }
        Ok(Dims { batch, rows, n })
    }

    /// The per-sample parameters as the kernels read them, after checking each spec.
    fn device_params(&self, dims: Dims) -> Result<Vec<DeviceParams>> {
        self.specs
            .iter()
            .enumerate()
            .map(|(b, spec)| {
                DeviceParams::new(spec, dims).map_err(|e| e.context(format!("spec {b}")))
            })
            .collect()
    }
}

/// `Update` as the kernels see it.
pub(crate) const UPDATE_LAST: u32 = 0;
pub(crate) const UPDATE_DDIM: u32 = 1;
pub(crate) const UPDATE_ANCESTRAL: u32 = 2;

/// One sample's parameters, laid out as `struct SampleParams` in `sampler_step.cu`: `frac`
/// first, then twenty 4-byte fields, so there is no padding and both sides assert 88 bytes.
/// Scales are f32 here, rounded once from the spec's f64; the quantile's ranks and fraction are
/// computed on the host in f64.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct DeviceParams {
    /// Fraction between the two order statistics of the quantile.
    pub(crate) frac: f64,
    pub(crate) cond_row: i32,
    /// -1: no unconditional row (no guidance).
    pub(crate) uncond_row: i32,
    pub(crate) guidance: f32,
    pub(crate) alpha_t: f32,
    pub(crate) sigma_t: f32,
    pub(crate) alpha_s: f32,
    pub(crate) sigma_s: f32,
    pub(crate) c_z: f32,
    pub(crate) c_x: f32,
    pub(crate) noise_std: f32,
    /// `UPDATE_*`.
    pub(crate) update: u32,
    /// 1: dynamic thresholding with the order statistics `rank_lo`, `rank_hi` and `frac`.
    pub(crate) threshold: u32,
    pub(crate) rank_lo: u32,
    pub(crate) rank_hi: u32,
    pub(crate) step: u32,
    pub(crate) key_lo: u32,
    pub(crate) key_hi: u32,
    pub(crate) stream_lo: u32,
    pub(crate) stream_hi: u32,
    pub(crate) reserved: u32,
}

const _: () = assert!(std::mem::size_of::<DeviceParams>() == 88);
const _: () = assert!(std::mem::offset_of!(DeviceParams, frac) == 0);
const _: () = assert!(std::mem::offset_of!(DeviceParams, reserved) == 84);

impl DeviceParams {
    fn new(spec: &SampleSpec, dims: Dims) -> Result<Self> {
        let row = |r: usize, what: &str| -> Result<i32> {
            if r >= dims.rows {
                bail!("{what} row {r} is outside v_all's {} rows", dims.rows);
            }
            Ok(r as i32)
        };
        if !spec.guidance.is_finite() || !spec.alpha_t.is_finite() || !spec.sigma_t.is_finite() {
            bail!("guidance, alpha_t and sigma_t must be finite, got {spec:?}");
        }
        if spec.step == 0 || spec.step > MAX_FLAG_STEP {
            bail!("step must be in 1..={MAX_FLAG_STEP}, got {}", spec.step);
        }
        // Exactly like `classifier_free_guidance`: weight 1 is the conditional prediction itself.
        let uncond_row = match spec.uncond_row {
            Some(r) if spec.guidance != 1.0 => row(r, "unconditional")?,
            Some(_) => -1,
            None if spec.guidance != 1.0 => {
                bail!("guidance {} needs an unconditional row", spec.guidance)
            }
            None => -1,
        };
        let mut p = Self {
            frac: 0.0,
            cond_row: row(spec.cond_row, "conditional")?,
            uncond_row,
            guidance: spec.guidance as f32,
            alpha_t: spec.alpha_t as f32,
            sigma_t: spec.sigma_t as f32,
            alpha_s: 0.0,
            sigma_s: 0.0,
            c_z: 0.0,
            c_x: 0.0,
            noise_std: 0.0,
            update: UPDATE_LAST,
            threshold: 0,
            rank_lo: 0,
            rank_hi: 0,
            step: spec.step,
            key_lo: 0,
            key_hi: 0,
            stream_lo: 0,
            stream_hi: 0,
            reserved: 0,
        };
        p.set_update(spec.update)?;
        if let Some(q) = spec.threshold_quantile {
            if !(q > 0.0 && q <= 1.0) {
                bail!("threshold_quantile must be in (0, 1], got {q}");
            }
            let (lo, hi, frac) = radix::quantile_position(q, dims.n);
            (p.threshold, p.rank_lo, p.rank_hi, p.frac) = (1, lo, hi, frac);
        }
        Ok(p)
    }

    fn set_update(&mut self, update: Update) -> Result<()> {
        match update {
            Update::Last => self.update = UPDATE_LAST,
            Update::Ddim { alpha_s, sigma_s } => {
                if !(alpha_s.is_finite() && sigma_s.is_finite()) {
                    bail!("DDIM scales must be finite, got {alpha_s}, {sigma_s}");
                }
                self.update = UPDATE_DDIM;
                (self.alpha_s, self.sigma_s) = (alpha_s as f32, sigma_s as f32);
            }
            Update::Ancestral {
                c_z,
                c_x,
                std,
                seed,
                stream,
            } => {
                if !(c_z.is_finite() && c_x.is_finite() && std.is_finite()) {
                    bail!("posterior coefficients must be finite, got {c_z}, {c_x}, {std}");
                }
                self.update = UPDATE_ANCESTRAL;
                (self.c_z, self.c_x, self.noise_std) = (c_z as f32, c_x as f32, std as f32);
                (self.key_lo, self.key_hi) = (seed as u32, (seed >> 32) as u32);
                (self.stream_lo, self.stream_hi) = (stream as u32, (stream >> 32) as u32);
            }
        }
        Ok(())
    }

    /// This sample's Philox key for the current step.
    pub(crate) fn noise_key(&self) -> NoiseKey {
        NoiseKey {
            seed: u64::from(self.key_lo) | u64::from(self.key_hi) << 32,
            stream: u64::from(self.stream_lo) | u64::from(self.stream_hi) << 32,
            step: self.step,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(update: Update) -> SampleSpec {
        SampleSpec {
            cond_row: 0,
            uncond_row: Some(1),
            guidance: 3.0,
            alpha_t: 0.6,
            sigma_t: 0.8,
            threshold_quantile: Some(0.995),
            update,
            step: 4,
        }
    }

    const DIMS: Dims = Dims {
        batch: 1,
        rows: 2,
        n: 1001,
    };

    #[test]
    fn device_params_round_scales_once_and_place_the_quantile() -> Result<()> {
        let p = DeviceParams::new(
            &spec(Update::Ancestral {
                c_z: 0.1,
                c_x: 0.2,
                std: 0.3,
                seed: 0x1234_5678_9abc_def0,
                stream: 5,
            }),
            DIMS,
        )?;
        assert_eq!((p.alpha_t, p.c_x, p.noise_std), (0.6f32, 0.2f32, 0.3f32));
        assert_eq!((p.update, p.threshold), (UPDATE_ANCESTRAL, 1));
        // 0.995 * 1000 = 995 (up to rounding: both ranks land on 994 or 995).
        assert!(p.rank_lo >= 994 && p.rank_hi <= 995 && p.rank_hi - p.rank_lo <= 1);
        assert_eq!(
            p.noise_key(),
            NoiseKey {
                seed: 0x1234_5678_9abc_def0,
                stream: 5,
                step: 4
            }
        );
        Ok(())
    }

    #[test]
    fn guidance_one_ignores_the_unconditional_row() -> Result<()> {
        let s = SampleSpec {
            guidance: 1.0,
            ..spec(Update::Last)
        };
        assert_eq!(DeviceParams::new(&s, DIMS)?.uncond_row, -1);
        Ok(())
    }

    #[test]
    fn bad_specs_are_rejected_naming_the_problem() {
        let cases = [
            (
                SampleSpec {
                    cond_row: 2,
                    ..spec(Update::Last)
                },
                "conditional row 2",
            ),
            (
                SampleSpec {
                    uncond_row: None,
                    ..spec(Update::Last)
                },
                "needs an unconditional row",
            ),
            (
                SampleSpec {
                    threshold_quantile: Some(0.0),
                    ..spec(Update::Last)
                },
                "threshold_quantile",
            ),
            (
                SampleSpec {
                    step: 0,
                    ..spec(Update::Last)
                },
                "step",
            ),
            (
                spec(Update::Ddim {
                    alpha_s: f64::NAN,
                    sigma_s: 0.0,
                }),
                "DDIM",
            ),
        ];
        for (s, needle) in cases {
            let err = DeviceParams::new(&s, DIMS).expect_err("invalid spec");
            assert!(err.to_string().contains(needle), "{err}");
        }
    }

    #[test]
    fn flags_decode_step_and_kind() {
        assert_eq!(NonFiniteFlag::decode(0), None);
        let f = NonFiniteFlag::decode((7 << 2) | FLAG_MODEL_OUTPUT | FLAG_X0_ESTIMATE);
        assert_eq!(
            f,
            Some(NonFiniteFlag {
                step: 7,
                model_output: true
            })
        );
        let f = NonFiniteFlag::decode((2 << 2) | FLAG_X0_ESTIMATE).expect("flagged");
        assert_eq!((f.step, f.what()), (2, "x0 estimate"));
    }

    #[test]
    fn forward_checks_shapes_and_dtypes() -> Result<()> {
        let dev = Device::Cpu;
        let z = Tensor::zeros((1, 4), DType::F32, &dev)?;
        let v = Tensor::zeros((2, 4), DType::F32, &dev)?;
        let flags = Tensor::zeros(1, DType::U32, &dev)?;
        let op = FusedSamplerStep::new(vec![spec(Update::Last)]);
        op.forward(&z, &v, &flags)?;
        let bad_v = Tensor::zeros((2, 5), DType::F32, &dev)?;
        assert!(op.forward(&z, &bad_v, &flags).is_err());
        let bad_flags = Tensor::zeros(1, DType::F32, &dev)?;
        assert!(op.forward(&z, &v, &bad_flags).is_err());
        let two = FusedSamplerStep::new(vec![spec(Update::Last); 2]);
        assert!(two.forward(&z, &v, &flags).is_err());
        Ok(())
    }
}
