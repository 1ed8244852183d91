//! Units, the model's view of text: one unit per character (more exactly, per
//! extended grapheme cluster), except that a number, a run of Latin letters, a
//! run of another alphabet's letters and a web or e-mail address each form one
//! unit. Full-width ASCII forms read as
//! their half-width twins, and traditional characters as simplified ones (in
//! [`Unit::key`], see [`crate::script`]). Every unit keeps its byte span of the
//! original text, so joining the units' text gives back the input exactly.
//!
//! The rules mirror the normalisation of the 10% training files (see
//! data/README.md), so raw `１９９８年` and normalised `0年` give the same units:
//! - number: `[-+]?[0-9]+([.·][0-9]+)?%?` after width folding (the regular
//!   expression the training files collapsed to `0`), widened to numbers as
//!   people write them: `1,234.56`, `12:30`, `2024-01-15`, `+86-10-12345678`,
//!   `50-60` (see [`number_len`]). A sign right after a digit, a Latin letter or `%`
//!   is not the number's (`A-3` is `A` `-` `3`);
//! - Latin run: `[A-Za-z_.]+` after width folding (collapsed to `X` there),
//!   plus the Latin letters beyond ASCII (`café`, `São`, `Ærø`, `Nguyễn`); a
//!   run ending in a letter takes `-` and digits after it (`AK-47`, `COVID-19`,
//!   written as one word in the PKU and MSR gold files and word lists);
//! - web address or e-mail (raw text only; the training files have none): a run
//!   of URL characters starting `http://`, `https://`, `ftp://` or `www.`, or
//!   `name@host.tld`, after width folding, without trailing `.,;:!?)`. It reads
//!   as a Latin run (`X`), so it is one unit, never split;
//! - a run of letters of one other script (Greek, Cyrillic, Arabic, Hangul,
//!   kana, …; see [`letter_script`]), also read as a Latin run: the training
//!   files have none, and one character at a time the model would see each
//!   letter as an unknown unit.
//!
//! No unit boundary falls inside an extended grapheme cluster (UAX #29): a
//! unit takes the rest of the cluster it ends in, so `e` + U+0301, `👍🏽`,
//! `👨‍👩‍👧‍👦` and `🇨🇳` stay whole, and a combining mark stays with the CJK
//! character before it.
//!
//! Addresses are tried first, then numbers, then Latin runs. Without addresses,
//! trying numbers before Latin runs and scanning left to right yields the same
//! units as applying the two substitutions one after the other over the whole
//! line, because a Latin run never contains a digit and a number only takes a
//! `.` that is followed by a digit. (The PKU gold files write addresses as one
//! word, e.g. `www.people.com.cn／sport`.)
//!
//! None of the widenings changes a unit of the normalised training files
//! (`pku_10pct`, `msr_10pct`): they hold no letter beyond ASCII, no combining
//! mark or emoji, and, every number being the digit `0` with its sign already
//! taken, no `-0`, `0-0`, `0:00` or `0,000`. Their units were compared line by
//! line before and after the change.

use std::ops::Range;
use unicode_segmentation::UnicodeSegmentation;

/// What a unit is; the key the model sees depends only on the kind and, for a
/// plain character, on the width-folded character.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UnitKind {
    Char(char),
    Number,
    Latin,
    /// A web address or e-mail address (seen by the model as a Latin run).
    Address,
    /// A word of another alphabetic script, or a run of kana or Hangul (seen
    /// by the model as a Latin run).
    Letters,
}

/// One unit with its byte span in the original text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unit {
    pub span: Range<usize>,
    pub kind: UnitKind,
}

impl Unit {
    /// The normalised form of the unit, as it appears in the normalised training
    /// files: `0` for a number, `X` for a Latin run, else the folded character
    /// in its simplified form. Everything the model and word lists read goes
    /// through this.
    pub fn key(&self) -> String {
        match self.kind {
            UnitKind::Char(c) => crate::script::to_simplified(c).to_string(),
            UnitKind::Number => "0".to_string(),
            UnitKind::Latin | UnitKind::Address | UnitKind::Letters => "X".to_string(),
        }
    }
}

