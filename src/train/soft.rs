//! Soft targets: label probabilities mixed into the loss beside the gold
//! labels, from teacher models (`distill_from`) or from cross-fitted copies
//! of the recipe (`crossfit_folds`), behind one [`SoftTargets`] that yields
//! them for a batch.

use crate::bies::NUM_LABELS;
use crate::config::{SoftSource, TrainConfig};
use crate::encode::{split_at_punctuation, Batch, Window};
use crate::model::Extensions;
use crate::tagger::Tagger;
use crate::units::{units_of_words, Unit};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Tensor};
use std::path::{Path, PathBuf};

/// Where a run's soft targets come from; the config allows one kind at most.
pub(super) enum SoftTargets {
    None,
    /// Teachers and the weight of their mean probabilities.
    Teachers(Vec<Teacher>, f64),
    /// Per training window, the probabilities of the copy that did not train
    /// on its sentence, and their weight.
    CrossFit(Vec<Vec<[f32; NUM_LABELS]>>, f64),
}

impl SoftTargets {
    /// The teachers `distill_from` names, or the finished cross-fitted copies
    /// (`copies`, their best checkpoints) labelling `train_windows`.
    pub(super) fn new(
        cfg: &TrainConfig,
        student: &Tagger,
        copies: &[PathBuf],
        train: &[Vec<String>],
        train_windows: &[Window],
    ) -> Result<Self> {
        let weight = match cfg.soft_source() {
            SoftSource::None => return Ok(Self::None),
            SoftSource::Teachers { models, weight } => {
                let teachers = models
                    .iter()
                    .map(|dir| load_teacher(dir, student))
                    .collect::<Result<Vec<_>>>()?;
                return Ok(Self::Teachers(teachers, weight));
            }
            SoftSource::CrossFit { weight, .. } => weight,
        };
        let copies = copies
            .iter()
            .map(|d| crate::model_dir::load(&d.to_string_lossy(), &student.device))
            .collect::<Result<Vec<_>>>()?;
        let targets = crossfit_targets(&copies, train, cfg.max_length - 2)?;
        if targets.len() != train_windows.len()
            || targets
                .iter()
                .zip(train_windows)
                .any(|(t, w)| t.len() != w.ids.len())
        {
            bail!("internal error: cross-fitted targets do not line up with the training windows");
        }
        Ok(Self::CrossFit(targets, weight))
    }

    /// The soft targets of a batch (windows `idx`) and their weight.
    pub(super) fn for_batch(&self, idx: &[usize], batch: &Batch) -> Result<Option<(Tensor, f64)>> {
        Ok(match self {
            Self::None => None,
            Self::Teachers(teachers, w) => Some((teacher_probs(teachers, batch)?, *w)),
            Self::CrossFit(targets, w) => {
                let rows: Vec<&[[f32; NUM_LABELS]]> =
                    idx.iter().map(|&i| targets[i].as_slice()).collect();
                Some((soft_targets_batch(&rows, batch)?, *w))
            }
        })
    }
}

/// A distillation teacher: a trained model that reads the student's features
/// (or their lexicon bits without the word-list statistics), so it can score
/// the student's batches, and the id of each student token in its own
/// vocabulary ([UNK] for those it lacks).
pub(super) struct Teacher {
    tagger: Tagger,
    ids: Vec<u32>,
    /// Reads only the lexicon bits of a student with word-list statistics.
    lexicon_bits_only: bool,
}

