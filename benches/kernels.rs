//! Throughput of the hand-written CPU kernels (`cws::fused`, `cws::blas`),
//! forward and backward, at the tiny and base shapes of `cws::bench::Shape`
//! with the benchmark batch (`BATCH` x `SEQ` tokens), next to candle's own op
//! for the same work.
//!
//!   cargo bench --bench kernels                 # everything, a few minutes on 2 cores
//!   cargo bench --bench kernels -- base/linear  # a filter
//!
//! `fwd` times the op; `bwd` times `sum(op(x)).backward()` with the forward
//! done untimed beforehand, so it includes candle's gradient bookkeeping for
//! the sum. Throughput: elements of the op's output, or for products the
//! floating-point operations (2mnk per product), so "elem/s" reads as FLOP/s.
//! `blas` rows run OpenBLAS where a library is found (see `cws::blas`), `candle`
//! rows the same entry point with it switched off.

use std::time::Duration;

use candle_core::{DType, Device, Tensor, Var, D};
use criterion::{BatchSize, BenchmarkGroup, Criterion, SamplingMode, Throughput};
use cws::bench::{Shape, BATCH, SEQ};

type Group<'a> = BenchmarkGroup<'a, criterion::measurement::WallTime>;

/// The sizes one shape gives the kernels.
struct Sizes {
    name: &'static str,
    /// Tokens of one batch: the rows of every per-token op.
    rows: usize,
    hidden: usize,
    heads: usize,
    inter: usize,
}

impl Sizes {
    fn of(shape: Shape) -> Sizes {
        let cfg = shape.config();
        Sizes {
            name: match shape {
                Shape::Tiny => "tiny",
                Shape::Small => "small",
                Shape::Base => "base",
            },
            rows: BATCH * SEQ,
            hidden: cfg.hidden_size,
            heads: cfg.num_attention_heads,
            inter: cfg.intermediate_size,
        }
    }

    fn head_dim(&self) -> usize {
        self.hidden / self.heads
    }
}

fn randn(dims: &[usize]) -> Tensor {
    Tensor::randn(0f32, 1.0, dims, &Device::Cpu).expect("random tensor")
}

fn var(dims: &[usize]) -> Var {
    Var::from_tensor(&randn(dims)).expect("var")
}

/// A new group for one kernel at one shape: flat sampling (the base products
/// take ~0.1 s), few samples, short times.
fn group<'a>(c: &'a mut Criterion, s: &Sizes, kernel: &str, throughput: u64) -> Group<'a> {
    let mut g = c.benchmark_group(format!("{}/{kernel}", s.name));
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .throughput(Throughput::Elements(throughput));
    g
}

/// `fwd` and `bwd` of `op` on the variables `vars` (gradients for all of them).
fn forward_backward(g: &mut Group, label: &str, vars: &[Var], op: &dyn Fn(&[Tensor]) -> Tensor) {
    let xs: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    g.bench_function(format!("{label}/fwd"), |b| b.iter(|| op(&xs)));
    g.bench_function(format!("{label}/bwd"), |b| {
        b.iter_batched(
            || op(&xs).sum_all().expect("sum"),
            |loss| loss.backward().expect("backward"),
            BatchSize::PerIteration,
        )
    });
}

fn layer_norm(c: &mut Criterion, s: &Sizes) {
    let (x, w, b) = (var(&[s.rows, s.hidden]), var(&[s.hidden]), var(&[s.hidden]));
    let mut g = group(c, s, "layer_norm", (s.rows * s.hidden) as u64);
    forward_backward(&mut g, "fused", &[x.clone(), w.clone(), b.clone()], &|t| {
        cws::fused::layer_norm(&t[0], &t[1], &t[2], 1e-12).expect("layer_norm")
    });
    forward_backward(&mut g, "candle", &[x, w, b], &|t| {
        candle_nn::ops::layer_norm_slow(&t[0], &t[1], &t[2], 1e-12).expect("layer_norm")
    });
    g.finish();
}

fn gelu(c: &mut Criterion, s: &Sizes) {
    let x = var(&[s.rows, s.inter]);
    let mut g = group(c, s, "gelu_erf", (s.rows * s.inter) as u64);
    forward_backward(&mut g, "fused", std::slice::from_ref(&x), &|t| {
        cws::fused::gelu_erf(&t[0]).expect("gelu")
    });
    forward_backward(&mut g, "candle", &[x], &|t| t[0].gelu_erf().expect("gelu"));
    g.finish();
}

