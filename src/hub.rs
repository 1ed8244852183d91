//! Where a model comes from: a Hugging Face hub id, a local folder, or a config for a fresh model.
//!
//! # Model-source syntax
//!
//! One argument string names the model (see [`ModelSource::parse`]):
//!
//! * `config:PATH` — a fresh, randomly initialised model (training from scratch). `PATH` is a
//!   `config.json` file or a folder holding one; the tokenizer (`tokenizer.json`, else
//!   `vocab.txt`) is taken from the same folder if present, else the trainer builds a vocabulary from the training data.
//! * `hf:REPO[@REVISION]` — always the hub, even if a local folder of that name exists.
//! * an existing folder — a local model in Hugging Face layout (`config.json`, `tokenizer.json`
//!   or `vocab.txt`, `model.safetensors` or `pytorch_model.bin`). An existing path wins over a
//!   hub id of the same spelling, so a checkpoint folder written by `cws` is always found.
//! * anything else — a hub repo id, `REPO[@REVISION]`, e.g. `bert-base-chinese` or
//!   `bert-base-chinese@<commit-or-branch>`; the revision defaults to `main`.
//!
//! # Cache and environment
//!
//! Hub files live in the standard Hugging Face cache shared with Python (`huggingface_hub`)
//! and the `hf-hub` crate: `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else
//! `~/.cache/huggingface/hub`. Files already in the cache are used without any network access;
//! with `HF_HUB_OFFLINE=1` the network is never touched and a missing file is an error that
//! says what to download. See [`HubSettings::from_env`] for every variable read.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use hf_hub::api::sync::ApiBuilder;
use hf_hub::api::RepoInfo;
use hf_hub::{Cache, Repo, RepoType};

/// Config file of every Hugging Face model folder.
pub const CONFIG_FILE: &str = "config.json";
/// Tokenizer file names in order of preference.
pub const TOKENIZER_FILES: [&str; 2] = ["tokenizer.json", "vocab.txt"];
/// Weight file names in order of preference.
pub const WEIGHT_FILES: [&str; 2] = ["model.safetensors", "pytorch_model.bin"];
/// The branch a hub id without `@REVISION` means.
pub const DEFAULT_REVISION: &str = "main";
/// Seconds allowed for the hub's metadata request when `HF_HUB_ETAG_TIMEOUT` is unset
/// (the same default as Python's `huggingface_hub`).
pub const DEFAULT_METADATA_TIMEOUT_SECS: u64 = 10;
/// Seconds a download may stall, as `huggingface_hub`'s `HF_HUB_DOWNLOAD_TIMEOUT`.
pub const DEFAULT_DOWNLOAD_TIMEOUT_SECS: u64 = 10;

/// A parsed model-source argument.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelSource {
    /// A repository on the Hugging Face hub at a branch, tag or commit.
    Hub { repo_id: String, revision: String },
    /// A folder on disk in Hugging Face layout.
    Local(PathBuf),
    /// A new, randomly initialised model described by a `config.json`.
    Fresh { config: PathBuf },
}

/// The files a model is loaded from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelFiles {
    /// `config.json`.
    pub config: PathBuf,
    /// `tokenizer.json`, or `vocab.txt` from which the caller builds a BERT WordPiece tokenizer.
    /// None only for a fresh model without one beside its config: the trainer then builds
    /// the vocabulary from the training data.
    pub tokenizer: Option<PathBuf>,
    /// `model.safetensors` or `pytorch_model.bin`; `None` for a fresh model.
    pub weights: Option<PathBuf>,
}

/// Everything hub resolution reads from the environment, gathered once so that tests can build
/// one explicitly instead of mutating process-global variables.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HubSettings {
    /// The hub cache folder (the one holding `models--*` folders).
    pub cache_dir: PathBuf,
    /// Never touch the network; only cached files are used.
    pub offline: bool,
    /// Hub URL; `None` means hf-hub's default, `https://huggingface.co`.
    pub endpoint: Option<String>,
    /// Access token for gated or private repositories.
    pub token: Option<String>,
    /// Limit on the metadata request that precedes downloads.
    pub metadata_timeout: Duration,
    /// A download that receives no byte for this long is abandoned.
    pub download_timeout: Duration,
    /// Show hf-hub's download progress bars.
    pub progress: bool,
}

