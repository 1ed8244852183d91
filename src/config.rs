//! Training configuration: a TOML file (unknown keys rejected) plus command-line
//! overrides, validated once into the settings `cws train` runs with. The
//! resolved configuration is saved next to every checkpoint.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Where the vocabulary comes from.
pub const VOCAB_FROM_TRAIN: &str = "train";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Model source: a hub id (`bert-base-chinese`), a local folder, or
    /// `config:PATH` for a fresh model (see docs/model-sources.md).
    pub model: String,
    /// `train` builds the vocabulary from the training data (fresh models
    /// only); a path names a vocab.txt / tokenizer.json; absent uses the model's.
    pub vocab: Option<String>,
    /// Segmented training corpus.
    pub train: PathBuf,
    /// The segmentation standard the training corpus follows (`pku`, `msr`),
    /// recorded in the model's config for `cws segment --standard`.
    pub standard: Option<crate::model::Standard>,
    /// More segmented corpora, each by its own standard, trained into the same
    /// model (multi-criteria training; `[[joint]]` tables after the top-level
    /// keys): the model then segments by any of the standards (`--standard`),
    /// reading each one's own `lexicon` and a learned vector per standard. The
    /// top-level corpus needs a `standard` then; every corpus's dev split is
    /// scored on its own and the run selects on their mean F1.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub joint: Vec<JointCorpus>,
    /// How a joint model reads the standard: `column` (a learned vector per
    /// standard added at every position) or `token` (a learned token per
    /// standard in [CLS]'s place).
    #[serde(default, skip_serializing_if = "is_default")]
    pub joint_standard_input: crate::model::StandardInput,
    /// Segmented dev corpus; if absent, `dev_fraction` of the training lines,
    /// taken from the end, is held out.
    pub dev: Option<PathBuf>,
    #[serde(default = "default_dev_fraction")]
    pub dev_fraction: f64,
    /// Training word list, for OOV figures in dev evaluations.
    pub words: Option<PathBuf>,
    /// Word list read as lexicon features (see `features`): for each unit, which
    /// entries start, end, contain or are it. The training split's own words are
    /// added to it. Fresh models only; the list is saved hashed with the model.
    pub lexicon: Option<PathBuf>,
    /// Fraction of lexicon entries hidden from each training epoch (a fresh
    /// draw per epoch), so the model learns to segment words the list lacks.
    #[serde(default = "default_lexicon_dropout")]
    pub lexicon_dropout: f64,
    /// With `lexicon`: also read word-list statistics per unit (how many listed
    /// words it begins, is inside, ends; how many hold its left and right
    /// bigram), saved with the model as liststats.safetensors.
    #[serde(default)]
    pub lexicon_stats: bool,
    /// A general word list (`WORD [FREQUENCY [TAG]]` per line, e.g. jieba's
    /// dictionary) read as a second channel of lexicon features with its own
    /// embeddings, so that the standard's `lexicon` keeps deciding granularity
    /// while this one points at words it lacks. Fresh models only; saved
    /// hashed with the model as general_lexicon.safetensors.
    pub general_lexicon: Option<PathBuf>,
    /// With `general_lexicon`: leave out its entries whose frequency (the
    /// second field, as jieba's dictionary gives it) is below this (entries
    /// without one stay); 0 = every entry.
    #[serde(default, skip_serializing_if = "is_default")]
    pub general_lexicon_min_frequency: f64,
    /// With `general_lexicon`: its entries of at least this frequency (the
    /// second column) are marked a second time, by ten match bits of their
    /// own, so the model can weigh common words and rare ones apart; 0 = off.
    #[serde(default, skip_serializing_if = "is_default")]
    pub general_lexicon_frequent: f64,
    /// With `general_lexicon`: also read its word-list statistics (as
    /// `lexicon_stats` does for `lexicon`), saved as
    /// general_liststats.safetensors.
    #[serde(default)]
    pub general_lexicon_stats: bool,
    /// Teacher models (folders saved by `cws train`, of any size, vocabulary
    /// and features; each reads the sentences its own way): the loss mixes the
    /// gold labels with the teachers' mean label probabilities (distillation);
    /// empty = off.
    #[serde(default)]
    pub distill_from: Vec<PathBuf>,
    /// Weight of the teachers' probabilities in the loss (the gold labels get
    /// the rest).
    #[serde(default = "default_distill_weight")]
    pub distill_weight: f64,
    /// Raw, unsegmented text files (one sentence or paragraph per line) that
    /// the `distill_from` teachers label before training (cached in
    /// `OUTPUT_DIR/distill-text.safetensors`); their windows join the
    /// training data with the teachers' probabilities as their only targets.
    #[serde(default)]
    pub distill_text: Vec<PathBuf>,
    /// Weight of the `distill_text` windows' loss beside the gold windows'.
    #[serde(default = "default_distill_weight")]
    pub distill_text_weight: f64,
    /// Cross-fitted self-distillation: first train this many copies of the
    /// recipe (in `OUTPUT_DIR/crossfit/K`), copy K without the training
    /// sentences whose index is K modulo this number; then the loss mixes the
    /// gold labels with the label probabilities each sentence gets from the
    /// copy that did not train on it. 0 = off.
    #[serde(default)]
    pub crossfit_folds: usize,
    /// Weight of the cross-fitted copies' probabilities in the loss (the gold
    /// labels get the rest).
    #[serde(default = "default_distill_weight")]
    pub crossfit_weight: f64,
    /// `[k, n]`: train without the training sentences whose index is k modulo
    /// n (after the dev split); how `crossfit_folds` trains its copies.
    pub exclude_fold: Option<[usize; 2]>,
    /// Each epoch, this fraction of the lexicon's words (a fresh draw) joins the
    /// training data as pseudo-sentences of listed words; 0 = off.
    #[serde(default)]
    pub lexicon_examples: f64,
    /// Fraction of training units replaced by [UNK] (their bigrams too), a
    /// fresh draw each epoch: the model cannot just memorise the training
    /// words and learns to read the lexicon features for words it never saw.
    #[serde(default)]
    pub unit_dropout: f64,
    /// A word that stands in for every word longer than four units in the
    /// training corpus (the public 10% files write `L`): each is replaced by a
    /// word of five or more units drawn from the `lexicon` list, in the
    /// training and the dev sentences alike.
    pub long_word_placeholder: Option<String>,
    /// Held-out features, a fresh deal each epoch: training sentences are dealt
    /// into this many folds and each sees units, bigrams (with
    /// `bigram_min_count`) and lexicon entries as the other folds have them, so
    /// that unseen words look in training as they will at test time; 0 = off.
    #[serde(default)]
    pub heldout_folds: usize,
    /// With `heldout_folds`: the fraction of a sentence's words that no other
    /// fold has which are also hidden from the lexicon.
    #[serde(default)]
    pub heldout_hide: f64,
    /// At each dev evaluation, also pick the boundary bias (added to the scores
    /// of word-ending labels, -3 to 3 in steps of 0.25) that scores best on dev,
    /// and save it with the checkpoint; `cws segment` then decodes with it.
    #[serde(default)]
    pub tune_boundary_bias: bool,
    /// Output layer: `softmax` (a label per unit) or `crf` (learned label
    /// transitions, trained on the sequence's likelihood). Fresh or
    /// pretrained models.
    #[serde(default)]
    pub head: crate::model::Head,
    /// With bigram features: only bigrams seen this many times in the training
    /// split get a bucket; others share the "unseen" one (saved hashed as
    /// bigrams.safetensors). 0 = every bigram is hashed to a bucket.
    #[serde(default)]
    pub bigram_min_count: usize,
    /// Dev evaluation with a lexicon: hide dev words the training split lacks
    /// from the list until this fraction of dev tokens is out of it (set it to
    /// the expected test OOV rate); unset hides them all (pessimistic).
    pub dev_oov_rate: Option<f64>,
    /// Dev evaluation with a lexicon: hide only dev-only words that this
    /// word list (another corpus's, e.g. the other bakeoff corpus) lacks too,
    /// so the hidden words are rare ones like a test set's unseen words.
    pub dev_oov_reference: Option<PathBuf>,
    /// Hashed character-bigram embeddings (left and right neighbour) with this
    /// many buckets; 0 = none. Fresh models only.
    #[serde(default)]
    pub bigram_buckets: usize,
    /// Longest model input in tokens, [CLS] and [SEP] included.
    #[serde(default = "default_max_length")]
    pub max_length: usize,
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Passes over the training data (ignored when `max_steps` is set).
    #[serde(default = "default_epochs")]
    pub epochs: usize,
    pub max_steps: Option<usize>,
    /// Peak learning rate. Default: 3e-5 for a pretrained model (the usual
    /// BERT fine-tuning rate), 1e-3 for a fresh one (`config:PATH`).
    pub learning_rate: f64,
    /// Linear warmup, as a fraction of all steps.
    #[serde(default = "default_warmup")]
    pub warmup: f64,
    #[serde(default = "default_weight_decay")]
    pub weight_decay: f64,
    /// Gradient clipping by global norm; 0 disables it.
    #[serde(default = "default_grad_clip")]
    pub grad_clip: f64,
    /// Overrides the model's hidden/attention/classifier dropout when set.
    pub dropout: Option<f64>,
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Evaluate on dev (and checkpoint) every this many steps; 0 = once per epoch.
    #[serde(default)]
    pub eval_every: usize,
    pub output_dir: PathBuf,
    /// auto, cpu, cuda or cuda:N.
    #[serde(default)]
    pub device: DeviceChoice,
    /// f32; or mixed precision for CUDA: bf16 (activations and matmuls in
    /// bf16 over f32 master weights) or f16 (the same, with dynamic loss scaling).
    #[serde(default)]
    pub precision: Precision,
}

