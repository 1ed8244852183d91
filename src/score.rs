//! SIGHAN-compatible scoring: recall, precision, F1, OOV rate, OOV recall and
//! IV recall of a predicted segmentation against a gold one.
//!
//! The official SIGHAN 2005 `score` script pairs gold and system lines by line
//! number, writes each side one word per line and runs GNU `diff -y` on the two
//! lists; a word counts as correct when diff leaves it unchanged. Which words
//! diff leaves unchanged is not simply "a longest common subsequence": GNU diff
//! first skips identical leading and trailing lines, then discards "confusing"
//! lines (no match on the other side, or too many matches inside a run of
//! discards), then aligns the rest with Myers' divide-and-conquer search. This
//! module follows those steps (GNU diffutils `analyze.c` and gnulib `diffseq.h`,
//! without the heuristics that only engage after 4096 edit steps in one line),
//! so its counts equal the script's; the test suite checks that against the real
//! `diff` binary on the SIGHAN test sets.

use crate::corpus::{split_words, Line};
use std::collections::{HashMap, HashSet};

/// Counts over a whole file pair; ratios are derived from them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    pub gold_words: usize,
    pub pred_words: usize,
    pub correct: usize,
    /// Gold words absent from the training word list, and how many were correct.
    pub oov_words: usize,
    pub oov_correct: usize,
    pub lines_scored: usize,
    /// Line numbers where gold and prediction do not cover the same text.
    pub text_mismatch_lines: Vec<usize>,
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

impl Counts {
    /// Adds the counts of another scored file (lines included).
    pub fn add(&mut self, other: &Counts) {
        self.gold_words += other.gold_words;
        self.pred_words += other.pred_words;
        self.correct += other.correct;
        self.oov_words += other.oov_words;
        self.oov_correct += other.oov_correct;
        self.lines_scored += other.lines_scored;
        (self.text_mismatch_lines).extend_from_slice(&other.text_mismatch_lines);
    }

    pub fn recall(&self) -> f64 {
        ratio(self.correct, self.gold_words)
    }
    pub fn precision(&self) -> f64 {
        ratio(self.correct, self.pred_words)
    }
    pub fn f1(&self) -> f64 {
        let (p, r) = (self.precision(), self.recall());
        if p + r == 0.0 {
            0.0
        } else {
            2.0 * p * r / (p + r)
        }
    }
    pub fn oov_rate(&self) -> f64 {
        ratio(self.oov_words, self.gold_words)
    }
    pub fn oov_recall(&self) -> f64 {
        ratio(self.oov_correct, self.oov_words)
    }
    pub fn iv_recall(&self) -> f64 {
        ratio(
            self.correct - self.oov_correct,
            self.gold_words - self.oov_words,
        )
    }
}

/// Scores predicted lines against gold lines, paired by position. Lines whose
/// gold side is empty are skipped, as the official script does. `training_words`
/// decides OOV status (with no list, OOV figures are reported as 0 words).
pub fn score_lines(
    gold: &[Line],
    pred: &[Line],
    training_words: Option<&HashSet<String>>,
) -> Counts {
    let mut counts = Counts::default();
    for (i, g) in gold.iter().enumerate() {
        let gold_words = words_of(&g.text);
        if gold_words.is_empty() {
            continue;
        }
        let pred_words = pred.get(i).map(|p| words_of(&p.text)).unwrap_or_default();
        counts.lines_scored += 1;
        if gold_words.concat() != pred_words.concat() {
            counts.text_mismatch_lines.push(g.number);
        }
        let matched = unchanged_words(&gold_words, &pred_words);
        counts.gold_words += gold_words.len();
        counts.pred_words += pred_words.len();
        for (w, hit) in gold_words.iter().zip(&matched) {
            let oov = training_words.is_some_and(|t| !t.contains(*w));
            counts.correct += *hit as usize;
            if oov {
                counts.oov_words += 1;
                counts.oov_correct += *hit as usize;
            }
        }
    }
    counts
}

fn words_of(line: &str) -> Vec<&str> {
    // The script strips the line and maps U+3000 to a space before splitting;
    // `split_words` splits on every Unicode whitespace, U+3000 included.
    split_words(line)
}

