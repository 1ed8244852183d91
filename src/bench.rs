//! Throughput measurements behind `cws bench`: a training step (forward,
//! backward, clipping, AdamW) and an inference forward pass of
//! `BertForTokenClassification` on a synthetic batch, for the model shapes the
//! benchmark tables use, plus segmentation speed on a text file.
//!
//! The same shapes, batch and step are measured for PyTorch by
//! `scripts/bench_peers.py`, so the two can be compared in one run. The kernel
//! benchmarks (`cargo bench --bench kernels`) take their sizes from [`Shape`],
//! [`BATCH`] and [`SEQ`] too: this is the one table of benchmark shapes.

use crate::model::{
    masked_cross_entropy, BatchFeatures, BertConfig, BertForTokenClassification, DropoutRng,
};
use crate::optim::{clip_grad_norm, AdamW, AdamWConfig};
use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::time::Instant;

/// Sequences per benchmark batch (`cws bench model --batch`'s default).
pub const BATCH: usize = 16;
/// Tokens per benchmark sequence (`cws bench model --seq`'s default).
pub const SEQ: usize = 128;

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
    /// (hidden, layers, heads, intermediate).
    pub fn dims(self) -> (usize, usize, usize, usize) {
        match self {
            Shape::Tiny => (128, 2, 2, 512),
            Shape::Small => (256, 4, 4, 1024),
            Shape::Base => (768, 12, 12, 3072),
        }
    }

    pub fn config(self) -> BertConfig {
        let (h, l, heads, inter) = self.dims();
        let json = serde_json::json!({
            "vocab_size": 21128, "hidden_size": h, "num_hidden_layers": l, "num_attention_heads": heads,
            "intermediate_size": inter, "hidden_act": "gelu", "max_position_embeddings": 512,
            "id2label": {"0": "B", "1": "I", "2": "E", "3": "S"}, "label2id": {"B": 0, "I": 1, "E": 2, "S": 3},
        });
        BertConfig::from_json_str(&json.to_string()).expect("benchmark shapes are valid")
    }
}

/// Which matrix products the model runs: OpenBLAS through [`crate::blas`]
/// (where a library is found), or candle's own matmul.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Matmul {
    Blas,
    Candle,
}

/// How a training step runs the encoder layers on the CPU: the hand-written
/// forward and backward of `model::encoder` (where it applies), or candle's
/// ops and autograd.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoder {
    Fused,
    Graph,
}

/// What one measurement found.
#[derive(Debug, Clone, Serialize)]
pub struct Measurement {
    pub system: &'static str,
    pub mode: &'static str,
    pub shape: Shape,
    /// The matmul path that ran: the BLAS library's name, or "candle".
    pub matmul: String,
    pub encoder: Encoder,
    pub device: String,
    pub dtype: String,
    pub batch: usize,
    pub seq: usize,
    pub steps: usize,
    /// Mean over the timed steps.
    pub seconds_per_step: f64,
    pub tokens_per_s: f64,
    /// Median over the timed steps, and of its phases for a training step:
    /// forward + loss, backward, clipping + AdamW.
    pub median_seconds_per_step: f64,
    pub median_forward_seconds: Option<f64>,
    pub median_backward_seconds: Option<f64>,
    pub median_optimizer_seconds: Option<f64>,
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
    pub matmul: Matmul,
    pub encoder: Encoder,
    pub batch: usize,
    pub seq: usize,
    /// Untimed steps before the timed ones.
    pub warmup: usize,
    pub steps: usize,
    pub dtype: DType,
}

