//! The real download path against a hub on the loopback address: a small
//! HTTP server answering the requests hf-hub makes (repo listing, ranged file
//! requests with the commit and etag headers), `HF_ENDPOINT` pointing at it.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use crate::common::{cws, repo_root, run_with_stdin};

const REPO: &str = "cws-test/pku";
const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

#[derive(Clone, Copy, PartialEq)]
enum Behaviour {
    /// Answers every request.
    Serve,
    /// Reads requests and never answers any.
    NeverAnswer,
    /// Lists the repo, never answers a file request.
    StallFiles,
}

/// Starts a hub serving `files` as the repo `REPO` at `COMMIT`; returns its URL.
fn start_hub(files: Vec<(String, Vec<u8>)>, behaviour: Behaviour) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let files = std::sync::Arc::new(files);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let files = files.clone();
            std::thread::spawn(move || answer(stream, &files, behaviour));
        }
    });
    url
}

fn answer(stream: TcpStream, files: &[(String, Vec<u8>)], behaviour: Behaviour) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request = String::new();
    if reader.read_line(&mut request).is_err() {
        return;
    }
    let mut range = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("range") {
                range = v.trim().strip_prefix("bytes=").map(str::to_string);
            }
        }
    }
    let path = request.split_whitespace().nth(1).unwrap_or("").to_string();
    let is_listing = path.starts_with("/api/");
    if behaviour == Behaviour::NeverAnswer || (behaviour == Behaviour::StallFiles && !is_listing) {
        std::thread::sleep(Duration::from_secs(120));
        return;
    }
    let mut out = stream;
    if is_listing {
        let siblings: Vec<serde_json::Value> = files
            .iter()
            .map(|(n, _)| serde_json::json!({ "rfilename": n }))
            .collect();
        let body = serde_json::json!({ "sha": COMMIT, "siblings": siblings }).to_string();
        let _ = write!(
            out,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        return;
    }
    let prefix = format!("/{REPO}/resolve/main/");
    let found = path
        .strip_prefix(&prefix)
        .and_then(|name| files.iter().find(|(n, _)| n == name));
    let Some((name, bytes)) = found else {
        let _ = write!(
            out,
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        return;
    };
    let (start, end) = match range.as_deref().and_then(|r| r.split_once('-')) {
        Some((s, e)) => (
            s.parse::<usize>().unwrap_or(0),
            e.parse::<usize>()
                .map(|e| e + 1)
                .unwrap_or(bytes.len())
                .min(bytes.len()),
        ),
        None => (0, bytes.len()),
    };
    let etag = format!(
        "{:040x}",
        fnv(name.as_bytes()) as u128 * 31 + bytes.len() as u128
    );
    let _ = write!(
        out,
        "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {start}-{}/{}\r\n\
         ETag: \"{etag}\"\r\nX-Repo-Commit: {COMMIT}\r\nConnection: close\r\n\r\n",
        end - start,
        end.max(1) - 1,
        bytes.len()
    );
    let _ = out.write_all(&bytes[start..end]);
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

/// The files of the bundled PKU model, as a hub repo holds them.
fn pku_files() -> Vec<(String, Vec<u8>)> {
    let dir = repo_root().join("models/pku");
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    files.sort();
    files
}

const INPUT: &str = "１９９８年，中国经济增长７．８％。他说：“这是北京大学的研究生命题。”\n";

/// `cws segment --model MODEL` with a hub at `endpoint` and cache under `home`.
fn segment_via_hub(model: &str, endpoint: &str, home: &Path, extra: &[(&str, &str)]) -> Output {
    let mut cmd = cws();
    cmd.args(["segment", "--model", model])
        .env("HF_ENDPOINT", endpoint)
        .env("HF_HOME", home)
        .env("HF_HUB_DISABLE_PROGRESS_BARS", "1");
    for var in [
        "HF_HUB_CACHE",
        "HF_HUB_OFFLINE",
        "HF_TOKEN",
        "CWS_MODEL",
        "http_proxy",
        "HTTP_PROXY",
        "https_proxy",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "all_proxy",
    ] {
        cmd.env_remove(var);
    }
    for (k, v) in extra {
        cmd.env(k, v);
    }
    run_with_stdin(&mut cmd, INPUT.as_bytes())
}

#[test]
fn a_hub_id_loads_a_whole_model_folder_and_then_works_offline() {
    let endpoint = start_hub(pku_files(), Behaviour::Serve);
    let home = tempfile::tempdir().unwrap();
    let out = segment_via_hub(REPO, &endpoint, home.path(), &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let local = crate::common::run_cws(
        &[
            "segment",
            "--model",
            repo_root().join("models/pku").to_str().unwrap(),
        ],
        INPUT.as_bytes(),
    );
    assert_eq!(
        out.stdout, local.stdout,
        "the hub model segments as the folder does"
    );
    // The lexicon and bigram lists the config names came down with the weights.
    let snapshot = home
        .path()
        .join("hub/models--cws-test--pku/snapshots")
        .join(COMMIT);
    for name in [
        "model.safetensors",
        "lexicon.safetensors",
        "bigrams.safetensors",
    ] {
        assert!(snapshot.join(name).is_file(), "{name} is in the cache");
    }
    // Offline, from the cache alone.
    let offline = segment_via_hub(
        REPO,
        "http://127.0.0.1:9",
        home.path(),
        &[("HF_HUB_OFFLINE", "1")],
    );
    assert!(
        offline.status.success(),
        "{}",
        String::from_utf8_lossy(&offline.stderr)
    );
    assert_eq!(offline.stdout, local.stdout);
}

#[test]
fn a_hub_that_never_answers_is_an_error_within_the_timeout() {
    for behaviour in [Behaviour::NeverAnswer, Behaviour::StallFiles] {
        let endpoint = start_hub(pku_files(), behaviour);
        let home = tempfile::tempdir().unwrap();
        let t0 = Instant::now();
        let out = segment_via_hub(
            REPO,
            &endpoint,
            home.path(),
            &[
                ("HF_HUB_ETAG_TIMEOUT", "1"),
                ("HF_HUB_DOWNLOAD_TIMEOUT", "1"),
            ],
        );
        let took = t0.elapsed();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(err.contains(REPO), "{err}");
        assert!(
            took < Duration::from_secs(30),
            "gave up after {took:?}: {err}"
        );
        if behaviour == Behaviour::StallFiles {
            assert!(err.contains("HF_HUB_DOWNLOAD_TIMEOUT"), "{err}");
        }
    }
}
