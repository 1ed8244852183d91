//! The model folder: the one contract between what `cws train` checkpoints and
//! `cws export` write, and what `segment`, `eval`, `export`, teachers and
//! `--resume` load. Every file name is here, and [`load`] / [`save`] are the
//! only reader and writer of a model.
//!
//! | file | content |
//! |------|---------|
//! | `config.json` | transformers' `BertForTokenClassification` config (B, I, E, S); cws's `cws_*` keys are [`Extensions`] |
//! | `model.safetensors` | the weights (f32, f16 or bf16) |
//! | `vocab.txt`, `tokenizer_config.json` | the unit vocabulary, as a BERT tokenizer |
//! | `lexicon.safetensors` | hashed word list, when `cws_lexicon_features` > 0 |
//! | `liststats.safetensors` | word-list statistics, when the lexicon width includes them |
//! | `bigrams.safetensors` | hashed seen bigrams, when `cws_bigram_seen` |
//! | `cws-train.toml` | the resolved training config that produced the model |
//! | `optimizer.safetensors`, `trainer_state.json` | only in a run's `last`: what `--resume` needs |
//! | `README.md` | the model card, written by people and kept by `cws export` |

use crate::bies::NUM_LABELS;
use crate::encode::Vocab;
use crate::features::{FeatureSpec, Lexicon, ListStats, LEXICON_FEATURES, LIST_STAT_FEATURES};
use crate::hub::{fetch_files, resolve_arg, HubSettings, ModelFiles, ModelSource};
use crate::model::{BertConfig, BertForTokenClassification, Extensions};
use crate::tagger::Tagger;
use crate::weights::{self, LoadOptions};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use candle_nn::VarMap;
use std::path::Path;

pub const CONFIG_FILE: &str = "config.json";
pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const VOCAB_FILE: &str = "vocab.txt";
pub const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";
pub const LEXICON_FILE: &str = "lexicon.safetensors";
pub const LIST_STATS_FILE: &str = "liststats.safetensors";
pub const BIGRAM_SEEN_FILE: &str = "bigrams.safetensors";
pub const RECIPE_FILE: &str = "cws-train.toml";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const TRAINER_STATE_FILE: &str = "trainer_state.json";
pub const MODEL_CARD_FILE: &str = "README.md";

/// The files a model or checkpoint folder may hold (those above, plus the
/// other names of weights and tokenizers a hub model may come with): anything
/// else in a folder is a user's, and is never replaced without `--force`.
pub const MODEL_FOLDER_FILES: [&str; 15] = [
    CONFIG_FILE,
    WEIGHTS_FILE,
    "pytorch_model.bin",
    VOCAB_FILE,
    "tokenizer.json",
    TOKENIZER_CONFIG_FILE,
    "special_tokens_map.json",
    LEXICON_FILE,
    BIGRAM_SEEN_FILE,
    LIST_STATS_FILE,
    RECIPE_FILE,
    OPTIMIZER_FILE,
    TRAINER_STATE_FILE,
    MODEL_CARD_FILE,
    ".gitattributes",
];

/// A model folder compiled into the binary: its files by name.
pub struct Embedded {
    /// What errors and notes call it.
    pub name: &'static str,
    pub files: &'static [(&'static str, &'static [u8])],
}

/// The default model, compiled in with the cargo feature `embedded-model`
/// (on by default): the bundled PKU model, `models/pku`.
#[cfg(feature = "embedded-model")]
pub const EMBEDDED: Option<&Embedded> = Some(&Embedded {
    name: "the built-in PKU model",
    files: &[
        (CONFIG_FILE, include_bytes!("../models/pku/config.json")),
        (
            WEIGHTS_FILE,
            include_bytes!("../models/pku/model.safetensors"),
        ),
        (VOCAB_FILE, include_bytes!("../models/pku/vocab.txt")),
        (
            LEXICON_FILE,
            include_bytes!("../models/pku/lexicon.safetensors"),
        ),
        (
            BIGRAM_SEEN_FILE,
            include_bytes!("../models/pku/bigrams.safetensors"),
        ),
        (MODEL_CARD_FILE, include_bytes!("../models/pku/README.md")),
    ],
});
#[cfg(not(feature = "embedded-model"))]
pub const EMBEDDED: Option<&Embedded> = None;

/// The variable naming the model used when `--model` is not given.
pub const MODEL_VAR: &str = "CWS_MODEL";

