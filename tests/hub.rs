//! Model-source parsing, offline hub-cache resolution and atomic checkpoint folders.
//!
//! The hub cache is laid out as hf-hub 0.5 writes it (`models--NAME/refs/REV` holding a commit
//! hash without newline, `snapshots/COMMIT/FILE` relative symlinks to `blobs/ETAG`, an empty
//! `blobs/ETAG.lock` left by its download lock). Blob names have the real form (40 hex digits
//! for git files, 64 for LFS files) but are not the real hashes: nothing reads them back.

use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use cws::checkpoint::write_atomic;
use cws::hub::{resolve, HubSettings, ModelFiles, ModelSource};

const REPO: &str = "bert-base-chinese";
/// The commit `main` points at in the fixture cache.
const MAIN_COMMIT: &str = "8d2a91f91cc38c96bb8b4556ba70c392f8d5ee55";
/// An older commit, tagged `v1`, holding only the fallback files.
const OLD_COMMIT: &str = "38fda776740d17609554e879e3ac7b9837bdb5ee";

use crate::common::shared_model_dir;

macro_rules! shared_or_skip {
    () => {
        match shared_model_dir() {
            Some(dir) => dir,
            None => {
                eprintln!(
                    "skipping: shared/models/bert-base-chinese not found \
                     (set CWS_SHARED_DIR to the folder holding models/)"
                );
                return;
            }
        }
    };
}

