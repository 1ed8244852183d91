//! Dev evaluation: the dev sentences segmented by the model being trained and
//! scored like `cws eval` (the boundary bias tuned when asked), with a lexicon
//! that lacks some dev-only words as a test set's would.

use super::data::Data;
use crate::corpus::{Line, Sentence};
use crate::features::{FeatureSpec, Lexicon};
use crate::score::{score_lines, Counts};
use crate::segment::{word_spans, Chunk};
use crate::tagger::{Decode, ModelSplitter, Tagger};
use crate::units::split_units;
use anyhow::{Context, Result};
use std::collections::HashSet;

/// Decoding biases tried at each evaluation when `tune_boundary_bias` is on:
/// -3 to 3 in steps of 0.25.
pub(super) fn biases(tune: bool) -> Vec<f32> {
    if tune {
        (-12..=12).map(|k| k as f32 * 0.25).collect()
    } else {
        vec![0.0]
    }
}

/// Segments the dev sentences' text with the model and scores it like `cws eval`,
/// decoding with each boundary bias in `biases` (the model runs once); returns
/// the best score and its bias (the first on ties).
pub fn evaluate(
    tagger: &Tagger,
    dev: &[Sentence],
    words: Option<&HashSet<String>>,
    biases: &[f32],
) -> Result<(Counts, f32)> {
    let texts: Vec<String> = dev.iter().map(|s| s.text()).collect();
    // A dev sentence is its words joined: one chunk without whitespace.
    let chunks: Vec<Chunk> = texts
        .iter()
        .map(|t| Chunk {
            text: t,
            units: split_units(t),
        })
        .collect();
    let splitter = ModelSplitter::new(tagger, Decode::Viterbi, None)?;
    let scored = splitter.score(&chunks)?;
    let gold: Vec<Line> = dev
        .iter()
        .map(|s| Line {
            number: s.line,
            text: s.words.join(" "),
        })
        .collect();
    let mut best: Option<(Counts, f32)> = None;
    for &bias in biases {
        let lengths = splitter.decode_scored(&chunks, &scored, bias);
        let pred: Vec<Line> = chunks
            .iter()
            .zip(&lengths)
            .zip(dev)
            .map(|((c, lens), s)| Line {
                number: s.line,
                text: word_spans(c, lens)
                    .into_iter()
                    .map(|r| &c.text[r])
                    .collect::<Vec<_>>()
                    .join(" "),
            })
            .collect();
        let counts = score_lines(&gold, &pred, words);
        if best.as_ref().is_none_or(|(b, _)| counts.f1() > b.f1()) {
            best = Some((counts, bias));
        }
    }
    best.context("no boundary bias to evaluate")
}

/// The features (lexicon and statistics) dev evaluation runs with. A list
/// built from the whole training corpus holds every dev word, which the test
/// set's unseen words will not be, so some dev words that the training split
/// lacks are hidden from it: in a fixed pseudo-random order until `oov_rate` of
/// the dev tokens are missing from the list (the expected test OOV rate), or
/// all of them when unset. With a `reference` list, only dev-only words that
/// it lacks too are candidates: words another large corpus never contains are
/// rare ones (names, transliterations), like a test set's unseen words, where
/// a random draw of dev-only words is mostly ordinary compounds.
/// A joint run hides each corpus's words from its own `standard`'s list.
pub(super) fn dev_features(
    full: &FeatureSpec,
    data: &Data,
    oov_rate: Option<f64>,
    reference: Option<&HashSet<String>>,
    standard: usize,
) -> FeatureSpec {
    let mut spec = full.clone();
    let Some(full) = &full.lexicon else {
        return spec;
    };
    let dev_tokens = data.dev.iter().flat_map(|s| &s.words).count();
    let mut counts: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for w in super::data::dev_only_words(data) {
        *counts.entry(w).or_default() += 1;
    }
    let mut candidates: Vec<(&str, usize)> = counts
        .into_iter()
        .filter(|(w, _)| reference.is_none_or(|r| !r.contains(*w)))
        .collect();
    candidates.sort_by_key(|&(w, _)| (crate::features::word_hash(w), w));
    let mut hidden = Vec::new();
    let mut missing = data
        .dev
        .iter()
        .flat_map(|s| &s.words)
        .filter(|w| !full.contains_for(w, standard))
        .count();
    let target = oov_rate.map(|r| (r * dev_tokens as f64).round() as usize);
    for (w, n) in candidates {
        if target.is_some_and(|t| missing >= t) {
            break;
        }
        if full.contains_for(w, standard) {
            hidden.push(Lexicon::keys(w));
            missing += n;
        }
    }
    spec.hide_words_of(standard, hidden.iter().map(Vec::as_slice));
    spec
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::ListStats;
    use crate::train::data::tests::sentence;

    #[test]
    fn dev_lexicon_hides_dev_only_words_up_to_the_target() {
        let data = Data {
            train: vec![vec!["我们".into(), "学习".into()]],
            dev: vec![
                sentence(1, &["我们", "研究", "经济"]),
                sentence(2, &["我们", "研究", "市场", "经济"]),
            ],
            ..Data::default()
        };
        let listed = ["我们", "学习", "研究", "经济", "市场"];
        let full = FeatureSpec {
            lexicon: Some(Lexicon::from_words(listed)),
            list_stats: Some(ListStats::from_words(listed)),
            ..FeatureSpec::default()
        };
        let lexicon = |spec: FeatureSpec| spec.lexicon.unwrap();
        // Unset: every dev word the training split lacks is hidden, from the
        // statistics too.
        let dev = dev_features(&full, &data, None, None, 0);
        let keys: Vec<String> = "研究市场我们".chars().map(String::from).collect();
        let pairs = FeatureSpec::bigram_pairs(&keys);
        assert_eq!(
            dev.list_stats.as_ref().unwrap().bits(&keys, &pairs),
            ListStats::from_words(["我们", "学习"]).bits(&keys, &pairs)
        );
        let all = lexicon(dev);
        assert!(all.contains("我们") && all.contains("学习"));
        assert!(!all.contains("研究") && !all.contains("经济") && !all.contains("市场"));
        // 7 dev tokens: a 0.25 target hides words until 2 tokens are out.
        let some = lexicon(dev_features(&full, &data, Some(0.25), None, 0));
        let hidden: usize = ["研究", "经济", "市场"]
            .iter()
            .filter(|w| !some.contains(w))
            .map(|w| if *w == "市场" { 1 } else { 2 })
            .sum();
        assert!((2..=3).contains(&hidden), "{hidden} tokens hidden");
        assert!(some.contains("我们"));
        assert_eq!(
            lexicon(dev_features(&full, &data, Some(0.0), None, 0)).len(),
            listed.len()
        );
        // With a reference list only the dev-only words it lacks are hidden.
        let reference: HashSet<String> = ["研究".to_string()].into();
        let rare = lexicon(dev_features(&full, &data, None, Some(&reference), 0));
        assert!(rare.contains("研究") && rare.contains("我们"));
        assert!(!rare.contains("经济") && !rare.contains("市场"));
    }
}
