//! `cws segment`: segments text from stdin or a file, streaming, losslessly.

use super::progress::{Meter, ProgressStyle};
use crate::config::{open_device, parse_device};
use crate::dict::Dictionary;
use crate::model::Standard;
use crate::model_dir;
use crate::output::{refuse_overwriting_input, AtomicFile};
use crate::segment::{
    segment_stream, Format, InputFormat, OnInvalidUtf8, Progress, StreamOptions, WordSplitter,
    BATCH_BYTES,
};
use crate::tagger::{Decode, ModelSplitter};
use anyhow::{bail, Context, Result};
use std::io::{BufReader, BufWriter, IsTerminal, Read};
use std::path::PathBuf;

pub const EXAMPLES: &str = "Examples:
  cws segment --model runs/small-pku/best < input.txt > output.txt
  cws segment --standard msr < input.txt > output.txt
  cws segment --model runs/small-pku/best --dict my_words.txt --format jsonl --input news.txt
  cws segment --dict-only pku_training_words.utf8 < input.txt > output.txt
  echo '我爱北京天安门' | cws segment --dict-only words.txt --format jsonl
  cws segment --input-format jsonl --text-field body < docs.jsonl > docs.words.jsonl
  cws segment --on-invalid-utf8 skip --progress summary --input crawl.txt --output crawl.seg.txt";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Model: a folder saved by `cws train`, or a hub id of such a model.
    /// Default: $CWS_MODEL, else the built-in PKU model — trained on the
    /// SIGHAN 2005 PKU corpus, whose terms allow non-commercial research use
    /// only (see NOTICE in the README); pass your own model for other uses.
    #[arg(long)]
    pub model: Option<String>,
    /// The segmentation standard: without --model, the built-in model of that
    /// standard (default: pku); with one, a check that the model was trained
    /// on it (a joint model, trained on several, then segments by this one;
    /// by its first without --standard).
    #[arg(long, value_enum, conflicts_with = "dict_only")]
    pub standard: Option<Standard>,
    /// User dictionary (one word per line, optional weight): every match,
    /// leftmost-longest, comes out as one word.
    #[arg(long, value_name = "FILE")]
    pub dict: Option<PathBuf>,
    /// Decoding of the model's label scores.
    #[arg(long, value_enum, default_value = "viterbi")]
    pub decode: Decode,
    /// Added to the scores of word-ending labels before decoding: above 0
    /// splits more, below 0 keeps more characters together (default: the
    /// model's own, `cws_boundary_bias` in its config.json).
    #[arg(long, allow_hyphen_values = true, conflicts_with = "dict_only")]
    pub boundary_bias: Option<f32>,
    /// Worker threads for the model (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Device for the model: auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Dictionary-only baseline: forward maximum matching over this word list
    /// (one word per line), no model.
    #[arg(long, value_name = "WORDLIST")]
    pub dict_only: Option<PathBuf>,
    /// Read from this file instead of stdin.
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// Write to this file instead of stdout (written under a temporary name
    /// and renamed at the end; never the input file).
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Write each line's result as soon as the line is read (on by default
    /// when stdin is a terminal). Without it, lines are segmented in batches,
    /// though never held back while the input pauses.
    #[arg(long)]
    pub line_buffered: bool,
    /// Separator inserted between words.
    #[arg(long, default_value = " ")]
    pub delimiter: String,
    /// Output format. With `--input-format jsonl` it says which fields the
    /// result adds: text: `words`; jsonl: `words`, `chars` and `bytes`
    /// (character and byte offsets of the words in the text); tags: `tags`.
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
    /// What each input line is.
    #[arg(long, value_enum, default_value = "text")]
    pub input_format: InputFormat,
    /// With `--input-format jsonl`: the field that holds the text.
    #[arg(long, value_name = "NAME")]
    pub text_field: Option<String>,
    /// What becomes of a line that is not UTF-8. Replaced and skipped lines
    /// are counted on stderr.
    #[arg(long, value_enum, default_value = "error")]
    pub on_invalid_utf8: OnInvalidUtf8,
    /// Progress on stderr (never stdout): bytes done, chars/s, ETA.
    #[arg(long, value_enum, default_value = "auto")]
    pub progress: ProgressStyle,
}

