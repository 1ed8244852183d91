//! Training end to end on a small generated corpus: the loss falls, checkpoints
//! are complete Hugging Face folders, the same seed gives the same weights, a
//! resumed run equals an uninterrupted one, and a trained model segments
//! losslessly through the CLI.

use crate::common::{eval_json, run_cws, segment_with_model, write_file};
use cws::config::TrainConfig;
use cws::train::{train_until, Progress};
use rand::{Rng, SeedableRng};
use std::path::Path;

/// Sentences of words drawn from a small made-up lexicon, so segmentation
/// is learnable and no corpus text is needed.
pub fn corpus(n: usize) -> String {
    let lexicon = [
        "我们",
        "学习",
        "经济",
        "发展",
        "的",
        "了",
        "在",
        "中国",
        "人民",
        "工作",
        "今天",
        "和",
        "研究",
        "问题",
        "是",
        "新",
        "市场",
        "1998年",
        "重要",
        "，",
        "。",
        "计算机",
        "ABC",
        "国际",
    ];
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    (0..n)
        .map(|_| {
            let len = rng.random_range(4..14);
            let mut words: Vec<&str> = (0..len)
                .map(|_| lexicon[rng.random_range(0..lexicon.len())])
                .collect();
            words.push("。");
            words.join("  ") + "\n"
        })
        .collect()
}

fn config(dir: &Path, out: &str, max_steps: usize) -> TrainConfig {
    let train = write_file(dir, "train.txt", corpus(120).as_bytes());
    let model_cfg =
        std::fs::read_to_string(crate::common::repo_root().join("configs/tiny/config.json"))
            .unwrap();
    let cfg_dir = dir.join("tiny");
    std::fs::create_dir_all(&cfg_dir).unwrap();
    std::fs::write(cfg_dir.join("config.json"), model_cfg).unwrap();
    TrainConfig::parse(&format!(
        "model = \"config:{}\"\nvocab = \"train\"\ntrain = \"{}\"\ndev_fraction = 0.2\nmax_length = 32\n\
         batch_size = 8\nmax_steps = {max_steps}\nlearning_rate = 2e-3\nwarmup = 0.1\neval_every = 3\n\
         output_dir = \"{}\"\ndevice = \"cpu\"\n",
        cfg_dir.join("config.json").display(),
        train.display(),
        dir.join(out).display()
    ))
    .unwrap()
}

fn weights(dir: &Path) -> Vec<u8> {
    std::fs::read(dir.join("last/model.safetensors")).unwrap()
}