impl HubSettings {
    /// Settings for an offline lookup in `cache_dir`, the usual starting point in tests.
    pub fn offline(cache_dir: impl Into<PathBuf>) -> Self {
        HubSettings {
            cache_dir: cache_dir.into(),
            offline: true,
            endpoint: None,
            token: None,
            metadata_timeout: Duration::from_secs(DEFAULT_METADATA_TIMEOUT_SECS),
            download_timeout: Duration::from_secs(DEFAULT_DOWNLOAD_TIMEOUT_SECS),
            progress: false,
        }
    }

    /// Reads the process environment; see [`HubSettings::from_vars`].
    pub fn from_env() -> Self {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// Builds settings from a variable lookup:
    ///
    /// * `HF_HUB_CACHE` — the cache folder; else `$HF_HOME/hub`; else
    ///   `$HOME/.cache/huggingface/hub` (`%USERPROFILE%` on Windows).
    /// * `HF_HUB_OFFLINE` — `1`, `true`, `yes` or `on` (any case) forbids network access.
    /// * `HF_ENDPOINT` — hub URL, e.g. a mirror.
    /// * `HF_TOKEN` — access token; else the file `$HF_TOKEN_PATH`, else `$HF_HOME/token`.
    /// * `HF_HUB_ETAG_TIMEOUT` — seconds for the metadata request (default 10).
    /// * `HF_HUB_DOWNLOAD_TIMEOUT` — seconds a download may go without receiving a byte
    ///   (default 10).
    /// * `HF_HUB_DISABLE_PROGRESS_BARS` — set to a true value to hide download progress.
    ///
    /// Empty values count as unset.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Self {
        let var = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        let hf_home = var("HF_HOME").map(PathBuf::from).unwrap_or_else(|| {
            let home = var("HOME")
                .or_else(|| var("USERPROFILE"))
                .unwrap_or_default();
            Path::new(&home).join(".cache").join("huggingface")
        });
        let cache_dir = var("HF_HUB_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| hf_home.join("hub"));
        let token_file = var("HF_TOKEN_PATH")
            .map(PathBuf::from)
            .unwrap_or_else(|| hf_home.join("token"));
        let token = var("HF_TOKEN").or_else(|| {
            std::fs::read_to_string(token_file)
                .ok()
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
        });
        let seconds = |name: &str, default: u64| {
            var(name)
                .and_then(|v| v.trim().parse::<f64>().ok())
                .filter(|s| s.is_finite() && *s > 0.0)
                .map(Duration::from_secs_f64)
                .unwrap_or(Duration::from_secs(default))
        };
        let metadata_timeout = seconds("HF_HUB_ETAG_TIMEOUT", DEFAULT_METADATA_TIMEOUT_SECS);
        let download_timeout = seconds("HF_HUB_DOWNLOAD_TIMEOUT", DEFAULT_DOWNLOAD_TIMEOUT_SECS);
        HubSettings {
            cache_dir,
            offline: var("HF_HUB_OFFLINE").is_some_and(|v| is_truthy(&v)),
            endpoint: var("HF_ENDPOINT"),
            token,
            metadata_timeout,
            download_timeout,
            progress: !var("HF_HUB_DISABLE_PROGRESS_BARS").is_some_and(|v| is_truthy(&v)),
        }
    }
}

fn is_truthy(value: &str) -> bool {
    matches!(
        value.trim().to_ascii_lowercase().as_str(),
        "1" | "true" | "yes" | "on"
    )
}

impl ModelSource {
    /// Parses a model-source argument; see the module documentation for the syntax.
    ///
    /// Only the `config:` form and existing paths look at the file system here; whether a hub
    /// repository or its files exist is found out by [`resolve`].
    pub fn parse(arg: &str) -> Result<Self> {
        if arg.trim().is_empty() {
            bail!("expected a model source (hub id, model folder or config:PATH), got an empty string");
        }
        if let Some(path) = arg.strip_prefix("config:") {
            if path.is_empty() {
                bail!("expected a config.json path after `config:`, got {arg:?}");
            }
            return Ok(ModelSource::Fresh {
                config: PathBuf::from(path),
            });
        }
        if let Some(id) = arg.strip_prefix("hf:") {
            return parse_hub_id(id);
        }
        let path = Path::new(arg);
        if path.is_dir() {
            return Ok(ModelSource::Local(path.to_path_buf()));
        }
        if path.exists() {
            bail!(
                "expected a model folder, got the file {arg:?} (for a fresh model from a config use config:{arg})"
            );
        }
        if looks_like_path(arg) {
            bail!("model folder {arg:?} does not exist");
        }
        parse_hub_id(arg)
            .with_context(|| format!("{arg:?} is neither an existing folder nor a hub id"))
    }
}

/// Strings that can only be meant as paths, so a typo is reported as a missing folder rather
/// than as a failed hub lookup.
fn looks_like_path(arg: &str) -> bool {
    arg.starts_with('.')
        || arg.starts_with('/')
        || arg.starts_with('~')
        || arg.contains('\\')
        || arg.ends_with('/')
        || arg.matches('/').count() > 1
}

fn parse_hub_id(arg: &str) -> Result<ModelSource> {
    let (repo_id, revision) = match arg.split_once('@') {
        Some((repo, rev)) => (repo, rev),
        None => (arg, DEFAULT_REVISION),
    };
    if revision.is_empty() || revision.contains('@') || revision.contains("..") {
        bail!("expected a revision (branch, tag or commit) after `@`, got {revision:?} in {arg:?}");
    }
    // The hub's own rule: `name` or `owner/name` of word characters, `-` and `.`, no `--`/`..`.
    let parts: Vec<&str> = repo_id.split('/').collect();
    let valid_part = |p: &&str| {
        !p.is_empty()
            && p.len() <= 96
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            && !p.starts_with(['-', '.'])
            && !p.ends_with(['-', '.'])
    };
    if parts.len() > 2
        || !parts.iter().all(valid_part)
        || repo_id.contains("--")
        || repo_id.contains("..")
    {
        bail!("expected a hub repo id like `bert-base-chinese` or `owner/name`, got {repo_id:?}");
    }
    Ok(ModelSource::Hub {
        repo_id: repo_id.to_string(),
        revision: revision.to_string(),
    })
}

impl FromStr for ModelSource {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

impl fmt::Display for ModelSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelSource::Hub { repo_id, revision } if revision == DEFAULT_REVISION => {
                write!(f, "{repo_id}")
            }
            ModelSource::Hub { repo_id, revision } => write!(f, "{repo_id}@{revision}"),
            ModelSource::Local(path) => write!(f, "{}", path.display()),
            ModelSource::Fresh { config } => write!(f, "config:{}", config.display()),
        }
    }
}

