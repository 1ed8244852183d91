//! The same seed gives byte-identical weights on CPU whatever the number of
//! threads: the same run through the `cws` binary on one rayon thread and on
//! two writes the same `last/` and `best/` weights.
//!
//! The model is the tiny config with a wider feed-forward layer (2048), so
//! that the sums the backward pass and gradient clipping take (bias gradients,
//! squared norms) span more pieces than one thread splits them into, and the
//! matrix products are big enough to be cut between threads: before sums took
//! a fixed order, two threads changed the last bits of the weights.

use crate::common::{cws, write_file};
use std::path::{Path, PathBuf};

/// Writes the data and the model config into `dir`, then one run config per
/// output folder in `outs` (absolute paths throughout); returns the run configs.
fn setup(dir: &Path, outs: &[&Path]) -> Vec<PathBuf> {
    let train = write_file(dir, "train.txt", crate::training::corpus(150).as_bytes());
    let tiny = std::fs::read_to_string(crate::common::repo_root().join("configs/tiny/config.json"))
        .unwrap();
    let mut model: serde_json::Value = serde_json::from_str(&tiny).unwrap();
    model["intermediate_size"] = 2048.into();
    let model = write_file(dir, "model.json", model.to_string().as_bytes());
    outs.iter()
        .enumerate()
        .map(|(i, out)| {
            let toml = format!(
                "model = \"config:{}\"\nvocab = \"train\"\ntrain = \"{}\"\ndev_fraction = 0.2\n\
                 max_length = 32\nbatch_size = 8\nmax_steps = 12\nlearning_rate = 2e-3\n\
                 eval_every = 3\ndevice = \"cpu\"\noutput_dir = \"{}\"\n",
                model.display(),
                train.display(),
                out.display()
            );
            write_file(dir, &format!("run{i}.toml"), toml.as_bytes())
        })
        .collect()
}

/// Trains `config` with `threads` rayon threads.
fn train(config: &Path, threads: &str) {
    let res = cws()
        .args(["train", "--config"])
        .arg(config)
        .args(["--progress", "quiet"])
        .env("RAYON_NUM_THREADS", threads)
        .output()
        .expect("cws runs");
    assert!(
        res.status.success(),
        "cws train on {threads} thread(s): {}",
        String::from_utf8_lossy(&res.stderr)
    );
}

#[test]
fn same_seed_gives_the_same_weights_on_one_and_two_threads() {
    let tmp = tempfile::tempdir().unwrap();
    let (one, two) = (tmp.path().join("one"), tmp.path().join("two"));
    let configs = setup(tmp.path(), &[&one, &two]);
    train(&configs[0], "1");
    train(&configs[1], "2");
    for folder in ["last", "best"] {
        let file = format!("{folder}/model.safetensors");
        let (a, b) = (
            std::fs::read(one.join(&file)).unwrap(),
            std::fs::read(two.join(&file)).unwrap(),
        );
        let first = a.iter().zip(&b).position(|(x, y)| x != y);
        assert!(
            a.len() == b.len() && first.is_none(),
            "{file}: 1 and 2 threads differ (sizes {} and {}, first differing byte {first:?})",
            a.len(),
            b.len()
        );
    }
}