/// Folds full-width ASCII forms (U+FF01..U+FF5E) to ASCII and U+3000 to a space.
pub fn fold_width(c: char) -> char {
    match c {
        '\u{FF01}'..='\u{FF5E}' => char::from_u32(c as u32 - 0xFEE0).unwrap_or(c),
        '\u{3000}' => ' ',
        _ => c,
    }
}

/// A letter of the Latin script beyond ASCII: an alphabetic character of
/// Latin-1 Supplement, Latin Extended-A/B or Latin Extended Additional
/// (`é`, `ï`, `ã`, `Æ`, `ø`, `ǎ`, `ệ`). CJK characters are alphabetic too but
/// are never Latin.
fn is_latin_extended(c: char) -> bool {
    matches!(c, '\u{00AA}'..='\u{024F}' | '\u{1E00}'..='\u{1EFF}') && c.is_alphabetic()
}

fn is_latin(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == '.' || is_latin_extended(c)
}

/// The script of a letter whose words Chinese text quotes whole, other than
/// Latin and Han: Greek, Cyrillic, Armenian, Hebrew, Arabic, the Indic scripts
/// (one block each), Georgian, Hangul, Hiragana and Katakana (with `ー`, not
/// the middle dot `・`). A run of one script's letters is one unit, read as a
/// Latin run (`X`): `Москва`, `Ελλάδα`, `서울`, `カタカナ`.
fn letter_script(c: char) -> Option<u32> {
    if !c.is_alphabetic() {
        return None;
    }
    Some(match c {
        '\u{0370}'..='\u{03FF}' | '\u{1F00}'..='\u{1FFF}' => 1,
        '\u{0400}'..='\u{052F}' | '\u{1C80}'..='\u{1C8F}' | '\u{A640}'..='\u{A69F}' => 2,
        '\u{0530}'..='\u{058F}' => 3,
        '\u{0590}'..='\u{05FF}' => 4,
        '\u{0600}'..='\u{06FF}' | '\u{0750}'..='\u{077F}' => 5,
        '\u{10A0}'..='\u{10FF}' => 6,
        '\u{1100}'..='\u{11FF}' | '\u{3130}'..='\u{318F}' | '\u{AC00}'..='\u{D7AF}' => 7,
        '\u{3041}'..='\u{309F}' => 8,
        '\u{30A1}'..='\u{30FA}' | '\u{30FC}'..='\u{30FF}' | '\u{31F0}'..='\u{31FF}' => 9,
        '\u{FF66}'..='\u{FF9F}' => 9,
        // Devanagari to Malayalam: a block of 128 code points per script.
        '\u{0900}'..='\u{0D7F}' => 16 + (c as u32 - 0x900) / 0x80,
        _ => return None,
    })
}

/// Whether a sign (`-`/`+`) right after `c` is an operator or a dash, not the
/// sign of the number that follows: after a digit, a Latin letter or `%` (`50-60`,
/// `A-3`, `5%-10%`).
fn blocks_sign(c: char) -> bool {
    c.is_ascii_digit() || c == '%' || c.is_ascii_alphabetic() || is_latin_extended(c)
}

