//! Training: segmented corpus → labelled windows → batches → AdamW steps, with
//! dev evaluation by the same scorer as `cws eval`, a JSON-lines metrics log,
//! best and last checkpoints written atomically, `--resume`, and a stop on
//! request ([`request_stop`], which `cws train` calls on SIGINT / SIGTERM)
//! that saves `last` first.
//!
//! A run is a [`Trainer`] going through its phases: [`data`] (the corpus,
//! each epoch's windows), [`build`] (the model it starts from), [`soft`]
//! (teachers' or cross-fitted copies' probabilities), [`step`] (one update),
//! [`eval`] (dev scores) and [`state`] (checkpoints, resume, the log).
//!
//! Reproducibility: initial weights, batch order (per epoch) and dropout masks
//! (per step) all come from generators seeded by `seed`, so the same config gives
//! the same run on CPU, and a resumed run continues exactly where it stopped.

mod build;
mod data;
mod eval;
mod raw_text;
mod soft;
pub use raw_text::DISTILL_TEXT_CACHE;
mod state;
mod step;

pub use data::{lexicon_sentences, load_data, windows, Data, Heldout, Perturb};
pub use eval::evaluate;
pub use state::TrainerState;

use crate::config::{SoftSource, TrainConfig};
use crate::corpus::read_word_set;
use crate::encode::{make_batch, training_batches, Window};
use crate::features::FeatureSpec;
use crate::score::Counts;
use crate::tagger::Tagger;
use anyhow::Result;
use rand::SeedableRng;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Asks a running [`train`] to save `last` and stop after its current step.
/// Async-signal-safe (one atomic store).
pub fn request_stop() {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// What a run tells whoever shows its progress (`cws train` draws a bar).
#[derive(Debug, Clone, Copy)]
pub enum Event<'e> {
    /// A line for the user: what is being trained, a note about the data.
    Note(&'e str),
    /// Steps start (again, for each cross-fitted copy): `total` in all, `at` done.
    Started { total: u64, at: u64 },
    /// A step is done: its number, the smoothed loss, the learning rate.
    Step {
        step: u64,
        loss: f64,
        lr: f64,
        units_per_s: f64,
    },
    /// Dev was scored after `step`.
    Evaluated {
        step: u64,
        dev: &'e Counts,
        best_f1: f64,
    },
    /// The steps of this run (or copy) are over.
    Finished,
}

/// Where a run's [`Event`]s go; the metrics log is written either way.
#[derive(Clone, Copy)]
pub enum Progress<'p> {
    /// Nowhere.
    Quiet,
    /// To this function.
    Report(&'p dyn Fn(Event<'_>)),
}

impl Progress<'_> {
    fn report(&self, event: Event<'_>) {
        if let Progress::Report(f) = self {
            f(event)
        }
    }
}

/// What a run ended with.
#[derive(Debug, Clone)]
pub struct Summary {
    pub steps: u64,
    pub best_dev_f1: Option<f64>,
    pub last_dev: Option<Counts>,
    /// The run stopped before its end (an interrupt).
    pub interrupted: bool,
    /// With `interrupted`: the checkpoint written at the stop (the run's
    /// `last`, or a cross-fitted copy's).
    pub saved_at_stop: Option<PathBuf>,
    pub output_dir: PathBuf,
}

/// Runs (or resumes) training as configured.
pub fn train(cfg: &TrainConfig, resume: bool, progress: Progress<'_>) -> Result<Summary> {
    train_until(cfg, resume, progress, None)
}

