//! Unit features beyond the unit's own id, added to the embeddings of a model
//! that was trained with them:
//! - **lexicon matches**: for each unit, which words of a word list start, end,
//!   contain or are it (the "dictionary features" of lexicon-enhanced CWS);
//! - **word-list statistics** (optional, read with the lexicon bits): how many
//!   listed words the unit begins, lies inside and ends, and how many contain
//!   its left and right pair, as powers-of-two bins;
//! - **hashed bigrams**: the unit with its left and with its right neighbour,
//!   each hashed into a shared table of `bigram_buckets` embeddings.
//!
//! The word list travels with the model as 64-bit hashes of the words' unit keys
//! (`lexicon.safetensors`), not as text: what the model needs is membership, and
//! hashes keep a model folder from carrying a copy of the list it was trained with.

use crate::model::BatchFeatures;
use crate::units::split_units;
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use std::collections::{HashMap, HashSet};
use std::path::Path;

/// Lexicon feature bits per unit: 0 = the unit alone is a word; 1..=4 = a word
/// of 2, 3, 4, ≥5 units starts here; 5..=8 = one ends here; 9 = the unit lies
/// strictly inside a word.
pub const LEXICON_FEATURES: usize = 10;

/// A stable hash of a word's unit keys (the key of its lexicon entry).
pub fn word_hash(word: &str) -> u64 {
    hash_keys(&Lexicon::keys(word))
}

/// What a joint model's lexicon XORs into the hashes of standard `index`'s
/// words: its standards' lists share one file, each word marked with its
/// standard (the first standard's words are stored as they are, so a model of
/// one standard is the case `index` = 0).
pub fn standard_salt(index: usize) -> u64 {
    match index {
        0 => 0,
        i => mix(0x5354_414E_4441_5244 ^ i as u64),
    }
}

/// The salt (as a standard's, see [`standard_salt`]) under which a general
/// list holds its frequent entries a second time (`general_lexicon_frequent`).
pub const FREQUENT_TIER: usize = 1;

/// The key standing for "no unit" beyond a sequence's ends, in bigrams.
const EDGE: &str = "\u{2}";

/// FNV-1a over the units' keys, each followed by a separator byte.
pub(crate) fn hash_keys(keys: &[String]) -> u64 {
    let mut h = Fnv::new();
    for k in keys {
        h.push(k);
    }
    h.0
}

/// FNV-1a, 64 bits.
#[derive(Clone, Copy)]
pub(crate) struct Fnv(u64);

impl Fnv {
    pub(crate) fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    /// A key and the separator byte after it.
    fn push(&mut self, key: &str) {
        self.push_bytes(key.as_bytes());
        self.push_bytes(&[0x1f]);
    }
    pub(crate) fn push_bytes(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
    pub(crate) fn finish(self) -> u64 {
        self.0
    }
}

/// SplitMix64 finaliser: spreads a hash so that its high bits are uniform.
pub(crate) fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Hasher of sets and maps keyed by our 64-bit key hashes: the keys are
/// hashes already, so [`mix`] spreads them in a few instructions where the
/// default SipHash costs a lookup several times as much (word-list lookups are
/// a hot loop of segmentation).
#[derive(Default, Clone, Copy)]
pub(crate) struct KeyHasher(u64);

impl std::hash::Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = mix(self.0 ^ u64::from(b));
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = mix(self.0 ^ v);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

type KeyHash = std::hash::BuildHasherDefault<KeyHasher>;

/// A word list as a set of hashes of the words' unit keys (so `１９９８年`,
/// `1998年` and `0年` are the same entry).
#[derive(Debug, Clone, Default)]
pub struct Lexicon {
    hashes: HashSet<u64, KeyHash>,
    max_units: usize,
}

impl Lexicon {
    pub fn from_words<I, S>(words: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut lex = Lexicon::default();
        for w in words {
            lex.insert(w.as_ref());
        }
        lex
    }

    /// The unit keys of a word.
    pub(crate) fn keys(word: &str) -> Vec<String> {
        split_units(word).iter().map(|u| u.key()).collect()
    }

    pub fn insert(&mut self, word: &str) {
        self.insert_for(word, 0);
    }

    /// Adds a word of standard `standard` (see [`standard_salt`]).
    pub fn insert_for(&mut self, word: &str, standard: usize) {
        let keys = Self::keys(word);
        if keys.is_empty() {
            return;
        }
        self.max_units = self.max_units.max(keys.len());
        self.hashes
            .insert(hash_keys(&keys) ^ standard_salt(standard));
    }

    /// Removes entries given by their hashes (see [`word_hash`]).
    pub fn remove_hashes(&mut self, hashes: impl IntoIterator<Item = u64>) {
        for h in hashes {
            self.hashes.remove(&h);
        }
    }

    pub fn contains_hash(&self, hash: u64) -> bool {
        self.hashes.contains(&hash)
    }

    pub fn contains(&self, word: &str) -> bool {
        self.contains_for(word, 0)
    }

