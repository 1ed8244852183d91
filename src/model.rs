//! Trainable BERT token classifier (HF `BertForTokenClassification` layout) built on candle.
//!
//! candle-transformers' BERT is inference-only (no-op dropout, fused LayerNorm and
//! softmax kernels without a backward pass), so every op here is one that candle's
//! autograd can differentiate, or one of our fused ops (`crate::fused`) that
//! brings its own backward.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use candle_core::{backprop::GradStore, DType, Device, Tensor, D};
use candle_nn::{Init, VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal};
use serde::{Deserialize, Serialize};

use crate::crf::Crf;

mod encoder;
mod infer;

/// HF `config.json` of a BERT model. Keys we do not use are kept in `extra` so a
/// config read from a checkpoint is written back unchanged.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_hidden_act")]
    pub hidden_act: String,
    #[serde(default = "default_dropout")]
    pub hidden_dropout_prob: f64,
    #[serde(default = "default_dropout")]
    pub attention_probs_dropout_prob: f64,
    #[serde(default)]
    pub classifier_dropout: Option<f64>,
    #[serde(default = "default_max_position")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    #[serde(default = "default_initializer_range")]
    pub initializer_range: f64,
    #[serde(default = "default_layer_norm_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub pad_token_id: usize,
    /// Keys are decimal label indices, as HF writes them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id2label: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label2id: Option<BTreeMap<String, usize>>,
    /// The `cws_*` keys, parsed here and nowhere else. Written back among the
    /// other extra keys, in their sorted place, by [`Self::to_json_string`].
    #[serde(flatten, skip_serializing)]
    pub cws: Extensions,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// cws's extensions of the HF config (keys `cws_*` in config.json, which
/// transformers ignores): the sizes of the unit-feature embeddings and the
/// decoding bias a model was tuned with. Zero / false / none means absent, and
/// absent keys are not written.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct Extensions {
    /// Lexicon feature columns per unit (0: no lexicon channel).
    #[serde(rename = "cws_lexicon_features", default)]
    pub lexicon_features: usize,
    /// General word-list feature columns per unit (0: no such channel).
    #[serde(rename = "cws_general_lexicon_features", default)]
    pub general_lexicon_features: usize,
    /// Whether the general list's last ten columns mark its frequent entries
    /// (`general_lexicon_frequent` in training).
    #[serde(rename = "cws_general_lexicon_frequent", default)]
    pub general_frequent: bool,
    /// Rows of the hashed-bigram embedding table (0: no bigram channel).
    #[serde(rename = "cws_bigram_buckets", default)]
    pub bigram_buckets: usize,
    /// Whether bigrams unseen in training share one embedding; the seen set
    /// is a file of the model folder.
    #[serde(rename = "cws_bigram_seen", default)]
    pub bigram_seen: bool,
    /// Added to the scores of word-ending labels before decoding, chosen on dev.
    #[serde(rename = "cws_boundary_bias", default)]
    pub boundary_bias: Option<f32>,
    /// The output layer over the per-unit label scores.
    #[serde(rename = "cws_head", default)]
    pub head: Head,
    /// The segmentation standard of the model's training data, when its
    /// config named one (`standard`); `--standard` checks it.
    #[serde(rename = "cws_standard", default)]
    pub standard: Option<Standard>,
    /// A joint (multi-criteria) model's standards, in the order of their
    /// columns after the lexicon bits (one learned vector each, added at
    /// every position); `--standard` picks one, the first by default.
    #[serde(rename = "cws_standards", default)]
    pub standards: Vec<Standard>,
    /// A joint model's boundary bias per standard (in `standards` order).
    #[serde(rename = "cws_boundary_biases", default)]
    pub boundary_biases: Vec<f32>,
    /// How a joint model reads its standard.
    #[serde(rename = "cws_standard_input", default)]
    pub standard_input: StandardInput,
}

/// How a joint model is told which standard to segment by.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StandardInput {
    /// A learned vector per standard added at every position (a column
    /// after the standard's lexicon bits).
    #[default]
    Column,
    /// A learned token per standard in [CLS]'s place (`[PKU]`, `[MSR]`),
    /// which every position attends to.
    Token,
}

/// A segmentation standard: which words a corpus's annotators call words
/// (PKU's splits `１９９８年 １月`, MSR's keeps longer names and numbers whole).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Standard {
    /// Peking University's (SIGHAN 2005 PKU corpus).
    Pku,
    /// Microsoft Research Asia's (SIGHAN 2005 MSR corpus).
    Msr,
}