#[test]
fn training_learns_checkpoints_and_resumes_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let full = config(tmp.path(), "full", 12);
    let s = train_until(&full, false, Progress::Quiet, None).unwrap();
    assert_eq!(s.steps, 12);
    let dev_f1 = s.best_dev_f1.unwrap();
    assert!(
        dev_f1 > 0.5,
        "a tiny model learns a 24-word lexicon: dev F1 {dev_f1}"
    );

    // Loss falls: the mean of the last logged losses is below the first.
    let log = std::fs::read_to_string(tmp.path().join("full/metrics.jsonl")).unwrap();
    let losses: Vec<f64> = log
        .lines()
        .filter_map(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()?
                .get("loss")?
                .as_f64()
        })
        .collect();
    assert_eq!(losses.len(), 12);
    let mean = |x: &[f64]| x.iter().sum::<f64>() / x.len() as f64;
    assert!(
        mean(&losses[9..]) < mean(&losses[..3]),
        "loss falls: {losses:?}"
    );
    assert!(log.contains("dev_f1"), "{log}");

    for name in [
        "config.json",
        "model.safetensors",
        "vocab.txt",
        "tokenizer_config.json",
        "cws-train.toml",
    ] {
        assert!(
            tmp.path().join("full/best").join(name).is_file(),
            "best/{name}"
        );
    }
    let hf_config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(tmp.path().join("full/best/config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(hf_config["id2label"]["3"], "S");
    assert_eq!(hf_config["architectures"][0], "BertForTokenClassification");

    // Same seed, same run: identical weights.
    let again = config(tmp.path(), "again", 12);
    train_until(&again, false, Progress::Quiet, None).unwrap();
    assert_eq!(
        weights(&tmp.path().join("full")),
        weights(&tmp.path().join("again"))
    );

    // Stop after 5 steps, resume to 12: identical to the uninterrupted run.
    let split = config(tmp.path(), "split", 12);
    let s = train_until(&split, false, Progress::Quiet, Some(5)).unwrap();
    assert!(s.interrupted && s.steps == 5);
    let s = train_until(&split, true, Progress::Quiet, None).unwrap();
    assert_eq!(s.steps, 12);
    assert_eq!(
        weights(&tmp.path().join("full")),
        weights(&tmp.path().join("split"))
    );

    // The trained model segments through the CLI, losslessly.
    let model = tmp.path().join("full/best");
    segments_losslessly(&model, "我们学习经济，发展中国。\r\n\n  ABC国际1998年😀\n");
}

/// Runs `cws segment --model model` on `input` and checks that removing the
/// separators gives the input back.
fn segments_losslessly(model: &Path, input: &str) {
    let out = segment_with_model(model, &["--delimiter", "|"], input);
    assert_eq!(out.replace('|', ""), input);
}

#[test]
fn unknown_config_key_is_rejected_with_file_name() {
    let tmp = tempfile::tempdir().unwrap();
    let p = write_file(tmp.path(), "bad.toml", b"model = \"x\"\nlearning_rat = 1\n");
    let out = run_cws(&["train", "--config", p.to_str().unwrap()], b"");
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(!out.status.success());
    assert!(
        err.contains("bad.toml") && err.contains("learning_rat"),
        "{err}"
    );
}

/// The config `cws train ARGS` resolves to.
fn resolved(args: &[&str]) -> anyhow::Result<TrainConfig> {
    use clap::Parser;
    let argv = ["cws", "train"].iter().chain(args);
    let cli = cws::commands::Cli::try_parse_from(argv).unwrap();
    let cws::commands::Command::Train(args) = cli.command else {
        panic!("a train command")
    };
    cws::commands::train::resolve_config(&args)
}

#[test]
fn command_line_overrides_every_usual_field() {
    let tmp = tempfile::tempdir().unwrap();
    let p = write_file(
        tmp.path(),
        "c.toml",
        b"model = \"config:c.json\"\ntrain = \"t.txt\"\nlearning_rate = 1e-3\noutput_dir = \"out\"\n",
    );
    let c = resolved(&[
        "--config",
        p.to_str().unwrap(),
        "--model",
        "m",
        "--train",
        "t2",
        "--dev",
        "d",
        "--words",
        "w",
        "--output-dir",
        "o",
        "--epochs",
        "7",
        "--max-steps",
        "9",
        "--batch-size",
        "5",
        "--learning-rate",
        "0.5",
        "--max-length",
        "64",
        "--eval-every",
        "3",
        "--seed",
        "11",
        "--device",
        "cpu",
        "--precision",
        "bf16",
        "--lexicon",
        "lex",
        "--lexicon-dropout",
        "0.3",
        "--bigram-buckets",
        "99",
        "--unit-dropout",
        "0.2",
        "--dev-oov-rate",
        "0.05",
        "--dropout",
        "0.25",
        "--heldout-folds",
        "6",
        "--heldout-hide",
        "0.4",
        "--lexicon-stats",
        "true",
        "--dev-oov-reference",
        "other-words",
        "--crossfit-folds",
        "4",
        "--crossfit-weight",
        "0.3",
    ])
    .unwrap();
    // Paths on the command line are relative to the current folder.
    let here = |p: &str| std::env::current_dir().unwrap().join(p);
    assert_eq!(
        (c.model.as_str(), c.train, c.dev),
        ("m", here("t2"), Some(here("d")))
    );
    assert_eq!(
        (
            c.epochs,
            c.max_steps,
            c.batch_size,
            c.max_length,
            c.eval_every,
            c.seed
        ),
        (7, Some(9), 5, 64, 3, 11)
    );
    assert_eq!(
        (c.learning_rate, c.device.to_string().as_str(), c.precision),
        (0.5, "cpu", cws::config::Precision::Bf16)
    );
    assert_eq!(c.output_dir, here("o"));
    assert_eq!(c.words, Some(here("w")));
    assert_eq!(c.lexicon, Some(here("lex")));
    assert_eq!(
        (
            c.lexicon_dropout,
            c.bigram_buckets,
            c.unit_dropout,
            c.dev_oov_rate
        ),
        (0.3, 99, 0.2, Some(0.05))
    );
    assert_eq!(c.dropout, Some(0.25));
    assert_eq!((c.heldout_folds, c.heldout_hide), (6, 0.4));
    assert!(c.lexicon_stats);
    assert_eq!(c.dev_oov_reference, Some(here("other-words")));
    assert_eq!((c.crossfit_folds, c.crossfit_weight), (4, 0.3));
}

/// A model with lexicon and bigram features (and word-list statistics and
/// the general list's frequent entries marked apart, or not): the checkpoint carries the hashed lists and the extra embeddings,
/// reloads, and segments losslessly.
#[test]
fn lexicon_and_bigram_features_train_save_and_segment() {
    for stats in [false, true] {
        lexicon_model_round_trip(stats);
    }
}

fn lexicon_model_round_trip(stats: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(tmp.path(), "lex", 40);
    cfg.lexicon_stats = stats;
    let lex = write_file(tmp.path(), "words.txt", "研究生\n计算机\n".as_bytes());
    cfg.lexicon = Some(lex);
    // A general list in jieba's format, with statistics when the lexicon has them.
    // Entries under the minimum frequency are left out (国际), those without
    // one stay (经济).
    let general = "研究 100 vn\n计算机 50 n\n国际 20 n\n我们 30\n经济\n".as_bytes();
    cfg.general_lexicon = Some(write_file(tmp.path(), "general.txt", general));
    cfg.general_lexicon_stats = stats;
    cfg.general_lexicon_min_frequency = 25.0;
    // With statistics, entries of frequency 60 or more are marked apart too.
    cfg.general_lexicon_frequent = if stats { 60.0 } else { 0.0 };
    cfg.bigram_buckets = 64;
    cfg.unit_dropout = 0.1;
    cfg.heldout_folds = 3;
    cfg.heldout_hide = 0.5;
    cfg.bigram_min_count = 1;
    cfg.learning_rate = 5e-3;
    let s = train_until(&cfg, false, Progress::Quiet, None).unwrap();
    assert!(s.best_dev_f1.unwrap() > 0.5, "{:?}", s.best_dev_f1);
    let model = tmp.path().join("lex/best");
    assert!(model.join("lexicon.safetensors").is_file());
    let hf: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("config.json")).unwrap()).unwrap();
    let width = if stats { 55 } else { 10 };
    assert_eq!(hf["cws_lexicon_features"], width);
    assert_eq!(model.join("liststats.safetensors").is_file(), stats);
    let general_width = if stats { width + 10 } else { width };
    assert_eq!(hf["cws_general_lexicon_features"], general_width);
    assert_eq!(hf.get("cws_general_lexicon_frequent").is_some(), stats);
    let general = cws::features::Lexicon::load(&model.join("general_lexicon.safetensors")).unwrap();
    for (w, kept, frequent) in [
        ("研究", true, stats),
        ("计算机", true, false),
        ("我们", true, false),
        ("经济", true, false),
        ("国际", false, false),
    ] {
        assert_eq!(general.contains(w), kept, "{w}");
        let tier = cws::features::FREQUENT_TIER;
        assert_eq!(general.contains_for(w, tier), frequent, "{w} frequent");
    }
    assert_eq!(model.join("general_liststats.safetensors").is_file(), stats);
    let weights =
        candle_core::safetensors::load(model.join("model.safetensors"), &candle_core::Device::Cpu)
            .unwrap();
    assert_eq!(
        weights["bert.embeddings.lexicon_embeddings.weight"].dims()[0],
        width
    );
    assert_eq!(
        weights["bert.embeddings.general_lexicon_embeddings.weight"].dims()[0],
        general_width
    );
    assert_eq!(hf["cws_bigram_buckets"], 64);
    let names = safetensors_names(&model.join("model.safetensors"));
    for n in [
        "bert.embeddings.lexicon_embeddings.weight",
        "bert.embeddings.bigram_embeddings.weight",
        "bert.embeddings.general_lexicon_embeddings.weight",
    ] {
        assert!(names.iter().any(|x| x == n), "{n} in {names:?}");
    }
    segments_losslessly(&model, "我们研究生的计算机，ABC国际1998年😀\n");
    // `cws eval --hide-words` scores it with listed words taken out.
    let gold = write_file(
        tmp.path(),
        "gold.txt",
        "我们  研究生  的  计算机\n".as_bytes(),
    );
    let hide = write_file(tmp.path(), "hide.txt", "研究生\n".as_bytes());
    let report = eval_json(&[
        "--model",
        model.to_str().unwrap(),
        "--gold",
        gold.to_str().unwrap(),
        "--hide-words",
        hide.to_str().unwrap(),
    ]);
    assert_eq!(report["gold_words"], 4);

    // Without its list files the model refuses to load, naming the file.
    let files: &[&str] = if stats {
        &[
            "lexicon.safetensors",
            "liststats.safetensors",
            "general_lexicon.safetensors",
            "general_liststats.safetensors",
        ]
    } else {
        &["lexicon.safetensors", "general_lexicon.safetensors"]
    };
    for file in files {
        let kept = tmp.path().join("kept");
        std::fs::rename(model.join(file), &kept).unwrap();
        let out = run_cws(&["segment", "--model", model.to_str().unwrap()], b"x\n");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(file), "{err}");
        std::fs::rename(&kept, model.join(file)).unwrap();
    }
}