/// A corpus of a joint (multi-criteria) run: its text, standard and word
/// lists, read as the top-level keys of the same names read the first corpus.
/// Its dev split is the last `dev_fraction` of its lines.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JointCorpus {
    pub train: PathBuf,
    pub standard: crate::model::Standard,
    pub words: Option<PathBuf>,
    pub lexicon: Option<PathBuf>,
    pub dev_oov_rate: Option<f64>,
    pub dev_oov_reference: Option<PathBuf>,
}

/// One corpus of a run, first the top-level one then each `[[joint]]` one,
/// as the data phases read them.
#[derive(Debug, Clone, Copy)]
pub struct CorpusRef<'a> {
    pub train: &'a Path,
    pub standard: Option<crate::model::Standard>,
    pub words: Option<&'a Path>,
    pub lexicon: Option<&'a Path>,
    pub dev_oov_rate: Option<f64>,
    pub dev_oov_reference: Option<&'a Path>,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

fn default_dev_fraction() -> f64 {
    0.1
}
fn default_distill_weight() -> f64 {
    0.5
}

fn default_lexicon_dropout() -> f64 {
    0.1
}
fn default_max_length() -> usize {
    128
}
fn default_batch_size() -> usize {
    32
}
fn default_epochs() -> usize {
    3
}
fn default_warmup() -> f64 {
    0.1
}
fn default_weight_decay() -> f64 {
    0.01
}
fn default_grad_clip() -> f64 {
    1.0
}
fn default_seed() -> u64 {
    42
}
/// Training precision: f32, or mixed precision (activations and matmuls in
/// bf16 or f16 over f32 master weights; f16 with dynamic loss scaling).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    Bf16,
    F16,
}