/// For each gold word, whether GNU diff leaves it unchanged when the two word
/// lists are compared one word per line.
pub fn unchanged_words<'w>(gold: &[&'w str], pred: &[&'w str]) -> Vec<bool> {
    let mut ids: HashMap<&'w str, u32> = HashMap::new();
    let mut id_of = |w: &'w str| {
        let n = ids.len() as u32;
        *ids.entry(w).or_insert(n)
    };
    let a: Vec<u32> = gold.iter().map(|w| id_of(w)).collect();
    let b: Vec<u32> = pred.iter().map(|w| id_of(w)).collect();
    let mut matched = vec![false; a.len()];

    // Identical leading and trailing lines never enter the analysis.
    let mut lo = 0;
    while lo < a.len() && lo < b.len() && a[lo] == b[lo] {
        matched[lo] = true;
        lo += 1;
    }
    let (mut ha, mut hb) = (a.len(), b.len());
    while ha > lo && hb > lo && a[ha - 1] == b[hb - 1] {
        matched[ha - 1] = true;
        ha -= 1;
        hb -= 1;
    }
    let (a_mid, b_mid) = (&a[lo..ha], &b[lo..hb]);
    if a_mid.is_empty() || b_mid.is_empty() {
        return matched;
    }
    let keep_a = kept_after_discards(a_mid, b_mid);
    let keep_b = kept_after_discards(b_mid, a_mid);
    let xa: Vec<u32> = keep_a.iter().map(|&i| a_mid[i]).collect();
    let xb: Vec<u32> = keep_b.iter().map(|&i| b_mid[i]).collect();
    for k in Aligner::new(&xa, &xb).matches() {
        matched[lo + keep_a[k]] = true;
    }
    matched
}

/// Indices of `lines` that survive GNU diff's `discard_confusing_lines`.
fn kept_after_discards(lines: &[u32], other: &[u32]) -> Vec<usize> {
    let mut in_other: HashMap<u32, usize> = HashMap::new();
    for &x in other {
        *in_other.entry(x).or_default() += 1;
    }
    // A line matching nothing is discarded (1); one matching more than `many`
    // lines (about the square root of the file length) is provisional (2).
    let end = lines.len();
    let mut many = 5usize;
    let mut tem = end / 64;
    loop {
        tem >>= 2;
        if tem == 0 {
            break;
        }
        many *= 2;
    }
    let mut discards: Vec<u8> = lines
        .iter()
        .map(|x| match in_other.get(x).copied().unwrap_or(0) {
            0 => 1,
            n if n > many => 2,
            _ => 0,
        })
        .collect();

    // Provisional discards stand only inside a run of discards bounded by real
    // ones, and not where they are a large part of it.
    let mut i = 0;
    while i < end {
        if discards[i] == 2 {
            discards[i] = 0;
        } else if discards[i] != 0 {
            let mut j = i;
            let mut provisional = 0usize;
            while j < end && discards[j] != 0 {
                provisional += (discards[j] == 2) as usize;
                j += 1;
            }
            while j > i && discards[j - 1] == 2 {
                j -= 1;
                discards[j] = 0;
                provisional -= 1;
            }
            let length = j - i;
            if provisional * 4 > length {
                for d in &mut discards[i..j] {
                    if *d == 2 {
                        *d = 0;
                    }
                }
            } else {
                let mut minimum = 1usize;
                let mut t = length >> 2;
                loop {
                    t >>= 2;
                    if t == 0 {
                        break;
                    }
                    minimum <<= 1;
                }
                minimum += 1;
                // Cancel every subrun of `minimum` or more provisionals.
                let mut k = 0usize;
                let mut consec = 0usize;
                while k < length {
                    if discards[i + k] != 2 {
                        consec = 0;
                    } else {
                        consec += 1;
                        if consec == minimum {
                            k -= consec;
                        } else if consec > minimum {
                            discards[i + k] = 0;
                        }
                    }
                    k += 1;
                }
                // From each end, cancel provisionals until three real discards
                // in a row, or a real one at least eight lines in.
                cancel_edge_provisionals(&mut discards, (0..length).map(|k| i + k));
                i += length - 1;
                cancel_edge_provisionals(&mut discards, (0..length).map(|k| i - k));
            }
        }
        i += 1;
    }
    (0..end).filter(|&k| discards[k] == 0).collect()
}

fn cancel_edge_provisionals(discards: &mut [u8], order: impl Iterator<Item = usize>) {
    let mut consec = 0;
    for (j, at) in order.enumerate() {
        if j >= 8 && discards[at] == 1 {
            break;
        }
        match discards[at] {
            2 => {
                consec = 0;
                discards[at] = 0;
            }
            0 => consec = 0,
            _ => consec += 1,
        }
        if consec == 3 {
            break;
        }
    }
}

/// Myers' divide-and-conquer alignment as gnulib's `diffseq.h` runs it, with
/// an explicit stack instead of recursion so a huge line cannot overflow it.
struct Aligner<'a> {
    a: &'a [u32],
    b: &'a [u32],
    fd: Vec<isize>,
    bd: Vec<isize>,
    /// Index of diagonal 0 in `fd`/`bd`.
    zero: isize,
}

impl<'a> Aligner<'a> {
    fn new(a: &'a [u32], b: &'a [u32]) -> Self {
        let size = a.len() + b.len() + 3;
        Aligner {
            a,
            b,
            fd: vec![0; size],
            bd: vec![0; size],
            zero: b.len() as isize + 1,
        }
    }

