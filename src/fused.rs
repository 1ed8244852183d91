//! Fused CPU f32 kernels with a backward pass for the model's hottest elementwise ops.
//!
//! candle's composite softmax/GELU take many single-threaded passes (and as many
//! more in backward); these do one parallel pass each way. Other devices and
//! dtypes fall back to the composite, differentiable candle ops.
//! Sums over chunks join their partials in one fixed order ([`ordered_reduce`]),
//! so a kernel's output has the same bits on any number of threads.

use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, DType, Device, Layout, Result, Shape, Tensor, D,
};
use rayon::prelude::*;

/// Rows handed to one rayon task: big enough to amortise scheduling.
const CHUNK: usize = 16 * 1024;

fn fast_path(x: &Tensor) -> bool {
    matches!(x.device(), Device::Cpu) && x.dtype() == DType::F32
}

/// The f32 elements of a contiguous layout of CPU storage.
pub(crate) fn slice<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&s.as_slice::<f32>()?[a..b]),
        None => candle_core::bail!("fused op needs a contiguous input"),
    }
}

/// [`slice`] for writing (in-place ops).
pub(crate) fn slice_mut<'a>(s: &'a mut CpuStorage, l: &Layout) -> Result<&'a mut [f32]> {
    let Some((a, b)) = l.contiguous_offsets() else {
        candle_core::bail!("in-place op needs a contiguous tensor");
    };
    match s {
        CpuStorage::F32(v) => Ok(&mut v[a..b]),
        _ => candle_core::bail!("in-place op needs f32"),
    }
}

/// Softmax of one row, in place: the row kernel of [`softmax_last`] and
/// [`masked_softmax_last`] (and of attention in `model`'s inference path).
#[inline]
pub(crate) fn softmax_in_place(o: &mut [f32]) {
    let max = o.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    map_in_place(o, |v| exp(v - max));
    let sum: f32 = o.iter().sum();
    let inv = 1.0 / sum;
    o.iter_mut().for_each(|o| *o *= inv);
}

/// `x[i] = f(x[i], y[i])` (with `y` empty: `x[i] = f(x[i], 0)`), compiled
/// for the widest vector unit the CPU has (AVX-512, AVX2, else the
/// baseline): `f` must be plain arithmetic (no library calls) to vectorize.
/// Without fused multiply-adds (Rust never contracts) every width gives the
/// same bits.
#[inline(always)]
fn map_widest<F: Fn(f32, f32) -> f32>(x: &mut [f32], y: &[f32], f: F) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F.
            return unsafe { map_avx512(x, y, f) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2.
            return unsafe { map_avx2(x, y, f) };
        }
    }
    map_loop(x, y, f)
}

