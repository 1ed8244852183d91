//! Logits for inference on the CPU with f32 weights and a BLAS: the forward
//! pass of [`BertForTokenClassification`] without autograd, dropout or a
//! tensor per op.
//!
//! Each sequence is packed to its attended tokens (padding rows are never
//! computed), the batch is cut into parts of whole sequences, and one rayon
//! task runs a part through the whole network in buffers it reuses from layer
//! to layer. Every linear layer is one BLAS call whose output already holds
//! the bias (the residual is added in the LayerNorm pass that follows);
//! attention runs per sequence and head on a `[len, len]` score buffer;
//! LayerNorm, GELU and softmax are the row kernels of `crate::fused`. The parts depend on the batch only, never on the number
//! of threads, so the logits have the same bits on any number of them.

use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Device, Storage, Tensor};
use rayon::prelude::*;

use super::{Activation, BatchFeatures, BertForTokenClassification};
use crate::blas::{gemm, Operand};
use crate::fused::{gelu_erf_value, layer_norm_in_place, map_in_place, softmax_in_place};

/// A part holds whole sequences until it has at least this many rows: enough
/// for BLAS to run at speed, small enough for a batch to spread over threads.
const PART_ROWS: usize = 512;

/// Whether [`logits`] can run `model` on this host: CPU, f32 weights and
/// activations, and a BLAS.
pub(super) fn applies(model: &BertForTokenClassification) -> bool {
    matches!(model.device(), Device::Cpu)
        && model.dtype == DType::F32
        && model.compute == DType::F32
        && crate::blas::available()
}

/// The slices of the model's weights, borrowed from their tensors' storage.
pub(super) struct Weights<'a> {
    word: &'a [f32],
    position: &'a [f32],
    token_type: &'a [f32],
    lexicon: Option<&'a [f32]>,
    bigram: Option<&'a [f32]>,
    general: Option<&'a [f32]>,
    emb_ln: Norm<'a>,
    pub(super) layers: Vec<LayerWeights<'a>>,
    classifier: Lin<'a>,
}

pub(super) struct Lin<'a> {
    /// `[out, inp]`, torch's layout.
    pub(super) w: &'a [f32],
    pub(super) b: &'a [f32],
    pub(super) inp: usize,
    pub(super) out: usize,
}

pub(super) struct Norm<'a> {
    pub(super) w: &'a [f32],
    pub(super) b: &'a [f32],
    pub(super) eps: f64,
}

pub(super) struct LayerWeights<'a> {
    pub(super) query: Lin<'a>,
    pub(super) key: Lin<'a>,
    pub(super) value: Lin<'a>,
    pub(super) attn_out: Lin<'a>,
    pub(super) attn_ln: Norm<'a>,
    pub(super) intermediate: Lin<'a>,
    pub(super) output: Lin<'a>,
    pub(super) out_ln: Norm<'a>,
}

/// The inputs of one batch on the host, `[b, t]` (and `[b, t, k]`) row-major.
struct Inputs {
    t: usize,
    ids: Vec<u32>,
    /// Attended tokens of each sequence: the mask is 1 on `0..len`, 0 after.
    lens: Vec<usize>,
    lexicon: Option<Vec<f32>>,
    bigrams: Option<Vec<u32>>,
    general: Option<Vec<f32>>,
}

/// Logits `[b, t, num_labels]` of `model`, the same values as
/// `forward_with(.., None)` at attended positions (to rounding) and 0 at
/// padding; `None` when the mask is not one run of 1s then 0s per sequence,
/// which only the general path handles.
pub(super) fn logits(
    model: &BertForTokenClassification,
    input_ids: &Tensor,
    attention_mask: &Tensor,
    features: &BatchFeatures,
) -> Result<Option<Tensor>> {
    let (b, t) = input_ids
        .dims2()
        .context("input_ids must be [batch, seq]")?;
    let Some(inputs) = read_inputs(model, input_ids, attention_mask, features, b, t)? else {
        return Ok(None);
    };
    with_weights(model, |w| run_batch(model, w, &inputs, b, t))
}