    /// Whether standard `standard`'s list holds `word`.
    pub fn contains_for(&self, word: &str, standard: usize) -> bool {
        self.hashes
            .contains(&(hash_keys(&Self::keys(word)) ^ standard_salt(standard)))
    }

    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let mut sorted: Vec<u64> = self.hashes.iter().copied().collect();
        sorted.sort_unstable();
        let as_i64: Vec<i64> = sorted.into_iter().map(|h| h as i64).collect();
        let n = as_i64.len();
        let tensors = HashMap::from([
            (
                "hashes".to_string(),
                Tensor::from_vec(as_i64, n, &Device::Cpu)?,
            ),
            (
                "max_units".to_string(),
                Tensor::new(&[self.max_units as i64], &Device::Cpu)?,
            ),
        ]);
        candle_core::safetensors::save(&tensors, path)
            .with_context(|| format!("cannot write {}", path.display()))
    }

    /// Reads the file a model folder holds; see [`Self::from_bytes`].
    pub fn load(path: &Path) -> Result<Self> {
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        Self::from_bytes(&bytes, &path.display().to_string())
    }

    /// Parses the file's content; `name` says which file in errors.
    pub fn from_bytes(bytes: &[u8], name: &str) -> Result<Self> {
        let t = candle_core::safetensors::load_buffer(bytes, &Device::Cpu)
            .with_context(|| format!("cannot read the lexicon {}", name))?;
        let get = |name: &str| -> Result<Vec<i64>> {
            t.get(name)
                .with_context(|| format!("{} lacks the tensor {name:?}", name))?
                .to_vec1::<i64>()
                .with_context(|| format!("{}: {name:?} is not a 1-D i64 tensor", name))
        };
        let max_units = *get("max_units")?
            .first()
            .with_context(|| format!("{}: empty max_units", name))?;
        Ok(Lexicon {
            hashes: get("hashes")?.into_iter().map(|h| h as u64).collect(),
            max_units: max_units.max(0) as usize,
        })
    }

    /// Feature bits of every unit of `keys`. With `dropout = Some((seed, p))`
    /// each entry is skipped with probability `p`, the same entries for the same
    /// seed: training sees words missing from the list, as it will at test time.
    pub fn features(&self, keys: &[String], dropout: Option<(u64, f64)>) -> Vec<u16> {
        self.features_for(keys, dropout, 0)
    }

    /// [`Self::features`] against standard `standard`'s words.
    pub fn features_for(
        &self,
        keys: &[String],
        dropout: Option<(u64, f64)>,
        standard: usize,
    ) -> Vec<u16> {
        let salt = standard_salt(standard);
        let n = keys.len();
        let mut bits = vec![0u16; n];
        let threshold = dropout.map(|(seed, p)| (mix(seed), (p.clamp(0.0, 1.0) * 2f64.powi(64))));
        let kept = |h: u64| match threshold {
            Some((salt, limit)) => (mix(h ^ salt) as f64) >= limit,
            None => true,
        };
        for i in 0..n {
            let mut h = Fnv::new();
            for j in i..n.min(i + self.max_units) {
                h.push(&keys[j]);
                if !self.hashes.contains(&(h.0 ^ salt)) || !kept(h.0) {
                    continue;
                }
                let len = j - i + 1;
                if len == 1 {
                    bits[i] |= 1;
                    continue;
                }
                let size = len.min(5) - 2; // 0..=3 for 2, 3, 4, ≥5 units
                bits[i] |= 1 << (1 + size);
                bits[j] |= 1 << (5 + size);
                for b in &mut bits[i + 1..j] {
                    *b |= 1 << 9;
                }
            }
        }
        bits
    }
}

/// Word-list statistics per unit (lexicon features with `lexicon_stats`): how
/// many listed words of two or more units the unit begins, lies inside and
/// ends, and how many contain its left and its right bigram. Unlike the match
/// bits they say something about words the list lacks: a character that ends
/// hundreds of listed words, or a pair that occurs inside many, marks an
/// unseen name or compound as well. Each count is read as one of
/// [`STAT_BINS`] powers-of-two bins, one feature bit per group and bin.
#[derive(Debug, Clone, Default)]
pub struct ListStats {
    /// Unit key hash → listed words it begins, is inside, ends.
    units: HashMap<u64, [u32; 3], KeyHash>,
    /// Bigram hash (as [`FeatureSpec::bigram_pairs`]) → listed words holding it.
    pairs: HashMap<u64, u32, KeyHash>,
}

/// Count bins per statistic: 0, 1, 2–3, 4–7, …, ≥128.
pub const STAT_BINS: usize = 9;
/// Statistic feature bits per unit: begins, inside, ends, left pair, right pair.
pub const LIST_STAT_FEATURES: usize = 5 * STAT_BINS;

fn count_bin(n: u32) -> usize {
    if n == 0 {
        0
    } else {
        (1 + n.ilog2() as usize).min(STAT_BINS - 1)
    }
}

fn pair_hash(a: &str, b: &str) -> u64 {
    let mut h = Fnv::new();
    h.push(a);
    h.push(b);
    h.0
}