/// Numbers as people write them, matched at `chars[i]` (width-folded; `raw`
/// is the same text unfolded; `prev` is the first character of the grapheme
/// cluster before `i`). Returns the length in chars.
///
/// `[-+]? GROUP (- GROUP)* %?`, where a GROUP is one of
/// - a clock time `H:MM` or `H:MM:SS` (one or two digits for the hour, exactly
///   two after each colon);
/// - a number with thousands separators, `1,234` or `12,345,678.9` (one to
///   three leading digits, then groups of exactly three after an ASCII comma; a
///   full-width `，` is Chinese punctuation and never separates thousands);
/// - `[0-9]+([.·][0-9]+)?`, the rule of the training files' normalisation.
///
/// A sign is read as one only where it does not follow a digit, a Latin
/// letter or `%` ([`blocks_sign`]); a `-` between two groups joins them (`2024-01-15`,
/// `+86-10-12345678`, `50-60`), so a range is never read as `50` and `-60`.
///
/// The normalised training files hold none of the new forms: there every
/// number is the single digit `0`, and their normaliser ate the sign of every
/// `-` or `+` before a digit, so `0-0`, `-0`, `0:00` and `0,000` do not occur
/// and their units are those of the old rule (checked line by line).
fn number_len(chars: &[char], raw: &[char], i: usize, prev: Option<char>) -> Option<usize> {
    let digits = |from: usize| {
        chars
            .get(from..)
            .unwrap_or(&[])
            .iter()
            .take_while(|c| c.is_ascii_digit())
            .count()
    };
    let is_digit_at = |k: usize| chars.get(k).is_some_and(char::is_ascii_digit);
    // One group starting at `j` (a digit), returning its end.
    let group = |j: usize| -> usize {
        let n = digits(j);
        let mut end = j + n;
        // Clock time.
        if n <= 2 && chars.get(end) == Some(&':') && digits(end + 1) == 2 {
            end += 3;
            if chars.get(end) == Some(&':') && digits(end + 1) == 2 {
                end += 3;
            }
            return end;
        }
        // Thousands separators.
        if n <= 3 {
            let mut k = end;
            while raw.get(k) == Some(&',') && digits(k + 1) == 3 {
                k += 4;
            }
            end = k;
        }
        if matches!(chars.get(end), Some('.' | '·')) {
            let frac = digits(end + 1);
            if frac > 0 {
                end += 1 + frac;
            }
        }
        end
    };
    let mut j = i;
    if matches!(chars.get(j), Some('-' | '+'))
        && !prev.is_some_and(blocks_sign)
        && is_digit_at(j + 1)
    {
        j += 1;
    }
    if !is_digit_at(j) {
        return None;
    }
    j = group(j);
    while chars.get(j) == Some(&'-') && is_digit_at(j + 1) {
        j = group(j + 1);
    }
    if chars.get(j) == Some(&'%') {
        j += 1;
    }
    Some(j - i)
}

fn is_url_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~:/?#[]@!$&'()*+,;=%".contains(c)
}

/// Length in chars of the web or e-mail address starting at `chars[i]`, if any.
fn address_len(chars: &[char], i: usize) -> Option<usize> {
    let starts = |p: &str| {
        p.chars().enumerate().all(|(k, c)| {
            chars
                .get(i + k)
                .is_some_and(|&x| x.to_ascii_lowercase() == c)
        })
    };
    let run = chars[i..].iter().take_while(|&&c| is_url_char(c)).count();
    let prefix = ["http://", "https://", "ftp://", "www."]
        .iter()
        .find(|p| starts(p))
        .map(|p| p.len());
    let len = match prefix {
        Some(p) if run > p => run,
        _ => {
            // name@host.tld: a name of [A-Za-z0-9._%+-], then a host with a dot.
            let name = chars[i..]
                .iter()
                .take_while(|&&c| c.is_ascii_alphanumeric() || "._%+-".contains(c))
                .count();
            if name == 0 || chars.get(i + name) != Some(&'@') {
                return None;
            }
            let host = chars[i + name + 1..]
                .iter()
                .take_while(|&&c| c.is_ascii_alphanumeric() || ".-".contains(c))
                .count();
            let host_text: String = chars[i + name + 1..i + name + 1 + host].iter().collect();
            let tld_ok = host_text
                .trim_end_matches('.')
                .rsplit_once('.')
                .is_some_and(|(h, t)| !h.is_empty() && t.len() >= 2);
            if !tld_ok {
                return None;
            }
            name + 1 + host
        }
    };
    // Sentence punctuation right after an address is not part of it.
    let mut len = len;
    while len > 1 && ".,;:!?)'".contains(chars[i + len - 1]) {
        len -= 1;
    }
    Some(len)
}

/// `bounds[k]`: whether a unit may start or end before char `k` of `text`,
/// i.e. whether `k` is an extended grapheme cluster boundary (UAX #29). A
/// CR LF pair, one cluster there, stays two characters here: line ends are
/// never inside a unit's text anyway, and whitespace keeps a unit per char.
fn cluster_bounds(text: &str) -> Vec<bool> {
    let n = text.chars().count();
    let mut bounds = vec![false; n + 1];
    bounds[n] = true;
    let mut k = 0;
    for g in text.graphemes(true) {
        bounds[k] = true;
        if g == "\r\n" {
            bounds[k + 1] = true;
        }
        k += g.chars().count();
    }
    bounds
}

