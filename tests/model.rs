//! Tests of the BERT model, checkpoint I/O and optimizer against the PyTorch fixture.
//!
//! Closeness, used throughout: |actual - expected| <= RTOL * (|expected| + max|expected|)
//! elementwise, with RTOL = 1e-4. The max|expected| term keeps elements near zero
//! from demanding more precision than the tensor's scale allows.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use cws::model::{
    masked_cross_entropy, masked_soft_cross_entropy, BertConfig, BertForTokenClassification,
    DropoutRng,
};
use cws::optim::{clip_grad_norm, AdamW, AdamWConfig, LinearSchedule};
use cws::weights::{self, LoadOptions};

const RTOL: f64 = 1e-4;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/parity")
        .join(name)
}

fn expected() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture("expected.safetensors"), &Device::Cpu).unwrap()
}

pub fn to_f64(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn assert_close(what: &str, actual: &Tensor, expected: &Tensor) {
    assert_eq!(actual.dims(), expected.dims(), "{what}: shape");
    let (a, e) = (to_f64(actual), to_f64(expected));
    let scale = e.iter().fold(0f64, |m, x| m.max(x.abs()));
    for (i, (x, y)) in a.iter().zip(&e).enumerate() {
        assert!(
            (x - y).abs() <= RTOL * (y.abs() + scale),
            "{what}[{i}]: {x} vs expected {y} (scale {scale})"
        );
    }
}

/// `logits` `[b, t, c]` at the attended positions of `mask` `[b, t]` only,
/// flattened: what a padding position holds is not part of the contract.
fn attended(logits: &Tensor, mask: &Tensor) -> Tensor {
    let mask = to_f64(mask);
    let labels = logits.dim(2).unwrap();
    let v: Vec<f32> = to_f64(logits)
        .chunks(labels)
        .zip(&mask)
        .filter(|(_, &m)| m != 0.0)
        .flat_map(|(row, _)| row.iter().map(|&x| x as f32))
        .collect();
    let n = v.len();
    Tensor::from_vec(v, n, &Device::Cpu).unwrap()
}

fn fixture_config() -> BertConfig {
    BertConfig::from_file(fixture("config.json")).unwrap()
}

/// The fixture model loaded into a fresh VarMap.
fn fixture_model() -> (VarMap, BertForTokenClassification) {
    fixture_model_in(DType::F32)
}

/// The fixture model with its weights stored in `dtype`.
fn fixture_model_in(dtype: DType) -> (VarMap, BertForTokenClassification) {
    let cfg = fixture_config();
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, dtype, &Device::Cpu);
    let model = BertForTokenClassification::new(vb, &cfg).unwrap();
    weights::load(
        &varmap,
        fixture("model.safetensors"),
        LoadOptions::default(),
    )
    .unwrap();
    (varmap, model)
}

struct Batch {
    ids: Tensor,
    mask: Tensor,
    labels: Tensor,
}

fn fixture_batch(e: &HashMap<String, Tensor>) -> Batch {
    Batch {
        ids: e["input_ids"].to_dtype(DType::U32).unwrap(),
        mask: e["attention_mask"].clone(),
        labels: e["labels"].clone(),
    }
}

fn var(varmap: &VarMap, name: &str) -> Tensor {
    varmap.data().lock().unwrap()[name].as_tensor().clone()
}

fn snapshot(varmap: &VarMap) -> HashMap<String, Vec<f32>> {
    varmap
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            let t = v.as_tensor().flatten_all().unwrap();
            (k.clone(), t.to_vec1::<f32>().unwrap())
        })
        .collect()
}

#[test]
fn parity_forward_loss_and_gradients() {
    let e = expected();
    let (varmap, model) = fixture_model();
    let b = fixture_batch(&e);
    let logits = model.forward(&b.ids, &b.mask, None).unwrap();
    let want = attended(&e["logits"], &b.mask);
    assert_close("logits", &attended(&logits, &b.mask), &want);
    let loss = masked_cross_entropy(&logits, &b.labels).unwrap();
    assert_close("loss", &loss.reshape(1).unwrap(), &e["loss"]);

    let grads = model.backward(&loss).unwrap();
    let mut checked = 0;
    for (key, want) in &e {
        if let Some(name) = key.strip_prefix("grad.") {
            let got = grads.get(&var(&varmap, name)).expect(name);
            assert_close(key, got, want);
            checked += 1;
        }
    }
    assert!(checked >= 10, "only {checked} gradients in the fixture");
}