pub fn run(args: Args) -> Result<()> {
    if args.text_field.is_some() && args.input_format != InputFormat::Jsonl {
        bail!("--text-field names a field of JSON input: it needs --input-format jsonl");
    }
    if let Some(n) = args.threads {
        set_threads(n)?;
    }
    let user_dict = args.dict.as_deref().map(Dictionary::load).transpose()?;
    let tagger;
    let splitter: Box<dyn WordSplitter + '_> = match (&args.dict_only, &args.model) {
        (Some(_), Some(_)) => bail!("--dict-only and --model exclude each other"),
        (Some(path), None) => {
            let mut dict = Dictionary::load(path)?;
            if let Some(user) = &user_dict {
                for w in user.words() {
                    dict.insert(w.clone());
                }
            }
            Box::new(dict)
        }
        (None, model) => {
            let device = open_device(parse_device(&args.device)?)?;
            tagger = model_dir::load_or_default(model.as_deref(), args.standard, &device)?;
            let mut splitter = ModelSplitter::new(&tagger, args.decode, user_dict.as_ref())?;
            if let Some(b) = args.boundary_bias {
                splitter.boundary_bias = b;
            }
            Box::new(splitter)
        }
    };
    if let (Some(out), Some(input)) = (&args.output, &args.input) {
        refuse_overwriting_input(out, &[input])?;
    }
    let stdin = std::io::stdin();
    let interactive = args.input.is_none() && stdin.is_terminal();
    let (source, input_name, size): (Box<dyn Read>, String, Option<u64>) = match &args.input {
        Some(p) => {
            let file =
                std::fs::File::open(p).with_context(|| format!("cannot read {}", p.display()))?;
            let size = bytes_left(&file);
            (Box::new(file), p.display().to_string(), size)
        }
        None => (
            Box::new(stdin.lock()),
            "<stdin>".to_string(),
            stdin_bytes_left(),
        ),
    };
    let mut input = BufReader::with_capacity(256 * 1024, source);
    let meter = Meter::new(args.progress, size);
    let show = |p: &Progress| meter.update(p);
    let opts = StreamOptions {
        format: args.format,
        delimiter: &args.delimiter,
        batch_bytes: if args.line_buffered || interactive {
            0
        } else {
            BATCH_BYTES
        },
        input_name: &input_name,
        input_format: args.input_format,
        text_field: args.text_field.as_deref().unwrap_or("text"),
        on_invalid_utf8: args.on_invalid_utf8,
        progress: Some(&show),
    };
    let done = match &args.output {
        Some(p) => {
            let mut file = AtomicFile::create(p)?;
            let done = segment_stream(&mut input, &mut file, splitter.as_ref(), &opts)?;
            file.commit()?;
            done
        }
        None => {
            let mut out = BufWriter::new(std::io::stdout().lock());
            segment_stream(&mut input, &mut out, splitter.as_ref(), &opts)?
        }
    };
    meter.finish();
    if let Some(first) = done.first_invalid_line {
        let what = match args.on_invalid_utf8 {
            OnInvalidUtf8::Skip => "skipped",
            _ => "replaced",
        };
        let n = done.invalid_utf8;
        eprintln!(
            "cws segment: {n} line{} with invalid UTF-8 {what} (first: {input_name} line {first})",
            if n == 1 { "" } else { "s" }
        );
    }
    Ok(())
}

/// The bytes left to read in `file` when it is a regular file (the size of
/// a pipe or terminal is not known).
fn bytes_left(file: &std::fs::File) -> Option<u64> {
    use std::io::Seek;
    let meta = file.metadata().ok()?;
    let mut file = file;
    let at = file.stream_position().ok()?;
    meta.is_file().then(|| meta.len().saturating_sub(at))
}

/// [`bytes_left`] of stdin, where stdin is a regular file (`< input.txt`).
#[cfg(unix)]
fn stdin_bytes_left() -> Option<u64> {
    use std::os::fd::AsFd;
    let fd = std::io::stdin().as_fd().try_clone_to_owned().ok()?;
    bytes_left(&std::fs::File::from(fd))
}

#[cfg(not(unix))]
fn stdin_bytes_left() -> Option<u64> {
    None
}

/// Sizes the global thread pool that candle and the segmenter use.
pub fn set_threads(n: usize) -> Result<()> {
    if n == 0 {
        bail!("--threads must be at least 1");
    }
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build_global()
        .map_err(|e| anyhow::anyhow!("cannot set up {n} threads: {e}"))
}

#[cfg(test)]
mod tests {
    use super::bytes_left;
    use std::io::Read;

    #[test]
    fn bytes_left_counts_from_the_read_position_of_regular_files() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("in.txt");
        std::fs::write(&path, "北京\n天安门\n").unwrap();
        let mut file = std::fs::File::open(&path).unwrap();
        assert_eq!(bytes_left(&file), Some(17));
        file.read_exact(&mut [0; 7]).unwrap();
        assert_eq!(bytes_left(&file), Some(10));
        #[cfg(unix)]
        assert_eq!(bytes_left(&std::fs::File::open("/dev/null").unwrap()), None);
    }
}
