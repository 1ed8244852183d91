//! Segmentation of raw text lines, losslessly: each line is cut into chunks at
//! the whitespace it already has, each chunk into units, a word splitter (the
//! dictionary baseline or a model) groups units into words, and the line is
//! written back with separators inserted between words. Whitespace in the input
//! is kept as it is and always acts as a word boundary; line ends (LF or CRLF)
//! and blank lines are preserved, so deleting the inserted separators gives the
//! input back byte for byte.

use crate::bies::{labels_from_lengths, Label};
use crate::corpus::Line;
use crate::units::{split_units, Unit};
use anyhow::{bail, Context, Result};
use std::io::{BufRead, Write};
use std::ops::Range;

/// Groups the units of whitespace-free chunks into words.
pub trait WordSplitter {
    /// For each chunk (its text and its units), the word lengths in units,
    /// summing to the chunk's unit count.
    fn split(&self, chunks: &[Chunk<'_>]) -> Result<Vec<Vec<usize>>>;
}

/// A run of non-whitespace text from one input line.
#[derive(Debug, Clone)]
pub struct Chunk<'a> {
    pub text: &'a str,
    pub units: Vec<Unit>,
}

impl WordSplitter for crate::dict::Dictionary {
    fn split(&self, chunks: &[Chunk<'_>]) -> Result<Vec<Vec<usize>>> {
        Ok(chunks
            .iter()
            .map(|c| self.segment(c.text, &c.units))
            .collect())
    }
}

/// Byte ranges of the non-whitespace runs of `line`.
pub fn chunk_spans(line: &str) -> Vec<Range<usize>> {
    let mut spans = Vec::new();
    let mut start = None;
    for (i, c) in line.char_indices() {
        match (c.is_whitespace(), start) {
            (true, Some(s)) => {
                spans.push(s..i);
                start = None;
            }
            (false, None) => start = Some(i),
            _ => {}
        }
    }
    if let Some(s) = start {
        spans.push(s..line.len());
    }
    spans
}

/// Byte ranges (in the chunk's text) of words given as lengths in units.
pub fn word_spans(chunk: &Chunk<'_>, lengths: &[usize]) -> Vec<Range<usize>> {
    let mut at = 0;
    lengths
        .iter()
        .map(|&n| {
            let span = chunk.units[at].span.start..chunk.units[at + n - 1].span.end;
            at += n;
            span
        })
        .collect()
}

/// Words of each line as byte ranges of that line, in order.
pub fn segment_lines(
    lines: &[&str],
    splitter: &dyn WordSplitter,
) -> Result<Vec<Vec<Range<usize>>>> {
    let mut owners = Vec::new();
    let mut chunks = Vec::new();
    for (li, line) in lines.iter().enumerate() {
        for span in chunk_spans(line) {
            let text = &line[span.clone()];
            chunks.push(Chunk {
                text,
                units: split_units(text),
            });
            owners.push((li, span.start));
        }
    }
    let lengths = splitter.split(&chunks)?;
    let mut words = vec![Vec::new(); lines.len()];
    for ((chunk, lens), &(li, offset)) in chunks.iter().zip(&lengths).zip(&owners) {
        if lens.iter().sum::<usize>() != chunk.units.len() || lens.contains(&0) {
            bail!(
                "internal error: word lengths {lens:?} do not cover {} units",
                chunk.units.len()
            );
        }
        for span in word_spans(chunk, lens) {
            words[li].push(offset + span.start..offset + span.end);
        }
    }
    Ok(words)
}

/// Lines are segmented in batches of about this many bytes (`cws segment`
/// without `--line-buffered`, `cws eval --model`).
pub const BATCH_BYTES: usize = 64 * 1024;

/// How far a segmentation run has got: counts so far, or at the end.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    /// Lines read, blank and skipped ones included.
    pub lines: usize,
    /// Bytes read: of the stream, line ends included ([`segment_stream`]); of
    /// the texts ([`segment_to_lines`]).
    pub bytes: u64,
    /// Characters segmented.
    pub chars: u64,
    /// Lines with invalid UTF-8 that were replaced or skipped.
    pub invalid_utf8: usize,
    /// The number of the first of them.
    pub first_invalid_line: Option<usize>,
}

/// Segments texts that hold no line breaks into numbered lines whose words
/// are joined by `delimiter` (what `cws eval --model` and dev scoring compare
/// against gold lines), [`BATCH_BYTES`] at a time, telling `progress` after
/// each batch.
pub fn segment_to_lines(
    texts: &[(usize, String)],
    splitter: &dyn WordSplitter,
    delimiter: &str,
    progress: Option<&dyn Fn(&Progress)>,
) -> Result<Vec<Line>> {
    let mut lines = Vec::with_capacity(texts.len());
    let mut done = Progress::default();
    let mut rest = texts;
    while !rest.is_empty() {
        let mut bytes = 0;
        let n = rest
            .iter()
            .take_while(|(_, t)| {
                let more = bytes < BATCH_BYTES;
                bytes += t.len() + 1;
                more
            })
            .count();
        let (batch, after) = rest.split_at(n);
        rest = after;
        let refs: Vec<&str> = batch.iter().map(|(_, t)| t.as_str()).collect();
        let words = segment_lines(&refs, splitter)?;
        for ((number, t), ws) in batch.iter().zip(&words) {
            lines.push(Line {
                number: *number,
                text: ws
                    .iter()
                    .map(|r| &t[r.clone()])
                    .collect::<Vec<_>>()
                    .join(delimiter),
            });
            done.lines += 1;
            done.bytes += t.len() as u64;
            done.chars += t.chars().count() as u64;
        }
        if let Some(report) = progress {
            report(&done);
        }
    }
    Ok(lines)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    /// The line with a separator between words.
    #[default]
    Text,
    /// One JSON object per line: words with character and byte offsets.
    Jsonl,
    /// One BIES label per character; whitespace is copied as it is.
    Tags,
}

/// What each input line holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum InputFormat {
    /// Text to segment.
    #[default]
    Text,
    /// A JSON object whose text field (`--text-field`, default `text`) is
    /// segmented; the output line is that object, byte for byte, with the
    /// result's fields added at its end. Blank lines are kept as they are.
    Jsonl,
}