/// A joint (multi-criteria) run: two corpora of the same sentences by two
/// standards (the second splits every two-character word), each with its own
/// word list, train one model that segments by either standard, resumes
/// exactly, and scores each standard's text best when reading by it; with
/// the standard as a column at every position and as a token.
#[test]
fn a_joint_model_learns_two_standards_and_segments_by_either() {
    use cws::model::StandardInput;
    joint_model_round_trip(StandardInput::Column);
    joint_model_round_trip(StandardInput::Token);
}

fn joint_model_round_trip(input: cws::model::StandardInput) {
    use cws::config::JointCorpus;
    use cws::model::{Standard, StandardInput};
    let tmp = tempfile::tempdir().unwrap();
    let is_cjk = |c: char| ('\u{4e00}'..='\u{9fff}').contains(&c);
    let split_pairs = |line: &str| -> String {
        line.split("  ")
            .map(|w| {
                if w.chars().count() == 2 && w.chars().all(is_cjk) {
                    w.chars().map(String::from).collect::<Vec<_>>().join("  ")
                } else {
                    w.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("  ")
    };
    let a = corpus(120);
    let b: String = a.lines().map(|l| split_pairs(l) + "\n").collect();
    let words = |text: &str| {
        let mut w: Vec<&str> = text.split_whitespace().collect();
        w.sort();
        w.dedup();
        w.join("\n") + "\n"
    };
    let joint = |name: &str, steps: usize| {
        let mut c = config(tmp.path(), name, steps);
        c.standard = Some(Standard::Pku);
        c.lexicon = Some(write_file(tmp.path(), "a.words", words(&a).as_bytes()));
        c.joint = vec![JointCorpus {
            train: write_file(tmp.path(), "b.txt", b.as_bytes()),
            standard: Standard::Msr,
            words: None,
            lexicon: Some(write_file(tmp.path(), "b.words", words(&b).as_bytes())),
            dev_oov_rate: None,
            dev_oov_reference: None,
        }];
        c.bigram_buckets = 64;
        c.heldout_folds = 3;
        c.heldout_hide = 0.5;
        c.tune_boundary_bias = true;
        c.learning_rate = 5e-3;
        c.joint_standard_input = input;
        c.validate().unwrap();
        c
    };
    let full = joint("joint", 40);
    let s = train_until(&full, false, Progress::Quiet, None).unwrap();
    assert!(s.best_dev_f1.unwrap() > 0.5, "{:?}", s.best_dev_f1);
    let data = cws::train::load_data(&full, Progress::Quiet).unwrap();
    assert_eq!(data.train.len(), 2 * 96, "both corpora, 80% each");
    assert_eq!(data.standard_of.iter().filter(|&&k| k == 1).count(), 96);

    let model = tmp.path().join("joint/best");
    let hf: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("config.json")).unwrap()).unwrap();
    assert_eq!(hf["cws_standards"], serde_json::json!(["pku", "msr"]));
    assert_eq!(hf["cws_boundary_biases"].as_array().unwrap().len(), 2);
    assert!(hf.get("cws_standard").is_none());
    let vocab = std::fs::read_to_string(model.join("vocab.txt")).unwrap();
    let has_tokens = vocab.lines().any(|t| t == "[PKU]") && vocab.lines().any(|t| t == "[MSR]");
    match input {
        StandardInput::Column => {
            assert_eq!(hf["cws_lexicon_features"], 12);
            assert!(!has_tokens && hf.get("cws_standard_input").is_none());
        }
        StandardInput::Token => {
            assert_eq!(hf["cws_lexicon_features"], 10);
            assert!(has_tokens && hf["cws_standard_input"] == "token");
        }
    }

    // Stopped and resumed: the same weights as the uninterrupted run.
    let split = joint("split", 40);
    train_until(&split, false, Progress::Quiet, Some(7)).unwrap();
    train_until(&split, true, Progress::Quiet, None).unwrap();
    assert_eq!(
        weights(&tmp.path().join("joint")),
        weights(&tmp.path().join("split"))
    );

    // Each standard's way, losslessly; MSR's (here) splits more.
    let text = "我们学习经济，发展中国。今天研究市场问题。\n";
    let by = |standard: &str| {
        let out = segment_with_model(&model, &["--standard", standard], text);
        assert_eq!(out.replace(' ', ""), text);
        out.split_whitespace().count()
    };
    let (pku, msr) = (by("pku"), by("msr"));
    assert!(msr > pku, "msr {msr} words, pku {pku}");
    // Exported (f16), it keeps its standards.
    let export = tmp.path().join("export");
    export_and_segment(&model, &export, text);
    let exported = segment_with_model(&export, &["--standard", "msr"], text);
    assert_eq!(exported.split_whitespace().count(), msr, "{exported}");
    assert_eq!(by("pku"), {
        let out = segment_with_model(&model, &[], text);
        out.split_whitespace().count()
    });

    // A config whose biases do not match its standards, or (token form) a
    // vocabulary without the standard's token, is an error naming it.
    let config = model.join("config.json");
    let good = std::fs::read_to_string(&config).unwrap();
    let mut broken: serde_json::Value = serde_json::from_str(&good).unwrap();
    broken["cws_boundary_biases"] = serde_json::json!([0.0]);
    std::fs::write(&config, broken.to_string()).unwrap();
    let out = run_cws(&["segment", "--model", model.to_str().unwrap()], b"x\n");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("cws_boundary_biases"),
        "{err}"
    );
    std::fs::write(&config, &good).unwrap();
    if input == StandardInput::Token {
        let vocab_file = model.join("vocab.txt");
        let renamed = vocab.replace("[MSR]", "[XYZ]");
        std::fs::write(&vocab_file, renamed).unwrap();
        let out = run_cws(&["segment", "--model", model.to_str().unwrap()], b"x\n");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains("[MSR]"), "{err}");
        std::fs::write(&vocab_file, &vocab).unwrap();
    }

    // Scored on the second standard's text, reading by it wins.
    let gold = write_file(
        tmp.path(),
        "b-gold.txt",
        b.lines().take(30).collect::<Vec<_>>().join("\n").as_bytes(),
    );
    let f1 = |standard: &str| {
        let m = model.to_str().unwrap();
        let g = gold.to_str().unwrap();
        eval_json(&["--model", m, "--standard", standard, "--gold", g])["f1"]
            .as_f64()
            .unwrap()
    };
    let (as_msr, as_pku) = (f1("msr"), f1("pku"));
    assert!(as_msr > as_pku + 0.1, "msr {as_msr}, pku {as_pku}");
}