#[test]
fn parity_three_adamw_steps_with_clipping_and_schedule() {
    let e = expected();
    let (varmap, model) = fixture_model();
    let b = fixture_batch(&e);
    let mut opt = AdamW::new(&varmap, AdamWConfig::default()).unwrap();
    let sched = LinearSchedule {
        base_lr: 1e-3,
        warmup: 2,
        total: 6,
    };
    let max_norm = to_f64(&e["max_norm"])[0];
    let norms = to_f64(&e["grad_norms"]);
    let lrs = to_f64(&e["lrs"]);
    // Dropout is 0 in the fixture, so training mode must match torch's train() run.
    let mut rng = DropoutRng::new(0);
    for step in 0..3 {
        let logits = model.forward(&b.ids, &b.mask, Some(&mut rng)).unwrap();
        let loss = masked_cross_entropy(&logits, &b.labels).unwrap();
        let grads = model.backward(&loss).unwrap();
        let clip = clip_grad_norm(&grads, &opt.vars(), max_norm).unwrap();
        assert!(
            (clip.norm - norms[step]).abs() <= RTOL * norms[step],
            "step {step}: grad norm {} vs {}",
            clip.norm,
            norms[step]
        );
        assert!(clip.scale < 1.0, "the fixture must exercise clipping");
        let lr = sched.lr(step as u64);
        assert!((lr - lrs[step]).abs() < 1e-12, "step {step}: lr {lr}");
        opt.step(&grads, lr, clip.scale).unwrap();
    }
    let mut checked = 0;
    for (key, want) in &e {
        if let Some(name) = key.strip_prefix("step3.") {
            checked += 1;
            if is_key_bias(name) {
                // Its gradient is rounding noise (see is_key_bias), and Adam scales
                // noise up to ~lr per step: only the total movement is bounded.
                let (g, w) = (to_f64(&var(&varmap, name)), to_f64(want));
                let bound: f64 = lrs.iter().sum::<f64>() * 1.01;
                for (x, y) in g.iter().zip(&w) {
                    assert!((x - y).abs() <= bound, "{key}: {x} vs {y}");
                }
                continue;
            }
            assert_close(key, &var(&varmap, name), want);
        }
    }
    assert_eq!(checked, varmap.all_vars().len(), "every param is checked");
    // The updates themselves are ~1e-3 of the weights; compare them on their own scale.
    let init: HashMap<String, Tensor> =
        candle_core::safetensors::load(fixture("model.safetensors"), &Device::Cpu).unwrap();
    for (name, w0) in &init {
        if is_key_bias(name) {
            continue;
        }
        let got = (var(&varmap, name) - w0).unwrap();
        let want = (&e[&format!("step3.{name}")] - w0).unwrap();
        let (g, w) = (to_f64(&got), to_f64(&want));
        let scale = w.iter().fold(0f64, |m, x| m.max(x.abs()));
        for (i, (x, y)) in g.iter().zip(&w).enumerate() {
            assert!(
                (x - y).abs() <= 1e-3 * scale + 1e-7,
                "update of {name}[{i}]: {x} vs {y} (scale {scale})"
            );
        }
    }
}

/// Adding the key bias shifts every score of a query by the same amount, which
/// softmax cancels: its true gradient is 0 and what torch and candle compute is
/// float rounding noise, which cannot agree.
fn is_key_bias(name: &str) -> bool {
    name.ends_with("attention.self.key.bias")
}

fn small_config(dropout: f64) -> BertConfig {
    let mut cfg = fixture_config();
    cfg.hidden_dropout_prob = dropout;
    cfg.attention_probs_dropout_prob = dropout;
    cfg
}

fn random_batch() -> Batch {
    let dev = Device::Cpu;
    let ids: Vec<u32> = vec![2, 17, 33, 90, 5, 3, 2, 44, 3, 0, 0, 0];
    let mask: Vec<i64> = vec![1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0];
    let labels: Vec<i64> = vec![-100, 0, 1, 2, 3, -100, -100, 3, -100, -100, -100, -100];
    Batch {
        ids: Tensor::from_vec(ids, (2, 6), &dev).unwrap(),
        mask: Tensor::from_vec(mask, (2, 6), &dev).unwrap(),
        labels: Tensor::from_vec(labels, (2, 6), &dev).unwrap(),
    }
}

#[test]
fn every_parameter_receives_a_gradient() {
    let cfg = small_config(0.1);
    let (varmap, model) = random_model(&cfg, 7);
    let b = random_batch();
    let mut rng = DropoutRng::new(3);
    let logits = model.forward(&b.ids, &b.mask, Some(&mut rng)).unwrap();
    let loss = masked_cross_entropy(&logits, &b.labels).unwrap();
    let grads = model.backward(&loss).unwrap();
    let vars = varmap.data().lock().unwrap();
    assert_eq!(vars.len(), 5 + 16 * cfg.num_hidden_layers + 2);
    for (name, v) in vars.iter() {
        let g = grads
            .get(v.as_tensor())
            .unwrap_or_else(|| panic!("{name}: no gradient"));
        let max = g
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(max > 0.0 && max.is_finite(), "{name}: gradient max {max}");
    }
}

#[test]
fn random_init_is_seeded_and_hf_like() {
    let cfg = small_config(0.1);
    let make = |seed| {
        let vm = VarMap::new();
        BertForTokenClassification::new_random(&vm, &cfg, seed, DType::F32, &Device::Cpu).unwrap();
        snapshot(&vm)
    };
    let (a, b, c) = (make(1), make(1), make(2));
    assert_eq!(a, b);
    assert_ne!(a, c);
    let words = &a["bert.embeddings.word_embeddings.weight"];
    let h = cfg.hidden_size;
    assert!(words[cfg.pad_token_id * h..(cfg.pad_token_id + 1) * h]
        .iter()
        .all(|&x| x == 0.0));
    let std = (words.iter().map(|x| x * x).sum::<f32>() / words.len() as f32).sqrt();
    assert!(
        (std - cfg.initializer_range as f32).abs() < 0.01,
        "std {std}"
    );
    assert!(a["bert.encoder.layer.0.output.LayerNorm.weight"]
        .iter()
        .all(|&x| x == 1.0));
    assert!(a["classifier.bias"].iter().all(|&x| x == 0.0));
}

#[test]
fn dropout_only_in_training_and_reproducible() {
    let cfg = small_config(0.2);
    let (_varmap, model) = random_model(&cfg, 7);
    let b = random_batch();
    let run = |rng: Option<&mut DropoutRng>| {
        let t = model.forward(&b.ids, &b.mask, rng).unwrap();
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    };
    let eval1 = run(None);
    let eval2 = run(None);
    assert_eq!(eval1, eval2);
    let train1 = run(Some(&mut DropoutRng::new(1)));
    let train1_again = run(Some(&mut DropoutRng::new(1)));
    let train2 = run(Some(&mut DropoutRng::new(2)));
    assert_eq!(train1, train1_again);
    assert_ne!(train1, train2);
    assert_ne!(train1, eval1);
    // One rng advanced through two passes gives two different masks.
    let mut rng = DropoutRng::new(1);
    let first = run(Some(&mut rng));
    let second = run(Some(&mut rng));
    assert_ne!(first, second);
}