impl Standard {
    pub fn name(self) -> &'static str {
        match self {
            Standard::Pku => "pku",
            Standard::Msr => "msr",
        }
    }

    /// A joint model's token for the standard (`cws_standard_input = token`).
    pub fn token(self) -> &'static str {
        match self {
            Standard::Pku => "[PKU]",
            Standard::Msr => "[MSR]",
        }
    }
}

/// The output layer: a softmax per unit, or a CRF over the sequence.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Head {
    #[default]
    Softmax,
    Crf,
}

impl Extensions {
    /// The keys to write, as JSON values.
    fn entries(&self) -> Vec<(&'static str, serde_json::Value)> {
        use serde_json::json;
        let mut out = Vec::new();
        if self.general_lexicon_features > 0 {
            out.push((
                "cws_general_lexicon_features",
                json!(self.general_lexicon_features),
            ));
        }
        if self.general_frequent {
            out.push(("cws_general_lexicon_frequent", json!(true)));
        }
        if self.lexicon_features > 0 {
            out.push(("cws_lexicon_features", json!(self.lexicon_features)));
        }
        if self.bigram_buckets > 0 {
            out.push(("cws_bigram_buckets", json!(self.bigram_buckets)));
        }
        if self.bigram_seen {
            out.push(("cws_bigram_seen", json!(true)));
        }
        if let Some(b) = self.boundary_bias {
            out.push(("cws_boundary_bias", json!(b)));
        }
        if self.head == Head::Crf {
            out.push(("cws_head", json!(self.head)));
        }
        if let Some(s) = self.standard {
            out.push(("cws_standard", json!(s)));
        }
        if !self.standards.is_empty() {
            out.push(("cws_standards", json!(self.standards)));
        }
        if !self.boundary_biases.is_empty() {
            out.push(("cws_boundary_biases", json!(self.boundary_biases)));
        }
        if self.standard_input == StandardInput::Token {
            out.push(("cws_standard_input", json!(self.standard_input)));
        }
        out
    }
}

/// Padded unit-feature tensors of a batch, laid out like its `input_ids`
/// ([CLS] at 0), for a model with [`Extensions`] (built by `crate::features`).
pub struct BatchFeatures {
    /// f32 `[b, t, lexicon_features]` of 0/1 bits and statistics bins.
    pub lexicon: Option<Tensor>,
    /// u32 `[b, t, 2]` bucket ids.
    pub bigrams: Option<Tensor>,
    /// f32 `[b, t, general_lexicon_features]` 0/1 bits of the general list.
    pub general: Option<Tensor>,
}

impl BatchFeatures {
    pub fn none() -> Self {
        BatchFeatures {
            lexicon: None,
            bigrams: None,
            general: None,
        }
    }
}

fn default_hidden_act() -> String {
    "gelu".into()
}
fn default_dropout() -> f64 {
    0.1
}
fn default_max_position() -> usize {
    512
}
fn default_type_vocab() -> usize {
    2
}
fn default_initializer_range() -> f64 {
    0.02
}
fn default_layer_norm_eps() -> f64 {
    1e-12
}

impl BertConfig {
    pub fn from_json_str(s: &str) -> Result<Self> {
        let cfg: Self = serde_json::from_str(s).context("parsing BERT config.json")?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn from_file(path: impl AsRef<std::path::Path>) -> Result<Self> {
        let path = path.as_ref();
        let s =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::from_json_str(&s).with_context(|| format!("in {}", path.display()))
    }

    /// The config as transformers writes it, with the cws extensions among
    /// the other extra keys (sorted).
    pub fn to_json_string(&self) -> Result<String> {
        let mut wire = self.clone();
        for (key, value) in self.cws.entries() {
            wire.extra.insert(key.into(), value);
        }
        Ok(serde_json::to_string_pretty(&wire)?)
    }

    fn validate(&self) -> Result<()> {
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            bail!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size,
                self.num_attention_heads
            );
        }
        if self.pad_token_id >= self.vocab_size {
            bail!("pad_token_id {} outside vocab", self.pad_token_id);
        }
        Activation::parse(&self.hidden_act)?;
        Ok(())
    }

    /// Number of output labels; HF's default of 2 when the config names none.
    pub fn num_labels(&self) -> usize {
        if let Some(m) = &self.id2label {
            return m.len();
        }
        self.extra
            .get("num_labels")
            .and_then(|v| v.as_u64())
            .map_or(2, |n| n as usize)
    }

    /// Turns the config into that of a token classifier over `labels`, marking it
    /// as such for transformers' `from_pretrained`.
    pub fn set_labels(&mut self, labels: &[&str]) {
        self.id2label = Some(
            labels
                .iter()
                .enumerate()
                .map(|(i, l)| (i.to_string(), l.to_string()))
                .collect(),
        );
        self.label2id = Some(
            labels
                .iter()
                .enumerate()
                .map(|(i, l)| (l.to_string(), i))
                .collect(),
        );
        self.extra.remove("num_labels");
        self.mark_token_classifier();
    }

    /// Names the architecture and model type that transformers'
    /// `from_pretrained` reads from config.json.
    pub fn mark_token_classifier(&mut self) {
        self.extra.insert(
            "architectures".into(),
            serde_json::json!(["BertForTokenClassification"]),
        );
        self.extra
            .entry("model_type")
            .or_insert_with(|| serde_json::json!("bert"));
    }

    fn classifier_dropout_prob(&self) -> f64 {
        self.classifier_dropout.unwrap_or(self.hidden_dropout_prob)
    }
}