impl Precision {
    /// The activation dtype.
    pub fn dtype(self) -> candle_core::DType {
        match self {
            Precision::F32 => candle_core::DType::F32,
            Precision::Bf16 => candle_core::DType::BF16,
            Precision::F16 => candle_core::DType::F16,
        }
    }
}

/// The fields that hold paths: relative ones are taken relative to the
/// config file's folder (or, given on the command line, the current folder).
pub const PATH_FIELDS: [&str; 10] = [
    "train",
    "dev",
    "words",
    "lexicon",
    "general_lexicon",
    "dev_oov_reference",
    "output_dir",
    "distill_from",
    "distill_text",
    "vocab",
];

/// Where a run's soft targets come from: the config's `distill_from` and
/// `crossfit_folds` are two sources, and validation keeps them apart.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SoftSource<'a> {
    /// Gold labels only.
    None,
    /// Trained models (`distill_from`), mixed in with `weight`.
    Teachers { models: &'a [PathBuf], weight: f64 },
    /// `folds` copies of the recipe, each labelling the sentences it did not
    /// train on (`crossfit_folds`), mixed in with `weight`.
    CrossFit { folds: usize, weight: f64 },
}

impl TrainConfig {
    /// The run's corpora: the top-level one, then the `[[joint]]` ones.
    pub fn corpora(&self) -> Vec<CorpusRef<'_>> {
        let first = CorpusRef {
            train: &self.train,
            standard: self.standard,
            words: self.words.as_deref(),
            lexicon: self.lexicon.as_deref(),
            dev_oov_rate: self.dev_oov_rate,
            dev_oov_reference: self.dev_oov_reference.as_deref(),
        };
        std::iter::once(first)
            .chain(self.joint.iter().map(|j| CorpusRef {
                train: &j.train,
                standard: Some(j.standard),
                words: j.words.as_deref(),
                lexicon: j.lexicon.as_deref(),
                dev_oov_rate: j.dev_oov_rate,
                dev_oov_reference: j.dev_oov_reference.as_deref(),
            }))
            .collect()
    }

    /// The standards of a joint run, in corpus order (empty for one corpus).
    pub fn joint_standards(&self) -> Vec<crate::model::Standard> {
        if self.joint.is_empty() {
            return Vec::new();
        }
        self.corpora().iter().filter_map(|c| c.standard).collect()
    }

    /// The run's source of soft targets (the config is validated: at most one).
    pub fn soft_source(&self) -> SoftSource<'_> {
        match (self.crossfit_folds, self.distill_from.as_slice()) {
            (0, []) => SoftSource::None,
            (0, models) => SoftSource::Teachers {
                models,
                weight: self.distill_weight,
            },
            (folds, _) => SoftSource::CrossFit {
                folds,
                weight: self.crossfit_weight,
            },
        }
    }

    /// Parses a config file: `${VAR}` in its paths is expanded and relative
    /// paths are resolved against the file's own folder.
    pub fn load(path: &Path) -> Result<Self> {
        Self::load_with(path, &toml::Table::new())
    }

    /// [`TrainConfig::load`] with `overrides` (keys of this struct, paths
    /// already resolved) replacing the file's values before it is read, so
    /// that unknown keys and bad values are caught the same way.
    pub fn load_with(path: &Path, overrides: &toml::Table) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        // The absolute path's folder: a bare file name's parent is "".
        let absolute =
            std::path::absolute(path).with_context(|| format!("cannot read {}", path.display()))?;
        let base = absolute.parent().unwrap_or(Path::new("/")).to_path_buf();
        let from_file = || -> Result<toml::Table> {
            let mut table: toml::Table = text.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
            resolve_paths(&mut table, &base)?;
            Ok(table)
        };
        let table = from_file().with_context(|| format!("in {}", path.display()))?;
        Self::from_table(table, overrides).with_context(|| format!("in {}", path.display()))
    }

    /// Parses config text as it is (paths untouched).
    pub fn parse(text: &str) -> Result<Self> {
        let table: toml::Table = text.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
        Self::from_table(table, &toml::Table::new())
    }

    /// The config a table gives with `overrides` replacing its keys, validated.
    pub fn from_table(mut table: toml::Table, overrides: &toml::Table) -> Result<Self> {
        for (key, value) in overrides {
            table.insert(key.clone(), value.clone());
        }
        // Defaults that depend on other fields; the rest are serde defaults.
        if !table.contains_key("learning_rate") {
            let fresh = table
                .get("model")
                .and_then(toml::Value::as_str)
                .is_some_and(|m| m.starts_with("config:"));
            let lr = if fresh { 1e-3 } else { 3e-5 };
            table.insert("learning_rate".into(), toml::Value::Float(lr));
        }
        let cfg: TrainConfig = table.try_into().map_err(|e| anyhow::anyhow!("{e}"))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The config as a TOML table (its keys, in field order).
    pub fn to_table(&self) -> toml::Table {
        toml::Table::try_from(self).expect("a config serialises")
    }

    pub fn validate(&self) -> Result<()> {
        if self.max_length < 3 {
            bail!("max_length must be at least 3 (found {})", self.max_length);
        }
        if self.batch_size == 0 {
            bail!("batch_size must be positive");
        }
        if !(0.0..1.0).contains(&self.dev_fraction) {
            bail!(
                "dev_fraction must be in [0, 1) (found {})",
                self.dev_fraction
            );
        }
        if !(0.0..=1.0).contains(&self.warmup) {
            bail!(
                "warmup is a fraction of all steps, in [0, 1] (found {})",
                self.warmup
            );
        }
        if self.learning_rate.is_nan() || self.learning_rate <= 0.0 {
            bail!(
                "learning_rate must be positive (found {})",
                self.learning_rate
            );
        }
        if let Some(p) = self.dropout {
            if !(0.0..1.0).contains(&p) {
                bail!("dropout must be in [0, 1) (found {p})");
            }
        }
        if !(0.0..1.0).contains(&self.lexicon_dropout) {
            bail!(
                "lexicon_dropout must be in [0, 1) (found {})",
                self.lexicon_dropout
            );
        }
        if !(0.0..=1.0).contains(&self.lexicon_examples) {
            bail!(
                "lexicon_examples must be in [0, 1] (found {})",
                self.lexicon_examples
            );
        }
        if self.lexicon_examples > 0.0 && self.lexicon.is_none() {
            bail!("lexicon_examples needs a `lexicon` word list");
        }
        if !(0.0..=1.0).contains(&self.distill_weight) {
            bail!(
                "distill_weight must be in [0, 1] (found {})",
                self.distill_weight
            );
        }
        if !(0.0..=1.0).contains(&self.crossfit_weight) {
            bail!(
                "crossfit_weight must be in [0, 1] (found {})",
                self.crossfit_weight
            );
        }
        if self.crossfit_folds == 1 {
            bail!("crossfit_folds must be 0 (off) or at least 2");
        }
        if self.crossfit_folds > 0 && !self.distill_from.is_empty() {
            bail!("crossfit_folds and distill_from are two kinds of teachers: set one of them");
        }
        if self.crossfit_folds > 0 && self.lexicon_examples > 0.0 {
            bail!("crossfit_folds cannot label lexicon_examples pseudo-sentences: set one of them");
        }
        if !self.distill_text.is_empty() && self.distill_from.is_empty() {
            bail!("distill_text is labelled by the distill_from teachers: name at least one");
        }
        if !(self.distill_text_weight >= 0.0 && self.distill_text_weight.is_finite()) {
            bail!(
                "distill_text_weight must be 0 or more (found {})",
                self.distill_text_weight
            );
        }
        if !self.distill_from.is_empty() && self.lexicon_examples > 0.0 {
            bail!("distill_from teachers label the training sentences, not lexicon_examples pseudo-sentences: set one of them");
        }
        if let Some([k, n]) = self.exclude_fold {
            if n < 2 || k >= n {
                bail!("exclude_fold = [k, n] needs n >= 2 and k < n (found [{k}, {n}])");
            }
        }
        if self.lexicon_stats && self.lexicon.is_none() {
            bail!("lexicon_stats needs a `lexicon` word list");
        }
        if !(self.general_lexicon_frequent >= 0.0 && self.general_lexicon_frequent.is_finite()) {
            bail!(
                "general_lexicon_frequent must be 0 or more (found {})",
                self.general_lexicon_frequent
            );
        }
        if !(self.general_lexicon_min_frequency >= 0.0
            && self.general_lexicon_min_frequency.is_finite())
        {
            bail!(
                "general_lexicon_min_frequency must be 0 or more (found {})",
                self.general_lexicon_min_frequency
            );
        }
        if self.general_lexicon_stats && self.general_lexicon.is_none() {
            bail!("general_lexicon_stats needs a `general_lexicon` word list");
        }
        if self.general_lexicon_frequent > 0.0 && self.general_lexicon.is_none() {
            bail!("general_lexicon_frequent needs a `general_lexicon` word list");
        }
        if !(0.0..1.0).contains(&self.unit_dropout) {
            bail!(
                "unit_dropout must be in [0, 1) (found {})",
                self.unit_dropout
            );
        }
        if self.heldout_folds == 1 {
            bail!("heldout_folds must be 0 (off) or at least 2");
        }
        if !(0.0..=1.0).contains(&self.heldout_hide) {
            bail!(
                "heldout_hide must be in [0, 1] (found {})",
                self.heldout_hide
            );
        }
        if let Some(r) = self.dev_oov_rate {
            if !(0.0..=1.0).contains(&r) {
                bail!("dev_oov_rate must be in [0, 1] (found {r})");
            }
        }
        if self.bigram_buckets == 1 {
            bail!("bigram_buckets must be 0 (off) or at least 2");
        }
        if !self.joint.is_empty() {
            let Some(first) = self.standard else {
                bail!("[[joint]] corpora need a `standard` for the top-level corpus too");
            };
            let mut seen = vec![first];
            for j in &self.joint {
                if seen.contains(&j.standard) {
                    bail!(
                        "[[joint]]: two corpora follow the {} standard; each standard once",
                        j.standard.name()
                    );
                }
                seen.push(j.standard);
                if j.lexicon.is_none() || self.lexicon.is_none() {
                    bail!(
                        "[[joint]] runs need a `lexicon` for every corpus: each standard's vector \
                         is read with its own list's bits"
                    );
                }
                if let Some(r) = j.dev_oov_rate {
                    if !(0.0..=1.0).contains(&r) {
                        bail!("dev_oov_rate must be in [0, 1] (found {r})");
                    }
                }
            }
            if self.dev.is_some() {
                bail!("[[joint]] runs take each corpus's dev split (`dev_fraction`), not a `dev` file");
            }
            if self.lexicon_stats || self.lexicon_examples > 0.0 || !self.distill_from.is_empty() {
                bail!(
                    "[[joint]] runs do not support lexicon_stats, lexicon_examples or distill_from"
                );
            }
        }
        if self.dev.is_none() && self.dev_fraction == 0.0 {
            bail!("no dev data: set `dev` or a positive `dev_fraction`");
        }
        Ok(())
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a config serialises")
    }
}

