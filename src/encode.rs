//! Token ids and batches: units become vocabulary ids, long sentences become
//! windows that fit the model, and windows become padded batches with labels.
//!
//! A unit's id is that of its key (see `units`): the folded character, `0` for
//! a number, `X` for a Latin run; a key missing from the vocabulary is looked up
//! lower-cased (bert-base-chinese is uncased), then falls back to `[UNK]`.

use crate::bies::Label;
use crate::features::{StandardMark, UnitFeatures};
use crate::model::BatchFeatures;
use crate::units::Unit;
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use rand::seq::SliceRandom;
use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;

pub const PAD: &str = "[PAD]";
pub const UNK: &str = "[UNK]";
pub const CLS: &str = "[CLS]";
pub const SEP: &str = "[SEP]";
pub const MASK: &str = "[MASK]";

/// Label value the loss ignores ([CLS], [SEP], padding), as in PyTorch.
pub const IGNORE: i64 = -100;

/// A BERT vocabulary: token string ↔ id, with the special tokens' ids.
#[derive(Debug, Clone)]
pub struct Vocab {
    tokens: Vec<String>,
    ids: HashMap<String, u32>,
    pub pad: u32,
    pub unk: u32,
    pub cls: u32,
    pub sep: u32,
}

impl Vocab {
    pub fn from_tokens(tokens: Vec<String>) -> Result<Self> {
        let ids: HashMap<String, u32> = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let special = |t: &str| {
            ids.get(t)
                .copied()
                .with_context(|| format!("vocabulary lacks the special token {t}"))
        };
        Ok(Vocab {
            pad: special(PAD)?,
            unk: special(UNK)?,
            cls: special(CLS)?,
            sep: special(SEP)?,
            tokens,
            ids,
        })
    }

    /// Loads `vocab.txt` (one token per line, id = line index) or the vocabulary
    /// of a `tokenizer.json`.
    pub fn load(path: &Path) -> Result<Self> {
        let is_json = path.extension().is_some_and(|e| e == "json");
        let tokens = if is_json {
            let tok = tokenizers::Tokenizer::from_file(path)
                .map_err(|e| anyhow::anyhow!("cannot load tokenizer {}: {e}", path.display()))?;
            let vocab = tok.get_vocab(true);
            let mut tokens =
                vec![String::new(); vocab.values().map(|&i| i as usize + 1).max().unwrap_or(0)];
            for (t, i) in vocab {
                tokens[i as usize] = t;
            }
            tokens
        } else {
            let bytes =
                std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
            return Self::from_vocab_txt(&bytes, &path.display().to_string());
        };
        Self::from_tokens(tokens).with_context(|| format!("in {}", path.display()))
    }

    /// Parses a `vocab.txt` (one token per line); `name` says which in errors.
    pub fn from_vocab_txt(bytes: &[u8], name: &str) -> Result<Self> {
        let tokens = crate::corpus::lines_from_bytes(name, bytes)?
            .into_iter()
            .map(|l| l.text)
            .collect();
        Self::from_tokens(tokens).with_context(|| format!("in {name}"))
    }

    /// A vocabulary of the special tokens plus every unit key seen in `keys`
    /// at least `min_count` times, most frequent first (ties by key).
    pub fn build<'a>(keys: impl IntoIterator<Item = &'a str>, min_count: usize) -> Self {
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for k in keys {
            *counts.entry(k).or_default() += 1;
        }
        let mut seen: Vec<(&str, usize)> = counts
            .into_iter()
            .filter(|&(_, n)| n >= min_count)
            .collect();
        seen.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        let mut tokens: Vec<String> = [PAD, UNK, CLS, SEP, MASK]
            .iter()
            .map(|s| s.to_string())
            .collect();
        tokens.extend(
            seen.into_iter()
                .map(|(k, _)| k.to_string())
                .filter(|k| !k.starts_with('[')),
        );
        Self::from_tokens(tokens).expect("special tokens are present")
    }

    /// Adds `token` (a joint model's standard token) unless it is there.
    pub fn add_token(&mut self, token: &str) -> u32 {
        if let Some(&id) = self.ids.get(token) {
            return id;
        }
        let id = self.tokens.len() as u32;
        self.tokens.push(token.to_string());
        self.ids.insert(token.to_string(), id);
        id
    }

    /// The tokens in id order.
    pub fn tokens(&self) -> &[String] {
        &self.tokens
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    pub fn token(&self, id: u32) -> &str {
        &self.tokens[id as usize]
    }

    /// Writes `vocab.txt`, which BertTokenizer in transformers also reads.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut text = self.tokens.join("\n");
        text.push('\n');
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
    }

    pub fn id(&self, key: &str) -> u32 {
        if let Some(&i) = self.ids.get(key) {
            return i;
        }
        let lower = key.to_lowercase();
        self.ids.get(&lower).copied().unwrap_or(self.unk)
    }

    pub fn unit_ids(&self, units: &[Unit]) -> Vec<u32> {
        units.iter().map(|u| self.id(&u.key())).collect()
    }
}

/// Whether a unit key is punctuation after which a window may be cut.
fn is_cut_point(key: &str) -> bool {
    matches!(
        key,
        "。" | "！" | "？" | "；" | "，" | "、" | "：" | "!" | "?" | ";" | "," | ":" | "…"
    )
}

fn is_sentence_end(key: &str) -> bool {
    matches!(key, "。" | "！" | "？" | "!" | "?" | "；" | ";")
}

