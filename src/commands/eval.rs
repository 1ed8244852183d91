//! `cws eval`: SIGHAN-compatible scores of a predicted segmentation.

use super::progress::{Meter, ProgressStyle};
use crate::config::{open_device, parse_device};
use crate::corpus::{
    read_lines, read_word_list, read_word_set, split_words, unsegmented_lines, Line,
};
use crate::features::Lexicon;
use crate::model::Standard;
use crate::output::{refuse_overwriting_input, AtomicFile};
use crate::score::{score_lines, Counts};
use crate::segment::{segment_to_lines, Progress};
use crate::tagger::{Decode, ModelSplitter};
use anyhow::{bail, Context, Result};
use std::io::Write;
use std::path::PathBuf;

pub const EXAMPLES: &str = "Examples:
  cws eval --gold pku_test_gold.utf8 --pred pku_pred.utf8 --words pku_training_words.utf8
  cws eval --gold msr_test_gold.utf8 --pred msr_pred.utf8 --format json
  cws eval --model runs/small-pku/best --gold pku_test_gold.utf8 --words pku_training_words.utf8
  cws eval --standard msr --gold msr_test_gold.utf8 --words msr_training_words.utf8
  cws eval --model models/pku --gold dev.txt --hide-words dev-only-words.txt";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Gold segmentation (words separated by whitespace, one sentence per line).
    #[arg(long)]
    pub gold: PathBuf,
    /// Predicted segmentation, line-aligned with the gold file. Without it
    /// the gold file's text is segmented by a model (see --model) and scored.
    #[arg(long, conflicts_with_all = ["model", "standard"])]
    pub pred: Option<PathBuf>,
    /// Segment the gold file's text with this model and score that (default:
    /// $CWS_MODEL, else the built-in model of --standard).
    #[arg(long)]
    pub model: Option<String>,
    /// The segmentation standard: without --model, the built-in model of that
    /// standard (default: pku); with one, a check that the model was trained
    /// on it (a joint model, trained on several, then segments by this one;
    /// by its first without --standard).
    #[arg(long, value_enum)]
    pub standard: Option<Standard>,
    /// With a model: also write the model's segmentation here.
    #[arg(long, conflicts_with = "pred")]
    pub save_pred: Option<PathBuf>,
    /// With a model: take these words (a word list, one per line) out of the
    /// model's lexicon and word-list statistics first, to measure how it
    /// segments words its list lacks (as a test set's unseen words are).
    #[arg(long, conflicts_with = "pred")]
    pub hide_words: Option<PathBuf>,
    /// With a model: device (auto, cpu, cuda, cuda:N).
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Training word list: gold words absent from it count as out-of-vocabulary.
    #[arg(long)]
    pub words: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: ReportFormat,
    /// With a model: progress of the segmentation on stderr (never stdout):
    /// bytes done, chars/s, ETA.
    #[arg(long, value_enum, default_value = "auto")]
    pub progress: ProgressStyle,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReportFormat {
    Text,
    Json,
}

pub fn run(args: Args) -> Result<()> {
    if let Some(p) = &args.save_pred {
        refuse_overwriting_input(p, &[&args.gold])?;
    }
    let gold = read_lines(&args.gold)?;
    check_gold_is_segmented(&args.gold, &gold)?;
    let (pred, pred_name) = match (&args.pred, &args.model) {
        (Some(p), _) => (read_lines(p)?, p.display().to_string()),
        (None, m) => (
            segment_gold_text(&gold, m.as_deref(), &args)?,
            format!("the output of {}", m.as_deref().unwrap_or("the model")),
        ),
    };
    let nonblank = |lines: &[Line]| {
        lines
            .iter()
            .rposition(|l| !l.text.trim().is_empty())
            .map_or(0, |i| i + 1)
    };
    if nonblank(&gold) != nonblank(&pred) {
        bail!(
            "{} has {} lines but {} has {}: the files must be line-aligned",
            args.gold.display(),
            nonblank(&gold),
            pred_name,
            nonblank(&pred)
        );
    }
    let words = args.words.as_deref().map(read_word_set).transpose()?;
    let counts = score_lines(&gold, &pred, words.as_ref());
    report_mismatches(&counts);
    print!("{}", render(&counts, words.is_some(), args.format));
    Ok(())
}