impl ListStats {
    /// Statistics of the distinct words of `words` (by unit keys).
    pub fn from_words<I, S>(words: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut stats = ListStats::default();
        let mut seen = HashSet::new();
        for w in words {
            let keys = Lexicon::keys(w.as_ref());
            if seen.insert(hash_keys(&keys)) {
                stats.count(&keys, 1);
            }
        }
        stats
    }

    /// Takes a word (by unit keys) out of the counts, as if the list lacked it.
    pub fn remove_keys(&mut self, keys: &[String]) {
        self.count(keys, -1);
    }

    fn count(&mut self, keys: &[String], sign: i32) {
        let n = keys.len();
        if n < 2 {
            return;
        }
        let step = |c: &mut u32| *c = c.saturating_add_signed(sign);
        for (i, k) in keys.iter().enumerate() {
            let group = if i == 0 {
                0
            } else if i + 1 == n {
                2
            } else {
                1
            };
            step(
                &mut self
                    .units
                    .entry(hash_keys(std::slice::from_ref(k)))
                    .or_default()[group],
            );
        }
        for p in keys.windows(2) {
            step(self.pairs.entry(pair_hash(&p[0], &p[1])).or_default());
        }
    }

    /// The statistic bits (0..LIST_STAT_FEATURES) of every unit of `keys`,
    /// given their bigram hashes from [`FeatureSpec::bigram_pairs`].
    pub fn bits(&self, keys: &[String], pairs: &[u64]) -> Vec<u64> {
        let pair = |h: u64| count_bin(self.pairs.get(&h).copied().unwrap_or(0));
        keys.iter()
            .enumerate()
            .map(|(i, k)| {
                let u = self
                    .units
                    .get(&hash_keys(std::slice::from_ref(k)))
                    .copied()
                    .unwrap_or_default();
                let bins = [
                    count_bin(u[0]),
                    count_bin(u[1]),
                    count_bin(u[2]),
                    pair(pairs[i]),
                    pair(pairs[i + 1]),
                ];
                bins.iter()
                    .enumerate()
                    .fold(0u64, |acc, (g, &b)| acc | 1 << (g * STAT_BINS + b))
            })
            .collect()
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let mut units: Vec<(u64, [u32; 3])> = self.units.iter().map(|(&h, &c)| (h, c)).collect();
        units.sort_unstable();
        let mut pairs: Vec<(u64, u32)> = self.pairs.iter().map(|(&h, &c)| (h, c)).collect();
        pairs.sort_unstable();
        let cpu = &Device::Cpu;
        let nu = units.len();
        let np = pairs.len();
        let tensors = HashMap::from([
            (
                "unit_hashes".to_string(),
                Tensor::from_vec(
                    units.iter().map(|u| u.0 as i64).collect::<Vec<_>>(),
                    nu,
                    cpu,
                )?,
            ),
            (
                "unit_counts".to_string(),
                Tensor::from_vec(
                    units.iter().flat_map(|u| u.1).collect::<Vec<_>>(),
                    (nu, 3),
                    cpu,
                )?,
            ),
            (
                "pair_hashes".to_string(),
                Tensor::from_vec(
                    pairs.iter().map(|p| p.0 as i64).collect::<Vec<_>>(),
                    np,
                    cpu,
                )?,
            ),
            (
                "pair_counts".to_string(),
                Tensor::from_vec(pairs.iter().map(|p| p.1).collect::<Vec<_>>(), np, cpu)?,
            ),
        ]);
        candle_core::safetensors::save(&tensors, path)
            .with_context(|| format!("cannot write {}", path.display()))
    }

    /// Reads the file a model folder holds; see [`Self::from_bytes`].
    pub fn load(path: &Path) -> Result<Self> {
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        Self::from_bytes(&bytes, &path.display().to_string())
    }

    /// Parses the file's content; `name` says which file in errors.
    pub fn from_bytes(bytes: &[u8], name: &str) -> Result<Self> {
        let t = candle_core::safetensors::load_buffer(bytes, &Device::Cpu)
            .with_context(|| format!("cannot read the word-list statistics {}", name))?;
        let get = |name: &str| {
            t.get(name)
                .with_context(|| format!("{} lacks the tensor {name:?}", name))
        };
        let bad = |name: &str| format!("{}: {name:?} has the wrong type or shape", name);
        let unit_hashes = get("unit_hashes")?
            .to_vec1::<i64>()
            .with_context(|| bad("unit_hashes"))?;
        let unit_counts = get("unit_counts")?
            .to_vec2::<u32>()
            .with_context(|| bad("unit_counts"))?;
        let pair_hashes = get("pair_hashes")?
            .to_vec1::<i64>()
            .with_context(|| bad("pair_hashes"))?;
        let pair_counts = get("pair_counts")?
            .to_vec1::<u32>()
            .with_context(|| bad("pair_counts"))?;
        if unit_hashes.len() != unit_counts.len()
            || pair_hashes.len() != pair_counts.len()
            || unit_counts.iter().any(|c| c.len() != 3)
        {
            bail!("{}: hashes and counts differ in length", name);
        }
        Ok(ListStats {
            units: unit_hashes
                .into_iter()
                .zip(unit_counts)
                .map(|(h, c)| (h as u64, [c[0], c[1], c[2]]))
                .collect(),
            pairs: pair_hashes
                .into_iter()
                .map(|h| h as u64)
                .zip(pair_counts)
                .collect(),
        })
    }
}