#[inline(always)]
fn map_loop<F: Fn(f32, f32) -> f32>(x: &mut [f32], y: &[f32], f: F) {
    if y.is_empty() {
        x.iter_mut().for_each(|v| *v = f(*v, 0.0));
    } else {
        x.iter_mut().zip(y).for_each(|(v, &y)| *v = f(*v, y));
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn map_avx512<F: Fn(f32, f32) -> f32>(x: &mut [f32], y: &[f32], f: F) {
    map_loop(x, y, f)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn map_avx2<F: Fn(f32, f32) -> f32>(x: &mut [f32], y: &[f32], f: F) {
    map_loop(x, y, f)
}

/// `x[i] = f(x[i])` on the widest vector unit ([`map_widest`]).
#[inline(always)]
pub(crate) fn map_in_place<F: Fn(f32) -> f32>(x: &mut [f32], f: F) {
    map_widest(x, &[], |v, _| f(v))
}

/// `x[i] = f(x[i], y[i])` on the widest vector unit ([`map_widest`]).
#[inline(always)]
pub(crate) fn map2_in_place<F: Fn(f32, f32) -> f32>(x: &mut [f32], y: &[f32], f: F) {
    assert_eq!(x.len(), y.len(), "map2_in_place: lengths differ");
    map_widest(x, y, f)
}

/// `e^x` within 1.2 ulp (1e-7 relative), in plain arithmetic so that loops
/// over it vectorize (libm's `expf` is a call per element): `x = k ln2 + r`
/// with `|r| <= ln2/2`, `e^r` by its Taylor series to `r^7`, `2^k` built in
/// the exponent bits. Below -87 (where `e^x` leaves the normal floats) it
/// gives 0; NaN stays NaN.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    // Adding 1.5 * 2^23 rounds to an integer, which lands in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    const LN2_HI: f32 = 0.693_359_4; // ln 2 in few bits: k * LN2_HI is exact
    const LN2_LO: f32 = -2.121_944_4e-4;
    let xc = x.clamp(-87.0, 88.0);
    let kr = xc * std::f32::consts::LOG2_E + ROUND;
    let k = kr.to_bits().wrapping_sub(ROUND.to_bits());
    let kf = kr - ROUND;
    let r = xc - kf * LN2_HI - kf * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0
                        + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    let y = p * f32::from_bits(k.wrapping_add(127) << 23);
    if x.is_nan() {
        x
    } else if x < -87.0 {
        0.0
    } else {
        y
    }
}

/// Softmax over the last dimension.
pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    if !fast_path(x) {
        let max = x.max_keepdim(D::Minus1)?;
        let e = x.broadcast_sub(&max)?.exp()?;
        let sum = e.sum_keepdim(D::Minus1)?;
        return e.broadcast_div(&sum);
    }
    x.contiguous()?.apply_op1(SoftmaxLast)
}

/// `softmax_last(scores + bias)` for attention: `scores` `[b, nh, tq, tk]`,
/// `bias` the additive padding mask `[b, 1, 1, tk]`, added inside the softmax
/// pass instead of in a pass of its own. The mask is a constant: it gets no gradient.
pub fn masked_softmax_last(scores: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let (b, _, _, tk) = scores.dims4()?;
    if !fast_path(scores) || bias.dtype() != DType::F32 || bias.dims() != [b, 1, 1, tk] {
        return softmax_last(&scores.broadcast_add(bias)?);
    }
    scores
        .contiguous()?
        .apply_op2(&bias.contiguous()?, MaskedSoftmaxLast)
}

struct MaskedSoftmaxLast;

impl CustomOp2 for MaskedSoftmaxLast {
    fn name(&self) -> &'static str {
        "cws-masked-softmax-last"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, bias) = (slice(s1, l1)?, slice(s2, l2)?);
        let d = l1.dims()[3];
        // Rows of one sequence (all heads and queries) share its mask row.
        let per_seq = l1.dims()[1] * l1.dims()[2];
        let mut out = vec![0f32; x.len()];
        let rows = (CHUNK / d.max(1)).max(1);
        out.par_chunks_mut(rows * d)
            .zip(x.par_chunks(rows * d))
            .enumerate()
            .for_each(|(ci, (o, x))| {
                for (ri, (o, x)) in o.chunks_mut(d).zip(x.chunks(d)).enumerate() {
                    let seq = (ci * rows + ri) / per_seq;
                    let m = &bias[seq * d..(seq + 1) * d];
                    for ((o, &x), &m) in o.iter_mut().zip(x).zip(m) {
                        *o = x + m;
                    }
                    softmax_in_place(o);
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _scores: &Tensor,
        _bias: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let gs = res.contiguous()?.apply_op2_no_bwd(&grad, &SoftmaxGrad)?;
        Ok((Some(gs), None))
    }
}

struct SoftmaxLast;

impl CustomOp1 for SoftmaxLast {
    fn name(&self) -> &'static str {
        "cws-softmax-last"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s, l)?;
        let d = l.dims()[l.dims().len() - 1];
        let mut out = vec![0f32; x.len()];
        let rows = (CHUNK / d.max(1)).max(1) * d;
        out.par_chunks_mut(rows)
            .zip(x.par_chunks(rows))
            .for_each(|(o, x)| {
                for (o, x) in o.chunks_mut(d).zip(x.chunks(d)) {
                    o.copy_from_slice(x);
                    softmax_in_place(o);
                }
            });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let grad = grad.contiguous()?;
        Ok(Some(
            res.contiguous()?.apply_op2_no_bwd(&grad, &SoftmaxGrad)?,
        ))
    }
}