/// Logits `[2, 2, 2]` and labels with two positions ignored, for the losses.
fn loss_fixture() -> (Device, Tensor, Tensor) {
    let dev = Device::Cpu;
    let logits = Tensor::new(
        &[[[2f32, 0.0], [0.0, 0.0]], [[5.0, -5.0], [1.0, 3.0]]],
        &dev,
    )
    .unwrap();
    let labels = Tensor::new(&[[0i64, -100], [-100, 1]], &dev).unwrap();
    (dev, logits, labels)
}

#[test]
fn masked_cross_entropy_ignores_minus_100() {
    let (dev, logits, labels) = loss_fixture();
    let loss = masked_cross_entropy(&logits, &labels)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let l1 = (1.0f32 + (-2f32).exp()).ln();
    let l2 = (1.0f32 + (-2f32).exp()).ln();
    assert!((loss - (l1 + l2) / 2.0).abs() < 1e-6, "{loss}");
    let all_ignored = Tensor::new(&[[-100i64, -100], [-100, -100]], &dev).unwrap();
    assert!(masked_cross_entropy(&logits, &all_ignored).is_err());
}

#[test]
fn soft_cross_entropy_weighs_log_probabilities_by_the_targets() {
    let (dev, logits, labels) = loss_fixture();
    let loss = |targets: &Tensor| {
        masked_soft_cross_entropy(&logits, targets, &labels)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    // One-hot targets at the gold labels: the hard cross-entropy.
    let one_hot =
        Tensor::new(&[[[1f32, 0.0], [0.5, 0.5]], [[0.5, 0.5], [0.0, 1.0]]], &dev).unwrap();
    let hard = masked_cross_entropy(&logits, &labels)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!((loss(&one_hot) - hard).abs() < 1e-6);
    // Row 1 with targets (0.3, 0.7) over log-softmax (2, 0); row 4 one-hot.
    let soft = Tensor::new(
        &[[[0.3f32, 0.7], [0.5, 0.5]], [[0.5, 0.5], [0.0, 1.0]]],
        &dev,
    )
    .unwrap();
    let z = (1.0f32 + (-2f32).exp()).ln();
    let row1 = 0.3 * z + 0.7 * (2.0 + z);
    assert!(
        (loss(&soft) - (row1 + z) / 2.0).abs() < 1e-6,
        "{}",
        loss(&soft)
    );
}

fn fresh_fixture_shaped() -> (VarMap, BertForTokenClassification) {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let model = BertForTokenClassification::new(vb, &fixture_config()).unwrap();
    (varmap, model)
}

/// The fixture weights renamed the way old TF-converted / bare-BertModel
/// checkpoints name them, plus tensors that belong to other heads.
fn aliased_fixture_tensors() -> HashMap<String, Tensor> {
    let init = candle_core::safetensors::load(fixture("model.safetensors"), &Device::Cpu).unwrap();
    let mut out = HashMap::new();
    for (name, t) in init {
        let mut n = name.strip_prefix("bert.").unwrap_or(&name).to_string();
        if let Some(stem) = n.strip_suffix("LayerNorm.weight") {
            n = format!("{stem}LayerNorm.gamma");
        } else if let Some(stem) = n.strip_suffix("LayerNorm.bias") {
            n = format!("{stem}LayerNorm.beta");
        }
        out.insert(n, t);
    }
    let dev = Device::Cpu;
    out.insert(
        "cls.predictions.bias".into(),
        Tensor::zeros(128, DType::F32, &dev).unwrap(),
    );
    out.insert(
        "pooler.dense.weight".into(),
        Tensor::zeros((32, 32), DType::F32, &dev).unwrap(),
    );
    out.insert(
        "embeddings.position_ids".into(),
        Tensor::arange(0i64, 64, &dev).unwrap(),
    );
    out
}

#[test]
fn loads_aliased_checkpoint_to_same_logits() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("aliased.safetensors");
    candle_core::safetensors::save(&aliased_fixture_tensors(), &path).unwrap();
    let (varmap, model) = fresh_fixture_shaped();
    let report = weights::load(&varmap, &path, LoadOptions::default()).unwrap();
    assert_eq!(report.loaded, varmap.all_vars().len());
    assert_eq!(report.ignored.len(), 3, "{:?}", report.ignored);
    let e = expected();
    let b = fixture_batch(&e);
    let logits = model.forward(&b.ids, &b.mask, None).unwrap();
    assert_close(
        "aliased logits",
        &attended(&logits, &b.mask),
        &attended(&e["logits"], &b.mask),
    );
}

#[test]
fn missing_and_misshaped_tensors_are_listed_in_one_error() {
    let mut t = aliased_fixture_tensors();
    t.remove("encoder.layer.1.attention.self.key.bias");
    t.insert(
        "encoder.layer.0.intermediate.dense.weight".into(),
        Tensor::zeros((64, 31), DType::F32, &Device::Cpu).unwrap(),
    );
    let tensors: Vec<(String, Tensor)> = t.into_iter().collect();
    let (varmap, _) = fresh_fixture_shaped();
    let err = weights::load_tensors(&varmap, tensors, LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("bert.encoder.layer.1.attention.self.key.bias: missing"),
        "{err}"
    );
    assert!(
        err.contains("bert.encoder.layer.0.intermediate.dense.weight: expected shape [64, 32], found [64, 31]"),
        "{err}"
    );
    assert!(err.contains("2 problem"), "{err}");
}

#[test]
fn classifier_head_may_be_missing_only_when_allowed() {
    let mut t = aliased_fixture_tensors();
    t.remove("classifier.weight");
    t.remove("classifier.bias");
    let tensors: Vec<(String, Tensor)> = t.into_iter().collect();
    let (varmap, _) = fresh_fixture_shaped();
    let err = weights::load_tensors(&varmap, tensors.clone(), LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("classifier.weight: missing"), "{err}");
    let report = weights::load_tensors(
        &varmap,
        tensors,
        LoadOptions {
            allow_missing_head: true,
        },
    )
    .unwrap();
    assert!(report.head_missing);
}

