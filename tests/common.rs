//! Helpers shared by the integration tests: the built `cws` binary, the SIGHAN
//! data folder (../shared/data or $CWS_DATA_DIR), and temporary files.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The `cws` binary that cargo built for these tests.
pub fn cws() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cws"))
}

/// Runs `cws` with `args`, feeding `stdin`.
pub fn run_cws(args: &[&str], stdin: &[u8]) -> Output {
    run_with_stdin(cws().args(args), stdin)
}

/// Runs `cws ARGS` on `input`, checks that it succeeds and that its output is
/// the input with only spaces inserted, and returns the output.
pub fn segment_losslessly(args: &[&str], input: &str) -> String {
    let out = run_cws(args, input.as_bytes());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.replace(' ', ""), input.replace(' ', ""));
    text
}

/// Runs `cmd` (environment and folder set), feeding `stdin`.
pub fn run_with_stdin(cmd: &mut Command, stdin: &[u8]) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cws starts");
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let out = child.wait_with_output().expect("cws runs");
    writer.join().unwrap();
    out
}

/// The shared bert-base-chinese tokenizer/config folder (`$CWS_SHARED_DIR`,
/// else ../shared, `models/bert-base-chinese`), or `None` (tests then skip).
pub fn shared_model_dir() -> Option<PathBuf> {
    let base = std::env::var_os("CWS_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared"));
    let dir = base.join("models").join("bert-base-chinese");
    dir.join("config.json").is_file().then_some(dir)
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The SIGHAN data folder, or None (with a message) where it is absent, so a
/// fresh clone without ../shared still passes the tests that need no corpus.
pub fn data_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("CWS_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("../shared/data"));
    if dir.join("sighan2005/pku_test_gold.utf8").is_file() {
        Some(dir)
    } else {
        eprintln!(
            "SKIPPED: SIGHAN data not found at {} (set CWS_DATA_DIR; see data/README.md)",
            dir.display()
        );
        None
    }
}

pub fn write_file(dir: &Path, name: &str, content: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, content).unwrap();
    p
}

/// A two-word list (北京, 天安门) in `dir`, for `--dict-only` runs.
pub fn dict(dir: &Path) -> String {
    write_file(dir, "words.txt", "北京\n天安门\n".as_bytes())
        .display()
        .to_string()
}

/// Runs `cws segment --model MODEL ARGS...` on `input`, checks that it
/// succeeds and returns what it wrote.
pub fn segment_with_model(model: &Path, args: &[&str], input: &str) -> String {
    let mut all = vec!["segment", "--model", model.to_str().unwrap()];
    all.extend_from_slice(args);
    let out = run_cws(&all, input.as_bytes());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs `cws eval --gold GOLD --pred PRED`.
pub fn run_eval(gold: &Path, pred: &Path) -> Output {
    run_cws(
        &[
            "eval",
            "--gold",
            gold.to_str().unwrap(),
            "--pred",
            pred.to_str().unwrap(),
        ],
        b"",
    )
}

/// Runs `cws eval ARGS --format json`, checks that it succeeds, and returns
/// its report.
pub fn eval_json(args: &[&str]) -> serde_json::Value {
    let mut all = vec!["eval"];
    all.extend_from_slice(args);
    all.extend(["--format", "json"]);
    let out = run_cws(&all, b"");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}
