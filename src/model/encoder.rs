//! The encoder stack for training on the CPU (f32 weights and activations, a
//! BLAS, exact GELU): one autograd node whose forward and backward are
//! written out over plain slices, where the general path builds about 25
//! candle ops per layer, each with its own output buffer, and candle's
//! backward adds every gradient into a zeroed copy.
//!
//! Sequences are packed to their attended tokens (padding rows are never
//! computed; their outputs and input gradients are 0, which is what the
//! general path's padding rows contribute to a masked loss). Each linear
//! layer is one BLAS product over all rows of the batch, cut over the threads
//! (`blas::gemm_split`); attention, dropout masks and the residual + LayerNorm
//! passes run per sequence in parallel. Dropout masks come from one stream
//! per (layer, site, sequence[, head]) seeded from the step's
//! [`DropoutRng`](super::DropoutRng), so backward draws them again instead of
//! keeping them, and nothing depends on the number of threads.
//!
//! The node's input is the embeddings' output; its weights reach backward
//! through the model, not the graph: backward leaves their gradients in the
//! model's [`GradSink`], and [`BertForTokenClassification::backward`] moves
//! them into the `GradStore`. The word-embedding lookup on this path
//! ([`lookup`]) is a node of the same kind.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp1, Device, Layout, Shape, Storage, Tensor};
use rand::SeedableRng;
use rayon::prelude::*;

use super::infer::{self, LayerWeights, Lin, Norm};
use super::{fill_dropout_mask, Activation, BertForTokenClassification, DropoutRng};
use crate::blas::{column_sums, gemm, gemm_split, Operand};
use crate::fused::{
    gelu_erf_grad_value, gelu_erf_value, layer_norm_grad_rows, layer_norm_saving, map2_in_place,
    map_in_place, softmax_grad_row, softmax_in_place,
};

/// Elements handed to one rayon task in elementwise passes.
const CHUNK: usize = 16 * 1024;

/// Where a dropout mask applies inside a layer.
#[derive(Clone, Copy)]
enum Site {
    AttentionProbs = 1,
    AttentionOutput = 2,
    Output = 3,
}

/// Gradients of the weights the CPU training path reads, left by its backward
/// for [`BertForTokenClassification::backward`]: (weight, gradient) pairs.
#[derive(Debug, Clone, Default)]
pub(super) struct GradSink(Arc<Mutex<Vec<(Tensor, Tensor)>>>);

impl GradSink {
    /// Everything left so far, emptying the sink.
    pub(super) fn take(&self) -> Vec<(Tensor, Tensor)> {
        std::mem::take(&mut *self.0.lock().expect("gradient sink poisoned"))
    }

    fn put(&self, grads: Vec<(Tensor, Tensor)>) {
        self.0.lock().expect("gradient sink poisoned").extend(grads);
    }
}

/// The rows `ids` (u32, flat) of the word-embedding table, `[ids, h]`, or
/// `None` off the CPU path. Backward leaves the table's gradient in the
/// model's [`GradSink`]: one zeroed table with each row's gradient added in
/// `ids` order (the bits of candle's `index_add`, without its two extra
/// passes over the table, and none into the padding row, which torch's
/// `padding_idx` keeps at 0).
pub(super) fn lookup(
    model: &BertForTokenClassification,
    ids: &Tensor,
) -> anyhow::Result<Option<Tensor>> {
    if !infer::applies(model) {
        return Ok(None);
    }
    let table = &model.word_embeddings;
    let op = Lookup {
        ids: ids.to_vec1::<u32>()?,
        pad: model.pad_token_id,
        sink: model.cpu_grads.clone(),
    };
    Ok(Some(table.apply_op1(op)?))
}

struct Lookup {
    ids: Vec<u32>,
    pad: usize,
    sink: GradSink,
}

