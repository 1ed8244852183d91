//! `cws export`: copies a trained model into a folder fit to ship — weights
//! (optionally as f16), config, vocabulary and lexicon, without optimizer or
//! trainer state. The folder is written beside its destination and renamed
//! into place; a destination holding anything but a model is refused.

use crate::checkpoint::write_atomic;
use crate::config::{open_device, DeviceChoice};
use crate::model_dir::{self, MODEL_CARD_FILE, MODEL_FOLDER_FILES, RECIPE_FILE};
use crate::output::{folder_state, foreign_files_error, FolderState};
use anyhow::{bail, Context, Result};
use candle_core::DType;
use std::path::{Path, PathBuf};

pub const EXAMPLES: &str = "Examples:
  cws export --model runs/default-pku/best --output models/pku --dtype f16
  cws export --model runs/small-pku/best --output /tmp/small-pku";

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SaveDtype {
    F32,
    F16,
    Bf16,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Trained model: a folder saved by `cws train`, or a hub id of one.
    #[arg(long)]
    pub model: String,
    /// Folder to write: new, empty, or an earlier export (replaced; its
    /// README.md model card is kept). Other folders are refused.
    #[arg(long)]
    pub output: PathBuf,
    /// Replace the output folder even if it holds files that are not a
    /// model's (they are deleted).
    #[arg(long)]
    pub force: bool,
    /// Weight dtype of the exported model.
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: SaveDtype,
}

pub fn run(args: Args) -> Result<()> {
    check_destination(&args.output, args.force)?;
    let tagger = model_dir::load(&args.model, &open_device(DeviceChoice::Cpu)?)?;
    let dtype = match args.dtype {
        SaveDtype::F32 => DType::F32,
        SaveDtype::F16 => DType::F16,
        SaveDtype::Bf16 => DType::BF16,
    };
    let source = PathBuf::from(&args.model);
    let card = std::fs::read(args.output.join(MODEL_CARD_FILE)).ok();
    write_atomic(&args.output, |tmp| {
        model_dir::save(&tagger, tmp, dtype, &tagger.features)?;
        // The recipe travels with the model when there is one.
        let recipe = source.join(RECIPE_FILE);
        if recipe.is_file() {
            std::fs::copy(&recipe, tmp.join(RECIPE_FILE))?;
        }
        if let Some(card) = &card {
            std::fs::write(tmp.join(MODEL_CARD_FILE), card)?;
        }
        Ok(())
    })
    .with_context(|| format!("exporting to {}", args.output.display()))?;
    eprintln!(
        "exported {} to {} ({:?} weights{})",
        args.model,
        args.output.display(),
        dtype,
        if card.is_some() {
            ", model card kept"
        } else {
            ""
        }
    );
    Ok(())
}

/// Refuses a destination that is not a folder `export` may replace.
fn check_destination(dest: &Path, force: bool) -> Result<()> {
    if dest.as_os_str().is_empty() || dest.file_name().is_none() {
        bail!(
            "--output {}: name a folder to create (e.g. models/mine), not the current or a parent folder",
            dest.display()
        );
    }
    let state = folder_state(dest, |name, is_dir| {
        !is_dir && MODEL_FOLDER_FILES.contains(&name)
    })?;
    match state {
        FolderState::Foreign(files) if !force => {
            Err(foreign_files_error(dest, "a model's", &files))
        }
        _ => Ok(()),
    }
}