/// The path of `file` in a model folder whose config says it uses `what`.
/// Which features a model reads, and what they need (its lexicon).
#[derive(Debug, Clone, Default)]
pub struct FeatureSpec {
    pub lexicon: Option<Lexicon>,
    /// Size of the hashed bigram table; 0 = no bigram features.
    pub bigram_buckets: usize,
    /// Bigrams that get a bucket (hashed like two-unit words); the rest get
    /// bucket 0, the embedding of "no known bigram". None = every bigram.
    pub bigram_seen: Option<Lexicon>,
    /// Word-list statistics read with the lexicon bits (`lexicon_stats`).
    pub list_stats: Option<ListStats>,
    /// A general word list (`general_lexicon`), read as a second channel of
    /// the same match bits with its own embeddings: the standard's list keeps
    /// deciding granularity, the general one points at words it lacks.
    pub general_lexicon: Option<Lexicon>,
    /// Statistics of the general list, read with its bits
    /// (`general_lexicon_stats`).
    pub general_stats: Option<ListStats>,
    /// The general list also marks its frequent entries (`general_lexicon`
    /// holds them a second time under [`FREQUENT_TIER`]'s salt): ten more
    /// bits, the same match bits against those entries alone.
    pub general_frequent: bool,
    /// A joint model's number of standards (0 for a model of one): each has a
    /// column after the lexicon bits, set on every unit read by it, or (with
    /// `standard_tokens`) a token in [CLS]'s place.
    pub standards: usize,
    /// A joint model that reads its standard as a token: each standard's
    /// token id, in standard order; empty for the column form.
    pub standard_tokens: Vec<u32>,
    /// The standard [`Self::compute`] reads by: its words in `lexicon`, its
    /// column.
    pub standard: usize,
}

/// Features of one sequence of units, sliceable into windows.
#[derive(Debug, Clone, Default)]
pub struct UnitFeatures {
    /// Lexicon bits per unit (empty without a lexicon).
    pub lexicon: Vec<u16>,
    /// Word-list statistic bits per unit (empty without them).
    pub stats: Vec<u64>,
    /// Left and right bigram bucket per unit (empty without bigrams).
    pub bigrams: Vec<[u32; 2]>,
    /// General word-list bits per unit (empty without a general list).
    pub general: Vec<u16>,
    /// General word-list statistic bits per unit (empty without them).
    pub general_stats: Vec<u64>,
    /// Match bits against the general list's frequent entries (empty unless
    /// the spec marks them).
    pub general_frequent: Vec<u16>,
    /// How a joint model is told the standard the sequence is read by.
    pub standard: Option<StandardMark>,
}

/// A joint model's standard, as the batch gives it to the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StandardMark {
    /// Column `index` of `count` after the lexicon bits, set on every unit.
    Column { index: usize, count: usize },
    /// This token id in [CLS]'s place.
    Token(u32),
}

impl UnitFeatures {
    pub fn slice(&self, r: std::ops::Range<usize>) -> Self {
        fn part<T: Clone>(v: &[T], r: std::ops::Range<usize>) -> Vec<T> {
            if v.is_empty() {
                Vec::new()
            } else {
                v[r].to_vec()
            }
        }
        UnitFeatures {
            lexicon: part(&self.lexicon, r.clone()),
            stats: part(&self.stats, r.clone()),
            bigrams: part(&self.bigrams, r.clone()),
            general: part(&self.general, r.clone()),
            general_stats: part(&self.general_stats, r.clone()),
            general_frequent: part(&self.general_frequent, r),
            standard: self.standard,
        }
    }
}

impl FeatureSpec {
    pub fn is_empty(&self) -> bool {
        self.lexicon.is_none() && self.bigram_buckets == 0 && self.general_lexicon.is_none()
    }