#[test]
fn save_then_load_round_trips() {
    let (varmap, _) = fixture_model();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    weights::save(&varmap, &path, DType::F32).unwrap();
    let (again, _) = fresh_fixture_shaped();
    weights::load(&again, &path, LoadOptions::default()).unwrap();
    assert_eq!(snapshot(&varmap), snapshot(&again));
    // Only the final file remains: the temporary one was renamed.
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(names.len(), 1);

    let half = dir.path().join("half.safetensors");
    weights::save(&varmap, &half, DType::F16).unwrap();
    let raw = candle_core::safetensors::load(&half, &Device::Cpu).unwrap();
    assert!(raw.values().all(|t| t.dtype() == DType::F16));
    let (h, model) = fresh_fixture_shaped();
    weights::load(&h, &half, LoadOptions::default()).unwrap();
    let e = expected();
    let b = fixture_batch(&e);
    let logits = model.forward(&b.ids, &b.mask, None).unwrap();
    let diff = (attended(&logits, &b.mask) - attended(&e["logits"], &b.mask))
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(diff < 1e-2, "f16 checkpoint logits differ by {diff}");

    // A folder for `scripts/make_parity_fixture.py --check-hf DIR` when asked for.
    let export = std::env::var_os("CWS_EXPORT_PARITY_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| dir.path().join("export"));
    weights::save_pretrained(&varmap, &fixture_config(), &export, DType::F32).unwrap();
    let cfg = BertConfig::from_file(export.join("config.json")).unwrap();
    assert_eq!(cfg.num_labels(), 4);
}

fn train_steps(model: &BertForTokenClassification, opt: &mut AdamW, steps: std::ops::Range<u64>) {
    let b = random_batch();
    let sched = LinearSchedule {
        base_lr: 1e-2,
        warmup: 1,
        total: 10,
    };
    for step in steps {
        let mut rng = DropoutRng::new(100 + step);
        let logits = model.forward(&b.ids, &b.mask, Some(&mut rng)).unwrap();
        let loss = masked_cross_entropy(&logits, &b.labels).unwrap();
        let grads = model.backward(&loss).unwrap();
        let clip = clip_grad_norm(&grads, &opt.vars(), 1.0).unwrap();
        opt.step(&grads, sched.lr(step), clip.scale).unwrap();
    }
}

#[test]
fn optimizer_state_round_trip_resumes_identically() {
    let cfg = small_config(0.1);
    let dir = tempfile::tempdir().unwrap();
    let (ckpt, state) = (
        dir.path().join("model.safetensors"),
        dir.path().join("optimizer.safetensors"),
    );

    let (varmap, model) = random_model(&cfg, 5);
    let mut opt = AdamW::new(&varmap, AdamWConfig::default()).unwrap();
    train_steps(&model, &mut opt, 0..2);
    weights::save(&varmap, &ckpt, DType::F32).unwrap();
    opt.save_state(&state).unwrap();
    train_steps(&model, &mut opt, 2..4);

    let resumed = VarMap::new();
    let model2 =
        BertForTokenClassification::new_random(&resumed, &cfg, 99, DType::F32, &Device::Cpu)
            .unwrap();
    weights::load(&resumed, &ckpt, LoadOptions::default()).unwrap();
    let mut opt2 = AdamW::new(&resumed, AdamWConfig::default()).unwrap();
    opt2.load_state(&state).unwrap();
    assert_eq!(opt2.step_count(), 2);
    train_steps(&model2, &mut opt2, 2..4);
    assert_eq!(snapshot(&varmap), snapshot(&resumed));
}

#[test]
fn config_tolerates_real_hf_keys() {
    let cfg = BertConfig::from_json_str(
        r#"{"architectures": ["BertForMaskedLM"], "attention_probs_dropout_prob": 0.1,
        "directionality": "bidi", "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
        "hidden_size": 768, "initializer_range": 0.02, "intermediate_size": 3072,
        "layer_norm_eps": 1e-12, "max_position_embeddings": 512, "model_type": "bert",
        "num_attention_heads": 12, "num_hidden_layers": 12, "pad_token_id": 0,
        "pooler_fc_size": 768, "pooler_num_attention_heads": 12, "pooler_num_fc_layers": 3,
        "pooler_size_per_head": 128, "pooler_type": "first_token_transform",
        "type_vocab_size": 2, "vocab_size": 21128}"#,
    )
    .unwrap();
    assert_eq!(cfg.num_labels(), 2);
    assert_eq!(cfg.classifier_dropout, None);
    let mut cfg = cfg;
    cfg.set_labels(&cws::bies::LABEL_NAMES);
    assert_eq!(cfg.num_labels(), 4);
    let back = BertConfig::from_json_str(&cfg.to_json_string().unwrap()).unwrap();
    assert_eq!(back.num_labels(), 4);
    assert_eq!(back.extra["pooler_type"], "first_token_transform");
    assert_eq!(back.extra["architectures"][0], "BertForTokenClassification");
    assert_eq!(fixture_config().num_labels(), 4);
}

