//! The command line as a newcomer meets it: the README's commands run as
//! written, CI runs the README's test command, and `--help` shows examples.

use crate::common::{cws, data_dir, repo_root};

fn readme() -> String {
    std::fs::read_to_string(repo_root().join("README.md")).unwrap()
}

/// The first screen of the README: its first 40 lines.
fn first_screen() -> String {
    readme().lines().take(40).collect::<Vec<_>>().join("\n")
}

#[test]
fn readme_segment_command_works() {
    if data_dir().is_none() {
        return;
    }
    let screen = first_screen();
    let line = screen
        .lines()
        .find(|l| l.contains("cws segment"))
        .expect("the README's first screen shows a segment command");
    // Run it as written, with the binary cargo built for this test run.
    let command = line.replace("./target/release/cws", env!("CARGO_BIN_EXE_cws"));
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(&command)
        .current_dir(repo_root())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{command}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.trim().contains(' '), "words are separated: {text}");
}

#[test]
fn ci_runs_the_readme_test_command() {
    let screen = first_screen();
    let ci = std::fs::read_to_string(repo_root().join(".ci/run")).unwrap();
    let test_line = screen
        .lines()
        .find(|l| l.trim_start().starts_with("cargo test"))
        .expect("the README's first screen shows the test command");
    assert!(
        ci.lines().any(|l| l.trim() == test_line.trim()),
        "CI runs `{test_line}`"
    );
}

#[test]
fn help_shows_an_example_per_subcommand() {
    for sub in ["segment", "eval"] {
        let out = cws().args([sub, "--help"]).output().unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(
            text.contains("Examples:") && text.contains(&format!("cws {sub}")),
            "{sub}: {text}"
        );
    }
}

#[test]
fn segment_without_model_says_what_to_pass() {
    let out = cws().arg("segment").output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8(out.stderr)
        .unwrap()
        .contains("--dict-only"));
}