/// Calls `f` with the slices of `model`'s weights (CPU f32 storage, held
/// read-locked for the call).
pub(super) fn with_weights<R>(
    model: &BertForTokenClassification,
    f: impl FnOnce(&Weights) -> Result<R>,
) -> Result<R> {
    let tensors = tensors(model);
    let guards: Vec<_> = tensors.iter().map(|t| t.storage_and_layout()).collect();
    let slices: Vec<&[f32]> = guards
        .iter()
        .map(|(storage, layout)| -> Result<&[f32]> {
            let Storage::Cpu(cpu) = &**storage else {
                bail!("CPU path: a weight is not on the CPU");
            };
            Ok(crate::fused::slice(cpu, layout)?)
        })
        .collect::<Result<_>>()?;
    f(&weights(model, &slices)?)
}

fn run_batch(
    model: &BertForTokenClassification,
    w: &Weights,
    inputs: &Inputs,
    b: usize,
    t: usize,
) -> Result<Option<Tensor>> {
    let h = w.emb_ln.w.len();
    ensure!(
        t * h <= w.position.len(),
        "sequence length {t} exceeds max_position_embeddings {}",
        w.position.len() / h.max(1)
    );
    let labels = w.classifier.out;

    // Parts of whole sequences, cut by rows alone.
    let mut parts: Vec<std::ops::Range<usize>> = Vec::new();
    let (mut start, mut rows) = (0, 0);
    for (s, &len) in inputs.lens.iter().enumerate() {
        rows += len;
        if rows >= PART_ROWS || s + 1 == b {
            parts.push(start..s + 1);
            (start, rows) = (s + 1, 0);
        }
    }
    let results: Vec<Vec<f32>> = parts
        .par_iter()
        .map(|p| run_part(model, w, inputs, p.clone()))
        .collect::<Result<_>>()?;
    let mut out = vec![0f32; b * t * labels];
    for (p, rows) in parts.iter().zip(results) {
        let mut r = 0;
        for s in p.clone() {
            let len = inputs.lens[s];
            out[s * t * labels..(s * t + len) * labels]
                .copy_from_slice(&rows[r * labels..(r + len) * labels]);
            r += len;
        }
    }
    Ok(Some(Tensor::from_vec(out, (b, t, labels), &Device::Cpu)?))
}

fn read_inputs(
    model: &BertForTokenClassification,
    input_ids: &Tensor,
    attention_mask: &Tensor,
    features: &BatchFeatures,
    b: usize,
    t: usize,
) -> Result<Option<Inputs>> {
    let Some(lens) = attended_lens(attention_mask, b, t)? else {
        return Ok(None);
    };
    let ids = input_ids
        .to_dtype(DType::U32)?
        .flatten_all()?
        .to_vec1::<u32>()?;
    let vocab = model.word_embeddings.dim(0)?;
    if let Some(bad) = ids.iter().find(|&&i| i as usize >= vocab) {
        bail!("token id {bad} is outside the vocabulary of {vocab}");
    }
    let f32s =
        |x: &Option<Tensor>, table: &Option<Tensor>, what: &str| -> Result<Option<Vec<f32>>> {
            match (x, table) {
                (Some(x), Some(w)) => {
                    let k = w.dim(0)?;
                    ensure!(
                        x.dims() == [b, t, k],
                        "{what} features must be [{b}, {t}, {k}], not {:?}",
                        x.dims()
                    );
                    Ok(Some(
                        x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?,
                    ))
                }
                (None, Some(_)) => bail!("this model needs {what} features"),
                _ => Ok(None),
            }
        };
    let lexicon = f32s(&features.lexicon, &model.lexicon_embeddings, "lexicon")?;
    let general = f32s(
        &features.general,
        &model.general_lexicon_embeddings,
        "general word-list",
    )?;
    let bigrams = match (&features.bigrams, &model.bigram_embeddings) {
        (Some(g), Some(w)) => {
            ensure!(
                g.dims() == [b, t, 2],
                "bigram features must be [batch, seq, 2]"
            );
            let g = g.to_dtype(DType::U32)?.flatten_all()?.to_vec1::<u32>()?;
            let buckets = w.dim(0)?;
            if let Some(bad) = g.iter().find(|&&i| i as usize >= buckets) {
                bail!("bigram bucket {bad} is outside the table of {buckets}");
            }
            Some(g)
        }
        (None, Some(_)) => bail!("this model needs bigram features"),
        _ => None,
    };
    Ok(Some(Inputs {
        t,
        ids,
        lens,
        lexicon,
        bigrams,
        general,
    }))
}

