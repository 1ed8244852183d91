//! Reading SIGHAN-format files: segmented corpora (words separated by whitespace)
//! and raw text, line by line, with errors that name the file and line.

use anyhow::{bail, Context, Result};
use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::Path;

/// UTF-8's byte-order mark, dropped from the start of a file.
const BOM: &[u8] = b"\xEF\xBB\xBF";

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
    let bytes = bytes.strip_prefix(BOM).unwrap_or(bytes);
    if let Some(guess) = utf16_guess(bytes) {
        bail!("{name}: {}", advice(name, guess));
    }
    let mut lines = Vec::new();
    if bytes.is_empty() {
        return Ok(lines);
    }
    let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    for (index, raw) in body.split(|&b| b == b'\n').enumerate() {
        lines.push(Line {
            number: index + 1,
            text: decode_line(name, index + 1, raw)?,
        });
    }
    Ok(lines)
}

/// One line's bytes, LF taken off, as text: a CR before the LF is dropped,
/// invalid UTF-8 is an error naming `name` and the line.
fn decode_line(name: &str, number: usize, raw: &[u8]) -> Result<String> {
    let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
    std::str::from_utf8(raw)
        .map(str::to_string)
        .map_err(|e| invalid_utf8(name, number, raw, e.valid_up_to()))
}

/// A text file read a line at a time, as [`lines_from_bytes`] reads a whole
/// one, so that files larger than memory can be read; each line comes with
/// the byte offset in the file where it starts, for [`line_at`].
pub struct LineReader {
    name: String,
    reader: BufReader<File>,
    offset: u64,
    number: usize,
    buf: Vec<u8>,
}

impl LineReader {
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
        Ok(Self {
            name: path.display().to_string(),
            reader: BufReader::with_capacity(1 << 16, file),
            offset: 0,
            number: 0,
            buf: Vec::new(),
        })
    }

    /// The next line and its byte offset, or `None` at the end of the file.
    pub fn next_line(&mut self) -> Result<Option<(u64, Line)>> {
        self.buf.clear();
        let n = self
            .reader
            .read_until(b'\n', &mut self.buf)
            .with_context(|| format!("cannot read {}", self.name))?;
        if n == 0 {
            return Ok(None);
        }
        let mut start = 0;
        if self.number == 0 {
            if self.buf.starts_with(BOM) {
                start = BOM.len();
            }
            if let Some(guess) = utf16_guess(&self.buf[start..]) {
                bail!("{}: {}", self.name, advice(&self.name, guess));
            }
        }
        self.number += 1;
        let raw = &self.buf[start..];
        let raw = raw.strip_suffix(b"\n").unwrap_or(raw);
        let at = self.offset + start as u64;
        self.offset += n as u64;
        Ok(Some((
            at,
            Line {
                number: self.number,
                text: decode_line(&self.name, self.number, raw)?,
            },
        )))
    }
}

/// The line of `file` (named `path`) that starts at byte `offset`, as
/// [`LineReader`] gave it.
pub fn line_at(file: &mut BufReader<File>, path: &Path, offset: u64) -> Result<String> {
    let mut raw = Vec::new();
    file.seek(SeekFrom::Start(offset))
        .and_then(|_| file.read_until(b'\n', &mut raw))
        .with_context(|| format!("cannot read {}", path.display()))?;
    let raw = raw.strip_suffix(b"\n").unwrap_or(&raw);
    let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
    match std::str::from_utf8(raw) {
        Ok(text) => Ok(text.to_string()),
        Err(_) => bail!(
            "{}: the line at byte {offset} is not UTF-8: the file changed since it was read",
            path.display()
        ),
    }
}

/// The error for a line that is not UTF-8: where, and (when the bytes look
/// like a common Chinese encoding) which one and how to convert it.
pub fn invalid_utf8(name: &str, line: usize, raw: &[u8], valid_up_to: usize) -> anyhow::Error {
    let guess =
        if line == 1 { utf16_guess(raw) } else { None }.or_else(|| gbk_guess(&raw[valid_up_to..]));
    anyhow::anyhow!(
        "{name}:{line}: invalid UTF-8 at byte {} of the line{}",
        valid_up_to + 1,
        guess.map_or(String::new(), |g| format!("; {}", advice(name, g)))
    )
}

