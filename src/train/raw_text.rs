//! The windows of `distill_text` and the teachers' labels of their units.
//! The teachers label the raw text once, a chunk of lines at a time, into a
//! cache file in the run folder; training reads a batch's windows from the
//! text and their labels from the cache, so neither the text nor its labels
//! are ever held in memory whole and text larger than memory trains.
//!
//! The cache (`distill-text.safetensors`) holds three tensors: `fingerprint`
//! (i64 `[1]`, what the labels were made from), `windows` (i64 `[w, 5]`: per
//! window its file, the byte offset of its line, its first unit in the line,
//! its number of units and its first row in `probs`) and `probs` (f32
//! `[units, 4]`, the teachers' mean B/I/E/S probabilities).

use super::soft::{mean_probs, Probs};
use crate::bies::NUM_LABELS;
use crate::corpus::{line_at, LineReader};
use crate::encode::{split_at_punctuation, Window};
use crate::features::hash_keys;
use crate::output::AtomicFile;
use crate::tagger::Tagger;
use crate::units::{split_units, Unit};
use anyhow::{bail, Context, Result};
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// File of the teachers' labels for `distill_text`, in the run folder.
pub const DISTILL_TEXT_CACHE: &str = "distill-text.safetensors";

/// Lines the teachers label per pass: bounds the memory of labelling
/// whatever the text's size.
const RAW_CHUNK: usize = 4096;

/// Columns of the `windows` tensor.
const ENTRY: usize = 5;

/// Changes when the cache's layout or the way lines become windows does.
const CACHE_VERSION: &str = "distill-text 2";

/// The raw text's windows, read a batch at a time.
pub(super) struct RawText {
    files: Vec<PathBuf>,
    readers: Vec<BufReader<File>>,
    cache: File,
    windows: usize,
    /// Byte offsets of the `windows` and `probs` data in the cache.
    entries_at: u64,
    probs_at: u64,
}

/// Where one window lies.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Entry {
    file: usize,
    line_at: u64,
    first: usize,
    units: usize,
    row: u64,
}

impl Entry {
    fn to_bytes(self) -> Vec<u8> {
        [
            self.file as u64,
            self.line_at,
            self.first as u64,
            self.units as u64,
            self.row,
        ]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect()
    }

    fn from_bytes(b: &[u8]) -> Self {
        let v = |k: usize| u64::from_le_bytes(b[k * 8..k * 8 + 8].try_into().unwrap_or_default());
        Entry {
            file: v(0) as usize,
            line_at: v(1),
            first: v(2) as usize,
            units: v(3) as usize,
            row: v(4),
        }
    }
}

/// A raw-text line's units, whitespace left out (gold sentences have none).
fn line_units(text: &str) -> Vec<Unit> {
    crate::segment::chunk_spans(text)
        .into_iter()
        .flat_map(|r| split_units(&text[r]))
        .collect()
}

fn keys_of(units: &[Unit]) -> Vec<String> {
    units.iter().map(Unit::key).collect()
}

impl RawText {
    /// The windows of `files` (at most `max_units` units each) and their
    /// labels by `teachers` (the folders `models`): from the cache in
    /// `run_dir` when it was made from the same text, teachers and window
    /// size, else labelled now and cached.
    pub(super) fn open_or_build(
        files: &[PathBuf],
        max_units: usize,
        run_dir: &Path,
        models: &[PathBuf],
        teachers: &[Tagger],
    ) -> Result<Self> {
        let path = run_dir.join(DISTILL_TEXT_CACHE);
        let stamp = fingerprint(files, max_units, models)?;
        if path.is_file() {
            if let Some(raw) = Self::open(files, &path, stamp)? {
                return Ok(raw);
            }
        }
        build(files, max_units, teachers, &path, stamp)?;
        Self::open(files, &path, stamp)?
            .with_context(|| format!("{}: unreadable just after writing it", path.display()))
    }

