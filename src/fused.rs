//! Fused CPU f32 kernels with a backward pass for the model's hottest elementwise ops.
//!
//! candle's composite softmax/GELU take many single-threaded passes (and as many
//! more in backward); these do one parallel pass each way. Other devices and
//! dtypes fall back to the composite, differentiable candle ops.

use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, DType, Device, Layout, Result, Shape, Tensor, D,
};
use rayon::prelude::*;

/// Rows handed to one rayon task: big enough to amortise scheduling.
const CHUNK: usize = 16 * 1024;

fn fast_path(x: &Tensor) -> bool {
    matches!(x.device(), Device::Cpu) && x.dtype() == DType::F32
}

fn slice<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&s.as_slice::<f32>()?[a..b]),
        None => candle_core::bail!("fused op needs a contiguous input"),
    }
}

/// Softmax over the last dimension.
pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    if !fast_path(x) {
        let max = x.max_keepdim(D::Minus1)?;
        let e = x.broadcast_sub(&max)?.exp()?;
        let sum = e.sum_keepdim(D::Minus1)?;
        return e.broadcast_div(&sum);
    }
    x.contiguous()?.apply_op1(SoftmaxLast)
}

struct SoftmaxLast;

impl CustomOp1 for SoftmaxLast {
    fn name(&self) -> &'static str {
        "cws-softmax-last"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s, l)?;
        let d = l.dims()[l.dims().len() - 1];
        let mut out = vec![0f32; x.len()];
        let rows = (CHUNK / d.max(1)).max(1) * d;
        out.par_chunks_mut(rows)
            .zip(x.par_chunks(rows))
            .for_each(|(o, x)| {
                for (o, x) in o.chunks_mut(d).zip(x.chunks(d)) {
                    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let mut sum = 0f32;
                    for (o, &x) in o.iter_mut().zip(x) {
                        *o = (x - max).exp();
                        sum += *o;
                    }
                    let inv = 1.0 / sum;
                    o.iter_mut().for_each(|o| *o *= inv);
                }
            });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let grad = grad.contiguous()?;
        Ok(Some(
            res.contiguous()?.apply_op2_no_bwd(&grad, &SoftmaxGrad)?,
        ))
    }
}

/// `s * (g - sum(g * s))` per row, from softmax output `s` and its gradient `g`.
struct SoftmaxGrad;

impl CustomOp2 for SoftmaxGrad {
    fn name(&self) -> &'static str {
        "cws-softmax-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (s, g) = (slice(s1, l1)?, slice(s2, l2)?);
        let d = l1.dims()[l1.dims().len() - 1];
        let mut out = vec![0f32; s.len()];
        let rows = (CHUNK / d.max(1)).max(1) * d;
        out.par_chunks_mut(rows)
            .zip(s.par_chunks(rows).zip(g.par_chunks(rows)))
            .for_each(|(o, (s, g))| {
                for ((o, s), g) in o.chunks_mut(d).zip(s.chunks(d)).zip(g.chunks(d)) {
                    let dot: f32 = s.iter().zip(g).map(|(s, g)| s * g).sum();
                    for ((o, &s), &g) in o.iter_mut().zip(s).zip(g) {
                        *o = s * (g - dot);
                    }
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// erf by Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7, below f32 GELU noise),
/// several times cheaper than the series candle evaluates in f64.
#[inline]
fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = t
        * (0.254_829_6
            + t * (-0.284_496_74 + t * (1.421_413_7 + t * (-1.453_152 + t * 1.061_405_4))));
    let y = 1.0 - poly * (-a * a).exp();
    y.copysign(x)
}

/// Exact (erf) GELU, HF's `"gelu"`.
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    if !fast_path(x) {
        return x.gelu_erf();
    }
    x.contiguous()?.apply_op1(GeluErf)
}

struct GeluErf;

fn map_par(x: &[f32], f: impl Fn(f32) -> f32 + Sync) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    out.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(o, x)| o.iter_mut().zip(x).for_each(|(o, &x)| *o = f(x)));
    out
}

impl CustomOp1 for GeluErf {
    fn name(&self) -> &'static str {
        "cws-gelu-erf"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let out = map_par(slice(s, l)?, |x| {
            0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
        });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let grad = grad.contiguous()?;
        Ok(Some(
            arg.contiguous()?.apply_op2_no_bwd(&grad, &GeluErfGrad)?,
        ))
    }
}

/// `g * (Phi(x) + x * phi(x))`, the derivative of `x * Phi(x)`.
struct GeluErfGrad;

impl CustomOp2 for GeluErfGrad {
    fn name(&self) -> &'static str {
        "cws-gelu-erf-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, g) = (slice(s1, l1)?, slice(s2, l2)?);
        // 1/sqrt(2*pi)
        const INV_SQRT_2PI: f32 = 0.398_942_3;
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK).zip(g.par_chunks(CHUNK)))
            .for_each(|(o, (x, g))| {
                for ((o, &x), &g) in o.iter_mut().zip(x).zip(g) {
                    let cdf = 0.5 * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2));
                    let pdf = INV_SQRT_2PI * (-0.5 * x * x).exp();
                    *o = g * (cdf + x * pdf);
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}