/// Splits `text` into units. Whitespace characters, where a caller passes them,
/// become units of their own like any other character.
///
/// No unit ends inside an extended grapheme cluster: a unit extends over the
/// rest of the cluster where it ends (`e` + U+0301, `👍🏽`, `👨‍👩‍👧‍👦`, `🇨🇳`, a CJK
/// character with a combining mark), and a Latin run continues over such
/// marks. A [`UnitKind::Char`] unit is keyed by the cluster's first character.
pub fn split_units(text: &str) -> Vec<Unit> {
    let offsets: Vec<usize> = text
        .char_indices()
        .map(|(b, _)| b)
        .chain(std::iter::once(text.len()))
        .collect();
    let raw: Vec<char> = text.chars().collect();
    let folded: Vec<char> = raw.iter().copied().map(fold_width).collect();
    let bounds = cluster_bounds(text);
    // The first cluster boundary at or after `k`.
    let to_bound = |mut k: usize| {
        while !bounds[k] {
            k += 1;
        }
        k
    };
    // The first character of the cluster that ends at `k`.
    let prev_base = |k: usize| {
        let mut b = k.checked_sub(1)?;
        while !bounds[b] {
            b -= 1;
        }
        Some(folded[b])
    };
    let mut units = Vec::with_capacity(folded.len());
    let mut i = 0;
    while i < folded.len() {
        let (end, kind) = if let Some(n) = address_len(&folded, i) {
            (to_bound(i + n), UnitKind::Address)
        } else if let Some(n) = number_len(&folded, &raw, i, prev_base(i)) {
            (to_bound(i + n), UnitKind::Number)
        } else if is_latin(folded[i]) {
            let mut j = i;
            while j < folded.len() && is_latin(folded[j]) {
                j = to_bound(j + 1);
            }
            // A word joined to a number by a hyphen is one name (`AK-47`,
            // `COVID-19`, `ｃ-１７`): the hyphen is not the number's sign.
            if prev_base(j).is_some_and(char::is_alphabetic) {
                let digit_at = |k: usize| folded.get(k).is_some_and(char::is_ascii_digit);
                while folded.get(j) == Some(&'-') && digit_at(j + 1) {
                    j += 1;
                    while digit_at(j) {
                        j += 1;
                    }
                    j = to_bound(j);
                }
            }
            (j, UnitKind::Latin)
        } else if let Some(script) = letter_script(folded[i]) {
            let mut j = i;
            while j < folded.len() && letter_script(folded[j]) == Some(script) {
                j = to_bound(j + 1);
            }
            (j, UnitKind::Letters)
        } else {
            (to_bound(i + 1), UnitKind::Char(folded[i]))
        };
        units.push(Unit {
            span: offsets[i]..offsets[end],
            kind,
        });
        i = end;
    }
    units
}

/// Units of a segmented sentence plus, for each unit, whether a word starts at
/// it and whether a word ends at it. Word boundaries that fall strictly inside a
/// unit cannot be represented; they are counted in `inner_boundaries`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentedUnits {
    pub text: String,
    pub units: Vec<Unit>,
    /// For each unit: the number of units in each word, in order.
    pub word_lengths: Vec<usize>,
    pub inner_boundaries: usize,
}

