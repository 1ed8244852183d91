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

/// Segments texts that hold no line breaks into numbered lines whose words
/// are joined by `delimiter` (what `cws eval --model` and dev scoring compare
/// against gold lines).
pub fn segment_to_lines(
    texts: &[(usize, String)],
    splitter: &dyn WordSplitter,
    delimiter: &str,
) -> Result<Vec<Line>> {
    let refs: Vec<&str> = texts.iter().map(|(_, t)| t.as_str()).collect();
    let words = segment_lines(&refs, splitter)?;
    Ok(texts
        .iter()
        .zip(&words)
        .map(|((number, t), ws)| Line {
            number: *number,
            text: ws
                .iter()
                .map(|r| &t[r.clone()])
                .collect::<Vec<_>>()
                .join(delimiter),
        })
        .collect())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// The line with a separator between words.
    Text,
    /// One JSON object per line: words with character and byte offsets.
    Jsonl,
    /// One BIES label per character; whitespace is copied as it is.
    Tags,
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
            let char_at = |byte: usize| line[..byte].chars().count();
            let texts: Vec<&str> = words.iter().map(|w| &line[w.clone()]).collect();
            let chars: Vec<[usize; 2]> = words
                .iter()
                .map(|w| [char_at(w.start), char_at(w.end)])
                .collect();
            let bytes: Vec<[usize; 2]> = words.iter().map(|w| [w.start, w.end]).collect();
            let value =
                serde_json::json!({"line": number, "words": texts, "chars": chars, "bytes": bytes});
            write!(out, "{value}")?;
        }
        Format::Tags => {
            let mut tags = String::with_capacity(line.len());
            let mut at = 0;
            for w in words {
                tags.push_str(&line[at..w.start]);
                let n = line[w.clone()].chars().count();
                tags.extend(labels_from_lengths(&[n]).into_iter().map(Label::as_char));
                at = w.end;
            }
            tags.push_str(&line[at..]);
            out.write_all(tags.as_bytes())?;
        }
    }
    Ok(())
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
}

/// Segments `input` line by line into `output`, a batch at a time, flushing
/// after each batch. A batch also ends when no more input is buffered, so
/// lines are never held back while the reader waits: a pipe that writes a
/// line and pauses sees that line's words before it writes again.
pub fn segment_stream<R: std::io::Read>(
    input: &mut std::io::BufReader<R>,
    output: &mut impl Write,
    splitter: &dyn WordSplitter,
    opts: &StreamOptions<'_>,
) -> Result<()> {
    let mut number = 0usize;
    let mut done = false;
    let mut batch: Vec<(String, &'static str)> = Vec::new();
    while !done {
        batch.clear();
        let mut bytes = 0;
        loop {
            let mut raw = Vec::new();
            if input.read_until(b'\n', &mut raw)? == 0 {
                done = true;
                break;
            }
            number += 1;
            let mut ending = "";
            if raw.ends_with(b"\n") {
                raw.pop();
                ending = "\n";
                if raw.ends_with(b"\r") {
                    raw.pop();
                    ending = "\r\n";
                }
            }
            if number == 1 && raw.starts_with(b"\xEF\xBB\xBF") {
                // The BOM is kept in text output (lossless) but is not text to
                // segment, and has no place in JSON.
                if opts.format != Format::Jsonl {
                    output.write_all(b"\xEF\xBB\xBF")?;
                }
                raw.drain(..3);
            }
            bytes += raw.len() + 1;
            let text = String::from_utf8(raw).map_err(|e| {
                let at = e.utf8_error().valid_up_to();
                crate::corpus::invalid_utf8(opts.input_name, number, e.as_bytes(), at)
            })?;
            batch.push((text, ending));
            if bytes >= opts.batch_bytes || input.buffer().is_empty() {
                break;
            }
        }
        let first = number + 1 - batch.len();
        let lines: Vec<&str> = batch.iter().map(|(t, _)| t.as_str()).collect();
        let words = segment_lines(&lines, splitter)
            .with_context(|| format!("{}: segmenting lines {first}..", opts.input_name))?;
        for (k, ((text, ending), w)) in batch.iter().zip(&words).enumerate() {
            write_line(output, first + k, text, w, opts.format, opts.delimiter)?;
            // JSON lines always end with LF; text and tags keep the input's ending.
            let end = if opts.format == Format::Jsonl {
                "\n"
            } else {
                ending
            };
            output.write_all(end.as_bytes())?;
        }
        output.flush()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dict::Dictionary;

    fn run(input: &str, format: Format) -> String {
        let dict = Dictionary::from_words(["北京", "天安门"]);
        let mut out = Vec::new();
        let opts = StreamOptions {
            format,
            delimiter: " ",
            batch_bytes: 8,
            input_name: "<stdin>",
        };
        let mut reader = std::io::BufReader::with_capacity(4, input.as_bytes());
        segment_stream(&mut reader, &mut out, &dict, &opts).unwrap();
        String::from_utf8(out).unwrap()
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
}