/// `o = s * (g - sum(g * s))` for one row: the gradient of a softmax's input
/// from its output `s` and the output's gradient `g`.
#[inline]
pub(crate) fn softmax_grad_row(s: &[f32], g: &[f32], o: &mut [f32]) {
    let dot: f32 = s.iter().zip(g).map(|(s, g)| s * g).sum();
    for ((o, &s), &g) in o.iter_mut().zip(s).zip(g) {
        *o = s * (g - dot);
    }
}

/// `s * (g - sum(g * s))` per row, from softmax output `s` and its gradient `g`.
struct SoftmaxGrad;

impl CustomOp2 for SoftmaxGrad {
    fn name(&self) -> &'static str {
        "cws-softmax-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (s, g) = (slice(s1, l1)?, slice(s2, l2)?);
        let d = l1.dims()[l1.dims().len() - 1];
        let mut out = vec![0f32; s.len()];
        let rows = (CHUNK / d.max(1)).max(1) * d;
        out.par_chunks_mut(rows)
            .zip(s.par_chunks(rows).zip(g.par_chunks(rows)))
            .for_each(|(o, (s, g))| {
                for ((o, s), g) in o.chunks_mut(d).zip(s.chunks(d)).zip(g.chunks(d)) {
                    softmax_grad_row(s, g, o);
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// `x * mask + residual` (or `x * mask`): inverted dropout with its mask held
/// by the op, then the residual connection, in one pass each way. Its
/// backward gives `grad * mask` to `x` and `grad` to the residual, the values
/// candle's `mul` and `add` give, without a gradient for the mask or a node for
/// the sum. Other devices and dtypes take candle's ops.
pub fn dropout_add(x: &Tensor, mask: Vec<f32>, residual: Option<&Tensor>) -> Result<Tensor> {
    if mask.len() != x.elem_count() {
        candle_core::bail!("dropout mask of {} for {:?}", mask.len(), x.dims());
    }
    let fast = fast_path(x) && residual.is_none_or(|r| fast_path(r) && r.dims() == x.dims());
    if !fast {
        let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
        let d = x.mul(&mask)?;
        return match residual {
            Some(r) => d + r,
            None => Ok(d),
        };
    }
    let op = Dropout {
        mask: std::sync::Arc::new(mask),
    };
    match residual {
        Some(r) => x.contiguous()?.apply_op2(&r.contiguous()?, op),
        None => x.contiguous()?.apply_op1(op),
    }
}

struct Dropout {
    mask: std::sync::Arc<Vec<f32>>,
}

impl Dropout {
    fn masked(&self, x: &[f32], residual: Option<&[f32]>) -> Vec<f32> {
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK).zip(self.mask.par_chunks(CHUNK)))
            .enumerate()
            .for_each(|(c, (o, (x, m)))| match residual {
                Some(r) => {
                    let r = &r[c * CHUNK..c * CHUNK + o.len()];
                    for (((o, &x), &m), &r) in o.iter_mut().zip(x).zip(m).zip(r) {
                        *o = x * m + r;
                    }
                }
                None => {
                    for ((o, &x), &m) in o.iter_mut().zip(x).zip(m) {
                        *o = x * m;
                    }
                }
            });
        out
    }

    fn grad(&self, grad: &Tensor) -> Result<Tensor> {
        grad.contiguous()?.apply_op1_no_bwd(&Dropout {
            mask: self.mask.clone(),
        })
    }
}

impl CustomOp1 for Dropout {
    fn name(&self) -> &'static str {
        "cws-dropout"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let out = self.masked(slice(s, l)?, None);
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(self.grad(grad)?))
    }
}

impl CustomOp2 for Dropout {
    fn name(&self) -> &'static str {
        "cws-dropout-add"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let out = self.masked(slice(s1, l1)?, Some(slice(s2, l2)?));
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        _residual: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(self.grad(grad)?), Some(grad.clone())))
    }
}

/// Sets row `row` of a contiguous CPU f32 matrix to 0 in its own storage
/// (the padding row of the word-embedding gradient, which torch never
/// updates) instead of multiplying the whole table by a 0/1 mask; false,
/// untouched, for other tensors.
pub fn zero_row_in_place(t: &Tensor, row: usize) -> Result<bool> {
    if !fast_path(t) || t.rank() != 2 || !t.is_contiguous() || row >= t.dim(0)? {
        return Ok(false);
    }
    t.inplace_op1(&ZeroRow { row })?;
    Ok(true)
}