/// Maps a sentence's words onto the units of its joined text.
pub fn units_of_words<S: AsRef<str>>(words: &[S]) -> SegmentedUnits {
    let text: String = words.iter().map(AsRef::as_ref).collect();
    let units = split_units(&text);
    // Byte offsets where words end (the last one is the text's end).
    let mut ends = Vec::with_capacity(words.len());
    let mut at = 0;
    for w in words {
        at += w.as_ref().len();
        ends.push(at);
    }
    let mut word_lengths = Vec::new();
    let mut inner = 0;
    let mut current = 0;
    let mut next_end = ends.iter().peekable();
    for unit in &units {
        current += 1;
        // Skip word ends strictly inside this unit: they are lost boundaries.
        while let Some(&&e) = next_end.peek() {
            if e < unit.span.end {
                if e > unit.span.start {
                    inner += 1;
                }
                next_end.next();
            } else {
                break;
            }
        }
        if next_end.peek().is_some_and(|&&e| e == unit.span.end) {
            next_end.next();
            word_lengths.push(current);
            current = 0;
        }
    }
    if current > 0 {
        word_lengths.push(current);
    }
    SegmentedUnits {
        text,
        units,
        word_lengths,
        inner_boundaries: inner,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(text: &str) -> Vec<String> {
        split_units(text).iter().map(Unit::key).collect()
    }

    #[test]
    fn raw_and_normalised_agree() {
        assert_eq!(keys("１９９８年"), keys("0年"));
        assert_eq!(keys("增长３．５％，"), keys("增长0,"));
        assert_eq!(keys("ＩＢＭ公司"), keys("X公司"));
        assert_eq!(keys("Windows.NET版"), keys("X版"));
    }

    #[test]
    fn spans_cover_text() {
        let text = "约-3.5%的Ａｂｃ和1998-2000年";
        let units = split_units(text);
        let joined: String = units.iter().map(|u| &text[u.span.clone()]).collect();
        assert_eq!(joined, text);
        // A range is one number (the training files' `0` ate both its ends).
        assert_eq!(keys(text), ["约", "0", "的", "X", "和", "0", "年"]);
    }

    #[test]
    fn web_and_mail_addresses_are_one_unit() {
        let text = "访问http://www.pku.edu.cn/a?b=1获取，见www.x.cn.或ｈｔｔｐｓ：／／ｘ．ｃｎ，写信给zhang.san@pku.edu.cn。";
        let words: Vec<&str> = split_units(text)
            .iter()
            .filter(|u| u.kind == UnitKind::Address)
            .map(|u| &text[u.span.clone()])
            .collect();
        assert_eq!(
            words,
            [
                "http://www.pku.edu.cn/a?b=1",
                "www.x.cn",
                "ｈｔｔｐｓ：／／ｘ．ｃｎ",
                "zhang.san@pku.edu.cn"
            ]
        );
        // Training text normalises Latin runs to X: `X://X` stays three units.
        assert_eq!(keys("X://X"), ["X", ":", "/", "/", "X"]);
        assert_eq!(keys("a@b"), ["X", "@", "X"]);
    }

    #[test]
    fn dot_without_digit_is_latin() {
        assert_eq!(keys("3.a"), ["0", "X"]);
        assert_eq!(keys("…"), ["…"]);
    }

    #[test]
    fn units_never_end_inside_a_cluster() {
        let texts = |t: &str| -> Vec<String> {
            split_units(t)
                .iter()
                .map(|u| t[u.span.clone()].to_string())
                .collect()
        };
        assert_eq!(texts("cafe\u{301}好"), ["cafe\u{301}", "好"]);
        assert_eq!(texts("好\u{301}吗"), ["好\u{301}", "吗"]);
        assert_eq!(texts("12\u{301}3"), ["12\u{301}", "3"]);
        assert_eq!(texts("\r\n"), ["\r", "\n"]);
        assert_eq!(keys("Ærø的café"), ["X", "的", "X"]);
    }

    #[test]
    fn number_forms() {
        for (t, k) in [
            ("1,234.56元", vec!["0", "元"]),
            ("2024-01-15", vec!["0"]),
            ("12:30", vec!["0"]),
            ("+86-10-12345678", vec!["0"]),
            ("50-60", vec!["0"]),
            ("A-3", vec!["X"]),
            ("A.-3", vec!["X", "0"]),
            ("0:0", vec!["0", ":", "0"]),
            ("0,0", vec!["0", ",", "0"]),
            ("0/0", vec!["0", "/", "0"]),
        ] {
            assert_eq!(keys(t), k, "{t}");
        }
    }

    #[test]
    fn inner_boundary_is_counted() {
        let su = units_of_words(&["３", "．５", "亿"]);
        assert_eq!(su.word_lengths, [1, 1]);
        assert_eq!(su.inner_boundaries, 1);
        let su = units_of_words(&["１９９８年", "春"]);
        assert_eq!(su.word_lengths, [2, 1]);
        assert_eq!(su.inner_boundaries, 0);
    }
}
