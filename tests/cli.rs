//! The command line as a newcomer meets it: the README's commands run as
//! written, CI runs the README's test command, and `--help` shows examples.

use crate::common::{cws, repo_root, run_cws, run_with_stdin, segment_losslessly};

fn readme() -> String {
    std::fs::read_to_string(repo_root().join("README.md")).unwrap()
}

/// The first screen of the README: its first 40 lines.
fn first_screen() -> String {
    readme().lines().take(40).collect::<Vec<_>>().join("\n")
}

#[test]
fn readme_segment_command_works() {
    let screen = first_screen();
    let line = screen
        .lines()
        .find(|l| l.contains("-- segment"))
        .expect("the README's first screen shows a segment command");
    // Run it as written, with the binary cargo built for this test run in
    // place of `cargo run` (which would build it a second time).
    let command = line.replace("cargo run --release -q --", env!("CARGO_BIN_EXE_cws"));
    assert_ne!(
        command, line,
        "the README runs cws through `cargo run --release -q --`"
    );
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
fn segment_uses_the_bundled_pku_model_by_default() {
    let bundled = repo_root().join("models/pku");
    assert!(
        bundled.join("config.json").is_file() && bundled.join("lexicon.safetensors").is_file(),
        "models/pku is in the repository"
    );
    let input = "１９９８年，中国经济增长７．８％。http://www.x.cn 上海浦东开发\n\n";
    let text = segment_losslessly(&["segment"], input);
    assert!(text.contains("中国 ") && text.contains(" 经济"), "{text}");
    let words: Vec<&str> = text.split_whitespace().collect();
    for whole in ["http://www.x.cn", "７．８％"] {
        assert!(words.contains(&whole), "{whole} kept whole: {text}");
    }
}

#[test]
fn boundary_bias_moves_granularity_without_losing_text() {
    let input = "中华人民共和国国务院总理在北京人民大会堂会见外国代表团\n";
    let words = |bias: &str| {
        let out = run_cws(&["segment", "--boundary-bias", bias], input.as_bytes());
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        assert_eq!(text.replace(' ', ""), input);
        text.split_whitespace().count()
    };
    let (fewer, more) = (words("-20"), words("20"));
    assert!(fewer < more, "{fewer} words at -20, {more} at 20");
}

#[test]
fn segment_with_a_missing_model_names_it() {
    let out = cws()
        .arg("segment")
        .env("CWS_MODEL", "/nonexistent/cws-model")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("/nonexistent/cws-model"), "{err}");
}

/// A binary copied into an empty folder, far from the repository and with no
/// hub cache, segments with its built-in model exactly as with models/pku.
#[test]
fn a_copied_binary_segments_with_its_built_in_model() {
    let tmp = tempfile::tempdir().unwrap();
    let bin = tmp.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let copied = bin.join("cws");
    std::fs::copy(env!("CARGO_BIN_EXE_cws"), &copied).unwrap();
    let elsewhere = tmp.path().join("work");
    std::fs::create_dir(&elsewhere).unwrap();
    let input =
        "１９９８年，中国经济增长７．８％。\n他说：“这是北京大学的研究生命题。”\n\nabc 123\n";
    let run = |cmd: &mut std::process::Command| {
        let out = run_with_stdin(cmd, input.as_bytes());
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let alone = run(std::process::Command::new(&copied)
        .arg("segment")
        .current_dir(&elsewhere)
        .env_remove("CWS_MODEL")
        .env("HOME", &elsewhere)
        .env("HF_HOME", elsewhere.join("hf"))
        .env("HF_HUB_OFFLINE", "1"));
    let bundled = repo_root().join("models/pku");
    let from_folder = run(cws()
        .args(["segment", "--model", bundled.to_str().unwrap()])
        .env_remove("CWS_MODEL"));
    assert_eq!(alone, from_folder);
    assert_eq!(alone.replace(' ', ""), input.replace(' ', ""));
}

/// `--standard` picks the built-in model of that standard, and refuses a
/// model trained on another one, naming the standards it knows.
#[test]
fn standard_picks_a_built_in_model_and_checks_a_given_one() {
    let input = "１９９８年，中国经济增长７．８％。他说：“这是北京大学的研究生命题。”\n";
    let segment = |args: &[&str]| {
        let out = run_with_stdin(
            cws().arg("segment").args(args).env_remove("CWS_MODEL"),
            input.as_bytes(),
        );
        (
            out.status.success(),
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    };
    for standard in ["pku", "msr"] {
        let folder = repo_root().join("models").join(standard);
        let (ok, built_in, err) = segment(&["--standard", standard]);
        assert!(ok, "{err}");
        let (ok, from_folder, err) = segment(&["--model", folder.to_str().unwrap()]);
        assert!(ok, "{err}");
        assert_eq!(built_in, from_folder, "--standard {standard}");
        // The folder's own standard passes the check; the other one fails.
        let (ok, _, err) = segment(&["--model", folder.to_str().unwrap(), "--standard", standard]);
        assert!(ok, "{err}");
        let other = if standard == "pku" { "msr" } else { "pku" };
        let (ok, _, err) = segment(&["--model", folder.to_str().unwrap(), "--standard", other]);
        assert!(
            !ok && err.contains(&format!("it knows: {standard}")),
            "{err}"
        );
    }
    let (_, pku, _) = segment(&[]);
    let (_, msr, _) = segment(&["--standard", "msr"]);
    assert_ne!(pku, msr, "the two standards segment this sentence alike");
    let (ok, _, err) = segment(&["--standard", "ctb"]);
    assert!(!ok && err.contains("pku") && err.contains("msr"), "{err}");

    // `cws eval` without --pred or --model scores the built-in model.
    let tmp = tempfile::tempdir().unwrap();
    let gold = tmp.path().join("gold.txt");
    std::fs::write(&gold, "他  说  ：  这  是  北京大学  。\n").unwrap();
    let out = cws()
        .args(["eval", "--standard", "msr", "--format", "json", "--gold"])
        .arg(&gold)
        .env_remove("CWS_MODEL")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["gold_words"], 7);
}