    /// The cache at `path` if it was made for `stamp` (a truncated or
    /// foreign file is not, and is made again).
    fn open(files: &[PathBuf], path: &Path, stamp: u64) -> Result<Option<Self>> {
        let at = || format!("reading {}", path.display());
        let mut cache = File::open(path).with_context(at)?;
        let size = cache.metadata().with_context(at)?.len();
        let mut len = [0u8; 8];
        if size < 8 || cache.read_exact(&mut len).is_err() {
            return Ok(None);
        }
        let data = 8u64.saturating_add(u64::from_le_bytes(len));
        if data > size {
            return Ok(None);
        }
        let mut header = vec![0u8; (data - 8) as usize];
        cache.read_exact(&mut header).with_context(at)?;
        let Ok(header) = serde_json::from_slice::<serde_json::Value>(&header) else {
            return Ok(None);
        };
        let place = |name: &str, dtype: &str, width: &[u64]| -> Option<(u64, u64)> {
            let t = header.get(name)?;
            let shape: Vec<u64> = serde_json::from_value(t.get("shape")?.clone()).ok()?;
            let at: Vec<u64> = serde_json::from_value(t.get("data_offsets")?.clone()).ok()?;
            let elem = if dtype == "I64" { 8 } else { 4 };
            let ok = t.get("dtype")? == dtype
                && shape.get(1..)? == width
                && at.len() == 2
                && data.checked_add(at[1])? <= size
                && at[1].checked_sub(at[0])? == shape.iter().product::<u64>() * elem;
            ok.then_some((data + at[0], *shape.first()?))
        };
        let (Some((stamp_at, 1)), Some((entries_at, windows)), Some((probs_at, _))) = (
            place("fingerprint", "I64", &[]),
            place("windows", "I64", &[ENTRY as u64]),
            place("probs", "F32", &[NUM_LABELS as u64]),
        ) else {
            return Ok(None);
        };
        let mut found = [0u8; 8];
        cache.seek(SeekFrom::Start(stamp_at)).with_context(at)?;
        cache.read_exact(&mut found).with_context(at)?;
        if u64::from_le_bytes(found) != stamp {
            return Ok(None);
        }
        let readers = files
            .iter()
            .map(|f| {
                File::open(f)
                    .map(BufReader::new)
                    .with_context(|| format!("cannot read {}", f.display()))
            })
            .collect::<Result<_>>()?;
        Ok(Some(Self {
            files: files.to_vec(),
            readers,
            cache,
            windows: windows as usize,
            entries_at,
            probs_at,
        }))
    }

    /// Every window's number of units, in order.
    pub(super) fn lengths(&mut self) -> Result<Vec<usize>> {
        self.cache.seek(SeekFrom::Start(self.entries_at))?;
        let mut reader = BufReader::new(&self.cache);
        let mut row = [0u8; ENTRY * 8];
        let mut out = Vec::with_capacity(self.windows);
        for _ in 0..self.windows {
            reader.read_exact(&mut row)?;
            out.push(Entry::from_bytes(&row).units);
        }
        Ok(out)
    }

    fn entry(&mut self, k: usize) -> Result<Entry> {
        let mut row = [0u8; ENTRY * 8];
        self.cache
            .seek(SeekFrom::Start(self.entries_at + (k * ENTRY * 8) as u64))?;
        self.cache.read_exact(&mut row)?;
        Ok(Entry::from_bytes(&row))
    }

    /// Window `k` as `student` reads it, and its units' labels.
    pub(super) fn window(&mut self, k: usize, student: &Tagger) -> Result<(Window, Probs)> {
        let e = self.entry(k)?;
        let path = self
            .files
            .get(e.file)
            .context("distill_text cache: bad file index")?;
        let text = line_at(&mut self.readers[e.file], path, e.line_at)?;
        let units = line_units(&text);
        let r = e.first..e.first + e.units;
        if r.end > units.len() {
            bail!(
                "{}: the line at byte {} changed since its labels were cached",
                path.display(),
                e.line_at
            );
        }
        // Features of the whole line, as the line's units see each other.
        let features = student.features.compute(&keys_of(&units), None);
        let ids = student.vocab.unit_ids(&units[r.clone()]);
        let mut bytes = vec![0u8; e.units * NUM_LABELS * 4];
        self.cache.seek(SeekFrom::Start(
            self.probs_at + e.row * (NUM_LABELS * 4) as u64,
        ))?;
        self.cache.read_exact(&mut bytes)?;
        let probs = bytes
            .chunks_exact(NUM_LABELS * 4)
            .map(|row| {
                std::array::from_fn(|j| {
                    f32::from_le_bytes(row[j * 4..j * 4 + 4].try_into().unwrap_or_default())
                })
            })
            .collect();
        Ok((
            Window {
                ids,
                labels: Vec::new(),
                features: features.slice(r),
            },
            probs,
        ))
    }
}