/// What becomes of an input line that is not valid UTF-8.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum OnInvalidUtf8 {
    /// Stop with an error naming the input, the line and the byte.
    #[default]
    Error,
    /// Segment the line with each invalid sequence read as U+FFFD.
    Replace,
    /// Leave the line unsegmented: written through byte for byte in text and
    /// tags output, left out of JSON output (which must stay UTF-8).
    Skip,
}

/// The fields the result of one line adds to a JSON object, in this order:
/// `words` with `--format text`, `words`, `chars` (character offsets) and
/// `bytes` (byte offsets) with `--format jsonl`, `tags` with `--format tags`.
pub fn result_fields(format: Format) -> &'static [&'static str] {
    match format {
        Format::Text => &["words"],
        Format::Jsonl => &["words", "chars", "bytes"],
        Format::Tags => &["tags"],
    }
}

/// The values of [`result_fields`] for `line`'s `words`.
fn result_values(line: &str, words: &[Range<usize>], format: Format) -> Vec<serde_json::Value> {
    let texts = || serde_json::json!(words.iter().map(|w| &line[w.clone()]).collect::<Vec<_>>());
    match format {
        Format::Text => vec![texts()],
        Format::Jsonl => {
            // Character offsets in one pass: words come in order.
            let (mut byte, mut char) = (0, 0);
            let mut char_at = |b: usize| {
                char += line[byte..b].chars().count();
                byte = b;
                char
            };
            let chars: Vec<[usize; 2]> = words
                .iter()
                .map(|w| [char_at(w.start), char_at(w.end)])
                .collect();
            let bytes: Vec<[usize; 2]> = words.iter().map(|w| [w.start, w.end]).collect();
            vec![texts(), serde_json::json!(chars), serde_json::json!(bytes)]
        }
        Format::Tags => vec![serde_json::Value::String(tags(line, words))],
    }
}