/// Expands `${VAR}` (and `${VAR:-default}`) in the path fields of a config
/// table and makes relative paths absolute against `base`. A variable's value
/// that is a relative path is taken relative to the current folder, as the
/// shell that set it would; `model` counts as a path in its `config:PATH`
/// form, or when it names an existing folder under `base`.
pub fn resolve_paths(table: &mut toml::Table, base: &Path) -> Result<()> {
    let resolve = |key: &str, s: &str| -> Result<String> {
        let expanded = expand_vars(s).with_context(|| format!("in `{key}`"))?;
        Ok(normalize(&base.join(expanded)).display().to_string())
    };
    for key in PATH_FIELDS {
        match table.get_mut(key) {
            Some(toml::Value::String(s)) if !(key == "vocab" && s == VOCAB_FROM_TRAIN) => {
                *s = resolve(key, s)?;
            }
            Some(toml::Value::Array(items)) => {
                for item in items {
                    if let toml::Value::String(s) = item {
                        *s = resolve(key, s)?;
                    }
                }
            }
            _ => {}
        }
    }
    if let Some(toml::Value::Array(corpora)) = table.get_mut("joint") {
        for corpus in corpora {
            if let toml::Value::Table(t) = corpus {
                resolve_paths(t, base)?;
            }
        }
    }
    if let Some(toml::Value::String(model)) = table.get_mut("model") {
        if let Some(path) = model.strip_prefix("config:") {
            *model = format!("config:{}", resolve("model", path)?);
        } else {
            let expanded = expand_vars(model).context("in `model`")?;
            let local = normalize(&base.join(&expanded));
            *model = if local.is_dir() {
                local.display().to_string()
            } else {
                expanded
            };
        }
    }
    Ok(())
}

