//! Training: segmented corpus → labelled windows → batches → AdamW steps, with
//! dev evaluation by the same scorer as `cws eval`, a JSON-lines metrics log,
//! best and last checkpoints written atomically, `--resume`, and a stop on
//! request ([`request_stop`], which `cws train` calls on SIGINT / SIGTERM)
//! that saves `last` first.
//!
//! Reproducibility: initial weights, batch order (per epoch) and dropout masks
//! (per step) all come from generators seeded by `seed`, so the same config gives
//! the same run on CPU, and a resumed run continues exactly where it stopped.

use crate::bies::{labels_from_lengths, NUM_LABELS};
use crate::checkpoint::write_atomic;
use crate::config::{open_device, parse_device, parse_precision, TrainConfig, VOCAB_FROM_TRAIN};
use crate::corpus::{read_segmented, read_word_set, Line, Sentence};
use crate::encode::{make_batch, split_at_punctuation, training_batches, Vocab, Window};
use crate::features::{FeatureSpec, Lexicon};
use crate::hub::{resolve, HubSettings, ModelSource};
use crate::model::{
    masked_cross_entropy, masked_soft_cross_entropy, BertConfig, BertForTokenClassification,
    DropoutRng, BIES,
};
use crate::optim::{clip_grad_norm, AdamW, AdamWConfig, LinearSchedule};
use crate::score::{score_lines, Counts};
use crate::segment::{word_spans, Chunk};
use crate::tagger::{Decode, ModelSplitter, Tagger};
use crate::units::{split_units, units_of_words, Unit};
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

