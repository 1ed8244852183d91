//! `cws export`: copies a trained model into a folder fit to ship — weights
//! (optionally as f16), config, vocabulary and lexicon, without optimizer or
//! trainer state. The folder is written atomically.

use crate::checkpoint::write_atomic;
use crate::config::{open_device, DeviceChoice};
use crate::tagger::Tagger;
use anyhow::{Context, Result};
use candle_core::DType;
use std::path::PathBuf;

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
    /// Folder to write (replaced if it exists).
    #[arg(long)]
    pub output: PathBuf,
    /// Weight dtype of the exported model.
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: SaveDtype,
}

pub fn run(args: Args) -> Result<()> {
    let tagger = Tagger::load(&args.model, &open_device(DeviceChoice::Cpu)?)?;
    let dtype = match args.dtype {
        SaveDtype::F32 => DType::F32,
        SaveDtype::F16 => DType::F16,
        SaveDtype::Bf16 => DType::BF16,
    };
    let source = PathBuf::from(&args.model);
    write_atomic(&args.output, |tmp| {
        tagger.save(tmp, dtype, &tagger.features)?;
        // The recipe travels with the model when there is one.
        let recipe = source.join("cws-train.toml");
        if recipe.is_file() {
            std::fs::copy(&recipe, tmp.join("cws-train.toml"))?;
        }
        Ok(())
    })
    .with_context(|| format!("exporting to {}", args.output.display()))?;
    eprintln!(
        "exported {} to {} ({:?} weights)",
        args.model,
        args.output.display(),
        dtype
    );
    Ok(())
}