/// `path` without `.` components and with each `..` taking out the name
/// before it (as written, without following links).
pub fn normalize(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir
                if matches!(out.components().next_back(), Some(Component::Normal(_))) =>
            {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// `s` with `${VAR}` and `${VAR:-default}` replaced; an unset variable
/// without a default is an error naming it.
pub fn expand_vars(s: &str) -> Result<String> {
    let mut out = String::new();
    let mut rest = s;
    while let Some(at) = rest.find("${") {
        out.push_str(&rest[..at]);
        let body_end = rest[at..]
            .find('}')
            .with_context(|| format!("unclosed `${{` in {s:?}"))?;
        let body = &rest[at + 2..at + body_end];
        let (name, default) = match body.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (body, None),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            bail!("expected a variable name in `${{{body}}}` in {s:?}");
        }
        match (std::env::var(name).ok().filter(|v| !v.is_empty()), default) {
            (Some(v), _) => {
                // A relative value means what it meant where the variable was set.
                if out.is_empty() && Path::new(&v).is_relative() {
                    out.push_str(&std::path::absolute(&v)?.display().to_string());
                } else {
                    out.push_str(&v);
                }
            }
            (None, Some(d)) => out.push_str(d),
            (None, None) => bail!("{s:?} uses ${{{name}}}, which is not set"),
        }
        rest = &rest[at + body_end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Device names accepted by `--device`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    #[default]
    Auto,
    Cpu,
    Cuda(usize),
}

impl std::fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceChoice::Auto => f.write_str("auto"),
            DeviceChoice::Cpu => f.write_str("cpu"),
            DeviceChoice::Cuda(0) => f.write_str("cuda"),
            DeviceChoice::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl Serialize for DeviceChoice {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DeviceChoice {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_device(&s).map_err(serde::de::Error::custom)
    }
}

pub fn parse_device(s: &str) -> Result<DeviceChoice> {
    Ok(match s {
        "auto" => DeviceChoice::Auto,
        "cpu" => DeviceChoice::Cpu,
        "cuda" => DeviceChoice::Cuda(0),
        _ => match s.strip_prefix("cuda:").and_then(|n| n.parse().ok()) {
            Some(n) => DeviceChoice::Cuda(n),
            None => bail!("unknown device {s:?}: expected auto, cpu, cuda or cuda:N"),
        },
    })
}

/// The candle device for a choice: `auto` takes CUDA device 0 when this build
/// has CUDA and one is present, else the CPU.
pub fn open_device(choice: DeviceChoice) -> Result<candle_core::Device> {
    match choice {
        DeviceChoice::Cpu => Ok(candle_core::Device::Cpu),
        DeviceChoice::Auto => {
            if candle_core::utils::cuda_is_available() {
                if let Ok(d) = candle_core::Device::new_cuda(0) {
                    return Ok(d);
                }
            }
            Ok(candle_core::Device::Cpu)
        }
        DeviceChoice::Cuda(n) => {
            if !candle_core::utils::cuda_is_available() {
                bail!("--device cuda: this cws was built without CUDA (build with `--features cuda`, see docs/cuda.md)");
            }
            candle_core::Device::new_cuda(n).with_context(|| format!("cannot open CUDA device {n}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = "model = \"config:c.json\"\ntrain = \"t.txt\"\noutput_dir = \"out\"\n";

    #[test]
    fn defaults_and_unknown_keys() {
        let c = TrainConfig::parse(MIN).unwrap();
        assert_eq!((c.max_length, c.batch_size, c.seed), (128, 32, 42));
        assert_eq!(c.learning_rate, 1e-3, "a fresh model's default");
        let tuned = TrainConfig::parse(&MIN.replace("config:c.json", "bert-base-chinese")).unwrap();
        assert_eq!(tuned.learning_rate, 3e-5, "a pretrained model's default");
        let err = TrainConfig::parse(&format!("{MIN}learning_rat = 1\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `learning_rat`"), "{err}");
    }

    #[test]
    fn joint_corpora_need_a_standard_each_and_their_lexicons() {
        let joint = "[[joint]]\ntrain = \"m.txt\"\nstandard = \"msr\"\nlexicon = \"m.words\"\n";
        let with = |top: &str| TrainConfig::parse(&format!("{MIN}{top}{joint}"));
        let c = with("standard = \"pku\"\nlexicon = \"p.words\"\n").unwrap();
        use crate::model::Standard::{Msr, Pku};
        assert_eq!(c.joint_standards(), [Pku, Msr]);
        let corpora = c.corpora();
        assert_eq!(corpora[1].train, Path::new("m.txt"));
        assert_eq!(corpora[1].lexicon, Some(Path::new("m.words")));
        // Written and read back (cws-train.toml, a run's config.toml).
        assert_eq!(TrainConfig::parse(&c.to_toml()).unwrap(), c);
        // Their paths are relative to the config file, like the top level's.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("j.toml");
        std::fs::write(
            &file,
            format!("{MIN}standard = \"pku\"\nlexicon = \"p\"\n{joint}"),
        )
        .unwrap();
        let loaded = TrainConfig::load(&file).unwrap();
        let base = std::path::absolute(dir.path()).unwrap();
        assert_eq!(loaded.joint[0].train, base.join("m.txt"));
        assert_eq!(loaded.joint[0].lexicon, Some(base.join("m.words")));
        for (top, problem) in [
            ("lexicon = \"p.words\"\n", "need a `standard`"),
            (
                "standard = \"msr\"\nlexicon = \"p.words\"\n",
                "two corpora follow the msr",
            ),
            ("standard = \"pku\"\n", "need a `lexicon` for every corpus"),
            (
                "standard = \"pku\"\nlexicon = \"p.words\"\nlexicon_stats = true\n",
                "do not support lexicon_stats",
            ),
        ] {
            let err = format!("{:#}", with(top).unwrap_err());
            assert!(err.contains(problem), "{top}: {err}");
        }
    }

    #[test]
    fn paths_are_relative_to_the_config_and_variables_expand() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("configs");
        std::fs::create_dir(&sub).unwrap();
        let file = sub.join("c.toml");
        std::fs::write(
            &file,
            "model = \"config:tiny/config.json\"\ntrain = \"${CWS_TEST_UNSET_VAR:-../data}/t.txt\"\n\
             learning_rate = 1e-3\noutput_dir = \"../runs/x\"\ndistill_from = [\"a\"]\nvocab = \"train\"\n",
        )
        .unwrap();
        let c = TrainConfig::load(&file).unwrap();
        let base = std::path::absolute(&sub).unwrap();
        let top = base.parent().unwrap();
        assert_eq!(c.train, top.join("data/t.txt"));
        assert_eq!(c.output_dir, top.join("runs/x"));
        assert_eq!(
            c.model,
            format!("config:{}", base.join("tiny/config.json").display())
        );
        assert_eq!(c.distill_from, vec![base.join("a")]);
        assert_eq!(c.vocab.as_deref(), Some("train"));
        std::fs::write(&file, "train = \"${CWS_TEST_UNSET_VAR}/t.txt\"\n").unwrap();
        let err = format!("{:#}", TrainConfig::load(&file).unwrap_err());
        assert!(
            err.contains("CWS_TEST_UNSET_VAR") && err.contains("not set") && err.contains("c.toml"),
            "{err}"
        );
        assert_eq!(
            expand_vars("/a/${PATH_NOT_A_VAR_X:-b}/c").unwrap(),
            "/a/b/c"
        );
        assert!(expand_vars("${oops").is_err());
    }

    #[test]
    fn devices() {
        assert_eq!(parse_device("cuda:1").unwrap(), DeviceChoice::Cuda(1));
        assert!(parse_device("gpu").is_err());
    }
}