#[derive(Debug, Clone, Copy)]
enum Activation {
    GeluErf,
    GeluTanh,
    Relu,
}

impl Activation {
    fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "gelu" => Self::GeluErf,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Self::GeluTanh,
            "relu" => Self::Relu,
            other => bail!("unsupported hidden_act {other:?}"),
        })
    }

    fn apply(self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::GeluErf => crate::fused::gelu_erf(x),
            Self::GeluTanh => x.gelu(),
            Self::Relu => x.relu(),
        }
    }
}

/// Source of dropout masks. Passing one to `forward` means training mode; a
/// seeded instance makes a CPU training run reproducible. On an accelerator the
/// masks are drawn on the device (seeded through `Device::set_seed`) so that no
/// mask crosses from host to device.
pub struct DropoutRng {
    rng: rand::rngs::SmallRng,
}

impl DropoutRng {
    pub fn new(seed: u64) -> Self {
        Self {
            rng: rand::rngs::SmallRng::seed_from_u64(seed),
        }
    }

    /// Inverted dropout as torch does it (kept units are scaled by
    /// 1/(1-p)), then `+ residual` if one is given. On the CPU the mask is
    /// drawn here and applied by `crate::fused::dropout_add` (in f32 one op
    /// holding the mask: backward neither computes a gradient for the mask nor
    /// keeps a node for the sum).
    fn apply(
        &mut self,
        x: &Tensor,
        p: f64,
        residual: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        let plus = |d: Tensor| match residual {
            Some(r) => d + r,
            None => Ok(d),
        };
        if p <= 0.0 {
            return plus(x.clone());
        }
        if p >= 1.0 {
            return plus(x.zeros_like()?);
        }
        if !x.device().is_cpu() {
            let keep = Tensor::rand(0f32, 1f32, x.shape(), x.device())?.ge(p)?;
            let mask = (keep.to_dtype(x.dtype())? * (1.0 / (1.0 - p)))?;
            return plus(x.mul(&mask)?);
        }
        let mut mask = vec![0f32; x.elem_count()];
        fill_dropout_mask(&mut self.rng, p, &mut mask);
        crate::fused::dropout_add(x, mask, residual)
    }

    /// A seed for masks drawn elsewhere (the CPU training encoder draws each
    /// sequence's masks from its own stream, in parallel and again in backward).
    fn next_seed(&mut self) -> u64 {
        self.rng.random()
    }
}

/// Inverted-dropout factors: each element is 0 with probability `p` (to the
/// nearest 1/65536), else 1/(1-p), from consecutive 16-bit quarters of
/// `rng`'s 64-bit draws.
fn fill_dropout_mask(rng: &mut rand::rngs::SmallRng, p: f64, mask: &mut [f32]) {
    // Comparing raw 16-bit draws against a threshold avoids a float
    // conversion per unit, and one draw serves four.
    let threshold = (p * 65536.0).round() as u64;
    let scale = (1.0 / (1.0 - p)) as f32;
    for quad in mask.chunks_mut(4) {
        let r: u64 = rng.random();
        for (i, m) in quad.iter_mut().enumerate() {
            let q = (r >> (16 * i)) & 0xffff;
            *m = if q >= threshold { scale } else { 0.0 };
        }
    }
}

/// Dropout in training (`rng` given), identity in inference.
fn apply_dropout(
    x: &Tensor,
    p: f64,
    rng: &mut Option<&mut DropoutRng>,
) -> candle_core::Result<Tensor> {
    match rng {
        Some(r) => r.apply(x, p, None),
        None => Ok(x.clone()),
    }
}

/// `dropout(x) + residual`: a residual connection after dropout.
fn dropout_add(
    x: &Tensor,
    p: f64,
    rng: &mut Option<&mut DropoutRng>,
    residual: &Tensor,
) -> candle_core::Result<Tensor> {
    match rng {
        Some(r) => r.apply(x, p, Some(residual)),
        None => x + residual,
    }
}