/// [`train`], stopping as an interrupt would after `stop_after` steps (tests use
/// it to check that a resumed run equals an uninterrupted one).
pub fn train_until(
    cfg: &TrainConfig,
    resume: bool,
    progress: Progress<'_>,
    stop_after: Option<u64>,
) -> Result<Summary> {
    let resume_from = state::resume_point(cfg, resume, progress)?;
    let data = load_data(cfg, progress)?;
    if data.inner_boundaries > 0 {
        progress.report(Event::Note(&format!(
            "note: {} gold word boundaries fall inside a number or Latin unit and cannot be learned",
            data.inner_boundaries
        )));
    }
    state::save_run_config(cfg)?;
    let copies = match crossfit_copies(cfg, progress)? {
        Ok(dirs) => dirs,
        Err(copy) => {
            return Ok(Summary {
                output_dir: cfg.output_dir.clone(),
                ..copy
            })
        }
    };
    Trainer::new(cfg, data, resume, resume_from.as_deref(), &copies, progress)?.run(stop_after)
}

/// Trains, or finishes, the copies `crossfit_folds` asks for (copy k in
/// `OUTPUT_DIR/crossfit/k`, without the training sentences whose index is k
/// modulo the fold count) and returns their best checkpoints, or the summary
/// of the copy an interrupt stopped (`--resume` carries on from there).
fn crossfit_copies(
    cfg: &TrainConfig,
    progress: Progress<'_>,
) -> Result<std::result::Result<Vec<PathBuf>, Summary>> {
    let SoftSource::CrossFit { folds: n, .. } = cfg.soft_source() else {
        return Ok(Ok(Vec::new()));
    };
    let mut dirs = Vec::with_capacity(n);
    for k in 0..n {
        let mut c = cfg.clone();
        c.crossfit_folds = 0;
        c.exclude_fold = Some([k, n]);
        c.output_dir = cfg.output_dir.join("crossfit").join(k.to_string());
        let last = c.output_dir.join("last");
        let state = last
            .join(crate::model_dir::TRAINER_STATE_FILE)
            .is_file()
            .then(|| state::read_state(&last))
            .transpose()?;
        if state.as_ref().is_none_or(|s| s.step < s.total_steps) {
            progress.report(Event::Note(&format!(
                "cross-fitting: copy {} of {n}, without training sentences {k}, {}, {}, …",
                k + 1,
                k + n,
                k + 2 * n
            )));
            // A copy that was started resumes (from step 0 if it never saved).
            let started = c.output_dir.join("config.toml").is_file();
            let s = train_until(&c, started, progress, None)?;
            if s.interrupted {
                return Ok(Err(s));
            }
        }
        dirs.push(c.output_dir.join("best"));
    }
    Ok(Ok(dirs))
}

/// A run in progress: the model, its data and optimizer, and where it stands.
pub(crate) struct Trainer<'a> {
    cfg: &'a TrainConfig,
    data: Data,
    tagger: Tagger,
    /// The features checkpoints keep; `tagger.features` lacks the dev-only
    /// words, for training and dev scores alike.
    full_features: FeatureSpec,
    epochs: data::EpochPlan,
    /// This epoch's gold windows; the `distill_text` windows (read from
    /// disk a batch at a time) are numbered after them.
    train_windows: Vec<Window>,
    /// The units of each gold window, then of each `distill_text` window.
    lengths: Vec<usize>,
    /// The units of each `distill_text` window, the same every epoch.
    raw_lengths: Vec<usize>,
    soft: soft::SoftTargets,
    stepper: step::Stepper,
    state: TrainerState,
    eval_every: u64,
    /// Each corpus's training word list (OOV figures of its dev scores).
    words: Vec<Option<HashSet<String>>>,
    biases: Vec<f32>,
    log: state::MetricsLog,
    progress: Progress<'a>,
    units_done: usize,
    loss_ema: Option<f64>,
    last_dev: Option<Counts>,
}

