//! AdamW, LR schedule and gradient clipping with the exact arithmetic of torch/transformers.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::{
    backprop::GradStore, CpuStorage, DType, Device, InplaceOp2, InplaceOp3, Layout, Tensor, Var,
};
use candle_nn::VarMap;
use rayon::prelude::*;

use crate::fused::{slice, slice_mut};

/// Hyper-parameters of `torch.optim.AdamW`.
#[derive(Debug, Clone, Copy)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

/// transformers' rule (and the fixture's): biases and LayerNorm parameters are not decayed.
pub fn decays(name: &str) -> bool {
    !(name.ends_with(".bias") || name.contains("LayerNorm"))
}

struct Param {
    name: String,
    var: Var,
    decay: bool,
    /// First and second moments, f32 whatever the param's dtype.
    m: Tensor,
    v: Tensor,
}

/// `torch.optim.AdamW` over two groups (decay / no-decay, see [`decays`]).
/// Moments are kept in f32; the update is computed in f32 and cast back.
pub struct AdamW {
    params: Vec<Param>,
    cfg: AdamWConfig,
    step: u64,
}

impl AdamW {
    /// All vars of `varmap`, in name order.
    pub fn new(varmap: &VarMap, cfg: AdamWConfig) -> Result<Self> {
        let data = varmap.data().lock().expect("VarMap lock poisoned");
        let mut named: Vec<(String, Var)> =
            data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        drop(data);
        named.sort_by(|a, b| a.0.cmp(&b.0));
        Self::from_named_vars(named, cfg)
    }