impl CustomOp1 for Lookup {
    fn name(&self) -> &'static str {
        "cws-embedding-lookup"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let table = crate::fused::slice(s, l)?;
        let (vocab, h) = (l.dims()[0], l.dims()[1]);
        let mut out = Vec::with_capacity(self.ids.len() * h);
        for &id in &self.ids {
            let id = id as usize;
            if id >= vocab {
                candle_core::bail!("token id {id} is outside the vocabulary of {vocab}");
            }
            out.extend_from_slice(&table[id * h..(id + 1) * h]);
        }
        Ok((CpuStorage::F32(out), Shape::from((self.ids.len(), h))))
    }

    fn bwd(
        &self,
        table: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let (vocab, h) = table.dims2()?;
        let grad = grad.contiguous()?;
        let mut dt = vec![0f32; vocab * h];
        {
            let (storage, layout) = grad.storage_and_layout();
            let Storage::Cpu(cpu) = &*storage else {
                candle_core::bail!("embedding gradient is not on the CPU");
            };
            let g = crate::fused::slice(cpu, layout)?;
            for (row, &id) in g.chunks(h).zip(&self.ids) {
                let id = id as usize;
                if id != self.pad {
                    let d = &mut dt[id * h..(id + 1) * h];
                    d.iter_mut().zip(row).for_each(|(d, &g)| *d += g);
                }
            }
        }
        let dt = Tensor::from_vec(dt, (vocab, h), &Device::Cpu)?;
        self.sink.put(vec![(table.clone(), dt)]);
        Ok(None)
    }
}

/// Runs the encoder layers on `x` (`[b * t, h]`, the embeddings' output) as
/// one node, or `None` where the general path must: not CPU f32 with a BLAS,
/// an activation other than exact GELU, or a mask that is not one run of 1s
/// per sequence.
pub(super) fn run(
    model: &BertForTokenClassification,
    x: &Tensor,
    attention_mask: &Tensor,
    b: usize,
    t: usize,
    dropout: &mut Option<&mut DropoutRng>,
) -> anyhow::Result<Option<Tensor>> {
    if !infer::applies(model)
        || !matches!(model.act, Activation::GeluErf)
        || model.layers.is_empty()
    {
        return Ok(None);
    }
    let Some(lens) = infer::attended_lens(attention_mask, b, t)? else {
        return Ok(None);
    };
    let op = Encoder {
        model: model.clone(),
        lens,
        t,
        seed: dropout.as_mut().map(|r| r.next_seed()),
        saved: Mutex::new(Vec::new()),
    };
    Ok(Some(x.contiguous()?.apply_op1(op)?))
}

struct Encoder {
    model: BertForTokenClassification,
    /// Attended tokens of each sequence (a prefix of its `t` positions).
    lens: Vec<usize>,
    t: usize,
    /// The step's dropout seed; `None` in inference.
    seed: Option<u64>,
    /// What each layer's backward needs, from the last forward.
    saved: Mutex<Vec<Saved>>,
}

/// One layer's activations over the packed rows (`n` of them).
struct Saved {
    /// The layer's input `[n, h]`.
    x: Vec<f32>,
    /// q, k and v side by side, `[n, 3h]`.
    qkv: Vec<f32>,
    /// Softmax outputs before dropout, per sequence then head: `[len, len]` each.
    probs: Vec<f32>,
    /// Attention's output, the input of its output projection `[n, h]`.
    ctx: Vec<f32>,
    xhat1: Vec<f32>,
    rstd1: Vec<f32>,
    /// The first LayerNorm's output `[n, h]`.
    a: Vec<f32>,
    /// The intermediate layer before and after GELU `[n, ffn]`.
    u: Vec<f32>,
    g: Vec<f32>,
    xhat2: Vec<f32>,
    rstd2: Vec<f32>,
}

/// Backward's working buffers, reused from layer to layer: every use
/// overwrites the part it later reads.
struct Scratch {
    /// `[n, h]` each.
    a: Vec<f32>,
    b: Vec<f32>,
    /// `[n, ffn]`.
    ffn: Vec<f32>,
    /// `[n, 3h]`.
    qkv: Vec<f32>,
}

impl Scratch {
    fn new(n: usize, h: usize, ffn: usize) -> Self {
        Self {
            a: vec![0f32; n * h],
            b: vec![0f32; n * h],
            ffn: vec![0f32; n * ffn],
            qkv: vec![0f32; n * 3 * h],
        }
    }
}

/// One layer's weight gradients, in the order of `Layer::tensors`.
type LayerGrads = Vec<(Vec<f32>, Vec<usize>)>;

fn error(e: anyhow::Error) -> candle_core::Error {
    candle_core::Error::Msg(format!("{e:#}"))
}

/// Splits `buf` into consecutive pieces of `sizes[i]` elements.
fn split_mut(mut buf: &mut [f32], sizes: impl Iterator<Item = usize>) -> Vec<&mut [f32]> {
    let mut out = Vec::new();
    for size in sizes {
        let (head, rest) = std::mem::take(&mut buf).split_at_mut(size);
        out.push(head);
        buf = rest;
    }
    out
}

