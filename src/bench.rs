//! Throughput measurements behind `cws bench`: a training step (forward,
//! backward, clipping, AdamW) and an inference forward pass of
//! `BertForTokenClassification` on a synthetic batch, for the model shapes the
//! benchmark tables use, plus segmentation speed on a text file.
//!
//! The same shapes, batch and step are measured for PyTorch by
//! `scripts/bench_peers.py`, so the two can be compared in one run.

use crate::model::{masked_cross_entropy, BertConfig, BertForTokenClassification, DropoutRng};
use crate::optim::{clip_grad_norm, AdamW, AdamWConfig};
use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::time::Instant;

/// Model shapes of the benchmark tables (vocabulary of bert-base-chinese).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    /// hidden 128, 2 layers, 2 heads, intermediate 512.
    Tiny,
    /// hidden 256, 4 layers, 4 heads, intermediate 1024.
    Small,
    /// bert-base: hidden 768, 12 layers, 12 heads, intermediate 3072.
    Base,
}

impl Shape {
    pub fn config(self) -> BertConfig {
        let (h, l, heads, inter) = match self {
            Shape::Tiny => (128, 2, 2, 512),
            Shape::Small => (256, 4, 4, 1024),
            Shape::Base => (768, 12, 12, 3072),
        };
        let json = serde_json::json!({
            "vocab_size": 21128, "hidden_size": h, "num_hidden_layers": l, "num_attention_heads": heads,
            "intermediate_size": inter, "hidden_act": "gelu", "max_position_embeddings": 512,
            "id2label": {"0": "B", "1": "I", "2": "E", "3": "S"}, "label2id": {"B": 0, "I": 1, "E": 2, "S": 3},
        });
        BertConfig::from_json_str(&json.to_string()).expect("benchmark shapes are valid")
    }
}

/// What one measurement found.
#[derive(Debug, Clone, Serialize)]
pub struct Measurement {
    pub system: &'static str,
    pub mode: &'static str,
    pub shape: Shape,
    pub device: String,
    pub dtype: String,
    pub batch: usize,
    pub seq: usize,
    pub steps: usize,
    pub seconds_per_step: f64,
    pub tokens_per_s: f64,
    /// Peak resident memory of this process so far (Linux), in MiB.
    pub peak_rss_mib: Option<f64>,
    pub threads: usize,
}

/// Peak resident set size of this process (VmHWM), where /proc exposes it.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// A random batch: token ids from the CJK part of the vocabulary, all
/// positions attended, labels on every position but [CLS] and [SEP].
fn batch(
    cfg: &BertConfig,
    b: usize,
    t: usize,
    device: &Device,
) -> Result<(Tensor, Tensor, Tensor)> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let ids: Vec<u32> = (0..b * t)
        .map(|_| rng.random_range(670..cfg.vocab_size as u32))
        .collect();
    let labels: Vec<i64> = (0..b * t)
        .map(|i| {
            if i % t == 0 || i % t == t - 1 {
                -100
            } else {
                rng.random_range(0..4)
            }
        })
        .collect();
    Ok((
        Tensor::from_vec(ids, (b, t), device)?,
        Tensor::ones((b, t), DType::F32, device)?,
        Tensor::from_vec(labels, (b, t), device)?,
    ))
}

/// One benchmark case.
#[derive(Debug, Clone, Copy)]
pub struct Case {
    pub shape: Shape,
    /// A training step, else an inference forward pass.
    pub train: bool,
    pub batch: usize,
    pub seq: usize,
    /// Untimed steps before the timed ones.
    pub warmup: usize,
    pub steps: usize,
    pub dtype: DType,
}

/// Times `steps` training steps (after `warmup` untimed ones) or inference
/// forward passes of a fresh model of `shape`.
pub fn measure(case: Case, device: &Device) -> Result<Measurement> {
    let Case {
        shape,
        train,
        batch: batch_size,
        seq,
        warmup,
        steps,
        dtype,
    } = case;
    if !(3..=512).contains(&seq) || batch_size == 0 || steps == 0 {
        bail!("need 3 ≤ seq ≤ 512, batch ≥ 1 and steps ≥ 1");
    }
    let cfg = shape.config();
    let varmap = VarMap::new();
    let model = BertForTokenClassification::new_random(&varmap, &cfg, 0, dtype, device)?;
    let (ids, mask, labels) = batch(&cfg, batch_size, seq, device)?;
    let mut opt = AdamW::new(&varmap, AdamWConfig::default())?;
    let vars = opt.vars();
    let mut step = |k: usize| -> Result<()> {
        if train {
            let mut rng = DropoutRng::new(k as u64);
            let logits = model.forward(&ids, &mask, Some(&mut rng))?;
            let loss = masked_cross_entropy(&logits, &labels)?;
            let grads = model.backward(&loss)?;
            let clip = clip_grad_norm(&grads, &vars, 1.0)?;
            opt.step(&grads, 1e-4, clip.scale)?;
        } else {
            let logits = model.forward(&ids, &mask, None)?;
            // Reading one value back waits for the device to finish.
            logits
                .narrow(0, 0, 1)?
                .to_dtype(DType::F32)?
                .sum_all()?
                .to_scalar::<f32>()?;
        }
        device.synchronize()?;
        Ok(())
    };
    for k in 0..warmup {
        step(k)?;
    }
    let t0 = Instant::now();
    for k in 0..steps {
        step(warmup + k)?;
    }
    let secs = t0.elapsed().as_secs_f64() / steps as f64;
    Ok(Measurement {
        system: "cws",
        mode: if train { "train" } else { "infer" },
        shape,
        device: format!("{device:?}"),
        dtype: format!("{dtype:?}").to_lowercase(),
        batch: batch_size,
        seq,
        steps,
        seconds_per_step: secs,
        tokens_per_s: (batch_size * seq) as f64 / secs,
        peak_rss_mib: peak_rss_mib(),
        threads: rayon::current_num_threads(),
    })
}
