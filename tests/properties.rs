//! Property tests: label round trips, lossless decoding, unit spans and
//! lossless streaming segmentation over arbitrary input (arbitrary bytes in
//! each `--on-invalid-utf8` mode, and JSON-lines input).

use cws::bies::{is_valid, labels_from_lengths, viterbi, words_from_labels, Label, LABELS};
use cws::dict::Dictionary;
use cws::segment::{segment_stream, Format, InputFormat, OnInvalidUtf8, Progress, StreamOptions};
use cws::units::{split_units, units_of_words};
use proptest::prelude::*;

fn label() -> impl Strategy<Value = Label> {
    (0usize..4).prop_map(|i| LABELS[i])
}

/// Text drawn from the kinds of characters the splitter treats differently.
fn texty() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            Just('北'),
            Just('京'),
            Just('１'),
            Just('9'),
            Just('.'),
            Just('·'),
            Just('%'),
            Just('-'),
            Just('a'),
            Just('Ｚ'),
            Just(' '),
            Just('\u{3000}'),
            Just('\t'),
            Just('\r'),
            Just('\n'),
            Just('\0'),
            Just('😀'),
            Just('\u{301}'),
            Just('\u{7}'),
            any::<char>(),
        ],
        0..60,
    )
    .prop_map(|cs| cs.into_iter().filter(|&c| c != '|').collect())
}

/// Bytes that are mostly UTF-8 text with line ends, with stray bytes (most
/// of them invalid UTF-8) and, sometimes, a BOM in front; never `|`.
fn bytes_input() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        6 => texty().prop_map(String::into_bytes),
        2 => any::<u8>().prop_map(|b| vec![b]),
        1 => Just(b"\xE5\x8C".to_vec()),
        1 => Just(b"\r\n".to_vec()),
        1 => Just(b"\n".to_vec()),
    ];
    (any::<bool>(), proptest::collection::vec(piece, 0..12)).prop_map(|(bom, pieces)| {
        let mut bytes = if bom {
            b"\xEF\xBB\xBF".to_vec()
        } else {
            Vec::new()
        };
        bytes.extend(pieces.concat().into_iter().filter(|&b| b != b'|'));
        bytes
    })
}

/// Segments `input` with a small dictionary, `|` between words.
fn segment_bytes(
    input: &[u8],
    format: Format,
    input_format: InputFormat,
    on_invalid_utf8: OnInvalidUtf8,
) -> anyhow::Result<(Vec<u8>, Progress)> {
    let dict = Dictionary::from_words(["北京", "a1"]);
    let mut out = Vec::new();
    let opts = StreamOptions {
        format,
        delimiter: "|",
        batch_bytes: 16,
        input_name: "t",
        input_format,
        on_invalid_utf8,
        ..Default::default()
    };
    let mut reader = std::io::BufReader::with_capacity(7, input);
    let done = segment_stream(&mut reader, &mut out, &dict, &opts)?;
    Ok((out, done))
}

fn without_bars(bytes: &[u8]) -> Vec<u8> {
    bytes.iter().copied().filter(|&b| b != b'|').collect()
}