/// `x @ w.T + b` on 2-D activations `[n, in]`; keeping activations 2-D lets
/// one GEMM cover the whole batch.
#[derive(Debug, Clone)]
struct Linear {
    weight: Tensor,
    bias: Tensor,
}

fn cast(t: &Tensor, dtype: DType) -> candle_core::Result<Tensor> {
    if t.dtype() == dtype {
        Ok(t.clone())
    } else {
        t.to_dtype(dtype)
    }
}

impl Linear {
    fn new(vb: VarBuilder, in_dim: usize, out_dim: usize) -> candle_core::Result<Self> {
        Ok(Self {
            weight: vb.get_with_hints((out_dim, in_dim), "weight", Init::Const(0.))?,
            bias: vb.get_with_hints(out_dim, "bias", Init::Const(0.))?,
        })
    }

    /// Runs in the activations' dtype: with f32 weights and half-precision
    /// activations (mixed precision) the weights are cast on the way in, and
    /// the cast passes gradients back to the f32 master weights.
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (w, b) = (cast(&self.weight, x.dtype())?, cast(&self.bias, x.dtype())?);
        crate::blas::linear(x, &w, &b)
    }
}

/// LayerNorm with a backward pass (candle-nn's fused one has none): our fused
/// kernel for f32, differentiable primitives otherwise.
#[derive(Debug, Clone)]
struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    fn new(vb: VarBuilder, dim: usize, eps: f64) -> candle_core::Result<Self> {
        Ok(Self {
            weight: vb.get_with_hints(dim, "weight", Init::Const(1.))?,
            bias: vb.get_with_hints(dim, "bias", Init::Const(0.))?,
            eps,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let dtype = x.dtype();
        if dtype == DType::F32 && self.weight.dtype() == DType::F32 {
            return crate::fused::layer_norm(x, &self.weight, &self.bias, self.eps);
        }
        // Half-precision statistics lose too much; normalise in f32 like torch's kernel.
        let xf = match dtype {
            DType::F16 | DType::BF16 => x.to_dtype(DType::F32)?,
            _ => x.clone(),
        };
        let mean = xf.mean_keepdim(D::Minus1)?;
        let centered = xf.broadcast_sub(&mean)?;
        let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = centered.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        let (w, b) = (
            cast(&self.weight, normed.dtype())?,
            cast(&self.bias, normed.dtype())?,
        );
        normed.broadcast_mul(&w)?.broadcast_add(&b)?.to_dtype(dtype)
    }
}

#[derive(Debug, Clone)]
struct Layer {
    query: Linear,
    key: Linear,
    value: Linear,
    attn_out: Linear,
    attn_ln: LayerNorm,
    intermediate: Linear,
    output: Linear,
    out_ln: LayerNorm,
}

impl Layer {
    /// The layer's 16 weight tensors in one fixed order: q, k, v and the
    /// attention output (weight, bias each), the first LayerNorm, the
    /// intermediate and output layers, the second LayerNorm.
    fn tensors(&self) -> [&Tensor; 16] {
        let (q, k, v, ao) = (&self.query, &self.key, &self.value, &self.attn_out);
        let (i, o) = (&self.intermediate, &self.output);
        [
            &q.weight,
            &q.bias,
            &k.weight,
            &k.bias,
            &v.weight,
            &v.bias,
            &ao.weight,
            &ao.bias,
            &self.attn_ln.weight,
            &self.attn_ln.bias,
            &i.weight,
            &i.bias,
            &o.weight,
            &o.bias,
            &self.out_ln.weight,
            &self.out_ln.bias,
        ]
    }
}

/// HF `BertForTokenClassification` without the pooler. Weights live in the
/// `VarMap` behind the `VarBuilder` given to [`BertForTokenClassification::new`].
#[derive(Debug, Clone)]
pub struct BertForTokenClassification {
    word_embeddings: Tensor,
    position_embeddings: Tensor,
    token_type_embeddings: Tensor,
    /// `[LEXICON_FEATURES, h]`: one vector per lexicon feature bit (cws extension).
    lexicon_embeddings: Option<Tensor>,
    /// `[buckets, h]`: hashed left/right bigram embeddings (cws extension).
    bigram_embeddings: Option<Tensor>,
    /// `[LEXICON_FEATURES, h]`: the general word list's bits (cws extension).
    general_lexicon_embeddings: Option<Tensor>,
    emb_ln: LayerNorm,
    layers: Vec<Layer>,
    classifier: Linear,
    /// The CRF over the classifier's scores, for `cws_head = "crf"`.
    crf: Option<Crf>,
    num_heads: usize,
    head_dim: usize,
    act: Activation,
    hidden_dropout: f64,
    attn_dropout: f64,
    classifier_dropout: f64,
    pad_token_id: usize,
    dtype: DType,
    /// Dtype of the activations: the weights' dtype, or a half-precision dtype
    /// for mixed-precision training over f32 weights.
    compute: DType,
    /// Gradients of the weights the CPU training path (`model::encoder`)
    /// reads outside candle's graph, handed over by [`Self::backward`].
    cpu_grads: encoder::GradSink,
    /// Run the encoder as candle ops even where `model::encoder` applies.
    graph_encoder: bool,
}

impl BertForTokenClassification {
    /// Creates (or fetches) every parameter under its HF name. With a fresh
    /// `VarMap` the values are placeholders: call [`init_weights`] or load a checkpoint.
    pub fn new(vb: VarBuilder, cfg: &BertConfig) -> Result<Self> {
        cfg.validate()?;
        let h = cfg.hidden_size;
        let eps = cfg.layer_norm_eps;
        let bert = vb.pp("bert");
        let emb = bert.pp("embeddings");
        let word_embeddings = emb.pp("word_embeddings").get_with_hints(
            (cfg.vocab_size, h),
            "weight",
            Init::Const(0.),
        )?;
        let position_embeddings = emb.pp("position_embeddings").get_with_hints(
            (cfg.max_position_embeddings, h),
            "weight",
            Init::Const(0.),
        )?;
        let token_type_embeddings = emb.pp("token_type_embeddings").get_with_hints(
            (cfg.type_vocab_size.max(1), h),
            "weight",
            Init::Const(0.),
        )?;
        // cws extensions: an embedding table whose row count the config gives.
        let extension = |rows: usize, name: &str| -> candle_core::Result<Option<Tensor>> {
            match rows {
                0 => Ok(None),
                n => emb
                    .pp(name)
                    .get_with_hints((n, h), "weight", Init::Const(0.))
                    .map(Some),
            }
        };
        let lexicon_embeddings = extension(cfg.cws.lexicon_features, "lexicon_embeddings")?;
        let bigram_embeddings = extension(cfg.cws.bigram_buckets, "bigram_embeddings")?;
        let general_lexicon_embeddings = extension(
            cfg.cws.general_lexicon_features,
            "general_lexicon_embeddings",
        )?;
        let emb_ln = LayerNorm::new(emb.pp("LayerNorm"), h, eps)?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let l = bert.pp("encoder").pp("layer").pp(i);
            let att = l.pp("attention");
            let s = att.pp("self");
            layers.push(Layer {
                query: Linear::new(s.pp("query"), h, h)?,
                key: Linear::new(s.pp("key"), h, h)?,
                value: Linear::new(s.pp("value"), h, h)?,
                attn_out: Linear::new(att.pp("output").pp("dense"), h, h)?,
                attn_ln: LayerNorm::new(att.pp("output").pp("LayerNorm"), h, eps)?,
                intermediate: Linear::new(
                    l.pp("intermediate").pp("dense"),
                    h,
                    cfg.intermediate_size,
                )?,
                output: Linear::new(l.pp("output").pp("dense"), cfg.intermediate_size, h)?,
                out_ln: LayerNorm::new(l.pp("output").pp("LayerNorm"), h, eps)?,
            });
        }
        let classifier = Linear::new(vb.pp("classifier"), h, cfg.num_labels())?;
        let crf = match cfg.cws.head {
            Head::Softmax => None,
            Head::Crf => Some(Crf::new(vb.pp(crate::crf::PREFIX))?),
        };
        Ok(Self {
            crf,
            dtype: word_embeddings.dtype(),
            compute: word_embeddings.dtype(),
            word_embeddings,
            position_embeddings,
            token_type_embeddings,
            lexicon_embeddings,
            bigram_embeddings,
            general_lexicon_embeddings,
            emb_ln,
            layers,
            classifier,
            num_heads: cfg.num_attention_heads,
            head_dim: h / cfg.num_attention_heads,
            act: Activation::parse(&cfg.hidden_act)?,
            hidden_dropout: cfg.hidden_dropout_prob,
            attn_dropout: cfg.attention_probs_dropout_prob,
            classifier_dropout: cfg.classifier_dropout_prob(),
            pad_token_id: cfg.pad_token_id,
            cpu_grads: encoder::GradSink::default(),
            graph_encoder: false,
        })
    }

    /// Convenience: a fresh `VarMap`-backed model with seeded HF-style init.
    pub fn new_random(
        varmap: &VarMap,
        cfg: &BertConfig,
        seed: u64,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let model = Self::new(VarBuilder::from_varmap(varmap, dtype, device), cfg)?;
        init_weights(varmap, cfg, seed)?;
        Ok(model)
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The CRF output layer, for a model with `cws_head = "crf"`.
    pub fn crf(&self) -> Option<&Crf> {
        self.crf.as_ref()
    }

    /// Mixed precision (autocast-style): activations and matmuls in `dtype`
    /// (bf16 or f16), weights, LayerNorm statistics and the loss in f32.
    pub fn set_compute_dtype(&mut self, dtype: DType) {
        self.compute = dtype;
    }

    /// Runs the word-embedding lookup and the encoder layers as candle ops
    /// with candle's autograd (`true`) instead of the CPU training path of
    /// `model::encoder`, where that one applies: for tests and measurements;
    /// the results agree to rounding.
    pub fn set_graph_encoder(&mut self, on: bool) {
        self.graph_encoder = on;
    }

    pub fn device(&self) -> &Device {
        self.word_embeddings.device()
    }

    /// Logits `[b, t, num_labels]` in the weights' dtype. `input_ids` is u32
    /// `[b, t]`, `attention_mask` any numeric dtype with 1 = attend, 0 = padding.
    /// `dropout: Some(_)` is training mode. Logits at padding positions are
    /// not meaningful: the CPU path (`model::encoder`) never computes padding
    /// rows and gives them the classifier's bias.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        dropout: Option<&mut DropoutRng>,
    ) -> Result<Tensor> {
        self.forward_with(input_ids, attention_mask, &BatchFeatures::none(), dropout)
    }

    /// Logits for inference: what `forward_with(.., None)` computes, without
    /// a graph for autograd. On the CPU with f32 weights and a BLAS this runs
    /// the lean path of `model::infer` (padding positions then hold 0);
    /// elsewhere it is `forward_with`.
    pub fn infer(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        features: &BatchFeatures,
    ) -> Result<Tensor> {
        if infer::applies(self) {
            if let Some(logits) = infer::logits(self, input_ids, attention_mask, features)? {
                return Ok(logits);
            }
        }
        self.forward_with(input_ids, attention_mask, features, None)
    }

    /// Whether the model reads lexicon or bigram features (a cws extension of
    /// the HF architecture; transformers would ignore those tensors).
    pub fn uses_features(&self) -> bool {
        self.lexicon_embeddings.is_some()
            || self.bigram_embeddings.is_some()
            || self.general_lexicon_embeddings.is_some()
    }

    /// [`forward`](Self::forward) with the unit features a model trained with
    /// them needs; their embeddings are added to the word embeddings.
    pub fn forward_with(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        features: &BatchFeatures,
        mut dropout: Option<&mut DropoutRng>,
    ) -> Result<Tensor> {
        let (b, t) = input_ids
            .dims2()
            .context("input_ids must be [batch, seq]")?;
        if t > self.position_embeddings.dim(0)? {
            bail!(
                "sequence length {t} exceeds max_position_embeddings {}",
                self.position_embeddings.dim(0)?
            );
        }
        let h = self.word_embeddings.dim(1)?;
        let ids = input_ids.to_dtype(DType::U32)?.flatten_all()?;
        let lookup = match self.graph_encoder {
            true => None,
            false => encoder::lookup(self, &ids)?,
        };
        let mut words = match lookup {
            Some(rows) => rows,
            None => self.word_embeddings.index_select(&ids, 0)?,
        };
        for (embeddings, bits, what) in [
            (&self.lexicon_embeddings, &features.lexicon, "lexicon"),
            (
                &self.general_lexicon_embeddings,
                &features.general,
                "general word-list",
            ),
        ] {
            match (embeddings, bits) {
                (Some(w), Some(f)) => {
                    let f = f.reshape((b * t, ()))?.to_dtype(w.dtype())?;
                    words = (words + f.matmul(w)?)?;
                }
                (Some(_), None) => bail!("this model needs {what} features"),
                _ => {}
            }
        }
        match (&self.bigram_embeddings, &features.bigrams) {
            (Some(w), Some(g)) => {
                let g = w
                    .index_select(&g.flatten_all()?, 0)?
                    .reshape((b * t, 2, h))?;
                words = (words + g.sum(1)?)?;
            }
            (Some(_), None) => bail!("this model needs bigram features"),
            _ => {}
        }
        let words = words.reshape((b, t, h))?;
        // Position and (all-zero) token-type embeddings are the same for every
        // sequence: add [t, h] + [1, h] once and broadcast over the batch.
        let pos_type = self
            .position_embeddings
            .narrow(0, 0, t)?
            .broadcast_add(&self.token_type_embeddings.narrow(0, 0, 1)?)?;
        let x = words.broadcast_add(&pos_type)?.reshape((b * t, h))?;
        let x = cast(&self.emb_ln.forward(&x)?, self.compute)?;
        let mut x = apply_dropout(&x, self.hidden_dropout, &mut dropout)?;

        let fused = match self.graph_encoder {
            true => None,
            false => encoder::run(self, &x, attention_mask, b, t, &mut dropout)?,
        };
        match fused {
            Some(y) => x = y,
            None => {
                let bias = self.attention_bias(attention_mask, b, t)?;
                for layer in &self.layers {
                    x = self.layer_forward(layer, &x, &bias, b, t, &mut dropout)?;
                }
            }
        }
        let x = apply_dropout(&x, self.classifier_dropout, &mut dropout)?;
        let logits = self.classifier.forward(&x)?;
        Ok(logits.reshape((b, t, ()))?)
    }

    /// Additive mask `[b, 1, 1, t]`: 0 where attended, the dtype's lowest value
    /// on padding, as current transformers builds it.
    fn attention_bias(&self, mask: &Tensor, b: usize, t: usize) -> Result<Tensor> {
        let lowest = match self.compute {
            DType::F16 => f64::from(half::f16::MIN),
            DType::BF16 => f64::from(half::bf16::MIN),
            DType::F64 => f64::MIN,
            _ => f64::from(f32::MIN),
        };
        let mask = mask.to_dtype(self.compute)?;
        let bias = ((1.0 - mask)? * lowest)?;
        Ok(bias.reshape((b, 1, 1, t))?)
    }

    fn layer_forward(
        &self,
        l: &Layer,
        x: &Tensor,
        bias: &Tensor,
        b: usize,
        t: usize,
        rng: &mut Option<&mut DropoutRng>,
    ) -> Result<Tensor> {
        let (nh, hd) = (self.num_heads, self.head_dim);
        // [b*t, h] -> [b, nh, t, hd] as a view: each head is a [t, hd] matrix
        // with row stride h, which BLAS reads in place.
        let heads = |y: Tensor| -> candle_core::Result<Tensor> {
            y.reshape((b, t, nh, hd))?.transpose(1, 2)
        };
        let q = heads(l.query.forward(x)?)?;
        let k = heads(l.key.forward(x)?)?;
        let v = heads(l.value.forward(x)?)?;
        // The 1/sqrt(hd) scale rides on the product instead of a pass over q.
        let scale = 1.0 / (hd as f64).sqrt();
        let scores = crate::blas::matmul_scaled(&q, &k.t()?, scale)?;
        let probs = match scores.dtype() {
            // Half-precision softmax sums lose too much: take it in f32, as autocast does.
            DType::F16 | DType::BF16 => crate::fused::masked_softmax_last(
                &scores.to_dtype(DType::F32)?,
                &bias.to_dtype(DType::F32)?,
            )?
            .to_dtype(scores.dtype())?,
            _ => crate::fused::masked_softmax_last(&scores, bias)?,
        };
        let probs = apply_dropout(&probs, self.attn_dropout, rng)?;
        let ctx = crate::blas::matmul(&probs, &v)?
            .transpose(1, 2)?
            .reshape((b * t, nh * hd))?;
        let a = l.attn_out.forward(&ctx)?;
        let a = l
            .attn_ln
            .forward(&dropout_add(&a, self.hidden_dropout, rng, x)?)?;
        let i = self.act.apply(&l.intermediate.forward(&a)?)?;
        let o = l.output.forward(&i)?;
        Ok(l.out_ln
            .forward(&dropout_add(&o, self.hidden_dropout, rng, &a)?)?)
    }

    /// `loss.backward()` plus the gradients the CPU training path
    /// (`model::encoder`) keeps out of candle's graph (the encoder's weights,
    /// the word embeddings), and torch's `padding_idx` rule: the padding row
    /// of the word embeddings never receives a gradient.
    pub fn backward(&self, loss: &Tensor) -> Result<GradStore> {
        self.cpu_grads.take();
        let mut grads = loss.backward()?;
        for (var, g) in self.cpu_grads.take() {
            let g = match grads.remove(&var) {
                Some(earlier) => (earlier + g)?,
                None => g,
            };
            grads.insert(&var, g);
        }
        if let Some(g) = grads.get(&self.word_embeddings) {
            if crate::fused::zero_row_in_place(g, self.pad_token_id)? {
                return Ok(grads);
            }
            let vocab = g.dim(0)?;
            let mut keep = vec![1f32; vocab];
            keep[self.pad_token_id] = 0.0;
            let keep = Tensor::from_vec(keep, (vocab, 1), g.device())?.to_dtype(g.dtype())?;
            let masked = g.broadcast_mul(&keep)?;
            grads.insert(&self.word_embeddings, masked);
        }
        Ok(grads)
    }
}