/// Seconds of one step's phases: forward (+ loss), backward, optimizer; an
/// inference step is all forward.
type Phases = [f64; 3];

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Times `steps` training steps (after `warmup` untimed ones) or inference
/// forward passes of a fresh model of `shape`.
pub fn measure(case: Case, device: &Device) -> Result<Measurement> {
    let Case {
        shape,
        train,
        matmul,
        encoder,
        batch: batch_size,
        seq,
        warmup,
        steps,
        dtype,
    } = case;
    if !(3..=512).contains(&seq) || batch_size == 0 || steps == 0 {
        bail!("need 3 ≤ seq ≤ 512, batch ≥ 1 and steps ≥ 1");
    }
    crate::blas::set_enabled(matmul == Matmul::Blas);
    let matmul_name = match (device, crate::blas::backend()) {
        (Device::Cpu, Some(lib)) => lib.to_string(),
        (Device::Cpu, None) => "candle".to_string(),
        _ => "device".to_string(),
    };
    let cfg = shape.config();
    let varmap = VarMap::new();
    let mut model = BertForTokenClassification::new_random(&varmap, &cfg, 0, dtype, device)?;
    model.set_graph_encoder(encoder == Encoder::Graph);
    let (ids, mask, labels) = batch(&cfg, batch_size, seq, device)?;
    let mut opt = AdamW::new(&varmap, AdamWConfig::default())?;
    let vars = opt.vars();
    let mut step = |k: usize| -> Result<Phases> {
        let t0 = Instant::now();
        if !train {
            let logits = model.infer(&ids, &mask, &BatchFeatures::none())?;
            // Reading one value back waits for the device to finish.
            logits
                .narrow(0, 0, 1)?
                .to_dtype(DType::F32)?
                .sum_all()?
                .to_scalar::<f32>()?;
            device.synchronize()?;
            return Ok([t0.elapsed().as_secs_f64(), 0.0, 0.0]);
        }
        let mut rng = DropoutRng::new(k as u64);
        let logits = model.forward(&ids, &mask, Some(&mut rng))?;
        let loss = masked_cross_entropy(&logits, &labels)?;
        device.synchronize()?;
        let t1 = Instant::now();
        let grads = model.backward(&loss)?;
        device.synchronize()?;
        let t2 = Instant::now();
        let clip = clip_grad_norm(&grads, &vars, 1.0)?;
        opt.step(&grads, 1e-4, clip.scale)?;
        device.synchronize()?;
        let t3 = Instant::now();
        Ok([t1 - t0, t2 - t1, t3 - t2].map(|d| d.as_secs_f64()))
    };
    for k in 0..warmup {
        step(k)?;
    }
    let mut timed = Vec::with_capacity(steps);
    for k in 0..steps {
        timed.push(step(warmup + k)?);
    }
    let phase = |i: usize| median(timed.iter().map(|p| p[i]).collect());
    let totals: Vec<f64> = timed.iter().map(|p| p.iter().sum()).collect();
    let secs = totals.iter().sum::<f64>() / steps as f64;
    Ok(Measurement {
        system: "cws",
        mode: if train { "train" } else { "infer" },
        shape,
        matmul: matmul_name,
        encoder,
        device: format!("{device:?}"),
        dtype: format!("{dtype:?}").to_lowercase(),
        batch: batch_size,
        seq,
        steps,
        seconds_per_step: secs,
        tokens_per_s: (batch_size * seq) as f64 / secs,
        median_seconds_per_step: median(totals),
        median_forward_seconds: train.then(|| phase(0)),
        median_backward_seconds: train.then(|| phase(1)),
        median_optimizer_seconds: train.then(|| phase(2)),
        peak_rss_mib: peak_rss_mib(),
        threads: rayon::current_num_threads(),
    })
}

#[cfg(test)]
mod tests {
    use super::Shape;
    use clap::ValueEnum;

    /// scripts/bench_peers.py times PyTorch on the shapes of this table.
    #[test]
    fn peers_script_uses_the_same_shapes() {
        let script = include_str!("../scripts/bench_peers.py");
        for shape in Shape::value_variants() {
            let (h, l, heads, inter) = shape.dims();
            let name = format!("{shape:?}").to_lowercase();
            let row = format!("\"{name}\": ({h}, {l}, {heads}, {inter}),");
            assert!(script.contains(&row), "scripts/bench_peers.py lacks {row}");
        }
    }
}