/// A blob name of the right form derived from `seed` (FNV-1a, repeated to the length needed).
fn fake_hash(seed: &[u8], hex_len: usize) -> String {
    let mut out = String::new();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    while out.len() < hex_len {
        for b in seed {
            h = (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
        out.push_str(&format!("{h:016x}"));
    }
    out.truncate(hex_len);
    out
}

/// Writes a hub cache repo the way hf-hub 0.5 does.
struct CacheRepo {
    dir: PathBuf,
}

impl CacheRepo {
    fn new(hub_cache: &Path, repo_id: &str) -> Self {
        let dir = hub_cache.join(format!("models--{}", repo_id.replace('/', "--")));
        fs::create_dir_all(dir.join("blobs")).unwrap();
        CacheRepo { dir }
    }

    fn set_ref(&self, revision: &str, commit: &str) {
        let path = self.dir.join("refs").join(revision);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, commit).unwrap();
    }

    /// Stores `bytes` as a blob (named like a git blob id) and links it into the snapshot.
    fn add_bytes(&self, commit: &str, name: &str, bytes: &[u8]) {
        let etag = fake_hash(bytes, 40);
        fs::write(self.dir.join("blobs").join(&etag), bytes).unwrap();
        self.link(commit, name, &etag);
    }

    /// Links an already written blob (an LFS file) into the snapshot.
    fn link(&self, commit: &str, name: &str, etag: &str) {
        fs::write(self.dir.join("blobs").join(format!("{etag}.lock")), b"").unwrap();
        let snapshot = self.dir.join("snapshots").join(commit);
        fs::create_dir_all(&snapshot).unwrap();
        let link = snapshot.join(name);
        if !link.exists() {
            std::os::unix::fs::symlink(Path::new("../../blobs").join(etag), link).unwrap();
        }
    }
}

/// Names and shapes of the hub's bert-base-chinese `model.safetensors` (a `BertForPreTraining`
/// export): old TensorFlow-style `gamma`/`beta` LayerNorm names in the encoder, `weight`/`bias`
/// in the prediction head, as mixed checkpoints have them.
pub fn bert_base_chinese_tensors() -> Vec<(String, Vec<usize>)> {
    let (v, h, f, p, layers) = (21128, 768, 3072, 512, 12);
    let mut t: Vec<(String, Vec<usize>)> = vec![
        ("bert.embeddings.word_embeddings.weight".into(), vec![v, h]),
        (
            "bert.embeddings.position_embeddings.weight".into(),
            vec![p, h],
        ),
        (
            "bert.embeddings.token_type_embeddings.weight".into(),
            vec![2, h],
        ),
        ("bert.embeddings.LayerNorm.gamma".into(), vec![h]),
        ("bert.embeddings.LayerNorm.beta".into(), vec![h]),
    ];
    for i in 0..layers {
        let l = format!("bert.encoder.layer.{i}");
        for m in ["query", "key", "value"] {
            t.push((format!("{l}.attention.self.{m}.weight"), vec![h, h]));
            t.push((format!("{l}.attention.self.{m}.bias"), vec![h]));
        }
        t.push((format!("{l}.attention.output.dense.weight"), vec![h, h]));
        t.push((format!("{l}.attention.output.dense.bias"), vec![h]));
        t.push((format!("{l}.attention.output.LayerNorm.gamma"), vec![h]));
        t.push((format!("{l}.attention.output.LayerNorm.beta"), vec![h]));
        t.push((format!("{l}.intermediate.dense.weight"), vec![f, h]));
        t.push((format!("{l}.intermediate.dense.bias"), vec![f]));
        t.push((format!("{l}.output.dense.weight"), vec![h, f]));
        t.push((format!("{l}.output.dense.bias"), vec![h]));
        t.push((format!("{l}.output.LayerNorm.gamma"), vec![h]));
        t.push((format!("{l}.output.LayerNorm.beta"), vec![h]));
    }
    t.extend([
        ("bert.pooler.dense.weight".into(), vec![h, h]),
        ("bert.pooler.dense.bias".into(), vec![h]),
        ("cls.predictions.bias".into(), vec![v]),
        ("cls.predictions.transform.dense.weight".into(), vec![h, h]),
        ("cls.predictions.transform.dense.bias".into(), vec![h]),
        ("cls.predictions.transform.LayerNorm.weight".into(), vec![h]),
        ("cls.predictions.transform.LayerNorm.bias".into(), vec![h]),
        ("cls.seq_relationship.weight".into(), vec![2, h]),
        ("cls.seq_relationship.bias".into(), vec![2]),
    ]);
    t
}

/// Streams an f32 safetensors file of small random values (xorshift) to `path`.
fn write_random_safetensors(path: &Path, tensors: &[(String, Vec<usize>)]) {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!({ "format": "pt" }));
    let mut offset = 0usize;
    for (name, shape) in tensors {
        let bytes = shape.iter().product::<usize>() * 4;
        header.insert(
            name.clone(),
            serde_json::json!({ "dtype": "F32", "shape": shape, "data_offsets": [offset, offset + bytes] }),
        );
        offset += bytes;
    }
    let mut header = serde_json::to_vec(&serde_json::Value::Object(header)).unwrap();
    // The format wants the data 8-byte aligned; padding with spaces is what writers do.
    while !header.len().is_multiple_of(8) {
        header.push(b' ');
    }
    let mut out = BufWriter::with_capacity(1 << 20, fs::File::create(path).unwrap());
    out.write_all(&(header.len() as u64).to_le_bytes()).unwrap();
    out.write_all(&header).unwrap();
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut chunk = vec![0u8; 1 << 20];
    let mut left = offset;
    while left > 0 {
        let n = left.min(chunk.len());
        for word in chunk[..n].chunks_exact_mut(4) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let x = ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.04;
            word.copy_from_slice(&x.to_le_bytes());
        }
        out.write_all(&chunk[..n]).unwrap();
        left -= n;
    }
    out.flush().unwrap();
}

/// The full-size fixture cache: `$HF_HOME/hub` with bert-base-chinese at `main` (real config
/// and tokenizer files, ~400 MB of random weights) and an older commit tagged `v1`.
///
/// Built once and kept under the cargo target tmp dir, so later runs skip the 400 MB write;
/// it is built in a temp folder and renamed, so an interrupted run never leaves half of it.
fn fixture_hf_home(shared: &Path) -> PathBuf {
    static HOME: OnceLock<PathBuf> = OnceLock::new();
    HOME.get_or_init(|| {
        let home = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cws-hub-fixture-v1");
        if !home.join("complete").is_file() {
            write_atomic(&home, |dir| {
                build_fixture(&dir.join("hub"), shared);
                fs::write(dir.join("complete"), b"")?;
                Ok(())
            })
            .unwrap();
        }
        home
    })
    .clone()
}

