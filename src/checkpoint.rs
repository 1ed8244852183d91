//! Checkpoint folders: written atomically, in a layout Hugging Face `transformers` can load.
//!
//! A checkpoint folder holds `config.json` (a `BertForTokenClassification` config with the
//! B/I/E/S labels), the weights, and the tokenizer files of the model it was trained from.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::{json, Map, Value};

/// Tag set of the segmenter: Begin, Inside, End of a multi-character word, Single-character word.
pub const BIES_LABELS: [&str; 4] = ["B", "I", "E", "S"];

/// Tokenizer files copied into a checkpoint when they sit next to the model's tokenizer.
pub const TOKENIZER_FILES: [&str; 4] = [
    "tokenizer.json",
    "vocab.txt",
    "tokenizer_config.json",
    "special_tokens_map.json",
];

/// The files a model or checkpoint folder is made of (what `cws train` and
/// `cws export` write, plus the model card they keep): anything else in a
/// folder is a user's, and is never replaced without `--force`.
pub const MODEL_FOLDER_FILES: [&str; 15] = [
    "config.json",
    "model.safetensors",
    "pytorch_model.bin",
    "vocab.txt",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    crate::features::LEXICON_FILE,
    crate::features::BIGRAM_SEEN_FILE,
    crate::features::LIST_STATS_FILE,
    "cws-train.toml",
    "optimizer.safetensors",
    "trainer_state.json",
    MODEL_CARD_FILE,
    ".gitattributes",
];

/// A model folder's card: written by people, kept by `cws export`.
pub const MODEL_CARD_FILE: &str = "README.md";

/// Creates or replaces the folder `dest` with what `write` puts into the empty folder it is
/// given, so that `dest` is always either the old or the new complete folder.
///
/// `write` fills a fresh folder `.NAME.tmp-<pid>` next to `dest` (same parent, hence the same
/// file system, so renames are atomic). Its files are flushed to disk, then the old `dest` is
/// renamed to `.NAME.old-<pid>`, the new folder renamed to `dest`, and the old one deleted. If
/// `write` fails or panics, the temp folder is removed and `dest` is untouched. A crash in the
/// instant between the two renames leaves no `dest` but the complete old checkpoint in
/// `.NAME.old-<pid>`. Temp names are per process, so one destination must have one writer
/// at a time within a process.
pub fn write_atomic<F>(dest: &Path, write: F) -> Result<()>
where
    F: FnOnce(&Path) -> Result<()>,
{
    let name = dest
        .file_name()
        .with_context(|| format!("expected a checkpoint folder path, got {}", dest.display()))?
        .to_string_lossy()
        .into_owned();
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if dest.exists() && !dest.is_dir() {
        bail!(
            "expected a checkpoint folder at {}, found a file",
            dest.display()
        );
    }
    fs::create_dir_all(&parent).with_context(|| format!("creating folder {}", parent.display()))?;
    let pid = std::process::id();
    let tmp = parent.join(format!(".{name}.tmp-{pid}"));
    let old = parent.join(format!(".{name}.old-{pid}"));
    // Left over only by a crashed earlier run that had the same pid; never a live writer.
    remove_if_present(&tmp)?;
    remove_if_present(&old)?;
    fs::create_dir(&tmp).with_context(|| format!("creating temp folder {}", tmp.display()))?;
    let guard = RemoveOnDrop(Some(tmp.clone()));

    write(&tmp).with_context(|| format!("writing checkpoint {}", dest.display()))?;
    sync_folder(&tmp).with_context(|| format!("flushing checkpoint {}", tmp.display()))?;

    let had_old = dest.exists();
    if had_old {
        fs::rename(dest, &old).with_context(|| {
            format!(
                "moving old checkpoint {} aside to {}",
                dest.display(),
                old.display()
            )
        })?;
    }
    if let Err(err) = fs::rename(&tmp, dest) {
        if had_old {
            // Put the old checkpoint back so a failed swap changes nothing.
            let _ = fs::rename(&old, dest);
        }
        return Err(err).with_context(|| {
            format!(
                "renaming {} to checkpoint {}",
                tmp.display(),
                dest.display()
            )
        });
    }
    std::mem::forget(guard);
    if let Ok(dir) = fs::File::open(&parent) {
        let _ = dir.sync_all();
    }
    if had_old {
        fs::remove_dir_all(&old)
            .with_context(|| format!("removing old checkpoint {}", old.display()))?;
    }
    Ok(())
}