impl Encoder {
    fn h(&self) -> usize {
        self.model.num_heads * self.model.head_dim
    }

    fn rows(&self) -> usize {
        self.lens.iter().sum()
    }

    /// First packed row of each sequence.
    fn starts(&self) -> Vec<usize> {
        self.lens
            .iter()
            .scan(0, |r, &len| {
                let s = *r;
                *r += len;
                Some(s)
            })
            .collect()
    }

    /// Per-sequence pieces of a `[n, width]` buffer.
    fn per_seq<'a>(&self, buf: &'a mut [f32], width: usize) -> Vec<&'a mut [f32]> {
        split_mut(buf, self.lens.iter().map(|&l| l * width))
    }

    /// The attended rows of a `[b * t, h]` matrix, one after another.
    fn pack(&self, full: &[f32]) -> Vec<f32> {
        let h = self.h();
        let mut out = Vec::with_capacity(self.rows() * h);
        for (s, &len) in self.lens.iter().enumerate() {
            out.extend_from_slice(&full[s * self.t * h..(s * self.t + len) * h]);
        }
        out
    }

    /// [`Self::pack`]'s inverse, with 0 in padding rows.
    fn unpack(&self, packed: &[f32]) -> Vec<f32> {
        let h = self.h();
        let mut out = vec![0f32; self.lens.len() * self.t * h];
        let mut r = 0;
        for (s, &len) in self.lens.iter().enumerate() {
            out[s * self.t * h..(s * self.t + len) * h]
                .copy_from_slice(&packed[r * h..(r + len) * h]);
            r += len;
        }
        out
    }

    /// The dropout factors of one sequence (and head) at `site`, or `None`
    /// without dropout there.
    fn mask(&self, layer: usize, site: Site, item: usize, len: usize) -> Option<Vec<f32>> {
        let p = match site {
            Site::AttentionProbs => self.model.attn_dropout,
            _ => self.model.hidden_dropout,
        };
        let seed = self.seed.filter(|_| p > 0.0)?;
        let stream = (layer as u64) << 40 | (site as u64) << 32 | item as u64;
        let mut rng = rand::rngs::SmallRng::seed_from_u64(splitmix(seed ^ splitmix(stream)));
        let mut mask = vec![0f32; len];
        fill_dropout_mask(&mut rng, p, &mut mask);
        Some(mask)
    }

    /// `x @ lin.w^T + lin.b` for `x` `[n, lin.inp]`.
    fn linear(&self, x: &[f32], lin: &Lin) -> candle_core::Result<Vec<f32>> {
        let n = x.len() / lin.inp;
        let mut out = Vec::with_capacity(n * lin.out);
        for _ in 0..n {
            out.extend_from_slice(lin.b);
        }
        gemm_split(
            1.0,
            rows(x, n, lin.inp),
            transposed(lin.w, lin.out, lin.inp),
            1.0,
            &mut out,
        )?;
        Ok(out)
    }

    /// `out = LayerNorm(dropout(out) + residual)`; returns what LayerNorm's
    /// backward needs: the normalised rows and each row's 1/std.
    fn residual_norm(
        &self,
        layer: usize,
        site: Site,
        out: &mut [f32],
        residual: &[f32],
        ln: &Norm,
    ) -> (Vec<f32>, Vec<f32>) {
        let h = ln.w.len();
        let (mut xhat, mut rstd) = (vec![0f32; out.len()], vec![0f32; out.len() / h]);
        let starts = self.starts();
        let pieces: Vec<_> = self
            .per_seq(out, h)
            .into_iter()
            .zip(self.per_seq(&mut xhat, h))
            .zip(self.per_seq(&mut rstd, 1))
            .collect();
        pieces
            .into_par_iter()
            .enumerate()
            .for_each(|(s, ((out, xhat), rstd))| {
                let res = &residual[starts[s] * h..starts[s] * h + out.len()];
                match self.mask(layer, site, s, out.len()) {
                    Some(m) => {
                        for ((o, &m), &r) in out.iter_mut().zip(&m).zip(res) {
                            *o = *o * m + r;
                        }
                    }
                    None => out.iter_mut().zip(res).for_each(|(o, &r)| *o += r),
                }
                for ((row, xhat), rstd) in out.chunks_mut(h).zip(xhat.chunks_mut(h)).zip(rstd) {
                    *rstd = layer_norm_saving(row, ln.w, ln.b, ln.eps, xhat);
                }
            });
        (xhat, rstd)
    }

    /// `out = grad * mask` at `site` (each sequence's own mask), or a copy
    /// of `grad` without dropout there.
    fn masked(&self, layer: usize, site: Site, grad: &[f32], out: &mut [f32], h: usize) {
        if self.seed.is_none() || self.model.hidden_dropout <= 0.0 {
            out.copy_from_slice(grad);
            return;
        }
        let starts = self.starts();
        self.per_seq(out, h)
            .into_par_iter()
            .enumerate()
            .for_each(|(s, piece)| {
                let grad = &grad[starts[s] * h..starts[s] * h + piece.len()];
                match self.mask(layer, site, s, piece.len()) {
                    Some(m) => {
                        for ((o, &g), &m) in piece.iter_mut().zip(grad).zip(&m) {
                            *o = g * m;
                        }
                    }
                    None => piece.copy_from_slice(grad),
                }
            });
    }

    fn layer_forward(
        &self,
        layer: usize,
        w: &LayerWeights,
        x: Vec<f32>,
    ) -> candle_core::Result<(Vec<f32>, Saved)> {
        let h = self.h();
        let (qkv_w, qkv_b) = stacked_qkv(w);
        let qkv = self.linear(&x, &qkv_lin(&qkv_w, &qkv_b, h))?;
        let (probs, ctx) = self.attention(layer, &qkv)?;
        let mut a = self.linear(&ctx, &w.attn_out)?;
        let (xhat1, rstd1) =
            self.residual_norm(layer, Site::AttentionOutput, &mut a, &x, &w.attn_ln);
        let u = self.linear(&a, &w.intermediate)?;
        let mut g = u.clone();
        g.par_chunks_mut(CHUNK)
            .for_each(|c| map_in_place(c, gelu_erf_value));
        let mut y = self.linear(&g, &w.output)?;
        let (xhat2, rstd2) = self.residual_norm(layer, Site::Output, &mut y, &a, &w.out_ln);
        let saved = Saved {
            x,
            qkv,
            probs,
            ctx,
            xhat1,
            rstd1,
            a,
            u,
            g,
            xhat2,
            rstd2,
        };
        Ok((y, saved))
    }

    /// Self-attention per sequence and head: the softmax outputs (before
    /// dropout) and the context `[n, h]`.
    fn attention(&self, layer: usize, qkv: &[f32]) -> candle_core::Result<(Vec<f32>, Vec<f32>)> {
        let (heads, hd, h) = (self.model.num_heads, self.model.head_dim, self.h());
        let scale = 1.0 / (hd as f32).sqrt();
        let starts = self.starts();
        let mut probs = vec![0f32; self.lens.iter().map(|l| heads * l * l).sum()];
        let mut ctx = vec![0f32; self.rows() * h];
        let pieces: Vec<_> = split_mut(&mut probs, self.lens.iter().map(|l| heads * l * l))
            .into_iter()
            .zip(self.per_seq(&mut ctx, h))
            .collect();
        pieces.into_par_iter().enumerate().try_for_each(
            |(s, (probs, ctx))| -> candle_core::Result<()> {
                let (len, r0) = (self.lens[s], starts[s]);
                if len == 0 {
                    return Ok(());
                }
                for (head, p) in probs.chunks_mut(len * len).enumerate() {
                    let c = head * hd;
                    gemm(
                        scale,
                        head_of(qkv, r0, len, (c, hd), 3 * h),
                        head_t(qkv, r0, len, (h + c, hd), 3 * h),
                        0.0,
                        p,
                        0,
                        len,
                    )?;
                    p.chunks_mut(len).for_each(softmax_in_place);
                    let mask = self.mask(layer, Site::AttentionProbs, s * heads + head, len * len);
                    let dropped;
                    let used: &[f32] = match mask {
                        Some(mut m) => {
                            m.iter_mut().zip(p.iter()).for_each(|(m, &p)| *m *= p);
                            dropped = m;
                            &dropped
                        }
                        None => p,
                    };
                    gemm(
                        1.0,
                        rows(used, len, len),
                        head_of(qkv, r0, len, (2 * h + c, hd), 3 * h),
                        0.0,
                        ctx,
                        c,
                        h,
                    )?;
                }
                Ok(())
            },
        )?;
        Ok((probs, ctx))
    }

    /// The layer's input gradient `dx` from its output gradient `dy`, and
    /// its weight gradients.
    fn layer_backward(
        &self,
        layer: usize,
        w: &LayerWeights,
        sv: &Saved,
        dy: &[f32],
        dx: &mut [f32],
        sc: &mut Scratch,
    ) -> candle_core::Result<LayerGrads> {
        let h = self.h();
        let mut grads: LayerGrads = Vec::with_capacity(16);
        // Second LayerNorm (into sc.a); its input was dropout(output) + a.
        let (dw, db) =
            layer_norm_grad_rows(w.out_ln.w, dy, &mut sc.a, normed(&sv.xhat2, &sv.rstd2));
        self.masked(layer, Site::Output, &sc.a, &mut sc.b, h);
        // Through the output layer and GELU (into sc.ffn).
        let [out_w, out_b] = linear_backward(&sc.b, &sv.g, &w.output, &mut sc.ffn, 0.0)?;
        sc.ffn
            .par_chunks_mut(CHUNK)
            .zip(sv.u.par_chunks(CHUNK))
            .for_each(|(d, u)| map2_in_place(d, u, |d, u| gelu_erf_grad_value(u, d)));
        // a fed the intermediate layer and the residual: its gradient in sc.a.
        let [inter_w, inter_b] = linear_backward(&sc.ffn, &sv.a, &w.intermediate, &mut sc.a, 1.0)?;
        // First LayerNorm (into dx, where the residual's share stays).
        let (ln1_w, ln1_b) =
            layer_norm_grad_rows(w.attn_ln.w, &sc.a, dx, normed(&sv.xhat1, &sv.rstd1));
        self.masked(layer, Site::AttentionOutput, dx, &mut sc.b, h);
        // The context's gradient (into sc.a), then q, k and v's.
        let [ao_w, ao_b] = linear_backward(&sc.b, &sv.ctx, &w.attn_out, &mut sc.a, 0.0)?;
        self.attention_backward(layer, sv, &sc.a, &mut sc.qkv)?;
        // x fed q, k, v (one stacked product) and the residual.
        let (qkv_w, qkv_b) = stacked_qkv(w);
        let qkv_lin = qkv_lin(&qkv_w, &qkv_b, h);
        let [(mut gw, _), (mut gb, _)] = linear_backward(&sc.qkv, &sv.x, &qkv_lin, dx, 1.0)?;
        let (gv, gk) = (gw.split_off(2 * h * h), gw.split_off(h * h));
        let (bv, bk) = (gb.split_off(2 * h), gb.split_off(h));
        for (gw, gb) in [(gw, gb), (gk, bk), (gv, bv)] {
            grads.extend([(gw, vec![h, h]), (gb, vec![h])]);
        }
        grads.extend([ao_w, ao_b]);
        grads.extend([(ln1_w, vec![h]), (ln1_b, vec![h])]);
        grads.extend([inter_w, inter_b, out_w, out_b]);
        grads.extend([(dw, vec![h]), (db, vec![h])]);
        Ok(grads)
    }

    /// Gradients of q, k and v into `dqkv`, side by side like `Saved::qkv`,
    /// from the context's.
    fn attention_backward(
        &self,
        layer: usize,
        sv: &Saved,
        dctx: &[f32],
        dqkv: &mut [f32],
    ) -> candle_core::Result<()> {
        let (heads, hd, h) = (self.model.num_heads, self.model.head_dim, self.h());
        let scale = 1.0 / (hd as f32).sqrt();
        let starts = self.starts();
        let mut rest = &sv.probs[..];
        let probs: Vec<&[f32]> = self
            .lens
            .iter()
            .map(|&l| {
                let (seq, after) = rest.split_at(heads * l * l);
                rest = after;
                seq
            })
            .collect();
        let pieces: Vec<_> = self.per_seq(dqkv, 3 * h).into_iter().zip(probs).collect();
        pieces.into_par_iter().enumerate().try_for_each(
            |(s, (dqkv, probs))| -> candle_core::Result<()> {
                let (len, r0) = (self.lens[s], starts[s]);
                if len == 0 {
                    return Ok(());
                }
                let mut dp = vec![0f32; len * len];
                let mut ds = vec![0f32; len * len];
                for head in 0..heads {
                    let c = head * hd;
                    let cols = (c, hd);
                    let p = &probs[head * len * len..(head + 1) * len * len];
                    let mask = self.mask(layer, Site::AttentionProbs, s * heads + head, len * len);
                    let dropped;
                    let used: &[f32] = match &mask {
                        Some(m) => {
                            dropped = m.iter().zip(p).map(|(m, p)| m * p).collect::<Vec<_>>();
                            &dropped
                        }
                        None => p,
                    };
                    // ctx = used @ v: d(used) = dctx @ v^T, dv = used^T @ dctx.
                    let dctx_h = head_of(dctx, r0, len, cols, h);
                    let qkv = |at: usize| (&sv.qkv, (at * h + c, hd));
                    let [(q, q_cols), (k, k_cols), (v, v_cols)] = [qkv(0), qkv(1), qkv(2)];
                    gemm(
                        1.0,
                        dctx_h,
                        head_t(v, r0, len, v_cols, 3 * h),
                        0.0,
                        &mut dp,
                        0,
                        len,
                    )?;
                    let ld = 3 * h;
                    gemm(
                        1.0,
                        transposed(used, len, len),
                        dctx_h,
                        0.0,
                        dqkv,
                        2 * h + c,
                        ld,
                    )?;
                    if let Some(m) = &mask {
                        dp.iter_mut().zip(m).for_each(|(d, &m)| *d *= m);
                    }
                    for ((p, d), o) in p.chunks(len).zip(dp.chunks(len)).zip(ds.chunks_mut(len)) {
                        softmax_grad_row(p, d, o);
                    }
                    // scores = scale * q @ k^T.
                    gemm(
                        scale,
                        rows(&ds, len, len),
                        head_of(k, r0, len, k_cols, ld),
                        0.0,
                        dqkv,
                        c,
                        ld,
                    )?;
                    gemm(
                        scale,
                        transposed(&ds, len, len),
                        head_of(q, r0, len, q_cols, ld),
                        0.0,
                        dqkv,
                        h + c,
                        ld,
                    )?;
                }
                Ok(())
            },
        )?;
        Ok(())
    }
}

