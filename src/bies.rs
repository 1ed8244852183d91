//! BIES labels: words ↔ one label per unit, repair of invalid label sequences,
//! and constrained Viterbi decoding of per-unit label scores.
//!
//! Labels and their ids (the model's output order and `id2label` in config.json):
//! B=0 begins a word of two or more units, I=1 is inside one, E=2 ends one,
//! S=3 is a single-unit word.
//!
//! Valid transitions (a word must be closed before the next one begins):
//!
//! | from \ to | B | I | E | S |
//! |-----------|---|---|---|---|
//! | start     | ✓ |   |   | ✓ |
//! | B, I      |   | ✓ | ✓ |   |
//! | E, S      | ✓ |   |   | ✓ |
//!
//! and the last label must be E or S.

use std::ops::Range;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Label {
    B = 0,
    I = 1,
    E = 2,
    S = 3,
}

pub const LABELS: [Label; 4] = [Label::B, Label::I, Label::E, Label::S];
pub const NUM_LABELS: usize = 4;
/// The labels' names, as `id2label` in config.json gives them.
pub const LABEL_NAMES: [&str; NUM_LABELS] = ["B", "I", "E", "S"];

impl Label {
    pub fn id(self) -> usize {
        self as usize
    }

    pub fn from_id(id: usize) -> Option<Label> {
        LABELS.get(id).copied()
    }

    pub fn as_char(self) -> char {
        ['B', 'I', 'E', 'S'][self.id()]
    }

    /// Whether a word may begin at a unit with this label.
    fn opens(self) -> bool {
        matches!(self, Label::B | Label::S)
    }

    /// Whether a word ends at a unit with this label.
    fn closes(self) -> bool {
        matches!(self, Label::E | Label::S)
    }

    fn may_follow(self, prev: Label) -> bool {
        prev.closes() == self.opens()
    }
}

/// Labels of the units of words with the given lengths (in units).
pub fn labels_from_lengths(lengths: &[usize]) -> Vec<Label> {
    let mut labels = Vec::with_capacity(lengths.iter().sum());
    for &n in lengths {
        match n {
            0 => {}
            1 => labels.push(Label::S),
            _ => {
                labels.push(Label::B);
                labels.extend(std::iter::repeat_n(Label::I, n - 2));
                labels.push(Label::E);
            }
        }
    }
    labels
}

/// Words (as unit ranges) from any label sequence.
///
/// Repair rule: a word boundary lies between two units whenever the first is E
/// or S, or the second is B or S. A valid sequence decodes to exactly its words;
/// an invalid one is cut as little as that rule allows (`B B` is two words, a
/// leading `I` starts a word, a trailing `B`/`I` ends the last word). Every unit
/// belongs to exactly one word, in order.
pub fn words_from_labels(labels: &[Label]) -> Vec<Range<usize>> {
    let mut words = Vec::new();
    let mut start = 0;
    for i in 1..=labels.len() {
        if i == labels.len() || labels[i - 1].closes() || labels[i].opens() {
            words.push(start..i);
            start = i;
        }
    }
    words
}

/// Whether `labels` is a valid BIES sequence.
pub fn is_valid(labels: &[Label]) -> bool {
    let mut prev_closes = true;
    for &l in labels {
        if prev_closes != l.opens() {
            return false;
        }
        prev_closes = l.closes();
    }
    prev_closes
}

/// A set of labels allowed at one unit, as a bit mask over label ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LabelSet(pub u8);

impl LabelSet {
    pub const ALL: LabelSet = LabelSet(0b1111);

    pub fn only(labels: &[Label]) -> LabelSet {
        LabelSet(labels.iter().fold(0, |m, l| m | (1 << l.id())))
    }

    pub fn contains(self, l: Label) -> bool {
        self.0 & (1 << l.id()) != 0
    }
}

/// Scores a label path collects besides its units' own: for each pair of
/// neighbours, for its first and for its last label. −∞ forbids.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Transitions {
    /// `pair[p][l]`: label p followed by label l.
    pub pair: [[f32; NUM_LABELS]; NUM_LABELS],
    pub start: [f32; NUM_LABELS],
    pub end: [f32; NUM_LABELS],
}

impl Transitions {
    /// Every path allowed, none preferred.
    pub const ZERO: Transitions = Transitions {
        pair: [[0.0; NUM_LABELS]; NUM_LABELS],
        start: [0.0; NUM_LABELS],
        end: [0.0; NUM_LABELS],
    };

    /// Only valid BIES sequences, none preferred (softmax models).
    pub fn bies() -> Transitions {
        Transitions::ZERO.restricted_to_bies()
    }

    /// These scores with every transition that breaks BIES forbidden (a CRF
    /// model's learned scores, for decoding).
    pub fn restricted_to_bies(mut self) -> Transitions {
        let neg = f32::NEG_INFINITY;
        for l in LABELS {
            if !l.opens() {
                self.start[l.id()] = neg;
            }
            if !l.closes() {
                self.end[l.id()] = neg;
            }
            for p in LABELS {
                if !l.may_follow(p) {
                    self.pair[p.id()][l.id()] = neg;
                }
            }
        }
        self
    }
}