/// Tidies what a process killed inside [`write_atomic`] left beside `dest`:
/// if `dest` is gone but its complete old version waits in `.NAME.old-PID`
/// (killed between the two renames), that is put back; half-written
/// `.NAME.tmp-PID` folders and leftover old ones are removed. Returns whether
/// anything was found.
pub fn recover_atomic(dest: &Path) -> Result<bool> {
    let (Some(name), Some(parent)) = (dest.file_name(), dest.parent()) else {
        return Ok(false);
    };
    let name = name.to_string_lossy();
    let Ok(entries) = fs::read_dir(parent) else {
        return Ok(false);
    };
    let mut found = false;
    for entry in entries {
        let path = entry?.path();
        let Some(file) = path.file_name().map(|f| f.to_string_lossy().into_owned()) else {
            continue;
        };
        let old = file.starts_with(&format!(".{name}.old-"));
        if !(old || file.starts_with(&format!(".{name}.tmp-"))) {
            continue;
        }
        found = true;
        if old && !dest.exists() {
            fs::rename(&path, dest).with_context(|| {
                format!(
                    "restoring checkpoint {} from {}",
                    dest.display(),
                    path.display()
                )
            })?;
        } else {
            remove_if_present(&path)?;
        }
    }
    Ok(found)
}

/// Writes `files` (name, bytes) as the new content of the folder `dest`; see [`write_atomic`].
pub fn write_files_atomic(dest: &Path, files: &[(&str, &[u8])]) -> Result<()> {
    write_atomic(dest, |dir| {
        for (name, bytes) in files {
            let path = dir.join(name);
            fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(())
    })
}

struct RemoveOnDrop(Option<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = fs::remove_dir_all(path);
        }
    }
}

fn remove_if_present(path: &Path) -> Result<()> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => {
            fs::remove_dir_all(path).with_context(|| format!("removing {}", path.display()))
        }
        Ok(_) => fs::remove_file(path).with_context(|| format!("removing {}", path.display())),
        Err(_) => Ok(()),
    }
}

/// Flushes the folder's files and the folder itself, so the rename that publishes it cannot
/// land on disk before its content does.
fn sync_folder(dir: &Path) -> Result<()> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            sync_folder(&path)?;
        } else {
            fs::File::open(&path)?.sync_all()?;
        }
    }
    // Directories cannot be opened for syncing on every platform; the files are what matter.
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Keys every BERT config must carry; they fix the shapes of the weights.
const REQUIRED_BERT_KEYS: [&str; 7] = [
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "max_position_embeddings",
    "type_vocab_size",
];

/// `transformers`' `BertConfig` defaults, written out so the checkpoint does not depend on them.
fn bert_defaults() -> Value {
    json!({
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "initializer_range": 0.02,
        "layer_norm_eps": 1e-12,
        "pad_token_id": 0,
        "position_embedding_type": "absolute",
    })
}

