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
//! | `general_lexicon.safetensors` | hashed general word list, when `cws_general_lexicon_features` > 0 |
//! | `general_liststats.safetensors` | its statistics, when that width includes them |
//! | `cws-train.toml` | the resolved training config that produced the model |
//! | `optimizer.safetensors`, `trainer_state.json` | only in a run's `last`: what `--resume` needs |
//! | `README.md` | the model card, written by people and kept by `cws export` |

use crate::bies::NUM_LABELS;
use crate::encode::Vocab;
use crate::features::{FeatureSpec, Lexicon, ListStats, LEXICON_FEATURES, LIST_STAT_FEATURES};
use crate::hub::{fetch_files, resolve_arg, HubSettings, ModelFiles, ModelSource};
use crate::model::{BertConfig, BertForTokenClassification, Extensions, Standard, StandardInput};
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
pub const GENERAL_LEXICON_FILE: &str = "general_lexicon.safetensors";
pub const GENERAL_LIST_STATS_FILE: &str = "general_liststats.safetensors";
pub const RECIPE_FILE: &str = "cws-train.toml";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const TRAINER_STATE_FILE: &str = "trainer_state.json";
pub const MODEL_CARD_FILE: &str = "README.md";

/// The files a model or checkpoint folder may hold (those above, plus the
/// other names of weights and tokenizers a hub model may come with): anything
/// else in a folder is a user's, and is never replaced without `--force`.
pub const MODEL_FOLDER_FILES: [&str; 17] = [
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
    GENERAL_LEXICON_FILE,
    GENERAL_LIST_STATS_FILE,
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
    /// The standard it segments by (`--standard`).
    pub standard: Standard,
    pub files: &'static [(&'static str, &'static [u8])],
}

/// The files of `models/NAME`, compiled in.
#[cfg(feature = "embedded-model")]
macro_rules! model_files {
    ($name:literal) => {
        &[
            (
                CONFIG_FILE,
                include_bytes!(concat!("../models/", $name, "/config.json")),
            ),
            (
                WEIGHTS_FILE,
                include_bytes!(concat!("../models/", $name, "/model.safetensors")),
            ),
            (
                VOCAB_FILE,
                include_bytes!(concat!("../models/", $name, "/vocab.txt")),
            ),
            (
                LEXICON_FILE,
                include_bytes!(concat!("../models/", $name, "/lexicon.safetensors")),
            ),
            (
                GENERAL_LEXICON_FILE,
                include_bytes!(concat!("../models/", $name, "/general_lexicon.safetensors")),
            ),
            (
                BIGRAM_SEEN_FILE,
                include_bytes!(concat!("../models/", $name, "/bigrams.safetensors")),
            ),
            (
                MODEL_CARD_FILE,
                include_bytes!(concat!("../models/", $name, "/README.md")),
            ),
        ]
    };
}

/// The default models, compiled in with the cargo feature `embedded-model`
/// (on by default): the bundled PKU model (`models/pku`, the default) and MSR
/// model (`models/msr`, `--standard msr`).
#[cfg(feature = "embedded-model")]
pub const EMBEDDED: &[Embedded] = &[
    Embedded {
        name: "the built-in PKU model",
        standard: Standard::Pku,
        files: model_files!("pku"),
    },
    Embedded {
        name: "the built-in MSR model",
        standard: Standard::Msr,
        files: model_files!("msr"),
    },
];
#[cfg(not(feature = "embedded-model"))]
pub const EMBEDDED: &[Embedded] = &[];

/// The variable naming the model used when `--model` is not given.
pub const MODEL_VAR: &str = "CWS_MODEL";