/// The attended tokens of each sequence of a `[b, t]` mask; `None` unless
/// each row is one run of 1s then 0s.
pub(super) fn attended_lens(
    attention_mask: &Tensor,
    b: usize,
    t: usize,
) -> Result<Option<Vec<usize>>> {
    ensure!(
        attention_mask.dims() == [b, t],
        "attention_mask must be [batch, seq] like input_ids"
    );
    let mask = attention_mask
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let mut lens = Vec::with_capacity(b);
    for row in mask.chunks(t.max(1)).take(b) {
        let len = row.iter().take_while(|&&m| m != 0.0).count();
        if row[len..].iter().any(|&m| m != 0.0) {
            return Ok(None);
        }
        lens.push(len);
    }
    Ok(Some(lens))
}

/// The model's weights in the order [`weights`] takes their slices.
fn tensors(m: &BertForTokenClassification) -> Vec<&Tensor> {
    let mut v = vec![
        &m.word_embeddings,
        &m.position_embeddings,
        &m.token_type_embeddings,
    ];
    v.extend(m.lexicon_embeddings.iter());
    v.extend(m.bigram_embeddings.iter());
    v.extend(m.general_lexicon_embeddings.iter());
    v.extend([&m.emb_ln.weight, &m.emb_ln.bias]);
    for l in &m.layers {
        v.extend(l.tensors());
    }
    v.extend([&m.classifier.weight, &m.classifier.bias]);
    v
}

/// Names the slices of [`tensors`]' weights, in its order.
fn weights<'a>(m: &BertForTokenClassification, slices: &[&'a [f32]]) -> Result<Weights<'a>> {
    let mut next = slices.iter().copied();
    let mut take = || next.next().context("inference path: a weight is missing");
    let lin = |take: &mut dyn FnMut() -> Result<&'a [f32]>, l: &super::Linear| -> Result<Lin<'a>> {
        let (out, inp) = l.weight.dims2()?;
        Ok(Lin {
            w: take()?,
            b: take()?,
            inp,
            out,
        })
    };
    let norm =
        |take: &mut dyn FnMut() -> Result<&'a [f32]>, n: &super::LayerNorm| -> Result<Norm<'a>> {
            Ok(Norm {
                w: take()?,
                b: take()?,
                eps: n.eps,
            })
        };
    let word = take()?;
    let position = take()?;
    let token_type = take()?;
    let lexicon = m.lexicon_embeddings.as_ref().map(|_| take()).transpose()?;
    let bigram = m.bigram_embeddings.as_ref().map(|_| take()).transpose()?;
    let general = m
        .general_lexicon_embeddings
        .as_ref()
        .map(|_| take())
        .transpose()?;
    let emb_ln = norm(&mut take, &m.emb_ln)?;
    let mut layers = Vec::with_capacity(m.layers.len());
    for l in &m.layers {
        layers.push(LayerWeights {
            query: lin(&mut take, &l.query)?,
            key: lin(&mut take, &l.key)?,
            value: lin(&mut take, &l.value)?,
            attn_out: lin(&mut take, &l.attn_out)?,
            attn_ln: norm(&mut take, &l.attn_ln)?,
            intermediate: lin(&mut take, &l.intermediate)?,
            output: lin(&mut take, &l.output)?,
            out_ln: norm(&mut take, &l.out_ln)?,
        });
    }
    let classifier = lin(&mut take, &m.classifier)?;
    Ok(Weights {
        word,
        position,
        token_type,
        lexicon,
        bigram,
        general,
        emb_ln,
        layers,
        classifier,
    })
}