/// Loads the model `--model` names, or without one the default: `$CWS_MODEL`
/// when set, else the model compiled into the binary.
pub fn load_or_default(model: Option<&str>, device: &Device) -> Result<Tagger> {
    if let Some(m) = model {
        return load(m, device);
    }
    if let Some(m) = std::env::var(MODEL_VAR).ok().filter(|m| !m.is_empty()) {
        return load(&m, device).with_context(|| format!("loading ${MODEL_VAR}={m}"));
    }
    match EMBEDDED {
        Some(embedded) => load_from(&Files::Embedded(embedded), embedded.name, device),
        None => bail!(
            "no model given, and this cws was built without its default model (cargo feature \
             `embedded-model`): pass --model DIR (a folder saved by `cws train`) or a hub id, \
             set ${MODEL_VAR}, or use --dict-only WORDLIST for the dictionary baseline"
        ),
    }
}

/// Loads a trained model from a model source (folder or hub id) for the CPU
/// or an accelerator; see [`load_files`].
pub fn load(source: &str, device: &Device) -> Result<Tagger> {
    let settings = HubSettings::from_env();
    let (resolved, files) = resolve_arg(source, &settings)?;
    if let ModelSource::Hub { repo_id, revision } = &resolved {
        // The files the config names come from the hub like the weights.
        let config = Files::Disk(&files).config()?;
        let extra = feature_files(&config.cws)?;
        let names: Vec<&str> = extra.iter().map(|(name, _)| *name).collect();
        fetch_files(repo_id, revision, &settings, &names)?;
    }
    load_files(&files, source, device)
}

/// The feature files (name, what it holds) a model with `ext` reads.
fn feature_files(ext: &Extensions) -> Result<Vec<(&'static str, &'static str)>> {
    let mut files = match ext.lexicon_features {
        0 => vec![],
        LEXICON_FEATURES => vec![(LEXICON_FILE, "lexicon features")],
        n if n == LEXICON_FEATURES + LIST_STAT_FEATURES => vec![
            (LIST_STATS_FILE, "word-list statistics"),
            (LEXICON_FILE, "lexicon features"),
        ],
        n => bail!(
            "cws_lexicon_features = {n}, but this cws reads {LEXICON_FEATURES} lexicon features, or {} with word-list statistics",
            LEXICON_FEATURES + LIST_STAT_FEATURES
        ),
    };
    if ext.bigram_seen {
        files.push((BIGRAM_SEEN_FILE, "a seen-bigram list"));
    }
    Ok(files)
}

/// Loads a trained model from its resolved files (`name` says which in
/// errors): config, vocabulary, weights (every tensor, head included) and the
/// feature files its config asks for.
pub fn load_files(files: &ModelFiles, name: &str, device: &Device) -> Result<Tagger> {
    load_from(&Files::Disk(files), name, device)
}

/// Where a model's files are read from.
enum Files<'a> {
    Disk(&'a ModelFiles),
    Embedded(&'a Embedded),
}

impl Files<'_> {
    /// The content of the file `name` (config, vocabulary, weights or a
    /// feature file), and how errors call it.
    fn read(&self, name: &str) -> Result<(std::borrow::Cow<'static, [u8]>, String)> {
        match self {
            Files::Embedded(e) => e
                .files
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(n, bytes)| {
                    (
                        std::borrow::Cow::Borrowed(*bytes),
                        format!("{}: {n}", e.name),
                    )
                })
                .with_context(|| format!("{} has no {name}", e.name)),
            Files::Disk(files) => {
                let dir = files.config.parent().unwrap_or(Path::new("."));
                let path = match name {
                    CONFIG_FILE => files.config.clone(),
                    _ => dir.join(name),
                };
                let bytes = std::fs::read(&path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                Ok((bytes.into(), path.display().to_string()))
            }
        }
    }

    fn has(&self, name: &str) -> bool {
        match self {
            Files::Embedded(e) => e.files.iter().any(|(n, _)| *n == name),
            Files::Disk(files) => files
                .config
                .parent()
                .unwrap_or(Path::new("."))
                .join(name)
                .is_file(),
        }
    }

    fn config(&self) -> Result<BertConfig> {
        let (bytes, label) = self.read(CONFIG_FILE)?;
        let text = std::str::from_utf8(&bytes).with_context(|| format!("{label} is not UTF-8"))?;
        BertConfig::from_json_str(text).with_context(|| format!("in {label}"))
    }

    fn vocab(&self, name: &str) -> Result<Vocab> {
        match self {
            Files::Disk(files) => Vocab::load(
                files
                    .tokenizer
                    .as_ref()
                    .with_context(|| format!("{name} has no vocab.txt or tokenizer.json"))?,
            ),
            Files::Embedded(_) => {
                let (bytes, label) = self.read(VOCAB_FILE)?;
                Vocab::from_vocab_txt(&bytes, &label)
            }
        }
    }

    /// The weights' tensors (safetensors, or a PyTorch file on disk).
    fn tensors(&self, name: &str) -> Result<Vec<(String, candle_core::Tensor)>> {
        match self {
            Files::Disk(files) => weights::read_tensors(
                files
                    .weights
                    .as_ref()
                    .with_context(|| format!("{name} is a fresh config, not a trained model"))?,
            ),
            Files::Embedded(_) => {
                let (bytes, label) = self.read(WEIGHTS_FILE)?;
                Ok(candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
                    .with_context(|| format!("reading {label}"))?
                    .into_iter()
                    .collect())
            }
        }
    }
}

