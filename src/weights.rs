//! Checkpoint I/O: fills a model's `VarMap` from HF/PyTorch files and saves it under HF names.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;

#[derive(Debug, Clone, Copy, Default)]
pub struct LoadOptions {
    /// Accept a checkpoint without `classifier.*` (e.g. a BertForMaskedLM such as
    /// bert-base-chinese): the head keeps its current (fresh) values.
    pub allow_missing_head: bool,
}

#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    pub loaded: usize,
    /// The classifier head was absent and left as initialised.
    pub head_missing: bool,
    /// Checkpoint tensors that are not ours (pooler, MLM head, position_ids, ...).
    pub ignored: Vec<String>,
}

/// Reads every tensor of a `.safetensors` or PyTorch `.bin`/`.pt` file onto the CPU.
pub fn read_tensors(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let tensors = if ext == "safetensors" {
        candle_core::safetensors::load(path, &Device::Cpu)
            .with_context(|| format!("reading {}", path.display()))?
            .into_iter()
            .collect()
    } else {
        candle_core::pickle::read_all(path)
            .with_context(|| format!("reading PyTorch checkpoint {}", path.display()))?
    };
    Ok(tensors)
}

/// Maps a checkpoint name to ours: LayerNorm `gamma`/`beta` become `weight`/`bias`
/// (old TF-converted checkpoints) and a bare `embeddings.`/`encoder.` gets the
/// `bert.` prefix (checkpoints of a plain `BertModel`).
pub fn canonical_name(name: &str) -> String {
    let mut n = name.to_string();
    if let Some(stem) = n.strip_suffix("LayerNorm.gamma") {
        n = format!("{stem}LayerNorm.weight");
    } else if let Some(stem) = n.strip_suffix("LayerNorm.beta") {
        n = format!("{stem}LayerNorm.bias");
    }
    if n.starts_with("embeddings.") || n.starts_with("encoder.") || n.starts_with("pooler.") {
        n = format!("bert.{n}");
    }
    n
}

/// Copies the checkpoint at `path` into the vars of `varmap` by name, converting
/// dtype and device. Every missing or mis-shaped tensor is reported in one error.
pub fn load(varmap: &VarMap, path: impl AsRef<Path>, opts: LoadOptions) -> Result<LoadReport> {
    let path = path.as_ref();
    let tensors = read_tensors(path)?;
    load_tensors(varmap, tensors, opts).with_context(|| format!("loading {}", path.display()))
}

pub fn load_tensors(
    varmap: &VarMap,
    tensors: Vec<(String, Tensor)>,
    opts: LoadOptions,
) -> Result<LoadReport> {
    let data = varmap.data().lock().expect("VarMap lock poisoned");
    let mut report = LoadReport::default();
    let mut found: HashMap<String, Tensor> = HashMap::new();
    for (name, t) in tensors {
        let canon = canonical_name(&name);
        if data.contains_key(&canon) {
            found.insert(canon, t);
        } else {
            report.ignored.push(name);
        }
    }
    report.ignored.sort();

    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    let head_absent = names
        .iter()
        .filter(|n| n.starts_with("classifier."))
        .all(|n| !found.contains_key(*n));
    let mut problems = Vec::new();
    for name in &names {
        let var = &data[*name];
        match found.get(*name) {
            None if head_absent && opts.allow_missing_head && name.starts_with("classifier.") => {
                report.head_missing = true;
            }
            // A CRF added to a model trained without one starts fresh.
            None if opts.allow_missing_head && name.starts_with("crf.") => {}
            None => problems.push(format!("  {name}: missing (expected {:?})", var.dims())),
            Some(t) if t.dims() != var.dims() => problems.push(format!(
                "  {name}: expected shape {:?}, found {:?}",
                var.dims(),
                t.dims()
            )),
            Some(_) => {}
        }
    }
    if !problems.is_empty() {
        bail!(
            "checkpoint does not fit the model ({} problem(s)):\n{}",
            problems.len(),
            problems.join("\n")
        );
    }
    for name in names {
        if let Some(t) = found.get(name) {
            let var = &data[name];
            var.set(&t.to_dtype(var.dtype())?.to_device(var.device())?)?;
            report.loaded += 1;
        }
    }
    Ok(report)
}

/// Writes every var of `varmap` under its (HF) name as f32, or f16 when `dtype`
/// says so. Written to a temporary file in the same folder and renamed, so a
/// crash never leaves a truncated checkpoint behind.
pub fn save(varmap: &VarMap, path: impl AsRef<Path>, dtype: DType) -> Result<()> {
    if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16) {
        bail!("checkpoints are saved as f32, f16 or bf16, not {dtype:?}");
    }
    let tensors: HashMap<String, Tensor> = {
        let data = varmap.data().lock().expect("VarMap lock poisoned");
        data.iter()
            .map(|(k, v)| Ok((k.clone(), v.as_tensor().to_dtype(dtype)?)))
            .collect::<Result<_>>()?
    };
    save_tensors_atomic(&tensors, path.as_ref())
}

/// Atomic safetensors write shared by checkpoints and optimizer state.
pub fn save_tensors_atomic(tensors: &HashMap<String, Tensor>, path: &Path) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let file = path
        .file_name()
        .with_context(|| format!("{} has no file name", path.display()))?;
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        file.to_string_lossy(),
        std::process::id()
    ));
    let result = candle_core::safetensors::save(tensors, &tmp)
        .map_err(anyhow::Error::from)
        .and_then(|()| {
            std::fs::File::open(&tmp)?.sync_all()?;
            std::fs::rename(&tmp, path)?;
            Ok(())
        });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("writing {}", path.display()))
}

/// Writes a folder that `transformers.BertForTokenClassification.from_pretrained`
/// opens: `config.json` (marked as a token classifier) and `model.safetensors`.
pub fn save_pretrained(
    varmap: &VarMap,
    cfg: &crate::model::BertConfig,
    dir: impl AsRef<Path>,
    dtype: DType,
) -> Result<()> {
    let dir = dir.as_ref();
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut cfg = cfg.clone();
    cfg.mark_token_classifier();
    let json = cfg.to_json_string()?;
    let cfg_path = dir.join("config.json");
    let tmp = dir.join(format!(".config.json.tmp{}", std::process::id()));
    std::fs::write(&tmp, json)
        .and_then(|()| std::fs::rename(&tmp, &cfg_path))
        .with_context(|| format!("writing {}", cfg_path.display()))?;
    save(varmap, dir.join("model.safetensors"), dtype)
}