/// Distillation: a student trained against a teacher's probabilities differs
/// from one trained on the gold labels alone, with the same seed; a teacher
/// may read other features than the student.
#[test]
fn distillation_mixes_a_teachers_probabilities_into_the_loss() {
    let tmp = tempfile::tempdir().unwrap();
    let teacher = config(tmp.path(), "teacher", 12);
    train_until(&teacher, false, Progress::Quiet, None).unwrap();
    let teacher_dir = tmp.path().join("teacher/last");
    // Six steps with seed 5, distilled with `weight` (None: no teacher).
    let run = |name: &str, weight: Option<f64>| {
        let mut c = config(tmp.path(), name, 6);
        c.seed = 5;
        if let Some(w) = weight {
            c.distill_from = vec![teacher_dir.clone()];
            c.distill_weight = w;
        }
        let s = train_until(&c, false, Progress::Quiet, None).unwrap();
        assert_eq!(s.steps, 6);
        weights(&tmp.path().join(name))
    };
    let plain = run("plain", None);
    assert_ne!(plain, run("student", Some(0.7)));
    // Weight 0 is the plain loss: the same weights.
    assert_eq!(plain, run("zero", Some(0.0)));

    // Teachers read the sentences their own way: one with bigram features
    // teaches a student without, and a student with lexicon features and
    // word-list statistics learns from one with neither.
    let mut other = config(tmp.path(), "other", 2);
    other.bigram_buckets = 16;
    train_until(&other, false, Progress::Quiet, None).unwrap();
    let words = write_file(tmp.path(), "words.txt", "研究生\n计算机\n".as_bytes());
    let mut lexical = config(tmp.path(), "lexical", 3);
    lexical.lexicon = Some(words);
    lexical.lexicon_stats = true;
    lexical.distill_from = vec![tmp.path().join("other/last"), teacher_dir];
    assert_eq!(
        train_until(&lexical, false, Progress::Quiet, None)
            .unwrap()
            .steps,
        3
    );
}