/// Loads a trained model from `files`; `name` says which in errors.
fn load_from(files: &Files<'_>, name: &str, device: &Device) -> Result<Tagger> {
    let config = files.config()?;
    if config.num_labels() != NUM_LABELS {
        bail!(
            "{name} has {} output labels; a segmenter has 4 (B, I, E, S) — train one with `cws train`",
            config.num_labels()
        );
    }
    let tensors = files.tensors(name)?;
    let vocab = files.vocab(name)?;
    let varmap = VarMap::new();
    let model = BertForTokenClassification::new_random(&varmap, &config, 0, DType::F32, device)?;
    weights::load_tensors(&varmap, tensors, LoadOptions::default())
        .with_context(|| format!("loading weights of {name}"))?;
    let features = read_features(&config.cws, files).with_context(|| format!("loading {name}"))?;
    let max_units = config.max_position_embeddings.min(512) - 2;
    Ok(Tagger {
        features,
        model,
        varmap,
        config,
        vocab,
        device: device.clone(),
        max_units,
        // Measured on 2 CPU cores with the bundled model: batches of 16
        // windows run in parallel segment 1.6x faster than batches of 64
        // (less padding, activations that stay in cache).
        batch_size: if device.is_cpu() { 16 } else { 256 },
    })
}

/// The unit features a model with `ext` reads, from its feature files.
fn read_features(ext: &Extensions, files: &Files<'_>) -> Result<FeatureSpec> {
    let mut spec = FeatureSpec {
        bigram_buckets: ext.bigram_buckets,
        ..FeatureSpec::default()
    };
    for (file, what) in feature_files(ext)? {
        if !files.has(file) {
            bail!("the model uses {what} but its {file} is missing");
        }
        let (bytes, label) = files.read(file)?;
        match file {
            LEXICON_FILE => spec.lexicon = Some(Lexicon::from_bytes(&bytes, &label)?),
            LIST_STATS_FILE => spec.list_stats = Some(ListStats::from_bytes(&bytes, &label)?),
            _ => spec.bigram_seen = Some(Lexicon::from_bytes(&bytes, &label)?),
        }
    }
    Ok(spec)
}

/// Writes the model folder `cws segment --model` and transformers read into
/// `dir`: config.json, model.safetensors (in `dtype`), vocab.txt,
/// tokenizer_config.json, and the hashed lists of `features` (lexicon,
/// word-list statistics, seen bigrams) the model reads.
pub fn save(tagger: &Tagger, dir: &Path, dtype: DType, features: &FeatureSpec) -> Result<()> {
    weights::save_pretrained(&tagger.varmap, &tagger.config, dir, dtype)?;
    if let Some(lex) = &features.lexicon {
        lex.save(&dir.join(LEXICON_FILE))?;
    }
    if let Some(stats) = &features.list_stats {
        stats.save(&dir.join(LIST_STATS_FILE))?;
    }
    if let Some(seen) = &features.bigram_seen {
        seen.save(&dir.join(BIGRAM_SEEN_FILE))?;
    }
    tagger.vocab.save(&dir.join(VOCAB_FILE))?;
    std::fs::write(
        dir.join(TOKENIZER_CONFIG_FILE),
        "{\"tokenizer_class\": \"BertTokenizer\", \"do_lower_case\": true}\n",
    )?;
    Ok(())
}