    /// Indices into `a` that the alignment matches.
    fn matches(mut self) -> Vec<usize> {
        let mut out = Vec::new();
        let mut stack = vec![(0isize, self.a.len() as isize, 0isize, self.b.len() as isize)];
        while let Some((mut xoff, mut xlim, mut yoff, mut ylim)) = stack.pop() {
            while xoff < xlim && yoff < ylim && self.eq(xoff, yoff) {
                out.push(xoff as usize);
                xoff += 1;
                yoff += 1;
            }
            while xoff < xlim && yoff < ylim && self.eq(xlim - 1, ylim - 1) {
                out.push((xlim - 1) as usize);
                xlim -= 1;
                ylim -= 1;
            }
            if xoff == xlim || yoff == ylim {
                continue;
            }
            let (xmid, ymid) = self.middle_snake(xoff, xlim, yoff, ylim);
            stack.push((xmid, xlim, ymid, ylim));
            stack.push((xoff, xmid, yoff, ymid));
        }
        out
    }

    fn eq(&self, x: isize, y: isize) -> bool {
        self.a[x as usize] == self.b[y as usize]
    }

    fn f(&mut self, d: isize) -> &mut isize {
        &mut self.fd[(d + self.zero) as usize]
    }

    fn bk(&mut self, d: isize) -> &mut isize {
        &mut self.bd[(d + self.zero) as usize]
    }

    /// The point where the forward and backward searches of a minimal edit
    /// path meet.
    fn middle_snake(
        &mut self,
        xoff: isize,
        xlim: isize,
        yoff: isize,
        ylim: isize,
    ) -> (isize, isize) {
        let dmin = xoff - ylim;
        let dmax = xlim - yoff;
        let fmid = xoff - yoff;
        let bmid = xlim - ylim;
        let (mut fmin, mut fmax, mut bmin, mut bmax) = (fmid, fmid, bmid, bmid);
        let odd = (fmid - bmid) & 1 != 0;
        *self.f(fmid) = xoff;
        *self.bk(bmid) = xlim;
        loop {
            if fmin > dmin {
                fmin -= 1;
                *self.f(fmin - 1) = -1;
            } else {
                fmin += 1;
            }
            if fmax < dmax {
                fmax += 1;
                *self.f(fmax + 1) = -1;
            } else {
                fmax -= 1;
            }
            let mut d = fmax;
            while d >= fmin {
                let (tlo, thi) = (*self.f(d - 1), *self.f(d + 1));
                let mut x = if tlo < thi { thi } else { tlo + 1 };
                let mut y = x - d;
                while x < xlim && y < ylim && self.eq(x, y) {
                    x += 1;
                    y += 1;
                }
                *self.f(d) = x;
                if odd && bmin <= d && d <= bmax && *self.bk(d) <= x {
                    return (x, y);
                }
                d -= 2;
            }
            if bmin > dmin {
                bmin -= 1;
                *self.bk(bmin - 1) = isize::MAX;
            } else {
                bmin += 1;
            }
            if bmax < dmax {
                bmax += 1;
                *self.bk(bmax + 1) = isize::MAX;
            } else {
                bmax -= 1;
            }
            let mut d = bmax;
            while d >= bmin {
                let (tlo, thi) = (*self.bk(d - 1), *self.bk(d + 1));
                let mut x = if tlo < thi { tlo } else { thi - 1 };
                let mut y = x - d;
                while xoff < x && yoff < y && self.eq(x - 1, y - 1) {
                    x -= 1;
                    y -= 1;
                }
                *self.bk(d) = x;
                if !odd && fmin <= d && d <= fmax && x <= *self.f(d) {
                    return (x, y);
                }
                d -= 2;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hits(g: &str, p: &str) -> usize {
        let g: Vec<&str> = g.split(' ').collect();
        let p: Vec<&str> = p.split(' ').collect();
        unchanged_words(&g, &p).iter().filter(|&&h| h).count()
    }

    #[test]
    fn identical_and_disjoint() {
        assert_eq!(hits("a b c", "a b c"), 3);
        assert_eq!(hits("a b c", "x y z"), 0);
    }

    #[test]
    fn longest_common_subsequence_when_small() {
        assert_eq!(hits("我 爱 北京 天安门", "我 爱北京 天安门"), 2);
        assert_eq!(hits("a b c d e f", "a c b d f e"), 4);
    }

    #[test]
    fn figures() {
        let line = |t: &str| Line {
            number: 1,
            text: t.to_string(),
        };
        let words: HashSet<String> = ["我", "爱"].iter().map(|s| s.to_string()).collect();
        let c = score_lines(
            &[line("我  爱  北京")],
            &[line("我 爱 北 京")],
            Some(&words),
        );
        assert_eq!((c.gold_words, c.pred_words, c.correct), (3, 4, 2));
        assert_eq!((c.oov_words, c.oov_correct), (1, 0));
        assert!((c.f1() - 2.0 * (2.0 / 4.0) * (2.0 / 3.0) / (2.0 / 4.0 + 2.0 / 3.0)).abs() < 1e-12);
        assert_eq!(c.iv_recall(), 1.0);
        assert!(c.text_mismatch_lines.is_empty());
    }
}
