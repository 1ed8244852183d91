//! `cws train`: fine-tunes or trains from scratch a BIES tagger from a TOML
//! config, with command-line overrides of the usual fields.

use crate::config::TrainConfig;
use crate::train::{train, Progress};
use anyhow::Result;
use std::path::PathBuf;

pub const EXAMPLES: &str = "Examples:
  cws train --config configs/small-pku.toml
  cws train --config configs/bert-base-chinese-pku.toml --device cuda --output-dir runs/pku
  cws train --config configs/small-pku.toml --resume";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Training config (TOML; see configs/ for examples).
    #[arg(long)]
    pub config: PathBuf,
    /// Continue the run in the output dir from its last checkpoint, same schedule.
    #[arg(long)]
    pub resume: bool,
    #[arg(long, value_enum, default_value = "bar")]
    pub progress: Progress,
    /// Override `model`.
    #[arg(long)]
    pub model: Option<String>,
    /// Override `train`.
    #[arg(long)]
    pub train: Option<PathBuf>,
    /// Override `dev`.
    #[arg(long)]
    pub dev: Option<PathBuf>,
    /// Override `words` (training word list for dev OOV figures).
    #[arg(long)]
    pub words: Option<PathBuf>,
    /// Override `lexicon` (word list read as lexicon features).
    #[arg(long)]
    pub lexicon: Option<PathBuf>,
    /// Override `dropout` (hidden, attention and classifier dropout).
    #[arg(long)]
    pub dropout: Option<f64>,
    /// Override `lexicon_dropout`.
    #[arg(long)]
    pub lexicon_dropout: Option<f64>,
    /// Override `bigram_buckets` (0 = no bigram features).
    #[arg(long)]
    pub bigram_buckets: Option<usize>,
    /// Override `lexicon_examples`.
    #[arg(long)]
    pub lexicon_examples: Option<f64>,
    /// Override `bigram_min_count`.
    #[arg(long)]
    pub bigram_min_count: Option<usize>,
    /// Override `unit_dropout`.
    #[arg(long)]
    pub unit_dropout: Option<f64>,
    /// Override `heldout_folds` (0 = off).
    #[arg(long)]
    pub heldout_folds: Option<usize>,
    /// Override `lexicon_stats` (word-list statistics with the lexicon).
    #[arg(long)]
    pub lexicon_stats: Option<bool>,
    /// Override `heldout_hide`.
    #[arg(long)]
    pub heldout_hide: Option<f64>,
    /// Override `crossfit_folds` (cross-fitted self-distillation; 0 = off).
    #[arg(long)]
    pub crossfit_folds: Option<usize>,
    /// Override `crossfit_weight`.
    #[arg(long)]
    pub crossfit_weight: Option<f64>,
    /// Override `dev_oov_reference`.
    #[arg(long)]
    pub dev_oov_reference: Option<PathBuf>,
    /// Override `dev_oov_rate`.
    #[arg(long)]
    pub dev_oov_rate: Option<f64>,
    /// Override `output_dir`.
    #[arg(long)]
    pub output_dir: Option<PathBuf>,
    /// Override `epochs`.
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Override `max_steps`.
    #[arg(long)]
    pub max_steps: Option<usize>,
    /// Override `batch_size`.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Override `learning_rate`.
    #[arg(long)]
    pub learning_rate: Option<f64>,
    /// Override `max_length`.
    #[arg(long)]
    pub max_length: Option<usize>,
    /// Override `eval_every`.
    #[arg(long)]
    pub eval_every: Option<usize>,
    /// Override `seed`.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Override `device` (auto, cpu, cuda, cuda:N).
    #[arg(long)]
    pub device: Option<String>,
    /// Override `precision` (f32, or bf16 / f16 mixed precision on CUDA).
    #[arg(long)]
    pub precision: Option<String>,
}

/// The config file with the command line's overrides applied, validated.
pub fn resolve_config(args: &Args) -> Result<TrainConfig> {
    let mut c = TrainConfig::load(&args.config)?;
    macro_rules! set {
        ($($field:ident),*) => { $( if let Some(v) = &args.$field { c.$field = v.clone().into(); } )* };
    }
    set!(
        model,
        train,
        output_dir,
        epochs,
        batch_size,
        learning_rate,
        max_length,
        eval_every,
        seed,
        device,
        precision,
        lexicon_dropout,
        bigram_buckets,
        unit_dropout,
        lexicon_examples,
        bigram_min_count,
        heldout_folds,
        heldout_hide,
        lexicon_stats,
        crossfit_folds,
        crossfit_weight
    );
    if args.dropout.is_some() {
        c.dropout = args.dropout;
    }
    if args.dev_oov_reference.is_some() {
        c.dev_oov_reference = args.dev_oov_reference.clone();
    }
    if args.dev_oov_rate.is_some() {
        c.dev_oov_rate = args.dev_oov_rate;
    }
    if args.lexicon.is_some() {
        c.lexicon = args.lexicon.clone();
    }
    if args.dev.is_some() {
        c.dev = args.dev.clone();
    }
    if args.words.is_some() {
        c.words = args.words.clone();
    }
    if args.max_steps.is_some() {
        c.max_steps = args.max_steps;
    }
    c.validate()?;
    Ok(c)
}

pub fn run(args: Args) -> Result<()> {
    let cfg = resolve_config(&args)?;
    let s = train(&cfg, args.resume, args.progress)?;
    eprintln!(
        "{} after {} steps; best dev F1 {}; checkpoints in {}/best and {}/last",
        if s.interrupted { "stopped" } else { "done" },
        s.steps,
        s.best_dev_f1.map_or("n/a".into(), |f| format!("{f:.4}")),
        s.output_dir.display(),
        s.output_dir.display()
    );
    Ok(())
}