/// Asks a running [`train`] to save `last` and stop after its current step.
/// Async-signal-safe (one atomic store).
pub fn request_stop() {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

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
    /// The run stopped before its end (an interrupt).
    pub interrupted: bool,
    /// With `interrupted`: the checkpoint written at the stop (the run's
    /// `last`, or a cross-fitted copy's).
    pub saved_at_stop: Option<PathBuf>,
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
    let long = all.iter().filter(|s| s.text().chars().count() >= 4);
    let (considered, unsegmented) = long.fold((0, 0), |(n, u), s| {
        (n + 1, u + (s.words.len() == 1) as usize)
    });
    if unsegmented * 2 > considered {
        eprintln!(
            "warning: {}: {unsegmented} of its {considered} lines of 4 or more characters have no word \
             separator: training needs segmented text (words separated by spaces)",
            cfg.train.display()
        );
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
    let (train, dev) = match &cfg.long_word_placeholder {
        Some(mark) => fill_placeholders(train, dev, mark, cfg.lexicon.as_deref(), cfg.seed)?,
        None => (train, dev),
    };
    let mut inner = 0;
    let train: Vec<Vec<String>> = train
        .into_iter()
        .enumerate()
        .filter(|(i, _)| cfg.exclude_fold.is_none_or(|[k, n]| i % n != k))
        .map(|(_, s)| {
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

/// Each sentence's fold, and each fold's view (see [`Heldout`]).
fn fold_views(
    sentences: &[Vec<String>],
    spec: &FeatureSpec,
    h: Heldout,
) -> (Vec<usize>, Vec<FoldView>) {
    use crate::features::{hash_keys, mix};
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
    let mut word_keys: HashMap<u64, Vec<String>> = HashMap::new();
    for (s, &f) in sentences.iter().zip(&fold_of) {
        let keys: Vec<String> = units_of_words(s).units.iter().map(|u| u.key()).collect();
        for w in s {
            let wk = Lexicon::keys(w);
            let hash = hash_keys(&wk);
            add(&mut words, f, hash);
            word_keys.entry(hash).or_insert(wk);
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
            view.hide_words(
                words.1[f]
                    .iter()
                    .filter(|&(w, &n)| words.0[w] == n && (mix(w ^ salt) as f64) < hide_limit)
                    .map(|(w, _)| word_keys[w].as_slice()),
            );
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
/// unit features `spec` asks for, perturbed as `perturb` says.
pub fn windows(
    sentences: &[Vec<String>],
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
    let heldout = perturb.heldout.map(|h| fold_views(sentences, spec, h));
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
        let mut features = view
            .map_or(spec, |v| &v.spec)
            .compute(&keys, perturb.lexicon);
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
    let splitter = ModelSplitter::new(tagger, Decode::Viterbi, None);
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
    let features = match resume_from {
        Some(dir) => FeatureSpec::for_model(&config, dir)?,
        None => fresh_features(cfg, data, &mut config, files.weights.is_some())?,
    };
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
        features,
    })
}

/// The unit features a fresh run asks for, recorded in the model config.
fn fresh_features(
    cfg: &TrainConfig,
    data: &Data,
    config: &mut BertConfig,
    pretrained: bool,
) -> Result<FeatureSpec> {
    if pretrained && (cfg.lexicon.is_some() || cfg.bigram_buckets > 0) {
        bail!("lexicon and bigram features add new embeddings to the model; train a fresh model (model = \"config:PATH\") to use them");
    }
    let (lexicon, list_stats) = match &cfg.lexicon {
        Some(path) => {
            let listed = crate::corpus::read_word_list(path)?;
            let words = || {
                listed
                    .iter()
                    .map(|(w, _)| w)
                    .chain(data.train.iter().flatten())
            };
            let stats = cfg
                .lexicon_stats
                .then(|| crate::features::ListStats::from_words(words()));
            let width = crate::features::LEXICON_FEATURES
                + if stats.is_some() {
                    crate::features::LIST_STAT_FEATURES
                } else {
                    0
                };
            config.extra.insert(
                crate::features::LEXICON_KEY.into(),
                serde_json::json!(width),
            );
            (Some(Lexicon::from_words(words())), stats)
        }
        None => (None, None),
    };
    let mut bigram_seen = None;
    if cfg.bigram_buckets > 0 {
        config.extra.insert(
            crate::features::BIGRAM_KEY.into(),
            serde_json::json!(cfg.bigram_buckets),
        );
        if cfg.bigram_min_count > 0 {
            let keys: Vec<Vec<String>> = data
                .train
                .iter()
                .map(|w| units_of_words(w).units.iter().map(|u| u.key()).collect())
                .collect();
            bigram_seen = Some(FeatureSpec::seen_bigrams(
                keys.iter().map(Vec::as_slice),
                cfg.bigram_min_count,
            ));
            config.extra.insert(
                crate::features::BIGRAM_SEEN_KEY.into(),
                serde_json::json!(true),
            );
        }
    }
    Ok(FeatureSpec {
        lexicon,
        bigram_buckets: cfg.bigram_buckets,
        bigram_seen,
        list_stats,
    })
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
fn dev_features(
    full: &FeatureSpec,
    data: &Data,
    oov_rate: Option<f64>,
    reference: Option<&HashSet<String>>,
) -> FeatureSpec {
    let mut spec = full.clone();
    let Some(full) = &full.lexicon else {
        return spec;
    };
    let dev_tokens = data.dev.iter().flat_map(|s| &s.words).count();
    let mut counts: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for w in dev_only_words(data) {
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
        .filter(|w| !full.contains(w))
        .count();
    let target = oov_rate.map(|r| (r * dev_tokens as f64).round() as usize);
    for (w, n) in candidates {
        if target.is_some_and(|t| missing >= t) {
            break;
        }
        if full.contains(w) {
            hidden.push(Lexicon::keys(w));
            missing += n;
        }
    }
    spec.hide_words(hidden.iter().map(Vec::as_slice));
    spec
}

/// Dev word tokens (repeats included) that the training split never contains.
fn dev_only_words(data: &Data) -> impl Iterator<Item = &str> {
    let train_words: HashSet<&str> = data.train.iter().flatten().map(String::as_str).collect();
    data.dev
        .iter()
        .flat_map(|s| &s.words)
        .map(String::as_str)
        .filter(move |w| !train_words.contains(w))
}

/// A distillation teacher: a trained model that reads the student's features
/// (or their lexicon bits without the word-list statistics), so it can score
/// the student's batches, and the id of each student token in its own
/// vocabulary ([UNK] for those it lacks).
struct Teacher {
    tagger: Tagger,
    ids: Vec<u32>,
    /// Reads only the lexicon bits of a student with word-list statistics.
    lexicon_bits_only: bool,
}

fn load_teacher(dir: &Path, student: &Tagger) -> Result<Teacher> {
    let source = dir
        .to_str()
        .with_context(|| format!("{}: not a UTF-8 path", dir.display()))?;
    let teacher = Tagger::load(source, &student.device)
        .with_context(|| format!("loading the teacher {}", dir.display()))?;
    let ids = student
        .vocab
        .tokens()
        .iter()
        .map(|t| teacher.vocab.id(t))
        .collect();
    let width = |t: &Tagger| {
        t.config
            .extra
            .get(crate::features::LEXICON_KEY)
            .and_then(|v| v.as_u64())
            .unwrap_or(0) as usize
    };
    let lexicon_bits_only = width(&teacher) == crate::features::LEXICON_FEATURES
        && width(student)
            == crate::features::LEXICON_FEATURES + crate::features::LIST_STAT_FEATURES;
    for key in [
        crate::features::LEXICON_KEY,
        crate::features::BIGRAM_KEY,
        crate::features::BIGRAM_SEEN_KEY,
    ] {
        let (t, s) = (teacher.config.extra.get(key), student.config.extra.get(key));
        if t != s && !(key == crate::features::LEXICON_KEY && lexicon_bits_only) {
            bail!(
                "the teacher {} reads other features than the model being trained ({key}: {} against {})",
                dir.display(),
                t.map_or("none".into(), |v| v.to_string()),
                s.map_or("none".into(), |v| v.to_string())
            );
        }
    }
    Ok(Teacher {
        tagger: teacher,
        ids,
        lexicon_bits_only,
    })
}

/// The teachers' mean label probabilities on a batch (no gradient).
fn teacher_probs(
    teachers: &[Teacher],
    batch: &crate::encode::Batch,
) -> Result<candle_core::Tensor> {
    let student_ids: Vec<Vec<u32>> = batch.input_ids.to_dtype(DType::U32)?.to_vec2()?;
    let mut sum: Option<candle_core::Tensor> = None;
    for t in teachers {
        let ids: Vec<u32> = student_ids
            .iter()
            .flatten()
            .map(|&i| t.ids[i as usize])
            .collect();
        let ids =
            candle_core::Tensor::from_vec(ids, batch.input_ids.shape(), batch.input_ids.device())?
                .to_dtype(batch.input_ids.dtype())?;
        let bits_only;
        let features = if t.lexicon_bits_only {
            bits_only = crate::features::BatchFeatures {
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

/// Trains, or finishes, the copies `crossfit_folds` asks for (copy k in
/// `OUTPUT_DIR/crossfit/k`, without the training sentences whose index is k
/// modulo the fold count) and returns their best checkpoints, or the summary
/// of the copy an interrupt stopped (`--resume` carries on from there).
fn crossfit_copies(
    cfg: &TrainConfig,
    progress: Progress,
) -> Result<std::result::Result<Vec<PathBuf>, Summary>> {
    let n = cfg.crossfit_folds;
    let mut dirs = Vec::with_capacity(n);
    for k in 0..n {
        let mut c = cfg.clone();
        c.crossfit_folds = 0;
        c.exclude_fold = Some([k, n]);
        c.output_dir = cfg.output_dir.join("crossfit").join(k.to_string());
        let last = c.output_dir.join("last");
        let state = last
            .join("trainer_state.json")
            .is_file()
            .then(|| read_state(&last))
            .transpose()?;
        if state.as_ref().is_none_or(|s| s.step < s.total_steps) {
            eprintln!(
                "cross-fitting: copy {} of {n}, without training sentences {k}, {}, {}, …",
                k + 1,
                k + n,
                k + 2 * n
            );
            let s = train_until(&c, state.is_some(), progress, None)?;
            if s.interrupted {
                return Ok(Err(s));
            }
        }
        dirs.push(c.output_dir.join("best"));
    }
    Ok(Ok(dirs))
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
fn soft_targets_batch(
    rows: &[&[[f32; NUM_LABELS]]],
    batch: &crate::encode::Batch,
) -> Result<candle_core::Tensor> {
    let (b, t) = batch.input_ids.dims2()?;
    let mut v = vec![1.0 / NUM_LABELS as f32; b * t * NUM_LABELS];
    for (r, row) in rows.iter().enumerate() {
        for (k, p) in row.iter().enumerate() {
            let at = (r * t + 1 + k) * NUM_LABELS;
            v[at..at + NUM_LABELS].copy_from_slice(p);
        }
    }
    Ok(candle_core::Tensor::from_vec(
        v,
        (b, t, NUM_LABELS),
        batch.input_ids.device(),
    )?)
}

/// Writes a checkpoint folder atomically: weights and config in Hugging Face
/// layout, the vocabulary, the resolved training config, and for `last` the
/// optimizer and trainer state needed by `--resume`.
fn save_checkpoint(
    dest: &Path,
    tagger: &Tagger,
    cfg: &TrainConfig,
    features: &FeatureSpec,
    resume: Option<(&AdamW, &TrainerState)>,
) -> Result<()> {
    write_atomic(dest, |tmp| {
        tagger.save(tmp, DType::F32, features)?;
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

/// Keeps the lines of a metrics log up to `step` (each line's `step` key),
/// rewriting it atomically, so a resumed run never logs a step twice.
fn truncate_log_after(path: &Path, step: u64) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let keep: String = text
        .lines()
        .filter(|line| {
            serde_json::from_str::<serde_json::Value>(line)
                .ok()
                .and_then(|v| v.get("step").and_then(serde_json::Value::as_u64))
                .is_some_and(|s| s <= step)
        })
        .map(|line| format!("{line}\n"))
        .collect();
    if keep.len() != text.len() {
        let mut file = crate::output::AtomicFile::create(path)?;
        file.write_all(keep.as_bytes())?;
        file.commit()?;
    }
    Ok(())
}

/// The trainer state saved with a `last` checkpoint.
fn read_state(dir: &Path) -> Result<TrainerState> {
    serde_json::from_str(&std::fs::read_to_string(dir.join("trainer_state.json"))?)
        .context("reading trainer_state.json")
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
    let last_dir = cfg.output_dir.join("last");
    let best_dir = cfg.output_dir.join("best");
    let resume_from = match (resume, last_dir.join("trainer_state.json").is_file()) {
        (true, true) => Some(last_dir.as_path()),
        // A cross-fitted run stopped inside a copy has no `last` of its own yet.
        (true, false) if cfg.crossfit_folds > 0 => None,
        (true, false) => bail!(
            "--resume: no checkpoint to resume at {}",
            last_dir.display()
        ),
        (false, _) => None,
    };
    let data = load_data(cfg)?;
    let resumed = resume_from.map(read_state).transpose()?;
    if data.inner_boundaries > 0 {
        eprintln!(
            "note: {} gold word boundaries fall inside a number or Latin unit and cannot be learned",
            data.inner_boundaries
        );
    }
    let words = cfg.words.as_deref().map(read_word_set).transpose()?;
    // The run's folder and settings (what `--resume` reads), before the first
    // cross-fitted copy or step.
    std::fs::create_dir_all(&cfg.output_dir)
        .with_context(|| format!("cannot create {}", cfg.output_dir.display()))?;
    let mut saved_cfg = crate::output::AtomicFile::create(&cfg.output_dir.join("config.toml"))?;
    saved_cfg.write_all(cfg.to_toml().as_bytes())?;
    saved_cfg.commit()?;
    let crossfit_dirs = if cfg.crossfit_folds > 0 {
        match crossfit_copies(cfg, progress)? {
            Ok(dirs) => dirs,
            Err(copy) => {
                return Ok(Summary {
                    output_dir: cfg.output_dir.clone(),
                    ..copy
                })
            }
        }
    } else {
        Vec::new()
    };
    let mut tagger = build_tagger(cfg, &data, resume_from)?;
    let teachers = cfg
        .distill_from
        .iter()
        .map(|dir| load_teacher(dir, &tagger))
        .collect::<Result<Vec<_>>>()?;
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
    // Checkpoints keep the full lexicon (and statistics); dev evaluation and
    // training use them without the dev-only words.
    let full_features = tagger.features.clone();
    let reference = cfg
        .dev_oov_reference
        .as_deref()
        .map(read_word_set)
        .transpose()?;
    tagger.features = dev_features(&full_features, &data, cfg.dev_oov_rate, reference.as_ref());
    // Kept for inspection: the lists dev scores were measured with.
    if let Some(dev) = &tagger.features.lexicon {
        dev.save(&cfg.output_dir.join("dev-lexicon.safetensors"))?;
    }
    if let Some(dev) = &tagger.features.list_stats {
        dev.save(&cfg.output_dir.join("dev-liststats.safetensors"))?;
    }
    let perturb = |epoch: usize| {
        let seed = cfg.seed ^ (epoch as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03);
        Perturb {
            lexicon: (full_features.lexicon.is_some() && cfg.lexicon_dropout > 0.0)
                .then_some((seed, cfg.lexicon_dropout)),
            units: (cfg.unit_dropout > 0.0).then_some((seed ^ 1, cfg.unit_dropout)),
            heldout: (cfg.heldout_folds > 0).then_some(Heldout {
                seed: seed ^ 2,
                folds: cfg.heldout_folds,
                hide: cfg.heldout_hide,
                bigram_min_count: cfg.bigram_min_count,
            }),
        }
    };
    // Lexicon words as extra training sentences: never the dev words the
    // training split lacks, so dev scores stay honest.
    let pseudo_words: Vec<String> = match (&cfg.lexicon, cfg.lexicon_examples > 0.0) {
        (Some(path), true) => {
            let dev_only: HashSet<&str> = dev_only_words(&data).collect();
            crate::corpus::read_word_list(path)?
                .into_iter()
                .map(|(w, _)| w)
                .filter(|w| !dev_only.contains(w.as_str()) && w.chars().count() <= 32)
                .collect()
        }
        _ => Vec::new(),
    };
    let epoch_sentences = |epoch: usize| -> std::borrow::Cow<[Vec<String>]> {
        if pseudo_words.is_empty() {
            return std::borrow::Cow::Borrowed(&data.train);
        }
        let mut all = data.train.clone();
        all.extend(lexicon_sentences(
            &pseudo_words,
            cfg.lexicon_examples,
            cfg.seed ^ (epoch as u64).wrapping_mul(0xA076_1D64_78BD_642F),
        ));
        std::borrow::Cow::Owned(all)
    };
    let mut train_windows = windows(
        &epoch_sentences(resumed.as_ref().map_or(0, |s| s.epoch)),
        &tagger.vocab,
        cfg.max_length - 2,
        &tagger.features,
        Perturb::default(),
    );
    let crossfit = if crossfit_dirs.is_empty() {
        None
    } else {
        let copies = crossfit_dirs
            .iter()
            .map(|d| Tagger::load(&d.to_string_lossy(), &tagger.device))
            .collect::<Result<Vec<_>>>()?;
        let targets = crossfit_targets(&copies, &data.train, cfg.max_length - 2)?;
        if targets.len() != train_windows.len()
            || targets
                .iter()
                .zip(&train_windows)
                .any(|(t, w)| t.len() != w.ids.len())
        {
            bail!("internal error: cross-fitted targets do not line up with the training windows");
        }
        Some(targets)
    };
    let mut lengths: Vec<usize> = train_windows.iter().map(|w| w.ids.len()).collect();
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
    if let (Some(dir), Some(resumed)) = (resume_from, resumed) {
        opt.load_state(dir.join("optimizer.safetensors"))?;
        state = resumed;
        if state.total_steps != total {
            bail!(
                "--resume: the checkpoint was trained for {} steps but this config gives {total}; resume with the same config",
                state.total_steps
            );
        }
    }
    let log_path = cfg.output_dir.join("metrics.jsonl");
    if resume_from.is_some() {
        // Lines written after the checkpoint are about to be written again.
        truncate_log_after(&log_path, state.step)?;
    }
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)?;
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

    let biases: Vec<f32> = if cfg.tune_boundary_bias {
        (-12..=12).map(|k| k as f32 * 0.25).collect()
    } else {
        vec![0.0]
    };
    let evaluate_and_save = |tagger: &mut Tagger,
                             opt: &AdamW,
                             state: &mut TrainerState,
                             log: &mut std::fs::File|
     -> Result<Counts> {
        let t0 = Instant::now();
        let (c, bias) = evaluate(&*tagger, &data.dev, words.as_ref(), &biases)?;
        if cfg.tune_boundary_bias {
            tagger.config.extra.insert(
                crate::tagger::BOUNDARY_BIAS_KEY.into(),
                serde_json::json!(bias),
            );
        }
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
                "boundary_bias": bias, "eval_seconds": t0.elapsed().as_secs_f64(), "elapsed_s": started.elapsed().as_secs_f64(), "best": improved,
            })
        )?;
        if improved {
            save_checkpoint(&best_dir, tagger, cfg, &full_features, None)?;
        }
        save_checkpoint(&last_dir, tagger, cfg, &full_features, Some((opt, state)))?;
        Ok(c)
    };

    'epochs: while state.step < total {
        let mut rng = rand::rngs::StdRng::seed_from_u64(
            cfg.seed ^ (state.epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
        );
        let p = perturb(state.epoch);
        if p.lexicon.is_some()
            || p.units.is_some()
            || p.heldout.is_some()
            || !pseudo_words.is_empty()
        {
            // A fresh draw of hidden lexicon entries, [UNK] units and lexicon
            // sentences each epoch.
            train_windows = windows(
                &epoch_sentences(state.epoch),
                &tagger.vocab,
                cfg.max_length - 2,
                &tagger.features,
                p,
            );
            lengths = train_windows.iter().map(|w| w.ids.len()).collect();
        }
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
            let logits = tagger.model.forward_with(
                &batch.input_ids,
                &batch.attention_mask,
                &batch.features,
                Some(&mut dropout),
            )?;
            let mut loss = masked_cross_entropy(&logits, labels)?;
            // Soft targets and their weight: the cross-fitted copies' or the
            // teachers' (the config allows one kind at most).
            let soft = match &crossfit {
                Some(targets) => {
                    let rows: Vec<&[[f32; NUM_LABELS]]> =
                        idx.iter().map(|&i| targets[i].as_slice()).collect();
                    Some((soft_targets_batch(&rows, &batch)?, cfg.crossfit_weight))
                }
                None if !teachers.is_empty() => {
                    Some((teacher_probs(&teachers, &batch)?, cfg.distill_weight))
                }
                None => None,
            };
            if let Some((soft, a)) = soft {
                loss = ((loss * (1.0 - a))?
                    + (masked_soft_cross_entropy(&logits, &soft, labels)? * a)?)?;
            }
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
                let c =
                    bar.suspend(|| evaluate_and_save(&mut tagger, &opt, &mut state, &mut log))?;
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
        saved_at_stop: interrupted.then(|| last_dir.clone()),
        output_dir: cfg.output_dir.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::ListStats;

    fn sentence(line: usize, words: &[&str]) -> Sentence {
        Sentence {
            line,
            words: words.iter().map(|w| w.to_string()).collect(),
        }
    }

    #[test]
    fn dev_lexicon_hides_dev_only_words_up_to_the_target() {
        let data = Data {
            train: vec![vec!["我们".into(), "学习".into()]],
            dev: vec![
                sentence(1, &["我们", "研究", "经济"]),
                sentence(2, &["我们", "研究", "市场", "经济"]),
            ],
            inner_boundaries: 0,
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
        let dev = dev_features(&full, &data, None, None);
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
        let some = lexicon(dev_features(&full, &data, Some(0.25), None));
        let hidden: usize = ["研究", "经济", "市场"]
            .iter()
            .filter(|w| !some.contains(w))
            .map(|w| if *w == "市场" { 1 } else { 2 })
            .sum();
        assert!((2..=3).contains(&hidden), "{hidden} tokens hidden");
        assert!(some.contains("我们"));
        assert_eq!(
            lexicon(dev_features(&full, &data, Some(0.0), None)).len(),
            listed.len()
        );
        // With a reference list only the dev-only words it lacks are hidden.
        let reference: HashSet<String> = ["研究".to_string()].into();
        let rare = lexicon(dev_features(&full, &data, None, Some(&reference)));
        assert!(rare.contains("研究") && rare.contains("我们"));
        assert!(!rare.contains("经济") && !rare.contains("市场"));
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
        };
        for (hide, min_count) in [(1.0, 1), (0.0, 2)] {
            let h = Heldout {
                seed: 3,
                folds: 3,
                hide,
                bigram_min_count: min_count,
            };
            let (fold_of, views) = fold_views(&sentences, &spec, h);
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
