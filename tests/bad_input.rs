//! Bad and unusual input through the real binary: no panic, no lost
//! character, and errors that name the file and line.

use crate::common::{dict, run_cws, run_eval, write_file};

#[test]
fn odd_characters_pass_through_unchanged() {
    let tmp = tempfile::tempdir().unwrap();
    let d = dict(tmp.path());
    let input = "\n   \n北京\0天安门\u{7}😀e\u{301}𠮷\u{200B}x\r\n\u{FEFF}末".as_bytes();
    let out = run_cws(&["segment", "--dict-only", &d, "--delimiter", "|"], input);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8(out.stdout)
            .unwrap()
            .replace('|', "")
            .as_bytes(),
        input
    );
}

#[test]
fn empty_input_gives_empty_output() {
    let tmp = tempfile::tempdir().unwrap();
    let out = run_cws(&["segment", "--dict-only", &dict(tmp.path())], b"");
    assert!(out.status.success());
    assert!(out.stdout.is_empty());
}

#[test]
fn one_megabyte_line() {
    let tmp = tempfile::tempdir().unwrap();
    let line = "我爱北京天安门。".repeat(44_000); // 24 bytes each: just over 1 MB;
    let out = run_cws(
        &[
            "segment",
            "--dict-only",
            &dict(tmp.path()),
            "--delimiter",
            "|",
        ],
        line.as_bytes(),
    );
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().replace('|', ""),
        line
    );
}

#[test]
fn invalid_utf8_names_the_line() {
    let tmp = tempfile::tempdir().unwrap();
    let out = run_cws(
        &["segment", "--dict-only", &dict(tmp.path())],
        b"ok\nfine\nbad\xC3(\n",
    );
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("<stdin>:3: invalid UTF-8"), "{err}");
}

#[test]
fn eval_errors_name_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let gold = write_file(tmp.path(), "gold.txt", "我  爱\n北京\n".as_bytes());
    let bad = write_file(tmp.path(), "pred.txt", b"\xFF\n\n");
    let out = run_eval(&gold, &bad);
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(!out.status.success());
    assert!(err.contains("pred.txt:1: invalid UTF-8"), "{err}");

    let short = write_file(tmp.path(), "short.txt", "我 爱\n".as_bytes());
    let out = run_eval(&gold, &short);
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("gold.txt has 2 lines but") && err.contains("short.txt has 1"),
        "{err}"
    );

    let missing = tmp.path().join("nope.txt");
    let out = run_eval(&missing, &short);
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("cannot read") && err.contains("nope.txt"),
        "{err}"
    );
}

#[test]
fn eval_warns_when_text_differs() {
    let tmp = tempfile::tempdir().unwrap();
    let gold = write_file(tmp.path(), "g", "我  爱\n北京\n".as_bytes());
    let pred = write_file(tmp.path(), "p", "我 爱\n南京\n".as_bytes());
    let out = run_eval(&gold, &pred);
    assert!(out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("do not spell the gold text: line 2"), "{err}");
}