/// Cross-fitted self-distillation: copy k trains without the training
/// sentences whose index is k modulo the fold count; the student's loss with
/// weight 0 is the plain loss (the same weights as plain training), with a
/// positive weight it is not; finished copies are not trained again.
#[test]
fn crossfit_trains_copies_without_one_fold_and_distils_them() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = config(tmp.path(), "data", 1);
    let all = cws::train::load_data(&c, Progress::Quiet).unwrap().train;
    c.exclude_fold = Some([1, 3]);
    let some = cws::train::load_data(&c, Progress::Quiet).unwrap().train;
    let expected: Vec<_> = all
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 3 != 1)
        .map(|(_, s)| s.clone())
        .collect();
    assert_eq!(some, expected);
    assert!(some.len() < all.len());

    let run = |name: &str, folds: usize, weight: f64| {
        let mut c = config(tmp.path(), name, 6);
        c.crossfit_folds = folds;
        c.crossfit_weight = weight;
        let s = train_until(&c, false, Progress::Quiet, None).unwrap();
        assert_eq!(s.steps, 6);
        weights(&tmp.path().join(name))
    };
    let plain = run("plain", 0, 0.5);
    let distilled = run("crossfit", 2, 0.5);
    assert_ne!(plain, distilled);
    for k in 0..2 {
        let copy = tmp.path().join(format!("crossfit/crossfit/{k}"));
        let saved = TrainConfig::load(&copy.join("config.toml")).unwrap();
        assert_eq!(
            (saved.exclude_fold, saved.crossfit_folds),
            (Some([k, 2]), 0)
        );
        assert!(copy.join("best/model.safetensors").is_file());
    }
    let copy_weights = tmp
        .path()
        .join("crossfit/crossfit/0/last/model.safetensors");
    let before = std::fs::metadata(&copy_weights)
        .unwrap()
        .modified()
        .unwrap();
    // Weight 0: the plain loss, and the finished copies are reused.
    assert_eq!(plain, run("crossfit", 2, 0.0));
    let after = std::fs::metadata(&copy_weights)
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(before, after);
}

fn safetensors_names(path: &Path) -> Vec<String> {
    candle_core::safetensors::load(path, &candle_core::Device::Cpu)
        .unwrap()
        .into_keys()
        .collect()
}

/// The repository's configs load from any folder: their paths are relative to
/// configs/ (or come from $CWS_DATA_DIR), and the data they name is there
/// wherever the SIGHAN data is.
#[test]
fn repository_configs_load_and_find_their_data() {
    let dir = crate::common::repo_root().join("configs");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let c = TrainConfig::load(&path).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
        assert!(
            c.output_dir
                .starts_with(crate::common::repo_root().join("runs")),
            "{}",
            path.display()
        );
        if let Some(model) = c.model.strip_prefix("config:") {
            assert!(Path::new(model).is_file(), "{}: {model}", path.display());
        }
        if crate::common::data_dir().is_some() && !c.model.starts_with("bert-base") {
            assert!(
                c.train.is_file(),
                "{}: {}",
                path.display(),
                c.train.display()
            );
        }
        checked += 1;
    }
    assert!(checked >= 4);
}