    /// Takes listed words (given by unit keys) out of the lexicon and out of
    /// the statistics, as if the list lacked them; words it lacks already are
    /// left alone.
    pub fn hide_words<'a>(&mut self, words: impl IntoIterator<Item = &'a [String]>) {
        self.hide_words_of(self.standard, words)
    }

    /// [`Self::hide_words`] for standard `standard`'s words.
    pub fn hide_words_of<'a>(
        &mut self,
        standard: usize,
        words: impl IntoIterator<Item = &'a [String]>,
    ) {
        let salt = standard_salt(standard);
        let Some(lex) = &mut self.lexicon else {
            return;
        };
        for keys in words {
            if lex.hashes.remove(&(hash_keys(keys) ^ salt)) {
                if let Some(st) = &mut self.list_stats {
                    st.remove_keys(keys);
                }
            }
        }
    }

    /// The hashes of a sequence's n + 1 bigrams, given its n unit keys: pair i
    /// is units i - 1 and i, with an edge key beyond either end. Unit i's left
    /// bigram is pair i, its right one pair i + 1.
    pub fn bigram_pairs(keys: &[String]) -> Vec<u64> {
        let at = |i: usize| {
            if i == 0 || i > keys.len() {
                EDGE
            } else {
                &keys[i - 1]
            }
        };
        (0..=keys.len())
            .map(|i| pair_hash(at(i), at(i + 1)))
            .collect()
    }

    /// The bigrams (as [`FeatureSpec::bigram_pairs`] hashes them) that occur at
    /// least `min_count` times in `sentences` (each given as unit keys).
    pub fn seen_bigrams<'a>(
        sentences: impl IntoIterator<Item = &'a [String]>,
        min_count: usize,
    ) -> Lexicon {
        let mut counts: HashMap<u64, usize> = HashMap::new();
        for keys in sentences {
            for pair in Self::bigram_pairs(keys) {
                *counts.entry(pair).or_default() += 1;
            }
        }
        Lexicon {
            hashes: counts
                .into_iter()
                .filter(|&(_, n)| n >= min_count)
                .map(|(h, _)| h)
                .collect(),
            max_units: 2,
        }
    }

    /// Features of one sequence given its unit keys.
    pub fn compute(&self, keys: &[String], lexicon_dropout: Option<(u64, f64)>) -> UnitFeatures {
        self.compute_for(keys, lexicon_dropout, self.standard)
    }

    /// [`Self::compute`] by standard `standard` (of a joint model).
    pub fn compute_for(
        &self,
        keys: &[String],
        lexicon_dropout: Option<(u64, f64)>,
        standard: usize,
    ) -> UnitFeatures {
        // Pair hashes only matter for the seen-bigram test and the statistics.
        let pairs = (self.bigram_seen.is_some()
            || self.list_stats.is_some()
            || self.general_stats.is_some())
        .then(|| Self::bigram_pairs(keys));
        // A word list's match bits, and its statistics when it has them.
        let list = |lexicon: &Option<Lexicon>, stats: &Option<ListStats>, dropout, standard| {
            let Some(lex) = lexicon else {
                return (Vec::new(), Vec::new());
            };
            let stats = match (stats, &pairs) {
                (Some(st), Some(pairs)) => st.bits(keys, pairs),
                _ => Vec::new(),
            };
            (lex.features_for(keys, dropout, standard), stats)
        };
        let (lexicon, stats) = list(&self.lexicon, &self.list_stats, lexicon_dropout, standard);
        let (general, general_stats) = list(&self.general_lexicon, &self.general_stats, None, 0);
        let general_frequent = match &self.general_lexicon {
            Some(lex) if self.general_frequent => lex.features_for(keys, None, FREQUENT_TIER),
            _ => Vec::new(),
        };
        let bigrams = if self.bigram_buckets > 0 {
            let at = |i: isize| -> &str {
                if i < 0 || i as usize >= keys.len() {
                    EDGE
                } else {
                    &keys[i as usize]
                }
            };
            (0..keys.len() as isize)
                .map(|i| {
                    [(i - 1, i, "L"), (i, i + 1, "R")].map(|(a, b, side)| {
                        if let (Some(seen), Some(pairs)) = (&self.bigram_seen, &pairs) {
                            if !seen.hashes.contains(&pairs[b as usize]) {
                                return 0;
                            }
                        }
                        let mut h = Fnv::new();
                        h.push(side);
                        h.push(at(a));
                        h.push(at(b));
                        // Bucket 0 is reserved for [CLS], [SEP] and padding.
                        1 + (mix(h.0) % (self.bigram_buckets as u64 - 1)) as u32
                    })
                })
                .collect()
        } else {
            Vec::new()
        };
        UnitFeatures {
            lexicon,
            stats,
            bigrams,
            general,
            general_stats,
            general_frequent,
            standard: match (self.standards, self.standard_tokens.get(standard)) {
                (0, _) => None,
                (_, Some(&id)) => Some(StandardMark::Token(id)),
                (count, None) => Some(StandardMark::Column {
                    index: standard,
                    count,
                }),
            },
        }
    }
}

/// A word list's bits per unit, its statistics' bits and its frequent
/// entries' bits (each empty where absent).
type ListBits<'a> = (&'a [u16], &'a [u64], &'a [u16]);

/// f32 `[b, t, width]` 0/1 bits, row r's units from position 1 on: `bits`
/// gives (unit, first column, bits) for a row's units.
fn bit_tensor(
    rows: &[&UnitFeatures],
    t: usize,
    width: usize,
    bits: impl Fn(&UnitFeatures) -> Vec<(usize, usize, u64)>,
    device: &Device,
) -> Result<Tensor> {
    let mut v = vec![0f32; rows.len() * t * width];
    for (r, f) in rows.iter().enumerate() {
        for (k, offset, bits) in bits(f) {
            let base = (r * t + 1 + k) * width + offset;
            let mut rest = bits;
            while rest != 0 {
                v[base + rest.trailing_zeros() as usize] = 1.0;
                rest &= rest - 1;
            }
        }
    }
    Ok(Tensor::from_vec(v, (rows.len(), t, width), device)?)
}

