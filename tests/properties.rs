//! Property tests: label round trips, lossless decoding, unit spans and
//! lossless streaming segmentation over arbitrary input.

use cws::bies::{is_valid, labels_from_lengths, viterbi, words_from_labels, Label, LABELS};
use cws::dict::Dictionary;
use cws::segment::{segment_stream, Format, StreamOptions};
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
        let opts = StreamOptions { format: Format::Text, delimiter: "|", batch_bytes: 16, input_name: "t" };
        let mut reader = std::io::BufReader::with_capacity(7, text.as_bytes());
        segment_stream(&mut reader, &mut out, &dict, &opts).unwrap();
        prop_assert_eq!(String::from_utf8(out).unwrap().replace('|', ""), text);
    }
}
