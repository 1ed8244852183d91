//! `cws eval` against the official SIGHAN 2005 method on the real PKU and MSR
//! test sets: our scorer's counts must equal those obtained by running GNU
//! `diff` on each line pair, one word per line, as the official script does.

use crate::common::{data_dir, eval_json, run_cws};
use cws::corpus::{read_lines, split_words, Line};
use cws::dict::Dictionary;
use cws::score::{score_lines, unchanged_words};
use cws::segment::segment_lines;
use rayon::prelude::*;
use std::collections::HashSet;
use std::path::Path;
use std::process::Command;

/// Matched gold words of one line pair according to the real `diff` binary.
/// `diff -y` (the script's call) and these line formats print the same edit
/// script; the formats just make unchanged lines easy to read back.
fn diff_unchanged(dir: &Path, tag: usize, gold: &[&str], pred: &[&str]) -> Vec<String> {
    let g = dir.join(format!("g{tag}"));
    let p = dir.join(format!("p{tag}"));
    let one_per_line = |w: &[&str]| w.iter().map(|w| format!("{w}\n")).collect::<String>();
    std::fs::write(&g, one_per_line(gold)).unwrap();
    std::fs::write(&p, one_per_line(pred)).unwrap();
    let out = Command::new("diff")
        .args([
            "--unchanged-line-format==%L",
            "--old-line-format=-%L",
            "--new-line-format=+%L",
        ])
        .arg(&g)
        .arg(&p)
        .output()
        .expect("GNU diff is installed");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix('=').map(str::to_string))
        .collect()
}

fn segmentations(data: &Path, corpus: &str) -> Vec<(&'static str, Vec<Line>)> {
    let gold = read_lines(&data.join(format!("sighan2005/{corpus}_test_gold.utf8"))).unwrap();
    let raw = read_lines(&data.join(format!("sighan2005/{corpus}_test.utf8"))).unwrap();
    let dict =
        Dictionary::load(&data.join(format!("sighan2005/{corpus}_training_words.utf8"))).unwrap();
    let texts: Vec<&str> = raw.iter().map(|l| l.text.as_str()).collect();
    let words = segment_lines(&texts, &dict).unwrap();
    let fmm = raw
        .iter()
        .zip(&words)
        .map(|(l, w)| Line {
            number: l.number,
            text: w
                .iter()
                .map(|r| &l.text[r.clone()])
                .collect::<Vec<_>>()
                .join(" "),
        })
        .collect();
    let chars = raw
        .iter()
        .map(|l| Line {
            number: l.number,
            text: l
                .text
                .chars()
                .filter(|c| !c.is_whitespace())
                .map(String::from)
                .collect::<Vec<_>>()
                .join(" "),
        })
        .collect();
    vec![("gold", gold), ("fmm", fmm), ("chars", chars)]
}

fn text_differs(gold: &[Line], pred: &[Line]) -> Vec<usize> {
    let bare = |t: &str| t.chars().filter(|c| !c.is_whitespace()).collect::<String>();
    gold.iter()
        .zip(pred)
        .filter(|(g, p)| !g.text.trim().is_empty() && bare(&g.text) != bare(&p.text))
        .map(|(g, _)| g.number)
        .collect()
}

#[test]
fn scorer_equals_diff_on_sighan_test_sets() {
    let Some(data) = data_dir() else { return };
    let tmp = tempfile::tempdir().unwrap();
    for corpus in ["pku", "msr"] {
        let words: HashSet<String> =
            Dictionary::load(&data.join(format!("sighan2005/{corpus}_training_words.utf8")))
                .unwrap()
                .words()
                .clone();
        let segs = segmentations(&data, corpus);
        let gold = &segs[0].1;
        for (name, pred) in &segs {
            let c = score_lines(gold, pred, Some(&words));
            // Word by word, our alignment and diff's keep the same words.
            let mismatched: Vec<usize> = gold
                .par_iter()
                .zip(pred.par_iter())
                .enumerate()
                .filter_map(|(i, (g, p))| {
                    let gw = split_words(&g.text);
                    let pw = split_words(&p.text);
                    if gw.is_empty() {
                        return None;
                    }
                    let ours: Vec<String> = gw
                        .iter()
                        .zip(unchanged_words(&gw, &pw))
                        .filter(|(_, hit)| *hit)
                        .map(|(w, _)| w.to_string())
                        .collect();
                    let tag = i * 8 + name.len();
                    (diff_unchanged(tmp.path(), tag, &gw, &pw) != ours).then_some(g.number)
                })
                .collect();
            assert!(
                mismatched.is_empty(),
                "{corpus}/{name}: lines {mismatched:?} differ from diff"
            );
            eprintln!(
                "{corpus} {name:5} R {:.3} P {:.3} F {:.3} OOV-rate {:.3} OOV-R {:.3} IV-R {:.3} ({} gold, {} pred, {} correct)",
                c.recall(),
                c.precision(),
                c.f1(),
                c.oov_rate(),
                c.oov_recall(),
                c.iv_recall(),
                c.gold_words,
                c.pred_words,
                c.correct
            );
            if *name == "gold" {
                assert_eq!((c.correct, c.pred_words), (c.gold_words, c.gold_words));
            }
            // The MSR gold file has a few lines whose text is not the raw test
            // line's (misplaced line breaks): those, and only those, are reported.
            let expected: Vec<usize> = if *name == "gold" {
                Vec::new()
            } else {
                text_differs(gold, pred)
            };
            assert_eq!(c.text_mismatch_lines, expected, "{corpus}/{name}");
        }
    }
}

#[test]
fn eval_command_prints_three_decimals_and_json() {
    let Some(data) = data_dir() else { return };
    let gold = data.join("sighan2005/pku_test_gold.utf8");
    let words = data.join("sighan2005/pku_training_words.utf8");
    let out = run_cws(
        &[
            "eval",
            "--gold",
            gold.to_str().unwrap(),
            "--pred",
            gold.to_str().unwrap(),
            "--words",
            words.to_str().unwrap(),
        ],
        b"",
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success());
    assert!(text.contains("f1           1.000"), "{text}");
    assert!(text.contains("iv_recall    1.000"), "{text}");
    let g = gold.to_str().unwrap();
    let v = eval_json(&["--gold", g, "--pred", g]);
    assert_eq!(v["f1"], 1.0);
    assert_eq!(v["gold_words"], 104372);
}