/// The `cws_*` keys are parsed into typed extensions (and only there), a bad
/// value is an error naming the key, and a model's config.json is written
/// back byte for byte.
#[test]
fn config_extensions_are_typed_and_round_trip() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/pku/config.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let cfg = BertConfig::from_file(&path).unwrap();
    assert_eq!(cfg.cws.lexicon_features, 10);
    assert_eq!(cfg.cws.bigram_buckets, 20000);
    assert!(cfg.cws.bigram_seen);
    let raw: serde_json::Value = serde_json::from_str(&text).unwrap();
    let want = raw["cws_boundary_bias"].as_f64().map(|b| b as f32);
    assert_eq!(cfg.cws.boundary_bias, want);
    assert!(cfg.cws.boundary_bias.is_some());
    assert_eq!(cfg.cws.general_lexicon_features, 10);
    assert_eq!(cfg.cws.standard, Some(cws::model::Standard::Pku));
    assert!(cfg.extra.keys().all(|k| !k.starts_with("cws_")));
    assert_eq!(cfg.to_json_string().unwrap(), text);
    assert!(!cfg.cws.general_frequent);

    // The MSR model marks the general list's frequent entries apart: ten
    // more columns, and a key of its own.
    let msr_path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/msr/config.json");
    let msr_text = std::fs::read_to_string(&msr_path).unwrap();
    let msr = BertConfig::from_file(&msr_path).unwrap();
    assert!(msr.cws.general_frequent);
    assert_eq!(msr.cws.general_lexicon_features, 20);
    assert_eq!(msr.to_json_string().unwrap(), msr_text);

    // A joint model's keys, typed and written back in their sorted places.
    let bias_line = text
        .lines()
        .find(|l| l.trim_start().starts_with("\"cws_boundary_bias\""))
        .unwrap();
    let joint = text
        .replacen(
            bias_line,
            &format!("{bias_line}\n  \"cws_boundary_biases\": [\n    1.0,\n    1.5\n  ],"),
            1,
        )
        .replacen(
            "\"cws_standard\": \"pku\"",
            "\"cws_standard_input\": \"token\",\n  \"cws_standards\": [\n    \"pku\",\n    \"msr\"\n  ]",
            1,
        );
    let cfg = BertConfig::from_json_str(&joint).unwrap();
    use cws::model::{Standard, StandardInput};
    assert_eq!(cfg.cws.standards, [Standard::Pku, Standard::Msr]);
    assert_eq!(cfg.cws.boundary_biases, [1.0, 1.5]);
    assert_eq!(cfg.cws.standard_input, StandardInput::Token);
    assert_eq!(cfg.to_json_string().unwrap(), joint);

    let bad = text.replace(
        "\"cws_bigram_buckets\": 20000",
        "\"cws_bigram_buckets\": \"many\"",
    );
    let err = format!("{:#}", BertConfig::from_json_str(&bad).unwrap_err());
    assert!(err.contains("many"), "{err}");
}

