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
/// units get, and their weight in the loss.
pub(super) enum SoftTargets {
    None,
    PerWindow(Vec<Probs>, f64),
}

impl SoftTargets {
    /// The targets the config's source gives `train_windows` (made from the
    /// sentences `train`): the teachers' mean probabilities, or those of the
    /// cross-fitted copy (`copies`, their best checkpoints) that did not train
    /// on the sentence.
    pub(super) fn new(
        cfg: &TrainConfig,
        student: &Tagger,
        copies: &[PathBuf],
        train: &[Vec<String>],
        train_windows: &[Window],
    ) -> Result<Self> {
        let units: Vec<(Vec<Unit>, Vec<String>)> = train
            .iter()
            .map(|s| {
                let units = units_of_words(s).units;
                let keys = units.iter().map(|u| u.key()).collect();
                (units, keys)
            })
            .collect();
        let all: Vec<usize> = (0..train.len()).collect();
        let (per_sentence, weight) = match cfg.soft_source() {
            SoftSource::None => return Ok(Self::None),
            SoftSource::Teachers { models, weight } => {
                let mut sum: Option<Vec<Probs>> = None;
                for dir in models {
                    let teacher = load(dir, student)
                        .with_context(|| format!("loading the teacher {}", dir.display()))?;
                    let probs = unit_probs(&teacher, &units, &all)?;
                    sum = Some(match sum {
                        None => probs,
                        Some(mut s) => {
                            add_into(&mut s, &probs);
                            s
                        }
                    });
                }
                let n = models.len() as f32;
                let mut mean = sum.context("no teachers")?;
                for row in mean.iter_mut().flatten() {
                    *row = row.map(|p| p / n);
                }
                (mean, weight)
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
        let mut targets = Vec::new();
        for ((_, keys), p) in units.iter().zip(&per_sentence) {
            for r in split_at_punctuation(keys, cfg.max_length - 2) {
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
        Ok(Self::PerWindow(targets, weight))
    }

    /// The soft targets of a batch (windows `idx`) and their weight.
    pub(super) fn for_batch(&self, idx: &[usize], batch: &Batch) -> Result<Option<(Tensor, f64)>> {
        Ok(match self {
            Self::None => None,
            Self::PerWindow(targets, w) => {
                let rows: Vec<&[[f32; NUM_LABELS]]> =
                    idx.iter().map(|&i| targets[i].as_slice()).collect();
                Some((soft_targets_batch(&rows, batch)?, *w))
            }
        })
    }
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