/// Seeded HF-style init of every var in `varmap`: normal(0, initializer_range)
/// for linear and embedding weights with the padding row zeroed, LayerNorm 1/0,
/// biases 0. Vars are visited in name order so one seed always gives the same model.
pub fn init_weights(varmap: &VarMap, cfg: &BertConfig, seed: u64) -> Result<()> {
    let data = varmap.data().lock().expect("VarMap lock poisoned");
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let normal = Normal::new(0f32, cfg.initializer_range as f32)?;
    for name in names {
        let var = &data[name];
        let shape = var.shape().clone();
        let n = shape.elem_count();
        let values: Vec<f32> = if name.starts_with("crf.") {
            // As pytorch-crf initialises its scores.
            let uniform = rand_distr::Uniform::new(-0.1f32, 0.1)?;
            (0..n).map(|_| uniform.sample(&mut rng)).collect()
        } else if name.contains("LayerNorm") {
            let v = if name.ends_with(".weight") { 1.0 } else { 0.0 };
            vec![v; n]
        } else if name.ends_with(".bias") {
            vec![0.0; n]
        } else {
            let mut v: Vec<f32> = (0..n).map(|_| normal.sample(&mut rng)).collect();
            if name.ends_with("word_embeddings.weight") {
                let cols = shape.dims()[1];
                let row = cfg.pad_token_id * cols;
                v[row..row + cols].fill(0.0);
            }
            v
        };
        let t = Tensor::from_vec(values, shape, var.device())?.to_dtype(var.dtype())?;
        var.set(&t)?;
    }
    Ok(())
}

