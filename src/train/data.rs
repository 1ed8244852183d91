//! Training data: the segmented corpus read and split into training and dev
//! sentences (placeholders filled, a fold left out), then each epoch's
//! training windows: lexicon pseudo-sentences added, features perturbed
//! (hidden lexicon entries, [UNK] units, held-out folds), cut at punctuation.

use super::{Event, Progress};
use crate::bies::labels_from_lengths;
use crate::config::TrainConfig;
use crate::corpus::{read_segmented, Sentence};
use crate::encode::{split_at_punctuation, Vocab, Window};
use crate::features::{FeatureSpec, Lexicon};
use crate::units::{split_units, units_of_words};
use anyhow::{bail, Result};
use rand::SeedableRng;
use std::collections::HashSet;
use std::path::Path;

/// Labelled training data and dev sentences, ready for the model.
#[derive(Debug, Default)]
pub struct Data {
    pub train: Vec<Vec<String>>,
    pub dev: Vec<Sentence>,
    /// Gold word boundaries inside a unit (not representable), counted.
    pub inner_boundaries: usize,
    /// Each training sentence's corpus (its index in `cfg.corpora()`, the
    /// standard a joint model reads it by); all 0 for one corpus.
    pub standard_of: Vec<usize>,
    /// Each dev sentence's corpus.
    pub dev_standard: Vec<usize>,
}

/// The items of `all` whose corpus (in `of`, 0 where it is short) is `standard`.
fn of_corpus<T: Clone>(all: &[T], of: &[usize], standard: usize) -> Vec<T> {
    (all.iter().enumerate())
        .filter(|&(i, _)| of.get(i).copied().unwrap_or(0) == standard)
        .map(|(_, s)| s.clone())
        .collect()
}

impl Data {
    /// The training and dev sentences of corpus `standard` alone.
    pub(super) fn of_standard(&self, standard: usize) -> Data {
        Data {
            train: of_corpus(&self.train, &self.standard_of, standard),
            dev: self.dev_of(standard),
            ..Data::default()
        }
    }

    /// The dev sentences of corpus `standard`.
    pub(super) fn dev_of(&self, standard: usize) -> Vec<Sentence> {
        of_corpus(&self.dev, &self.dev_standard, standard)
    }
}

/// Reads the corpora and holds out their dev sets (the last `dev_fraction` of
/// each corpus's non-blank lines, unless a dev file is given); a joint run's
/// corpora follow one another, each sentence marked with its corpus.
pub fn load_data(cfg: &TrainConfig, progress: Progress<'_>) -> Result<Data> {
    let mut train = Vec::new();
    let mut data = Data::default();
    for (k, corpus) in cfg.corpora().into_iter().enumerate() {
        let (t, d) = read_corpus(cfg, corpus, k, progress)?;
        data.standard_of.extend(std::iter::repeat_n(k, t.len()));
        data.dev_standard.extend(std::iter::repeat_n(k, d.len()));
        train.extend(t);
        data.dev.extend(d);
    }
    let mut inner = 0;
    data.train = train
        .into_iter()
        .enumerate()
        .filter(|(i, _)| cfg.exclude_fold.is_none_or(|[k, n]| i % n != k))
        .map(|(_, s)| {
            inner += units_of_words(&s.words).inner_boundaries;
            s.words
        })
        .collect();
    data.standard_of = (data.standard_of.iter().enumerate())
        .filter(|(i, _)| cfg.exclude_fold.is_none_or(|[k, n]| i % n != k))
        .map(|(_, &s)| s)
        .collect();
    data.inner_boundaries = inner;
    Ok(data)
}

