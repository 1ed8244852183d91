//! Units never split what a reader sees as one thing: Latin words with letters
//! beyond A–Z, words of other alphabets (and runs of Hangul and kana),
//! extended grapheme clusters (UAX #29) and numbers as people write
//! them, through `split_units` and through `cws segment` (the dictionary
//! baseline and the built-in model).

use crate::common::{segment_losslessly, write_file};
use cws::units::{split_units, UnitKind};

/// The units' texts; their concatenation must give `text` back.
fn unit_texts(text: &str) -> Vec<&str> {
    let units = split_units(text);
    let texts: Vec<&str> = units.iter().map(|u| &text[u.span.clone()]).collect();
    assert_eq!(texts.concat(), text, "units cover the text");
    texts
}

/// Asserts that `whole` is one unit of `text` (which holds it once).
fn assert_one_unit(text: &str, whole: &str) {
    let texts = unit_texts(text);
    assert!(
        texts.contains(&whole),
        "{whole:?} is one unit of {text:?}: {texts:?}"
    );
}

const LATIN_WORDS: [&str; 6] = ["café", "naïve", "Pokémon", "São", "Ærø", "Nguyễn"];

/// `e` followed by U+0301 COMBINING ACUTE ACCENT (a decomposed `é`).
const DECOMPOSED_CAFE: &str = "cafe\u{301}";
/// Thumbs up with a skin-tone modifier.
const THUMBS: &str = "\u{1F44D}\u{1F3FD}";
/// Man, woman, girl, boy joined by ZERO WIDTH JOINERs.
const FAMILY: &str = "\u{1F468}\u{200D}\u{1F469}\u{200D}\u{1F467}\u{200D}\u{1F466}";
/// Regional indicators C and N: the flag of China.
const FLAG: &str = "\u{1F1E8}\u{1F1F3}";
/// A CJK character with a combining mark (U+0301).
const HAN_WITH_MARK: &str = "中\u{301}";

const CLUSTERS: [&str; 5] = [DECOMPOSED_CAFE, THUMBS, FAMILY, FLAG, HAN_WITH_MARK];

/// Words of other alphabets (Cyrillic, Greek, Hebrew, Arabic, Devanagari with
/// its vowel signs) and runs of Hangul and kana.
const OTHER_SCRIPTS: [&str; 8] = [
    "Москва",
    "Ελλάδα",
    "שלום",
    "مرحبا",
    "नमस्ते",
    "서울",
    "カタカナ",
    "ひらがな",
];

const NUMBERS: [&str; 6] = [
    "1,234.56",
    "2024-01-15",
    "12:30",
    "+86-10-12345678",
    "50-60",
    "０.７-０.８",
];

/// Asserts that the word `w` is one unit of kind `kind`, alone and among
/// Chinese text, and that the model reads it as a Latin run.
fn assert_word_unit(w: &str, kind: UnitKind) {
    assert_eq!(unit_texts(w), [w], "{w}");
    assert_one_unit(&format!("我去了{w}和北京"), w);
    let units = split_units(w);
    assert_eq!(units[0].kind, kind, "{w}");
    assert_eq!(units[0].key(), "X", "{w} reads as a Latin run");
}

#[test]
fn latin_words_with_letters_beyond_a_to_z_are_one_unit() {
    for w in LATIN_WORDS {
        assert_word_unit(w, UnitKind::Latin);
    }
    // CJK text stays one unit per character.
    assert_eq!(unit_texts("北京"), ["北", "京"]);
    // Signs that are not letters still break a run.
    assert_eq!(unit_texts("a×b"), ["a", "×", "b"]);
}

#[test]
fn a_word_of_another_alphabet_is_one_unit() {
    for w in OTHER_SCRIPTS {
        assert_word_unit(w, UnitKind::Letters);
    }
    // A run ends where the script changes, and at anything not a letter.
    assert_eq!(unit_texts("ПриветΑθήνα"), ["Привет", "Αθήνα"]);
    assert_eq!(unit_texts("Paris和Париж"), ["Paris", "和", "Париж"]);
    assert_eq!(
        unit_texts("カタカナ・ひらがな"),
        ["カタカナ", "・", "ひらがな"]
    );
    assert_eq!(unit_texts("ラーメン"), ["ラーメン"]);
    assert_eq!(unit_texts("α粒子"), ["α", "粒", "子"]);
    assert_eq!(unit_texts("서울 부산"), ["서울", " ", "부산"]);
}

#[test]
fn grapheme_clusters_are_never_split() {
    for c in CLUSTERS {
        let text = format!("看{c}好");
        assert_one_unit(&text, c);
        assert_eq!(unit_texts(&text).len(), 3, "{text:?}");
    }
    // A decomposed accent continues a Latin run like a precomposed one.
    let text = format!("{DECOMPOSED_CAFE}s");
    assert_eq!(unit_texts(&text), [text.as_str()]);
    assert_eq!(split_units(DECOMPOSED_CAFE)[0].kind, UnitKind::Latin);
    // A mark after a number stays with it (keycap one: 1 U+FE0F U+20E3).
    assert_eq!(
        unit_texts("1\u{FE0F}\u{20E3}号"),
        ["1\u{FE0F}\u{20E3}", "号"]
    );
    // A cluster that starts a unit is keyed by its first character.
    assert_eq!(split_units(HAN_WITH_MARK)[0].key(), "中");
    // Two flags in a row are two units.
    assert_eq!(unit_texts(&FLAG.repeat(2)), [FLAG, FLAG]);
}