/// One BIES label per character of each word; the rest of the line as it is.
fn tags(line: &str, words: &[Range<usize>]) -> String {
    let mut tags = String::with_capacity(line.len());
    let mut at = 0;
    for w in words {
        tags.push_str(&line[at..w.start]);
        let n = line[w.clone()].chars().count();
        tags.extend(labels_from_lengths(&[n]).into_iter().map(Label::as_char));
        at = w.end;
    }
    tags.push_str(&line[at..]);
    tags
}

/// Writes one segmented line (without its line end).
pub fn write_line(
    out: &mut impl Write,
    number: usize,
    line: &str,
    words: &[Range<usize>],
    format: Format,
    delimiter: &str,
) -> Result<()> {
    match format {
        Format::Text => {
            let mut at = 0;
            let mut prev_end = None;
            for w in words {
                out.write_all(&line.as_bytes()[at..w.start])?;
                // A separator only between adjacent words; whitespace already
                // separates the others.
                if prev_end == Some(w.start) {
                    out.write_all(delimiter.as_bytes())?;
                }
                out.write_all(&line.as_bytes()[w.clone()])?;
                at = w.end;
                prev_end = Some(w.end);
            }
            out.write_all(&line.as_bytes()[at..])?;
        }
        Format::Jsonl => {
            let mut object: serde_json::Map<String, serde_json::Value> = result_fields(format)
                .iter()
                .map(|k| k.to_string())
                .zip(result_values(line, words, format))
                .collect();
            object.insert("line".into(), number.into());
            write!(out, "{}", serde_json::Value::Object(object))?;
        }
        Format::Tags => out.write_all(tags(line, words).as_bytes())?,
    }
    Ok(())
}

/// Writes a JSON-lines input object with the result of its text added as
/// the last fields ([`result_fields`]). The object's own bytes, its
/// whitespace included, are written as they were read.
fn write_object(
    out: &mut impl Write,
    object: &str,
    text: &str,
    words: &[Range<usize>],
    format: Format,
) -> Result<()> {
    let open = object
        .trim_end()
        .strip_suffix('}')
        .context("internal error: a JSON object that does not end with }")?;
    out.write_all(open.as_bytes())?;
    // The object has at least the text field, so a comma always goes first.
    for (key, value) in result_fields(format)
        .iter()
        .zip(result_values(text, words, format))
    {
        write!(out, ",\"{key}\":{value}")?;
    }
    out.write_all(b"}")?;
    Ok(())
}

/// The string in field `field` of the JSON object `line`, or what is wrong:
/// not JSON, not an object, no such field, not a string, or a field that the
/// result would add (`taken`) already there.
pub fn text_field(line: &str, field: &str, taken: &[&str]) -> std::result::Result<String, String> {
    use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, Visitor};

    #[derive(Default)]
    struct Found {
        text: Option<serde_json::Value>,
        clash: Option<String>,
    }
    struct Seek<'a> {
        field: &'a str,
        taken: &'a [&'a str],
    }
    impl<'de> Visitor<'de> for Seek<'_> {
        type Value = Found;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Found, A::Error> {
            let mut found = Found::default();
            while let Some(key) = map.next_key::<String>()? {
                if key == self.field {
                    found.text = Some(map.next_value()?);
                } else {
                    if self.taken.contains(&key.as_str()) {
                        found.clash.get_or_insert(key);
                    }
                    // Other values are checked, never converted: any number
                    // or nesting passes.
                    map.next_value::<IgnoredAny>()?;
                }
            }
            Ok(found)
        }
    }
    impl<'de> DeserializeSeed<'de> for Seek<'_> {
        type Value = Found;
        fn deserialize<D: serde::Deserializer<'de>>(
            self,
            d: D,
        ) -> std::result::Result<Found, D::Error> {
            d.deserialize_map(self)
        }
    }

    let mut de = serde_json::Deserializer::from_str(line);
    let found = Seek { field, taken }
        .deserialize(&mut de)
        .and_then(|found| de.end().map(|()| found))
        .map_err(|e| {
            // serde_json says "at line 1 column N": the line is the input's.
            let message = e.to_string();
            let message = message.rsplit_once(" at line ").map_or(&*message, |m| m.0);
            match e.classify() {
                serde_json::error::Category::Data => format!("not a JSON object: {message}"),
                _ => format!(
                    "not valid JSON: {message} at byte {} of the line",
                    e.column()
                ),
            }
        })?;
    if let Some(key) = found.clash {
        return Err(format!(
            "the object already has a field {key:?}, which the result adds: rename it"
        ));
    }
    match found.text {
        Some(serde_json::Value::String(text)) => Ok(text),
        Some(other) => {
            let kind = match other {
                serde_json::Value::Null => "null",
                serde_json::Value::Bool(_) => "a boolean",
                serde_json::Value::Number(_) => "a number",
                serde_json::Value::Array(_) => "an array",
                _ => "an object",
            };
            Err(format!("field {field:?} is {kind}, not a string"))
        }
        None => Err(format!(
            "no field {field:?} (name the text's field with --text-field)"
        )),
    }
}

