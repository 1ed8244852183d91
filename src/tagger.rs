//! Per-unit BIES scores from a trained model, and the model-based word
//! splitter built on them: windows that fit the model, batched forward passes,
//! then constrained decoding (optionally with user-dictionary constraints).
//!
//! A chunk is first cut into sentences at sentence-final punctuation and each
//! sentence is scored and decoded on its own, so a long line gives exactly the
//! words of its sentences taken one by one. A sentence longer than the model's
//! window is covered by overlapping windows (half-window stride); each unit takes
//! its scores from the window in which it sits farthest from an edge. Nothing
//! is ever truncated.

use crate::bies::{
    argmax, viterbi_with, words_from_labels, Label, LabelSet, Transitions, NUM_LABELS,
};
use crate::dict::Dictionary;
use crate::encode::{make_batch, split_sentences, Vocab, Window};
use crate::features::{FeatureSpec, UnitFeatures};
use crate::model::{BertConfig, BertForTokenClassification};
use crate::segment::{Chunk, WordSplitter};

use anyhow::Result;
use candle_core::{DType, Device, D};
use candle_nn::VarMap;
use std::ops::Range;

/// How label scores become labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Decode {
    /// Best valid BIES sequence (constrained Viterbi over log-probabilities).
    Viterbi,
    /// Best label per unit, then the lossless repair rule.
    Argmax,
}

pub struct Tagger {
    pub model: BertForTokenClassification,
    pub varmap: VarMap,
    pub config: BertConfig,
    pub vocab: Vocab,
    pub device: Device,
    /// Units per window: the model's positions minus [CLS] and [SEP].
    pub max_units: usize,
    /// Windows per forward pass.
    pub batch_size: usize,
    /// Lexicon / bigram features the model reads (none for a plain BERT).
    pub features: FeatureSpec,
}

/// One sequence to score: unit ids and the unit features the model reads.
pub struct Sequence {
    pub ids: Vec<u32>,
    pub features: UnitFeatures,
}

impl Tagger {
    /// The boundary bias the model was tuned with: a joint model's for the
    /// standard it reads by (`features.standard`).
    pub fn boundary_bias(&self) -> f32 {
        let ext = &self.config.cws;
        match ext.boundary_biases.get(self.features.standard) {
            Some(&b) if !ext.standards.is_empty() => b,
            _ => ext.boundary_bias.unwrap_or(0.0),
        }
    }

    /// The standard a joint model reads by, if it is one.
    pub fn joint_standard(&self) -> Option<crate::model::Standard> {
        self.config
            .cws
            .standards
            .get(self.features.standard)
            .copied()
    }

