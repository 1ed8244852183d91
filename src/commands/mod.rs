//! The `cws` command line: one module per subcommand, each with its `Args`
//! and a `run` function; `main` only dispatches.

pub mod bench;
pub mod eval;
pub mod export;
pub mod progress;
pub mod segment;
pub mod signals;
pub mod train;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "cws",
    version,
    about = "Train, evaluate and run BERT-based Chinese word segmenters",
    long_about = "Train, evaluate and run BERT-based Chinese word segmenters.\n\n\
        Results go to stdout; progress and diagnostics go to stderr."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once per process: the size of the biggest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Segment text: reads lines from stdin (or --input), writes them with words separated.
    #[command(after_help = segment::EXAMPLES)]
    Segment(segment::Args),
    /// Score a segmentation (or a model's) against gold with the SIGHAN 2005 method.
    #[command(after_help = eval::EXAMPLES)]
    Eval(eval::Args),
    /// Train a segmenter: fine-tune bert-base-chinese or train a small BERT from scratch.
    #[command(after_help = train::EXAMPLES)]
    Train(train::Args),
    /// Copy a trained model into a folder fit to ship (weights optionally as f16).
    #[command(after_help = export::EXAMPLES)]
    Export(export::Args),
    /// Measure throughput: model training/inference steps, or segmentation speed.
    #[command(after_help = bench::EXAMPLES)]
    Bench(bench::Args),
}

/// An error that ends the process with its own exit status (e.g. 130 after
/// SIGINT) and message.
#[derive(Debug)]
pub struct Exit {
    pub code: u8,
    pub message: String,
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Exit {}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Segment(args) => segment::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Train(args) => train::run(args),
        Command::Export(args) => export::run(args),
        Command::Bench(args) => bench::run(args),
    }
}