/// Options of a streaming segmentation run.
pub struct StreamOptions<'a> {
    pub format: Format,
    pub delimiter: &'a str,
    /// Lines are segmented and written in batches of up to about this many
    /// bytes; 0 writes each line as soon as it is read.
    pub batch_bytes: usize,
    /// Name of the input for error messages.
    pub input_name: &'a str,
    pub input_format: InputFormat,
    /// With JSON-lines input: the field that holds the text.
    pub text_field: &'a str,
    pub on_invalid_utf8: OnInvalidUtf8,
    /// Told the counts so far after each batch.
    pub progress: Option<&'a dyn Fn(&Progress)>,
}

impl Default for StreamOptions<'_> {
    fn default() -> Self {
        Self {
            format: Format::Text,
            delimiter: " ",
            batch_bytes: BATCH_BYTES,
            input_name: "<stdin>",
            input_format: InputFormat::Text,
            text_field: "text",
            on_invalid_utf8: OnInvalidUtf8::Error,
            progress: None,
        }
    }
}

impl StreamOptions<'_> {
    /// Whether every output line is a JSON object.
    fn json_output(&self) -> bool {
        self.format == Format::Jsonl || self.input_format == InputFormat::Jsonl
    }
}

/// One input line and what becomes of it.
struct Pending {
    number: usize,
    what: Pended,
    /// The line end written after it.
    ending: &'static str,
}

enum Pended {
    /// Text to segment: the line, or with JSON-lines input the object's text
    /// field (and the object).
    Segment {
        text: String,
        object: Option<String>,
    },
    /// Written as it was read: a skipped line, a blank JSON-lines line.
    Verbatim(Vec<u8>),
    /// Not written: a skipped line in JSON output.
    Dropped,
}

/// Decodes line `number` (without its line end) as `opts` say.
fn take_line(
    raw: Vec<u8>,
    number: usize,
    opts: &StreamOptions<'_>,
    done: &mut Progress,
) -> Result<Pended> {
    let line = match String::from_utf8(raw) {
        Ok(line) => line,
        Err(e) => {
            let at = e.utf8_error().valid_up_to();
            let raw = e.into_bytes();
            if opts.on_invalid_utf8 == OnInvalidUtf8::Error {
                return Err(crate::corpus::invalid_utf8(
                    opts.input_name,
                    number,
                    &raw,
                    at,
                ));
            }
            done.invalid_utf8 += 1;
            done.first_invalid_line.get_or_insert(number);
            match opts.on_invalid_utf8 {
                OnInvalidUtf8::Skip if opts.json_output() => return Ok(Pended::Dropped),
                OnInvalidUtf8::Skip => return Ok(Pended::Verbatim(raw)),
                _ => String::from_utf8_lossy(&raw).into_owned(),
            }
        }
    };
    Ok(match opts.input_format {
        InputFormat::Text => Pended::Segment {
            text: line,
            object: None,
        },
        InputFormat::Jsonl if line.trim().is_empty() => Pended::Verbatim(line.into_bytes()),
        InputFormat::Jsonl => Pended::Segment {
            text: text_field(&line, opts.text_field, result_fields(opts.format))
                .map_err(|problem| anyhow::anyhow!("{}:{number}: {problem}", opts.input_name))?,
            object: Some(line),
        },
    })
}

