//! The CRF output layer (`head = "crf"`): learned scores for each label
//! transition and for the first and last label of a sequence, on top of the
//! per-unit label scores (emissions) of the token classifier. Training
//! minimises the negative log-likelihood of the gold label sequence, computed
//! in log space and in f32 whatever the model's precision; decoding is the
//! Viterbi search of [`crate::bies::viterbi`] with these scores.
//!
//! Same arithmetic and parameter layout as the `pytorch-crf` package
//! (`torchcrf.CRF`): `transitions[i][j]` scores label i followed by label j;
//! the weights are saved as `crf.transitions`, `crf.start_transitions` and
//! `crf.end_transitions` (transformers ignores them when it loads the folder).

use crate::bies::{Transitions, NUM_LABELS};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, IndexOp, Tensor, D};
use candle_nn::{Init, VarBuilder};

/// The CRF's parameters.
#[derive(Clone, Debug)]
pub struct Crf {
    /// `[c, c]`: from label i to label j.
    pub transitions: Tensor,
    /// `[c]`: the first label of a sequence.
    pub start: Tensor,
    /// `[c]`: the last label of a sequence.
    pub end: Tensor,
}

/// Prefix of the CRF's weights in a model folder.
pub const PREFIX: &str = "crf";

impl Crf {
    /// The CRF of a model (its weights under `crf.`), created as `pytorch-crf`
    /// initialises them (uniform in ±0.1) when the var map lacks them.
    pub fn new(vb: VarBuilder) -> candle_core::Result<Self> {
        let init = Init::Uniform { lo: -0.1, up: 0.1 };
        Ok(Crf {
            transitions: vb.get_with_hints((NUM_LABELS, NUM_LABELS), "transitions", init)?,
            start: vb.get_with_hints(NUM_LABELS, "start_transitions", init)?,
            end: vb.get_with_hints(NUM_LABELS, "end_transitions", init)?,
        })
    }

    /// The learned scores for decoding (BIES validity not yet applied).
    pub fn scores(&self) -> Result<Transitions> {
        let pair: Vec<Vec<f32>> = self.transitions.to_dtype(DType::F32)?.to_vec2()?;
        let start: Vec<f32> = self.start.to_dtype(DType::F32)?.to_vec1()?;
        let end: Vec<f32> = self.end.to_dtype(DType::F32)?.to_vec1()?;
        let mut t = Transitions::ZERO;
        t.start.copy_from_slice(&start);
        t.end.copy_from_slice(&end);
        for (to, from) in t.pair.iter_mut().zip(&pair) {
            to.copy_from_slice(from);
        }
        Ok(t)
    }