fn build_fixture(hub: &Path, shared: &Path) {
    let repo = CacheRepo::new(hub, REPO);
    for name in [
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.txt",
    ] {
        repo.add_bytes(MAIN_COMMIT, name, &fs::read(shared.join(name)).unwrap());
    }
    let tensors = bert_base_chinese_tensors();
    let etag = fake_hash(format!("{tensors:?}").as_bytes(), 64);
    write_random_safetensors(&repo.dir.join("blobs").join(&etag), &tensors);
    repo.link(MAIN_COMMIT, "model.safetensors", &etag);
    repo.set_ref("main", MAIN_COMMIT);

    // Only the fallbacks, so choosing them is observable.
    repo.add_bytes(
        OLD_COMMIT,
        "config.json",
        &fs::read(shared.join("config.json")).unwrap(),
    );
    repo.add_bytes(
        OLD_COMMIT,
        "vocab.txt",
        &fs::read(shared.join("vocab.txt")).unwrap(),
    );
    repo.add_bytes(OLD_COMMIT, "pytorch_model.bin", b"not a real pickle");
    repo.set_ref("v1", OLD_COMMIT);
}

fn hub(repo_id: &str, revision: &str) -> ModelSource {
    ModelSource::Hub {
        repo_id: repo_id.into(),
        revision: revision.into(),
    }
}

fn err_text(err: anyhow::Error) -> String {
    format!("{err:#}")
}

#[test]
fn parses_sources_with_existing_paths_winning() {
    assert_eq!(
        ModelSource::parse("bert-base-chinese").unwrap(),
        hub(REPO, "main")
    );
    assert_eq!(
        ModelSource::parse("hfl/chinese-roberta-wwm-ext@v1.0").unwrap(),
        hub("hfl/chinese-roberta-wwm-ext", "v1.0")
    );
    assert_eq!(
        ModelSource::parse("config:models/cfg.json").unwrap(),
        ModelSource::Fresh {
            config: "models/cfg.json".into()
        }
    );
    // Tests run in the crate root, where `src` is a folder and also a valid hub id.
    assert_eq!(
        ModelSource::parse("src").unwrap(),
        ModelSource::Local("src".into())
    );
    assert_eq!(ModelSource::parse("hf:src").unwrap(), hub("src", "main"));
    assert_eq!(
        ModelSource::parse("bert-base-chinese@dev")
            .unwrap()
            .to_string(),
        "bert-base-chinese@dev"
    );

    let e = err_text(ModelSource::parse("Cargo.toml").unwrap_err());
    assert!(
        e.contains("expected a model folder") && e.contains("config:Cargo.toml"),
        "{e}"
    );
    let e = err_text(ModelSource::parse("./no/such/model").unwrap_err());
    assert!(e.contains("does not exist"), "{e}");
    let e = err_text(ModelSource::parse("bad--name").unwrap_err());
    assert!(e.contains("\"bad--name\""), "{e}");
    assert!(ModelSource::parse("bert-base-chinese@").is_err());
    assert!(ModelSource::parse("config:").is_err());
    assert!(ModelSource::parse("").is_err());
}