/// [`ModelSource::parse`] then [`resolve`], for a `--model` value: when a
/// value that names no folder here fails as a hub id too, the error says
/// first that there is no such folder.
pub fn resolve_arg(arg: &str, settings: &HubSettings) -> Result<(ModelSource, ModelFiles)> {
    let source = ModelSource::parse(arg)?;
    let files = resolve(&source, settings).map_err(|err| match &source {
        ModelSource::Hub { .. } => {
            let here = std::env::current_dir()
                .map(|d| d.display().to_string())
                .unwrap_or_else(|_| ".".into());
            err.context(format!(
                "no model folder {arg:?} in {here}, and no hub model {arg:?} could be loaded"
            ))
        }
        _ => err,
    })?;
    Ok((source, files))
}

/// Finds the files of `source`, downloading missing hub files unless `settings.offline`.
pub fn resolve(source: &ModelSource, settings: &HubSettings) -> Result<ModelFiles> {
    match source {
        ModelSource::Local(dir) => resolve_local(dir),
        ModelSource::Fresh { config } => resolve_fresh(config),
        ModelSource::Hub { repo_id, revision } => resolve_hub(repo_id, revision, settings),
    }
}

/// The files of a local model folder in Hugging Face layout.
pub fn resolve_local(dir: &Path) -> Result<ModelFiles> {
    if !dir.is_dir() {
        bail!("model folder {} does not exist", dir.display());
    }
    let config = dir.join(CONFIG_FILE);
    if !config.is_file() {
        let runs: Vec<String> = ["best", "last"]
            .iter()
            .filter(|c| dir.join(c).join(CONFIG_FILE).is_file())
            .map(|c| dir.join(c).display().to_string())
            .collect();
        if !runs.is_empty() {
            bail!(
                "{} is a training run's folder, not a model: use {} ({})",
                dir.display(),
                runs.join(" or "),
                "best: the best dev score; last: the latest step"
            );
        }
        bail!("expected {CONFIG_FILE} in model folder {}", dir.display());
    }
    let tokenizer = first_existing(dir, &TOKENIZER_FILES).with_context(|| {
        format!(
            "expected tokenizer.json or vocab.txt in model folder {}",
            dir.display()
        )
    })?;
    let weights = first_existing(dir, &WEIGHT_FILES).with_context(|| {
        format!(
            "expected model.safetensors or pytorch_model.bin in model folder {} (for a fresh model use config:{})",
            dir.display(),
            dir.display()
        )
    })?;
    Ok(ModelFiles {
        config,
        tokenizer: Some(tokenizer),
        weights: Some(weights),
    })
}

