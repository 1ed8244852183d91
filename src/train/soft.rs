//! Soft targets: label probabilities mixed into the loss beside the gold
//! labels, from teacher models (`distill_from`) or from cross-fitted copies
//! of the recipe (`crossfit_folds`). Both are models that read the training
//! sentences their own way — their own vocabulary, unit features and window
//! size, as at test time — and label every unit once, before training; the
//! probabilities line up with the student's windows because every model
//! reads the same units.

use crate::bies::NUM_LABELS;
use crate::config::{SoftSource, TrainConfig};
use crate::encode::{split_at_punctuation, Batch, Window};
use crate::tagger::{Sequence, Tagger};
use crate::units::{units_of_words, Unit};
use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use std::path::{Path, PathBuf};

/// Per-unit label probabilities.
type Probs = Vec<[f32; NUM_LABELS]>;

/// A run's soft targets: for each training window, the probabilities its
/// units get, and their weight in the loss. Windows past the gold ones come
/// from `distill_text`: raw text whose only targets are the teachers'.
pub(super) enum SoftTargets {
    None,
    PerWindow {
        targets: Vec<Probs>,
        /// Windows `0..gold` carry gold labels; the rest are raw text.
        gold: usize,
        weight: f64,
        raw_weight: f64,
    },
}

/// The soft targets of one batch.
pub(super) struct SoftBatch {
    /// `[b, t, NUM_LABELS]`, laid out like the batch.
    pub targets: Tensor,
    /// Their weight on the gold windows' units (the gold labels get the rest).
    pub weight: f64,
    /// For a batch with raw-text windows: labels-shaped i64 `[b, t]`, 0 on
    /// their units and -100 elsewhere, and the weight of their loss.
    pub raw: Option<(Tensor, f64)>,
    /// Whether any window of the batch has gold labels.
    pub has_gold: bool,
}

impl SoftTargets {
    /// The targets the config's source gives `train_windows` (made from the
    /// sentences `train`): the teachers' mean probabilities, or those of the
    /// cross-fitted copy (`copies`, their best checkpoints) that did not train
    /// on the sentence. With `distill_text`, also the windows of that raw
    /// text (`raw`, its sentences' units), returned to be trained on after
    /// the gold ones, labelled by the teachers (cached in the run folder).
    pub(super) fn new(
        cfg: &TrainConfig,
        student: &Tagger,
        copies: &[PathBuf],
        train: &[Vec<String>],
        train_windows: &[Window],
        raw: &[Vec<Unit>],
    ) -> Result<(Self, Vec<Window>)> {
        let with_keys = |units: Vec<Unit>| {
            let keys = units.iter().map(|u| u.key()).collect();
            (units, keys)
        };
        let units: Vec<(Vec<Unit>, Vec<String>)> = train
            .iter()
            .map(|s| with_keys(units_of_words(s).units))
            .collect();
        let all: Vec<usize> = (0..train.len()).collect();
        let mut raw_probs = Vec::new();
        let (per_sentence, weight) = match cfg.soft_source() {
            SoftSource::None => return Ok((Self::None, Vec::new())),
            SoftSource::Teachers { models, weight } => {
                let teachers = models
                    .iter()
                    .map(|dir| {
                        load(dir, student)
                            .with_context(|| format!("loading the teacher {}", dir.display()))
                    })
                    .collect::<Result<Vec<_>>>()?;
                if !raw.is_empty() {
                    let raw: Vec<(Vec<Unit>, Vec<String>)> =
                        raw.iter().cloned().map(with_keys).collect();
                    raw_probs = raw_targets(cfg, models, &teachers, &raw)?;
                }
                (mean_probs(&teachers, &units, &all)?, weight)
            }
            SoftSource::CrossFit { weight, .. } => {
                let n = copies.len();
                let mut probs = vec![Vec::new(); train.len()];
                for (k, dir) in copies.iter().enumerate() {
                    let copy = load(dir, student)?;
                    let mine: Vec<usize> = (k..train.len()).step_by(n).collect();
                    for (&i, p) in mine.iter().zip(unit_probs(&copy, &units, &mine)?) {
                        probs[i] = p;
                    }
                }
                (probs, weight)
            }
        };
        let max_units = cfg.max_length - 2;
        let mut targets = Vec::new();
        for ((_, keys), p) in units.iter().zip(&per_sentence) {
            for r in split_at_punctuation(keys, max_units) {
                targets.push(p[r].to_vec());
            }
        }
        if targets.len() != train_windows.len()
            || targets
                .iter()
                .zip(train_windows)
                .any(|(t, w)| t.len() != w.ids.len())
        {
            bail!("internal error: soft targets do not line up with the training windows");
        }
        let gold = targets.len();
        let mut raw_windows = Vec::new();
        for (sentence, p) in raw.iter().zip(&raw_probs) {
            let keys: Vec<String> = sentence.iter().map(|u| u.key()).collect();
            let ids = student.vocab.unit_ids(sentence);
            let features = student.features.compute(&keys, None);
            for r in split_at_punctuation(&keys, max_units) {
                raw_windows.push(Window {
                    ids: ids[r.clone()].to_vec(),
                    labels: Vec::new(),
                    features: features.slice(r.clone()),
                });
                targets.push(p[r].to_vec());
            }
        }
        Ok((
            Self::PerWindow {
                targets,
                gold,
                weight,
                raw_weight: cfg.distill_text_weight,
            },
            raw_windows,
        ))
    }