#[test]
fn settings_follow_hugging_face_variables() {
    let vars = |pairs: &'static [(&'static str, &'static str)]| {
        move |k: &str| {
            pairs
                .iter()
                .find(|(name, _)| *name == k)
                .map(|(_, v)| v.to_string())
        }
    };
    let s = HubSettings::from_vars(vars(&[("HOME", "/home/u")]));
    assert_eq!(s.cache_dir, Path::new("/home/u/.cache/huggingface/hub"));
    assert!(!s.offline);
    let s = HubSettings::from_vars(vars(&[
        ("HOME", "/h"),
        ("HF_HOME", "/data/hf"),
        ("HF_HUB_OFFLINE", "1"),
    ]));
    assert_eq!(s.cache_dir, Path::new("/data/hf/hub"));
    assert!(s.offline);
    let s = HubSettings::from_vars(vars(&[
        ("HF_HOME", "/data/hf"),
        ("HF_HUB_CACHE", "/fast/cache"),
        ("HF_HUB_OFFLINE", "TRUE"),
        ("HF_TOKEN", "hf_x"),
        ("HF_HUB_ETAG_TIMEOUT", "2.5"),
    ]));
    assert_eq!(s.cache_dir, Path::new("/fast/cache"));
    assert!(s.offline);
    assert_eq!(s.token.as_deref(), Some("hf_x"));
    assert_eq!(s.metadata_timeout, std::time::Duration::from_millis(2500));
    let s = HubSettings::from_vars(vars(&[("HF_HOME", "/data/hf"), ("HF_HUB_OFFLINE", "0")]));
    assert!(!s.offline);
}

#[test]
fn resolves_cached_main_offline() {
    let shared = shared_or_skip!();
    let home = fixture_hf_home(&shared);
    let settings = HubSettings::offline(home.join("hub"));
    let files = resolve(&hub(REPO, "main"), &settings).unwrap();
    let snapshot = home
        .join("hub/models--bert-base-chinese/snapshots")
        .join(MAIN_COMMIT);
    assert_eq!(
        files,
        ModelFiles {
            config: snapshot.join("config.json"),
            tokenizer: Some(snapshot.join("tokenizer.json")),
            weights: Some(snapshot.join("model.safetensors")),
        }
    );
    assert_eq!(
        fs::read(files.tokenizer.as_ref().unwrap()).unwrap(),
        fs::read(shared.join("tokenizer.json")).unwrap()
    );
}

#[test]
fn cached_files_are_used_online_without_network() {
    let shared = shared_or_skip!();
    let home = fixture_hf_home(&shared);
    // A closed local port: any request would fail, so success proves none was made.
    let settings = HubSettings {
        offline: false,
        endpoint: Some("http://127.0.0.1:9".into()),
        ..HubSettings::offline(home.join("hub"))
    };
    let files = resolve(&hub(REPO, "main"), &settings).unwrap();
    assert!(files.weights.unwrap().ends_with("model.safetensors"));

    let empty = tempfile::tempdir().unwrap();
    let settings = HubSettings {
        cache_dir: empty.path().join("hub"),
        ..settings
    };
    let e = err_text(resolve(&hub(REPO, "main"), &settings).unwrap_err());
    assert!(e.contains("could not get model bert-base-chinese"), "{e}");
    assert!(e.contains("HF_HUB_OFFLINE=1"), "{e}");
}

#[test]
fn resolves_other_revisions_by_ref_or_commit() {
    let shared = shared_or_skip!();
    let home = fixture_hf_home(&shared);
    let settings = HubSettings::offline(home.join("hub"));
    let old = home
        .join("hub/models--bert-base-chinese/snapshots")
        .join(OLD_COMMIT);
    let expected = ModelFiles {
        config: old.join("config.json"),
        tokenizer: Some(old.join("vocab.txt")),
        weights: Some(old.join("pytorch_model.bin")),
    };
    assert_eq!(resolve(&hub(REPO, "v1"), &settings).unwrap(), expected);
    assert_eq!(
        resolve(&hub(REPO, OLD_COMMIT), &settings).unwrap(),
        expected
    );
    let main = resolve(&hub(REPO, MAIN_COMMIT), &settings).unwrap();
    assert!(main.config.starts_with(
        home.join("hub/models--bert-base-chinese/snapshots")
            .join(MAIN_COMMIT)
    ));

    let e = err_text(resolve(&hub(REPO, "dev"), &settings).unwrap_err());
    assert!(
        e.contains("revision dev") && e.contains("--revision dev"),
        "{e}"
    );
}