fn resolve_fresh(config: &Path) -> Result<ModelFiles> {
    let config = if config.is_dir() {
        config.join(CONFIG_FILE)
    } else {
        config.to_path_buf()
    };
    if !config.is_file() {
        bail!("config file {} does not exist", config.display());
    }
    let dir = match config.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let tokenizer = first_existing(&dir, &TOKENIZER_FILES);
    Ok(ModelFiles {
        config,
        tokenizer,
        weights: None,
    })
}

fn first_existing(dir: &Path, names: &[&str]) -> Option<PathBuf> {
    names.iter().map(|n| dir.join(n)).find(|p| p.is_file())
}

/// The cache folder of a hub model repository, named exactly as hf-hub and `huggingface_hub`
/// name it (`models--owner--name`).
pub fn repo_cache_dir(cache_dir: &Path, repo_id: &str) -> PathBuf {
    cache_dir.join(Repo::model(repo_id.to_string()).folder_name())
}

/// The snapshot folder a revision points at in the cache, if any.
///
/// A branch or tag is looked up in `refs/<revision>`; a full commit hash is also accepted
/// directly, because `huggingface_hub` downloads by commit without writing a ref.
pub fn cached_snapshot(cache_dir: &Path, repo_id: &str, revision: &str) -> Option<PathBuf> {
    let repo_dir = repo_cache_dir(cache_dir, repo_id);
    // Trimmed because hf-hub's own lookup breaks on a ref file written with a trailing newline.
    let commit = std::fs::read_to_string(repo_dir.join("refs").join(revision))
        .ok()
        .map(|c| c.trim().to_string())
        .filter(|c| !c.is_empty())
        .or_else(|| is_commit_hash(revision).then(|| revision.to_string()))?;
    let snapshot = repo_dir.join("snapshots").join(commit);
    snapshot.is_dir().then_some(snapshot)
}

fn is_commit_hash(revision: &str) -> bool {
    revision.len() == 40 && revision.chars().all(|c| c.is_ascii_hexdigit())
}

/// A cached file of a hub repository at `revision`, if present (a dangling symlink into a
/// deleted blob counts as absent).
pub fn cached_file(cache_dir: &Path, repo_id: &str, revision: &str, file: &str) -> Option<PathBuf> {
    let path = cached_snapshot(cache_dir, repo_id, revision)?.join(file);
    path.is_file().then_some(path)
}

/// One file the model needs, with acceptable alternatives in order of preference.
struct Need<'a> {
    what: &'a str,
    names: &'a [&'a str],
}

const NEEDS: [Need<'static>; 3] = [
    Need {
        what: "config",
        names: &[CONFIG_FILE],
    },
    Need {
        what: "tokenizer",
        names: &TOKENIZER_FILES,
    },
    Need {
        what: "weights",
        names: &WEIGHT_FILES,
    },
];