impl BatchFeatures {
    /// `rows[r]` holds row r's units, which start at position 1 of a row of `t`.
    pub fn build(rows: &[&UnitFeatures], t: usize, device: &Device) -> Result<Self> {
        let b = rows.len();
        // A word list's bits, then its statistics' bits when it has them,
        // then (the general list) the bits of its frequent entries, or (the
        // standard's own list) a joint model's standard columns.
        let list = |bits: fn(&UnitFeatures) -> ListBits<'_>,
                    standards: bool|
         -> Result<Option<Tensor>> {
            if rows.iter().all(|r| bits(r).0.is_empty()) {
                return Ok(None);
            }
            let with_stats = rows.iter().any(|r| !bits(r).1.is_empty());
            let with_tier = rows.iter().any(|r| !bits(r).2.is_empty());
            let stats_at = LEXICON_FEATURES;
            let tier_at = stats_at + if with_stats { LIST_STAT_FEATURES } else { 0 };
            let lists = tier_at + if with_tier { LEXICON_FEATURES } else { 0 };
            let column = |f: &UnitFeatures| match f.standard {
                Some(StandardMark::Column { index, count }) if standards => Some((index, count)),
                _ => None,
            };
            let n_standards = rows.iter().filter_map(|&r| column(r)).map(|(_, n)| n).max();
            let n_standards = n_standards.unwrap_or(0);
            let columns = |f: &UnitFeatures| {
                let (lex, stats, tier) = bits(f);
                let units = lex.len();
                let lex = lex.iter().enumerate();
                let standard = column(f);
                lex.map(|(k, &b)| (k, 0, u64::from(b)))
                    .chain(stats.iter().enumerate().map(|(k, &b)| (k, stats_at, b)))
                    .chain((tier.iter().enumerate()).map(|(k, &b)| (k, tier_at, u64::from(b))))
                    .chain(
                        standard
                            .into_iter()
                            .flat_map(|(s, _)| (0..units).map(move |k| (k, lists, 1 << s))),
                    )
                    .collect()
            };
            bit_tensor(rows, t, lists + n_standards, columns, device).map(Some)
        };
        let lexicon = list(|f| (&f.lexicon, &f.stats, &[]), true)?;
        let general = list(
            |f| (&f.general, &f.general_stats, &f.general_frequent),
            false,
        )?;
        let bigrams = if rows.iter().any(|r| !r.bigrams.is_empty()) {
            let mut v = vec![0u32; b * t * 2];
            for (r, f) in rows.iter().enumerate() {
                for (k, pair) in f.bigrams.iter().enumerate() {
                    let base = (r * t + 1 + k) * 2;
                    v[base..base + 2].copy_from_slice(pair);
                }
            }
            Some(Tensor::from_vec(v, (b, t, 2), device)?)
        } else {
            None
        };
        Ok(BatchFeatures {
            lexicon,
            bigrams,
            general,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The columns of a row of 0/1 features that are set, as bits.
    fn set_bits(row: &[f32]) -> u64 {
        row.iter()
            .enumerate()
            .filter(|(_, &v)| v == 1.0)
            .fold(0, |a, (i, _)| a | 1 << i)
    }

    fn keys(s: &str) -> Vec<String> {
        split_units(s).iter().map(|u| u.key()).collect()
    }

    #[test]
    fn a_joint_lexicon_reads_each_standards_own_words_and_its_column() {
        let mut lex = Lexicon::default();
        lex.insert_for("北京", 0);
        lex.insert_for("北京大学", 1);
        assert!(lex.contains("北京") && !lex.contains_for("北京", 1));
        assert!(lex.contains_for("北京大学", 1) && !lex.contains("北京大学"));
        let k = keys("北京大学");
        let spec = FeatureSpec {
            lexicon: Some(lex),
            standards: 2,
            ..FeatureSpec::default()
        };
        let by0 = spec.compute_for(&k, None, 0);
        let by1 = spec.compute_for(&k, None, 1);
        assert_eq!(by0.lexicon, [1 << 1, 1 << 5, 0, 0]);
        assert_eq!(by1.lexicon, [1 << 3, 1 << 9, 1 << 9, 1 << 7]);
        let column = |index| Some(StandardMark::Column { index, count: 2 });
        assert_eq!((by0.standard, by1.standard), (column(0), column(1)));
        // The standard's column follows the lexicon bits, on every unit.
        let batch = BatchFeatures::build(&[&by0, &by1.slice(1..3)], 5, &Device::Cpu).unwrap();
        let t = batch.lexicon.unwrap().to_vec3::<f32>().unwrap();
        assert_eq!(t[0][0].len(), LEXICON_FEATURES + 2);
        for (row, units, column) in [(0, 1..5, 10), (1, 1..3, 11)] {
            for (p, at) in t[row].iter().enumerate() {
                let on = units.contains(&p);
                assert_eq!(at[column], on as u8 as f32, "row {row} position {p}");
                assert_eq!(at[21 - column], 0.0);
            }
        }
        // In the token form the batch carries the token in [CLS]'s place,
        // and no column.
        let tokens = FeatureSpec {
            standard_tokens: vec![7, 8],
            ..spec.clone()
        };
        let by1 = tokens.compute_for(&k, None, 1);
        assert_eq!(by1.standard, Some(StandardMark::Token(8)));
        let batch = BatchFeatures::build(&[&by1], 6, &Device::Cpu).unwrap();
        assert_eq!(batch.lexicon.unwrap().dims(), [1, 6, LEXICON_FEATURES]);
        let mut hidden = spec.clone();
        hidden.hide_words_of(1, [k.as_slice()]);
        assert_eq!(hidden.compute_for(&k, None, 1).lexicon, [0; 4]);
        assert_eq!(hidden.compute_for(&k, None, 0).lexicon, by0.lexicon);
    }
    #[test]
    fn lexicon_bits_mark_starts_ends_and_insides() {
        let lex = Lexicon::from_words(["北京大学", "大学", "学", "１９９８年"]);
        let bits = lex.features(&keys("北京大学生"), None);
        // 北 starts a 4-unit word; 京 and 大 are inside it; 大 starts 大学;
        // 学 ends both and is a word by itself.
        assert_eq!(bits[0], 1 << 3);
        assert_eq!(bits[1], 1 << 9);
        assert_eq!(bits[2], 1 << 9 | 1 << 1);
        assert_eq!(bits[3], 1 | 1 << 5 | 1 << 7);
        assert_eq!(bits[4], 0);
        assert!(lex.contains("1998年"));
        assert_eq!(lex.features(&keys("0年"), None), [1 << 1, 1 << 5]);
    }

    #[test]
    fn lexicon_dropout_is_seeded() {
        let words: Vec<String> = (0..2000)
            .map(|i| format!("{}词", char::from_u32(0x4E00 + i).unwrap()))
            .collect();
        let lex = Lexicon::from_words(&words);
        let count = |seed| {
            words
                .iter()
                .filter(|w| lex.features(&keys(w), Some((seed, 0.25)))[0] != 0)
                .count()
        };
        let kept = count(7);
        assert_eq!(kept, count(7));
        assert!((1300..1700).contains(&kept), "{kept} of 2000 kept");
    }

    #[test]
    fn list_stats_count_positions_and_pairs() {
        let stats = ListStats::from_words(["北京大学", "北京", "大学", "大学", "学"]);
        let k = keys("北京大学");
        let pairs = FeatureSpec::bigram_pairs(&k);
        let bits = stats.bits(&k, &pairs);
        // Group g's bin b is bit g * STAT_BINS + b; bins: 0, 1, 2–3, …
        let bit = |g: usize, n: u32| 1u64 << (g * STAT_BINS + count_bin(n));
        // 北 begins 北京大学 and 北京; the one-unit 学 and the repeated 大学
        // count nothing and once.
        let expect =
            |b, i, e, left, right| bit(0, b) | bit(1, i) | bit(2, e) | bit(3, left) | bit(4, right);
        assert_eq!(bits[0], expect(2, 0, 0, 0, 2)); // 北: pair 北京 in two words
        assert_eq!(bits[1], expect(0, 1, 1, 2, 1)); // 京: inside one, ends one
        assert_eq!(bits[2], expect(1, 1, 0, 1, 2)); // 大
        assert_eq!(bits[3], expect(0, 0, 2, 2, 0)); // 学: pair 学 + edge in none
        assert_eq!(
            (count_bin(0), count_bin(1), count_bin(3), count_bin(4)),
            (0, 1, 2, 3)
        );
        assert_eq!(count_bin(u32::MAX), STAT_BINS - 1);
    }

    #[test]
    fn hidden_words_leave_the_statistics() {
        let words = ["北京大学", "北京", "大学", "中学"];
        let mut spec = FeatureSpec {
            lexicon: Some(Lexicon::from_words(words)),
            list_stats: Some(ListStats::from_words(words)),
            ..FeatureSpec::default()
        };
        let k = keys("北京大学中学生");
        let pairs = FeatureSpec::bigram_pairs(&k);
        // Hiding a word the list lacks changes nothing; hiding one twice
        // counts once.
        let (gone, absent) = (keys("大学"), keys("学生"));
        spec.hide_words([gone.as_slice(), absent.as_slice(), gone.as_slice()]);
        let expected = ListStats::from_words(["北京大学", "北京", "中学"]);
        assert_eq!(spec.compute(&k, None).stats, expected.bits(&k, &pairs));
        assert!(!spec.lexicon.as_ref().unwrap().contains("大学"));
        // And they survive a round trip through a model folder's file.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(crate::model_dir::LIST_STATS_FILE);
        spec.list_stats.as_ref().unwrap().save(&path).unwrap();
        assert_eq!(
            ListStats::load(&path).unwrap().bits(&k, &pairs),
            expected.bits(&k, &pairs)
        );
        // Batches put the statistics after the lexicon bits.
        let f = spec.compute(&k, None);
        let batch = BatchFeatures::build(&[&f], k.len() + 2, &Device::Cpu).unwrap();
        let m = batch.lexicon.unwrap().to_vec3::<f32>().unwrap();
        assert_eq!(m[0][1].len(), LEXICON_FEATURES + LIST_STAT_FEATURES);
        assert_eq!(set_bits(&m[0][1][LEXICON_FEATURES..]), f.stats[0]);
        assert_eq!(
            set_bits(&m[0][1][..LEXICON_FEATURES]),
            u64::from(f.lexicon[0])
        );
        assert!(m[0][0].iter().all(|&v| v == 0.0));
    }

    #[test]
    fn the_general_list_is_a_channel_of_its_own() {
        let general = ["北京大学", "大学生"];
        let spec = FeatureSpec {
            lexicon: Some(Lexicon::from_words(["北京", "大学"])),
            general_lexicon: Some(Lexicon::from_words(general)),
            general_stats: Some(ListStats::from_words(general)),
            ..FeatureSpec::default()
        };
        let k = keys("北京大学生");
        let f = spec.compute(&k, None);
        // Each list marks its own words only; the standard's list has no
        // statistics here, the general one has.
        assert_eq!(f.lexicon, spec.lexicon.as_ref().unwrap().features(&k, None));
        assert_eq!(f.general, Lexicon::from_words(general).features(&k, None));
        assert_ne!(f.lexicon, f.general);
        assert!(f.stats.is_empty());
        let pairs = FeatureSpec::bigram_pairs(&k);
        let stats = ListStats::from_words(general).bits(&k, &pairs);
        assert_eq!(f.general_stats, stats);
        // In a batch: a tensor each, the general one with its statistics.
        let t = k.len() + 2;
        let batch = BatchFeatures::build(&[&f], t, &Device::Cpu).unwrap();
        let lex = batch.lexicon.unwrap().to_vec3::<f32>().unwrap();
        let gen = batch.general.unwrap().to_vec3::<f32>().unwrap();
        assert_eq!(lex[0][1].len(), LEXICON_FEATURES);
        assert_eq!(gen[0][1].len(), LEXICON_FEATURES + LIST_STAT_FEATURES);
        for u in 0..k.len() {
            assert_eq!(set_bits(&lex[0][u + 1]), u64::from(f.lexicon[u]));
            assert_eq!(
                set_bits(&gen[0][u + 1][..LEXICON_FEATURES]),
                u64::from(f.general[u])
            );
            assert_eq!(set_bits(&gen[0][u + 1][LEXICON_FEATURES..]), stats[u]);
        }
        assert!(gen[0][0].iter().chain(&gen[0][t - 1]).all(|&v| v == 0.0));
    }

    #[test]
    fn the_general_lists_frequent_entries_have_bits_of_their_own() {
        let mut general = Lexicon::from_words(["北京大学", "大学生", "北京"]);
        general.insert_for("大学生", FREQUENT_TIER);
        general.insert_for("北京", FREQUENT_TIER);
        let spec = FeatureSpec {
            general_lexicon: Some(general),
            general_frequent: true,
            ..FeatureSpec::default()
        };
        let k = keys("北京大学生");
        let f = spec.compute(&k, None);
        let all = Lexicon::from_words(["北京大学", "大学生", "北京"]).features(&k, None);
        let frequent = Lexicon::from_words(["大学生", "北京"]).features(&k, None);
        assert_eq!(f.general, all);
        assert_eq!(f.general_frequent, frequent);
        assert_ne!(all, frequent);
        // In a batch: the frequent entries' bits after the list's own.
        let t = k.len() + 2;
        let batch = BatchFeatures::build(&[&f], t, &Device::Cpu).unwrap();
        let gen = batch.general.unwrap().to_vec3::<f32>().unwrap();
        assert_eq!(gen[0][1].len(), 2 * LEXICON_FEATURES);
        for u in 0..k.len() {
            assert_eq!(
                set_bits(&gen[0][u + 1][..LEXICON_FEATURES]),
                u64::from(all[u])
            );
            assert_eq!(
                set_bits(&gen[0][u + 1][LEXICON_FEATURES..]),
                u64::from(frequent[u])
            );
        }
        // Unmarked, the same list reads as one list of ten bits.
        let plain = FeatureSpec {
            general_frequent: false,
            ..spec
        };
        let f = plain.compute(&k, None);
        assert!(f.general_frequent.is_empty());
        let batch = BatchFeatures::build(&[&f], t, &Device::Cpu).unwrap();
        let dims = batch.general.unwrap().dims().to_vec();
        assert_eq!(dims, [1, t, LEXICON_FEATURES]);
    }

    #[test]
    fn lexicon_survives_a_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let lex = Lexicon::from_words(["中国", "人民银行"]);
        lex.save(&dir.path().join(crate::model_dir::LEXICON_FILE))
            .unwrap();
        let back = Lexicon::load(&dir.path().join(crate::model_dir::LEXICON_FILE)).unwrap();
        assert!(back.contains("人民银行") && back.contains("中国") && !back.contains("人民"));
        assert_eq!(back.features(&keys("人民银行"), None)[0], 1 << 3);
    }
}
