//! Soft targets: label probabilities mixed into the loss beside the gold
//! labels, from teacher models (`distill_from`) or from cross-fitted copies
//! of the recipe (`crossfit_folds`). Both are models that read the training
//! sentences their own way — their own vocabulary, unit features and window
//! size, as at test time — and label every unit once, before training; the
//! probabilities line up with the student's windows because every model
//! reads the same units.

use super::raw_text::RawText;
use crate::bies::NUM_LABELS;
use crate::config::{SoftSource, TrainConfig};
use crate::encode::{split_at_punctuation, Batch, Window};
use crate::tagger::{Sequence, Tagger};
use crate::units::{units_of_words, Unit};
use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use std::path::{Path, PathBuf};

/// Per-unit label probabilities.
pub(super) type Probs = Vec<[f32; NUM_LABELS]>;

/// A run's soft targets: for each gold training window, the probabilities
/// its units get, and their weight in the loss; with `distill_text`, the raw
/// text's windows (numbered after the gold ones), whose only targets are the
/// teachers'.
pub(super) enum SoftTargets {
    None,
    PerWindow {
        targets: Vec<Probs>,
        weight: f64,
        raw: Option<RawText>,
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
    /// on the sentence. With `distill_text`, also that raw text's windows,
    /// labelled by the teachers (cached in the run folder).
    pub(super) fn new(
        cfg: &TrainConfig,
        student: &Tagger,
        copies: &[PathBuf],
        train: &[Vec<String>],
        standard_of: &[usize],
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
        let max_units = cfg.max_length - 2;
        let mut raw = None;
        let (per_sentence, weight) = match cfg.soft_source() {
            SoftSource::None => return Ok(Self::None),
            SoftSource::Teachers { models, weight } => {
                let teachers = models
                    .iter()
                    .map(|dir| {
                        load(dir, student)
                            .with_context(|| format!("loading the teacher {}", dir.display()))
                    })
                    .collect::<Result<Vec<_>>>()?;
                if !cfg.distill_text.is_empty() {
                    raw = Some(RawText::open_or_build(
                        &cfg.distill_text,
                        max_units,
                        &cfg.output_dir,
                        models,
                        &teachers,
                    )?);
                }
                (mean_probs(&teachers, &units, &all, &[])?, weight)
            }
            SoftSource::CrossFit { weight, .. } => {
                let n = copies.len();
                let mut probs = vec![Vec::new(); train.len()];
                for (k, dir) in copies.iter().enumerate() {
                    let copy = load(dir, student)?;
                    let mine: Vec<usize> = (k..train.len()).step_by(n).collect();
                    let found = unit_probs(&copy, &units, &mine, standard_of)?;
                    for (&i, p) in mine.iter().zip(found) {
                        probs[i] = p;
                    }
                }
                (probs, weight)
            }
        };
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
        Ok(Self::PerWindow {
            targets,
            weight,
            raw,
            raw_weight: cfg.distill_text_weight,
        })
    }

    /// How many windows `distill_text` adds, and their lengths in units.
    pub(super) fn raw_lengths(&mut self) -> Result<Vec<usize>> {
        match self {
            Self::PerWindow { raw: Some(raw), .. } => raw.lengths(),
            _ => Ok(Vec::new()),
        }
    }

    /// The raw-text windows `which` (numbered from the first raw one) as
    /// `student` reads them, with their targets.
    pub(super) fn raw_windows(
        &mut self,
        which: impl Iterator<Item = usize>,
        student: &Tagger,
    ) -> Result<Vec<(Window, Probs)>> {
        let Self::PerWindow { raw: Some(raw), .. } = self else {
            return Ok(Vec::new());
        };
        which.map(|k| raw.window(k, student)).collect()
    }

    /// The soft targets of a batch: windows `idx`, those past the gold ones
    /// with the targets `raw` (in their order in `idx`).
    pub(super) fn for_batch(
        &self,
        idx: &[usize],
        raw: &[&Probs],
        batch: &Batch,
    ) -> Result<Option<SoftBatch>> {
        let Self::PerWindow {
            targets,
            weight,
            raw_weight,
            ..
        } = self
        else {
            return Ok(None);
        };
        let gold = targets.len();
        let mut next_raw = raw.iter();
        let rows: Vec<&[[f32; NUM_LABELS]]> = idx
            .iter()
            .filter_map(|&i| {
                if i < gold {
                    Some(targets[i].as_slice())
                } else {
                    next_raw.next().map(|p| p.as_slice())
                }
            })
            .collect();
        if rows.len() != idx.len() {
            bail!("internal error: a raw-text window without targets");
        }
        let raw = if idx.iter().any(|&i| i >= gold) {
            let (b, t) = batch.input_ids.dims2()?;
            let mut mask = vec![crate::encode::IGNORE; b * t];
            for (r, &i) in idx.iter().enumerate() {
                if i >= gold {
                    mask[r * t + 1..r * t + 1 + rows[r].len()].fill(0);
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
            has_gold: idx.iter().any(|&i| i < gold),
        }))
    }
}

/// The teachers' mean label probabilities for the sentences `which` (of a
/// joint model, sentence i by standard `standard_of[i]`).
pub(super) fn mean_probs(
    teachers: &[Tagger],
    units: &[(Vec<Unit>, Vec<String>)],
    which: &[usize],
    standard_of: &[usize],
) -> Result<Vec<Probs>> {
    let mut sum: Option<Vec<Probs>> = None;
    for teacher in teachers {
        let probs = unit_probs(teacher, units, which, standard_of)?;
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
/// (reading them with its own vocabulary and features, in its own windows;
/// a joint model sentence i by standard `standard_of[i]`, or its own).
fn unit_probs(
    model: &Tagger,
    units: &[(Vec<Unit>, Vec<String>)],
    which: &[usize],
    standard_of: &[usize],
) -> Result<Vec<Probs>> {
    let seqs: Vec<Sequence> = which
        .iter()
        .map(|&i| {
            let standard = standard_of.get(i).copied();
            Sequence {
                ids: model.vocab.unit_ids(&units[i].0),
                features: model.features.compute_for(
                    &units[i].1,
                    None,
                    standard.unwrap_or(model.features.standard),
                ),
            }
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