struct ZeroRow {
    row: usize,
}

impl candle_core::InplaceOp1 for ZeroRow {
    fn name(&self) -> &'static str {
        "cws-zero-row"
    }

    fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> Result<()> {
        let width = l.dims()[1];
        slice_mut(s, l)?[self.row * width..(self.row + 1) * width].fill(0.0);
        Ok(())
    }
}

/// erf by Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7, below f32 GELU noise),
/// several times cheaper than the series candle evaluates in f64.
#[inline]
fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = t
        * (0.254_829_6
            + t * (-0.284_496_74 + t * (1.421_413_7 + t * (-1.453_152 + t * 1.061_405_4))));
    let y = 1.0 - poly * exp(-a * a);
    y.copysign(x)
}

/// `x * Phi(x)`: one value of [`gelu_erf`].
#[inline]
pub(crate) fn gelu_erf_value(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// Exact (erf) GELU, HF's `"gelu"`.
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    if !fast_path(x) {
        return x.gelu_erf();
    }
    x.contiguous()?.apply_op1(GeluErf)
}

struct GeluErf;

impl CustomOp1 for GeluErf {
    fn name(&self) -> &'static str {
        "cws-gelu-erf"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let mut out = slice(s, l)?.to_vec();
        out.par_chunks_mut(CHUNK)
            .for_each(|o| map_in_place(o, gelu_erf_value));
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let grad = grad.contiguous()?;
        Ok(Some(
            arg.contiguous()?.apply_op2_no_bwd(&grad, &GeluErfGrad)?,
        ))
    }
}

/// `g * (Phi(x) + x * phi(x))`: `g` times the derivative of `x * Phi(x)`.
#[inline]
pub(crate) fn gelu_erf_grad_value(x: f32, g: f32) -> f32 {
    // 1/sqrt(2*pi)
    const INV_SQRT_2PI: f32 = 0.398_942_3;
    let cdf = 0.5 * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2));
    let pdf = INV_SQRT_2PI * exp(-0.5 * x * x);
    g * (cdf + x * pdf)
}

/// `g * (Phi(x) + x * phi(x))`, the derivative of `x * Phi(x)`.
struct GeluErfGrad;

impl CustomOp2 for GeluErfGrad {
    fn name(&self) -> &'static str {
        "cws-gelu-erf-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, g) = (slice(s1, l1)?, slice(s2, l2)?);
        let mut out = g.to_vec();
        out.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .for_each(|(o, x)| map2_in_place(o, x, |g, x| gelu_erf_grad_value(x, g)));
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// LayerNorm over the last dim: `(x - mean) / sqrt(var + eps) * w + b`.
pub fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
    if !fast_path(x) || w.dtype() != DType::F32 || b.dtype() != DType::F32 {
        let mean = x.mean_keepdim(D::Minus1)?;
        let centered = x.broadcast_sub(&mean)?;
        let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = centered.broadcast_div(&(var + eps)?.sqrt()?)?;
        return normed.broadcast_mul(w)?.broadcast_add(b);
    }
    x.contiguous()?
        .apply_op3(&w.contiguous()?, &b.contiguous()?, LayerNorm { eps })
}

struct LayerNorm {
    eps: f64,
}

/// LayerNorm of one row, in place: the row kernel of [`layer_norm`].
#[inline]
pub(crate) fn layer_norm_in_place(x: &mut [f32], w: &[f32], b: &[f32], eps: f64) {
    let (mean, rstd) = row_stats(x, eps);
    for ((x, &w), &b) in x.iter_mut().zip(w).zip(b) {
        *x = (*x - mean) * rstd * w + b;
    }
}