/// Segments `input` line by line into `output`, a batch at a time, flushing
/// after each batch, and returns the counts. A batch also ends when no more
/// input is buffered, so lines are never held back while the reader waits: a
/// pipe that writes a line and pauses sees that line's words before it
/// writes again.
///
/// With JSON-lines input each output line is its input line's object with
/// the result added ([`result_fields`]), blank lines are written back as they
/// are, and every line keeps its line end. Text input with `--format jsonl`
/// gives one object per line, each ending with LF.
pub fn segment_stream<R: std::io::Read>(
    input: &mut std::io::BufReader<R>,
    output: &mut impl Write,
    splitter: &dyn WordSplitter,
    opts: &StreamOptions<'_>,
) -> Result<Progress> {
    let mut done = Progress::default();
    let mut finished = false;
    let mut batch: Vec<Pending> = Vec::new();
    while !finished {
        batch.clear();
        let mut bytes = 0;
        loop {
            let mut raw = Vec::new();
            let n = input.read_until(b'\n', &mut raw)?;
            if n == 0 {
                finished = true;
                break;
            }
            done.lines += 1;
            done.bytes += n as u64;
            let number = done.lines;
            let mut ending = "";
            if raw.ends_with(b"\n") {
                raw.pop();
                ending = "\n";
                if raw.ends_with(b"\r") {
                    raw.pop();
                    ending = "\r\n";
                }
            }
            // Text input's JSON objects are cws's own: LF, like JSON lines
            // everywhere; other lines keep theirs.
            if opts.format == Format::Jsonl && opts.input_format == InputFormat::Text {
                ending = "\n";
            }
            if number == 1 && raw.starts_with(b"\xEF\xBB\xBF") {
                // The BOM is kept in text output (lossless) but is not text to
                // segment, and has no place in JSON.
                if !opts.json_output() {
                    output.write_all(b"\xEF\xBB\xBF")?;
                }
                raw.drain(..3);
            }
            bytes += raw.len() + 1;
            let what = take_line(raw, number, opts, &mut done)?;
            batch.push(Pending {
                number,
                what,
                ending,
            });
            if bytes >= opts.batch_bytes || input.buffer().is_empty() {
                break;
            }
        }
        let texts: Vec<&str> = batch
            .iter()
            .filter_map(|p| match &p.what {
                Pended::Segment { text, .. } => Some(text.as_str()),
                _ => None,
            })
            .collect();
        let first = batch.first().map_or(0, |p| p.number);
        let words = segment_lines(&texts, splitter)
            .with_context(|| format!("{}: segmenting lines {first}..", opts.input_name))?;
        done.chars += texts.iter().map(|t| t.chars().count() as u64).sum::<u64>();
        let mut words = words.iter();
        for p in &batch {
            match &p.what {
                Pended::Segment { text, object } => {
                    let w = words.next().expect("words for each text");
                    match object {
                        None => write_line(output, p.number, text, w, opts.format, opts.delimiter)?,
                        Some(object) => write_object(output, object, text, w, opts.format)?,
                    }
                }
                Pended::Verbatim(raw) => output.write_all(raw)?,
                Pended::Dropped => continue,
            }
            output.write_all(p.ending.as_bytes())?;
        }
        output.flush()?;
        if let (Some(report), false) = (opts.progress, batch.is_empty()) {
            report(&done);
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dict::Dictionary;

    /// Segments `input` (bytes) with a two-word dictionary and options
    /// adjusted by `set`; the output and the counts.
    fn run_with<'a>(
        input: &[u8],
        set: impl FnOnce(&mut StreamOptions<'a>),
    ) -> Result<(Vec<u8>, Progress)> {
        let dict = Dictionary::from_words(["北京", "天安门"]);
        let mut out = Vec::new();
        let mut opts = StreamOptions {
            batch_bytes: 8,
            ..Default::default()
        };
        set(&mut opts);
        let mut reader = std::io::BufReader::with_capacity(4, input);
        let done = segment_stream(&mut reader, &mut out, &dict, &opts)?;
        Ok((out, done))
    }

    fn text(out: Vec<u8>) -> String {
        String::from_utf8(out).unwrap()
    }

    fn run(input: &str, format: Format) -> String {
        text(run_with(input.as_bytes(), |o| o.format = format).unwrap().0)
    }

    fn run_jsonl(input: &str, format: Format) -> Result<String> {
        run_with(input.as_bytes(), |o| {
            o.input_format = InputFormat::Jsonl;
            o.format = format;
        })
        .map(|r| text(r.0))
    }

    #[test]
    fn keeps_whitespace_and_line_ends() {
        assert_eq!(
            run("我爱北京\r\n\n 天安门  广场\n", Format::Text),
            "我 爱 北京\r\n\n 天安门  广 场\n"
        );
        assert_eq!(run("北京", Format::Text), "北京");
    }

    #[test]
    fn tags_align_with_characters() {
        assert_eq!(run("我爱北京 x1\n", Format::Tags), "SSBE SS\n");
    }

    #[test]
    fn jsonl_offsets() {
        let out = run("北京a", Format::Jsonl);
        assert_eq!(out, "{\"bytes\":[[0,6],[6,7]],\"chars\":[[0,2],[2,3]],\"line\":1,\"words\":[\"北京\",\"a\"]}\n");
    }

    #[test]
    fn jsonl_input_keeps_the_object_and_adds_the_result() {
        let input = "{\"id\": 7, \"text\": \"我爱\\u5317京\", \"meta\": {\"z\": 1e400, \"a\": [1]} }\r\n\n  \n{\"text\":\"\"}";
        let out = run_jsonl(input, Format::Jsonl).unwrap();
        assert_eq!(
            out,
            "{\"id\": 7, \"text\": \"我爱\\u5317京\", \"meta\": {\"z\": 1e400, \"a\": [1]} ,\
             \"words\":[\"我\",\"爱\",\"北京\"],\"chars\":[[0,1],[1,2],[2,4]],\"bytes\":[[0,3],[3,6],[6,12]]}\r\n\
             \n  \n{\"text\":\"\",\"words\":[],\"chars\":[],\"bytes\":[]}"
        );
        let out = run_jsonl("{\"text\":\"北京 x\",\"k\":null}\n", Format::Text).unwrap();
        assert_eq!(
            out,
            "{\"text\":\"北京 x\",\"k\":null,\"words\":[\"北京\",\"x\"]}\n"
        );
        let out = run_jsonl("{\"text\":\"我爱北京\"}\n", Format::Tags).unwrap();
        assert_eq!(out, "{\"text\":\"我爱北京\",\"tags\":\"SSBE\"}\n");
        let out = run_with(b"{\"body\":\"\xE5\x8C\x97\xE4\xBA\xAC\"}\n", |o| {
            o.input_format = InputFormat::Jsonl;
            o.text_field = "body";
        })
        .unwrap();
        assert_eq!(text(out.0), "{\"body\":\"北京\",\"words\":[\"北京\"]}\n");
    }

    #[test]
    fn jsonl_input_errors_name_line_and_problem() {
        let err = |input: &str| {
            format!(
                "{:#}",
                run_jsonl(&format!("{{\"text\":\"ok\"}}\n{input}\n"), Format::Text).unwrap_err()
            )
        };
        let cases = [
            (
                "[1, 2]",
                "<stdin>:2: not a JSON object: invalid type: sequence",
            ),
            (
                "\"text\"",
                "<stdin>:2: not a JSON object: invalid type: string",
            ),
            (
                "{\"text\": 5}",
                "<stdin>:2: field \"text\" is a number, not a string",
            ),
            (
                "{\"text\": null}",
                "<stdin>:2: field \"text\" is null, not a string",
            ),
            (
                "{\"txt\": \"北京\"}",
                "<stdin>:2: no field \"text\" (name the text's field",
            ),
            (
                "{\"text\": \"北京\"",
                "<stdin>:2: not valid JSON: EOF while parsing an object at byte 17 of the line",
            ),
            (
                "{\"text\": \"a\"} x",
                "<stdin>:2: not valid JSON: trailing characters at byte 15 of the line",
            ),
            (
                "{\"text\": \"a\", \"words\": 1}",
                "<stdin>:2: the object already has a field \"words\"",
            ),
        ];
        for (input, expected) in cases {
            let e = err(input);
            assert!(e.starts_with(expected), "{input}: {e}");
        }
    }

    #[test]
    fn invalid_utf8_replaced_skipped_or_refused() {
        let input = b"\xEF\xBB\xBF\xC3(\r\n\xE5\x8C\x97\xE4\xBA\xAC\xE4\xBA\xAC\n\xFF";
        let e = run_with(input, |_| {}).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("<stdin>:1: invalid UTF-8 at byte 1"),
            "{e}"
        );

        let (out, done) = run_with(input, |o| o.on_invalid_utf8 = OnInvalidUtf8::Replace).unwrap();
        assert_eq!(text(out), "\u{FEFF}\u{FFFD} (\r\n北京 京\n\u{FFFD}");
        assert_eq!((done.invalid_utf8, done.first_invalid_line), (2, Some(1)));
        assert_eq!(
            (done.lines, done.bytes, done.chars),
            (3, input.len() as u64, 6)
        );

        let (out, done) = run_with(input, |o| o.on_invalid_utf8 = OnInvalidUtf8::Skip).unwrap();
        let mut expected = input.to_vec();
        expected.splice(13..13, *b" ");
        assert_eq!(out, expected);
        assert_eq!((done.invalid_utf8, done.first_invalid_line), (2, Some(1)));
        assert_eq!(done.chars, 3);

        let (out, done) = run_with(input, |o| {
            o.on_invalid_utf8 = OnInvalidUtf8::Skip;
            o.format = Format::Jsonl;
        })
        .unwrap();
        assert_eq!(text(out), "{\"bytes\":[[0,6],[6,9]],\"chars\":[[0,2],[2,3]],\"line\":2,\"words\":[\"北京\",\"京\"]}\n");
        assert_eq!(done.invalid_utf8, 2);
    }

    #[test]
    fn progress_is_told_after_each_batch() {
        let seen = std::cell::RefCell::new(Vec::new());
        let record = |p: &Progress| seen.borrow_mut().push(p.clone());
        let input = "北京\n天安门\n我\n";
        let (_, done) = run_with(input.as_bytes(), |o| {
            o.batch_bytes = 0;
            o.progress = Some(&record);
        })
        .unwrap();
        let seen = seen.borrow();
        let counts: Vec<(usize, u64, u64)> =
            seen.iter().map(|p| (p.lines, p.bytes, p.chars)).collect();
        assert_eq!(counts, [(1, 7, 2), (2, 17, 5), (3, 21, 6)]);
        assert_eq!(seen.last(), Some(&done));

        let seen = std::cell::RefCell::new(Vec::new());
        let record = |p: &Progress| seen.borrow_mut().push(p.clone());
        let texts: Vec<(usize, String)> = (1..=3).map(|n| (n, "北京".repeat(6_000))).collect();
        let dict = Dictionary::from_words(["北京"]);
        let lines = segment_to_lines(&texts, &dict, " ", Some(&record)).unwrap();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[2].text, ["北京"; 6_000].join(" "));
        let counts: Vec<(usize, u64)> = seen.borrow().iter().map(|p| (p.lines, p.chars)).collect();
        assert_eq!(counts, [(2, 24_000), (3, 36_000)]);
    }
}