fn load_teacher(dir: &Path, student: &Tagger) -> Result<Teacher> {
    let source = dir
        .to_str()
        .with_context(|| format!("{}: not a UTF-8 path", dir.display()))?;
    let teacher = crate::model_dir::load(source, &student.device)
        .with_context(|| format!("loading the teacher {}", dir.display()))?;
    let ids = student
        .vocab
        .tokens()
        .iter()
        .map(|t| teacher.vocab.id(t))
        .collect();
    let (t, s) = (teacher.config.cws, student.config.cws);
    let lexicon_bits_only = t.lexicon_features == crate::features::LEXICON_FEATURES
        && s.lexicon_features
            == crate::features::LEXICON_FEATURES + crate::features::LIST_STAT_FEATURES;
    let comparable = Extensions {
        lexicon_features: if lexicon_bits_only {
            s.lexicon_features
        } else {
            t.lexicon_features
        },
        ..t
    };
    if !comparable.same_features(&s) {
        bail!(
            "the teacher {} reads other features than the model being trained \
             (its config.json against the student's: {})",
            dir.display(),
            t.describe_features_against(&s)
        );
    }
    Ok(Teacher {
        tagger: teacher,
        ids,
        lexicon_bits_only,
    })
}

/// The teachers' mean label probabilities on a batch (no gradient).
fn teacher_probs(teachers: &[Teacher], batch: &Batch) -> Result<Tensor> {
    let student_ids: Vec<Vec<u32>> = batch.input_ids.to_dtype(DType::U32)?.to_vec2()?;
    let mut sum: Option<Tensor> = None;
    for t in teachers {
        let ids: Vec<u32> = student_ids
            .iter()
            .flatten()
            .map(|&i| t.ids[i as usize])
            .collect();
        let ids = Tensor::from_vec(ids, batch.input_ids.shape(), batch.input_ids.device())?
            .to_dtype(batch.input_ids.dtype())?;
        let bits_only;
        let features = if t.lexicon_bits_only {
            bits_only = crate::model::BatchFeatures {
                lexicon: match &batch.features.lexicon {
                    Some(l) => Some(l.narrow(2, 0, crate::features::LEXICON_FEATURES)?),
                    None => None,
                },
                bigrams: batch.features.bigrams.clone(),
            };
            &bits_only
        } else {
            &batch.features
        };
        let logits = t
            .tagger
            .model
            .forward_with(&ids, &batch.attention_mask, features, None)?
            .to_dtype(DType::F32)?;
        let p = candle_nn::ops::softmax_last_dim(&logits)?;
        sum = Some(match sum {
            None => p,
            Some(s) => (s + p)?,
        });
    }
    let sum = sum.context("no teachers")?;
    Ok((sum / teachers.len() as f64)?.detach())
}

/// Per training window, in the order [`windows`] makes them from `sentences`,
/// the label probabilities that the copy which did not train on the window's
/// sentence gives its units (sentence i belongs to copy i modulo the number of
/// copies). Each copy reads its own vocabulary and features, as at test time.
fn crossfit_targets(
    copies: &[Tagger],
    sentences: &[Vec<String>],
    max_units: usize,
) -> Result<Vec<Vec<[f32; NUM_LABELS]>>> {
    let n = copies.len();
    let keys: Vec<(Vec<Unit>, Vec<String>)> = sentences
        .iter()
        .map(|s| {
            let units = units_of_words(s).units;
            let keys = units.iter().map(|u| u.key()).collect();
            (units, keys)
        })
        .collect();
    let mut probs: Vec<Vec<[f32; NUM_LABELS]>> = vec![Vec::new(); sentences.len()];
    for (k, copy) in copies.iter().enumerate() {
        let mine: Vec<usize> = (k..sentences.len()).step_by(n).collect();
        let seqs: Vec<crate::tagger::Sequence> = mine
            .iter()
            .map(|&i| crate::tagger::Sequence {
                ids: copy.vocab.unit_ids(&keys[i].0),
                features: copy.features.compute(&keys[i].1, None),
            })
            .collect();
        for (&i, logp) in mine.iter().zip(copy.scores(&seqs)?) {
            probs[i] = logp
                .iter()
                .map(|row| {
                    let e = row.map(f32::exp);
                    let z: f32 = e.iter().sum();
                    e.map(|x| x / z)
                })
                .collect();
        }
    }
    let mut out = Vec::new();
    for ((_, k), p) in keys.iter().zip(&probs) {
        for r in split_at_punctuation(k, max_units) {
            out.push(p[r].to_vec());
        }
    }
    Ok(out)
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
