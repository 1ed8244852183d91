//! Traditional script reads like simplified: the model and word lists see
//! traditional characters through a traditional→simplified table, while the
//! output keeps the original characters.

use crate::common::{repo_root, segment_with_model};

/// Traditional sentences and their simplified forms, character for character.
/// Before the table, the bundled PKU model split the traditional ones apart
/// (`我 們 開 發 了 這 個 電 腦 程式`).
const PAIRS: [(&str, &str); 4] = [
    ("我們開發了這個電腦程式", "我们开发了这个电脑程式"),
    (
        "中國經濟發展很快，人民生活水準不斷提高。",
        "中国经济发展很快，人民生活水准不断提高。",
    ),
    (
        "國務院總理在北京人民大會堂會見外國代表團",
        "国务院总理在北京人民大会堂会见外国代表团",
    ),
    ("我們應該認真對待環境問題", "我们应该认真对待环境问题"),
];

/// Each line's words, segmented by the bundled PKU model.
fn segment(lines: &[&str]) -> Vec<Vec<String>> {
    let model = repo_root().join("models/pku");
    let input = lines.join("\n") + "\n";
    segment_with_model(&model, &["--delimiter", "|"], &input)
        .lines()
        .map(|l| l.split('|').map(str::to_string).collect())
        .collect()
}

/// Word end positions, in characters.
fn boundaries(words: &[String]) -> Vec<usize> {
    words
        .iter()
        .scan(0, |at, w| {
            *at += w.chars().count();
            Some(*at)
        })
        .collect()
}

#[test]
fn traditional_segments_like_its_simplified_form() {
    let (trad, simp): (Vec<&str>, Vec<&str>) = PAIRS.iter().copied().unzip();
    let (trad_words, simp_words) = (segment(&trad), segment(&simp));
    assert_eq!(trad_words.len(), PAIRS.len());
    for ((t, tw), sw) in trad.iter().zip(&trad_words).zip(&simp_words) {
        assert_eq!(tw.concat(), *t, "the output spells the input");
        assert_eq!(boundaries(tw), boundaries(sw), "{tw:?} vs {sw:?}");
        assert!(tw.len() > 1 && tw.len() < t.chars().count(), "{tw:?}");
    }
}
