//! Fused multi-head attention forward, flash-style: `kernels/cuda/flash_attention.cu` on the
//! GPU, and the same algorithm in plain Rust ([`reference`]) as the op's `cpu_fwd`.
//!
//! One op serves the Video U-Net's three attentions, in the composed path's `[B, heads, L, d]`
//! layout: spatial self-attention over a frame's `H*W` tokens ([`FlashBias::None`]), text
//! cross-attention with a key padding mask ([`FlashBias::KeyPadding`]), and temporal attention
//! with the learned relative-position bias ([`FlashBias::PerHead`]). Keys are visited in tiles
//! of [`KEY_TILE`] with an online softmax, so the `[Lq, Lk]` score matrix is never stored:
//! memory stays linear in the sequence length, which is what lets spatial attention run at
//! Imagen Video's 80x128 frames. On the GPU the inputs are f16 or bf16 (tensor-core products,
//! f32 scores, sums and accumulators); the CPU reference also takes f32.

mod reference;

#[cfg(feature = "cuda")]
mod cuda;

pub use reference::BiasRef;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor, bail};

/// Keys per tile (the kernel's `BN`).
pub const KEY_TILE: usize = 32;
/// Query rows per GPU block (the kernel's `BM`).
pub const QUERY_TILE: usize = 64;
/// The largest head dimension the kernel takes (it pads `d` up to 16, 32, 64 or 128).
pub const MAX_HEAD_DIM: usize = 128;

/// The sizes of one attention call: `batch_heads = batch * heads` rows of `lq` queries and `lk`
/// keys, head dimension `d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlashShape {
    /// `batch * heads`.
    pub batch_heads: usize,
    /// Heads per batch entry.
    pub heads: usize,
    /// Queries per row.
    pub lq: usize,
    /// Keys (and values) per row.
    pub lk: usize,
    /// Head dimension.
    pub d: usize,
}

/// An additive bias on the attention logits.
#[derive(Debug, Clone)]
pub enum FlashBias {
    /// None (spatial self-attention).
    None,
    /// `[batch, lk]` f32, shared by a batch entry's heads: `0` on real keys, `-1e9` on padding
    /// (what `vidcascade-models`' `key_padding_bias` makes of a `[batch, lk]` mask).
    KeyPadding(Tensor),
    /// `[heads, lq, lk]` f32, shared by the batch entries (the relative-position bias).
    PerHead(Tensor),
}

/// `softmax(q k^T * scale + bias) v` for `q` `[B, heads, Lq, d]` and `k`, `v` `[B, heads, Lk,
/// d]`, all of one dtype (f16 or bf16 on the GPU; f32 too on the CPU), giving `[B, heads, Lq,
/// d]`. No gradient flows through it: it is for inference.
pub fn flash_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f32,
    bias: FlashBias,
) -> Result<Tensor> {
    let op = FlashAttention { scale, bias };
    q.contiguous()?
        .apply_op3_no_bwd(&k.contiguous()?, &v.contiguous()?, &op)
}

/// The op behind [`flash_attention`].
#[derive(Debug, Clone)]
pub struct FlashAttention {
    /// Multiplies `q . k` before the bias is added.
    pub scale: f32,
    /// The bias.
    pub bias: FlashBias,
}

impl FlashAttention {
    /// Checks the operands against each other and the bias, and returns the call's sizes.
    pub fn shape(&self, q: &Layout, k: &Layout, v: &Layout) -> Result<FlashShape> {
        let (batch, heads, lq, d) = q.shape().dims4()?;
        let (kb, kh, lk, kd) = k.shape().dims4()?;
        if (kb, kh, kd) != (batch, heads, d) || v.shape().dims() != k.shape().dims() {
            bail!(
                "flash attention: q {:?}, k {:?} and v {:?} must be [B, heads, L, d] with the same B, heads and d, and k and v alike",
                q.shape().dims(),
                k.shape().dims(),
                v.shape().dims()
            );
        }
        if d == 0 || d > MAX_HEAD_DIM || lq == 0 || lk == 0 {
            bail!(
                "flash attention: head dim {d} must be 1..={MAX_HEAD_DIM}, and lq {lq}, lk {lk} at least 1"
            );
        }
        for (name, layout) in [("q", q), ("k", k), ("v", v)] {
            if !layout.is_contiguous() {
                bail!("flash attention: {name} must be contiguous");
            }
        }
        let expected = match &self.bias {
            FlashBias::None => None,
            FlashBias::KeyPadding(t) => Some((t, vec![batch, lk])),
            FlashBias::PerHead(t) => Some((t, vec![heads, lq, lk])),
        };
        if let Some((bias, dims)) = expected
            && (bias.dims() != dims.as_slice() || bias.dtype() != DType::F32)
        {
            bail!(
                "flash attention: bias must be f32 {dims:?}, got {:?} {:?}",
                bias.dtype(),
                bias.dims()
            );
        }
        Ok(FlashShape {
            batch_heads: batch * heads,
            heads,
            lq,
            lk,
            d,
        })
    }

    /// The bias as host values, for the CPU reference.
    fn bias_values(&self) -> Result<Option<Vec<f32>>> {
        match &self.bias {
            FlashBias::None => Ok(None),
            FlashBias::KeyPadding(t) | FlashBias::PerHead(t) => {
                Ok(Some(t.flatten_all()?.to_vec1::<f32>()?))
            }
        }
    }
}

/// Rounds an `f32` to the nearest value of an element type.
type Rounding = fn(f32) -> f32;