#[test]
fn missing_file_offline_says_what_to_download() {
    let shared = shared_or_skip!();
    let home = tempfile::tempdir().unwrap();
    let cache = home.path().join("hub");
    let repo = CacheRepo::new(&cache, REPO);
    let commit = "0123456789abcdef0123456789abcdef01234567";
    for name in ["config.json", "tokenizer.json"] {
        repo.add_bytes(commit, name, &fs::read(shared.join(name)).unwrap());
    }
    repo.set_ref("main", commit);

    let e = err_text(resolve(&hub(REPO, "main"), &HubSettings::offline(&cache)).unwrap_err());
    assert!(e.contains("HF_HUB_OFFLINE"), "{e}");
    assert!(e.contains("model bert-base-chinese (revision main)"), "{e}");
    assert!(e.contains(&format!("cache {}", cache.display())), "{e}");
    assert!(
        e.contains("missing model.safetensors or pytorch_model.bin"),
        "{e}"
    );
    assert!(
        e.contains(&format!(
            "HF_HOME={} huggingface-cli download bert-base-chinese model.safetensors",
            home.path().display()
        )),
        "{e}"
    );

    let other = tempfile::tempdir().unwrap();
    let e = err_text(
        resolve(
            &hub("hfl/rbt3", "main"),
            &HubSettings::offline(other.path()),
        )
        .unwrap_err(),
    );
    assert!(
        e.contains(&format!(
            "HF_HUB_CACHE={} huggingface-cli download hfl/rbt3 config.json tokenizer.json model.safetensors",
            other.path().display()
        )),
        "{e}"
    );
}

#[test]
fn hub_weights_open_with_candle_in_real_shapes() {
    let shared = shared_or_skip!();
    let home = fixture_hf_home(&shared);
    let files = resolve(&hub(REPO, "main"), &HubSettings::offline(home.join("hub"))).unwrap();
    // SAFETY: the fixture file is not modified while mapped.
    let st = unsafe { candle_core::safetensors::MmapedSafetensors::new(files.weights.unwrap()) }
        .unwrap();
    let emb = st
        .load(
            "bert.embeddings.word_embeddings.weight",
            &candle_core::Device::Cpu,
        )
        .unwrap();
    assert_eq!(emb.dims(), &[21128, 768]);
    assert_eq!(emb.dtype(), candle_core::DType::F32);
    assert_eq!(st.tensors().len(), bert_base_chinese_tensors().len());
    let gamma = st
        .load(
            "bert.encoder.layer.11.output.LayerNorm.gamma",
            &candle_core::Device::Cpu,
        )
        .unwrap();
    assert_eq!(gamma.dims(), &[768]);
}