/// Mean cross-entropy over positions whose label is not -100, like torch's
/// `CrossEntropyLoss(ignore_index=-100)`. `logits` `[.., c]`, `labels` i64 of the
/// leading shape. Computed in f32. Errors when every label is ignored.
pub fn masked_cross_entropy(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let (logp, idx, keep, count) = masked_log_probs(logits, labels)?;
    let picked = logp.gather(&idx, 1)?.squeeze(1)?;
    Ok((picked.mul(&keep)?.sum_all()? * (-1.0 / count as f64))?)
}

/// Cross-entropy against soft targets (`targets` `[.., c]`, rows summing to
/// 1, e.g. a teacher's probabilities), averaged over the positions whose
/// `labels` are not -100, as [`masked_cross_entropy`] averages.
pub fn masked_soft_cross_entropy(
    logits: &Tensor,
    targets: &Tensor,
    labels: &Tensor,
) -> Result<Tensor> {
    let (logp, _, keep, count) = masked_log_probs(logits, labels)?;
    let targets = targets.to_dtype(DType::F32)?.reshape(logp.shape())?;
    let per_row = (logp * targets)?.sum(1)?;
    Ok((per_row.mul(&keep)?.sum_all()? * (-1.0 / count as f64))?)
}

/// f32 log-probabilities `[n, c]` of `logits`, each row's label index `[n, 1]`
/// (0 where ignored), its 0/1 weight `[n]`, and the number of rows kept.
fn masked_log_probs(logits: &Tensor, labels: &Tensor) -> Result<(Tensor, Tensor, Tensor, usize)> {
    let c = logits.dim(D::Minus1)?;
    let logits = logits.to_dtype(DType::F32)?.reshape(((), c))?;
    let n = logits.dim(0)?;
    let labels: Vec<i64> = labels.to_dtype(DType::I64)?.flatten_all()?.to_vec1()?;
    if labels.len() != n {
        bail!("{} labels for {n} logit rows", labels.len());
    }
    let mut idx = Vec::with_capacity(n);
    let mut keep = Vec::with_capacity(n);
    let mut count = 0usize;
    for &l in &labels {
        if l == -100 {
            idx.push(0u32);
            keep.push(0f32);
        } else {
            if l < 0 || l as usize >= c {
                bail!("label {l} outside 0..{c}");
            }
            idx.push(l as u32);
            keep.push(1f32);
            count += 1;
        }
    }
    if count == 0 {
        bail!("every label is ignored (-100)");
    }
    let dev = logits.device();
    let idx = Tensor::from_vec(idx, (n, 1), dev)?;
    let keep = Tensor::from_vec(keep, n, dev)?;
    let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
    Ok((logp, idx, keep, count))
}
