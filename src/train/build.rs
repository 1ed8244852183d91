//! The model a run starts from: a fresh BERT from a config (its vocabulary
//! built from the training data when asked, lexicon and bigram features
//! recorded in its config), a pretrained one from the hub or a folder, or the
//! run's own `last` checkpoint when resuming.

use super::data::Data;
use super::{Event, Progress};
use crate::bies::LABEL_NAMES;
use crate::config::{open_device, TrainConfig, VOCAB_FROM_TRAIN};
use crate::encode::Vocab;
use crate::features::{FeatureSpec, Lexicon};
use crate::hub::{resolve, resolve_local, HubSettings, ModelSource};
use crate::model::{BertConfig, BertForTokenClassification, StandardInput};
use crate::model_dir;
use crate::tagger::Tagger;
use crate::units::units_of_words;
use crate::weights::{self, LoadOptions};
use anyhow::{bail, Context, Result};
use candle_core::DType;
use candle_nn::VarMap;
use std::path::Path;

/// Builds the model, vocabulary and config a run starts from.
pub(super) fn build_tagger(
    cfg: &TrainConfig,
    data: &Data,
    resume_from: Option<&Path>,
    progress: Progress<'_>,
) -> Result<Tagger> {
    let device = open_device(cfg.device)?;
    if let Some(dir) = resume_from {
        let tagger =
            model_dir::load_files(&resolve_local(dir)?, &dir.display().to_string(), &device)?;
        return Ok(Tagger {
            max_units: cfg.max_length - 2,
            batch_size: cfg.batch_size.max(32),
            ..tagger
        });
    }
    let files = resolve(&ModelSource::parse(&cfg.model)?, &HubSettings::from_env())?;
    let mut config = BertConfig::from_file(&files.config)?;
    let mut vocab = vocab_for(cfg, data, &files, &mut config)?;
    let tokens = cfg.joint_standard_input == StandardInput::Token;
    let standard_tokens: Vec<u32> = (cfg.joint_standards().iter())
        .filter(|_| tokens)
        .map(|s| vocab.add_token(s.token()))
        .collect();
    if !standard_tokens.is_empty() {
        config.vocab_size = config.vocab_size.max(vocab.len());
    }
    if vocab.len() > config.vocab_size {
        bail!(
            "the vocabulary has {} tokens but the model's vocab_size is {}",
            vocab.len(),
            config.vocab_size
        );
    }
    config.set_labels(&LABEL_NAMES);
    config.cws.head = cfg.head;
    config.cws.standards = cfg.joint_standards();
    if config.cws.standards.is_empty() {
        config.cws.standard = cfg.standard;
    } else {
        config.cws.boundary_biases = vec![0.0; config.cws.standards.len()];
        config.cws.standard_input = cfg.joint_standard_input;
    }
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
    let mut features = fresh_features(cfg, data, &mut config, files.weights.is_some())?;
    features.standard_tokens = standard_tokens;
    let varmap = VarMap::new();
    let model =
        BertForTokenClassification::new_random(&varmap, &config, cfg.seed, DType::F32, &device)?;
    if let Some(w) = &files.weights {
        let report = weights::load(
            &varmap,
            w,
            LoadOptions {
                allow_missing_head: true,
            },
        )?;
        if report.head_missing {
            progress.report(Event::Note(&format!(
                "note: {} has no token-classification head; it starts freshly initialised",
                cfg.model
            )));
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

/// The run's vocabulary: one built from the training data (`vocab = "train"`, fresh models only, which then size the
/// model's embeddings to it), a named file, or the model's own.
fn vocab_for(
    cfg: &TrainConfig,
    data: &Data,
    files: &crate::hub::ModelFiles,
    config: &mut BertConfig,
) -> Result<Vocab> {
    Ok(match cfg.vocab.as_deref() {
        Some(VOCAB_FROM_TRAIN) => {
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
        Some(path) => Vocab::load(Path::new(path))?,
        None => Vocab::load(files.tokenizer.as_ref().with_context(|| {
            format!(
                "{} has no tokenizer.json or vocab.txt: set `vocab` in the config",
                cfg.model
            )
        })?)?,
    })
}

/// The unit features a fresh run asks for, recorded in the model config.
fn fresh_features(
    cfg: &TrainConfig,
    data: &Data,
    config: &mut BertConfig,
    pretrained: bool,
) -> Result<FeatureSpec> {
    if pretrained
        && (cfg.lexicon.is_some() || cfg.general_lexicon.is_some() || cfg.bigram_buckets > 0)
    {
        bail!("lexicon and bigram features add new embeddings to the model; train a fresh model (model = \"config:PATH\") to use them");
    }
    let standards = config.cws.standards.len();
    let (lexicon, list_stats) = match &cfg.lexicon {
        Some(path) if standards == 0 => {
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
            config.cws.lexicon_features = list_width(&stats);
            (Some(Lexicon::from_words(words())), stats)
        }
        Some(_) => {
            // A joint run: each standard's list and training words, marked
            // with the standard, in one lexicon.
            let mut lex = Lexicon::default();
            for (k, corpus) in cfg.corpora().iter().enumerate() {
                let path = corpus
                    .lexicon
                    .context("every [[joint]] corpus needs a lexicon")?;
                for (w, _) in crate::corpus::read_word_list(path)? {
                    lex.insert_for(&w, k);
                }
                let own = data.train.iter().zip(&data.standard_of);
                for w in own.filter(|&(_, &s)| s == k).flat_map(|(s, _)| s) {
                    lex.insert_for(w, k);
                }
            }
            config.cws.lexicon_features = list_width(&None)
                + match cfg.joint_standard_input {
                    StandardInput::Column => standards,
                    StandardInput::Token => 0,
                };
            (Some(lex), None)
        }
        None => (None, None),
    };
    let (general_lexicon, general_stats) = match &cfg.general_lexicon {
        Some(path) => {
            let min = cfg.general_lexicon_min_frequency;
            let listed = crate::corpus::read_word_list(path)?;
            let words = || {
                (listed.iter())
                    .filter(|(_, f)| min == 0.0 || f.is_none_or(|f| f >= min))
                    .map(|(w, _)| w)
            };
            let stats = cfg
                .general_lexicon_stats
                .then(|| crate::features::ListStats::from_words(words()));
            config.cws.general_lexicon_features = list_width(&stats);
            let mut lex = Lexicon::from_words(words());
            let frequent = cfg.general_lexicon_frequent;
            if frequent > 0.0 {
                let tier = crate::features::FREQUENT_TIER;
                (listed.iter())
                    .filter(|(_, f)| f.is_some_and(|f| f >= frequent))
                    .for_each(|(w, _)| lex.insert_for(w, tier));
                config.cws.general_frequent = true;
                config.cws.general_lexicon_features += crate::features::LEXICON_FEATURES;
            }
            (Some(lex), stats)
        }
        None => (None, None),
    };
    let mut bigram_seen = None;
    if cfg.bigram_buckets > 0 {
        config.cws.bigram_buckets = cfg.bigram_buckets;
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
            config.cws.bigram_seen = true;
        }
    }
    Ok(FeatureSpec {
        lexicon,
        bigram_buckets: cfg.bigram_buckets,
        bigram_seen,
        list_stats,
        general_lexicon,
        general_stats,
        general_frequent: config.cws.general_frequent,
        standards,
        standard: 0,
        standard_tokens: Vec::new(),
    })
}

/// The feature columns of a word list, with or without its statistics.
fn list_width(stats: &Option<crate::features::ListStats>) -> usize {
    crate::features::LEXICON_FEATURES
        + match stats {
            Some(_) => crate::features::LIST_STAT_FEATURES,
            None => 0,
        }
}