#[test]
fn resolves_local_folders_and_fresh_configs() {
    let shared = shared_or_skip!();
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    fs::create_dir(&model).unwrap();
    fs::copy(shared.join("config.json"), model.join("config.json")).unwrap();
    fs::copy(shared.join("vocab.txt"), model.join("vocab.txt")).unwrap();

    let arg = model.to_str().unwrap();
    let source = ModelSource::parse(arg).unwrap();
    assert_eq!(source, ModelSource::Local(model.clone()));
    let e = err_text(resolve(&source, &HubSettings::offline(dir.path())).unwrap_err());
    assert!(
        e.contains("expected model.safetensors or pytorch_model.bin"),
        "{e}"
    );

    fs::write(model.join("pytorch_model.bin"), b"x").unwrap();
    fs::write(model.join("model.safetensors"), b"x").unwrap();
    let files = resolve(&source, &HubSettings::offline(dir.path())).unwrap();
    assert_eq!(files.tokenizer, Some(model.join("vocab.txt")));
    assert_eq!(files.weights, Some(model.join("model.safetensors")));

    let fresh =
        ModelSource::parse(&format!("config:{}", shared.join("config.json").display())).unwrap();
    let files = resolve(&fresh, &HubSettings::offline(dir.path())).unwrap();
    assert_eq!(
        files,
        ModelFiles {
            config: shared.join("config.json"),
            tokenizer: Some(shared.join("tokenizer.json")),
            weights: None,
        }
    );
    let by_dir = ModelSource::parse(&format!("config:{}", model.display())).unwrap();
    assert_eq!(
        resolve(&by_dir, &HubSettings::offline(dir.path()))
            .unwrap()
            .config,
        model.join("config.json")
    );
    let e = err_text(
        resolve(
            &ModelSource::Fresh {
                config: dir.path().join("nope.json"),
            },
            &HubSettings::offline(dir.path()),
        )
        .unwrap_err(),
    );
    assert!(
        e.contains("nope.json") && e.contains("does not exist"),
        "{e}"
    );
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Writes `files` (name, content) as the whole new content of `dest`.
fn write_files_atomic(dest: &Path, files: &[(&str, &[u8])]) -> anyhow::Result<()> {
    write_atomic(dest, |dir| {
        for (name, bytes) in files {
            fs::write(dir.join(name), bytes)?;
        }
        Ok(())
    })
}

#[test]
fn checkpoint_write_is_all_or_nothing() {
    let root = tempfile::tempdir().unwrap();
    let dest = root.path().join("ckpt");
    write_files_atomic(&dest, &[("a.txt", b"old a"), ("b.txt", b"old b")]).unwrap();
    assert_eq!(entries(&dest), ["a.txt", "b.txt"]);

    let e = write_atomic(&dest, |dir| {
        fs::write(dir.join("a.txt"), "new a")?;
        anyhow::bail!("disk full while writing weights")
    })
    .unwrap_err();
    assert!(err_text(e).contains("disk full"));
    assert_eq!(fs::read_to_string(dest.join("a.txt")).unwrap(), "old a");
    assert_eq!(entries(&dest), ["a.txt", "b.txt"]);
    assert_eq!(entries(root.path()), ["ckpt"]);

    let panicked = std::panic::catch_unwind(|| {
        let _ = write_atomic(&dest, |dir| {
            fs::write(dir.join("a.txt"), "new a")?;
            panic!("writer crashed");
        });
    });
    assert!(panicked.is_err());
    assert_eq!(fs::read_to_string(dest.join("a.txt")).unwrap(), "old a");
    assert_eq!(entries(root.path()), ["ckpt"]);

    write_files_atomic(&dest, &[("c.txt", b"new c")]).unwrap();
    assert_eq!(entries(&dest), ["c.txt"]);
    assert_eq!(entries(root.path()), ["ckpt"]);

    let file = root.path().join("plain");
    fs::write(&file, "x").unwrap();
    let e = err_text(write_files_atomic(&file, &[]).unwrap_err());
    assert!(e.contains("found a file"), "{e}");
}

/// The one loader and the one writer of model folders are inverse: the
/// bundled model, loaded and saved again in its dtype, is the same files.
#[test]
fn model_folder_loads_and_saves_back_byte_for_byte() {
    let bundled = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/pku");
    let tagger =
        cws::model_dir::load(bundled.to_str().unwrap(), &candle_core::Device::Cpu).unwrap();
    let root = tempfile::tempdir().unwrap();
    let dest = root.path().join("again");
    write_atomic(&dest, |dir| {
        cws::model_dir::save(&tagger, dir, candle_core::DType::F16, &tagger.features)
    })
    .unwrap();
    let written = entries(&dest);
    assert!(written.len() >= 5, "{written:?}");
    for name in &written {
        assert!(
            cws::model_dir::MODEL_FOLDER_FILES.contains(&name.as_str()),
            "{name} is not in the model-folder contract"
        );
        assert_eq!(
            fs::read(dest.join(name)).unwrap(),
            fs::read(bundled.join(name)).unwrap(),
            "{name} differs"
        );
    }
    // A missing feature file is an error naming it.
    fs::remove_file(dest.join(cws::model_dir::LEXICON_FILE)).unwrap();
    let err = format!(
        "{:#}",
        cws::model_dir::load(dest.to_str().unwrap(), &candle_core::Device::Cpu)
            .err()
            .unwrap()
    );
    assert!(err.contains(cws::model_dir::LEXICON_FILE), "{err}");
}