    /// Log-probabilities of the four labels for every unit of every sequence.
    pub fn scores(&self, sequences: &[Sequence]) -> Result<Vec<Vec<[f32; NUM_LABELS]>>> {
        // Windows to run: (sequence, unit range); each unit's best window after.
        let mut windows: Vec<(usize, Range<usize>)> = Vec::new();
        for (s, seq) in sequences.iter().enumerate() {
            for r in window_ranges(seq.ids.len(), self.max_units) {
                windows.push((s, r));
            }
        }
        let mut order: Vec<usize> = (0..windows.len()).collect();
        order.sort_by_key(|&w| windows[w].1.len());
        let run_group = |group: &[usize]| -> Result<Vec<Vec<[f32; NUM_LABELS]>>> {
            let ws: Vec<Window> = group
                .iter()
                .map(|&w| {
                    let (seq, r) = (&sequences[windows[w].0], windows[w].1.clone());
                    Window {
                        ids: seq.ids[r.clone()].to_vec(),
                        labels: Vec::new(),
                        features: seq.features.slice(r),
                    }
                })
                .collect();
            let refs: Vec<&Window> = ws.iter().collect();
            let batch = make_batch(&refs, &self.vocab, &self.device)?;
            let logits =
                self.model
                    .infer(&batch.input_ids, &batch.attention_mask, &batch.features)?;
            let logp = candle_nn::ops::log_softmax(&logits.to_dtype(DType::F32)?, D::Minus1)?;
            let rows: Vec<Vec<Vec<f32>>> = logp.to_vec3()?;
            Ok(group
                .iter()
                .zip(rows)
                .map(|(&w, row)| {
                    row[1..=windows[w].1.len()]
                        .iter()
                        .map(|v| [v[0], v[1], v[2], v[3]])
                        .collect()
                })
                .collect())
        };
        let groups: Vec<&[usize]> = order.chunks(self.batch_size).collect();
        // On the CPU whole batches run in parallel (each op inside a batch may
        // still split further): coarse tasks keep both cores busy at small
        // shapes where per-op parallelism mostly synchronises.
        let results: Vec<Vec<Vec<[f32; NUM_LABELS]>>> = if self.device.is_cpu() {
            use rayon::prelude::*;
            groups
                .par_iter()
                .map(|g| run_group(g))
                .collect::<Result<_>>()?
        } else {
            groups.iter().map(|g| run_group(g)).collect::<Result<_>>()?
        };
        let mut window_scores: Vec<Vec<[f32; NUM_LABELS]>> = vec![Vec::new(); windows.len()];
        for (group, rows) in groups.iter().zip(results) {
            for (&w, row) in group.iter().zip(rows) {
                window_scores[w] = row;
            }
        }
        let mut out: Vec<Vec<[f32; NUM_LABELS]>> = sequences
            .iter()
            .map(|s| vec![[0.0; NUM_LABELS]; s.ids.len()])
            .collect();
        let mut best_margin: Vec<Vec<usize>> =
            sequences.iter().map(|s| vec![0; s.ids.len()]).collect();
        let mut seen: Vec<Vec<bool>> = sequences.iter().map(|s| vec![false; s.ids.len()]).collect();
        for ((s, r), sc) in windows.iter().zip(&window_scores) {
            for (k, score) in sc.iter().enumerate() {
                let i = r.start + k;
                let margin = k.min(r.len() - 1 - k);
                if !seen[*s][i] || margin > best_margin[*s][i] {
                    out[*s][i] = *score;
                    best_margin[*s][i] = margin;
                    seen[*s][i] = true;
                }
            }
        }
        Ok(out)
    }
}

/// Windows of at most `max_units` covering `0..n`, overlapping by half a window.
pub fn window_ranges(n: usize, max_units: usize) -> Vec<Range<usize>> {
    if n <= max_units {
        return std::iter::once(0..n).collect();
    }
    let stride = (max_units / 2).max(1);
    let mut out = Vec::new();
    let mut start = 0;
    loop {
        let end = (start + max_units).min(n);
        out.push(end - max_units.min(end)..end);
        if end == n {
            break;
        }
        start += stride;
    }
    out
}

/// The model-based word splitter of `cws segment` and `cws eval --model`.
pub struct ModelSplitter<'a> {
    pub tagger: &'a Tagger,
    pub decode: Decode,
    /// User dictionary: its leftmost-longest matches are forced to be words.
    pub dict: Option<&'a Dictionary>,
    /// Added to the log-probabilities of E and S (labels that end a word):
    /// positive splits more, negative less. Chosen on dev during training and
    /// stored in the model's config as `cws_boundary_bias`.
    pub boundary_bias: f32,
    /// Path scores for Viterbi: BIES validity, plus a CRF model's learned
    /// transition, start and end scores.
    pub transitions: Transitions,
}

/// Label scores of chunks, cut into sentences, ready to decode.
pub struct Scored {
    /// Per chunk, its sentences as unit ranges.
    pieces: Vec<Vec<Range<usize>>>,
    /// Per sentence (all chunks in order), per unit, the label log-probabilities.
    scores: Vec<Vec<[f32; NUM_LABELS]>>,
}

impl<'a> ModelSplitter<'a> {
    /// A splitter with the model's own boundary bias.
    pub fn new(tagger: &'a Tagger, decode: Decode, dict: Option<&'a Dictionary>) -> Result<Self> {
        let boundary_bias = tagger.boundary_bias();
        let transitions = match tagger.model.crf() {
            Some(crf) => crf.scores()?.restricted_to_bies(),
            None => Transitions::bies(),
        };
        Ok(ModelSplitter {
            tagger,
            decode,
            dict,
            boundary_bias,
            transitions,
        })
    }

