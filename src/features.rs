//! Unit features beyond the unit's own id, added to the embeddings of a model
//! that was trained with them:
//! - **lexicon matches**: for each unit, which words of a word list start, end,
//!   contain or are it (the "dictionary features" of lexicon-enhanced CWS);
//! - **hashed bigrams**: the unit with its left and with its right neighbour,
//!   each hashed into a shared table of `bigram_buckets` embeddings.
//!
//! The word list travels with the model as 64-bit hashes of the words' unit keys
//! (`lexicon.safetensors`), not as text: what the model needs is membership, and
//! hashes keep a model folder from carrying a copy of the list it was trained with.

use crate::units::split_units;
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use std::collections::{HashMap, HashSet};
use std::path::Path;

/// Lexicon feature bits per unit: 0 = the unit alone is a word; 1..=4 = a word
/// of 2, 3, 4, ≥5 units starts here; 5..=8 = one ends here; 9 = the unit lies
/// strictly inside a word.
pub const LEXICON_FEATURES: usize = 10;

/// Config keys (in `config.json`) that switch the features on.
pub const LEXICON_KEY: &str = "cws_lexicon_features";
pub const BIGRAM_KEY: &str = "cws_bigram_buckets";
/// File name of the hashed word list inside a model folder.
pub const LEXICON_FILE: &str = "lexicon.safetensors";
/// Config key and file of the set of bigrams seen in training (hashed): other
/// bigrams share the "unseen" embedding instead of a bucket trained for others.
pub const BIGRAM_SEEN_KEY: &str = "cws_bigram_seen";
pub const BIGRAM_SEEN_FILE: &str = "bigrams.safetensors";

/// A stable hash of a word's unit keys (the key of its lexicon entry).
pub fn word_hash(word: &str) -> u64 {
    hash_keys(&Lexicon::keys(word))
}

/// The key standing for "no unit" beyond a sequence's ends, in bigrams.
const EDGE: &str = "\u{2}";

/// FNV-1a over the units' keys, each followed by a separator byte.
fn hash_keys(keys: &[String]) -> u64 {
    let mut h = Fnv::new();
    for k in keys {
        h.push(k);
    }
    h.0
}