/// Cuts `0..keys.len()` into pieces of at most `max_units`, each ending after
/// punctuation where possible (the latest punctuation that fits), else cut hard.
/// Every unit lands in exactly one piece, in order.
pub fn split_at_punctuation(keys: &[String], max_units: usize) -> Vec<Range<usize>> {
    assert!(max_units > 0);
    let mut pieces = Vec::new();
    let mut start = 0;
    while keys.len() - start > max_units {
        let limit = start + max_units;
        let cut = (start + 1..=limit)
            .rev()
            .find(|&e| is_cut_point(&keys[e - 1]))
            .unwrap_or(limit);
        pieces.push(start..cut);
        start = cut;
    }
    if start < keys.len() {
        pieces.push(start..keys.len());
    }
    pieces
}

/// Cuts a text's units into sentences at sentence-final punctuation, so a long
/// line gives exactly the result of its sentences taken one by one.
pub fn split_sentences(keys: &[String]) -> Vec<Range<usize>> {
    let closes =
        |k: &str| is_sentence_end(k) || matches!(k, "”" | "’" | "」" | "』" | "）" | ")" | "\"");
    let mut pieces = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < keys.len() {
        if is_sentence_end(&keys[i]) {
            // Closing quotes and further end marks stay with their sentence.
            while i + 1 < keys.len() && closes(&keys[i + 1]) {
                i += 1;
            }
            pieces.push(start..i + 1);
            start = i + 1;
        }
        i += 1;
    }
    if start < keys.len() {
        pieces.push(start..keys.len());
    }
    pieces
}

/// One model input: unit ids (without [CLS]/[SEP]) and, for training, labels.
#[derive(Debug, Clone)]
pub struct Window {
    pub ids: Vec<u32>,
    pub labels: Vec<Label>,
    /// Lexicon / bigram features, for a model that reads them.
    pub features: UnitFeatures,
}

/// A padded batch: `[b, t]` tensors with [CLS] first and [SEP] after the units.
pub struct Batch {
    pub input_ids: Tensor,
    pub attention_mask: Tensor,
    /// i64 labels, [`IGNORE`] on [CLS], [SEP] and padding; absent when the
    /// windows carry no labels.
    pub labels: Option<Tensor>,
    /// Number of real units (positions that carry a label).
    pub units: usize,
    pub features: BatchFeatures,
}

/// Builds one padded batch from windows, all on `device`.
pub fn make_batch(windows: &[&Window], vocab: &Vocab, device: &Device) -> Result<Batch> {
    if windows.is_empty() {
        bail!("internal error: empty batch");
    }
    let t = windows.iter().map(|w| w.ids.len()).max().unwrap_or(0) + 2;
    let b = windows.len();
    let mut ids = vec![vocab.pad; b * t];
    let mut mask = vec![0f32; b * t];
    // Windows without labels (raw text among training windows) are all
    // IGNORE; a batch where none has labels has no label tensor.
    let with_labels = windows.iter().any(|w| !w.labels.is_empty());
    if windows
        .iter()
        .any(|w| !w.labels.is_empty() && w.labels.len() != w.ids.len())
    {
        bail!("internal error: a window's labels do not match its units");
    }
    let mut labels = vec![IGNORE; b * t];
    let mut units = 0;
    for (r, w) in windows.iter().enumerate() {
        let row = r * t;
        ids[row] = match w.features.standard {
            Some(StandardMark::Token(id)) => id,
            _ => vocab.cls,
        };
        ids[row + 1..row + 1 + w.ids.len()].copy_from_slice(&w.ids);
        ids[row + 1 + w.ids.len()] = vocab.sep;
        mask[row..row + w.ids.len() + 2].fill(1.0);
        if with_labels {
            for (k, l) in w.labels.iter().enumerate() {
                labels[row + 1 + k] = l.id() as i64;
            }
        }
        units += w.ids.len();
    }
    let rows: Vec<&UnitFeatures> = windows.iter().map(|w| &w.features).collect();
    Ok(Batch {
        features: BatchFeatures::build(&rows, t, device)?,
        input_ids: Tensor::from_vec(ids, (b, t), device)?,
        attention_mask: Tensor::from_vec(mask, (b, t), device)?,
        labels: if with_labels {
            Some(Tensor::from_vec(labels, (b, t), device)?)
        } else {
            None
        },
        units,
    })
}

/// Groups window indices into batches of `batch_size`: shuffled, then sorted by
/// length inside pools of 50 batches so padding stays small, then the batches
/// themselves shuffled. The same rng state gives the same batches.
pub fn training_batches(
    lengths: &[usize],
    batch_size: usize,
    rng: &mut impl rand::Rng,
) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.shuffle(rng);
    let mut batches = Vec::new();
    for pool in order.chunks(batch_size * 50) {
        let mut pool = pool.to_vec();
        pool.sort_by_key(|&i| lengths[i]);
        batches.extend(pool.chunks(batch_size).map(<[usize]>::to_vec));
    }
    batches.shuffle(rng);
    batches
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(s: &str) -> Vec<String> {
        s.chars().map(String::from).collect()
    }

    #[test]
    fn cuts_after_punctuation_when_possible() {
        let k = keys("一二，三四五六七八");
        assert_eq!(split_at_punctuation(&k, 4), [0..3, 3..7, 7..9]);
    }

    #[test]
    fn sentences_keep_closing_quotes() {
        let k = keys("他说：“好。”走吧！");
        assert_eq!(split_sentences(&k), [0..7, 7..10]);
    }

    #[test]
    fn built_vocab_has_specials_first() {
        let v = Vocab::build(["我", "你", "我"], 1);
        assert_eq!((v.pad, v.unk, v.cls, v.sep), (0, 1, 2, 3));
        assert_eq!(v.token(5), "我");
        assert_eq!(v.id("他"), v.unk);
    }
}