/// The highest-scoring valid label sequence for per-unit scores (e.g. logits or
/// log-probabilities, added along the path), optionally restricted per unit.
/// When the restrictions leave no valid path, they are dropped for the units
/// where they conflict (see the fallback below) rather than failing.
pub fn viterbi(scores: &[[f32; NUM_LABELS]], allowed: Option<&[LabelSet]>) -> Vec<Label> {
    viterbi_with(scores, allowed, &Transitions::bies())
}

/// [`viterbi`] with the path scores `trans` (e.g. a CRF's, restricted to
/// BIES): the best path by unit scores plus transition, start and end scores.
pub fn viterbi_with(
    scores: &[[f32; NUM_LABELS]],
    allowed: Option<&[LabelSet]>,
    trans: &Transitions,
) -> Vec<Label> {
    if let Some(path) = viterbi_inner(scores, allowed, trans) {
        return path;
    }
    // Conflicting constraints: decode without them. Never fails for n ≥ 1
    // while some path is allowed.
    viterbi_inner(scores, None, trans).unwrap_or_default()
}

fn viterbi_inner(
    scores: &[[f32; NUM_LABELS]],
    allowed: Option<&[LabelSet]>,
    trans: &Transitions,
) -> Option<Vec<Label>> {
    let n = scores.len();
    if n == 0 {
        return Some(Vec::new());
    }
    let ok = |i: usize, l: Label| allowed.is_none_or(|a| a[i].contains(l));
    let neg = f32::NEG_INFINITY;
    let mut best = vec![[neg; NUM_LABELS]; n];
    let mut back = vec![[0u8; NUM_LABELS]; n];
    for l in LABELS {
        if trans.start[l.id()] > neg && ok(0, l) {
            best[0][l.id()] = scores[0][l.id()] + trans.start[l.id()];
        }
    }
    for i in 1..n {
        for l in LABELS {
            if !ok(i, l) {
                continue;
            }
            let mut arg = None;
            let mut top = neg;
            for p in LABELS {
                let s = best[i - 1][p.id()] + trans.pair[p.id()][l.id()];
                if s > neg && (arg.is_none() || s > top) {
                    top = s;
                    arg = Some(p);
                }
            }
            if let Some(p) = arg {
                best[i][l.id()] = top + scores[i][l.id()];
                back[i][l.id()] = p as u8;
            }
        }
    }
    let last = LABELS
        .into_iter()
        .map(|l| (l, best[n - 1][l.id()] + trans.end[l.id()]))
        .filter(|(_, s)| *s > neg)
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(l, _)| l)?;
    let mut path = vec![last; n];
    for i in (1..n).rev() {
        path[i - 1] = LABELS[back[i][path[i].id()] as usize];
    }
    Some(path)
}

/// Per-unit argmax of the scores (no transition constraints; decode with
/// [`words_from_labels`], whose repair rule keeps the output lossless).
pub fn argmax(scores: &[[f32; NUM_LABELS]]) -> Vec<Label> {
    scores
        .iter()
        .map(|s| {
            let mut best = 0;
            for k in 1..NUM_LABELS {
                if s[k] > s[best] {
                    best = k;
                }
            }
            LABELS[best]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use Label::*;

    #[test]
    fn lengths_to_labels() {
        assert_eq!(labels_from_lengths(&[1, 2, 4]), [S, B, E, B, I, I, E]);
    }

    #[test]
    fn repair_invalid() {
        assert_eq!(words_from_labels(&[B, B]), [0..1, 1..2]);
        assert_eq!(words_from_labels(&[I, E, S]), [0..2, 2..3]);
        assert_eq!(words_from_labels(&[S, I, I]), [0..1, 1..3]);
        assert_eq!(words_from_labels(&[E, E]), [0..1, 1..2]);
        assert!(words_from_labels(&[]).is_empty());
    }

    #[test]
    fn viterbi_respects_transitions() {
        // Argmax would say I, B — both invalid here.
        let scores = [[0.0, 5.0, 0.0, 1.0], [4.0, 0.0, 3.0, 0.0]];
        let path = viterbi(&scores, None);
        assert!(is_valid(&path));
        assert_eq!(path, [B, E]);
    }

    #[test]
    fn viterbi_constraints() {
        let scores = [[0.0, 0.0, 0.0, 9.0], [0.0, 0.0, 0.0, 9.0]];
        let allowed = [LabelSet::only(&[B]), LabelSet::only(&[E])];
        assert_eq!(viterbi(&scores, Some(&allowed)), [B, E]);
        // Impossible constraints fall back to unconstrained decoding.
        let allowed = [LabelSet::only(&[I]), LabelSet::only(&[I])];
        assert_eq!(viterbi(&scores, Some(&allowed)), [S, S]);
    }
}