/// A contiguous CPU operand as `f32`, and the rounding of its element type.
fn host_values(storage: &CpuStorage, layout: &Layout) -> Result<(Vec<f32>, Rounding)> {
    let Some((start, end)) = layout.contiguous_offsets() else {
        bail!("flash attention: operands must be contiguous")
    };
    Ok(match storage {
        CpuStorage::F32(v) => (v[start..end].to_vec(), |x| x),
        CpuStorage::F16(v) => (v[start..end].iter().map(|x| x.to_f32()).collect(), |x| {
            half::f16::from_f32(x).to_f32()
        }),
        CpuStorage::BF16(v) => (v[start..end].iter().map(|x| x.to_f32()).collect(), |x| {
            half::bf16::from_f32(x).to_f32()
        }),
        other => bail!(
            "flash attention: operands must be f32, f16 or bf16, got {:?}",
            other.dtype()
        ),
    })
}

/// `values` (already rounded to `dtype`) as storage of `dtype`.
fn host_storage(values: Vec<f32>, dtype: DType) -> Result<CpuStorage> {
    Ok(match dtype {
        DType::F32 => CpuStorage::F32(values),
        DType::F16 => CpuStorage::F16(values.into_iter().map(half::f16::from_f32).collect()),
        DType::BF16 => CpuStorage::BF16(values.into_iter().map(half::bf16::from_f32).collect()),
        other => bail!("flash attention: no {other:?} output"),
    })
}

impl CustomOp3 for FlashAttention {
    fn name(&self) -> &'static str {
        "flash-attention"
    }

    fn cpu_fwd(
        &self,
        q: &CpuStorage,
        q_layout: &Layout,
        k: &CpuStorage,
        k_layout: &Layout,
        v: &CpuStorage,
        v_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let shape = self.shape(q_layout, k_layout, v_layout)?;
        let dtype = q.dtype();
        if k.dtype() != dtype || v.dtype() != dtype {
            bail!("flash attention: q, k and v must share one dtype");
        }
        let (qv, round) = host_values(q, q_layout)?;
        let (kv, _) = host_values(k, k_layout)?;
        let (vv, _) = host_values(v, v_layout)?;
        let bias_values = self.bias_values()?;
        let bias = match (&self.bias, &bias_values) {
            (FlashBias::KeyPadding(_), Some(b)) => BiasRef::Key(b),
            (FlashBias::PerHead(_), Some(b)) => BiasRef::Head(b),
            _ => BiasRef::None,
        };
        let out = reference::flash_attention((&qv, &kv, &vv), shape, self.scale, bias, round);
        Ok((host_storage(out, dtype)?, q_layout.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        q: &candle_core::CudaStorage,
        q_layout: &Layout,
        k: &candle_core::CudaStorage,
        k_layout: &Layout,
        v: &candle_core::CudaStorage,
        v_layout: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let shape = self.shape(q_layout, k_layout, v_layout)?;
        let out = cuda::forward(self, shape, (q, q_layout), (k, k_layout), (v, v_layout))?;
        Ok((out, q_layout.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn the_op_agrees_with_candle_softmax_attention_and_keeps_the_dtype() -> Result<()> {
        let dev = Device::Cpu;
        let q = Tensor::randn(0f32, 1.0, (2, 3, 10, 12), &dev)?;
        let k = Tensor::randn(0f32, 1.0, (2, 3, 45, 12), &dev)?;
        let v = Tensor::randn(0f32, 1.0, (2, 3, 45, 12), &dev)?;
        let mask = Tensor::from_vec(
            (0..90)
                .map(|i| if i % 45 < 40 { 0f32 } else { -1e9 })
                .collect(),
            (2, 45),
            &dev,
        )?;
        let scale = 0.3f32;
        let logits =
            (q.matmul(&k.t()?)? * scale as f64)?.broadcast_add(&mask.reshape((2, 1, 1, 45))?)?;
        let want = candle_nn::ops::softmax_last_dim(&logits)?.matmul(&v)?;
        let got = flash_attention(&q, &k, &v, scale, FlashBias::KeyPadding(mask.clone()))?;
        let err = (got - &want)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(err < 1e-5, "{err}");

        let half = flash_attention(
            &q.to_dtype(DType::F16)?,
            &k.to_dtype(DType::F16)?,
            &v.to_dtype(DType::F16)?,
            scale,
            FlashBias::KeyPadding(mask),
        )?;
        assert_eq!(half.dtype(), DType::F16);
        let err = (half.to_dtype(DType::F32)? - want)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(err < 1e-2, "{err}");
        Ok(())
    }

    #[test]
    fn mismatched_operands_and_biases_are_refused_with_the_shapes() -> Result<()> {
        let dev = Device::Cpu;
        let q = Tensor::zeros((1, 2, 4, 8), DType::F32, &dev)?;
        let k = Tensor::zeros((1, 2, 5, 8), DType::F32, &dev)?;
        let short = Tensor::zeros((1, 2, 5, 4), DType::F32, &dev)?;
        let err = flash_attention(&q, &k, &short, 1.0, FlashBias::None).expect_err("v");
        assert!(err.to_string().contains("[B, heads, L, d]"), "{err}");
        let bias = Tensor::zeros((2, 4, 4), DType::F32, &dev)?;
        let err = flash_attention(&q, &k, &k, 1.0, FlashBias::PerHead(bias)).expect_err("bias");
        assert!(err.to_string().contains("[2, 4, 5]"), "{err}");
        let wide = Tensor::zeros((1, 1, 2, 130), DType::F32, &dev)?;
        let err = flash_attention(&wide, &wide, &wide, 1.0, FlashBias::None).expect_err("d");
        assert!(err.to_string().contains("head dim 130"), "{err}");
        Ok(())
    }
}
