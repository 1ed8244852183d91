//! `cws segment` in pipelines: JSON-lines input, lines that are not UTF-8,
//! and progress that stays on stderr (and `cws eval --model`'s).

use crate::common::{cws, dict, repo_root, run_cws, segment_with_model, write_file};

/// Runs `cws segment --dict-only` (北京, 天安门) with `args`, feeding `stdin`;
/// stdout, stderr and whether it succeeded.
fn segment(args: &[&str], stdin: &[u8]) -> (Vec<u8>, String, bool) {
    let tmp = tempfile::tempdir().unwrap();
    let words = dict(tmp.path());
    let mut all = vec!["segment", "--dict-only", &words];
    all.extend_from_slice(args);
    let out = run_cws(&all, stdin);
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(!err.contains("panicked"), "{err}");
    (out.stdout, err, out.status.success())
}

#[test]
fn jsonl_input_passes_every_field_through_and_adds_the_words() {
    let input = "{\"z\":1,\"text\":\"我爱北京\",\"a\":{\"n\":[1.50,\"\\u00e9\"]}}\n\
                 \n\
                 {\"id\": \"x\" , \"text\": \"天安门 广场\"}\r\n";
    let (out, err, ok) = segment(&["--input-format", "jsonl"], input.as_bytes());
    assert!(ok, "{err}");
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "{\"z\":1,\"text\":\"我爱北京\",\"a\":{\"n\":[1.50,\"\\u00e9\"]},\"words\":[\"我\",\"爱\",\"北京\"]}\n\
         \n\
         {\"id\": \"x\" , \"text\": \"天安门 广场\",\"words\":[\"天安门\",\"广\",\"场\"]}\r\n"
    );

    let (out, err, ok) = segment(
        &[
            "--input-format",
            "jsonl",
            "--text-field",
            "body",
            "--format",
            "jsonl",
        ],
        "{\"body\":\"北京x\"}\n".as_bytes(),
    );
    assert!(ok, "{err}");
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "{\"body\":\"北京x\",\"words\":[\"北京\",\"x\"],\"chars\":[[0,2],[2,3]],\"bytes\":[[0,6],[6,7]]}\n"
    );
}

#[test]
fn jsonl_input_with_the_bundled_model() {
    let input = "{\"id\":17,\"text\":\"我爱北京天安门\",\"lang\":\"zh\"}\n";
    let model = repo_root().join("models/pku");
    let text = segment_with_model(&model, &["--input-format", "jsonl"], input);
    assert!(
        text.starts_with("{\"id\":17,\"text\":\"我爱北京天安门\",\"lang\":\"zh\",\"words\":["),
        "{text}"
    );
    let value: serde_json::Value = serde_json::from_str(&text).unwrap();
    let words: Vec<&str> = value["words"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap())
        .collect();
    assert_eq!(words.concat(), "我爱北京天安门");
    assert!(words.contains(&"北京"), "{words:?}");
}

#[test]
fn jsonl_input_errors_name_the_line_and_the_problem() {
    let cases = [
        ("{\"txt\":\"北京\"}", "<stdin>:2: no field \"text\""),
        (
            "{\"text\":[\"北京\"]}",
            "<stdin>:2: field \"text\" is an array, not a string",
        ),
        ("北京", "<stdin>:2: not valid JSON"),
        ("[\"北京\"]", "<stdin>:2: not a JSON object"),
    ];
    for (line, expected) in cases {
        let input = format!("{{\"text\":\"北京\"}}\n{line}\n");
        let (_, err, ok) = segment(&["--input-format", "jsonl"], input.as_bytes());
        assert!(!ok && err.contains(expected), "{line}: {err}");
    }
    let (_, err, ok) = segment(&["--text-field", "body"], b"x\n");
    assert!(!ok && err.contains("--input-format jsonl"), "{err}");
}