    pub fn from_named_vars(named: Vec<(String, Var)>, cfg: AdamWConfig) -> Result<Self> {
        let params = named
            .into_iter()
            .map(|(name, var)| {
                // Two storages: the CPU update writes each moment in place.
                let zeros = || Tensor::zeros(var.shape(), DType::F32, var.device());
                Ok(Param {
                    decay: decays(&name),
                    m: zeros()?,
                    v: zeros()?,
                    name,
                    var,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            params,
            cfg,
            step: 0,
        })
    }

    /// Optimizer steps taken so far (torch's per-param `step`).
    pub fn step_count(&self) -> u64 {
        self.step
    }

    pub fn vars(&self) -> Vec<Var> {
        self.params.iter().map(|p| p.var.clone()).collect()
    }

    /// One AdamW step at learning rate `lr` on `grads * grad_scale` (pass the
    /// scale from [`clip_grad_norm`]; folding it in here saves a pass over the
    /// gradients). Params without a gradient are skipped, as torch skips `None` grads.
    pub fn step(&mut self, grads: &GradStore, lr: f64, grad_scale: f64) -> Result<()> {
        self.step += 1;
        let AdamWConfig {
            beta1,
            beta2,
            eps,
            weight_decay,
        } = self.cfg;
        let t = self.step as i32;
        let bias1 = 1.0 - beta1.powi(t);
        let bias2_sqrt = (1.0 - beta2.powi(t)).sqrt();
        let step_size = lr / bias1;
        let decay_factor = 1.0 - lr * weight_decay;
        for p in &mut self.params {
            let Some(g) = grads.get(p.var.as_tensor()) else {
                continue;
            };
            let decay = if p.decay { decay_factor } else { 1.0 };
            if matches!(p.var.device(), Device::Cpu)
                && p.var.dtype() == DType::F32
                && g.dtype() == DType::F32
            {
                let h = Hyper {
                    beta1,
                    beta2,
                    eps,
                    decay,
                    step_size,
                    bias2_sqrt,
                    grad_scale,
                };
                cpu_update(p, g, &h)?;
                continue;
            }
            let g = g.to_dtype(DType::F32)?;
            let g = if grad_scale != 1.0 {
                (g * grad_scale)?
            } else {
                g
            };
            p.m = ((&p.m * beta1)? + (&g * (1.0 - beta1))?)?;
            p.v = ((&p.v * beta2)? + (g.sqr()? * (1.0 - beta2))?)?;
            let mut w = p.var.as_tensor().to_dtype(DType::F32)?;
            if decay != 1.0 {
                w = (w * decay)?;
            }
            let denom = ((p.v.sqrt()? / bias2_sqrt)? + eps)?;
            let w = (w - (p.m.div(&denom)? * step_size)?)?;
            p.var.set(&w.to_dtype(p.var.dtype())?)?;
        }
        Ok(())
    }

    /// Saves step count and moments (`adamw.step`, `m.<name>`, `v.<name>`).
    pub fn save_state(&self, path: impl AsRef<Path>) -> Result<()> {
        let mut t = HashMap::new();
        t.insert(
            "adamw.step".to_string(),
            Tensor::new(&[self.step as i64], &Device::Cpu)?,
        );
        for p in &self.params {
            t.insert(format!("m.{}", p.name), p.m.clone());
            t.insert(format!("v.{}", p.name), p.v.clone());
        }
        crate::weights::save_tensors_atomic(&t, path.as_ref())
    }

    /// Restores a state written by [`AdamW::save_state`] for the same parameters.
    pub fn load_state(&mut self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let mut t = candle_core::safetensors::load(path, &Device::Cpu)
            .with_context(|| format!("reading optimizer state {}", path.display()))?;
        let step = t
            .remove("adamw.step")
            .context("optimizer state has no adamw.step")?
            .to_vec1::<i64>()?;
        let mut problems = Vec::new();
        let mut moments = Vec::with_capacity(self.params.len());
        for p in &self.params {
            let mut pair = Vec::with_capacity(2);
            for kind in ["m", "v"] {
                let key = format!("{kind}.{}", p.name);
                match t.remove(&key) {
                    Some(x) if x.dims() == p.var.dims() => pair.push(x),
                    Some(x) => problems.push(format!(
                        "  {key}: expected {:?}, found {:?}",
                        p.var.dims(),
                        x.dims()
                    )),
                    None => problems.push(format!("  {key}: missing")),
                }
            }
            moments.push(pair);
        }
        if !problems.is_empty() {
            bail!(
                "optimizer state {} does not fit the model:\n{}",
                path.display(),
                problems.join("\n")
            );
        }
        for (p, pair) in self.params.iter_mut().zip(moments) {
            let dev = p.var.device();
            p.m = pair[0].to_dtype(DType::F32)?.to_device(dev)?;
            p.v = pair[1].to_dtype(DType::F32)?.to_device(dev)?;
        }
        self.step = step.first().copied().unwrap_or(0).max(0) as u64;
        Ok(())
    }
}

struct Hyper {
    beta1: f64,
    beta2: f64,
    eps: f64,
    decay: f64,
    step_size: f64,
    bias2_sqrt: f64,
    grad_scale: f64,
}

/// The same update as the tensor path, in place: the moments and then the
/// weights are updated inside their own storage by three parallel passes,
/// with the arithmetic of torch's AdamW element by element. On CPU the tensor
/// path's dozen temporaries cost several times the arithmetic, and copies of
/// the big embedding tables cost fresh pages every step.
fn cpu_update(p: &mut Param, g: &Tensor, h: &Hyper) -> Result<()> {
    let g = g.contiguous()?;
    for t in [&mut p.m, &mut p.v] {
        if !t.is_contiguous() {
            *t = t.contiguous()?;
        }
    }
    let h = HyperF32 {
        b1: h.beta1 as f32,
        b2: h.beta2 as f32,
        eps: h.eps as f32,
        decay: h.decay as f32,
        step_size: h.step_size as f32,
        bias2_sqrt: h.bias2_sqrt as f32,
        scale: h.grad_scale as f32,
    };
    p.m.inplace_op2(&g, &AdamPass::FirstMoment(h))?;
    p.v.inplace_op2(&g, &AdamPass::SecondMoment(h))?;
    p.var
        .as_tensor()
        .inplace_op3(&p.m, &p.v, &AdamPass::Weights(h))?;
    Ok(())
}

#[derive(Clone, Copy)]
struct HyperF32 {
    b1: f32,
    b2: f32,
    eps: f32,
    decay: f32,
    step_size: f32,
    bias2_sqrt: f32,
    scale: f32,
}

/// One pass of the in-place AdamW update on f32 CPU storage.
enum AdamPass {
    /// `m += (g * scale - m) * (1 - beta1)` (torch: `exp_avg.lerp_(grad, 1 - beta1)`).
    FirstMoment(HyperF32),
    /// `v = v * beta2 + (1 - beta2) * (g * scale)^2`.
    SecondMoment(HyperF32),
    /// `w = w * decay - step_size * m / (sqrt(v) / bias2_sqrt + eps)`.
    Weights(HyperF32),
}

const ADAM_CHUNK: usize = 1 << 15;

impl InplaceOp2 for AdamPass {
    fn name(&self) -> &'static str {
        "cws-adamw-moment"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<()> {
        let (x, g) = (slice_mut(s1, l1)?, slice(s2, l2)?);
        if x.len() != g.len() {
            candle_core::bail!("AdamW: a gradient's shape differs from its moment's");
        }
        let pass = |x: &mut [f32], g: &[f32]| match *self {
            AdamPass::FirstMoment(h) => {
                for (m, &g) in x.iter_mut().zip(g) {
                    let gi = g * h.scale;
                    *m += (gi - *m) * (1.0 - h.b1);
                }
            }
            AdamPass::SecondMoment(h) => {
                for (v, &g) in x.iter_mut().zip(g) {
                    let gi = g * h.scale;
                    *v = *v * h.b2 + (1.0 - h.b2) * gi * gi;
                }
            }
            AdamPass::Weights(_) => {}
        };
        x.par_chunks_mut(ADAM_CHUNK)
            .zip(g.par_chunks(ADAM_CHUNK))
            .for_each(|(x, g)| pass(x, g));
        Ok(())
    }
}

impl InplaceOp3 for AdamPass {
    fn name(&self) -> &'static str {
        "cws-adamw-weights"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<()> {
        let AdamPass::Weights(h) = *self else {
            candle_core::bail!("AdamW: a moment pass takes one input");
        };
        let w = slice_mut(s1, l1)?;
        let (m, v) = (slice(s2, l2)?, slice(s3, l3)?);
        if w.len() != m.len() || w.len() != v.len() {
            candle_core::bail!("AdamW: a weight's shape differs from its moments'");
        }
        w.par_chunks_mut(ADAM_CHUNK)
            .zip(m.par_chunks(ADAM_CHUNK).zip(v.par_chunks(ADAM_CHUNK)))
            .for_each(|(w, (m, v))| {
                for ((w, &m), &v) in w.iter_mut().zip(m).zip(v) {
                    let denom = v.sqrt() / h.bias2_sqrt + h.eps;
                    *w = *w * h.decay - h.step_size * (m / denom);
                }
            });
        Ok(())
    }
}

/// transformers' `get_linear_schedule_with_warmup`: linear ramp from 0 over
/// `warmup` steps, then linear decay to 0 at `total`. `lr(k)` is the rate used by
/// the optimizer step that follows `k` scheduler steps (so the first step uses `lr(0)`).
#[derive(Debug, Clone, Copy)]
pub struct LinearSchedule {
    pub base_lr: f64,
    pub warmup: u64,
    pub total: u64,
}

impl LinearSchedule {
    pub fn lr(&self, step: u64) -> f64 {
        let factor = if step < self.warmup {
            step as f64 / self.warmup.max(1) as f64
        } else {
            let left = self.total.saturating_sub(step) as f64;
            (left / self.total.saturating_sub(self.warmup).max(1) as f64).max(0.0)
        };
        self.base_lr * factor
    }
}

/// Result of [`clip_grad_norm`]: the pre-clip global L2 norm and the factor to
/// apply to the gradients (1 when no clipping happens).
#[derive(Debug, Clone, Copy)]
pub struct Clip {
    pub norm: f64,
    pub scale: f64,
}

/// `torch.nn.utils.clip_grad_norm_` without rewriting the gradients: returns
/// the scale `min(1, max_norm / (norm + 1e-6))` to hand to [`AdamW::step`].
pub fn clip_grad_norm(grads: &GradStore, vars: &[Var], max_norm: f64) -> Result<Clip> {
    let mut sq = Vec::with_capacity(vars.len());
    for v in vars {
        if let Some(g) = grads.get(v.as_tensor()) {
            sq.push(crate::fused::sum_squares(g)?);
        }
    }
    if sq.is_empty() {
        return Ok(Clip {
            norm: 0.0,
            scale: 1.0,
        });
    }
    // One device->host transfer for all tensors.
    let norm = Tensor::stack(&sq, 0)?.sum_all()?.to_scalar::<f32>()?.sqrt() as f64;
    let coef = max_norm / (norm + 1e-6);
    Ok(Clip {
        norm,
        scale: coef.min(1.0),
    })
}