fn resolve_hub(repo_id: &str, revision: &str, settings: &HubSettings) -> Result<ModelFiles> {
    fetch(repo_id, revision, settings, &NEEDS).map(files_from)
}

/// The files `names` of a hub model (beyond config, tokenizer and weights:
/// those its config asks for), from the cache or downloaded like the weights.
pub fn fetch_files(
    repo_id: &str,
    revision: &str,
    settings: &HubSettings,
    names: &[&str],
) -> Result<Vec<PathBuf>> {
    let singles: Vec<[&str; 1]> = names.iter().map(|n| [*n]).collect();
    let needs: Vec<Need> = singles
        .iter()
        .map(|n| Need {
            what: "model",
            names: n,
        })
        .collect();
    Ok(fetch(repo_id, revision, settings, &needs)?
        .into_iter()
        .flatten()
        .collect())
}

/// Each need's file: from the cache, else downloaded (unless offline).
fn fetch(
    repo_id: &str,
    revision: &str,
    settings: &HubSettings,
    needs: &[Need],
) -> Result<Vec<Option<PathBuf>>> {
    let cache = &settings.cache_dir;
    let cached: Vec<Option<PathBuf>> = needs
        .iter()
        .map(|need| {
            need.names
                .iter()
                .find_map(|name| cached_file(cache, repo_id, revision, name))
        })
        .collect();
    let missing: Vec<&Need> = needs
        .iter()
        .zip(&cached)
        .filter(|(_, found)| found.is_none())
        .map(|(need, _)| need)
        .collect();
    if missing.is_empty() {
        return Ok(cached);
    }
    if settings.offline {
        bail!(offline_error(repo_id, revision, cache, &missing));
    }
    download_missing(repo_id, revision, settings, needs, &cached).with_context(|| {
        format!(
            "could not get model {repo_id} (revision {revision}) from the hub; to work offline, \
             pre-download it and set HF_HUB_OFFLINE=1: {}",
            download_command(repo_id, revision, cache, &needs.iter().collect::<Vec<_>>())
        )
    })
}

fn files_from(mut found: Vec<Option<PathBuf>>) -> ModelFiles {
    let weights = found.pop().flatten();
    let tokenizer = found.pop().flatten().expect("tokenizer resolved");
    let config = found.pop().flatten().expect("config resolved");
    ModelFiles {
        config,
        tokenizer: Some(tokenizer),
        weights,
    }
}

fn offline_error(repo_id: &str, revision: &str, cache: &Path, missing: &[&Need]) -> String {
    let listed: Vec<String> = missing
        .iter()
        .map(|need| match need.names {
            [only] => only.to_string(),
            names => names.join(" or "),
        })
        .collect();
    format!(
        "HF_HUB_OFFLINE is set and model {repo_id} (revision {revision}) is not complete in the \
         Hugging Face cache {}: missing {}; download it on a machine with network access with\n  {}\n\
         and copy the cache folder here, or unset HF_HUB_OFFLINE",
        cache.display(),
        listed.join(", "),
        download_command(repo_id, revision, cache, missing)
    )
}

/// A `huggingface-cli` command that puts the missing files where this cache lookup finds them.
fn download_command(repo_id: &str, revision: &str, cache: &Path, missing: &[&Need]) -> String {
    let files: Vec<&str> = missing.iter().map(|need| need.names[0]).collect();
    // `HF_HOME` is the variable people know; it only fits when the cache is `$HF_HOME/hub`.
    let env = if cache.file_name().is_some_and(|n| n == "hub") {
        format!("HF_HOME={}", cache.parent().unwrap_or(cache).display())
    } else {
        format!("HF_HUB_CACHE={}", cache.display())
    };
    let rev = if revision == DEFAULT_REVISION {
        String::new()
    } else {
        format!(" --revision {revision}")
    };
    format!(
        "{env} huggingface-cli download {repo_id} {}{rev}",
        files.join(" ")
    )
}