#[test]
fn invalid_utf8_is_replaced_or_skipped_and_counted() {
    let input: &[u8] =
        b"\xE5\x8C\x97\xE4\xBA\xAC\nbad\xC3(\n\xFF\xFE\r\n\xE5\x8C\x97\xE4\xBA\xAC\n\xC3";
    let (_, err, ok) = segment(&[], input);
    assert!(
        !ok && err.contains("<stdin>:2: invalid UTF-8 at byte 4"),
        "{err}"
    );

    let (out, err, ok) = segment(&["--on-invalid-utf8", "replace"], input);
    assert!(ok, "{err}");
    assert_eq!(
        String::from_utf8(out).unwrap().replace(' ', ""),
        String::from_utf8_lossy(input)
    );
    assert_eq!(
        err,
        "cws segment: 3 lines with invalid UTF-8 replaced (first: <stdin> line 2)\n"
    );

    let (out, err, ok) = segment(&["--on-invalid-utf8", "skip"], input);
    assert!(ok, "{err}");
    assert_eq!(out, input, "no separator to insert in the valid lines");
    assert_eq!(
        err,
        "cws segment: 3 lines with invalid UTF-8 skipped (first: <stdin> line 2)\n"
    );

    // JSON output stays JSON: skipped lines are left out, and counted.
    let tmp = tempfile::tempdir().unwrap();
    let file = write_file(tmp.path(), "in.txt", input);
    let (out, err, ok) = segment(
        &[
            "--on-invalid-utf8",
            "skip",
            "--format",
            "jsonl",
            "--input",
            file.to_str().unwrap(),
        ],
        b"",
    );
    assert!(ok, "{err}");
    let lines: Vec<serde_json::Value> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let numbers: Vec<u64> = lines.iter().map(|v| v["line"].as_u64().unwrap()).collect();
    assert_eq!(numbers, [1, 4]);
    assert!(
        err.contains("3 lines with invalid UTF-8 skipped (first: ")
            && err.contains("in.txt line 2)"),
        "{err}"
    );

    let jsonl = b"{\"id\":1,\"text\":\"\xE5\x8C\x97\xE4\xBA\xAC\"}\n{\"id\":2,\"text\":\"\xFF\"}\n";
    let (out, err, ok) = segment(
        &["--input-format", "jsonl", "--on-invalid-utf8", "replace"],
        jsonl,
    );
    assert!(ok, "{err}");
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "{\"id\":1,\"text\":\"北京\",\"words\":[\"北京\"]}\n{\"id\":2,\"text\":\"\u{FFFD}\",\"words\":[\"\u{FFFD}\"]}\n"
    );
    assert!(err.contains("1 line with invalid UTF-8 replaced"), "{err}");
}

#[test]
fn progress_goes_to_stderr_only_and_only_when_asked() {
    let tmp = tempfile::tempdir().unwrap();
    let input = "我爱北京天安门\n\n北京\n".repeat(1000);
    let file = write_file(tmp.path(), "in.txt", input.as_bytes());
    let run = |progress: &str| {
        segment(
            &["--input", file.to_str().unwrap(), "--progress", progress],
            b"",
        )
    };
    let (quiet, err, ok) = run("quiet");
    assert!(ok && err.is_empty(), "{err}");
    // Not a terminal: auto draws nothing; bar falls back to the summary.
    for style in ["auto", "summary", "bar"] {
        let (out, err, ok) = run(style);
        assert!(ok, "{err}");
        assert_eq!(out, quiet, "--progress {style} leaves stdout alone");
        match style {
            "auto" => assert!(err.is_empty(), "{err}"),
            _ => assert!(
                err.starts_with("segmented 3000 lines, 9000 chars in ")
                    && err.ends_with(" chars/s)\n")
                    && err.lines().count() == 1,
                "{style}: {err}"
            ),
        }
    }
}

#[test]
fn eval_with_a_model_reports_progress_on_stderr() {
    let tmp = tempfile::tempdir().unwrap();
    let gold = write_file(tmp.path(), "gold.txt", "我  爱  北京\n天安门\n".as_bytes());
    let model = repo_root().join("models/pku");
    let eval = |progress: &str| {
        cws()
            .args(["eval", "--model", model.to_str().unwrap(), "--gold"])
            .arg(&gold)
            .args(["--progress", progress])
            .output()
            .unwrap()
    };
    let (quiet, summary) = (eval("quiet"), eval("summary"));
    for out in [&quiet, &summary] {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(quiet.stdout, summary.stdout);
    assert!(String::from_utf8_lossy(&quiet.stdout).contains("f1"));
    assert!(quiet.stderr.is_empty());
    let err = String::from_utf8(summary.stderr).unwrap();
    assert!(err.starts_with("segmented 2 lines, 7 chars in "), "{err}");
}
