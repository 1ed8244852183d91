//! Training: segmented corpus → labelled windows → batches → AdamW steps, with
//! dev evaluation by the same scorer as `cws eval`, a JSON-lines metrics log,
//! best and last checkpoints written atomically, `--resume`, and Ctrl-C that
//! saves and stops cleanly.
//!
//! Reproducibility: initial weights, batch order (per epoch) and dropout masks
//! (per step) all come from generators seeded by `seed`, so the same config gives
//! the same run on CPU, and a resumed run continues exactly where it stopped.

use crate::bies::labels_from_lengths;
use crate::checkpoint::write_atomic;
use crate::config::{open_device, parse_device, parse_precision, TrainConfig, VOCAB_FROM_TRAIN};
use crate::corpus::{read_segmented, Line, Sentence};
use crate::encode::{make_batch, split_at_punctuation, training_batches, Vocab, Window};
use crate::hub::{resolve, HubSettings, ModelSource};
use crate::model::{
    masked_cross_entropy, BertConfig, BertForTokenClassification, DropoutRng, BIES,
};
use crate::optim::{clip_grad_norm, AdamW, AdamWConfig, LinearSchedule};
use crate::score::{score_lines, Counts};
use crate::segment::segment_to_lines;
use crate::tagger::{Decode, ModelSplitter, Tagger};
use crate::units::units_of_words;
use crate::weights::{self, LoadOptions};
use anyhow::{bail, Context, Result};
use candle_core::DType;
use candle_nn::VarMap;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Where training stands; saved in `last/trainer_state.json` for `--resume`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TrainerState {
    pub step: u64,
    pub epoch: usize,
    /// Batches of `epoch` already done.
    pub batch_in_epoch: usize,
    pub best_dev_f1: Option<f64>,
    pub total_steps: u64,
}

/// How progress is shown on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Progress {
    /// An indicatif bar (drawn only on a terminal).
    Bar,
    /// Nothing but the final summary; the metrics log is still written.
    Quiet,
}

/// What a run ended with.
#[derive(Debug, Clone)]
pub struct Summary {
    pub steps: u64,
    pub best_dev_f1: Option<f64>,
    pub last_dev: Option<Counts>,
    pub interrupted: bool,
    pub output_dir: PathBuf,
}

/// Labelled training data and dev sentences, ready for the model.
pub struct Data {
    pub train: Vec<Vec<String>>,
    pub dev: Vec<Sentence>,
    /// Gold word boundaries inside a unit (not representable), counted.
    pub inner_boundaries: usize,
}

/// Reads the corpus and holds out the dev set (the last `dev_fraction` of the
/// non-blank training lines, unless a dev file is given).
pub fn load_data(cfg: &TrainConfig) -> Result<Data> {
    let all: Vec<Sentence> = read_segmented(&cfg.train)?
        .into_iter()
        .filter(|s| !s.words.is_empty())
        .collect();
    if all.is_empty() {
        bail!("{} has no sentences", cfg.train.display());
    }
    let (train, dev) = match &cfg.dev {
        Some(p) => (
            all,
            read_segmented(p)?
                .into_iter()
                .filter(|s| !s.words.is_empty())
                .collect(),
        ),
        None => {
            let n_dev = ((all.len() as f64) * cfg.dev_fraction).round().max(1.0) as usize;
            if n_dev >= all.len() {
                bail!(
                    "dev_fraction {} leaves no training sentences",
                    cfg.dev_fraction
                );
            }
            let mut all = all;
            let dev = all.split_off(all.len() - n_dev);
            (all, dev)
        }
    };
    let mut inner = 0;
    let train: Vec<Vec<String>> = train
        .into_iter()
        .map(|s| {
            inner += units_of_words(&s.words).inner_boundaries;
            s.words
        })
        .collect();
    Ok(Data {
        train,
        dev,
        inner_boundaries: inner,
    })
}

/// Training windows of at most `max_units` units, cut at punctuation.
pub fn windows(sentences: &[Vec<String>], vocab: &Vocab, max_units: usize) -> Vec<Window> {
    let mut out = Vec::new();
    for words in sentences {
        let su = units_of_words(words);
        let labels = labels_from_lengths(&su.word_lengths);
        let keys: Vec<String> = su.units.iter().map(|u| u.key()).collect();
        let ids = vocab.unit_ids(&su.units);
        for r in split_at_punctuation(&keys, max_units) {
            out.push(Window {
                ids: ids[r.clone()].to_vec(),
                labels: labels[r].to_vec(),
            });
        }
    }
    out
}