/// Every config field can be set from the command line with `--set`: the
/// test walks the full list of fields (read from the config parser's own
/// "expected one of" message, so a new field fails here until covered).
#[test]
fn every_config_field_is_settable_from_the_command_line() {
    let err = TrainConfig::parse("no_such_field = 1\n")
        .unwrap_err()
        .to_string();
    let fields: Vec<String> = err
        .split("expected one of")
        .nth(1)
        .unwrap_or_else(|| panic!("{err}"))
        .split(',')
        .map(|f| f.trim().trim_matches('`').to_string())
        .filter(|f| !f.is_empty())
        .collect();
    // A value for each field that differs from the base config below.
    let values: &[(&str, &str)] = &[
        ("model", "\"hub-owner/model\""),
        ("vocab", "\"vocab.txt\""),
        ("train", "\"t2.txt\""),
        ("dev", "\"d.txt\""),
        ("dev_fraction", "0.25"),
        ("words", "\"w.txt\""),
        ("lexicon", "\"lex2.txt\""),
        ("lexicon_dropout", "0.3"),
        ("lexicon_stats", "true"),
        ("general_lexicon", "\"general.txt\""),
        ("general_lexicon_stats", "true"),
        ("general_lexicon_min_frequency", "5.0"),
        ("general_lexicon_frequent", "5.0"),
        ("standard", "\"msr\""),
        ("joint_standard_input", "\"token\""),
        (
            "joint",
            "[{ train = \"m.txt\", standard = \"msr\", lexicon = \"m.words\" }]",
        ),
        ("distill_from", "[\"teacher\"]"),
        ("distill_weight", "0.7"),
        ("distill_text", "[\"raw.txt\"]"),
        ("distill_text_weight", "0.8"),
        ("crossfit_folds", "3"),
        ("crossfit_weight", "0.2"),
        ("exclude_fold", "[1, 4]"),
        ("lexicon_examples", "0.4"),
        ("unit_dropout", "0.05"),
        ("long_word_placeholder", "\"L\""),
        ("heldout_folds", "5"),
        ("heldout_hide", "0.6"),
        ("tune_boundary_bias", "true"),
        ("head", "\"crf\""),
        ("bigram_min_count", "2"),
        ("dev_oov_rate", "0.05"),
        ("dev_oov_reference", "\"ref.txt\""),
        ("bigram_buckets", "500"),
        ("max_length", "64"),
        ("batch_size", "7"),
        ("epochs", "9"),
        ("max_steps", "11"),
        ("learning_rate", "0.25"),
        ("warmup", "0.2"),
        ("weight_decay", "0.03"),
        ("grad_clip", "0.5"),
        ("dropout", "0.15"),
        ("seed", "5"),
        ("eval_every", "13"),
        ("output_dir", "\"o2\""),
        ("device", "\"cuda:1\""),
        ("precision", "\"bf16\""),
    ];
    let mut covered: Vec<&str> = values.iter().map(|(k, _)| *k).collect();
    covered.sort();
    let mut all: Vec<&str> = fields.iter().map(String::as_str).collect();
    all.sort();
    assert_eq!(covered, all, "fields without a value in this test");

    let tmp = tempfile::tempdir().unwrap();
    let base = write_file(
        tmp.path(),
        "c.toml",
        b"model = \"config:c.json\"\ntrain = \"t.txt\"\nlexicon = \"lex.txt\"\noutput_dir = \"out\"\n",
    );
    let here = std::env::current_dir().unwrap();
    for (key, value) in values {
        let set = format!("{key}={value}");
        let mut args = vec!["--config", base.to_str().unwrap(), "--set", &set];
        // Raw text needs a teacher to label it.
        if *key == "distill_text" {
            args.extend(["--set", "distill_from=[\"teacher\"]"]);
        }
        // A joint corpus needs a standard for the top-level one.
        if *key == "joint" {
            args.extend(["--set", "standard=\"pku\""]);
        }
        // The general list's statistics and tiers need the general list.
        if ["general_lexicon_stats", "general_lexicon_frequent"].contains(key) {
            args.extend(["--set", "general_lexicon=\"general.txt\""]);
        }
        let c = resolved(&args).unwrap_or_else(|e| panic!("--set {set}: {e:#}"));
        let got = c.to_table().get(*key).cloned();
        let mut want: toml::Value =
            format!("v = {value}").parse::<toml::Table>().unwrap()["v"].clone();
        // Paths given on the command line are taken from the current folder.
        if cws::config::PATH_FIELDS.contains(key) {
            let abs = |v: &toml::Value| {
                toml::Value::String(here.join(v.as_str().unwrap()).display().to_string())
            };
            want = match &want {
                toml::Value::Array(items) => toml::Value::Array(items.iter().map(abs).collect()),
                v => abs(v),
            };
        }
        if *key == "joint" {
            let table = want.as_array_mut().unwrap()[0].as_table_mut().unwrap();
            for field in ["train", "lexicon"] {
                let path = here.join(table[field].as_str().unwrap());
                table.insert(
                    field.into(),
                    toml::Value::String(path.display().to_string()),
                );
            }
        }
        assert_eq!(got, Some(want), "--set {set}");
    }
    // Unknown keys are errors, from the command line too.
    let err = format!(
        "{:#}",
        resolved(&[
            "--config",
            base.to_str().unwrap(),
            "--set",
            "learning_rat=1"
        ])
        .unwrap_err()
    );
    assert!(err.contains("unknown field `learning_rat`"), "{err}");
}

/// The README's example configs load as written from configs/, and the
/// fresh-model one trains (a few steps) where the SIGHAN data is present.
#[test]
fn readme_example_configs_load_and_train() {
    let readme = std::fs::read_to_string(crate::common::repo_root().join("README.md")).unwrap();
    let blocks: Vec<&str> = readme
        .split("```toml\n")
        .skip(1)
        .map(|b| b.split("```").next().unwrap())
        .collect();
    assert!(blocks.len() >= 2, "the README shows example configs");
    let tmp = tempfile::tempdir().unwrap();
    let configs = tmp.path().join("configs");
    std::fs::create_dir_all(configs.join("tiny")).unwrap();
    std::fs::copy(
        crate::common::repo_root().join("configs/tiny/config.json"),
        configs.join("tiny/config.json"),
    )
    .unwrap();
    for (i, block) in blocks.iter().enumerate() {
        assert!(block.lines().count() <= 5, "{block}");
        let path = write_file(&configs, &format!("example{i}.toml"), block.as_bytes());
        let c = TrainConfig::load(&path).unwrap_or_else(|e| panic!("{block}: {e:#}"));
        assert!(c.output_dir.starts_with(tmp.path().join("runs")), "{block}");
        if let (true, Some(data)) = (c.model.starts_with("config:"), crate::common::data_dir()) {
            let mut c = c;
            // Without $CWS_DATA_DIR the default points beside this temp folder.
            if !c.train.is_file() {
                c.train = data.join("train/pku_10pct.utf8");
            }
            c.max_steps = Some(2);
            c.max_length = 32;
            c.batch_size = 4;
            c.dev_fraction = 0.005;
            let s = train_until(&c, false, Progress::Quiet, None).unwrap();
            assert_eq!(s.steps, 2);
        }
    }
}

