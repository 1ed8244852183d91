//! Reading SIGHAN-format files: segmented corpora (words separated by whitespace)
//! and raw text, line by line, with errors that name the file and line.

use anyhow::{bail, Context, Result};
use std::path::Path;

/// One line of a file, without its line end, with its 1-based line number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub number: usize,
    pub text: String,
}

/// Splits file bytes into lines: a leading UTF-8 BOM is dropped, lines end at
/// LF with an optional CR before it, and a final line without LF still counts.
/// Invalid UTF-8 is an error naming `name`, the line and the byte column.
pub fn lines_from_bytes(name: &str, bytes: &[u8]) -> Result<Vec<Line>> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let mut lines = Vec::new();
    if bytes.is_empty() {
        return Ok(lines);
    }
    let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    for (index, raw) in body.split(|&b| b == b'\n').enumerate() {
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let text = std::str::from_utf8(raw).map_err(|e| {
            anyhow::anyhow!(
                "{name}:{}: invalid UTF-8 at byte {} of the line",
                index + 1,
                e.valid_up_to() + 1
            )
        })?;
        lines.push(Line {
            number: index + 1,
            text: text.to_string(),
        });
    }
    Ok(lines)
}

/// Reads a whole text file into lines (see [`lines_from_bytes`]).
pub fn read_lines(path: &Path) -> Result<Vec<Line>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    lines_from_bytes(&path.display().to_string(), &bytes)
}

/// The words of one segmented line: any run of Unicode whitespace (U+3000
/// included) separates words, as the SIGHAN scorer treats it.
pub fn split_words(line: &str) -> Vec<&str> {
    line.split(char::is_whitespace)
        .filter(|w| !w.is_empty())
        .collect()
}

/// A segmented sentence: its line number and its words (empty for a blank line,
/// which is kept so that line numbers stay aligned with a gold file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sentence {
    pub line: usize,
    pub words: Vec<String>,
}

impl Sentence {
    /// The sentence's text without separators.
    pub fn text(&self) -> String {
        self.words.concat()
    }
}

/// Parses a segmented corpus. Control characters other than tab (NUL included)
/// have no place in a segmented corpus: they are reported with file, line and
/// character column rather than passed on to training or scoring.
pub fn parse_segmented(name: &str, lines: Vec<Line>) -> Result<Vec<Sentence>> {
    lines
        .into_iter()
        .map(|line| {
            if let Some((col, c)) = line
                .text
                .chars()
                .enumerate()
                .find(|(_, c)| c.is_control() && !c.is_whitespace())
            {
                bail!(
                    "{name}:{}: control character U+{:04X} at character {} (a segmented corpus holds words separated by whitespace)",
                    line.number,
                    c as u32,
                    col + 1
                );
            }
            let words = split_words(&line.text)
                .into_iter()
                .map(str::to_string)
                .collect();
            Ok(Sentence {
                line: line.number,
                words,
            })
        })
        .collect()
}

/// Reads a segmented corpus file (one sentence per line).
pub fn read_segmented(path: &Path) -> Result<Vec<Sentence>> {
    parse_segmented(&path.display().to_string(), read_lines(path)?)
}

/// Reads a word list (one word per line, optionally followed by whitespace and
/// a weight, as in jieba / pkuseg dictionaries); blank lines are ignored.
/// Returns the words with the weight when one is given.
pub fn read_word_list(path: &Path) -> Result<Vec<(String, Option<f64>)>> {
    let name = path.display().to_string();
    let mut words = Vec::new();
    for line in read_lines(path)? {
        let mut fields = line
            .text
            .split(char::is_whitespace)
            .filter(|f| !f.is_empty());
        let Some(word) = fields.next() else { continue };
        let weight = match fields.next() {
            None => None,
            Some(w) => Some(w.parse::<f64>().map_err(|_| {
                anyhow::anyhow!(
                    "{name}:{}: expected `WORD [WEIGHT]`, found weight {w:?} that is not a number",
                    line.number
                )
            })?),
        };
        words.push((word.to_string(), weight));
    }
    Ok(words)
}

/// The distinct words of a word list (see [`read_word_list`]), e.g. for OOV
/// figures.
pub fn read_word_set(path: &Path) -> Result<std::collections::HashSet<String>> {
    Ok(read_word_list(path)?.into_iter().map(|(w, _)| w).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bom_crlf_and_final_line() {
        let lines = lines_from_bytes("t", b"\xEF\xBB\xBFa b\r\n\r\nc").unwrap();
        let texts: Vec<_> = lines.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(texts, ["a b", "", "c"]);
        assert_eq!(lines[2].number, 3);
    }

    #[test]
    fn invalid_utf8_names_line() {
        let err = lines_from_bytes("f.txt", b"ok\nbad \xFF\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "f.txt:2: invalid UTF-8 at byte 5 of the line"
        );
    }

    #[test]
    fn ideographic_space_separates() {
        assert_eq!(split_words("  我\u{3000}爱\t北京  "), ["我", "爱", "北京"]);
    }

    #[test]
    fn nul_in_corpus_is_an_error() {
        let lines = lines_from_bytes("c", b"a b\nx\0y\n").unwrap();
        let err = parse_segmented("c", lines).unwrap_err().to_string();
        assert!(err.starts_with("c:2: control character U+0000"), "{err}");
    }
}
