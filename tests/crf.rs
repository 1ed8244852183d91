//! The CRF layer against the `pytorch-crf` package: log-likelihood, its
//! gradients with respect to emissions and the three score tensors, and the
//! decoded paths, for random emissions with padding masks (fixture from
//! `scripts/make_crf_fixture.py`), to 1e-5.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use cws::bies::{viterbi_with, Transitions, NUM_LABELS};
use cws::crf::Crf;

const TOL: f64 = 1e-5;

fn fixture() -> HashMap<String, Tensor> {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/crf/expected.safetensors");
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

use crate::model::to_f64 as values;

fn assert_close(what: &str, actual: &Tensor, expected: &Tensor) {
    assert_eq!(actual.dims(), expected.dims(), "{what}: shape");
    for (i, (x, y)) in values(actual).iter().zip(values(expected)).enumerate() {
        assert!(
            (x - y).abs() <= TOL * (1.0 + y.abs()),
            "{what}[{i}]: {x} vs pytorch-crf {y}"
        );
    }
}

#[test]
fn crf_matches_pytorch_crf() {
    let f = fixture();
    let var = |name: &str| Var::from_tensor(&f[name]).unwrap();
    let (transitions, start, end) = (
        var("transitions"),
        var("start_transitions"),
        var("end_transitions"),
    );
    let emissions = var("emissions");
    let crf = Crf {
        transitions: transitions.as_tensor().clone(),
        start: start.as_tensor().clone(),
        end: end.as_tensor().clone(),
    };
    let tags = f["tags"].to_dtype(DType::U32).unwrap();
    let mask = &f["mask"];
    let llh = crf
        .log_likelihood(emissions.as_tensor(), &tags, mask)
        .unwrap();
    assert_close("llh", &llh, &f["llh"]);
    let total = llh.sum_all().unwrap();
    assert_close("llh sum", &total.reshape(1).unwrap(), &f["llh_sum"]);
    let units = values(mask).iter().sum::<f64>();
    assert_close(
        "llh token_mean",
        &(total.clone() / units).unwrap().reshape(1).unwrap(),
        &f["llh_token_mean"],
    );

    let grads = total.neg().unwrap().backward().unwrap();
    for (name, v) in [
        ("grad_emissions", &emissions),
        ("grad_transitions", &transitions),
        ("grad_start_transitions", &start),
        ("grad_end_transitions", &end),
    ] {
        assert_close(name, grads.get(v.as_tensor()).unwrap(), &f[name]);
    }

    // The training loss is -token_mean over labelled positions, read from
    // -100-padded labels laid out as windows are ([CLS] first).
    let (b, t) = tags.dims2().unwrap();
    let rows: Vec<Vec<u32>> = tags.to_vec2().unwrap();
    let mask_rows: Vec<Vec<u8>> = mask.to_vec2().unwrap();
    let mut labels = Vec::new();
    for (row, m) in rows.iter().zip(&mask_rows) {
        labels.push(-100i64);
        labels.extend(
            row.iter()
                .zip(m)
                .map(|(&l, &k)| if k == 1 { l as i64 } else { -100 }),
        );
    }
    let labels = Tensor::from_vec(labels, (b, t + 1), &Device::Cpu).unwrap();
    let padded = Tensor::cat(
        &[
            Tensor::zeros((b, 1, NUM_LABELS), DType::F32, &Device::Cpu).unwrap(),
            emissions.as_tensor().clone(),
        ],
        1,
    )
    .unwrap();
    assert_close(
        "loss",
        &crf.loss(&padded, &labels)
            .unwrap()
            .neg()
            .unwrap()
            .reshape(1)
            .unwrap(),
        &f["llh_token_mean"],
    );

    // Decoding: the same best paths (pytorch-crf knows no BIES constraint).
    let learned = crf.scores().unwrap();
    assert_ne!(learned, Transitions::ZERO);
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/crf/paths.json"),
    )
    .unwrap();
    let expected: serde_json::Value = serde_json::from_str(&text).unwrap();
    let scores: Vec<Vec<Vec<f32>>> = emissions.as_tensor().to_vec3().unwrap();
    for (i, row) in scores.iter().enumerate() {
        let n = mask_rows[i].iter().filter(|&&k| k == 1).count();
        let unit: Vec<[f32; NUM_LABELS]> =
            row[..n].iter().map(|s| [s[0], s[1], s[2], s[3]]).collect();
        let path: Vec<u64> = viterbi_with(&unit, None, &learned)
            .into_iter()
            .map(|l| l.id() as u64)
            .collect();
        let want: Vec<u64> = expected["paths"][i]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        assert_eq!(path, want, "sequence {i}");
    }
}

/// With learned scores restricted to BIES, every decoded path is a valid
/// BIES sequence, and scores of zero decode as the softmax model's Viterbi.
#[test]
fn crf_decoding_keeps_bies_valid() {
    let f = fixture();
    let crf = Crf {
        transitions: f["transitions"].clone(),
        start: f["start_transitions"].clone(),
        end: f["end_transitions"].clone(),
    };
    let restricted = crf.scores().unwrap().restricted_to_bies();
    let scores: Vec<Vec<Vec<f32>>> = f["emissions"].to_vec3().unwrap();
    for row in &scores {
        let unit: Vec<[f32; NUM_LABELS]> = row.iter().map(|s| [s[0], s[1], s[2], s[3]]).collect();
        assert!(cws::bies::is_valid(&viterbi_with(&unit, None, &restricted)));
        assert_eq!(
            viterbi_with(&unit, None, &Transitions::bies()),
            cws::bies::viterbi(&unit, None)
        );
    }
}