proptest! {
    #[test]
    fn windows_cover_every_unit(n in 0usize..500, max in 1usize..64) {
        let w = cws::tagger::window_ranges(n, max);
        prop_assert!(w.iter().all(|r| r.len() <= max.max(1)));
        let mut covered = vec![false; n];
        for r in &w {
            for i in r.clone() { covered[i] = true; }
        }
        prop_assert!(covered.iter().all(|&c| c));
    }

    #[test]
    fn punctuation_pieces_partition(keys in proptest::collection::vec(prop_oneof![Just("，"), Just("。"), Just("字")], 0..200), max in 1usize..40) {
        let keys: Vec<String> = keys.iter().map(|s| s.to_string()).collect();
        let mut at = 0;
        for r in cws::encode::split_at_punctuation(&keys, max) {
            prop_assert_eq!(r.start, at);
            prop_assert!(r.len() <= max && !r.is_empty());
            at = r.end;
        }
        prop_assert_eq!(at, keys.len());
        let mut at = 0;
        for r in cws::encode::split_sentences(&keys) {
            prop_assert_eq!(r.start, at);
            at = r.end;
        }
        prop_assert_eq!(at, keys.len());
    }

    #[test]
    fn words_labels_words_is_identity(lengths in proptest::collection::vec(1usize..6, 0..30)) {
        let labels = labels_from_lengths(&lengths);
        prop_assert!(is_valid(&labels));
        let back: Vec<usize> = words_from_labels(&labels).iter().map(|r| r.len()).collect();
        prop_assert_eq!(back, lengths);
    }

    #[test]
    fn any_labels_decode_to_a_partition(labels in proptest::collection::vec(label(), 0..40)) {
        let words = words_from_labels(&labels);
        let mut at = 0;
        for w in &words {
            prop_assert_eq!(w.start, at);
            prop_assert!(w.end > w.start);
            at = w.end;
        }
        prop_assert_eq!(at, labels.len());
    }

    #[test]
    fn viterbi_is_valid_and_complete(scores in proptest::collection::vec(proptest::array::uniform4(-5.0f32..5.0), 0..30)) {
        let path = viterbi(&scores, None);
        prop_assert_eq!(path.len(), scores.len());
        prop_assert!(is_valid(&path));
    }

    #[test]
    fn units_cover_text(text in texty()) {
        let units = split_units(&text);
        let joined: String = units.iter().map(|u| &text[u.span.clone()]).collect();
        prop_assert_eq!(joined, text);
    }

    #[test]
    fn word_units_cover_words(words in proptest::collection::vec("[北京a1.]{1,4}", 0..10)) {
        let su = units_of_words(&words);
        prop_assert_eq!(su.word_lengths.iter().sum::<usize>(), su.units.len());
    }

    #[test]
    fn segmentation_is_lossless(text in texty()) {
        let dict = Dictionary::from_words(["北京", "a1"]);
        let mut out = Vec::new();
        let opts = StreamOptions { delimiter: "|", batch_bytes: 16, input_name: "t", ..Default::default() };
        let mut reader = std::io::BufReader::with_capacity(7, text.as_bytes());
        segment_stream(&mut reader, &mut out, &dict, &opts).unwrap();
        prop_assert_eq!(String::from_utf8(out).unwrap().replace('|', ""), text);
    }

    #[test]
    fn no_byte_is_lost_in_any_invalid_utf8_mode(input in bytes_input()) {
        let lines: Vec<&[u8]> = input.split_inclusive(|&b| b == b'\n').collect();
        let invalid: Vec<usize> = (0..lines.len())
            .filter(|&i| std::str::from_utf8(lines[i]).is_err())
            .collect();
        let run = |mode| segment_bytes(&input, Format::Text, InputFormat::Text, mode);

        match run(OnInvalidUtf8::Error) {
            Ok((out, _)) => {
                prop_assert!(invalid.is_empty());
                prop_assert_eq!(without_bars(&out), input.clone());
            }
            Err(e) => {
                prop_assert!(!invalid.is_empty());
                let expected = format!("t:{}: invalid UTF-8", invalid[0] + 1);
                prop_assert!(e.to_string().starts_with(&expected), "{}", e);
            }
        }

        let (out, done) = run(OnInvalidUtf8::Replace).unwrap();
        prop_assert_eq!(
            without_bars(&out),
            String::from_utf8_lossy(&input).as_bytes().to_vec()
        );
        prop_assert_eq!(done.invalid_utf8, invalid.len());
        prop_assert_eq!(done.first_invalid_line, invalid.first().map(|i| i + 1));

        let (out, done) = run(OnInvalidUtf8::Skip).unwrap();
        prop_assert_eq!(without_bars(&out), input.clone());
        let out_lines: Vec<&[u8]> = out.split_inclusive(|&b| b == b'\n').collect();
        prop_assert_eq!(out_lines.len(), lines.len());
        for &i in &invalid {
            prop_assert_eq!(out_lines[i], lines[i], "line {} comes out as it went in", i + 1);
        }
        prop_assert_eq!(done.invalid_utf8, invalid.len());
        prop_assert_eq!(done.lines, lines.len());
        prop_assert_eq!(done.bytes, input.len() as u64);

        // JSON output stays UTF-8: one object per valid line, none for the rest.
        let (out, _) = segment_bytes(&input, Format::Jsonl, InputFormat::Text, OnInvalidUtf8::Skip).unwrap();
        let text = String::from_utf8(out).unwrap();
        let numbers: Vec<usize> = text
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["line"].as_u64().unwrap() as usize)
            .collect();
        let valid: Vec<usize> = (1..=lines.len()).filter(|n| !invalid.contains(&(n - 1))).collect();
        prop_assert_eq!(numbers, valid);
    }

    #[test]
    fn jsonl_input_keeps_fields_and_text(texts in proptest::collection::vec(texty(), 0..6)) {
        let input: String = texts
            .iter()
            .enumerate()
            .map(|(i, t)| format!("{}\n", serde_json::json!({"text": t, "id": i, "z": [i]})))
            .collect();
        let (out, _) = segment_bytes(input.as_bytes(), Format::Jsonl, InputFormat::Jsonl, OnInvalidUtf8::Error).unwrap();
        let out = String::from_utf8(out).unwrap();
        prop_assert_eq!(out.lines().count(), texts.len());
        for ((line, text), read) in out.lines().zip(&texts).zip(input.lines()) {
            prop_assert!(line.starts_with(&read[..read.len() - 1]), "{} keeps {}", line, read);
            let value: serde_json::Value = serde_json::from_str(line).unwrap();
            let words: Vec<&str> = value["words"].as_array().unwrap().iter().map(|w| w.as_str().unwrap()).collect();
            let spelled: String = text.chars().filter(|c| !c.is_whitespace()).collect();
            prop_assert_eq!(words.concat(), spelled);
            let bytes = value["bytes"].as_array().unwrap();
            for (w, span) in words.iter().zip(bytes) {
                let (a, b) = (span[0].as_u64().unwrap() as usize, span[1].as_u64().unwrap() as usize);
                prop_assert_eq!(&text[a..b], *w);
            }
        }
    }
}
