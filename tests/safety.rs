//! Users' files and exit codes: no command deletes or truncates what it did
//! not create, reruns are explicit, an interrupted run says so in its exit
//! status and resumes to the same weights, and input in the wrong encoding or
//! format gets an error that says what it is.

use crate::common::{cws, dict, repo_root, run_cws, run_eval, write_file};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn export_refuses_a_folder_with_foreign_files_and_keeps_a_model_card() {
    let tmp = tempfile::tempdir().unwrap();
    let model = repo_root().join("models/pku");
    let dest = tmp.path().join("some/folder");
    std::fs::create_dir_all(dest.join("sub")).unwrap();
    std::fs::write(dest.join("precious.txt"), "mine").unwrap();
    let export = |extra: &[&str]| {
        let mut args = vec![
            "export",
            "--model",
            model.to_str().unwrap(),
            "--output",
            dest.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        run_cws(&args, b"")
    };
    let out = export(&[]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("precious.txt") && err.contains("sub/") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(dest.join("precious.txt")).unwrap(),
        "mine"
    );
    assert!(dest.join("sub").is_dir());

    // A model folder (an earlier export) is replaced; its card is kept.
    std::fs::remove_dir_all(&dest).unwrap();
    assert!(export(&[]).status.success());
    std::fs::write(dest.join("README.md"), "my card").unwrap();
    let out = export(&["--dtype", "f16"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(dest.join("README.md")).unwrap(),
        "my card"
    );
    assert!(dest.join("model.safetensors").is_file());

    // `.` is never a destination.
    let out = cws()
        .args([
            "export",
            "--model",
            model.to_str().unwrap(),
            "--output",
            ".",
        ])
        .current_dir(tmp.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn segment_never_writes_over_its_input() {
    let tmp = tempfile::tempdir().unwrap();
    let d = dict(tmp.path());
    let text = "我爱北京天安门\n".repeat(50);
    let f = write_file(tmp.path(), "f.txt", text.as_bytes());
    #[cfg(unix)]
    std::os::unix::fs::symlink(&f, tmp.path().join("link.txt")).unwrap();
    for output in ["f.txt", "./f.txt", "link.txt"] {
        if output == "link.txt" && !cfg!(unix) {
            continue;
        }
        let out = cws()
            .args([
                "segment",
                "--dict-only",
                &d,
                "--input",
                "f.txt",
                "--output",
                output,
            ])
            .current_dir(tmp.path())
            .output()
            .unwrap();
        assert!(!out.status.success(), "--output {output}");
        assert!(stderr(&out).contains("same file"), "{}", stderr(&out));
        assert_eq!(
            std::fs::read_to_string(&f).unwrap(),
            text,
            "--output {output}"
        );
    }
}

#[test]
fn segment_output_is_replaced_only_when_complete() {
    let tmp = tempfile::tempdir().unwrap();
    let d = dict(tmp.path());
    let out_file = write_file(tmp.path(), "out.txt", b"earlier results\n");
    // Line 3 is not UTF-8: the run fails midway and the old file stays.
    let input = write_file(
        tmp.path(),
        "in.txt",
        b"\xe5\x8c\x97\xe4\xba\xac\nok\nbad \xff\n",
    );
    let run = |input: &Path| {
        run_cws(
            &[
                "segment",
                "--dict-only",
                &d,
                "--input",
                input.to_str().unwrap(),
                "--output",
                out_file.to_str().unwrap(),
            ],
            b"",
        )
    };
    let out = run(&input);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(":3: invalid UTF-8"),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::read(&out_file).unwrap(), b"earlier results\n");
    let names: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
    assert_eq!(names.len(), 3, "no temporary file left: {names:?}");
    let good = write_file(tmp.path(), "good.txt", "北京天安门\n".as_bytes());
    assert!(run(&good).status.success());
    assert_eq!(std::fs::read_to_string(&out_file).unwrap(), "北京 天安门\n");
}

#[test]
fn other_encodings_are_named_with_the_iconv_command() {
    let tmp = tempfile::tempdir().unwrap();
    let d = dict(tmp.path());
    let gbk = write_file(tmp.path(), "gbk.txt", b"\xce\xd2\xb0\xae\xb1\xb1\xbe\xa9\n");
    let utf16: Vec<u8> = [0xFF, 0xFE]
        .into_iter()
        .chain("我爱北京\n".encode_utf16().flat_map(u16::to_le_bytes))
        .collect();
    let utf16 = write_file(tmp.path(), "utf16.txt", &utf16);
    for (file, name, from) in [(&gbk, "GBK", "GB18030"), (&utf16, "UTF-16", "UTF-16")] {
        let f = file.to_str().unwrap();
        let out = run_cws(&["segment", "--dict-only", &d, "--input", f], b"");
        let err = stderr(&out);
        assert!(!out.status.success());
        assert!(
            err.contains(name) && err.contains(&format!("iconv -f {from} -t UTF-8 {f}")),
            "{err}"
        );
        // Corpus files (gold, training data) say the same.
        let out = run_cws(&["eval", "--gold", f, "--pred", f], b"");
        assert!(
            stderr(&out).contains(&format!("iconv -f {from}")),
            "{}",
            stderr(&out)
        );
    }
}

#[test]
fn a_bom_stays_in_text_output_and_never_enters_json() {
    let tmp = tempfile::tempdir().unwrap();
    let d = dict(tmp.path());
    let input = "\u{FEFF}北京天安门\n".as_bytes();
    let out = run_cws(&["segment", "--dict-only", &d, "--format", "jsonl"], input);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let first = text.lines().next().unwrap();
    assert!(first.starts_with('{'), "{first:?}");
    let value: serde_json::Value = serde_json::from_str(first).unwrap();
    assert_eq!(value["words"], serde_json::json!(["北京", "天安门"]));
    let out = run_cws(&["segment", "--dict-only", &d], input);
    assert_eq!(out.stdout, "\u{FEFF}北京 天安门\n".as_bytes());
}

#[test]
fn eval_refuses_raw_text_as_gold() {
    let tmp = tempfile::tempdir().unwrap();
    let raw = write_file(
        tmp.path(),
        "raw.txt",
        "我爱北京天安门\n今天天气很好\n\n他们在研究经济问题\n".as_bytes(),
    );
    let pred = write_file(
        tmp.path(),
        "pred.txt",
        "我 爱 北京 天安门\n今天 天气 很 好\n\n他们 在 研究 经济 问题\n".as_bytes(),
    );
    let out = run_eval(&raw, &pred);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("raw.txt") && err.contains("raw text") && err.contains('3'),
        "{err}"
    );
    // The other way round is a normal (poor) score.
    let out = run_eval(&pred, &raw);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// Reads one line from `child`'s stdout within `limit`, with its stdin still open.
fn read_line_within(child: &mut Child, limit: Duration) -> Option<String> {
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    rx.recv_timeout(limit).ok()
}

#[test]
fn segment_is_a_live_filter() {
    let tmp = tempfile::tempdir().unwrap();
    let d = dict(tmp.path());
    for extra in [&["--line-buffered"][..], &[]] {
        let mut child = cws()
            .args(["segment", "--dict-only", &d])
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all("我爱北京\n".as_bytes()).unwrap();
        stdin.flush().unwrap();
        // The writer waits with the pipe open: the line must come out now.
        let line = read_line_within(&mut child, Duration::from_secs(20));
        drop(stdin);
        let _ = child.wait();
        assert_eq!(line.as_deref(), Some("我 爱 北京\n"), "{extra:?}");
    }
}

#[test]
fn a_missing_model_folder_and_a_run_folder_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let out = cws()
        .args(["segment", "--model", "models/msr"])
        .current_dir(tmp.path())
        .env("HF_HUB_OFFLINE", "1")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(err.contains("no model folder \"models/msr\""), "{err}");
    let out = cws()
        .args(["segment", "--model", "./models/msr"])
        .current_dir(tmp.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(
        err.contains("does not exist") && !err.contains("hub"),
        "{err}"
    );
    let run = tmp.path().join("runs/x");
    std::fs::create_dir_all(run.join("best")).unwrap();
    std::fs::copy(
        repo_root().join("models/pku/config.json"),
        run.join("best/config.json"),
    )
    .unwrap();
    let out = run_cws(&["segment", "--model", run.to_str().unwrap()], b"");
    let err = stderr(&out);
    assert!(
        err.contains("training run") && err.contains("runs/x/best"),
        "{err}"
    );
}

/// A tiny training config written to `dir/cfg/NAME.toml`, its paths relative
/// to that folder (data in `dir/data`, the run in `dir/runs/NAME`).
fn tiny_config(dir: &Path, name: &str, extra: &str) -> PathBuf {
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::create_dir_all(dir.join("cfg")).unwrap();
    std::fs::write(data.join("train.txt"), crate::training::corpus(120)).unwrap();
    std::fs::copy(
        repo_root().join("configs/tiny/config.json"),
        dir.join("cfg/tiny.json"),
    )
    .unwrap();
    let text = format!(
        "model = \"config:tiny.json\"\nvocab = \"train\"\ntrain = \"../data/train.txt\"\n\
         dev_fraction = 0.2\nmax_length = 32\nbatch_size = 8\nlearning_rate = 2e-3\neval_every = 3\n\
         output_dir = \"../runs/{name}\"\ndevice = \"cpu\"\n{extra}"
    );
    write_file(&dir.join("cfg"), &format!("{name}.toml"), text.as_bytes())
}

fn train_cmd(dir: &Path, args: &[&str]) -> Command {
    let mut c = cws();
    c.arg("train")
        .args(args)
        .args(["--progress", "quiet"])
        .current_dir(dir)
        .env("RAYON_NUM_THREADS", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

fn metric_steps(run: &Path) -> Vec<u64> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v.get("loss").is_some())
        .map(|v| v["step"].as_u64().unwrap())
        .collect()
}

/// `--overwrite` starts a run again but keeps the teachers' labels of its raw
/// text while the teachers and the text are the same; a retrained teacher
/// (same config, same size of weights) labels it again.
#[test]
fn overwrite_keeps_raw_text_labels_only_while_the_teacher_is_the_same() {
    let tmp = tempfile::tempdir().unwrap();
    let here = tmp.path();
    let train = |name: &str, extra: &str, more: &[&str]| {
        let cfg = tiny_config(here, name, extra);
        let mut args = vec!["--config", cfg.to_str().unwrap()];
        args.extend_from_slice(more);
        let out = train_cmd(here, &args).output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
    };
    train("teacher", "max_steps = 4\n", &[]);
    train("other", "max_steps = 4\nseed = 5\n", &[]);
    let raw: String = crate::training::corpus(20).replace(' ', "");
    write_file(&here.join("data"), "raw.txt", raw.as_bytes());
    let student = "max_steps = 3\ndistill_from = [\"../runs/teacher/last\"]\n\
                   distill_text = [\"../data/raw.txt\"]\n";
    train("student", student, &[]);
    let run = here.join("runs/student");
    let cache = run.join("distill-text.safetensors");
    let (labels, made) = (
        std::fs::read(&cache).unwrap(),
        std::fs::metadata(&cache).unwrap().modified().unwrap(),
    );
    let weights = std::fs::read(run.join("last/model.safetensors")).unwrap();
    train("student", student, &["--overwrite"]);
    assert_eq!(std::fs::metadata(&cache).unwrap().modified().unwrap(), made);
    assert_eq!(
        std::fs::read(run.join("last/model.safetensors")).unwrap(),
        weights
    );
    // The teacher retrained: its files have the same size, its labels differ.
    let teacher = here.join("runs/teacher/last/model.safetensors");
    let retrained = std::fs::read(here.join("runs/other/last/model.safetensors")).unwrap();
    assert_eq!(
        retrained.len() as u64,
        std::fs::metadata(&teacher).unwrap().len()
    );
    std::fs::write(&teacher, retrained).unwrap();
    train("student", student, &["--overwrite"]);
    assert_ne!(std::fs::read(&cache).unwrap(), labels);
}

#[test]
fn configs_resolve_paths_from_their_own_folder_and_reruns_are_explicit() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tiny_config(tmp.path(), "rel", "max_steps = 6\n");
    // Run from an unrelated folder: paths come from the config's folder.
    let elsewhere = tmp.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let cfg_arg = cfg.to_str().unwrap();
    let out = train_cmd(&elsewhere, &["--config", cfg_arg])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let run = tmp.path().join("runs/rel");
    assert_eq!(metric_steps(&run), (1..=6).collect::<Vec<_>>());
    let weights = std::fs::read(run.join("last/model.safetensors")).unwrap();

    // The same command again is refused and changes nothing.
    let out = train_cmd(&elsewhere, &["--config", cfg_arg])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--resume") && stderr(&out).contains("--overwrite"));
    assert_eq!(metric_steps(&run).len(), 6);
    // --overwrite starts again: one log, the same weights.
    let out = train_cmd(&elsewhere, &["--config", cfg_arg, "--overwrite"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(metric_steps(&run).len(), 6);
    assert_eq!(
        std::fs::read(run.join("last/model.safetensors")).unwrap(),
        weights
    );

    // A folder with someone else's files is refused.
    let foreign = tmp.path().join("runs/foreign");
    std::fs::create_dir_all(&foreign).unwrap();
    std::fs::write(foreign.join("notes.txt"), "mine").unwrap();
    let out = train_cmd(
        &elsewhere,
        &[
            "--config",
            cfg_arg,
            "--output-dir",
            foreign.to_str().unwrap(),
        ],
    )
    .output()
    .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("notes.txt") && stderr(&out).contains("--force"));

    // A bad input file is reported before any folder is made.
    let bad = tiny_config(
        tmp.path(),
        "bad",
        "max_steps = 6\ndev = \"../data/missing.txt\"\n",
    );
    let out = train_cmd(&elsewhere, &["--config", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("missing.txt"), "{}", stderr(&out));
    assert!(!tmp.path().join("runs/bad").exists());
    // The same, named by its bare file name from its own folder.
    let name = bad.file_name().unwrap().to_str().unwrap();
    let out = train_cmd(bad.parent().unwrap(), &["--config", name])
        .output()
        .unwrap();
    assert!(stderr(&out).contains("missing.txt"), "{}", stderr(&out));

    // ${VAR} in a config path.
    let var = tiny_config(tmp.path(), "var", "max_steps = 2\n");
    let text = std::fs::read_to_string(&var)
        .unwrap()
        .replace("../data/train.txt", "${CWS_TEST_DATA}/train.txt");
    std::fs::write(&var, text).unwrap();
    let out = train_cmd(&elsewhere, &["--config", var.to_str().unwrap()])
        .env("CWS_TEST_DATA", tmp.path().join("data"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let out = train_cmd(
        &elsewhere,
        &["--config", var.to_str().unwrap(), "--overwrite"],
    )
    .output()
    .unwrap();
    assert!(stderr(&out).contains("CWS_TEST_DATA") && stderr(&out).contains("not set"));
}

#[test]
fn training_on_raw_text_warns() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tiny_config(tmp.path(), "raw", "max_steps = 1\n");
    let raw: String = crate::training::corpus(120).replace("  ", "");
    std::fs::write(tmp.path().join("data/train.txt"), raw).unwrap();
    let out = train_cmd(tmp.path(), &["--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        stderr(&out).contains("have no word separator"),
        "{}",
        stderr(&out)
    );
}

/// Waits until `path` exists (or the child ends), then sends `signal`.
#[cfg(unix)]
fn signal_when(child: &mut Child, path: &Path, signal: libc::c_int) {
    let t0 = Instant::now();
    while !path.exists() && child.try_wait().unwrap().is_none() {
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // SAFETY: sends a signal to our own child process.
    let sent = unsafe { libc::kill(child.id() as libc::pid_t, signal) };
    assert_eq!(sent, 0, "kill({}, {signal})", child.id());
}

#[cfg(unix)]
#[test]
fn signals_save_last_exit_with_their_code_and_resume_to_the_same_weights() {
    let tmp = tempfile::tempdir().unwrap();
    // Two cross-fitted copies, then the run itself: interrupted inside the
    // first copy, then inside the main run, then finished.
    let cfg = tiny_config(tmp.path(), "cf", "max_steps = 12\ncrossfit_folds = 2\n");
    let cfg_arg = cfg.to_str().unwrap();
    let run = tmp.path().join("runs/cf");

    let mut child = train_cmd(tmp.path(), &["--config", cfg_arg])
        .spawn()
        .unwrap();
    signal_when(
        &mut child,
        &run.join("crossfit/0/last/trainer_state.json"),
        libc::SIGINT,
    );
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("stopped by SIGINT") && err.contains("--resume"),
        "{err}"
    );
    let saved = err
        .split("saved ")
        .nth(1)
        .and_then(|s| s.split(';').next())
        .unwrap();
    assert!(
        Path::new(saved).join("trainer_state.json").is_file(),
        "{err}"
    );

    let mut child = train_cmd(tmp.path(), &["--resume", "--config", cfg_arg])
        .spawn()
        .unwrap();
    signal_when(
        &mut child,
        &run.join("last/trainer_state.json"),
        libc::SIGTERM,
    );
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(143), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("stopped by SIGTERM"),
        "{}",
        stderr(&out)
    );

    // Resume needs only the folder: the run's own settings are used.
    let out = train_cmd(
        tmp.path(),
        &["--resume", "--output-dir", run.to_str().unwrap()],
    )
    .output()
    .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(metric_steps(&run), (1..=12).collect::<Vec<_>>());
    for k in 0..2 {
        assert_eq!(
            metric_steps(&run.join(format!("crossfit/{k}"))),
            (1..=12).collect::<Vec<_>>()
        );
    }

    let whole = tiny_config(tmp.path(), "whole", "max_steps = 12\ncrossfit_folds = 2\n");
    let out = train_cmd(tmp.path(), &["--config", whole.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    for f in ["last/model.safetensors", "best/model.safetensors"] {
        assert!(
            std::fs::read(run.join(f)).unwrap()
                == std::fs::read(tmp.path().join("runs/whole").join(f)).unwrap(),
            "{f} differs from the uninterrupted run's"
        );
    }
}

/// Step lines logged so far by a run that may be writing one right now.
fn metric_steps_or_none(run: &Path) -> usize {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get("loss").is_some())
        .count()
}

/// The files a complete checkpoint folder has (`last` also the optimizer
/// and trainer state).
fn assert_complete_checkpoints(run: &Path) {
    let mut stack = vec![run.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if !path.is_dir() {
                continue;
            }
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if name == "best" || name == "last" {
                let mut needed = vec![
                    "config.json",
                    "model.safetensors",
                    "vocab.txt",
                    "cws-train.toml",
                ];
                if name == "last" {
                    needed.extend(["trainer_state.json", "optimizer.safetensors"]);
                }
                for f in needed {
                    assert!(path.join(f).is_file(), "{} lacks {f}", path.display());
                }
            } else if !name.starts_with('.') {
                stack.push(path);
            }
        }
    }
}

#[cfg(unix)]
#[test]
fn sigkill_at_any_point_then_resume_gives_the_uninterrupted_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let extra = "max_steps = 12\ncrossfit_folds = 2\n";
    let whole = tiny_config(tmp.path(), "whole", extra);
    let out = train_cmd(tmp.path(), &["--config", whole.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let expected = |f: &str| std::fs::read(tmp.path().join("runs/whole").join(f)).unwrap();
    // Kill points spread over start-up, the copies, the run, its evaluations
    // and saves: after this many step lines in all (copies 12 each, run 12).
    for (i, after) in [0usize, 3, 13, 20, 27, 30, 36].into_iter().enumerate() {
        let name = format!("killed{i}");
        let cfg = tiny_config(tmp.path(), &name, extra);
        let run = tmp.path().join("runs").join(&name);
        let mut child = train_cmd(tmp.path(), &["--config", cfg.to_str().unwrap()])
            .spawn()
            .unwrap();
        let logged = || {
            ["crossfit/0", "crossfit/1", "."]
                .iter()
                .map(|d| metric_steps_or_none(&run.join(d)))
                .sum::<usize>()
        };
        let t0 = Instant::now();
        while logged() < after && child.try_wait().unwrap().is_none() {
            assert!(t0.elapsed() < Duration::from_secs(300));
            std::thread::sleep(Duration::from_millis(1));
        }
        child.kill().unwrap(); // SIGKILL: no handler runs
        child.wait().unwrap();
        if run.exists() {
            assert_complete_checkpoints(&run);
        }
        let stage = ["crossfit/0", "crossfit/1", "."]
            .iter()
            .map(|d| format!("{d}: {} steps", metric_steps_or_none(&run.join(d))))
            .collect::<Vec<_>>();
        eprintln!("killed after {after} step lines: {}", stage.join(", "));
        let args: Vec<&str> = if run.join("config.toml").is_file() {
            vec!["--resume", "--output-dir", run.to_str().unwrap()]
        } else {
            vec!["--config", cfg.to_str().unwrap()]
        };
        let out = train_cmd(tmp.path(), &args).output().unwrap();
        assert!(
            out.status.success(),
            "killed after {after}: {}",
            stderr(&out)
        );
        for f in ["last/model.safetensors", "best/model.safetensors"] {
            assert!(
                std::fs::read(run.join(f)).unwrap() == expected(f),
                "killed after {after}: {f} differs from the uninterrupted run's"
            );
        }
        assert_eq!(
            metric_steps(&run),
            (1..=12).collect::<Vec<_>>(),
            "killed after {after}"
        );
    }
}