/// The logits `[rows, labels]` of the sequences `seqs`, packed one after another.
fn run_part(
    m: &BertForTokenClassification,
    w: &Weights,
    inputs: &Inputs,
    seqs: std::ops::Range<usize>,
) -> Result<Vec<f32>> {
    let h = w.emb_ln.w.len();
    let lens = &inputs.lens[seqs.clone()];
    let n: usize = lens.iter().sum();
    let mut x = vec![0f32; n * h];
    embed(w, inputs, seqs, &mut x);

    let ffn = w.layers.first().map_or(0, |l| l.intermediate.out);
    let longest = lens.iter().copied().max().unwrap_or(0);
    let mut qkv = vec![0f32; n * 3 * h];
    let mut ctx = vec![0f32; n * h];
    let mut a = vec![0f32; n * h];
    let mut inter = vec![0f32; n * ffn];
    let mut scores = vec![0f32; longest * longest];
    let scale = 1.0 / (m.head_dim as f32).sqrt();
    for l in &w.layers {
        linear(&x, n, &l.query, &mut qkv, 3 * h, 0)?;
        linear(&x, n, &l.key, &mut qkv, 3 * h, h)?;
        linear(&x, n, &l.value, &mut qkv, 3 * h, 2 * h)?;
        attention(
            &qkv,
            lens,
            m.num_heads,
            m.head_dim,
            scale,
            &mut scores,
            &mut ctx,
        )?;
        linear(&ctx, n, &l.attn_out, &mut a, h, 0)?;
        add_and_norm(&mut a, &x, &l.attn_ln);
        let ffn = l.intermediate.out;
        linear(&a, n, &l.intermediate, &mut inter[..n * ffn], ffn, 0)?;
        activate(m.act, &mut inter[..n * ffn]);
        linear(&inter[..n * ffn], n, &l.output, &mut x, h, 0)?;
        add_and_norm(&mut x, &a, &l.out_ln);
    }
    let labels = w.classifier.out;
    let mut logits = vec![0f32; n * labels];
    linear(&x, n, &w.classifier, &mut logits, labels, 0)?;
    Ok(logits)
}

/// Word + feature + position + token-type embeddings, then LayerNorm, in the
/// order `forward_with` adds them.
fn embed(w: &Weights, inputs: &Inputs, seqs: std::ops::Range<usize>, x: &mut [f32]) {
    let h = w.emb_ln.w.len();
    let mut acc = vec![0f32; h];
    let mut rows = x.chunks_mut(h);
    for s in seqs {
        for p in 0..inputs.lens[s] {
            let Some(row) = rows.next() else { return };
            let i = s * inputs.t + p;
            let id = inputs.ids[i] as usize;
            row.copy_from_slice(&w.word[id * h..(id + 1) * h]);
            for (bits, table) in [(&inputs.lexicon, w.lexicon), (&inputs.general, w.general)] {
                if let (Some(bits), Some(table)) = (bits, table) {
                    let k = table.len() / h;
                    acc.fill(0.0);
                    for (j, &v) in bits[i * k..(i + 1) * k].iter().enumerate() {
                        if v != 0.0 {
                            let e = &table[j * h..(j + 1) * h];
                            acc.iter_mut().zip(e).for_each(|(a, &e)| *a += v * e);
                        }
                    }
                    row.iter_mut().zip(&acc).for_each(|(x, &a)| *x += a);
                }
            }
            if let (Some(g), Some(table)) = (&inputs.bigrams, w.bigram) {
                let (l, r) = (g[2 * i] as usize * h, g[2 * i + 1] as usize * h);
                let (l, r) = (&table[l..l + h], &table[r..r + h]);
                for ((x, &a), &b) in row.iter_mut().zip(l).zip(r) {
                    *x += a + b;
                }
            }
            let pos = &w.position[p * h..(p + 1) * h];
            for ((x, &p), &t) in row.iter_mut().zip(pos).zip(&w.token_type[..h]) {
                *x += p + t;
            }
            layer_norm_in_place(row, w.emb_ln.w, w.emb_ln.b, w.emb_ln.eps);
        }
    }
}