/// [`layer_norm_in_place`] that also keeps what its backward needs: the
/// normalised row `(x - mean) / std` in `xhat`; returns 1/std. The same bits
/// as `layer_norm_in_place`.
#[inline]
pub(crate) fn layer_norm_saving(
    x: &mut [f32],
    w: &[f32],
    b: &[f32],
    eps: f64,
    xhat: &mut [f32],
) -> f32 {
    let (mean, rstd) = row_stats(x, eps);
    for (((x, h), &w), &b) in x.iter_mut().zip(xhat.iter_mut()).zip(w).zip(b) {
        *h = (*x - mean) * rstd;
        *x = *h * w + b;
    }
    rstd
}

/// LayerNorm's backward over the rows of `dy` (`[n, d]`, `d = w.len()`):
/// writes dx and returns (dw, db). `normed(i, xhat)` fills row `i`'s
/// normalised input and returns its 1/std. Rows run in parallel in fixed
/// chunks whose partial dw/db are added in chunk order, so the result has the
/// same bits on any number of threads.
pub(crate) fn layer_norm_grad_rows(
    w: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    normed: impl Fn(usize, &mut [f32]) -> f32 + Sync,
) -> (Vec<f32>, Vec<f32>) {
    let d = w.len();
    let rows = (CHUNK / d.max(1)).max(1);
    let partials: Vec<(Vec<f32>, Vec<f32>)> = dx
        .par_chunks_mut(rows * d)
        .zip(dy.par_chunks(rows * d))
        .enumerate()
        .map(|(c, (dx, dy))| {
            let (mut dw, mut db) = (vec![0f32; d], vec![0f32; d]);
            let mut xhat = vec![0f32; d];
            for (r, (dx, dy)) in dx.chunks_mut(d).zip(dy.chunks(d)).enumerate() {
                let rstd = normed(c * rows + r, &mut xhat);
                let (mut sum_g, mut sum_gx) = (0f32, 0f32);
                for i in 0..d {
                    let g = dy[i] * w[i];
                    sum_g += g;
                    sum_gx += g * xhat[i];
                    dw[i] += dy[i] * xhat[i];
                    db[i] += dy[i];
                }
                let (mg, mgx) = (sum_g / d as f32, sum_gx / d as f32);
                for i in 0..d {
                    dx[i] = rstd * (dy[i] * w[i] - mg - xhat[i] * mgx);
                }
            }
            (dw, db)
        })
        .collect();
    let (mut dw, mut db) = (vec![0f32; d], vec![0f32; d]);
    for (pw, pb) in partials {
        dw.iter_mut().zip(&pw).for_each(|(a, b)| *a += b);
        db.iter_mut().zip(&pb).for_each(|(a, b)| *a += b);
    }
    (dw, db)
}

/// Mean and 1/std of one row, in f64 so long rows do not lose precision.
/// Each sum runs in [`LANES`] interleaved partial sums joined in a fixed
/// order: the same bits on any vector width, and no chain of dependent adds.
fn row_stats(x: &[f32], eps: f64) -> (f32, f32) {
    let n = x.len() as f64;
    let mean = lane_sum(x, f64::from) / n;
    let var = lane_sum(x, |v| (f64::from(v) - mean).powi(2)) / n;
    (mean as f32, (1.0 / (var + eps).sqrt()) as f32)
}

const LANES: usize = 8;

#[inline(always)]
fn lane_sum(x: &[f32], f: impl Fn(f32) -> f64) -> f64 {
    let mut acc = [0f64; LANES];
    let chunks = x.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += f(v);
        }
    }
    for (a, &v) in acc.iter_mut().zip(rest) {
        *a += f(v);
    }
    acc.iter().sum()
}