    /// The soft targets of a batch (windows `idx`).
    pub(super) fn for_batch(&self, idx: &[usize], batch: &Batch) -> Result<Option<SoftBatch>> {
        let Self::PerWindow {
            targets,
            gold,
            weight,
            raw_weight,
        } = self
        else {
            return Ok(None);
        };
        let rows: Vec<&[[f32; NUM_LABELS]]> = idx.iter().map(|&i| targets[i].as_slice()).collect();
        let raw = if idx.iter().any(|&i| i >= *gold) {
            let (b, t) = batch.input_ids.dims2()?;
            let mut mask = vec![crate::encode::IGNORE; b * t];
            for (r, &i) in idx.iter().enumerate() {
                if i >= *gold {
                    mask[r * t + 1..r * t + 1 + targets[i].len()].fill(0);
                }
            }
            let mask = Tensor::from_vec(mask, (b, t), batch.input_ids.device())?;
            Some((mask, *raw_weight))
        } else {
            None
        };
        Ok(Some(SoftBatch {
            targets: soft_targets_batch(&rows, batch)?,
            weight: *weight,
            raw,
            has_gold: idx.iter().any(|&i| i < *gold),
        }))
    }
}

/// The teachers' mean label probabilities for the sentences `which`.
fn mean_probs(
    teachers: &[Tagger],
    units: &[(Vec<Unit>, Vec<String>)],
    which: &[usize],
) -> Result<Vec<Probs>> {
    let mut sum: Option<Vec<Probs>> = None;
    for teacher in teachers {
        let probs = unit_probs(teacher, units, which)?;
        sum = Some(match sum {
            None => probs,
            Some(mut s) => {
                add_into(&mut s, &probs);
                s
            }
        });
    }
    let n = teachers.len() as f32;
    let mut mean = sum.context("no teachers")?;
    for row in mean.iter_mut().flatten() {
        *row = row.map(|p| p / n);
    }
    Ok(mean)
}

/// Sentences the teachers label per pass over raw text: bounds the memory
/// of a pass whatever the text's size.
const RAW_CHUNK: usize = 4096;

/// The teachers' mean probabilities for the raw-text sentences, read from
/// the run's cache when it was made from the same text and teachers, else
/// computed a chunk of sentences at a time and cached.
fn raw_targets(
    cfg: &TrainConfig,
    models: &[PathBuf],
    teachers: &[Tagger],
    raw: &[(Vec<Unit>, Vec<String>)],
) -> Result<Vec<Probs>> {
    let path = cfg.output_dir.join(DISTILL_TEXT_CACHE);
    let stamp = fingerprint(models, raw)?;
    if let Some(cached) = read_cache(&path, stamp, raw)? {
        return Ok(cached);
    }
    let mut probs = Vec::with_capacity(raw.len());
    let all: Vec<usize> = (0..raw.len()).collect();
    for chunk in all.chunks(RAW_CHUNK) {
        probs.extend(mean_probs(teachers, raw, chunk)?);
    }
    write_cache(&path, stamp, &probs)?;
    Ok(probs)
}

/// File of the teachers' labels for `distill_text`, in the run folder.
pub const DISTILL_TEXT_CACHE: &str = "distill-text.safetensors";