/// Returns the base BERT config turned into a `BertForTokenClassification` config with
/// `labels` as classes (index i is label `labels[i]`), keeping every other field.
///
/// The base is typically the `config.json` of the pre-trained model; its BERT shape fields
/// must be present, and missing optional fields get `transformers`' defaults.
pub fn token_classifier_config(base: &Value, labels: &[&str]) -> Result<Value> {
    let Some(obj) = base.as_object() else {
        bail!("expected a JSON object as BERT config, got {base}");
    };
    if let Some(kind) = obj.get("model_type") {
        if kind != "bert" {
            bail!("expected model_type \"bert\" in BERT config, got {kind}");
        }
    }
    for key in REQUIRED_BERT_KEYS {
        match obj.get(key) {
            Some(v) if v.as_u64().is_some_and(|n| n > 0) => {}
            Some(v) => bail!("expected a positive integer for {key} in BERT config, got {v}"),
            None => bail!("expected {key} in BERT config, it is missing"),
        }
    }
    if labels.is_empty() {
        bail!("expected at least one label for the token classifier, got none");
    }
    let mut out = obj.clone();
    if let Value::Object(defaults) = bert_defaults() {
        for (key, value) in defaults {
            out.entry(key).or_insert(value);
        }
    }
    let id2label: Map<String, Value> = labels
        .iter()
        .enumerate()
        .map(|(i, l)| (i.to_string(), json!(l)))
        .collect();
    let label2id: Map<String, Value> = labels
        .iter()
        .enumerate()
        .map(|(i, l)| (l.to_string(), json!(i)))
        .collect();
    if label2id.len() != labels.len() {
        bail!("expected distinct labels for the token classifier, got {labels:?}");
    }
    out.insert(
        "architectures".into(),
        json!(["BertForTokenClassification"]),
    );
    out.insert("model_type".into(), json!("bert"));
    out.insert("id2label".into(), Value::Object(id2label));
    out.insert("label2id".into(), Value::Object(label2id));
    Ok(Value::Object(out))
}

/// Reads a `config.json`.
pub fn read_config(path: &Path) -> Result<Value> {
    let text =
        fs::read_to_string(path).with_context(|| format!("reading config {}", path.display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("expected JSON in config {}", path.display()))
}

/// Writes `config` as pretty-printed `config.json` into `dir`.
pub fn write_config(dir: &Path, config: &Value) -> Result<PathBuf> {
    let path = dir.join("config.json");
    let mut text = serde_json::to_string_pretty(config).context("serialising config")?;
    text.push('\n');
    fs::write(&path, text).with_context(|| format!("writing config {}", path.display()))?;
    Ok(path)
}

/// The labels of a token-classification config, in class-index order.
pub fn labels_of(config: &Value) -> Result<Vec<String>> {
    let map = config
        .get("id2label")
        .and_then(Value::as_object)
        .context("expected an id2label object in config")?;
    (0..map.len())
        .map(|i| {
            map.get(&i.to_string())
                .and_then(Value::as_str)
                .map(str::to_string)
                .with_context(|| {
                    format!(
                        "expected id2label to have string entries 0..{}, missing {i}",
                        map.len()
                    )
                })
        })
        .collect()
}

/// Copies the tokenizer files found next to `tokenizer` (the path [`crate::hub::ModelFiles`]
/// gives) into `dest_dir`, returning the names copied. Symlinks, as in the hub cache, are
/// followed so the checkpoint holds real files.
pub fn copy_tokenizer_files(tokenizer: &Path, dest_dir: &Path) -> Result<Vec<String>> {
    if !tokenizer.is_file() {
        bail!("tokenizer file {} does not exist", tokenizer.display());
    }
    let src_dir = tokenizer.parent().unwrap_or(Path::new("."));
    let mut copied = Vec::new();
    for name in TOKENIZER_FILES {
        let src = src_dir.join(name);
        if src.is_file() {
            let dst = dest_dir.join(name);
            fs::copy(&src, &dst)
                .with_context(|| format!("copying {} to {}", src.display(), dst.display()))?;
            copied.push(name.to_string());
        }
    }
    // A tokenizer under another name still has to travel with the checkpoint.
    let own = tokenizer
        .file_name()
        .map(|n| n.to_string_lossy().into_owned());
    if let Some(own) = own.filter(|n| !copied.contains(n)) {
        let dst = dest_dir.join(&own);
        fs::copy(tokenizer, &dst)
            .with_context(|| format!("copying {} to {}", tokenizer.display(), dst.display()))?;
        copied.push(own);
    }
    Ok(copied)
}