    /// Log-likelihood of each sequence's `tags` (`[b]`), as `pytorch-crf`
    /// computes it with `reduction="none"`: `emissions` `[b, t, c]`, `tags`
    /// u32 `[b, t]` (any label where masked), `mask` `[b, t]` of 0/1 whose
    /// first column is all 1 and whose ones come first in each row.
    pub fn log_likelihood(
        &self,
        emissions: &Tensor,
        tags: &Tensor,
        mask: &Tensor,
    ) -> Result<Tensor> {
        let (b, t, c) = emissions.dims3()?;
        let emissions = emissions.to_dtype(DType::F32)?.contiguous()?;
        let trans = self.transitions.to_dtype(DType::F32)?;
        let start = self.start.to_dtype(DType::F32)?;
        let end = self.end.to_dtype(DType::F32)?;
        let maskf = mask.to_dtype(DType::F32)?;
        let lengths: Vec<f32> = maskf.sum(1)?.to_vec1()?;
        if lengths.iter().any(|&n| n < 1.0) {
            bail!("every sequence needs at least one unit");
        }
        let tags = tags.to_dtype(DType::U32)?;
        // The gold path's score.
        let emitted = emissions
            .gather(&tags.unsqueeze(2)?, 2)?
            .squeeze(2)?
            .mul(&maskf)?
            .sum(1)?;
        let first = start.index_select(&tags.i((.., 0))?.contiguous()?, 0)?;
        let mut gold = (emitted + first)?;
        if t > 1 {
            let from = tags.narrow(1, 0, t - 1)?;
            let to = tags.narrow(1, 1, t - 1)?;
            let pair = ((from * c as f64)? + to)?.flatten_all()?;
            let stepped = trans
                .flatten_all()?
                .index_select(&pair, 0)?
                .reshape((b, t - 1))?
                .mul(&maskf.narrow(1, 1, t - 1)?)?
                .sum(1)?;
            gold = (gold + stepped)?;
        }
        let tag_rows: Vec<Vec<u32>> = tags.to_vec2()?;
        let last: Vec<u32> = tag_rows
            .iter()
            .zip(&lengths)
            .map(|(row, &n)| row[n as usize - 1])
            .collect();
        let last = Tensor::new(last.as_slice(), emissions.device())?;
        gold = (gold + end.index_select(&last, 0)?)?;
        // The log-partition: every path's score, summed in log space.
        let mask_u8 = mask.to_dtype(DType::U8)?;
        let mut alpha = emissions.i((.., 0))?.broadcast_add(&start)?;
        let trans3 = trans.unsqueeze(0)?;
        for i in 1..t {
            let here = emissions.i((.., i))?.unsqueeze(1)?;
            let next = alpha
                .unsqueeze(2)?
                .broadcast_add(&trans3)?
                .broadcast_add(&here)?
                .log_sum_exp(1)?;
            let keep = mask_u8.i((.., i))?.unsqueeze(1)?.broadcast_as((b, c))?;
            alpha = keep.where_cond(&next, &alpha)?;
        }
        let log_z = alpha.broadcast_add(&end)?.log_sum_exp(D::Minus1)?;
        Ok((gold - log_z)?)
    }

    /// The training loss: negative log-likelihood of the gold labels per
    /// labelled unit (`pytorch-crf`'s `token_mean`), `logits` `[b, t, c]` and
    /// `labels` i64 `[b, t]` with -100 where a position is not a unit ([CLS],
    /// [SEP], padding). Each row's units must be one run starting at the same
    /// position in every row (as windows are laid out); rows without labels
    /// (raw-text windows) are left out.
    pub fn loss(&self, logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
        let all: Vec<Vec<i64>> = labels.to_dtype(DType::I64)?.to_vec2()?;
        let labelled: Vec<u32> = (0..all.len() as u32)
            .filter(|&r| all[r as usize].iter().any(|&l| l >= 0))
            .collect();
        let (logits, rows) = if labelled.len() == all.len() {
            (logits.clone(), all)
        } else {
            let keep = Tensor::new(labelled.as_slice(), logits.device())?;
            let rows = labelled.iter().map(|&r| all[r as usize].clone()).collect();
            (logits.index_select(&keep, 0)?, rows)
        };
        let logits = &logits;
        let rows: Vec<Vec<i64>> = rows;
        let start = rows
            .iter()
            .filter_map(|r| r.iter().position(|&l| l >= 0))
            .min()
            .context("a batch without labelled units")?;
        let t = rows[0].len() - start;
        let mut tags = Vec::with_capacity(rows.len() * t);
        let mut mask = Vec::with_capacity(rows.len() * t);
        let mut units = 0usize;
        for row in &rows {
            let run = row[start..].iter().take_while(|&&l| l >= 0).count();
            if run == 0 || row.iter().filter(|&&l| l >= 0).count() != run {
                bail!("the CRF needs each row's units in one run from position {start}");
            }
            units += run;
            for (k, &l) in row[start..].iter().enumerate() {
                tags.push(if k < run { l as u32 } else { 0 });
                mask.push(u8::from(k < run));
            }
        }
        let dev: &Device = logits.device();
        let tags = Tensor::from_vec(tags, (rows.len(), t), dev)?;
        let mask = Tensor::from_vec(mask, (rows.len(), t), dev)?;
        let emissions = logits.narrow(1, start, t)?;
        let llh = self.log_likelihood(&emissions, &tags, &mask)?;
        Ok((llh.sum_all()? * (-1.0 / units as f64))?)
    }
}