fn download_missing(
    repo_id: &str,
    revision: &str,
    settings: &HubSettings,
    needs: &[Need],
    cached: &[Option<PathBuf>],
) -> Result<Vec<Option<PathBuf>>> {
    let mut builder = ApiBuilder::from_cache(Cache::new(settings.cache_dir.clone()))
        .with_token(settings.token.clone())
        .with_progress(settings.progress)
        .with_retries(2);
    if let Some(endpoint) = &settings.endpoint {
        builder = builder.with_endpoint(endpoint.clone());
    }
    let api = builder.build().context("could not create the hub client")?;
    let hub_repo = Repo::with_revision(repo_id.to_string(), RepoType::Model, revision.to_string());
    let repo = api.repo(hub_repo.clone());
    // The listing tells which alternative exists before any large download starts, and is the
    // only request whose time can be limited: hf-hub 0.5 has no timeout setting for downloads.
    let info: RepoInfo = repo
        .info_request()
        .config()
        .timeout_global(Some(settings.metadata_timeout))
        .build()
        .call()
        .with_context(|| {
            format!(
                "listing hub repo {repo_id} at revision {revision} failed (time limit {:?})",
                settings.metadata_timeout
            )
        })?
        .body_mut()
        .read_json()
        .with_context(|| format!("unexpected hub listing for {repo_id}"))?;
    let remote: Vec<&str> = info.siblings.iter().map(|s| s.rfilename.as_str()).collect();
    needs
        .iter()
        .zip(cached)
        .map(|(need, found)| {
            if let Some(path) = found {
                return Ok(Some(path.clone()));
            }
            let name = need
                .names
                .iter()
                .find(|n| remote.contains(n))
                .with_context(|| {
                    format!(
                        "expected {} file {} in hub repo {repo_id} (revision {revision}), found only {}",
                        need.what,
                        need.names.join(" or "),
                        remote.join(", ")
                    )
                })?;
            download_watched(&api, &hub_repo, name, settings)
                .map(Some)
                .with_context(|| format!("downloading {name} of {repo_id} (revision {revision})"))
        })
        .collect()
}

/// Downloads one file on a worker thread, abandoning it when no byte arrives
/// for `settings.download_timeout` (hf-hub's own requests have no time
/// limit, and a stalled server must not hang cws).
fn download_watched(
    api: &hf_hub::api::sync::Api,
    repo: &Repo,
    name: &str,
    settings: &HubSettings,
) -> Result<PathBuf> {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{mpsc, Arc};
    let received = Arc::new(AtomicU64::new(0));
    let watch = Watch {
        received: received.clone(),
        bar: settings.progress.then(indicatif::ProgressBar::no_length),
    };
    let (done, result) = mpsc::channel();
    let (api, repo, file) = (api.clone(), repo.clone(), name.to_string());
    std::thread::spawn(move || {
        let _ = done.send(api.repo(repo).download_with_progress(&file, watch));
    });
    let tick = settings.download_timeout.min(Duration::from_millis(200));
    let (mut seen, mut since) = (0, std::time::Instant::now());
    loop {
        match result.recv_timeout(tick) {
            Ok(r) => return Ok(r?),
            Err(mpsc::RecvTimeoutError::Disconnected) => bail!("the download thread ended"),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let now = received.load(Ordering::Relaxed);
                if now != seen {
                    (seen, since) = (now, std::time::Instant::now());
                } else if since.elapsed() >= settings.download_timeout {
                    bail!(
                        "the hub sent nothing for {:?} ({seen} bytes received); giving up \
                         (HF_HUB_DOWNLOAD_TIMEOUT sets the limit in seconds)",
                        settings.download_timeout
                    );
                }
            }
        }
    }
}

/// Download progress: bytes received (for the stall watch) and a bar.
struct Watch {
    received: std::sync::Arc<std::sync::atomic::AtomicU64>,
    bar: Option<indicatif::ProgressBar>,
}

impl hf_hub::api::Progress for Watch {
    fn init(&mut self, size: usize, filename: &str) {
        if let Some(bar) = &self.bar {
            bar.set_length(size as u64);
            bar.set_message(filename.to_string());
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ({eta})",
                )
                .expect("a valid template"),
            );
        }
    }
    fn update(&mut self, size: usize) {
        self.received
            .fetch_add(size as u64, std::sync::atomic::Ordering::Relaxed);
        if let Some(bar) = &self.bar {
            bar.inc(size as u64);
        }
    }
    fn finish(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