/// A guess at a file's real encoding: what gave it away, and iconv's name.
type Guess = (&'static str, &'static str);

/// "It looks like X; convert with …".
fn advice(name: &str, (why, encoding): Guess) -> String {
    let file = if name.starts_with('<') { "FILE" } else { name };
    format!("{why} (convert with `iconv -f {encoding} -t UTF-8 {file} > {file}.utf8`)")
}

/// A UTF-16 byte-order mark, or the NUL bytes that ASCII text has in
/// UTF-16, at the start of a file.
fn utf16_guess(start: &[u8]) -> Option<Guess> {
    const UTF16: &str = "UTF-16";
    match start {
        [0xFF, 0xFE, ..] | [0xFE, 0xFF, ..] => Some((
            "the file starts with a UTF-16 byte-order mark: it is UTF-16, not UTF-8",
            UTF16,
        )),
        _ => {
            let head = &start[..start.len().min(64)];
            let nuls = head.iter().filter(|&&b| b == 0).count();
            (head.len() >= 4 && nuls * 4 >= head.len()).then_some((
                "the file has NUL bytes between its characters: it looks like UTF-16, not UTF-8",
                UTF16,
            ))
        }
    }
}

/// Bytes from the first invalid one on that pair up as GBK / GB18030
/// double-byte characters (lead 0x81–0xFE, trail 0x40–0xFE but 0x7F).
fn gbk_guess(rest: &[u8]) -> Option<Guess> {
    let mut i = 0;
    let mut pairs = 0;
    while i < rest.len() {
        match rest[i] {
            0x00..=0x7F => i += 1,
            0x81..=0xFE => match rest.get(i + 1) {
                Some(&t) if (0x40..=0xFE).contains(&t) && t != 0x7F => {
                    pairs += 1;
                    i += 2;
                }
                _ => return None,
            },
            _ => return None,
        }
    }
    (pairs > 0).then_some(("the bytes look like GBK / GB18030", "GB18030"))
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

/// Of the lines of at least 4 characters (shorter ones can be one word), how
/// many have no whitespace inside them, and how many there are: a segmented
/// corpus read as raw text has all of them unsegmented.
pub fn unsegmented_lines(lines: &[Line]) -> (usize, usize) {
    let mut considered = 0;
    let mut unsegmented = 0;
    for line in lines {
        let text = line.text.trim();
        if text.chars().count() >= 4 {
            considered += 1;
            if !text.contains(char::is_whitespace) {
                unsegmented += 1;
            }
        }
    }
    (unsegmented, considered)
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

/// Reads a word list: one word per line, optionally followed by whitespace, a
/// weight and a tag (as in jieba's dictionary, `词 频率 词性`); blank lines are
/// ignored, a list without words is an error. Returns the words with the weight
/// when one is given.
pub fn read_word_list(path: &Path) -> Result<Vec<(String, Option<f64>)>> {
    let name = path.display().to_string();
    let mut words = Vec::new();
    for line in read_lines(path)? {
        let fields: Vec<&str> = line
            .text
            .split(char::is_whitespace)
            .filter(|f| !f.is_empty())
            .collect();
        let at = || format!("{name}:{}", line.number);
        let (word, weight) = match fields[..] {
            [] => continue,
            [word] => (word, None),
            [word, w] | [word, w, _] => match w.parse::<f64>() {
                Ok(w) if w.is_finite() => (word, Some(w)),
                _ => bail!(
                    "{}: expected `WORD [WEIGHT [TAG]]`, found weight {w:?} that is not a number",
                    at()
                ),
            },
            _ => bail!(
                "{}: expected `WORD [WEIGHT [TAG]]`, found {} fields",
                at(),
                fields.len()
            ),
        };
        words.push((word.to_string(), weight));
    }
    if words.is_empty() {
        bail!("{name}: the word list holds no words");
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
    fn word_lists_read_jieba_lines_and_name_bad_ones() {
        let dir = tempfile::tempdir().unwrap();
        let list = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            read_word_list(&p)
        };
        let words = list("ok.txt", "北京 3 ns\n\n上海\r\n天津 2.5\n").unwrap();
        assert_eq!(
            words,
            [
                ("北京".to_string(), Some(3.0)),
                ("上海".to_string(), None),
                ("天津".to_string(), Some(2.5))
            ]
        );
        let err = |name: &str, text: &str| format!("{:#}", list(name, text).unwrap_err());
        let e = err("four.txt", "北京 3 ns\n上海 1 ns x\n");
        assert!(e.contains("four.txt:2") && e.contains("4 fields"), "{e}");
        let e = err("weight.txt", "北京 3\n上海 ns\n");
        assert!(e.contains("weight.txt:2") && e.contains("\"ns\""), "{e}");
        let e = err("nan.txt", "北京 NaN\n");
        assert!(e.contains("nan.txt:1"), "{e}");
        let e = err("empty.txt", "\n \n");
        assert!(e.contains("empty.txt") && e.contains("no words"), "{e}");
    }

    #[test]
    fn bom_crlf_and_final_line() {
        let lines = lines_from_bytes("t", b"\xEF\xBB\xBFa b\r\n\r\nc").unwrap();
        let texts: Vec<_> = lines.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(texts, ["a b", "", "c"]);
        assert_eq!(lines[2].number, 3);
    }

    #[test]
    fn line_reader_reads_as_whole_files_are_read_and_finds_lines_again() {
        let dir = tempfile::tempdir().unwrap();
        for bytes in [
            &b"\xEF\xBB\xBF\xe6\x88\x91 b\r\n\r\nc"[..],
            b"a\n\n",
            b"\n",
            b"",
            b"one line\n",
        ] {
            let path = dir.path().join("f.txt");
            std::fs::write(&path, bytes).unwrap();
            let mut reader = LineReader::open(&path).unwrap();
            let mut file = BufReader::new(File::open(&path).unwrap());
            let mut streamed = Vec::new();
            while let Some((offset, line)) = reader.next_line().unwrap() {
                assert_eq!(line_at(&mut file, &path, offset).unwrap(), line.text);
                streamed.push(line);
            }
            assert_eq!(streamed, lines_from_bytes("f", bytes).unwrap(), "{bytes:?}");
        }
        let path = dir.path().join("bad.txt");
        std::fs::write(&path, b"ok\nbad \xFF\n").unwrap();
        let mut reader = LineReader::open(&path).unwrap();
        reader.next_line().unwrap();
        let err = reader.next_line().unwrap_err().to_string();
        assert!(
            err.ends_with("bad.txt:2: invalid UTF-8 at byte 5 of the line"),
            "{err}"
        );
        let utf16: Vec<u8> = "ab cd\n"
            .encode_utf16()
            .flat_map(u16::to_le_bytes)
            .collect();
        std::fs::write(&path, utf16).unwrap();
        let err = LineReader::open(&path).unwrap().next_line().unwrap_err();
        assert!(err.to_string().contains("UTF-16"), "{err}");
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
    fn encodings_other_than_utf8_are_named_with_the_fix() {
        let gbk = b"\xce\xd2\xb0\xae\xb1\xb1\xbe\xa9\n"; // 我爱北京 in GBK
        let err = lines_from_bytes("g.txt", gbk).unwrap_err().to_string();
        assert!(err.starts_with("g.txt:1: invalid UTF-8 at byte 1"), "{err}");
        assert!(
            err.contains("GBK") && err.contains("iconv -f GB18030 -t UTF-8 g.txt"),
            "{err}"
        );
        let utf16: Vec<u8> = [0xFF, 0xFE]
            .into_iter()
            .chain("我爱\n".encode_utf16().flat_map(u16::to_le_bytes))
            .collect();
        let err = lines_from_bytes("u.txt", &utf16).unwrap_err().to_string();
        assert!(
            err.contains("UTF-16") && err.contains("iconv -f UTF-16 -t UTF-8 u.txt"),
            "{err}"
        );
        let no_bom: Vec<u8> = "ab cd\n"
            .encode_utf16()
            .flat_map(u16::to_le_bytes)
            .collect();
        let err = lines_from_bytes("n.txt", &no_bom).unwrap_err().to_string();
        assert!(err.contains("UTF-16"), "{err}");
        // Plain damage gets no guess.
        let err = lines_from_bytes("x.txt", b"ok \xFF\n")
            .unwrap_err()
            .to_string();
        assert_eq!(err, "x.txt:1: invalid UTF-8 at byte 4 of the line");
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
