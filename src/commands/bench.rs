//! `cws bench`: throughput of the model (training step, inference) and of
//! segmentation, as JSON lines on stdout. docs/BENCHMARKS.md runs it next to
//! the peers (PyTorch, jieba, pkuseg) measured by scripts/bench_peers.py.

use crate::bench::{measure, peak_rss_mib, Case, Encoder, Matmul, Shape, BATCH, SEQ};
use crate::commands::segment::set_threads;
use crate::config::{open_device, parse_device};
use crate::dict::Dictionary;
use crate::segment::{segment_stream, StreamOptions, WordSplitter};
use crate::tagger::{Decode, ModelSplitter};
use anyhow::{bail, Context, Result};
use candle_core::DType;
use std::path::PathBuf;
use std::time::Instant;

pub const EXAMPLES: &str = "Examples:
  cws bench model --mode train --shape tiny --shape small --threads 2
  cws bench model --mode infer --shape base --device cuda --dtype bf16
  cws bench model --shape tiny --matmul blas --matmul candle --warmup 1 --steps 3 --threads 2
  cws bench segment --input pku_test.utf8 --model models/pku --threads 2";

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub what: What,
}

#[derive(Debug, clap::Subcommand)]
pub enum What {
    /// Tokens per second of a training step or an inference forward pass.
    Model(ModelArgs),
    /// Characters per second of `cws segment` on a text file.
    Segment(SegmentArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    Train,
    Infer,
    Both,
}

#[derive(Debug, clap::Args)]
pub struct ModelArgs {
    #[arg(long, value_enum, default_value = "both")]
    pub mode: Mode,
    /// Model shapes to measure (repeat the flag for several).
    #[arg(long, value_enum, default_values = ["tiny", "small"])]
    pub shape: Vec<Shape>,
    /// Matrix products through OpenBLAS (when found) or candle's matmul, CPU
    /// only; repeat the flag to time both, one after the other.
    #[arg(long, value_enum, default_values = ["blas"])]
    pub matmul: Vec<Matmul>,
    /// Training steps run the encoder layers through cws's hand-written
    /// forward and backward (CPU, f32, BLAS) or through candle's ops and
    /// autograd; repeat the flag to time both.
    #[arg(long, value_enum, default_values = ["fused"])]
    pub encoder: Vec<Encoder>,
    #[arg(long, default_value_t = BATCH)]
    pub batch: usize,
    #[arg(long, default_value_t = SEQ)]
    pub seq: usize,
    /// Untimed steps first.
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Timed steps.
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Weight dtype: f32, or bf16 / f16 on CUDA.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    #[arg(long)]
    pub threads: Option<usize>,
}

#[derive(Debug, clap::Args)]
pub struct SegmentArgs {
    /// Text to segment (e.g. the PKU test input).
    #[arg(long)]
    pub input: PathBuf,
    /// Model (default: the bundled one).
    #[arg(long)]
    pub model: Option<String>,
    /// Measure the dictionary baseline instead of a model.
    #[arg(long, value_name = "WORDLIST")]
    pub dict_only: Option<PathBuf>,
    #[arg(long)]
    pub threads: Option<usize>,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Passes over the input (the best pass is reported).
    #[arg(long, default_value_t = 1)]
    pub repeat: usize,
}

pub fn parse_dtype(s: &str) -> Result<DType> {
    Ok(match s {
        "f32" => DType::F32,
        "bf16" => DType::BF16,
        "f16" => DType::F16,
        _ => bail!("unknown dtype {s:?}: expected f32, bf16 or f16"),
    })
}

pub fn run(args: Args) -> Result<()> {
    match args.what {
        What::Model(a) => run_model(a),
        What::Segment(a) => run_segment(a),
    }
}

fn run_model(a: ModelArgs) -> Result<()> {
    if let Some(n) = a.threads {
        set_threads(n)?;
    }
    let device = open_device(parse_device(&a.device)?)?;
    let dtype = parse_dtype(&a.dtype)?;
    let modes: &[bool] = match a.mode {
        Mode::Train => &[true],
        Mode::Infer => &[false],
        Mode::Both => &[true, false],
    };
    if a.matmul.contains(&Matmul::Blas) && device.is_cpu() && crate::blas::backend().is_none() {
        eprintln!("cws: no BLAS library found: --matmul blas runs candle's matmul");
    }
    for &shape in &a.shape {
        for &matmul in &a.matmul {
            for &encoder in &a.encoder {
                for &train in modes {
                    let case = Case {
                        shape,
                        train,
                        matmul,
                        encoder,
                        batch: a.batch,
                        seq: a.seq,
                        warmup: a.warmup,
                        steps: a.steps,
                        dtype,
                    };
                    let m = measure(case, &device)?;
                    println!("{}", serde_json::to_string(&m)?);
                    report(&m);
                }
            }
        }
    }
    Ok(())
}

/// One line on stderr: throughput, and the step's median and phases.
fn report(m: &crate::bench::Measurement) {
    let ms = |s: Option<f64>| s.map_or(String::new(), |s| format!("{:.1}", s * 1e3));
    let phases = match m.median_forward_seconds {
        Some(_) => format!(
            "; fwd {} bwd {} opt {}",
            ms(m.median_forward_seconds),
            ms(m.median_backward_seconds),
            ms(m.median_optimizer_seconds)
        ),
        None => String::new(),
    };
    eprintln!(
        "cws {:5} {:5} {:>9.0} tokens/s  {:7.1} ms/step (median {:.1}{phases})  matmul {}  encoder {:?}  peak RSS {:.0} MiB",
        m.mode,
        format!("{:?}", m.shape).to_lowercase(),
        m.tokens_per_s,
        m.seconds_per_step * 1e3,
        m.median_seconds_per_step * 1e3,
        m.matmul,
        m.encoder,
        m.peak_rss_mib.unwrap_or(f64::NAN)
    );
}

fn run_segment(a: SegmentArgs) -> Result<()> {
    if let Some(n) = a.threads {
        set_threads(n)?;
    }
    let text =
        std::fs::read(&a.input).with_context(|| format!("cannot read {}", a.input.display()))?;
    let chars = String::from_utf8_lossy(&text)
        .chars()
        .filter(|c| !c.is_whitespace())
        .count();
    let tagger;
    let dict;
    let (splitter, name): (Box<dyn WordSplitter + '_>, String) = match &a.dict_only {
        Some(w) => {
            dict = Dictionary::load(w)?;
            (Box::new(dict), "cws --dict-only".into())
        }
        None => {
            let device = open_device(parse_device(&a.device)?)?;
            tagger = crate::model_dir::load_or_default(a.model.as_deref(), None, &device)?;
            (
                Box::new(ModelSplitter::new(&tagger, Decode::Viterbi, None)?),
                format!("cws {}", a.model.as_deref().unwrap_or("(default model)")),
            )
        }
    };
    let mut best = f64::INFINITY;
    for _ in 0..a.repeat.max(1) {
        let mut sink = std::io::sink();
        let t0 = Instant::now();
        let opts = StreamOptions {
            input_name: "bench",
            ..Default::default()
        };
        let mut reader = std::io::BufReader::with_capacity(text.len().max(1), text.as_slice());
        segment_stream(&mut reader, &mut sink, splitter.as_ref(), &opts)?;
        best = best.min(t0.elapsed().as_secs_f64());
    }
    let v = serde_json::json!({
        "system": name, "mode": "segment", "input": a.input.display().to_string(), "chars": chars,
        "seconds": best, "chars_per_s": chars as f64 / best, "peak_rss_mib": peak_rss_mib(),
        "threads": rayon::current_num_threads(),
    });
    println!("{v}");
    eprintln!(
        "{name}: {:.0} chars/s ({chars} chars in {best:.2} s)",
        chars as f64 / best
    );
    Ok(())
}