/// One corpus's training and dev sentences, placeholders filled (corpus `k`
/// of the run draws its long words with its own seed).
fn read_corpus(
    cfg: &TrainConfig,
    corpus: crate::config::CorpusRef<'_>,
    k: usize,
    progress: Progress<'_>,
) -> Result<(Vec<Sentence>, Vec<Sentence>)> {
    let path = corpus.train;
    let all: Vec<Sentence> = read_segmented(path)?
        .into_iter()
        .filter(|s| !s.words.is_empty())
        .collect();
    if all.is_empty() {
        bail!("{} has no sentences", path.display());
    }
    let long = all.iter().filter(|s| s.text().chars().count() >= 4);
    let (considered, unsegmented) = long.fold((0, 0), |(n, u), s| {
        (n + 1, u + (s.words.len() == 1) as usize)
    });
    if unsegmented * 2 > considered {
        progress.report(Event::Note(&format!(
            "warning: {}: {unsegmented} of its {considered} lines of 4 or more characters have no word \
             separator: training needs segmented text (words separated by spaces)",
            path.display()
        )));
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
    let seed = cfg.seed ^ (k as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    match &cfg.long_word_placeholder {
        Some(mark) => fill_placeholders(train, dev, mark, corpus.lexicon, seed),
        None => Ok((train, dev)),
    }
}

/// Replaces every word equal to `mark` in the training and dev sentences by a
/// word of five or more units from the `lexicon` list (a seeded draw): corpora
/// that stand one placeholder in for every long word (the public 10% files
/// write `L`) then still show the model long words.
fn fill_placeholders(
    mut train: Vec<Sentence>,
    mut dev: Vec<Sentence>,
    mark: &str,
    lexicon: Option<&Path>,
    seed: u64,
) -> Result<(Vec<Sentence>, Vec<Sentence>)> {
    use rand::Rng;
    let Some(path) = lexicon else {
        bail!("long_word_placeholder needs a `lexicon` word list to draw long words from");
    };
    let long: Vec<String> = crate::corpus::read_word_list(path)?
        .into_iter()
        .map(|(w, _)| w)
        .filter(|w| split_units(w).len() >= 5)
        .collect();
    if long.is_empty() {
        bail!(
            "{} has no word of five or more units to stand in for {mark:?}",
            path.display()
        );
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x4C4F_4E47);
    for w in train
        .iter_mut()
        .chain(dev.iter_mut())
        .flat_map(|s| s.words.iter_mut())
        .filter(|w| w.as_str() == mark)
    {
        *w = long[rng.random_range(0..long.len())].clone();
    }
    Ok((train, dev))
}

/// How training inputs are perturbed in one epoch (seeded, so reproducible).
#[derive(Debug, Clone, Copy, Default)]
pub struct Perturb {
    /// Hide this fraction of lexicon entries (seed, fraction).
    pub lexicon: Option<(u64, f64)>,
    /// Replace this fraction of units by [UNK], bigrams included (seed, fraction).
    pub units: Option<(u64, f64)>,
    /// Show each sentence as if the training data lacked it (see [`Heldout`]).
    pub heldout: Option<Heldout>,
}

/// Held-out features: the training sentences are dealt into `folds` folds
/// (a fresh deal per `seed`), and a sentence's features are computed from the
/// other folds only, as the test set's are from the whole training split: its
/// units that no other fold has become [UNK], its bigrams seen fewer than
/// `bigram_min_count` times elsewhere the "unseen" bucket, and of its words no
/// other fold has, a `hide` fraction leave the lexicon (the rest stay, like the
/// listed words a test set holds that training never showed).
#[derive(Debug, Clone, Copy)]
pub struct Heldout {
    pub seed: u64,
    pub folds: usize,
    pub hide: f64,
    pub bigram_min_count: usize,
}

/// What one fold's sentences are shown: the features and the units of the
/// other folds.
struct FoldView {
    spec: FeatureSpec,
    unseen_units: HashSet<String>,
}

/// Each sentence's fold, and each fold's view (see [`Heldout`]); a joint
/// run's sentences hide their words from their own standard's list
/// (`standard_of`, 0 where it is short).
fn fold_views(
    sentences: &[Vec<String>],
    standard_of: &[usize],
    spec: &FeatureSpec,
    h: Heldout,
) -> (Vec<usize>, Vec<FoldView>) {
    use crate::features::{hash_keys, mix, standard_salt};
    use std::collections::HashMap;
    let folds = h.folds.max(2);
    let fold_of: Vec<usize> = (0..sentences.len())
        .map(|i| {
            (mix(h.seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)) % folds as u64) as usize
        })
        .collect();
    // Counts over all folds and per fold, of words, bigrams and units.
    type Counts<K> = (HashMap<K, u32>, Vec<HashMap<K, u32>>);
    fn add<K: std::hash::Hash + Eq + Clone>(c: &mut Counts<K>, fold: usize, k: K) {
        *c.0.entry(k.clone()).or_default() += 1;
        *c.1[fold].entry(k).or_default() += 1;
    }
    fn fresh<K>(folds: usize) -> Counts<K> {
        (HashMap::new(), (0..folds).map(|_| HashMap::new()).collect())
    }
    let (mut words, mut pairs, mut units): (Counts<u64>, Counts<u64>, Counts<String>) =
        (fresh(folds), fresh(folds), fresh(folds));
    let mut word_keys: HashMap<u64, (Vec<String>, usize)> = HashMap::new();
    for (i, (s, &f)) in sentences.iter().zip(&fold_of).enumerate() {
        let keys: Vec<String> = units_of_words(s).units.iter().map(|u| u.key()).collect();
        let standard = standard_of.get(i).copied().unwrap_or(0);
        for w in s {
            let wk = Lexicon::keys(w);
            let hash = hash_keys(&wk) ^ standard_salt(standard);
            add(&mut words, f, hash);
            word_keys.entry(hash).or_insert((wk, standard));
        }
        for p in FeatureSpec::bigram_pairs(&keys) {
            add(&mut pairs, f, p);
        }
        for k in keys {
            add(&mut units, f, k);
        }
    }
    let hide_limit = h.hide.clamp(0.0, 1.0) * 2f64.powi(64);
    let salt = mix(h.seed ^ 0x5EED);
    let views = (0..folds)
        .map(|f| {
            let mut view = spec.clone();
            let hidden: Vec<&(Vec<String>, usize)> = words.1[f]
                .iter()
                .filter(|&(w, &n)| words.0[w] == n && (mix(w ^ salt) as f64) < hide_limit)
                .map(|(w, _)| &word_keys[w])
                .collect();
            for standard in 0..spec.standards.max(1) {
                view.hide_words_of(
                    standard,
                    (hidden.iter())
                        .filter(|(_, s)| *s == standard)
                        .map(|(k, _)| k.as_slice()),
                );
            }
            if let Some(seen) = &mut view.bigram_seen {
                seen.remove_hashes(pairs.1[f].iter().filter_map(|(&p, &n)| {
                    (((pairs.0[&p] - n) as usize) < h.bigram_min_count).then_some(p)
                }));
            }
            let unseen_units = units.1[f]
                .iter()
                .filter(|&(k, &n)| units.0[k] == n)
                .map(|(k, _)| k.clone())
                .collect();
            FoldView {
                spec: view,
                unseen_units,
            }
        })
        .collect();
    (fold_of, views)
}

/// Training windows of at most `max_units` units, cut at punctuation, with the
/// unit features `spec` asks for (a joint run's sentence by its standard in
/// `standard_of`, 0 where it is short), perturbed as `perturb` says.
pub fn windows(
    sentences: &[Vec<String>],
    standard_of: &[usize],
    vocab: &Vocab,
    max_units: usize,
    spec: &FeatureSpec,
    perturb: Perturb,
) -> Vec<Window> {
    use rand::Rng;
    let mut out = Vec::new();
    let mut unk_rng = perturb
        .units
        .map(|(seed, p)| (rand::rngs::StdRng::seed_from_u64(seed), p));
    let heldout = perturb
        .heldout
        .map(|h| fold_views(sentences, standard_of, spec, h));
    for (s, words) in sentences.iter().enumerate() {
        let su = units_of_words(words);
        let labels = labels_from_lengths(&su.word_lengths);
        let keys: Vec<String> = su.units.iter().map(|u| u.key()).collect();
        let mut ids = vocab.unit_ids(&su.units);
        let view = heldout.as_ref().map(|(fold_of, views)| &views[fold_of[s]]);
        if let Some(view) = view {
            for (id, k) in ids.iter_mut().zip(&keys) {
                if view.unseen_units.contains(k) {
                    *id = vocab.unk;
                }
            }
        }
        let standard = standard_of.get(s).copied().unwrap_or(0);
        let mut features =
            view.map_or(spec, |v| &v.spec)
                .compute_for(&keys, perturb.lexicon, standard);
        if let Some((rng, p)) = &mut unk_rng {
            for (i, id) in ids.iter_mut().enumerate() {
                if rng.random::<f64>() < *p {
                    *id = vocab.unk;
                    if let Some(b) = features.bigrams.get_mut(i) {
                        *b = [0, 0];
                    }
                }
            }
        }
        for r in split_at_punctuation(&keys, max_units) {
            out.push(Window {
                ids: ids[r.clone()].to_vec(),
                labels: labels[r.clone()].to_vec(),
                features: features.slice(r),
            });
        }
    }
    out
}

/// Pseudo-sentences made of lexicon words, each word a gold word: a random
/// `fraction` of `words` (a fresh draw per `seed`), shuffled and cut into
/// sentences of 8 to 24 words. They show the model how listed words look,
/// including the many the training split never contains.
pub fn lexicon_sentences(words: &[String], fraction: f64, seed: u64) -> Vec<Vec<String>> {
    use rand::seq::SliceRandom;
    use rand::Rng;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut picked: Vec<&String> = words
        .iter()
        .filter(|_| rng.random::<f64>() < fraction)
        .collect();
    picked.shuffle(&mut rng);
    let mut out = Vec::new();
    let mut rest = &picked[..];
    while !rest.is_empty() {
        let n = rng.random_range(8..=24).min(rest.len());
        out.push(rest[..n].iter().map(|w| w.to_string()).collect());
        rest = &rest[n..];
    }
    out
}

/// Dev word tokens (repeats included) that the training split never contains.
pub(super) fn dev_only_words(data: &Data) -> impl Iterator<Item = &str> {
    let train_words: HashSet<&str> = data.train.iter().flatten().map(String::as_str).collect();
    data.dev
        .iter()
        .flat_map(|s| &s.words)
        .map(String::as_str)
        .filter(move |w| !train_words.contains(w))
}

/// What varies between epochs: which perturbations are drawn and which
/// lexicon words join the training sentences.
pub(super) struct EpochPlan {
    /// Lexicon words that may become pseudo-sentences (never dev words the
    /// training split lacks, so dev scores stay honest).
    pseudo_words: Vec<String>,
    /// The run has a lexicon whose entries `lexicon_dropout` hides.
    lexicon_dropout: bool,
}

impl EpochPlan {
    pub(super) fn new(cfg: &TrainConfig, data: &Data, spec: &FeatureSpec) -> Result<Self> {
        let pseudo_words = match (&cfg.lexicon, cfg.lexicon_examples > 0.0) {
            (Some(path), true) => {
                let dev_only: HashSet<&str> = dev_only_words(data).collect();
                crate::corpus::read_word_list(path)?
                    .into_iter()
                    .map(|(w, _)| w)
                    .filter(|w| !dev_only.contains(w.as_str()) && w.chars().count() <= 32)
                    .collect()
            }
            _ => Vec::new(),
        };
        Ok(Self {
            pseudo_words,
            lexicon_dropout: spec.lexicon.is_some() && cfg.lexicon_dropout > 0.0,
        })
    }

    /// The perturbations of `epoch` (seeded by it).
    pub(super) fn perturb(&self, cfg: &TrainConfig, epoch: usize) -> Perturb {
        let seed = cfg.seed ^ (epoch as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03);
        Perturb {
            lexicon: self.lexicon_dropout.then_some((seed, cfg.lexicon_dropout)),
            units: (cfg.unit_dropout > 0.0).then_some((seed ^ 1, cfg.unit_dropout)),
            heldout: (cfg.heldout_folds > 0).then_some(Heldout {
                seed: seed ^ 2,
                folds: cfg.heldout_folds,
                hide: cfg.heldout_hide,
                bigram_min_count: cfg.bigram_min_count,
            }),
        }
    }

    /// Whether epochs differ, so each needs its own windows.
    pub(super) fn varies(&self, p: &Perturb) -> bool {
        p.lexicon.is_some()
            || p.units.is_some()
            || p.heldout.is_some()
            || !self.pseudo_words.is_empty()
    }

    /// The training windows of `epoch`, perturbed by `perturb`.
    pub(super) fn windows(
        &self,
        cfg: &TrainConfig,
        data: &Data,
        epoch: usize,
        vocab: &Vocab,
        spec: &FeatureSpec,
        perturb: Perturb,
    ) -> Vec<Window> {
        let extra = (!self.pseudo_words.is_empty()).then(|| {
            let mut all = data.train.clone();
            all.extend(lexicon_sentences(
                &self.pseudo_words,
                cfg.lexicon_examples,
                cfg.seed ^ (epoch as u64).wrapping_mul(0xA076_1D64_78BD_642F),
            ));
            all
        });
        let sentences = extra.as_deref().unwrap_or(&data.train);
        windows(
            sentences,
            &data.standard_of,
            vocab,
            cfg.max_length - 2,
            spec,
            perturb,
        )
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::features::ListStats;

    pub(in crate::train) fn sentence(line: usize, words: &[&str]) -> Sentence {
        Sentence {
            line,
            words: words.iter().map(|w| w.to_string()).collect(),
        }
    }

    #[test]
    fn fold_views_show_each_sentence_what_the_other_folds_hold() {
        let sentences: Vec<Vec<String>> = [
            "我们 研究 经济",
            "我们 学习",
            "他们 研究 市场",
            "市场 经济 发展",
            "我们 发展 经济",
            "他们 学习 外语",
            "研究 外语",
            "经济 学习",
        ]
        .iter()
        .map(|s| s.split(' ').map(String::from).collect())
        .collect();
        let keys: Vec<Vec<String>> = sentences
            .iter()
            .map(|s| units_of_words(s).units.iter().map(|u| u.key()).collect())
            .collect();
        let all_words: Vec<&String> = sentences.iter().flatten().collect();
        let spec = FeatureSpec {
            lexicon: Some(Lexicon::from_words(&all_words)),
            bigram_buckets: 16,
            bigram_seen: Some(FeatureSpec::seen_bigrams(keys.iter().map(Vec::as_slice), 1)),
            list_stats: Some(ListStats::from_words(&all_words)),
            ..FeatureSpec::default()
        };
        for (hide, min_count) in [(1.0, 1), (0.0, 2)] {
            let h = Heldout {
                seed: 3,
                folds: 3,
                hide,
                bigram_min_count: min_count,
            };
            let (fold_of, views) = fold_views(&sentences, &[], &spec, h);
            assert_eq!(views.len(), 3);
            for (i, s) in sentences.iter().enumerate() {
                let view = &views[fold_of[i]];
                let others: Vec<usize> = (0..sentences.len())
                    .filter(|&j| fold_of[j] != fold_of[i])
                    .collect();
                for w in s {
                    let elsewhere = others.iter().any(|&j| sentences[j].contains(w));
                    let listed = view.spec.lexicon.as_ref().unwrap().contains(w);
                    assert_eq!(listed, elsewhere || hide == 0.0, "{w} in sentence {i}");
                }
                // The statistics count exactly the words the view lists.
                let lex = view.spec.lexicon.as_ref().unwrap();
                let still = ListStats::from_words(all_words.iter().filter(|w| lex.contains(w)));
                let pairs = FeatureSpec::bigram_pairs(&keys[i]);
                assert_eq!(
                    view.spec.compute(&keys[i], None).stats,
                    still.bits(&keys[i], &pairs),
                    "sentence {i}"
                );
                for k in &keys[i] {
                    let elsewhere = others.iter().any(|&j| keys[j].contains(k));
                    assert_eq!(view.unseen_units.contains(k), !elsewhere, "{k}");
                }
                let pairs = FeatureSpec::bigram_pairs(&keys[i]);
                let seen = view.spec.bigram_seen.as_ref().unwrap();
                for (p, pair) in pairs.iter().enumerate() {
                    let n = others
                        .iter()
                        .flat_map(|&j| FeatureSpec::bigram_pairs(&keys[j]))
                        .filter(|q| q == pair)
                        .count();
                    let bucket = view.spec.compute(&keys[i], None).bigrams;
                    // Pair p is unit p's left bigram and unit p - 1's right one.
                    let got = if p < keys[i].len() {
                        bucket[p][0]
                    } else {
                        bucket[p - 1][1]
                    };
                    assert_eq!(got != 0, n >= min_count, "pair {p} of sentence {i}");
                    assert_eq!(seen.contains_hash(*pair), n >= min_count);
                }
            }
        }
    }

    #[test]
    fn placeholders_become_long_listed_words() {
        let dir = tempfile::tempdir().unwrap();
        let list = dir.path().join("words.txt");
        std::fs::write(&list, "中华人民共和国\n北京大学\n全国人民代表大会\n").unwrap();
        let train = vec![sentence(1, &["L", "成立", "L"]), sentence(2, &["我们"])];
        let dev = vec![sentence(3, &["L", "了"])];
        let (t, d) = fill_placeholders(train, dev, "L", Some(&list), 7).unwrap();
        let long = ["中华人民共和国", "全国人民代表大会"];
        for s in t.iter().chain(&d) {
            for w in &s.words {
                assert!(w != "L" && (long.contains(&w.as_str()) || w.chars().count() < 4));
            }
        }
        assert_eq!(
            (t[0].words[1].as_str(), d[0].words[1].as_str()),
            ("成立", "了")
        );
        let again = fill_placeholders(
            vec![sentence(1, &["L", "成立", "L"])],
            vec![],
            "L",
            Some(&list),
            7,
        )
        .unwrap();
        assert_eq!(again.0[0].words, t[0].words, "seeded draws");
        let err = fill_placeholders(vec![], vec![], "L", None, 7).unwrap_err();
        assert!(err.to_string().contains("lexicon"), "{err}");
    }
}
