//! `cws segment`: segments text from stdin or a file, streaming, losslessly.

use crate::dict::Dictionary;
use crate::segment::{segment_stream, Format, StreamOptions, WordSplitter};
use anyhow::{bail, Context, Result};
use std::io::{BufReader, BufWriter, Write};
use std::path::PathBuf;

pub const EXAMPLES: &str = "Examples:
  cws segment --dict-only pku_training_words.utf8 < input.txt > output.txt
  echo '我爱北京天安门' | cws segment --dict-only words.txt --format jsonl";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Dictionary-only baseline: forward maximum matching over this word list
    /// (one word per line), no model.
    #[arg(long, value_name = "WORDLIST")]
    pub dict_only: Option<PathBuf>,
    /// Read from this file instead of stdin.
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// Write to this file instead of stdout.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Separator inserted between words.
    #[arg(long, default_value = " ")]
    pub delimiter: String,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
}

pub fn run(args: Args) -> Result<()> {
    let splitter: Box<dyn WordSplitter> = match &args.dict_only {
        Some(path) => Box::new(Dictionary::load(path)?),
        None => bail!(
            "no segmentation model is bundled yet: pass --dict-only WORDLIST \
             (e.g. the SIGHAN training word list, see data/README.md)"
        ),
    };
    let stdin = std::io::stdin();
    let (mut input, input_name): (Box<dyn std::io::BufRead>, String) = match &args.input {
        Some(p) => (
            Box::new(BufReader::new(
                std::fs::File::open(p).with_context(|| format!("cannot read {}", p.display()))?,
            )),
            p.display().to_string(),
        ),
        None => (Box::new(stdin.lock()), "<stdin>".to_string()),
    };
    let mut output: Box<dyn Write> = match &args.output {
        Some(p) => Box::new(BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("cannot write {}", p.display()))?,
        )),
        None => Box::new(BufWriter::new(std::io::stdout().lock())),
    };
    let opts = StreamOptions {
        format: args.format,
        delimiter: &args.delimiter,
        batch_bytes: 64 * 1024,
        input_name: &input_name,
    };
    segment_stream(&mut input, &mut output, splitter.as_ref(), &opts)
}