/// A LayerNorm's saved rows for `layer_norm_grad_rows`: row `i`'s normalised
/// input and its 1/std.
fn normed<'a>(xhat: &'a [f32], rstd: &'a [f32]) -> impl Fn(usize, &mut [f32]) -> f32 + Sync + 'a {
    move |i, row| {
        let h = row.len();
        row.copy_from_slice(&xhat[i * h..(i + 1) * h]);
        rstd[i]
    }
}

/// `data` as a row-major `[r, c]` matrix.
fn rows(data: &[f32], r: usize, c: usize) -> Operand<'_> {
    Operand {
        data,
        off: 0,
        rows: r,
        cols: c,
        row_stride: c,
        col_stride: 1,
    }
}

/// The transpose `[c, r]` of row-major `[r, c]` `data`, read in place.
fn transposed(data: &[f32], r: usize, c: usize) -> Operand<'_> {
    Operand {
        data,
        off: 0,
        rows: c,
        cols: r,
        row_stride: 1,
        col_stride: c,
    }
}

/// One head's `[len, hd]` block (columns `c..c + hd` of rows `r0..r0 + len`)
/// of a row-major matrix with row stride `ld`.
fn head_of(data: &[f32], r0: usize, len: usize, (c, hd): (usize, usize), ld: usize) -> Operand<'_> {
    Operand {
        data,
        off: r0 * ld + c,
        rows: len,
        cols: hd,
        row_stride: ld,
        col_stride: 1,
    }
}