/// Segments the dev sentences' text with the model and scores it like `cws eval`.
pub fn evaluate(
    tagger: &Tagger,
    dev: &[Sentence],
    words: Option<&HashSet<String>>,
) -> Result<Counts> {
    let texts: Vec<(usize, String)> = dev.iter().map(|s| (s.line, s.text())).collect();
    let splitter = ModelSplitter {
        tagger,
        decode: Decode::Viterbi,
        dict: None,
    };
    let pred = segment_to_lines(&texts, &splitter, " ")?;
    let gold: Vec<Line> = dev
        .iter()
        .map(|s| Line {
            number: s.line,
            text: s.words.join(" "),
        })
        .collect();
    Ok(score_lines(&gold, &pred, words))
}

/// Builds the model, vocabulary and config a run starts from.
fn build_tagger(cfg: &TrainConfig, data: &Data, resume_from: Option<&Path>) -> Result<Tagger> {
    let device = open_device(parse_device(&cfg.device)?)?;
    let source = match resume_from {
        Some(dir) => ModelSource::Local(dir.to_path_buf()),
        None => ModelSource::parse(&cfg.model)?,
    };
    let files = resolve(&source, &HubSettings::from_env())?;
    let mut config = BertConfig::from_file(&files.config)?;
    let vocab = match (cfg.vocab.as_deref(), resume_from) {
        (_, Some(dir)) => Vocab::load(&dir.join("vocab.txt"))?,
        (Some(VOCAB_FROM_TRAIN), None) => {
            if files.weights.is_some() {
                bail!("vocab = \"train\" builds a new vocabulary, which only a fresh model (config:PATH) can use");
            }
            let keys: Vec<String> = data
                .train
                .iter()
                .flat_map(|w| units_of_words(w).units.into_iter().map(|u| u.key()))
                .collect();
            let v = Vocab::build(keys.iter().map(String::as_str), 1);
            config.vocab_size = v.len();
            config.pad_token_id = v.pad as usize;
            v
        }
        (Some(path), None) => Vocab::load(Path::new(path))?,
        (None, None) => Vocab::load(files.tokenizer.as_ref().with_context(|| {
            format!(
                "{} has no tokenizer.json or vocab.txt: set `vocab` in the config",
                cfg.model
            )
        })?)?,
    };
    if vocab.len() > config.vocab_size {
        bail!(
            "the vocabulary has {} tokens but the model's vocab_size is {}",
            vocab.len(),
            config.vocab_size
        );
    }
    config.set_labels(&BIES);
    if let Some(p) = cfg.dropout {
        config.hidden_dropout_prob = p;
        config.attention_probs_dropout_prob = p;
        config.classifier_dropout = Some(p);
    }
    if cfg.max_length > config.max_position_embeddings {
        bail!(
            "max_length {} exceeds the model's max_position_embeddings {}",
            cfg.max_length,
            config.max_position_embeddings
        );
    }
    let varmap = VarMap::new();
    let model =
        BertForTokenClassification::new_random(&varmap, &config, cfg.seed, DType::F32, &device)?;
    if let Some(w) = &files.weights {
        let report = weights::load(
            &varmap,
            w,
            LoadOptions {
                allow_missing_head: resume_from.is_none(),
            },
        )?;
        if report.head_missing {
            eprintln!(
                "note: {} has no token-classification head; it starts freshly initialised",
                cfg.model
            );
        }
    }
    Ok(Tagger {
        model,
        varmap,
        config,
        vocab,
        device,
        max_units: cfg.max_length - 2,
        batch_size: cfg.batch_size.max(32),
    })
}

/// Writes a checkpoint folder atomically: weights and config in Hugging Face
/// layout, the vocabulary, the resolved training config, and for `last` the
/// optimizer and trainer state needed by `--resume`.
fn save_checkpoint(
    dest: &Path,
    tagger: &Tagger,
    cfg: &TrainConfig,
    resume: Option<(&AdamW, &TrainerState)>,
) -> Result<()> {
    write_atomic(dest, |tmp| {
        weights::save_pretrained(&tagger.varmap, &tagger.config, tmp, DType::F32)?;
        tagger.vocab.save(&tmp.join("vocab.txt"))?;
        std::fs::write(
            tmp.join("tokenizer_config.json"),
            "{\"tokenizer_class\": \"BertTokenizer\", \"do_lower_case\": true}\n",
        )?;
        std::fs::write(tmp.join("cws-train.toml"), cfg.to_toml())?;
        if let Some((opt, state)) = resume {
            opt.save_state(tmp.join("optimizer.safetensors"))?;
            std::fs::write(
                tmp.join("trainer_state.json"),
                serde_json::to_string_pretty(state)?,
            )?;
        }
        Ok(())
    })
    .with_context(|| format!("writing checkpoint {}", dest.display()))
}

/// Runs (or resumes) training as configured.
pub fn train(cfg: &TrainConfig, resume: bool, progress: Progress) -> Result<Summary> {
    train_until(cfg, resume, progress, None)
}