impl candle_core::CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "cws-layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, w, b) = (slice(s1, l1)?, slice(s2, l2)?, slice(s3, l3)?);
        let d = w.len();
        let mut out = x.to_vec();
        let rows = (CHUNK / d.max(1)).max(1) * d;
        out.par_chunks_mut(rows).for_each(|o| {
            o.chunks_mut(d)
                .for_each(|o| layer_norm_in_place(o, w, b, self.eps))
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let d = w.elem_count();
        let n = x.elem_count() / d;
        let grad = grad.contiguous()?;
        let all = x
            .contiguous()?
            .apply_op3_no_bwd(w, &grad, &LayerNormGrad { eps: self.eps })?;
        let dx = all.narrow(0, 0, n)?.reshape(x.shape())?;
        let dw = all.narrow(0, n, 1)?.reshape(w.shape())?;
        let db = all.narrow(0, n + 1, 1)?.reshape(w.shape())?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

/// Backward of [`LayerNorm`] from `(x, w, dy)`; returns `[n + 2, d]`: the rows of
/// dx, then dw, then db, so one kernel produces all three.
struct LayerNormGrad {
    eps: f64,
}

impl candle_core::CustomOp3 for LayerNormGrad {
    fn name(&self) -> &'static str {
        "cws-layer-norm-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, w, dy) = (slice(s1, l1)?, slice(s2, l2)?, slice(s3, l3)?);
        let d = w.len();
        let n = x.len() / d;
        let mut out = vec![0f32; (n + 2) * d];
        let (dx, wb) = out.split_at_mut(n * d);
        let (dw, db) = layer_norm_grad_rows(w, dy, dx, |i, xhat| {
            let x = &x[i * d..(i + 1) * d];
            let (mean, rstd) = row_stats(x, self.eps);
            for (h, &x) in xhat.iter_mut().zip(x) {
                *h = (x - mean) * rstd;
            }
            rstd
        });
        wb[..d].copy_from_slice(&dw);
        wb[d..].copy_from_slice(&db);
        Ok((CpuStorage::F32(out), Shape::from((n + 2, d))))
    }
}

/// Sum of squares as an f32 scalar tensor `[]`, for gradient-norm clipping:
/// one parallel pass with no temporary, where `sqr().sum_all()` allocates a
/// squared copy of every gradient and sums it on one thread.
pub fn sum_squares(x: &Tensor) -> Result<Tensor> {
    if !fast_path(x) {
        return x.to_dtype(DType::F32)?.sqr()?.sum_all();
    }
    x.contiguous()?.apply_op1_no_bwd(&SumSquares)
}

struct SumSquares;

impl CustomOp1 for SumSquares {
    fn name(&self) -> &'static str {
        "cws-sum-squares"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        // Per-chunk f64 partials: millions of f32 terms lose digits otherwise.
        let partials: Vec<f64> = slice(s, l)?
            .par_chunks(CHUNK)
            .map(|c| c.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>())
            .collect();
        let total = ordered_reduce(partials, &|| 0.0, &|a, b| a + b);
        Ok((CpuStorage::F32(vec![total as f32]), Shape::from(())))
    }
}

/// Runs `f` in a fresh rayon pool of `n` threads: for checks that a kernel
/// gives the same bits on any number of them.
pub fn under_threads<T: Send>(n: usize, f: impl FnOnce() -> T + Send) -> T {
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build()
        .expect("a rayon pool")
        .install(f)
}

/// How many times [`ordered_reduce`] halves its partials (at most 8 groups).
const REDUCE_DEPTH: u32 = 3;

