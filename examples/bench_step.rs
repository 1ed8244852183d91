//! CPU timing of one training step (forward, loss, backward, clipping, AdamW)
//! and of an inference forward, for the shapes in docs/perf-notes.md.
//!
//! `cargo run --release --example bench_step -- [tiny|small|base ...]`; env
//! `BENCH_BATCH`, `BENCH_SEQ`, `BENCH_ITERS`, and `BENCH_BACKENDS` (`blas,candle`:
//! which matmul paths to time, back to back in this one process so their
//! numbers compare). `scripts/bench_torch.py` times PyTorch on the same shapes.

use std::time::Instant;

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use cws::model::{masked_cross_entropy, BertConfig, BertForTokenClassification, DropoutRng};
use cws::optim::{clip_grad_norm, AdamW, AdamWConfig};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// (hidden, layers, heads, intermediate) of the named shape.
fn shape(name: &str) -> Option<(usize, usize, usize, usize)> {
    match name {
        "tiny" => Some((128, 2, 2, 512)),
        "small" => Some((256, 4, 4, 1024)),
        "base" => Some((768, 12, 12, 3072)),
        _ => None,
    }
}

fn config(h: usize, layers: usize, heads: usize, inter: usize) -> Result<BertConfig> {
    let json = serde_json::json!({
        "vocab_size": 21128,
        "hidden_size": h,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "intermediate_size": inter,
        "id2label": {"0": "B", "1": "I", "2": "E", "3": "S"},
        "label2id": {"B": 0, "I": 1, "E": 2, "S": 3},
    });
    BertConfig::from_json_str(&json.to_string())
}

/// Median of the timed iterations, in seconds.
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() -> Result<()> {
    cws::blas::init_cpu_threads();
    let names: Vec<String> = std::env::args().skip(1).collect();
    let names = if names.is_empty() {
        vec!["tiny".into(), "small".into(), "base".into()]
    } else {
        names
    };
    let (batch, seq) = (env_usize("BENCH_BATCH", 16), env_usize("BENCH_SEQ", 128));
    let iters = env_usize("BENCH_ITERS", 3);
    let backends = std::env::var("BENCH_BACKENDS").unwrap_or_else(|_| "blas,candle".into());
    let dev = Device::Cpu;
    println!(
        "rayon threads {}, blas {:?}, batch {batch}x{seq}, median of {iters}",
        rayon::current_num_threads(),
        cws::blas::backend()
    );
    for name in &names {
        let Some((h, layers, heads, inter)) = shape(name) else {
            anyhow::bail!("unknown shape {name}: tiny, small or base");
        };
        let cfg = config(h, layers, heads, inter)?;
        let n = batch * seq;
        let ids: Vec<u32> = (0..n).map(|i| (i * 7919 % 21000 + 100) as u32).collect();
        let ids = Tensor::from_vec(ids, (batch, seq), &dev)?;
        let mask = Tensor::ones((batch, seq), DType::I64, &dev)?;
        let labels: Vec<i64> = (0..n).map(|i| (i % 4) as i64).collect();
        let labels = Tensor::from_vec(labels, (batch, seq), &dev)?;
        for backend in backends.split(',') {
            cws::blas::set_enabled(backend == "blas");
            if backend == "blas" && cws::blas::backend().is_none() {
                println!("{name:5} blas: no BLAS library found, skipped");
                continue;
            }
            let varmap = VarMap::new();
            let model = BertForTokenClassification::new_random(&varmap, &cfg, 1, DType::F32, &dev)?;
            let mut opt = AdamW::new(&varmap, AdamWConfig::default())?;
            let mut rng = DropoutRng::new(0);
            let (mut train, mut fwd, mut bwd, mut infer) = (vec![], vec![], vec![], vec![]);
            // One untimed warm-up iteration: allocator and BLAS buffers.
            for it in 0..=iters {
                let t0 = Instant::now();
                let logits = model.forward(&ids, &mask, Some(&mut rng))?;
                let loss = masked_cross_entropy(&logits, &labels)?;
                let t1 = Instant::now();
                let grads = model.backward(&loss)?;
                let t2 = Instant::now();
                let clip = clip_grad_norm(&grads, &opt.vars(), 1.0)?;
                opt.step(&grads, 1e-4, clip.scale)?;
                drop(grads);
                let t3 = Instant::now();
                model.forward(&ids, &mask, None)?;
                let t4 = Instant::now();
                if it > 0 {
                    fwd.push((t1 - t0).as_secs_f64());
                    bwd.push((t2 - t1).as_secs_f64());
                    train.push((t3 - t0).as_secs_f64());
                    infer.push((t4 - t3).as_secs_f64());
                }
            }
            let (tr, inf) = (median(train), median(infer));
            println!(
                "{name:5} {backend:6} train step {:8.1} ms ({:7.0} tok/s; fwd {:.1} ms, bwd {:.1} ms) | inference {:8.1} ms ({:7.0} tok/s)",
                tr * 1e3,
                n as f64 / tr,
                median(fwd) * 1e3,
                median(bwd) * 1e3,
                inf * 1e3,
                n as f64 / inf
            );
        }
    }
    Ok(())
}
