//! Run state on disk: the run's saved config, the `best` and `last`
//! checkpoints (written atomically; `last` with the optimizer and trainer
//! state that `--resume` needs), and the JSON-lines metrics log.

use super::{Event, Progress};
use crate::config::{SoftSource, TrainConfig};
use crate::features::FeatureSpec;
use crate::model_dir::{self, OPTIMIZER_FILE, RECIPE_FILE, TRAINER_STATE_FILE};
use crate::optim::AdamW;
use crate::output::AtomicFile;
use crate::tagger::Tagger;
use anyhow::{bail, Context, Result};
use candle_core::DType;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

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

/// Writes a checkpoint folder atomically: weights and config in Hugging Face
/// layout, the vocabulary, the resolved training config, and for `last` the
/// optimizer and trainer state needed by `--resume`.
pub(super) fn save_checkpoint(
    dest: &Path,
    tagger: &Tagger,
    cfg: &TrainConfig,
    features: &FeatureSpec,
    resume: Option<(&AdamW, &TrainerState)>,
) -> Result<()> {
    crate::checkpoint::write_atomic(dest, |tmp| {
        model_dir::save(tagger, tmp, DType::F32, features)?;
        std::fs::write(tmp.join(RECIPE_FILE), cfg.to_toml())?;
        if let Some((opt, state)) = resume {
            opt.save_state(tmp.join(OPTIMIZER_FILE))?;
            std::fs::write(
                tmp.join(TRAINER_STATE_FILE),
                serde_json::to_string_pretty(state)?,
            )?;
        }
        Ok(())
    })
    .with_context(|| format!("writing checkpoint {}", dest.display()))
}

/// Keeps the lines of a metrics log up to `step` (each line's `step` key),
/// rewriting it atomically, so a resumed run never logs a step twice.
pub(super) fn truncate_log_after(path: &Path, step: u64) -> Result<()> {
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
        let mut file = AtomicFile::create(path)?;
        file.write_all(keep.as_bytes())?;
        file.commit()?;
    }
    Ok(())
}

/// The trainer state saved with a `last` checkpoint.
pub(super) fn read_state(dir: &Path) -> Result<TrainerState> {
    serde_json::from_str(&std::fs::read_to_string(dir.join(TRAINER_STATE_FILE))?)
        .with_context(|| format!("reading {TRAINER_STATE_FILE}"))
}

/// The checkpoint `--resume` continues from: the run's `last`, or none when
/// the run stopped before its first one (it starts again from step 0) or
/// inside one of its cross-fitted copies. Checkpoints that a killed process
/// was writing are put in order first.
pub(super) fn resume_point(
    cfg: &TrainConfig,
    resume: bool,
    progress: Progress<'_>,
) -> Result<Option<PathBuf>> {
    let last = cfg.output_dir.join("last");
    if resume {
        for dest in [&last, &cfg.output_dir.join("best")] {
            crate::checkpoint::recover_atomic(dest)?;
        }
    }
    match (resume, last.join(TRAINER_STATE_FILE).is_file()) {
        (true, true) => Ok(Some(last)),
        (true, false) => {
            // A cross-fitted run's copies say where they resume.
            if !matches!(cfg.soft_source(), SoftSource::CrossFit { .. }) {
                progress.report(Event::Note(&format!(
                    "--resume: no checkpoint in {} yet; starting from the first step",
                    cfg.output_dir.display()
                )));
            }
            Ok(None)
        }
        (false, _) => Ok(None),
    }
}

/// Where a resumed run stands: the `last` checkpoint's trainer state, its
/// optimizer state loaded into `opt`, refused when the schedule differs.
pub(super) fn resume(
    dir: &Path,
    resumed: TrainerState,
    total: u64,
    opt: &mut AdamW,
) -> Result<TrainerState> {
    opt.load_state(dir.join(OPTIMIZER_FILE))?;
    if resumed.total_steps != total {
        bail!(
            "--resume: the checkpoint was trained for {} steps but this config gives {total}; resume with the same config",
            resumed.total_steps
        );
    }
    Ok(resumed)
}

/// Creates the run's folder and saves its resolved config there (what
/// `--resume` reads), before the first cross-fitted copy or step.
pub(super) fn save_run_config(cfg: &TrainConfig) -> Result<()> {
    std::fs::create_dir_all(&cfg.output_dir)
        .with_context(|| format!("cannot create {}", cfg.output_dir.display()))?;
    let mut file = AtomicFile::create(&cfg.output_dir.join("config.toml"))?;
    file.write_all(cfg.to_toml().as_bytes())?;
    file.commit()
}

/// The run's `metrics.jsonl`: one JSON object per step and per evaluation.
pub(super) struct MetricsLog {
    file: std::fs::File,
    started: Instant,
}

impl MetricsLog {
    /// Opens the log for appending; a resumed run first drops the lines
    /// written after its checkpoint at `resumed_step`.
    pub(super) fn open(dir: &Path, resumed_step: Option<u64>) -> Result<Self> {
        let path = dir.join("metrics.jsonl");
        if let Some(step) = resumed_step {
            truncate_log_after(&path, step)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(Self {
            file,
            started: Instant::now(),
        })
    }

    pub(super) fn write(&mut self, value: serde_json::Value) -> Result<()> {
        writeln!(self.file, "{value}")?;
        Ok(())
    }

    /// Seconds since the log was opened.
    pub(super) fn elapsed(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }
}