impl<'a> Trainer<'a> {
    /// Everything a run needs before its first step, from its start or from
    /// the `last` checkpoint in `resume_from`.
    fn new(
        cfg: &'a TrainConfig,
        data: Data,
        resume: bool,
        resume_from: Option<&Path>,
        copies: &[PathBuf],
        progress: Progress<'a>,
    ) -> Result<Self> {
        let resumed = resume_from.map(state::read_state).transpose()?;
        let words = (cfg.corpora().iter())
            .map(|c| c.words.map(read_word_set).transpose())
            .collect::<Result<Vec<_>>>()?;
        let mut tagger = build::build_tagger(cfg, &data, resume_from, progress)?;
        if !tagger.device.is_cpu() {
            // Dropout masks are drawn on the device there; seed its generator.
            tagger.device.set_seed(cfg.seed)?;
        }
        let precision = cfg.precision.dtype();
        tagger.model.set_compute_dtype(precision);
        let full_features = tagger.features.clone();
        tagger.features = Self::dev_view(cfg, &data, &full_features)?;
        let epochs = data::EpochPlan::new(cfg, &data, &full_features)?;
        let first_epoch = resumed.as_ref().map_or(0, |s| s.epoch);
        let train_windows = epochs.windows(
            cfg,
            &data,
            first_epoch,
            &tagger.vocab,
            &tagger.features,
            Perturb::default(),
        );
        let mut soft = soft::SoftTargets::new(
            cfg,
            &tagger,
            copies,
            &data.train,
            &data.standard_of,
            &train_windows,
        )?;
        let raw_lengths = soft.raw_lengths()?;
        let lengths = Self::lengths(&train_windows, &raw_lengths);
        let per_epoch = lengths.len().div_ceil(cfg.batch_size) as u64;
        let total = cfg
            .max_steps
            .map_or(per_epoch * cfg.epochs as u64, |s| s as u64);
        let mut stepper = step::Stepper::new(cfg, &tagger, total, precision)?;
        let state = match (resume_from, resumed) {
            (Some(dir), Some(resumed)) => {
                state::resume(dir, resumed, total, stepper.optimizer_mut())?
            }
            _ => TrainerState {
                total_steps: total,
                ..TrainerState::default()
            },
        };
        // Resumed (even from no checkpoint): log lines after the state's step go.
        let log = state::MetricsLog::open(&cfg.output_dir, resume.then_some(state.step))?;
        progress.report(Event::Note(&format!(
            "training on {} windows ({} sentences), {} dev sentences, {} steps of batch {} on {:?}",
            lengths.len(),
            data.train.len(),
            data.dev.len(),
            total,
            cfg.batch_size,
            tagger.device
        )));
        progress.report(Event::Started {
            total,
            at: state.step,
        });
        Ok(Self {
            progress,
            lengths,
            raw_lengths,
            eval_every: if cfg.eval_every == 0 {
                per_epoch
            } else {
                cfg.eval_every as u64
            },
            biases: eval::biases(cfg.tune_boundary_bias),
            cfg,
            data,
            tagger,
            full_features,
            epochs,
            train_windows,
            soft,
            stepper,
            state,
            words,
            log,
            units_done: 0,
            loss_ema: None,
            last_dev: None,
        })
    }

    /// The run's phases: epochs of steps, dev evaluation and checkpoints at
    /// their points, a stop when asked.
    fn run(mut self, stop_after: Option<u64>) -> Result<Summary> {
        let total = self.state.total_steps;
        while self.state.step < total {
            let batches = self.start_epoch();
            for idx in batches.iter().skip(self.state.batch_in_epoch) {
                self.train_step(idx)?;
                let step = self.state.step;
                let stop = INTERRUPTED.load(Ordering::SeqCst) || stop_after == Some(step);
                if step.is_multiple_of(self.eval_every) || step == total || stop {
                    self.evaluate_and_report()?;
                }
                if stop || step >= total {
                    return Ok(self.finish(stop));
                }
            }
            self.state.epoch += 1;
            self.state.batch_in_epoch = 0;
        }
        Ok(self.finish(false))
    }