/// What the cached labels depend on: the teachers (their folders' config and
/// weights' size) and the raw text's units.
fn fingerprint(models: &[PathBuf], raw: &[(Vec<Unit>, Vec<String>)]) -> Result<u64> {
    let mut parts: Vec<String> = Vec::new();
    for dir in models {
        let config = std::fs::read_to_string(dir.join(crate::model_dir::CONFIG_FILE))
            .with_context(|| format!("reading the teacher {}", dir.display()))?;
        let weights = std::fs::metadata(dir.join(crate::model_dir::WEIGHTS_FILE))
            .map(|m| m.len())
            .unwrap_or(0);
        parts.push(format!("{}\u{1}{config}\u{1}{weights}", dir.display()));
    }
    for (_, keys) in raw {
        parts.push(crate::features::hash_keys(keys).to_string());
    }
    Ok(crate::features::hash_keys(&parts))
}

fn read_cache(
    path: &Path,
    stamp: u64,
    raw: &[(Vec<Unit>, Vec<String>)],
) -> Result<Option<Vec<Probs>>> {
    if !path.is_file() {
        return Ok(None);
    }
    let t = candle_core::safetensors::load(path, &candle_core::Device::Cpu)
        .with_context(|| format!("reading {}", path.display()))?;
    let (Some(s), Some(p)) = (t.get("fingerprint"), t.get("probs")) else {
        return Ok(None);
    };
    if s.to_vec1::<i64>()?.first().copied() != Some(stamp as i64) {
        return Ok(None);
    }
    let flat: Vec<Vec<f32>> = p.to_vec2()?;
    let units: usize = raw.iter().map(|(u, _)| u.len()).sum();
    if flat.len() != units {
        return Ok(None);
    }
    let mut rows = flat.into_iter().map(|r| [r[0], r[1], r[2], r[3]]);
    Ok(Some(
        raw.iter()
            .map(|(u, _)| rows.by_ref().take(u.len()).collect())
            .collect(),
    ))
}

fn write_cache(path: &Path, stamp: u64, probs: &[Probs]) -> Result<()> {
    let flat: Vec<f32> = probs.iter().flatten().flatten().copied().collect();
    let n = flat.len() / NUM_LABELS;
    let cpu = &candle_core::Device::Cpu;
    let tensors = std::collections::HashMap::from([
        (
            "fingerprint".to_string(),
            Tensor::new(&[stamp as i64], cpu)?,
        ),
        (
            "probs".to_string(),
            Tensor::from_vec(flat, (n, NUM_LABELS), cpu)?,
        ),
    ]);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    crate::weights::save_tensors_atomic(&tensors, path)
}

/// A teacher or copy, on the student's device.
fn load(dir: &Path, student: &Tagger) -> Result<Tagger> {
    let source = dir
        .to_str()
        .with_context(|| format!("{}: not a UTF-8 path", dir.display()))?;
    crate::model_dir::load(source, &student.device)
}

fn add_into(sum: &mut [Probs], more: &[Probs]) {
    for (a, b) in sum.iter_mut().zip(more) {
        for (x, y) in a.iter_mut().zip(b) {
            for k in 0..NUM_LABELS {
                x[k] += y[k];
            }
        }
    }
}

/// The label probabilities `model` gives the units of the sentences `which`
/// (reading them with its own vocabulary and features, in its own windows).
fn unit_probs(
    model: &Tagger,
    units: &[(Vec<Unit>, Vec<String>)],
    which: &[usize],
) -> Result<Vec<Probs>> {
    let seqs: Vec<Sequence> = which
        .iter()
        .map(|&i| Sequence {
            ids: model.vocab.unit_ids(&units[i].0),
            features: model.features.compute(&units[i].1, None),
        })
        .collect();
    Ok(model
        .scores(&seqs)?
        .into_iter()
        .map(|logp| {
            logp.iter()
                .map(|row| {
                    let e = row.map(f32::exp);
                    let z: f32 = e.iter().sum();
                    e.map(|x| x / z)
                })
                .collect()
        })
        .collect())
}

/// `[b, t, NUM_LABELS]` targets laid out like `batch` ([CLS] at 0), uniform
/// where no unit is.
fn soft_targets_batch(rows: &[&[[f32; NUM_LABELS]]], batch: &Batch) -> Result<Tensor> {
    let (b, t) = batch.input_ids.dims2()?;
    let mut v = vec![1.0 / NUM_LABELS as f32; b * t * NUM_LABELS];
    for (r, row) in rows.iter().enumerate() {
        for (k, p) in row.iter().enumerate() {
            let at = (r * t + 1 + k) * NUM_LABELS;
            v[at..at + NUM_LABELS].copy_from_slice(p);
        }
    }
    Ok(Tensor::from_vec(
        v,
        (b, t, NUM_LABELS),
        batch.input_ids.device(),
    )?)
}