#[derive(Clone, Copy)]
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn push(&mut self, key: &str) {
        for b in key.bytes().chain(std::iter::once(0x1f)) {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// SplitMix64 finaliser: spreads a hash so that its high bits are uniform.
pub(crate) fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A word list as a set of hashes of the words' unit keys (so `１９９８年`,
/// `1998年` and `0年` are the same entry).
#[derive(Debug, Clone, Default)]
pub struct Lexicon {
    hashes: HashSet<u64>,
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
    fn keys(word: &str) -> Vec<String> {
        split_units(word).iter().map(|u| u.key()).collect()
    }

    pub fn insert(&mut self, word: &str) {
        let keys = Self::keys(word);
        if keys.is_empty() {
            return;
        }
        self.max_units = self.max_units.max(keys.len());
        self.hashes.insert(hash_keys(&keys));
    }

    pub fn remove(&mut self, word: &str) {
        self.hashes.remove(&hash_keys(&Self::keys(word)));
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
        self.hashes.contains(&hash_keys(&Self::keys(word)))
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

    pub fn load(path: &Path) -> Result<Self> {
        let t = candle_core::safetensors::load(path, &Device::Cpu)
            .with_context(|| format!("cannot read the lexicon {}", path.display()))?;
        let get = |name: &str| -> Result<Vec<i64>> {
            t.get(name)
                .with_context(|| format!("{} lacks the tensor {name:?}", path.display()))?
                .to_vec1::<i64>()
                .with_context(|| format!("{}: {name:?} is not a 1-D i64 tensor", path.display()))
        };
        let max_units = *get("max_units")?
            .first()
            .with_context(|| format!("{}: empty max_units", path.display()))?;
        Ok(Lexicon {
            hashes: get("hashes")?.into_iter().map(|h| h as u64).collect(),
            max_units: max_units.max(0) as usize,
        })
    }

    /// Feature bits of every unit of `keys`. With `dropout = Some((seed, p))`
    /// each entry is skipped with probability `p`, the same entries for the same
    /// seed: training sees words missing from the list, as it will at test time.
    pub fn features(&self, keys: &[String], dropout: Option<(u64, f64)>) -> Vec<u16> {
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
                if !self.hashes.contains(&h.0) || !kept(h.0) {
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

/// The hashed list `file` in a model folder whose config says it uses `what`.
fn load_required(dir: &Path, file: &str, what: &str) -> Result<Lexicon> {
    let path = dir.join(file);
    if !path.is_file() {
        bail!("the model uses {what} but {} is missing", path.display());
    }
    Lexicon::load(&path)
}

/// Which features a model reads, and what they need (its lexicon).
#[derive(Debug, Clone, Default)]
pub struct FeatureSpec {
    pub lexicon: Option<Lexicon>,
    /// Size of the hashed bigram table; 0 = no bigram features.
    pub bigram_buckets: usize,
    /// Bigrams that get a bucket (hashed like two-unit words); the rest get
    /// bucket 0, the embedding of "no known bigram". None = every bigram.
    pub bigram_seen: Option<Lexicon>,
}

/// Features of one sequence of units, sliceable into windows.
#[derive(Debug, Clone, Default)]
pub struct UnitFeatures {
    /// Lexicon bits per unit (empty without a lexicon).
    pub lexicon: Vec<u16>,
    /// Left and right bigram bucket per unit (empty without bigrams).
    pub bigrams: Vec<[u32; 2]>,
}

impl UnitFeatures {
    pub fn slice(&self, r: std::ops::Range<usize>) -> Self {
        UnitFeatures {
            lexicon: if self.lexicon.is_empty() {
                Vec::new()
            } else {
                self.lexicon[r.clone()].to_vec()
            },
            bigrams: if self.bigrams.is_empty() {
                Vec::new()
            } else {
                self.bigrams[r].to_vec()
            },
        }
    }
}

impl FeatureSpec {
    pub fn is_empty(&self) -> bool {
        self.lexicon.is_none() && self.bigram_buckets == 0
    }

    /// Reads the features a model config asks for; the lexicon comes from
    /// `lexicon.safetensors` in `dir`.
    pub fn for_model(config: &crate::model::BertConfig, dir: &Path) -> Result<Self> {
        let lexicon = match config.extra.get(LEXICON_KEY).and_then(|v| v.as_u64()) {
            None | Some(0) => None,
            Some(n) if n as usize == LEXICON_FEATURES => {
                Some(load_required(dir, LEXICON_FILE, "lexicon features")?)
            }
            Some(n) => {
                bail!("{LEXICON_KEY} = {n}, but this cws has {LEXICON_FEATURES} lexicon features")
            }
        };
        let bigram_buckets = config
            .extra
            .get(BIGRAM_KEY)
            .and_then(|v| v.as_u64())
            .unwrap_or(0) as usize;
        let bigram_seen = match config.extra.get(BIGRAM_SEEN_KEY).and_then(|v| v.as_bool()) {
            Some(true) => Some(load_required(dir, BIGRAM_SEEN_FILE, "a seen-bigram list")?),
            _ => None,
        };
        Ok(FeatureSpec {
            lexicon,
            bigram_buckets,
            bigram_seen,
        })
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
            .map(|i| {
                let mut pair = Fnv::new();
                pair.push(at(i));
                pair.push(at(i + 1));
                pair.0
            })
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
        let lexicon = self
            .lexicon
            .as_ref()
            .map(|l| l.features(keys, lexicon_dropout))
            .unwrap_or_default();
        let bigrams = if self.bigram_buckets > 0 {
            let at = |i: isize| -> &str {
                if i < 0 || i as usize >= keys.len() {
                    EDGE
                } else {
                    &keys[i as usize]
                }
            };
            // Pair hashes only matter for the seen-bigram test.
            let pairs = self.bigram_seen.as_ref().map(|_| Self::bigram_pairs(keys));
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
        UnitFeatures { lexicon, bigrams }
    }
}

/// Padded feature tensors of a batch, laid out like its `input_ids` ([CLS] at 0).
pub struct BatchFeatures {
    /// f32 `[b, t, LEXICON_FEATURES]` of 0/1.
    pub lexicon: Option<Tensor>,
    /// u32 `[b, t, 2]` bucket ids.
    pub bigrams: Option<Tensor>,
}

impl BatchFeatures {
    pub fn none() -> Self {
        BatchFeatures {
            lexicon: None,
            bigrams: None,
        }
    }

    /// `rows[r]` holds row r's units, which start at position 1 of a row of `t`.
    pub fn build(rows: &[&UnitFeatures], t: usize, device: &Device) -> Result<Self> {
        let b = rows.len();
        let lexicon = if rows.iter().any(|r| !r.lexicon.is_empty()) {
            let mut v = vec![0f32; b * t * LEXICON_FEATURES];
            for (r, f) in rows.iter().enumerate() {
                for (k, bits) in f.lexicon.iter().enumerate() {
                    let base = (r * t + 1 + k) * LEXICON_FEATURES;
                    for (bit, slot) in v[base..base + LEXICON_FEATURES].iter_mut().enumerate() {
                        if bits & (1 << bit) != 0 {
                            *slot = 1.0;
                        }
                    }
                }
            }
            Some(Tensor::from_vec(v, (b, t, LEXICON_FEATURES), device)?)
        } else {
            None
        };
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
        Ok(BatchFeatures { lexicon, bigrams })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(s: &str) -> Vec<String> {
        split_units(s).iter().map(|u| u.key()).collect()
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
    fn lexicon_survives_a_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let lex = Lexicon::from_words(["中国", "人民银行"]);
        lex.save(&dir.path().join(LEXICON_FILE)).unwrap();
        let back = Lexicon::load(&dir.path().join(LEXICON_FILE)).unwrap();
        assert!(back.contains("人民银行") && back.contains("中国") && !back.contains("人民"));
        assert_eq!(back.features(&keys("人民银行"), None)[0], 1 << 3);
    }
}