/// Loads the model `--model` names, or without one the default: `$CWS_MODEL`
/// when set, else the model compiled into the binary for `standard` (PKU's
/// when none is asked for). A model that records another standard than the
/// one asked for is an error.
pub fn load_or_default(
    model: Option<&str>,
    standard: Option<Standard>,
    device: &Device,
) -> Result<Tagger> {
    let given = model.map(|m| (m.to_string(), None)).or_else(|| {
        let m = std::env::var(MODEL_VAR).ok().filter(|m| !m.is_empty())?;
        Some((m.clone(), Some(format!("${MODEL_VAR}={m}"))))
    });
    if let Some((m, from_var)) = given {
        let mut tagger = match &from_var {
            Some(var) => load(&m, device).with_context(|| format!("loading {var}"))?,
            None => load(&m, device)?,
        };
        check_standard(&mut tagger, &m, standard)?;
        return Ok(tagger);
    }
    let want = standard.unwrap_or(Standard::Pku);
    match EMBEDDED.iter().find(|e| e.standard == want) {
        Some(embedded) => load_from(&Files::Embedded(embedded), embedded.name, device),
        None if EMBEDDED.is_empty() => bail!(
            "no model given, and this cws was built without its default models (cargo feature \
             `embedded-model`): pass --model DIR (a folder saved by `cws train`) or a hub id, \
             set ${MODEL_VAR}, or use --dict-only WORDLIST for the dictionary baseline"
        ),
        None => bail!(
            "no built-in model segments by the {} standard; the built-in ones: {}",
            want.name(),
            EMBEDDED
                .iter()
                .map(|e| e.standard.name())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Refuses a model asked for a standard it was not trained on; a joint model
/// is set to read by the one asked for.
pub fn check_standard(tagger: &mut Tagger, name: &str, want: Option<Standard>) -> Result<()> {
    let Some(want) = want else { return Ok(()) };
    let known = &tagger.config.cws.standards;
    if !known.is_empty() {
        let Some(i) = known.iter().position(|&s| s == want) else {
            bail!(
                "--standard {}: the model {name} was not trained on the {} standard (it knows: {})",
                want.name(),
                want.name(),
                known
                    .iter()
                    .map(|s| s.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        };
        tagger.features.standard = i;
        return Ok(());
    }
    match tagger.config.cws.standard {
        Some(s) if s == want => Ok(()),
        Some(s) => bail!(
            "--standard {}: the model {name} was trained on the {} standard only (it knows: {}); \
             drop --standard or pass a model trained on {} data",
            want.name(),
            s.name(),
            s.name(),
            want.name()
        ),
        None => bail!(
            "--standard {}: the model {name} records no standard (it knows none; its config.json \
             lacks cws_standard, set by `standard` in the training config): drop --standard",
            want.name()
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
    // A word list's files for a channel of `width` columns, `extra` of which
    // are a joint model's standard columns.
    let list = |width: usize, extra: usize, key: &str, files: [(&'static str, &'static str); 2]| {
        Ok(match width.checked_sub(extra) {
            Some(0) if extra == 0 => vec![],
            Some(LEXICON_FEATURES) => vec![files[0]],
            Some(n) if n == LEXICON_FEATURES + LIST_STAT_FEATURES => files.to_vec(),
            _ => bail!(
                "{key} = {width}, but this cws reads {LEXICON_FEATURES} word-list features, or {} with \
                 word-list statistics, plus one per standard of a joint model ({extra} here)",
                LEXICON_FEATURES + LIST_STAT_FEATURES
            ),
        })
    };
    if !ext.standards.is_empty() && ext.boundary_biases.len() != ext.standards.len() {
        bail!(
            "cws_standards names {} standards but cws_boundary_biases has {} values",
            ext.standards.len(),
            ext.boundary_biases.len()
        );
    }
    let columns = match ext.standard_input {
        StandardInput::Column => ext.standards.len(),
        StandardInput::Token => 0,
    };
    let mut files = list(
        ext.lexicon_features,
        columns,
        "cws_lexicon_features",
        [
            (LEXICON_FILE, "lexicon features"),
            (LIST_STATS_FILE, "word-list statistics"),
        ],
    )?;
    files.extend(list(
        ext.general_lexicon_features,
        if ext.general_frequent {
            LEXICON_FEATURES
        } else {
            0
        },
        "cws_general_lexicon_features",
        [
            (GENERAL_LEXICON_FILE, "a general word list"),
            (GENERAL_LIST_STATS_FILE, "general word-list statistics"),
        ],
    )?);
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
    let mut features =
        read_features(&config.cws, files).with_context(|| format!("loading {name}"))?;
    if config.cws.standard_input == StandardInput::Token {
        for s in &config.cws.standards {
            let id = vocab.id(s.token());
            if id == vocab.unk {
                bail!(
                    "{name} reads its standard as a token, but its vocabulary lacks {}",
                    s.token()
                );
            }
            features.standard_tokens.push(id);
        }
    }
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
        standards: ext.standards.len(),
        general_frequent: ext.general_frequent,
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
            GENERAL_LEXICON_FILE => {
                spec.general_lexicon = Some(Lexicon::from_bytes(&bytes, &label)?)
            }
            GENERAL_LIST_STATS_FILE => {
                spec.general_stats = Some(ListStats::from_bytes(&bytes, &label)?)
            }
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
    if let Some(general) = &features.general_lexicon {
        general.save(&dir.join(GENERAL_LEXICON_FILE))?;
    }
    if let Some(stats) = &features.general_stats {
        stats.save(&dir.join(GENERAL_LIST_STATS_FILE))?;
    }
    tagger.vocab.save(&dir.join(VOCAB_FILE))?;
    std::fs::write(
        dir.join(TOKENIZER_CONFIG_FILE),
        "{\"tokenizer_class\": \"BertTokenizer\", \"do_lower_case\": true}\n",
    )?;
    Ok(())
}