/// What the cached labels depend on: the teachers (their folders' config
/// and weights), the text's bytes and the window size.
fn fingerprint(files: &[PathBuf], max_units: usize, models: &[PathBuf]) -> Result<u64> {
    let mut parts = vec![CACHE_VERSION.to_string(), max_units.to_string()];
    for dir in models {
        let config = std::fs::read_to_string(dir.join(crate::model_dir::CONFIG_FILE))
            .with_context(|| format!("reading the teacher {}", dir.display()))?;
        // The weights' content: a retrained teacher has the same size.
        let weights = dir.join(crate::model_dir::WEIGHTS_FILE);
        let weights = match weights.is_file() {
            true => content_hash(&weights)?,
            false => 0,
        };
        parts.push(format!("{}\u{1}{config}\u{1}{weights}", dir.display()));
    }
    for path in files {
        parts.push(format!("{}\u{1}{}", path.display(), content_hash(path)?));
    }
    Ok(hash_keys(&parts))
}

/// FNV-1a of a file's bytes, read in blocks.
fn content_hash(path: &Path) -> Result<u64> {
    let mut file = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut h = crate::features::Fnv::new();
    let mut block = vec![0u8; 1 << 16];
    loop {
        let n = file
            .read(&mut block)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            return Ok(h.finish());
        }
        h.push_bytes(&block[..n]);
    }
}

/// Calls `each` with every non-blank line of `files`: the file's index, the
/// line's byte offset and its units.
fn for_each_line(
    files: &[PathBuf],
    mut each: impl FnMut(usize, u64, Vec<Unit>) -> Result<()>,
) -> Result<()> {
    for (f, file) in files.iter().enumerate() {
        let mut lines = LineReader::open(file)?;
        while let Some((offset, line)) = lines.next_line()? {
            let units = line_units(&line.text);
            if !units.is_empty() {
                each(f, offset, units)?;
            }
        }
    }
    Ok(())
}

/// Labels the text of `files` with `teachers` into the cache at `path`
/// (written whole or not at all), in three passes over the text: one to
/// size the tensors, one for the windows, one for the labels (a chunk of
/// lines at a time).
fn build(
    files: &[PathBuf],
    max_units: usize,
    teachers: &[Tagger],
    path: &Path,
    stamp: u64,
) -> Result<()> {
    let (mut windows, mut rows) = (0u64, 0u64);
    for_each_line(files, |_, _, units| {
        windows += split_at_punctuation(&keys_of(&units), max_units).len() as u64;
        rows += units.len() as u64;
        Ok(())
    })?;
    let mut out = AtomicFile::create(path)?;
    out.write_all(&header(stamp, windows, rows))?;
    let mut row = 0u64;
    for_each_line(files, |file, line_at, units| {
        for r in split_at_punctuation(&keys_of(&units), max_units) {
            let e = Entry {
                file,
                line_at,
                first: r.start,
                units: r.len(),
                row: row + r.start as u64,
            };
            out.write_all(&e.to_bytes())?;
        }
        row += units.len() as u64;
        Ok(())
    })?;
    let mut chunk: Vec<(Vec<Unit>, Vec<String>)> = Vec::new();
    let label = |chunk: &mut Vec<(Vec<Unit>, Vec<String>)>, out: &mut AtomicFile| {
        let which: Vec<usize> = (0..chunk.len()).collect();
        for p in mean_probs(teachers, chunk, &which, &[])?.iter().flatten() {
            for x in p {
                out.write_all(&x.to_le_bytes())?;
            }
        }
        chunk.clear();
        anyhow::Ok(())
    };
    for_each_line(files, |_, _, units| {
        let keys = keys_of(&units);
        chunk.push((units, keys));
        if chunk.len() == RAW_CHUNK {
            label(&mut chunk, &mut out)?;
        }
        Ok(())
    })?;
    label(&mut chunk, &mut out)?;
    out.commit()
}

/// The safetensors header (length and JSON, padded to 8 bytes) and the
/// fingerprint's 8 bytes, which come first in the data.
fn header(stamp: u64, windows: u64, rows: u64) -> Vec<u8> {
    let entries_end = 8 + windows * (ENTRY * 8) as u64;
    let probs_end = entries_end + rows * (NUM_LABELS * 4) as u64;
    let mut json = serde_json::json!({
        "fingerprint": {"dtype": "I64", "shape": [1], "data_offsets": [0, 8]},
        "windows": {"dtype": "I64", "shape": [windows, ENTRY], "data_offsets": [8, entries_end]},
        "probs": {"dtype": "F32", "shape": [rows, NUM_LABELS], "data_offsets": [entries_end, probs_end]},
    })
    .to_string();
    while !json.len().is_multiple_of(8) {
        json.push(' ');
    }
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(json.as_bytes());
    out.extend_from_slice(&stamp.to_le_bytes());
    out
}