/// The transpose `[hd, len]` of [`head_of`]'s block, read in place.
fn head_t(data: &[f32], r0: usize, len: usize, cols: (usize, usize), ld: usize) -> Operand<'_> {
    let b = head_of(data, r0, len, cols, ld);
    Operand {
        rows: b.cols,
        cols: b.rows,
        row_stride: 1,
        col_stride: ld,
        ..b
    }
}

/// The query, key and value weights stacked into one `[3h, h]` matrix, and
/// their biases into one `[3h]` vector.
fn stacked_qkv(w: &LayerWeights) -> (Vec<f32>, Vec<f32>) {
    let lins = [&w.query, &w.key, &w.value];
    (
        lins.iter().flat_map(|l| l.w.iter().copied()).collect(),
        lins.iter().flat_map(|l| l.b.iter().copied()).collect(),
    )
}

fn qkv_lin<'a>(w: &'a [f32], b: &'a [f32], h: usize) -> Lin<'a> {
    Lin {
        w,
        b,
        inp: h,
        out: 3 * h,
    }
}

/// A linear layer's backward from its output's gradient `d_out` `[n, out]`:
/// `dx = beta * dx + d_out @ w`, and the weight and bias gradients
/// ([`linear_grads`]), returned.
fn linear_backward(
    d_out: &[f32],
    input: &[f32],
    lin: &Lin,
    dx: &mut [f32],
    beta: f32,
) -> candle_core::Result<[(Vec<f32>, Vec<usize>); 2]> {
    let grads = linear_grads(d_out, input, lin)?;
    let n = input.len() / lin.inp;
    gemm_split(
        1.0,
        rows(d_out, n, lin.out),
        rows(lin.w, lin.out, lin.inp),
        beta,
        dx,
    )?;
    Ok(grads)
}

