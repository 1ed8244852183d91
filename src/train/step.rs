//! One optimizer step: forward with the step's dropout masks, cross-entropy
//! against the gold labels (mixed with soft targets when there are any),
//! backward under loss scaling, gradient clipping, the AdamW update, and
//! what the metrics line reports.

use super::soft::SoftBatch;
use crate::config::TrainConfig;
use crate::encode::Batch;
use crate::model::{masked_cross_entropy, masked_soft_cross_entropy, DropoutRng};
use crate::optim::{clip_grad_norm, AdamW, AdamWConfig, LinearSchedule};
use crate::tagger::Tagger;
use anyhow::{bail, Context, Result};
use candle_core::backprop::GradStore;
use candle_core::Var;
use candle_core::{DType, Tensor};

/// What one step did, for the progress bar and the metrics log.
pub(super) struct StepReport {
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
}

/// The optimizer and everything that shapes an update.
pub(super) struct Stepper {
    opt: AdamW,
    vars: Vec<Var>,
    schedule: LinearSchedule,
    scaler: LossScaler,
    grad_clip: f64,
    seed: u64,
}

impl Stepper {
    pub(super) fn new(
        cfg: &TrainConfig,
        tagger: &Tagger,
        total: u64,
        precision: DType,
    ) -> Result<Self> {
        let opt = AdamW::new(
            &tagger.varmap,
            AdamWConfig {
                weight_decay: cfg.weight_decay,
                ..AdamWConfig::default()
            },
        )?;
        Ok(Self {
            vars: opt.vars(),
            opt,
            schedule: LinearSchedule {
                base_lr: cfg.learning_rate,
                warmup: (cfg.warmup * total as f64).round() as u64,
                total,
            },
            scaler: LossScaler::new(precision),
            grad_clip: cfg.grad_clip,
            seed: cfg.seed,
        })
    }

    pub(super) fn optimizer(&self) -> &AdamW {
        &self.opt
    }

    pub(super) fn optimizer_mut(&mut self) -> &mut AdamW {
        &mut self.opt
    }

    /// Trains on `batch` as step `step` (0-based), soft targets mixed in
    /// with their weight.
    pub(super) fn step(
        &mut self,
        tagger: &Tagger,
        batch: &Batch,
        soft: Option<SoftBatch>,
        step: u64,
    ) -> Result<StepReport> {
        // A batch of raw-text windows alone has no gold labels.
        let gold_labels = || {
            batch
                .labels
                .as_ref()
                .context("internal error: a batch of gold windows without labels")
        };
        let mut dropout = DropoutRng::new(self.seed.wrapping_mul(1_000_003).wrapping_add(step));
        let logits = tagger.model.forward_with(
            &batch.input_ids,
            &batch.attention_mask,
            &batch.features,
            Some(&mut dropout),
        )?;
        let gold = |logits: &Tensor| match tagger.model.crf() {
            Some(crf) => crf.loss(logits, gold_labels()?),
            None => masked_cross_entropy(logits, gold_labels()?),
        };
        let loss = match soft {
            None => gold(&logits)?,
            Some(soft) => {
                let a = soft.weight;
                let mixed = if soft.has_gold {
                    Some(
                        ((gold(&logits)? * (1.0 - a))?
                            + (masked_soft_cross_entropy(
                                &logits,
                                &soft.targets,
                                gold_labels()?,
                            )? * a)?)?,
                    )
                } else {
                    None
                };
                // Raw-text windows: the teachers' probabilities are all there is.
                let raw = match &soft.raw {
                    Some((units, w)) => {
                        Some((masked_soft_cross_entropy(&logits, &soft.targets, units)? * *w)?)
                    }
                    None => None,
                };
                match (mixed, raw) {
                    (Some(m), Some(r)) => (m + r)?,
                    (Some(m), None) => m,
                    (None, Some(r)) => r,
                    (None, None) => bail!("a batch with neither gold nor raw-text windows"),
                }
            }
        };
        let scale = self.scaler.scale;
        let grads = self.scaler.backward(tagger, &loss)?;
        let max_norm = if self.grad_clip > 0.0 {
            self.grad_clip * scale
        } else {
            f64::INFINITY
        };
        let clip = clip_grad_norm(&grads, &self.vars, max_norm)?;
        let lr = self.schedule.lr(step);
        if self.scaler.accepts(clip.norm, step)? {
            self.opt.step(&grads, lr, clip.scale / scale)?;
        }
        let loss = loss.to_dtype(DType::F32)?.to_scalar::<f32>()? as f64;
        if !loss.is_finite() {
            bail!(
                "the loss became {loss} at step {}: lower learning_rate",
                step + 1
            );
        }
        Ok(StepReport {
            loss,
            lr,
            grad_norm: clip.norm / scale,
        })
    }
}

/// Dynamic loss scaling for f16 (whose gradients underflow without it), as
/// PyTorch's GradScaler does; bf16 and f32 have f32's range and scale by 1.
struct LossScaler {
    scale: f64,
    good_steps: u32,
}

impl LossScaler {
    fn new(precision: DType) -> Self {
        Self {
            scale: if precision == DType::F16 {
                65536.0
            } else {
                1.0
            },
            good_steps: 0,
        }
    }

    fn backward(&self, tagger: &Tagger, loss: &Tensor) -> Result<GradStore> {
        Ok(if self.scale == 1.0 {
            tagger.model.backward(loss)?
        } else {
            tagger.model.backward(&loss.affine(self.scale, 0.0)?)?
        })
    }

    /// Whether a step whose (scaled) gradient norm is `norm` may update the
    /// weights, adjusting the scale: doubled after 2000 good steps, halved on
    /// an f16 overflow (the step is skipped). Without scaling a non-finite
    /// norm is an error.
    fn accepts(&mut self, norm: f64, step: u64) -> Result<bool> {
        if norm.is_finite() {
            if self.scale != 1.0 {
                self.good_steps += 1;
                if self.good_steps == 2000 {
                    self.scale *= 2.0;
                    self.good_steps = 0;
                }
            }
            Ok(true)
        } else if self.scale != 1.0 {
            self.scale /= 2.0;
            self.good_steps = 0;
            Ok(false)
        } else {
            bail!(
                "the gradient became {norm} at step {}: lower learning_rate",
                step + 1
            )
        }
    }
}