/// Combines `parts` (per-chunk partials, computed in parallel and collected in
/// order) in a fixed order, so that the result has the same bits whatever the
/// number of threads.
///
/// A rayon `par_chunks(..).map(..).reduce(..)` or `.sum()` joins its pieces
/// in a tree shaped by the thread count and by work stealing: on two threads
/// the gradient norm and the bias gradients changed in their last bits from
/// run to run, and so did the trained weights. The order here is the one that
/// tree had on ONE thread, called from outside rayon's pool as training calls
/// these kernels (the bundled models were trained that way, and retrain byte
/// for byte): the partials are halved (the left half gets `len / 2`) three
/// levels deep while at least two are left, each resulting group is folded
/// from `identity` left to right, and the groups are joined pairwise with `op`.
pub(crate) fn ordered_reduce<T>(
    parts: Vec<T>,
    identity: &impl Fn() -> T,
    op: &impl Fn(T, T) -> T,
) -> T {
    fn tree<T>(
        parts: &mut std::vec::IntoIter<T>,
        len: usize,
        depth: u32,
        identity: &impl Fn() -> T,
        op: &impl Fn(T, T) -> T,
    ) -> T {
        if depth < REDUCE_DEPTH && len >= 2 {
            let left = tree(parts, len / 2, depth + 1, identity, op);
            let right = tree(parts, len - len / 2, depth + 1, identity, op);
            op(left, right)
        } else {
            parts.by_ref().take(len).fold(identity(), op)
        }
    }
    let len = parts.len();
    tree(&mut parts.into_iter(), len, 0, identity, op)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn exp_is_within_an_ulp_of_the_true_value() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x <= 88.0 {
            let want = f64::from(x).exp();
            let got = f64::from(exp(x));
            worst = worst.max((got - want).abs() / want);
            x += 0.000_731;
        }
        // About 1 ulp (f32 has 2^-24 = 6e-8 relative precision).
        assert!(worst <= 1.5e-7, "worst relative error {worst:e}");
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(-88.0), 0.0);
        assert_eq!(exp(f32::MIN), 0.0);
        assert!(exp(f32::NAN).is_nan());
    }

    #[test]
    fn every_vector_width_gives_the_same_bits() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let x: Vec<f32> = (0..1001).map(|_| rng.random_range(-12.0..12.0)).collect();
        let scalar: Vec<f32> = x.iter().map(|&v| gelu_erf_value(v)).collect();
        let mut wide = x.clone();
        map_in_place(&mut wide, gelu_erf_value);
        assert_eq!(wide, scalar);
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            let mut avx2 = x.clone();
            // SAFETY: the CPU has AVX2.
            unsafe { map_avx2(&mut avx2, &[], |v, _| gelu_erf_value(v)) };
            assert_eq!(avx2, scalar);
        }
        let g: Vec<f32> = x.iter().map(|v| v * 0.37 - 1.0).collect();
        let scalar2: Vec<f32> = g
            .iter()
            .zip(&x)
            .map(|(&g, &x)| gelu_erf_grad_value(x, g))
            .collect();
        let mut wide2 = g.clone();
        map2_in_place(&mut wide2, &x, |g, x| gelu_erf_grad_value(x, g));
        assert_eq!(wide2, scalar2);
    }

    #[test]
    fn ordered_reduce_keeps_the_one_thread_order() {
        // The order rayon 1.12 gave `(0..20).par_chunks(1).map(..).reduce(..)`
        // with RAYON_NUM_THREADS=1, called from the main thread (printed by a
        // probe program): three halvings, groups folded from the identity "e".
        let expected = "(((((e 0) 1) (((e 2) 3) 4)) (((e 5) 6) (((e 7) 8) 9))) \
                        ((((e 10) 11) (((e 12) 13) 14)) (((e 15) 16) (((e 17) 18) 19))))";
        let parts: Vec<String> = (0..20).map(|i| i.to_string()).collect();
        let got = ordered_reduce(parts, &|| "e".to_string(), &|a, b| format!("({a} {b})"));
        assert_eq!(got, expected);
        let three: Vec<String> = (0..3).map(|i| i.to_string()).collect();
        let got = ordered_reduce(three, &|| "e".to_string(), &|a, b| format!("({a} {b})"));
        assert_eq!(got, "((e 0) ((e 1) (e 2)))");
        assert_eq!(
            ordered_reduce(Vec::<String>::new(), &|| "e".into(), &|a, b| a + &b),
            "e"
        );
    }

    #[test]
    fn sum_squares_has_the_same_bits_on_any_number_of_threads() {
        // 3M values: 184 chunks, far more than one thread's 8 groups.
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let v: Vec<f32> = (0..3_000_000)
            .map(|_| rng.random_range(-1.0f32..1.0))
            .collect();
        let x = Tensor::from_vec(v.clone(), v.len(), &Device::Cpu).unwrap();
        let bits = |n| {
            under_threads(n, || {
                sum_squares(&x)
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
                    .to_bits()
            })
        };
        let one = bits(1);
        for n in [2, 3, 2, 3] {
            assert_eq!(bits(n), one, "{n} threads");
        }
        // The fixed order, spelled out: chunk partials in f64, then the tree.
        let parts: Vec<f64> = v
            .chunks(CHUNK)
            .map(|c| c.iter().map(|&v| (v as f64) * (v as f64)).sum())
            .collect();
        let reference = ordered_reduce(parts, &|| 0.0, &|a, b| a + b) as f32;
        assert_eq!(one, reference.to_bits());
    }
}