fn softmax(c: &mut Criterion, s: &Sizes) {
    let scores = [BATCH, s.heads, SEQ, SEQ];
    let n = scores.iter().product::<usize>() as u64;
    let x = var(&scores);
    // The attention padding mask: 0 where attended, a large negative elsewhere.
    let bias = randn(&[BATCH, 1, 1, SEQ])
        .ge(-1.5)
        .and_then(|m| m.to_dtype(DType::F32))
        .and_then(|m| (m - 1.0)? * 1e4)
        .expect("mask");
    let mut g = group(c, s, "softmax_last", n);
    forward_backward(&mut g, "fused", std::slice::from_ref(&x), &|t| {
        cws::fused::softmax_last(&t[0]).expect("softmax")
    });
    // candle's fused softmax_last_dim has no backward: the reference is its
    // differentiable composite.
    forward_backward(&mut g, "candle", std::slice::from_ref(&x), &|t| {
        candle_nn::ops::softmax(&t[0], D::Minus1).expect("softmax")
    });
    g.finish();
    let mut g = group(c, s, "masked_softmax_last", n);
    forward_backward(&mut g, "fused", std::slice::from_ref(&x), &|t| {
        cws::fused::masked_softmax_last(&t[0], &bias).expect("masked softmax")
    });
    forward_backward(&mut g, "candle", &[x], &|t| {
        let y = t[0].broadcast_add(&bias).expect("add");
        candle_nn::ops::softmax(&y, D::Minus1).expect("softmax")
    });
    g.finish();
}

/// Forward only: gradient clipping's reduction has no backward.
fn sum_squares(c: &mut Criterion, s: &Sizes) {
    let x = randn(&[s.inter, s.hidden]);
    let mut g = group(c, s, "sum_squares", (s.inter * s.hidden) as u64);
    g.bench_function("fused/fwd", |b| {
        b.iter(|| cws::fused::sum_squares(&x).expect("sum_squares"))
    });
    g.bench_function("candle/fwd", |b| {
        b.iter(|| x.sqr().and_then(|y| y.sum_all()).expect("sum"))
    });
    g.finish();
}

/// `op` with OpenBLAS on (`blas`) and off (`candle`); forward and backward.
fn blas_and_candle(g: &mut Group, vars: &[Var], op: &dyn Fn(&[Tensor]) -> Tensor) {
    for (label, on) in [("blas", true), ("candle", false)] {
        cws::blas::set_enabled(on);
        forward_backward(g, label, vars, op);
    }
    cws::blas::set_enabled(true);
}

fn products(c: &mut Criterion, s: &Sizes) {
    // The FFN's first layer: [rows, hidden] @ [inter, hidden]^T + bias.
    let (x, w, b) = (
        var(&[s.rows, s.hidden]),
        var(&[s.inter, s.hidden]),
        var(&[s.inter]),
    );
    let flops = 2 * s.rows * s.hidden * s.inter;
    let mut g = group(c, s, "linear", flops as u64);
    blas_and_candle(&mut g, &[x, w, b], &|t| {
        cws::blas::linear(&t[0], &t[1], &t[2]).expect("linear")
    });
    g.finish();

    // Attention scores q @ k^T / sqrt(d) (k transposed as a view), then probs @ v.
    let (d, heads) = (s.head_dim(), s.heads);
    let (q, k) = (var(&[BATCH, heads, SEQ, d]), var(&[BATCH, heads, SEQ, d]));
    let flops = 2 * BATCH * heads * SEQ * SEQ * d;
    let mut g = group(c, s, "matmul_scaled", flops as u64);
    let scale = 1.0 / (d as f64).sqrt();
    blas_and_candle(&mut g, &[q, k], &|t| {
        let kt = t[1].t().expect("transpose");
        cws::blas::matmul_scaled(&t[0], &kt, scale).expect("matmul")
    });
    g.finish();
    let (p, v) = (var(&[BATCH, heads, SEQ, SEQ]), var(&[BATCH, heads, SEQ, d]));
    let mut g = group(c, s, "matmul", flops as u64);
    blas_and_candle(&mut g, &[p, v], &|t| {
        cws::blas::matmul(&t[0], &t[1]).expect("matmul")
    });
    g.finish();
}

fn main() {
    cws::blas::init_cpu_threads();
    eprintln!(
        "kernels: {} rayon threads, BLAS {}",
        rayon::current_num_threads(),
        cws::blas::backend().unwrap_or("none (candle's matmul)")
    );
    let mut c = Criterion::default().configure_from_args();
    for shape in [Shape::Tiny, Shape::Base] {
        let s = Sizes::of(shape);
        layer_norm(&mut c, &s);
        gelu(&mut c, &s);
        softmax(&mut c, &s);
        sum_squares(&mut c, &s);
        products(&mut c, &s);
    }
    c.final_summary();
}