/// [`train`], stopping as an interrupt would after `stop_after` steps (tests use
/// it to check that a resumed run equals an uninterrupted one).
pub fn train_until(
    cfg: &TrainConfig,
    resume: bool,
    progress: Progress,
    stop_after: Option<u64>,
) -> Result<Summary> {
    let _ = ctrlc::set_handler(|| INTERRUPTED.store(true, Ordering::SeqCst));
    std::fs::create_dir_all(&cfg.output_dir)
        .with_context(|| format!("cannot create {}", cfg.output_dir.display()))?;
    let last_dir = cfg.output_dir.join("last");
    let best_dir = cfg.output_dir.join("best");
    let resume_from = if resume {
        if !last_dir.join("trainer_state.json").is_file() {
            bail!(
                "--resume: no checkpoint to resume at {}",
                last_dir.display()
            );
        }
        Some(last_dir.as_path())
    } else {
        None
    };
    let data = load_data(cfg)?;
    if data.inner_boundaries > 0 {
        eprintln!(
            "note: {} gold word boundaries fall inside a number or Latin unit and cannot be learned",
            data.inner_boundaries
        );
    }
    let words = match &cfg.words {
        Some(p) => Some(crate::dict::Dictionary::load(p)?.words().clone()),
        None => None,
    };
    let tagger = build_tagger(cfg, &data, resume_from)?;
    let mut tagger = tagger;
    if !tagger.device.is_cpu() {
        // Dropout masks are drawn on the device there; seed its generator.
        tagger.device.set_seed(cfg.seed)?;
    }
    let precision = parse_precision(&cfg.precision)?;
    tagger.model.set_compute_dtype(precision);
    // f16 gradients underflow without loss scaling; bf16 has f32's range.
    let mut loss_scale: f64 = if precision == DType::F16 {
        65536.0
    } else {
        1.0
    };
    let mut scaled_good_steps = 0u32;
    let train_windows = windows(&data.train, &tagger.vocab, cfg.max_length - 2);
    let lengths: Vec<usize> = train_windows.iter().map(|w| w.ids.len()).collect();
    let per_epoch = train_windows.len().div_ceil(cfg.batch_size) as u64;
    let total = cfg
        .max_steps
        .map_or(per_epoch * cfg.epochs as u64, |s| s as u64);
    let schedule = LinearSchedule {
        base_lr: cfg.learning_rate,
        warmup: (cfg.warmup * total as f64).round() as u64,
        total,
    };
    let mut opt = AdamW::new(
        &tagger.varmap,
        AdamWConfig {
            weight_decay: cfg.weight_decay,
            ..AdamWConfig::default()
        },
    )?;
    let mut state = TrainerState {
        total_steps: total,
        ..TrainerState::default()
    };
    if let Some(dir) = resume_from {
        opt.load_state(dir.join("optimizer.safetensors"))?;
        state = serde_json::from_str(&std::fs::read_to_string(dir.join("trainer_state.json"))?)
            .context("reading trainer_state.json")?;
        if state.total_steps != total {
            bail!(
                "--resume: the checkpoint was trained for {} steps but this config gives {total}; resume with the same config",
                state.total_steps
            );
        }
    }
    std::fs::write(cfg.output_dir.join("config.toml"), cfg.to_toml())?;
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(cfg.output_dir.join("metrics.jsonl"))?;
    eprintln!(
        "training on {} windows ({} sentences), {} dev sentences, {} steps of batch {} on {:?}",
        train_windows.len(),
        data.train.len(),
        data.dev.len(),
        total,
        cfg.batch_size,
        tagger.device
    );
    let bar = match progress {
        Progress::Bar => indicatif::ProgressBar::new(total),
        Progress::Quiet => indicatif::ProgressBar::hidden(),
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} steps  {msg}  [{elapsed_precise} < {eta_precise}]",
        )
        .expect("valid template"),
    );
    bar.set_position(state.step);
    let eval_every = if cfg.eval_every == 0 {
        per_epoch
    } else {
        cfg.eval_every as u64
    };
    let vars = opt.vars();
    let started = Instant::now();
    let mut units_done = 0usize;
    let mut last_dev = None;
    let mut interrupted = false;
    let mut loss_ema: Option<f64> = None;

    let evaluate_and_save = |tagger: &Tagger,
                             opt: &AdamW,
                             state: &mut TrainerState,
                             log: &mut std::fs::File|
     -> Result<Counts> {
        let t0 = Instant::now();
        let c = evaluate(tagger, &data.dev, words.as_ref())?;
        let f1 = c.f1();
        let improved = state.best_dev_f1.is_none_or(|b| f1 > b);
        if improved {
            state.best_dev_f1 = Some(f1);
        }
        writeln!(
            log,
            "{}",
            serde_json::json!({
                "step": state.step, "epoch": state.epoch, "dev_f1": f1, "dev_precision": c.precision(),
                "dev_recall": c.recall(), "dev_oov_recall": words.as_ref().map(|_| c.oov_recall()),
                "eval_seconds": t0.elapsed().as_secs_f64(), "elapsed_s": started.elapsed().as_secs_f64(), "best": improved,
            })
        )?;
        if improved {
            save_checkpoint(&best_dir, tagger, cfg, None)?;
        }
        save_checkpoint(&last_dir, tagger, cfg, Some((opt, state)))?;
        Ok(c)
    };

    'epochs: while state.step < total {
        let mut rng = rand::rngs::StdRng::seed_from_u64(
            cfg.seed ^ (state.epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
        );
        let batches = training_batches(&lengths, cfg.batch_size, &mut rng);
        for idx in batches.iter().skip(state.batch_in_epoch) {
            let ws: Vec<&Window> = idx.iter().map(|&i| &train_windows[i]).collect();
            let batch = make_batch(&ws, &tagger.vocab, &tagger.device)?;
            let labels = batch
                .labels
                .as_ref()
                .expect("training windows carry labels");
            let mut dropout =
                DropoutRng::new(cfg.seed.wrapping_mul(1_000_003).wrapping_add(state.step));
            let logits = tagger.model.forward(
                &batch.input_ids,
                &batch.attention_mask,
                Some(&mut dropout),
            )?;
            let loss = masked_cross_entropy(&logits, labels)?;
            let grads = if loss_scale == 1.0 {
                tagger.model.backward(&loss)?
            } else {
                tagger.model.backward(&loss.affine(loss_scale, 0.0)?)?
            };
            let max_norm = if cfg.grad_clip > 0.0 {
                cfg.grad_clip * loss_scale
            } else {
                f64::INFINITY
            };
            let clip = clip_grad_norm(&grads, &vars, max_norm)?;
            let lr = schedule.lr(state.step);
            if clip.norm.is_finite() {
                opt.step(&grads, lr, clip.scale / loss_scale)?;
                if loss_scale != 1.0 {
                    scaled_good_steps += 1;
                    if scaled_good_steps == 2000 {
                        loss_scale *= 2.0;
                        scaled_good_steps = 0;
                    }
                }
            } else if loss_scale != 1.0 {
                // An f16 overflow: skip this update and scale down, as GradScaler does.
                loss_scale /= 2.0;
                scaled_good_steps = 0;
            } else {
                bail!(
                    "the gradient became {} at step {}: lower learning_rate",
                    clip.norm,
                    state.step + 1
                );
            }
            let clip = crate::optim::Clip {
                norm: clip.norm / loss_scale,
                ..clip
            };
            let loss = loss.to_dtype(DType::F32)?.to_scalar::<f32>()? as f64;
            if !loss.is_finite() {
                bail!(
                    "the loss became {loss} at step {}: lower learning_rate",
                    state.step + 1
                );
            }
            state.step += 1;
            state.batch_in_epoch += 1;
            units_done += batch.units;
            loss_ema = Some(loss_ema.map_or(loss, |e| 0.98 * e + 0.02 * loss));
            let rate = units_done as f64 / started.elapsed().as_secs_f64();
            bar.set_position(state.step);
            bar.set_message(format!(
                "loss {:.4}  lr {lr:.2e}  {rate:.0} units/s",
                loss_ema.unwrap_or(loss)
            ));
            {
                writeln!(
                    log,
                    "{}",
                    serde_json::json!({
                        "step": state.step, "epoch": state.epoch, "loss": loss, "lr": lr,
                        "grad_norm": clip.norm, "units_per_s": rate, "elapsed_s": started.elapsed().as_secs_f64(),
                    })
                )?;
            }
            let stop = INTERRUPTED.load(Ordering::SeqCst) || stop_after == Some(state.step);
            if state.step.is_multiple_of(eval_every) || state.step == total || stop {
                let c = bar.suspend(|| evaluate_and_save(&tagger, &opt, &mut state, &mut log))?;
                bar.println(format!(
                    "step {}: dev F1 {:.4} (P {:.4} R {:.4}), best {:.4}",
                    state.step,
                    c.f1(),
                    c.precision(),
                    c.recall(),
                    state.best_dev_f1.unwrap_or(0.0)
                ));
                last_dev = Some(c);
            }
            if stop {
                interrupted = true;
                eprintln!(
                    "interrupted: saved {} (resume with --resume)",
                    last_dir.display()
                );
                break 'epochs;
            }
            if state.step >= total {
                break 'epochs;
            }
        }
        state.epoch += 1;
        state.batch_in_epoch = 0;
    }
    bar.finish_and_clear();
    Ok(Summary {
        steps: state.step,
        best_dev_f1: state.best_dev_f1,
        last_dev,
        interrupted,
        output_dir: cfg.output_dir.clone(),
    })
}