/// A CRF head trains (loss falls, transitions move), resumes to identical
/// weights, is saved with its scores and `cws_head`, exports to f16 and
/// segments losslessly.
#[test]
fn crf_head_trains_resumes_exports_and_segments() {
    let tmp = tempfile::tempdir().unwrap();
    let crf = |name: &str| {
        let mut c = config(tmp.path(), name, 12);
        c.head = cws::model::Head::Crf;
        c
    };
    let full = crf("full");
    let s = train_until(&full, false, Progress::Quiet, None).unwrap();
    assert!(
        s.best_dev_f1.unwrap() > 0.5,
        "a tiny CRF model learns a 24-word lexicon: dev F1 {:?}",
        s.best_dev_f1
    );
    let parted = crf("parted");
    let first = train_until(&parted, false, Progress::Quiet, Some(5)).unwrap();
    assert!(first.interrupted);
    train_until(&parted, true, Progress::Quiet, None).unwrap();
    assert_eq!(
        weights(&tmp.path().join("full")),
        weights(&tmp.path().join("parted"))
    );

    let last = tmp.path().join("full/last");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(last.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["cws_head"], "crf");
    let tensors =
        candle_core::safetensors::load(last.join("model.safetensors"), &candle_core::Device::Cpu)
            .unwrap();
    let trained = tensors["crf.transitions"].flatten_all().unwrap();
    let trained: Vec<f32> = trained.to_vec1().unwrap();
    assert_eq!(trained.len(), 16);
    assert!(
        trained.iter().any(|v| v.abs() > 0.1),
        "transitions were trained: {trained:?}"
    );

    let input = "研究生命的起源\r\n\n  计算机 abc 123\n";
    let text = export_and_segment(&last, &tmp.path().join("export"), input);
    assert_eq!(text.replace(' ', ""), input.replace(' ', ""));
}