#[test]
fn fused_ops_match_candle_composites_with_gradients() {
    let dev = Device::Cpu;
    let x = candle_core::Var::from_tensor(&(Tensor::randn(0f32, 3.0, (3, 5, 17), &dev).unwrap()))
        .unwrap();
    let w = Tensor::randn(0f32, 1.0, (3, 5, 17), &dev).unwrap();
    type Op = fn(&Tensor) -> candle_core::Result<Tensor>;
    let reference_softmax: Op = |x| candle_nn::ops::softmax(x, candle_core::D::Minus1);
    let reference_gelu: Op = |x| x.gelu_erf();
    let cases: [(&str, Op, Op); 2] = [
        ("softmax", cws::fused::softmax_last, reference_softmax),
        ("gelu", cws::fused::gelu_erf, reference_gelu),
    ];
    for (what, fused, reference) in cases {
        let y1 = fused(x.as_tensor()).unwrap();
        let y2 = reference(x.as_tensor()).unwrap();
        assert_close(what, &y1, &y2);
        let g1 = (y1 * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (y2 * &w).unwrap().sum_all().unwrap().backward().unwrap();
        assert_close(
            &format!("{what} grad"),
            g1.get(x.as_tensor()).unwrap(),
            g2.get(x.as_tensor()).unwrap(),
        );
    }

    let lw = candle_core::Var::randn(1f32, 0.3, 17, &dev).unwrap();
    let lb = candle_core::Var::randn(0f32, 0.3, 17, &dev).unwrap();
    let ln = |fused: bool| {
        let (xs, ws, bs) = (x.as_tensor(), lw.as_tensor(), lb.as_tensor());
        let y = if fused {
            cws::fused::layer_norm(xs, ws, bs, 1e-12).unwrap()
        } else {
            candle_nn::ops::layer_norm_slow(xs, ws, bs, 1e-12).unwrap()
        };
        // The upstream gradient `w` is random so every output element matters.
        let g = (&y * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let grads: Vec<Tensor> = [xs, ws, bs]
            .iter()
            .map(|t| g.get(t).unwrap().clone())
            .collect();
        (y, grads)
    };
    let (y1, g1) = ln(true);
    let (y2, g2) = ln(false);
    assert_close("layer_norm", &y1, &y2);
    for (i, (a, b)) in g1.iter().zip(&g2).enumerate() {
        assert_close(&format!("layer_norm grad {i}"), a, b);
    }

    // Dropout (+ residual) with the mask inside the op: the same bits as
    // candle's `x * mask (+ r)`, forward and backward, for both inputs.
    let r = candle_core::Var::randn(0f32, 1.0, (3, 5, 17), &dev).unwrap();
    let mask: Vec<f32> = (0..x.elem_count())
        .map(|i| if i % 3 == 0 { 0.0 } else { 1.5 })
        .collect();
    let mask_t = Tensor::from_vec(mask.clone(), x.shape(), &dev).unwrap();
    for with_residual in [false, true] {
        let residual = with_residual.then(|| r.as_tensor());
        let y1 = cws::fused::dropout_add(x.as_tensor(), mask.clone(), residual).unwrap();
        let d = x.as_tensor().mul(&mask_t).unwrap();
        let y2 = match residual {
            Some(r) => (d + r).unwrap(),
            None => d,
        };
        assert_eq!(to_f64(&y1), to_f64(&y2), "dropout values");
        let g1 = (y1 * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (y2 * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let inputs = [Some(x.as_tensor()), residual];
        for t in inputs.into_iter().flatten() {
            assert_eq!(
                to_f64(g1.get(t).unwrap()),
                to_f64(g2.get(t).unwrap()),
                "dropout gradients"
            );
        }
    }
}

#[test]
fn half_precision_weights_train_and_track_f32() {
    let e = expected();
    let b = fixture_batch(&e);
    for dtype in [DType::BF16, DType::F16] {
        let (varmap, model) = fixture_model_in(dtype);
        let logits = model.forward(&b.ids, &b.mask, None).unwrap();
        assert_eq!(logits.dtype(), dtype);
        let diff = (logits.to_dtype(DType::F32).unwrap() - &e["logits"])
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 0.1, "{dtype:?} logits differ by {diff}");
        let loss = masked_cross_entropy(&logits, &b.labels).unwrap();
        let grads = model.backward(&loss).unwrap();
        let mut opt = AdamW::new(&varmap, AdamWConfig::default()).unwrap();
        let clip = clip_grad_norm(&grads, &opt.vars(), 1.0).unwrap();
        assert!(clip.norm.is_finite() && clip.norm > 0.0);
        opt.step(&grads, 1e-3, clip.scale).unwrap();
        assert_eq!(var(&varmap, "classifier.weight").dtype(), dtype);
    }
}

/// Mixed precision: bf16 activations over the f32 fixture weights stay close
/// to the f32 logits (bf16 keeps ~3 significant digits), and every f32 master
/// weight still receives an f32 gradient through the casts.
#[test]
fn bf16_compute_over_f32_weights() {
    let e = expected();
    let (varmap, mut model) = fixture_model();
    let batch = fixture_batch(&e);
    model.set_compute_dtype(DType::BF16);
    let logits = model.forward(&batch.ids, &batch.mask, None).unwrap();
    assert_eq!(logits.dtype(), DType::BF16);
    let got = to_f64(&logits);
    let want = to_f64(&e["logits"]);
    let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
    let worst = got
        .iter()
        .zip(&want)
        .fold(0f64, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        worst > 0.0 && worst < 0.05 * scale,
        "bf16 logits off by {worst} (scale {scale})"
    );
    let loss = masked_cross_entropy(&logits, &batch.labels).unwrap();
    let grads = model.backward(&loss).unwrap();
    for (name, v) in varmap.data().lock().unwrap().iter() {
        let g = grads
            .get(v.as_tensor())
            .unwrap_or_else(|| panic!("{name} has no gradient"));
        assert_eq!(g.dtype(), DType::F32, "{name}");
    }
}

/// Our BLAS matmul/linear ops (candle's matmul where no BLAS is installed)
/// against candle's matmul on contiguous copies: values and gradients, for
/// strided head views, transposes, and products big enough to be split
/// across threads by rows and by columns.
#[test]
fn blas_products_match_candle_with_gradients() {
    let dev = Device::Cpu;
    eprintln!("blas backend: {:?}", cws::blas::backend());
    let var = |dims: &[usize]| {
        candle_core::Var::from_tensor(&Tensor::randn(0f32, 1.0, dims, &dev).unwrap()).unwrap()
    };
    let grads_of = |y: &Tensor, up: &Tensor, xs: &[&Tensor]| -> Vec<Tensor> {
        let g = (y * up).unwrap().sum_all().unwrap().backward().unwrap();
        xs.iter()
            .enumerate()
            .map(|(i, x)| {
                g.get(x)
                    .unwrap_or_else(|| panic!("no grad for input {i} of {:?}", y.dims()))
                    .clone()
            })
            .collect()
    };
    // Attention-shaped: q/k as [b, nh, t, hd] views of [b, t, nh, hd].
    let (qs, ks) = (var(&[2, 5, 3, 4]), var(&[2, 5, 3, 4]));
    let q = qs.as_tensor().transpose(1, 2).unwrap();
    let k = ks.as_tensor().transpose(1, 2).unwrap();
    let kt = k.t().unwrap();
    let y1 = cws::blas::matmul_scaled(&q, &kt, 0.5).unwrap();
    let y2 = (q
        .contiguous()
        .unwrap()
        .matmul(&kt.contiguous().unwrap())
        .unwrap()
        * 0.5)
        .unwrap();
    assert_close("scores", &y1, &y2);
    let up = Tensor::randn(0f32, 1.0, y1.dims(), &dev).unwrap();
    let (g1, g2) = (
        grads_of(&y1, &up, &[qs.as_tensor(), ks.as_tensor()]),
        grads_of(&y2, &up, &[qs.as_tensor(), ks.as_tensor()]),
    );
    for (i, (a, b)) in g1.iter().zip(&g2).enumerate() {
        assert_close(&format!("scores grad {i}"), a, b);
    }

    // Linear layers, small and split by rows (n > out) and by columns (out > n),
    // with x also given as a transposed view.
    for (n, din, dout, transposed) in [
        (7, 6, 5, false),
        (7, 6, 5, true),
        (300, 70, 64, false),
        (40, 300, 300, true),
    ] {
        let xv = if transposed {
            var(&[din, n])
        } else {
            var(&[n, din])
        };
        let x = if transposed {
            xv.as_tensor().t().unwrap()
        } else {
            xv.as_tensor().clone()
        };
        let (w, b) = (var(&[dout, din]), var(&[dout]));
        let y1 = cws::blas::linear(&x, w.as_tensor(), b.as_tensor()).unwrap();
        let y2 = x
            .contiguous()
            .unwrap()
            .matmul(&w.as_tensor().t().unwrap())
            .unwrap()
            .broadcast_add(b.as_tensor())
            .unwrap();
        let what = format!("linear {n}x{din}->{dout} t={transposed}");
        assert_close(&what, &y1, &y2);
        let up = Tensor::randn(0f32, 1.0, (n, dout), &dev).unwrap();
        let xs = [xv.as_tensor(), w.as_tensor(), b.as_tensor()];
        let (g1, g2) = (grads_of(&y1, &up, &xs), grads_of(&y2, &up, &xs));
        for (i, (a, b)) in g1.iter().zip(&g2).enumerate() {
            assert_close(&format!("{what} grad {i}"), a, b);
        }
    }

    // The fused attention-mask softmax against add-then-softmax.
    let s = var(&[2, 3, 4, 6]);
    let mask = Tensor::new(
        &[[1f32, 1., 1., 1., 0., 0.], [1., 1., 1., 1., 1., 1.]],
        &dev,
    )
    .unwrap();
    let bias = ((1.0 - mask).unwrap() * -1e4)
        .unwrap()
        .reshape((2, 1, 1, 6))
        .unwrap();
    let p1 = cws::fused::masked_softmax_last(s.as_tensor(), &bias).unwrap();
    let p2 = candle_nn::ops::softmax(
        &s.as_tensor().broadcast_add(&bias).unwrap(),
        candle_core::D::Minus1,
    )
    .unwrap();
    assert_close("masked softmax", &p1, &p2);
    let up = Tensor::randn(0f32, 1.0, p1.dims(), &dev).unwrap();
    let (g1, g2) = (
        grads_of(&p1, &up, &[s.as_tensor()]),
        grads_of(&p2, &up, &[s.as_tensor()]),
    );
    assert_close("masked softmax grad", &g1[0], &g2[0]);
}

/// The inference path (`infer`: packed sequences, no autograd) against the
/// PyTorch logits at every attended position; padding positions hold 0.
#[test]
fn parity_inference_path() {
    let e = expected();
    let (_, model) = fixture_model();
    let b = fixture_batch(&e);
    let got = model
        .infer(&b.ids, &b.mask, &cws::model::BatchFeatures::none())
        .unwrap();
    let mask = to_f64(&b.mask);
    let labels = got.dim(2).unwrap();
    let pick = |t: &Tensor, attended: bool| -> Tensor {
        let v: Vec<f32> = to_f64(t)
            .chunks(labels)
            .zip(&mask)
            .filter(|(_, &m)| (m != 0.0) == attended)
            .flat_map(|(row, _)| row.iter().map(|&x| x as f32))
            .collect();
        let n = v.len();
        Tensor::from_vec(v, n, &Device::Cpu).unwrap()
    };
    assert_close(
        "inference logits",
        &pick(&got, true),
        &pick(&e["logits"], true),
    );
    assert!(to_f64(&pick(&got, false)).iter().all(|&x| x == 0.0));
}

/// A randomly initialised f32 CPU model of `cfg` (initial weights drawn with
/// `seed`), and the variables it trains.
fn random_model(cfg: &BertConfig, seed: u64) -> (VarMap, BertForTokenClassification) {
    let varmap = VarMap::new();
    let model =
        BertForTokenClassification::new_random(&varmap, cfg, seed, DType::F32, &Device::Cpu)
            .unwrap();
    (varmap, model)
}

/// The fixture's shape with every cws extension (lexicon, general word
/// list, bigrams) and `dropout` everywhere.
fn feature_config(dropout: f64) -> BertConfig {
    let mut cfg = small_config(dropout);
    cfg.cws.lexicon_features = 10;
    cfg.cws.general_lexicon_features = 10;
    cfg.cws.bigram_buckets = 50;
    cfg
}

struct FeatureBatch {
    ids: Tensor,
    mask: Tensor,
    features: cws::model::BatchFeatures,
    labels: Tensor,
}

/// `b` random sequences of 1..=`t` tokens padded to `t` (more than one
/// inference part at 24 x 40), random feature bits and bigrams, and labels
/// on every attended token but the first.
fn feature_batch(cfg: &BertConfig, b: usize, t: usize, seed: u64) -> FeatureBatch {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let lens: Vec<usize> = (0..b).map(|_| rng.random_range(1..=t)).collect();
    let attended = |i: usize| i % t < lens[i / t];
    let ids: Vec<u32> = (0..b * t)
        .map(|i| match attended(i) {
            true => rng.random_range(1..cfg.vocab_size as u32),
            false => 0,
        })
        .collect();
    let labels: Vec<i64> = (0..b * t)
        .map(|i| match attended(i) && i % t > 0 {
            true => rng.random_range(0..cfg.num_labels() as i64),
            false => -100,
        })
        .collect();
    let mask: Vec<f32> = (0..b * t)
        .map(|i| f32::from(u8::from(attended(i))))
        .collect();
    let mut bits = |k: usize| -> Tensor {
        let v: Vec<f32> = (0..b * t * k)
            .map(|_| f32::from(u8::from(rng.random_bool(0.3))))
            .collect();
        Tensor::from_vec(v, (b, t, k), &Device::Cpu).unwrap()
    };
    let (lexicon, general) = (
        bits(cfg.cws.lexicon_features),
        bits(cfg.cws.general_lexicon_features),
    );
    let bigrams = (0..b * t * 2)
        .map(|_| rng.random_range(0..cfg.cws.bigram_buckets as u32))
        .collect();
    FeatureBatch {
        ids: Tensor::from_vec(ids, (b, t), &Device::Cpu).unwrap(),
        mask: Tensor::from_vec(mask, (b, t), &Device::Cpu).unwrap(),
        features: cws::model::BatchFeatures {
            lexicon: Some(lexicon),
            general: Some(general),
            bigrams: Some(Tensor::from_vec(bigrams, (b, t, 2), &Device::Cpu).unwrap()),
        },
        labels: Tensor::from_vec(labels, (b, t), &Device::Cpu).unwrap(),
    }
}

/// The training encoder (`model::encoder`: packed rows, hand-written
/// backward) against candle's ops and autograd on a batch with padding and
/// every feature: the same loss and attended logits, every parameter's
/// gradient to rounding, and the same bits on 1 and 3 threads.
#[test]
fn training_encoder_matches_the_candle_graph_on_any_threads() {
    let (cfg, b, t) = (feature_config(0.0), 24, 40);
    let (varmap, model) = random_model(&cfg, 4);
    let batch = feature_batch(&cfg, b, t, 6);
    let run = |m: &BertForTokenClassification| {
        let logits = m
            .forward_with(&batch.ids, &batch.mask, &batch.features, None)
            .unwrap();
        let loss = masked_cross_entropy(&logits, &batch.labels).unwrap();
        let grads = m.backward(&loss).unwrap();
        let grads: HashMap<String, Tensor> = varmap
            .data()
            .lock()
            .unwrap()
            .iter()
            .map(|(name, v)| {
                let g = grads
                    .get(v.as_tensor())
                    .unwrap_or_else(|| panic!("{name}: no gradient"));
                (name.clone(), g.clone())
            })
            .collect();
        (attended(&logits, &batch.mask), loss, grads)
    };
    let mut graph = model.clone();
    graph.set_graph_encoder(true);
    let (want_logits, want_loss, want_grads) = run(&graph);
    let (logits, loss, grads) = cws::fused::under_threads(1, || run(&model));
    assert_close("logits", &logits, &want_logits);
    assert_close(
        "loss",
        &loss.reshape(1).unwrap(),
        &want_loss.reshape(1).unwrap(),
    );
    assert_eq!(grads.len(), 5 + 3 + 16 * cfg.num_hidden_layers + 2);
    for (name, want) in &want_grads {
        if !is_key_bias(name) {
            assert_close(name, &grads[name], want);
        }
    }
    let (_, _, again) = cws::fused::under_threads(3, || run(&model));
    for (name, g) in &grads {
        assert_eq!(to_f64(g), to_f64(&again[name]), "{name}: 1 vs 3 threads");
    }
}

/// With dropout, the training encoder's backward draws the forward's masks
/// again: its gradients agree with central differences of the loss under
/// the same masks (a mask drawn differently in backward is off by tens of
/// percent at p = 0.3).
#[test]
fn training_encoder_dropout_gradients_match_finite_differences() {
    let (cfg, b, t) = (feature_config(0.3), 8, 20);
    let (varmap, model) = random_model(&cfg, 8);
    let batch = feature_batch(&cfg, b, t, 9);
    let loss = |dropout: bool| -> Tensor {
        let mut rng = DropoutRng::new(11);
        let logits = model
            .forward_with(
                &batch.ids,
                &batch.mask,
                &batch.features,
                dropout.then_some(&mut rng),
            )
            .unwrap();
        masked_cross_entropy(&logits, &batch.labels).unwrap()
    };
    let value = |t: Tensor| f64::from(t.to_scalar::<f32>().unwrap());
    let l = loss(true);
    assert_ne!(value(l.clone()), value(loss(false)), "dropout is active");
    let grads = model.backward(&l).unwrap();
    for name in [
        "bert.encoder.layer.0.attention.self.query.weight",
        "bert.encoder.layer.0.attention.self.value.bias",
        "bert.encoder.layer.0.attention.output.LayerNorm.weight",
        "bert.encoder.layer.1.intermediate.dense.weight",
        "bert.encoder.layer.1.output.dense.weight",
        "bert.embeddings.word_embeddings.weight",
    ] {
        let v = varmap.data().lock().unwrap()[name].clone();
        let w0 = v.as_tensor().copy().unwrap();
        let g = grads.get(v.as_tensor()).unwrap();
        let norm = to_f64(g).iter().map(|x| x * x).sum::<f64>().sqrt();
        let step = (g * (1e-2 / norm)).unwrap();
        v.set(&(&w0 + &step).unwrap()).unwrap();
        let up = value(loss(true));
        v.set(&(&w0 - &step).unwrap()).unwrap();
        let down = value(loss(true));
        v.set(&w0).unwrap();
        // The derivative along g / |g| is |g|.
        let numeric = (up - down) / 2e-2;
        assert!(
            (numeric - norm).abs() <= 0.02 * norm,
            "{name}: |g| = {norm}, finite differences {numeric}"
        );
    }
}

/// A model with every cws extension (lexicon, general word list, bigrams):
/// the inference path gives the general forward pass's logits at attended
/// positions, the same bits on 1 and 3 threads, and a mask that is not one
/// run of 1s per sequence still gets the general path's answer.
#[test]
fn inference_path_matches_forward_with_features_on_any_threads() {
    let (cfg, b, t) = (feature_config(0.0), 24, 40);
    let (_varmap, model) = random_model(&cfg, 3);
    let FeatureBatch {
        ids,
        mask: mask_t,
        features,
        ..
    } = feature_batch(&cfg, b, t, 5);
    let mask: Vec<f32> = mask_t.flatten_all().unwrap().to_vec1().unwrap();
    let mut graph = model.clone();
    graph.set_graph_encoder(true);
    let general = graph.forward_with(&ids, &mask_t, &features, None).unwrap();
    let on = |threads: usize| -> Vec<f32> {
        cws::fused::under_threads(threads, || model.infer(&ids, &mask_t, &features).unwrap())
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    };
    let (one, three) = (on(1), on(3));
    assert_eq!(one, three, "the logits depend on the number of threads");
    let want = to_f64(&general);
    let scale = want.iter().fold(0f64, |m, x| m.max(x.abs()));
    let labels = want.len() / (b * t);
    for (i, (&got, &want)) in one.iter().zip(&want).enumerate() {
        if mask[i / labels] != 0.0 {
            assert!(
                (f64::from(got) - want).abs() <= 1e-5 * scale,
                "logit {i}: {got} vs {want}"
            );
        } else {
            assert_eq!(got, 0.0, "padding logit {i}");
        }
    }
    // A hole in a mask: only the general path handles it.
    let mut holed = mask.clone();
    holed[2] = 0.0;
    let holed = Tensor::from_vec(holed, (b, t), &Device::Cpu).unwrap();
    let a = model.infer(&ids, &holed, &features).unwrap();
    let g = model.forward_with(&ids, &holed, &features, None).unwrap();
    assert_eq!(to_f64(&a), to_f64(&g));
}