/// Refuses a gold file that is raw text (no line has a word separator), and
/// warns when most of its lines have none.
fn check_gold_is_segmented(path: &std::path::Path, gold: &[Line]) -> Result<()> {
    let (unsegmented, considered) = unsegmented_lines(gold);
    if considered > 0 && unsegmented == considered {
        bail!(
            "{}: none of its {considered} lines of 4 or more characters has a word separator: it looks \
             like raw text, but a gold file holds words separated by spaces (SIGHAN format)",
            path.display()
        );
    }
    if unsegmented * 2 > considered {
        eprintln!(
            "warning: {}: {unsegmented} of its {considered} lines of 4 or more characters have no word \
             separator: is it segmented text? Unsegmented lines score as one long word each",
            path.display()
        );
    }
    Ok(())
}

/// Warns on stderr about lines whose text differs between gold and prediction.
pub fn report_mismatches(counts: &Counts) {
    let bad = &counts.text_mismatch_lines;
    if !bad.is_empty() {
        let shown: Vec<String> = bad.iter().take(20).map(|n| n.to_string()).collect();
        eprintln!(
            "warning: on {} line(s) the predicted words do not spell the gold text: line {}{}",
            bad.len(),
            shown.join(", "),
            if bad.len() > 20 { ", …" } else { "" }
        );
    }
}

/// The report, as the official script rounds it (3 decimals) or as JSON.
pub fn render(c: &Counts, with_oov: bool, format: ReportFormat) -> String {
    match format {
        ReportFormat::Json => {
            let value = serde_json::json!({
                "recall": c.recall(),
                "precision": c.precision(),
                "f1": c.f1(),
                "oov_rate": with_oov.then(|| c.oov_rate()),
                "oov_recall": with_oov.then(|| c.oov_recall()),
                "iv_recall": with_oov.then(|| c.iv_recall()),
                "gold_words": c.gold_words,
                "pred_words": c.pred_words,
                "correct_words": c.correct,
                "oov_words": with_oov.then_some(c.oov_words),
                "lines_scored": c.lines_scored,
                "text_mismatch_lines": c.text_mismatch_lines,
            });
            format!("{value}\n")
        }
        ReportFormat::Text => {
            let oov = |x: f64| {
                if with_oov {
                    format!("{x:.3}")
                } else {
                    "n/a (no --words)".into()
                }
            };
            format!(
                "recall       {:.3}\nprecision    {:.3}\nf1           {:.3}\noov_rate     {}\noov_recall   {}\niv_recall    {}\ngold_words   {}\npred_words   {}\ncorrect      {}\n",
                c.recall(),
                c.precision(),
                c.f1(),
                oov(c.oov_rate()),
                oov(c.oov_recall()),
                oov(c.iv_recall()),
                c.gold_words,
                c.pred_words,
                c.correct
            )
        }
    }
}

/// The gold file's text (words joined) segmented by a model, one line per line.
fn segment_gold_text(gold: &[Line], model: Option<&str>, args: &Args) -> Result<Vec<Line>> {
    let device = open_device(parse_device(&args.device)?)?;
    let mut tagger = crate::model_dir::load_or_default(model, args.standard, &device)?;
    if let Some(p) = &args.hide_words {
        if tagger.features.lexicon.is_none() {
            bail!("--hide-words: the model reads no word list");
        }
        let keys: Vec<Vec<String>> = read_word_list(p)?
            .iter()
            .map(|(w, _)| Lexicon::keys(w))
            .collect();
        tagger.features.hide_words(keys.iter().map(Vec::as_slice));
    }
    let splitter = ModelSplitter::new(&tagger, Decode::Viterbi, None)?;
    let texts: Vec<(usize, String)> = gold
        .iter()
        .map(|l| (l.number, split_words(&l.text).concat()))
        .collect();
    let total = texts.iter().map(|(_, t)| t.len() as u64).sum();
    let meter = Meter::new(args.progress, Some(total));
    let show = |p: &Progress| meter.update(p);
    let pred = segment_to_lines(&texts, &splitter, "  ", Some(&show))?;
    meter.finish();
    if let Some(p) = &args.save_pred {
        let mut file = AtomicFile::create(p)?;
        for l in &pred {
            writeln!(file, "{}", l.text).with_context(|| format!("writing {}", p.display()))?;
        }
        file.commit()?;
    }
    Ok(pred)
}