/// `out[:, col0..col0 + lin.out] = x @ lin.w^T + lin.b` for `x` `[n, lin.inp]`,
/// `out` with row stride `ldo`: the bias is written first and the product
/// added to it, as `crate::blas::linear` does.
fn linear(x: &[f32], n: usize, lin: &Lin, out: &mut [f32], ldo: usize, col0: usize) -> Result<()> {
    for row in out.chunks_mut(ldo).take(n) {
        row[col0..col0 + lin.out].copy_from_slice(lin.b);
    }
    let a = Operand {
        data: x,
        off: 0,
        rows: n,
        cols: lin.inp,
        row_stride: lin.inp,
        col_stride: 1,
    };
    // w^T read in place: element (i, o) of w^T is w[o * inp + i].
    let wt = Operand {
        data: lin.w,
        off: 0,
        rows: lin.inp,
        cols: lin.out,
        row_stride: 1,
        col_stride: lin.inp,
    };
    Ok(gemm(1.0, a, wt, 1.0, out, col0, ldo)?)
}

/// `x = LayerNorm(x + residual)` row by row.
fn add_and_norm(x: &mut [f32], residual: &[f32], ln: &Norm) {
    let h = ln.w.len();
    for (row, res) in x.chunks_mut(h).zip(residual.chunks(h)) {
        row.iter_mut().zip(res).for_each(|(x, &r)| *x += r);
        layer_norm_in_place(row, ln.w, ln.b, ln.eps);
    }
}

fn activate(act: Activation, x: &mut [f32]) {
    match act {
        Activation::GeluErf => map_in_place(x, gelu_erf_value),
        Activation::GeluTanh => x.iter_mut().for_each(|v| {
            // candle's `gelu`: the tanh approximation.
            let u = *v;
            let inner = (2.0 / std::f32::consts::PI).sqrt() * u * (1.0 + 0.044_715 * u * u);
            *v = 0.5 * u * (1.0 + inner.tanh());
        }),
        Activation::Relu => x.iter_mut().for_each(|v| *v = v.max(0.0)),
    }
}

/// Self-attention of every sequence (its `len` rows of `qkv` `[n, 3h]`: q, k,
/// v side by side) and head, into `ctx` `[n, h]`.
fn attention(
    qkv: &[f32],
    lens: &[usize],
    heads: usize,
    hd: usize,
    scale: f32,
    scores: &mut [f32],
    ctx: &mut [f32],
) -> Result<()> {
    let h = heads * hd;
    let ld = 3 * h;
    let mut r0 = 0;
    for &len in lens {
        for head in 0..heads {
            let c = head * hd;
            let q = Operand {
                data: qkv,
                off: r0 * ld + c,
                rows: len,
                cols: hd,
                row_stride: ld,
                col_stride: 1,
            };
            // k^T as a view: element (d, j) is k[j, d].
            let kt = Operand {
                data: qkv,
                off: r0 * ld + h + c,
                rows: hd,
                cols: len,
                row_stride: 1,
                col_stride: ld,
            };
            let s = &mut scores[..len * len];
            gemm(scale, q, kt, 0.0, s, 0, len)?;
            s.chunks_mut(len.max(1)).for_each(softmax_in_place);
            let probs = Operand {
                data: s,
                off: 0,
                rows: len,
                cols: len,
                row_stride: len,
                col_stride: 1,
            };
            let v = Operand {
                data: qkv,
                off: r0 * ld + 2 * h + c,
                rows: len,
                cols: hd,
                row_stride: ld,
                col_stride: 1,
            };
            gemm(1.0, probs, v, 0.0, ctx, r0 * h + c, h)?;
        }
        r0 += len;
    }
    Ok(())
}