#[test]
fn numbers_as_people_write_them_are_one_unit() {
    for n in NUMBERS {
        let text = format!("约{n}元");
        assert_one_unit(&text, n);
        assert_eq!(split_units(n).len(), 1, "{n}");
        assert_eq!(split_units(n)[0].key(), "0", "{n}");
    }
    assert_one_unit("12:30:45开始", "12:30:45");
    assert_one_unit("-1,234,567.8%的", "-1,234,567.8%");
    // As before: full-width digits, decimals, percentages, signs.
    assert_one_unit("１９９８年", "１９９８");
    assert_one_unit("增长３．５％，", "３．５％");
    assert_one_unit("气温-5℃", "-5");
    assert_one_unit("降至+3.5%", "+3.5%");
    assert_one_unit("3·5", "3·5");
    // A full-width comma is Chinese punctuation, not a thousands separator;
    // a score is not a clock time; a comma group needs three digits.
    assert_eq!(unit_texts("1，234"), ["1", "，", "234"]);
    assert_eq!(unit_texts("3:1"), ["3", ":", "1"]);
    assert_eq!(unit_texts("1,23"), ["1", ",", "23"]);
}

#[test]
fn a_sign_never_attaches_right_after_a_digit_or_letter() {
    for (text, parts) in [
        ("1+1", vec!["1", "+", "1"]),
        ("3-+1", vec!["3", "-", "+1"]),
        ("5%-10%", vec!["5%", "-", "10%"]),
        // After a space or a CJK character the sign is the number's.
        ("50 -60", vec!["50", " ", "-60"]),
        ("零下-5", vec!["零", "下", "-5"]),
    ] {
        assert_eq!(unit_texts(text), parts, "{text}");
    }
    // After a letter, a hyphen and digits join the word: one name.
    for name in [
        "AK-47",
        "COVID-19",
        "Tu-16",
        "ｃ-１７",
        "Škoda-120",
        "A-1-2",
    ] {
        assert_one_unit(&format!("以{name}的"), name);
        assert_eq!(split_units(name)[0].key(), "X", "{name}");
    }
    // Never `50` `-60`.
    for text in ["50-60", "50-60人", "约50-60%"] {
        assert!(!unit_texts(text).contains(&"-60"), "{text}");
    }
}

/// A line holding every case above, among Chinese text.
fn mixed_line() -> String {
    format!(
        "我在São Paulo喝了café和{DECOMPOSED_CAFE}，说naïve的Pokémon去了Ærø。\
         看{THUMBS}和{FAMILY}在{FLAG}，{HAN_WITH_MARK}文。\
         2024-01-15 12:30付了1,234.56元，电话+86-10-12345678，来了50-60人。\
         他从Москва到서울，读了カタカナ和Ελλάδα。"
    )
}

fn wholes() -> Vec<&'static str> {
    LATIN_WORDS[..5]
        .iter()
        .chain(&CLUSTERS)
        .chain(&NUMBERS[..5])
        .chain(&[
            OTHER_SCRIPTS[0],
            OTHER_SCRIPTS[1],
            OTHER_SCRIPTS[5],
            OTHER_SCRIPTS[6],
        ])
        .copied()
        .collect()
}

/// Runs `cws segment ARGS` on `line`, checks the output gives the input back
/// without the inserted spaces, and returns its tokens.
fn segment(args: &[&str], line: &str) -> Vec<String> {
    segment_losslessly(args, &format!("{line}\n"))
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

#[test]
fn dict_only_never_splits_a_unit() {
    let tmp = tempfile::tempdir().unwrap();
    // Entries that would cut into the units if matching worked on characters.
    let words = "caf\né\n1\n2024\n01\n12\n86\n👍\n👨\n🇨\n中\n我在\n喝了\n电话\n";
    let list = write_file(tmp.path(), "words.txt", words.as_bytes());
    let line = mixed_line();
    let tokens = segment(&["segment", "--dict-only", list.to_str().unwrap()], &line);
    for whole in wholes() {
        assert!(
            tokens.iter().any(|t| t == whole),
            "{whole:?} is one token: {tokens:?}"
        );
    }
    assert!(tokens.iter().any(|t| t == "我在"), "{tokens:?}");
    // An entry made of whole units matches them.
    let list = write_file(tmp.path(), "whole.txt", "喝了café\n2024-01-15\n".as_bytes());
    let tokens = segment(&["segment", "--dict-only", list.to_str().unwrap()], &line);
    assert!(tokens.iter().any(|t| t == "喝了café"), "{tokens:?}");
    assert!(tokens.iter().any(|t| t == "2024-01-15"), "{tokens:?}");
}

#[test]
fn the_default_model_never_splits_a_unit() {
    let line = mixed_line();
    let tokens = segment(&["segment"], &line);
    for whole in wholes() {
        assert!(
            tokens.iter().any(|t| t.contains(whole)),
            "{whole:?} is not cut by a word boundary: {tokens:?}"
        );
    }
    // Each case alone between spaces comes out as it went in.
    let alone = wholes().join(" ");
    let tokens = segment(&["segment"], &alone);
    assert_eq!(tokens, wholes());
}