/// Exports `model` as f16 to `export` and segments `input` with the export.
fn export_and_segment(model: &Path, export: &Path, input: &str) -> String {
    let out = run_cws(
        &[
            "export",
            "--model",
            model.to_str().unwrap(),
            "--output",
            export.to_str().unwrap(),
            "--dtype",
            "f16",
        ],
        b"",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run_cws(
        &["segment", "--model", export.to_str().unwrap()],
        input.as_bytes(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A teacher of bert-base-chinese's shape, vocabulary (21,128 WordPiece
/// entries) and no unit features teaches a tiny student that reads lexicon
/// features and builds its own vocabulary: its probabilities reach the loss.
#[test]
fn a_bert_base_shaped_teacher_teaches_a_tiny_lexicon_student() {
    let Some(shared) = crate::common::shared_model_dir() else {
        eprintln!("skipping: shared/models/bert-base-chinese not found");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let device = candle_core::Device::Cpu;
    let mut bert = cws::model::BertConfig::from_file(shared.join("config.json")).unwrap();
    bert.set_labels(&cws::bies::LABEL_NAMES);
    let varmap = candle_nn::VarMap::new();
    let model = cws::model::BertForTokenClassification::new_random(
        &varmap,
        &bert,
        7,
        candle_core::DType::F32,
        &device,
    )
    .unwrap();
    let teacher = cws::tagger::Tagger {
        model,
        varmap,
        vocab: cws::encode::Vocab::load(&shared.join("vocab.txt")).unwrap(),
        max_units: bert.max_position_embeddings - 2,
        config: bert,
        device,
        batch_size: 16,
        features: cws::features::FeatureSpec::default(),
    };
    let teacher_dir = tmp.path().join("bert-base-teacher");
    cws::checkpoint::write_atomic(&teacher_dir, |dir| {
        cws::model_dir::save(&teacher, dir, candle_core::DType::F16, &teacher.features)
    })
    .unwrap();
    drop(teacher);

    // docs/distillation.md's recipe, a handful of steps: distil with raw
    // text, export, segment.
    let words = write_file(tmp.path(), "words.txt", "研究生\n计算机\n".as_bytes());
    let raw = write_file(
        tmp.path(),
        "raw.txt",
        "他们在北京学习计算机。\n\n今天的工作 abc 123\n".as_bytes(),
    );
    let run = |name: &str, teacher: Option<&Path>| {
        let mut c = config(tmp.path(), name, 3);
        c.lexicon = Some(words.clone());
        if let Some(t) = teacher {
            c.distill_from = vec![t.to_path_buf()];
            c.distill_text = vec![raw.clone()];
        }
        c.distill_weight = 0.9;
        assert_eq!(
            train_until(&c, false, Progress::Quiet, None).unwrap().steps,
            3
        );
        weights(&tmp.path().join(name))
    };
    assert_ne!(run("plain", None), run("taught", Some(&teacher_dir)));
    let input = "他们在北京学习计算机。\n";
    let text = export_and_segment(
        &tmp.path().join("taught/best"),
        &tmp.path().join("exported"),
        input,
    );
    assert_eq!(text.replace(' ', ""), input);
}

/// Raw text labelled by a teacher joins training (`distill_text`): the
/// teacher's labels are cached in the run folder and reused, the student
/// differs from one taught on the gold sentences alone, a stopped run
/// resumes to identical weights, and bad input is an error naming the file
/// and line.
#[test]
fn distill_text_trains_on_raw_text_labelled_by_the_teacher() {
    let tmp = tempfile::tempdir().unwrap();
    let teacher = config(tmp.path(), "teacher", 12);
    train_until(&teacher, false, Progress::Quiet, None).unwrap();
    let teacher_dir = tmp.path().join("teacher/last");
    // Raw text: the corpus with its spaces taken out, three sentences a
    // line, blank lines between, a byte-order mark first and CRLF line ends.
    let text = corpus(60);
    let sentences: Vec<&str> = text.lines().collect();
    let raw_text: String = "\u{feff}".to_string()
        + &sentences
            .chunks(3)
            .map(|c| format!("{}\r\n\r\n", c.concat().replace(' ', "")))
            .collect::<String>();
    let raw = write_file(tmp.path(), "raw.txt", raw_text.as_bytes());
    let run = |name: &str, text: bool, stop: Option<u64>| {
        let mut c = config(tmp.path(), name, 8);
        c.distill_from = vec![teacher_dir.clone()];
        if text {
            c.distill_text = vec![raw.clone()];
        }
        train_until(
            &c,
            stop.is_none() && name.ends_with("resumed"),
            Progress::Quiet,
            stop,
        )
        .unwrap();
        weights(&tmp.path().join(name))
    };
    let gold_only = run("gold-only", false, None);
    let with_text = run("with-text", true, None);
    assert_ne!(gold_only, with_text);
    let cache = tmp.path().join("with-text/distill-text.safetensors");
    assert!(cache.is_file(), "the teacher's labels are cached");
    // The cache is safetensors: per window its file, line offset, first unit,
    // units and first label row; per unit the teacher's probabilities.
    let t = candle_core::safetensors::load(&cache, &candle_core::Device::Cpu).unwrap();
    let entries: Vec<Vec<i64>> = t["windows"].to_vec2().unwrap();
    let probs: Vec<Vec<f32>> = t["probs"].to_vec2().unwrap();
    let (mut expected, mut offset, mut row) = (Vec::new(), 3, 0);
    for line in raw_text['\u{feff}'.len_utf8()..].split_inclusive('\n') {
        let text = line.trim_end_matches(['\r', '\n']);
        let units: Vec<String> = cws::segment::chunk_spans(text)
            .into_iter()
            .flat_map(|r| cws::units::split_units(&text[r]))
            .map(|u| u.key())
            .collect();
        let max_units = config(tmp.path(), "with-text", 8).max_length - 2;
        for r in cws::encode::split_at_punctuation(&units, max_units) {
            let at = [0, offset, r.start, r.len(), row + r.start];
            expected.push(at.map(|v| v as i64).to_vec());
        }
        offset += line.len();
        row += units.len();
    }
    assert!(expected.len() > 20, "lines longer than a window");
    assert_eq!(entries, expected);
    assert_eq!(probs.len(), row);
    assert!(probs
        .iter()
        .all(|p| (p.iter().sum::<f32>() - 1.0).abs() < 1e-4));
    let cached_at = std::fs::metadata(&cache).unwrap().modified().unwrap();

    // Stopped after 3 steps, then resumed: the same weights, the cache reused.
    run("resumed", true, Some(3));
    let first = std::fs::metadata(tmp.path().join("resumed/distill-text.safetensors"))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(run("resumed", true, None), with_text);
    let second = std::fs::metadata(tmp.path().join("resumed/distill-text.safetensors"))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(first, second, "the cache is reused on --resume");
    assert!(cached_at <= second);

    // A truncated cache is made again, to the same labels and weights.
    let whole = std::fs::read(&cache).unwrap();
    std::fs::create_dir_all(tmp.path().join("rebuilt")).unwrap();
    let cut = tmp.path().join("rebuilt/distill-text.safetensors");
    std::fs::write(&cut, &whole[..whole.len() / 2]).unwrap();
    assert_eq!(run("rebuilt", true, None), with_text);
    assert_eq!(std::fs::read(&cut).unwrap(), whole);

    // Batches of raw-text windows alone (one window per batch) train too.
    let mut c = config(tmp.path(), "raw-batches", 6);
    c.batch_size = 1;
    c.distill_from = vec![teacher_dir.clone()];
    let more: String = corpus(600)
        .lines()
        .map(|l| l.replace(' ', "") + "\n")
        .collect();
    c.distill_text = vec![write_file(tmp.path(), "more.txt", more.as_bytes())];
    assert_eq!(
        train_until(&c, false, Progress::Quiet, None).unwrap().steps,
        6
    );

    // Raw text without a teacher, and invalid UTF-8 in the raw text.
    let mut c = config(tmp.path(), "no-teacher", 2);
    c.distill_text = vec![raw.clone()];
    let err = format!("{:#}", c.validate().unwrap_err());
    assert!(err.contains("distill_from"), "{err}");
    let bad = write_file(
        tmp.path(),
        "bad.txt",
        b"\xe6\x88\x91\xe4\xbb\xac\n\xff\xfe\n",
    );
    let mut c = config(tmp.path(), "bad", 2);
    c.distill_from = vec![teacher_dir];
    c.distill_text = vec![bad];
    let err = format!(
        "{:#}",
        train_until(&c, false, Progress::Quiet, None).unwrap_err()
    );
    assert!(err.contains("bad.txt") && err.contains('2'), "{err}");
}
