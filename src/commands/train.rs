//! `cws train`: fine-tunes or trains from scratch a BIES tagger from a TOML
//! config, with command-line overrides. The command owns what the user
//! meets: which folder a run may write (never one holding other files, never
//! a finished run without `--resume` or `--overwrite`), signals (SIGINT and
//! SIGTERM save `last` and exit 130 / 143), and the closing message.

use super::progress::ProgressStyle;
use super::signals;
use crate::config::{resolve_paths, TrainConfig};
use crate::output::{folder_state, foreign_files_error, FolderState};
use crate::train::{train, Event, Progress, Summary};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

pub const EXAMPLES: &str = "Examples:
  cws train --config configs/small-pku.toml
  cws train --config configs/bert-base-chinese-pku.toml --device cuda --output-dir runs/pku
  cws train --config configs/small-pku.toml --set warmup=0.05 --set grad_clip=0
  cws train --resume --output-dir runs/small-pku";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Training config (TOML; see configs/ for examples). Optional with
    /// --resume and --output-dir: the run's saved config is used.
    #[arg(long, required_unless_present = "resume")]
    pub config: Option<PathBuf>,
    /// Continue the run in the output dir from its last checkpoint, with the
    /// settings it was started with (plus any overrides given here).
    #[arg(long, conflicts_with = "overwrite")]
    pub resume: bool,
    /// Start again in an output dir that holds an earlier run, deleting that
    /// run's checkpoints and log (nothing else).
    #[arg(long)]
    pub overwrite: bool,
    /// Write into an output dir that holds files which are not a run's (they
    /// are left alone).
    #[arg(long)]
    pub force: bool,
    /// Set any config field: `--set key=value`, value in TOML syntax (a bare
    /// word is a string); repeatable. Unknown keys are errors.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// bar / auto: a progress bar (on a terminal) and a line per dev score;
    /// summary: a line per dev score, no bar; quiet: notes only. The metrics
    /// log is written either way.
    #[arg(long, value_enum, default_value = "bar")]
    pub progress: ProgressStyle,
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