/// `dW = d_out^T @ input` and `db = column sums of d_out` of a linear layer.
fn linear_grads(
    d_out: &[f32],
    input: &[f32],
    lin: &Lin,
) -> candle_core::Result<[(Vec<f32>, Vec<usize>); 2]> {
    let n = input.len() / lin.inp;
    let mut dw = vec![0f32; lin.out * lin.inp];
    gemm_split(
        1.0,
        transposed(d_out, n, lin.out),
        rows(input, n, lin.inp),
        0.0,
        &mut dw,
    )?;
    Ok([
        (dw, vec![lin.out, lin.inp]),
        (column_sums(d_out, lin.out), vec![lin.out]),
    ])
}

/// One SplitMix64 step: spreads seeds that differ in a few bits.
fn splitmix(x: u64) -> u64 {
    crate::features::mix(x.wrapping_add(0x9e37_79b9_7f4a_7c15))
}

impl CustomOp1 for Encoder {
    fn name(&self) -> &'static str {
        "cws-encoder"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let h = self.h();
        if l.dims() != [self.lens.len() * self.t, h] {
            candle_core::bail!(
                "encoder input {:?} for {} x {} tokens",
                l.dims(),
                self.lens.len(),
                self.t
            );
        }
        let mut x = self.pack(crate::fused::slice(s, l)?);
        let mut saved = Vec::with_capacity(self.model.layers.len());
        infer::with_weights(&self.model, |w| {
            for (layer, lw) in w.layers.iter().enumerate() {
                let (y, sv) = self.layer_forward(layer, lw, std::mem::take(&mut x))?;
                saved.push(sv);
                x = y;
            }
            Ok(())
        })
        .map_err(error)?;
        *self.saved.lock().expect("encoder activations poisoned") = saved;
        Ok((CpuStorage::F32(self.unpack(&x)), l.shape().clone()))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let grad = grad.contiguous()?;
        let mut dy = {
            let (storage, layout) = grad.storage_and_layout();
            let Storage::Cpu(cpu) = &*storage else {
                candle_core::bail!("encoder gradient is not on the CPU");
            };
            self.pack(crate::fused::slice(cpu, layout)?)
        };
        let saved = self.saved.lock().expect("encoder activations poisoned");
        if saved.len() != self.model.layers.len() {
            candle_core::bail!("encoder backward without its forward's activations");
        }
        let mut layer_grads = Vec::with_capacity(saved.len());
        let mut dx = vec![0f32; dy.len()];
        infer::with_weights(&self.model, |w| {
            let ffn = w.layers[0].intermediate.out;
            let mut sc = Scratch::new(self.rows(), self.h(), ffn);
            for (layer, lw) in w.layers.iter().enumerate().rev() {
                let grads = self.layer_backward(layer, lw, &saved[layer], &dy, &mut dx, &mut sc)?;
                layer_grads.push((layer, grads));
                std::mem::swap(&mut dy, &mut dx);
            }
            Ok(())
        })
        .map_err(error)?;
        let mut out = Vec::new();
        for (layer, grads) in layer_grads {
            for (var, (g, dims)) in self.model.layers[layer].tensors().into_iter().zip(grads) {
                out.push((var.clone(), Tensor::from_vec(g, dims, &Device::Cpu)?));
            }
        }
        self.model.cpu_grads.put(out);
        Ok(Some(Tensor::from_vec(
            self.unpack(&dy),
            arg.shape(),
            &Device::Cpu,
        )?))
    }
}