    /// The dev lexicon (some dev-only words hidden), saved for inspection as
    /// the lists dev scores were measured with.
    fn dev_view(cfg: &TrainConfig, data: &Data, full: &FeatureSpec) -> Result<FeatureSpec> {
        let corpora = cfg.corpora();
        let mut dev = full.clone();
        for (k, corpus) in corpora.iter().enumerate() {
            let reference = corpus.dev_oov_reference.map(read_word_set).transpose()?;
            let own = (corpora.len() > 1).then(|| data.of_standard(k));
            let rate = corpus.dev_oov_rate;
            dev = eval::dev_features(
                &dev,
                own.as_ref().unwrap_or(data),
                rate,
                reference.as_ref(),
                k,
            );
        }
        if let Some(lexicon) = &dev.lexicon {
            lexicon.save(&cfg.output_dir.join("dev-lexicon.safetensors"))?;
        }
        if let Some(stats) = &dev.list_stats {
            stats.save(&cfg.output_dir.join("dev-liststats.safetensors"))?;
        }
        Ok(dev)
    }

    /// The epoch's batches (a seeded shuffle), its windows drawn afresh when
    /// epochs differ (hidden lexicon entries, [UNK] units, pseudo-sentences).
    fn start_epoch(&mut self) -> Vec<Vec<usize>> {
        let epoch = self.state.epoch;
        let mut rng = rand::rngs::StdRng::seed_from_u64(
            self.cfg.seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
        );
        let p = self.epochs.perturb(self.cfg, epoch);
        if self.epochs.varies(&p) {
            self.train_windows = self.epochs.windows(
                self.cfg,
                &self.data,
                epoch,
                &self.tagger.vocab,
                &self.tagger.features,
                p,
            );
            self.lengths = Self::lengths(&self.train_windows, &self.raw_lengths);
        }
        training_batches(&self.lengths, self.cfg.batch_size, &mut rng)
    }

    /// The units of each gold window, then of each raw-text one.
    fn lengths(gold: &[Window], raw: &[usize]) -> Vec<usize> {
        gold.iter()
            .map(|w| w.ids.len())
            .chain(raw.iter().copied())
            .collect()
    }

    /// One step on the windows `idx`, logged.
    fn train_step(&mut self, idx: &[usize]) -> Result<()> {
        let gold = self.train_windows.len();
        let raw = self.soft.raw_windows(
            idx.iter().filter(|&&i| i >= gold).map(|&i| i - gold),
            &self.tagger,
        )?;
        let mut next_raw = raw.iter().map(|(w, _)| w);
        let ws: Vec<&Window> = idx
            .iter()
            .filter_map(|&i| self.train_windows.get(i).or_else(|| next_raw.next()))
            .collect();
        let batch = make_batch(&ws, &self.tagger.vocab, &self.tagger.device)?;
        let raw_targets: Vec<_> = raw.iter().map(|(_, p)| p).collect();
        let soft = self.soft.for_batch(idx, &raw_targets, &batch)?;
        let r = self
            .stepper
            .step(&self.tagger, &batch, soft, self.state.step)?;
        self.state.step += 1;
        self.state.batch_in_epoch += 1;
        self.units_done += batch.units;
        let ema = self.loss_ema.map_or(r.loss, |e| 0.98 * e + 0.02 * r.loss);
        self.loss_ema = Some(ema);
        let rate = self.units_done as f64 / self.log.elapsed();
        self.progress.report(Event::Step {
            step: self.state.step,
            loss: ema,
            lr: r.lr,
            units_per_s: rate,
        });
        self.log.write(serde_json::json!({
            "step": self.state.step, "epoch": self.state.epoch, "loss": r.loss, "lr": r.lr,
            "grad_norm": r.grad_norm, "units_per_s": rate, "elapsed_s": self.log.elapsed(),
        }))
    }

    /// [`Trainer::evaluate_and_save`], reported.
    fn evaluate_and_report(&mut self) -> Result<()> {
        let c = self.evaluate_and_save()?;
        self.progress.report(Event::Evaluated {
            step: self.state.step,
            dev: &c,
            best_f1: self.state.best_dev_f1.unwrap_or(0.0),
        });
        self.last_dev = Some(c);
        Ok(())
    }