    /// Runs the model over every sentence of every chunk.
    pub fn score(&self, chunks: &[Chunk<'_>]) -> Result<Scored> {
        let mut sequences = Vec::new();
        let mut pieces: Vec<Vec<Range<usize>>> = Vec::with_capacity(chunks.len());
        for c in chunks {
            let keys: Vec<String> = c.units.iter().map(|u| u.key()).collect();
            let ids = self.tagger.vocab.unit_ids(&c.units);
            let sentences = split_sentences(&keys);
            for r in &sentences {
                sequences.push(Sequence {
                    ids: ids[r.clone()].to_vec(),
                    features: self.tagger.features.compute(&keys[r.clone()], None),
                });
            }
            pieces.push(sentences);
        }
        let scores = self.tagger.scores(&sequences)?;
        Ok(Scored { pieces, scores })
    }

    /// Word lengths (in units) of each chunk from its scores, with `bias`
    /// added to the word-ending labels.
    pub fn decode_scored(
        &self,
        chunks: &[Chunk<'_>],
        scored: &Scored,
        bias: f32,
    ) -> Vec<Vec<usize>> {
        let mut next = scored.scores.iter();
        let mut out = Vec::with_capacity(chunks.len());
        for (c, sentences) in chunks.iter().zip(&scored.pieces) {
            let allowed = self.dict.map(|d| dictionary_constraints(d, c));
            let mut lengths = Vec::new();
            for r in sentences {
                let row = next.next().expect("one score row per sentence");
                let sc: std::borrow::Cow<[[f32; NUM_LABELS]]> = if bias == 0.0 {
                    std::borrow::Cow::Borrowed(row)
                } else {
                    let mut biased = row.clone();
                    for s in &mut biased {
                        s[Label::E.id()] += bias;
                        s[Label::S.id()] += bias;
                    }
                    std::borrow::Cow::Owned(biased)
                };
                let labels = match self.decode {
                    Decode::Viterbi => viterbi_with(
                        &sc,
                        allowed.as_ref().map(|a| &a[r.clone()]),
                        &self.transitions,
                    ),
                    Decode::Argmax => match &allowed {
                        Some(a) => argmax(&mask_scores(&sc, &a[r.clone()])),
                        None => argmax(&sc),
                    },
                };
                lengths.extend(words_from_labels(&labels).into_iter().map(|w| w.len()));
            }
            out.push(lengths);
        }
        out
    }
}

impl WordSplitter for ModelSplitter<'_> {
    fn split(&self, chunks: &[Chunk<'_>]) -> Result<Vec<Vec<usize>>> {
        let scored = self.score(chunks)?;
        Ok(self.decode_scored(chunks, &scored, self.boundary_bias))
    }
}

/// Per-unit allowed labels that make every dictionary match one word.
/// Matches are leftmost-longest (see `dict`); units outside matches are free,
/// except that the units next to a match must not continue into it.
pub fn dictionary_constraints(dict: &Dictionary, chunk: &Chunk<'_>) -> Vec<LabelSet> {
    use Label::*;
    let n = chunk.units.len();
    let mut allowed = vec![LabelSet::ALL; n];
    for m in dict.matches(chunk.text, &chunk.units) {
        if m.len() == 1 {
            allowed[m.start] = LabelSet::only(&[S]);
        } else {
            allowed[m.start] = LabelSet::only(&[B]);
            for a in &mut allowed[m.start + 1..m.end - 1] {
                *a = LabelSet::only(&[I]);
            }
            allowed[m.end - 1] = LabelSet::only(&[E]);
        }
        if m.start > 0 {
            allowed[m.start - 1] = intersect(allowed[m.start - 1], LabelSet::only(&[E, S]));
        }
        if m.end < n {
            allowed[m.end] = intersect(allowed[m.end], LabelSet::only(&[B, S]));
        }
    }
    allowed
}

fn intersect(a: LabelSet, b: LabelSet) -> LabelSet {
    LabelSet(a.0 & b.0)
}

/// Scores with disallowed labels set to -inf, for argmax decoding.
fn mask_scores(scores: &[[f32; NUM_LABELS]], allowed: &[LabelSet]) -> Vec<[f32; NUM_LABELS]> {
    scores
        .iter()
        .zip(allowed)
        .map(|(s, set)| {
            let mut m = *s;
            for (k, v) in m.iter_mut().enumerate() {
                if !set.contains(Label::from_id(k).expect("label id")) {
                    *v = f32::NEG_INFINITY;
                }
            }
            m
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_cover_and_overlap() {
        assert_eq!(
            window_ranges(5, 8),
            std::iter::once(0..5).collect::<Vec<_>>()
        );
        assert_eq!(window_ranges(10, 4), [0..4, 2..6, 4..8, 6..10]);
        assert_eq!(window_ranges(9, 4), [0..4, 2..6, 4..8, 5..9]);
    }
}
