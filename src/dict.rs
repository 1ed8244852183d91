//! Word lists as dictionaries: forward maximum matching over units, used by the
//! dictionary-only baseline (`cws segment --dict-only`) and by user
//! dictionaries, whose matches become constraints in model decoding.
//!
//! Matching works on unit boundaries, so a dictionary word never splits a number
//! or a Latin run. Overlapping entries are resolved leftmost-longest: scanning
//! left to right, the longest entry that starts at the current unit wins and
//! scanning resumes after it (forward maximum matching).
//!
//! Entries and text are compared as the model reads them where characters are
//! concerned: a character by its key (width-folded, traditional read as
//! simplified, see [`Unit::key`]), so the entry `开发` matches `開發`. Numbers,
//! Latin runs and addresses compare by their text: `2008年` does not match
//! `1998年`.

use crate::units::{split_units, Unit, UnitKind};
use anyhow::Result;
use std::borrow::Cow;
use std::collections::HashSet;
use std::ops::Range;
use std::path::Path;

#[derive(Debug, Clone, Default)]
pub struct Dictionary {
    words: HashSet<String>,
    /// The entries' matching forms (see [`forms`]).
    forms: HashSet<String>,
    /// The longest entry, in units: no longer match needs to be tried.
    max_units: usize,
}

impl Dictionary {
    pub fn from_words<I, S>(words: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut dict = Dictionary::default();
        for w in words {
            dict.insert(w.into());
        }
        dict
    }

    pub fn insert(&mut self, word: String) {
        if word.is_empty() {
            return;
        }
        let units = split_units(&word);
        self.max_units = self.max_units.max(units.len());
        self.forms.insert(forms(&word, &units).0);
        self.words.insert(word);
    }

    /// Loads a word list (one word per line, an optional weight after it is
    /// accepted and ignored by maximum matching).
    pub fn load(path: &Path) -> Result<Self> {
        let words = crate::corpus::read_word_list(path)?;
        Ok(Self::from_words(words.into_iter().map(|(w, _)| w)))
    }

    /// Whether `word` matches an entry (as [`Dictionary::matches`] compares).
    pub fn contains(&self, word: &str) -> bool {
        self.forms.contains(&forms(word, &split_units(word)).0)
    }

    pub fn len(&self) -> usize {
        self.words.len()
    }

    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    /// The entries as given.
    pub fn words(&self) -> &HashSet<String> {
        &self.words
    }

    /// Non-overlapping dictionary matches in `text` (already split into
    /// `units`), as unit ranges, leftmost-longest. Single-unit entries match too.
    pub fn matches(&self, text: &str, units: &[Unit]) -> Vec<Range<usize>> {
        let (read, starts) = forms(text, units);
        let mut found = Vec::new();
        let mut i = 0;
        while i < units.len() {
            let longest = (1..=self.max_units.min(units.len() - i))
                .rev()
                .find(|&n| self.forms.contains(&read[starts[i]..starts[i + n]]));
            match longest {
                Some(n) => {
                    found.push(i..i + n);
                    i += n;
                }
                None => i += 1,
            }
        }
        found
    }

    /// Forward maximum matching: dictionary matches, and every unit that no
    /// entry covers as a word of its own. Returns word lengths in units.
    pub fn segment(&self, text: &str, units: &[Unit]) -> Vec<usize> {
        let mut lengths = Vec::new();
        let mut at = 0;
        for m in self.matches(text, units) {
            lengths.extend(std::iter::repeat_n(1, m.start - at));
            lengths.push(m.len());
            at = m.end;
        }
        lengths.extend(std::iter::repeat_n(1, units.len() - at));
        lengths
    }
}

/// A unit as entries are matched: a character by its key (followed by the
/// rest of its grapheme cluster, if any: `👍🏽` is not `👍`), anything else by
/// its text.
fn form<'a>(text: &'a str, unit: &Unit) -> Cow<'a, str> {
    match unit.kind {
        UnitKind::Char(_) => {
            let t = &text[unit.span.clone()];
            let first = t.chars().next().map_or(0, char::len_utf8);
            Cow::Owned(unit.key() + &t[first..])
        }
        _ => Cow::Borrowed(&text[unit.span.clone()]),
    }
}

/// `text` (split into `units`) as entries are matched: its units' forms in a
/// row, and where each unit's form starts in that string, plus its end.
fn forms(text: &str, units: &[Unit]) -> (String, Vec<usize>) {
    let mut read = String::with_capacity(text.len());
    let mut starts = Vec::with_capacity(units.len() + 1);
    for u in units {
        starts.push(read.len());
        read.push_str(&form(text, u));
    }
    starts.push(read.len());
    (read, starts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(dict: &Dictionary, text: &str) -> Vec<String> {
        let units = split_units(text);
        let mut at = 0;
        dict.segment(text, &units)
            .into_iter()
            .map(|n| {
                let w = text[units[at].span.start..units[at + n - 1].span.end].to_string();
                at += n;
                w
            })
            .collect()
    }

    #[test]
    fn longest_match_wins() {
        let d = Dictionary::from_words(["北京", "北京大学", "大学生", "学生"]);
        assert_eq!(seg(&d, "北京大学生活"), ["北京大学", "生", "活"]);
    }

    #[test]
    fn traditional_text_matches_simplified_entries() {
        let d = Dictionary::from_words(["开发者", "电脑", "2008年"]);
        assert_eq!(seg(&d, "電腦開發者"), ["電腦", "開發者"]);
        assert!(d.contains("開發者") && d.contains("开发者"));
        assert_eq!(seg(&d, "1998年"), ["1998", "年"]);
    }

    #[test]
    fn numbers_stay_whole() {
        let d = Dictionary::from_words(["19"]);
        assert_eq!(seg(&d, "1998年"), ["1998", "年"]);
    }
}