    /// Scores dev, logs the score, saves `best` when it improved and `last`
    /// always (with what `--resume` needs).
    pub(super) fn evaluate_and_save(&mut self) -> Result<Counts> {
        let t0 = Instant::now();
        let (c, f1, bias) = if self.words.len() == 1 {
            let (c, bias) = eval::evaluate(
                &self.tagger,
                &self.data.dev,
                self.words[0].as_ref(),
                &self.biases,
            )?;
            if self.cfg.tune_boundary_bias {
                self.tagger.config.cws.boundary_bias = Some(bias);
            }
            let f1 = c.f1();
            (c, f1, serde_json::json!(bias))
        } else {
            self.evaluate_standards()?
        };
        let improved = self.state.best_dev_f1.is_none_or(|b| f1 > b);
        if improved {
            self.state.best_dev_f1 = Some(f1);
        }
        self.log.write(serde_json::json!({
            "step": self.state.step, "epoch": self.state.epoch, "dev_f1": f1, "dev_precision": c.precision(),
            "dev_recall": c.recall(), "dev_oov_recall": self.words[0].as_ref().map(|_| c.oov_recall()),
            "boundary_bias": bias, "eval_seconds": t0.elapsed().as_secs_f64(), "elapsed_s": self.log.elapsed(), "best": improved,
        }))?;
        let dir = &self.cfg.output_dir;
        if improved {
            self.save(&dir.join("best"), false)?;
        }
        self.save(&dir.join("last"), true)?;
        Ok(c)
    }

    /// A joint run's dev scores: each corpus's dev split by its own standard
    /// (and bias, tuned per standard), reported; the summed counts, the mean
    /// F1 the run selects on, and the biases.
    fn evaluate_standards(&mut self) -> Result<(Counts, f64, serde_json::Value)> {
        let mut all = Counts::default();
        let (mut f1s, mut biases) = (Vec::new(), Vec::new());
        for (k, words) in self.words.iter().enumerate() {
            let dev = self.data.dev_of(k);
            self.tagger.features.standard = k;
            let (c, bias) = eval::evaluate(&self.tagger, &dev, words.as_ref(), &self.biases)?;
            if self.cfg.tune_boundary_bias {
                self.tagger.config.cws.boundary_biases[k] = bias;
            }
            all.add(&c);
            f1s.push(c.f1());
            biases.push(bias);
        }
        self.tagger.features.standard = 0;
        let mean = f1s.iter().sum::<f64>() / f1s.len() as f64;
        let standards = &self.tagger.config.cws.standards;
        let parts: Vec<String> = (standards.iter().zip(&f1s))
            .map(|(s, f)| format!("{} {f:.4}", s.name()))
            .collect();
        self.progress.report(Event::Note(&format!(
            "step {}: dev F1 by standard: {} (mean {mean:.4}, which the run selects on)",
            self.state.step,
            parts.join(", ")
        )));
        self.log.write(serde_json::json!({
            "step": self.state.step,
            "dev_f1_by_standard": standards.iter().map(|s| s.name()).zip(&f1s).collect::<std::collections::BTreeMap<_, _>>(),
        }))?;
        Ok((all, mean, serde_json::json!(biases)))
    }

    /// Saves the model being trained to `dest`, with the optimizer and
    /// trainer state when `resumable`.
    pub(super) fn save(&self, dest: &Path, resumable: bool) -> Result<()> {
        let resume = resumable.then(|| (self.stepper.optimizer(), &self.state));
        state::save_checkpoint(dest, &self.tagger, self.cfg, &self.full_features, resume)
    }

    fn finish(self, interrupted: bool) -> Summary {
        self.progress.report(Event::Finished);
        Summary {
            steps: self.state.step,
            best_dev_f1: self.state.best_dev_f1,
            last_dev: self.last_dev,
            interrupted,
            saved_at_stop: interrupted.then(|| self.cfg.output_dir.join("last")),
            output_dir: self.cfg.output_dir.clone(),
        }
    }
}