/// The command line's overrides as config keys: the flags given, then each
/// `--set`; paths resolved against the current folder.
pub fn overrides(args: &Args) -> Result<toml::Table> {
    let mut t = toml::Table::new();
    macro_rules! put {
        ($($field:ident),*) => { $( if let Some(v) = &args.$field {
            t.insert(stringify!($field).into(), toml::Value::try_from(v.clone())?);
        } )* };
    }
    put!(
        model,
        train,
        dev,
        words,
        lexicon,
        dropout,
        lexicon_dropout,
        bigram_buckets,
        lexicon_examples,
        bigram_min_count,
        unit_dropout,
        heldout_folds,
        lexicon_stats,
        heldout_hide,
        crossfit_folds,
        crossfit_weight,
        dev_oov_reference,
        dev_oov_rate,
        output_dir,
        epochs,
        max_steps,
        batch_size,
        learning_rate,
        max_length,
        eval_every,
        seed,
        device,
        precision
    );
    for kv in &args.set {
        let (key, value) = kv
            .split_once('=')
            .with_context(|| format!("--set {kv:?}: expected KEY=VALUE"))?;
        let key = key.trim();
        let value = value.trim();
        // TOML syntax when it parses (numbers, booleans, arrays, quoted
        // strings), otherwise the text itself as a string.
        let parsed = format!("v = {value}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(value.to_string()));
        t.insert(key.to_string(), parsed);
    }
    let cwd = std::env::current_dir()?;
    resolve_paths(&mut t, &cwd)?;
    Ok(t)
}

/// The config file with the command line's overrides applied, validated; with
/// `--resume`, the run's saved config instead, and a note of each setting
/// that differs from the config file or that an override changes.
pub fn resolve_config(args: &Args) -> Result<TrainConfig> {
    let over = overrides(args)?;
    let from_file = args
        .config
        .as_deref()
        .map(|p| TrainConfig::load_with(p, &over))
        .transpose()?;
    if !args.resume {
        return from_file.context("--config is required (or --resume with --output-dir)");
    }
    let out = match (&from_file, over.get("output_dir")) {
        (_, Some(toml::Value::String(dir))) => PathBuf::from(dir),
        (Some(c), _) => c.output_dir.clone(),
        _ => bail!("--resume needs the run's folder: --output-dir DIR (or --config)"),
    };
    let saved_path = out.join(RUN_CONFIG);
    if !saved_path.is_file() {
        bail!(
            "--resume: {} holds no run to resume (no {RUN_CONFIG}); start it without --resume",
            out.display()
        );
    }
    let saved = TrainConfig::load(&saved_path)?;
    let cfg = TrainConfig::from_table(saved.to_table(), &over)
        .with_context(|| format!("resuming with the settings in {}", saved_path.display()))?;
    report_differences(&saved, from_file.as_ref(), &cfg, &over);
    Ok(cfg)
}

/// Says on stderr which settings a resumed run takes from where.
fn report_differences(
    saved: &TrainConfig,
    file: Option<&TrainConfig>,
    cfg: &TrainConfig,
    over: &toml::Table,
) {
    let (saved, used) = (saved.to_table(), cfg.to_table());
    let show = |v: Option<&toml::Value>| v.map_or("(unset)".to_string(), |v| v.to_string());
    for (key, value) in &used {
        if over.contains_key(key) && saved.get(key) != Some(value) {
            eprintln!(
                "resume: {key} = {} (overridden; the run had {})",
                value,
                show(saved.get(key))
            );
        }
    }
    if let Some(file) = file.map(TrainConfig::to_table) {
        for (key, value) in &used {
            if !over.contains_key(key) && file.get(key) != Some(value) {
                eprintln!(
                    "resume: {key} = {} as the run was started (the config file says {})",
                    value,
                    show(file.get(key))
                );
            }
        }
    }
}

/// The run's resolved config, saved in its folder; `--resume` reads it.
pub const RUN_CONFIG: &str = "config.toml";

/// What a run writes into its output folder.
const RUN_ENTRIES: [&str; 8] = [
    RUN_CONFIG,
    crate::train::DISTILL_TEXT_CACHE,
    "metrics.jsonl",
    "best",
    "last",
    "crossfit",
    "dev-lexicon.safetensors",
    "dev-liststats.safetensors",
];

/// Checks (before anything is written) that the run may use its output
/// folder, and with `--overwrite` deletes the earlier run's own entries but
/// the teachers' labels of `distill_text` (hours of a large teacher's time;
/// the run checks that they were made from the same teachers and text, and
/// labels the text again if not).
pub fn prepare_output_dir(dir: &Path, args: &Args) -> Result<()> {
    if dir.file_name().is_none() {
        bail!(
            "output_dir {}: name a folder for the run (e.g. runs/mine), not the current or a parent folder",
            dir.display()
        );
    }
    if let FolderState::Foreign(files) = folder_state(dir, |n, _| RUN_ENTRIES.contains(&n))? {
        if !args.force {
            return Err(foreign_files_error(dir, "a training run's", &files));
        }
    }
    let has_run = RUN_ENTRIES.iter().any(|e| dir.join(e).exists());
    match (has_run, args.resume, args.overwrite) {
        (true, false, false) => bail!(
            "{} holds a training run: pass --resume to continue it, --overwrite to start again \
             (deleting its checkpoints and log), or choose another output_dir",
            dir.display()
        ),
        (true, false, true) => {
            let kept = crate::train::DISTILL_TEXT_CACHE;
            for entry in RUN_ENTRIES.into_iter().filter(|&e| e != kept) {
                let p = dir.join(entry);
                if p.is_dir() {
                    std::fs::remove_dir_all(&p)
                } else if p.exists() {
                    std::fs::remove_file(&p)
                } else {
                    Ok(())
                }
                .with_context(|| format!("--overwrite: removing {}", p.display()))?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Opens every input file the config names, so that a typo is reported
/// before any output is created.
fn check_inputs(cfg: &TrainConfig) -> Result<()> {
    let files = [
        ("train", Some(&cfg.train)),
        ("dev", cfg.dev.as_ref()),
        ("words", cfg.words.as_ref()),
        ("lexicon", cfg.lexicon.as_ref()),
        ("general_lexicon", cfg.general_lexicon.as_ref()),
        ("dev_oov_reference", cfg.dev_oov_reference.as_ref()),
    ];
    let texts = cfg.distill_text.iter().map(|p| ("distill_text", Some(p)));
    for (key, path) in files
        .into_iter()
        .chain(texts)
        .filter_map(|(k, p)| p.map(|p| (k, p)))
    {
        std::fs::File::open(path)
            .with_context(|| format!("{key} = {}: cannot open it", path.display()))?;
    }
    for dir in &cfg.distill_from {
        if !dir.join("config.json").is_file() {
            bail!(
                "distill_from: {} is not a model folder (no config.json)",
                dir.display()
            );
        }
    }
    if let Some(config) = cfg.model.strip_prefix("config:") {
        std::fs::File::open(config)
            .with_context(|| format!("model = config:{config}: cannot open it"))?;
    }
    Ok(())
}

pub fn run(args: Args) -> Result<()> {
    let cfg = resolve_config(&args)?;
    check_inputs(&cfg)?;
    prepare_output_dir(&cfg.output_dir, &args)?;
    signals::install();
    let bar = std::cell::RefCell::new(indicatif::ProgressBar::hidden());
    let show = |event: Event<'_>| draw(&bar, args.progress, event);
    let s = train(&cfg, args.resume, Progress::Report(&show))?;
    report(&s)
}

/// Shows one event of a run: a fresh bar for each run or cross-fitted copy
/// (hidden with `--progress summary`, which prints the dev scores as lines,
/// and `--progress quiet`, which prints only the notes).
fn draw(bar: &std::cell::RefCell<indicatif::ProgressBar>, style: ProgressStyle, event: Event<'_>) {
    let mut bar = bar.borrow_mut();
    match event {
        Event::Note(line) => bar.suspend(|| eprintln!("{line}")),
        Event::Started { total, at } => {
            *bar = match style {
                ProgressStyle::Auto | ProgressStyle::Bar => indicatif::ProgressBar::new(total),
                ProgressStyle::Summary | ProgressStyle::Quiet => indicatif::ProgressBar::hidden(),
            };
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:30} {pos}/{len} steps  {msg}  [{elapsed_precise} < {eta_precise}]",
                )
                .expect("valid template"),
            );
            bar.set_position(at);
        }
        Event::Step {
            step,
            loss,
            lr,
            units_per_s,
        } => {
            bar.set_position(step);
            bar.set_message(format!(
                "loss {loss:.4}  lr {lr:.2e}  {units_per_s:.0} units/s"
            ));
        }
        Event::Evaluated { step, dev, best_f1 } => {
            let line = format!(
                "step {step}: dev F1 {:.4} (P {:.4} R {:.4}), best {best_f1:.4}",
                dev.f1(),
                dev.precision(),
                dev.recall()
            );
            match style {
                ProgressStyle::Summary => eprintln!("{line}"),
                _ => bar.println(line),
            }
        }
        Event::Finished => bar.finish_and_clear(),
    }
}

/// The closing message, true to what is on disk, and the exit status: an
/// interrupted run is an error carrying the signal's exit code.
fn report(s: &Summary) -> Result<()> {
    let f1 = s.best_dev_f1.map_or("n/a".into(), |f| format!("{f:.4}"));
    let run = s.output_dir.display();
    if !s.interrupted {
        eprintln!(
            "done after {} steps; best dev F1 {f1}; checkpoints in {run}/best and {run}/last",
            s.steps
        );
        return Ok(());
    }
    let saved = match &s.saved_at_stop {
        Some(p) => format!("saved {}", p.display()),
        None => "nothing new to save".into(),
    };
    let code = signals::received().unwrap_or(signals::SIGINT);
    Err(crate::commands::Exit {
        code: 128 + code as u8,
        message: format!(
            "stopped by {} after {} steps; {saved}; continue with `cws train --resume --output-dir {run}`",
            signals::name(code),
            s.steps
        ),
    }
    .into())
}
