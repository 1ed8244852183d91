//! f32 CPU matrix products through a system BLAS (`cblas_sgemm`), as candle ops with a backward pass.
//!
//! candle's CPU matmul (the `gemm` crate) reaches about a third of what the
//! AVX-512 kernels of OpenBLAS do on the machines we train on, and matmuls are
//! most of a BERT step. OpenBLAS is opened at run time (`dlopen`), so the build
//! needs no BLAS and a machine without one still works through candle's matmul.
//! Every call runs OpenBLAS single-threaded inside rayon tasks: one thread pool
//! (rayon's) owns the cores, instead of two pools spinning against each other.
//! A product is cut into one block per thread ([`split_plan`]) on tile
//! boundaries, where each output element is computed as one call computes
//! it, so its bits do not depend on the number of threads.

use std::ffi::{c_char, c_int, CStr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Device, Layout, Result, Shape, Tensor,
};
use rayon::prelude::*;

type SgemmFn = unsafe extern "C" fn(
    order: c_int,
    trans_a: c_int,
    trans_b: c_int,
    m: c_int,
    n: c_int,
    k: c_int,
    alpha: f32,
    a: *const f32,
    lda: c_int,
    b: *const f32,
    ldb: c_int,
    beta: f32,
    c: *mut f32,
    ldc: c_int,
);

// CBLAS enum values, fixed by the CBLAS standard.
const ROW_MAJOR: c_int = 101;
const NO_TRANS: c_int = 111;
const TRANS: c_int = 112;

struct Blas {
    sgemm: SgemmFn,
    name: String,
    // Keeps the library mapped for as long as `sgemm` may be called (the process).
    _lib: libloading::Library,
}

static BLAS: OnceLock<Option<Blas>> = OnceLock::new();
static ENABLED: AtomicBool = AtomicBool::new(true);

/// Libraries tried in order; `CWS_BLAS` may name another one, or `off`.
const CANDIDATES: [&str; 3] = ["libopenblas.so.0", "libopenblas.so", "libopenblas.dylib"];

fn load() -> Option<Blas> {
    let choice = std::env::var("CWS_BLAS").unwrap_or_default();
    if choice == "off" || choice == "0" {
        return None;
    }
    pick_openblas_core();
    let names: Vec<&str> = if choice.is_empty() {
        CANDIDATES.to_vec()
    } else {
        vec![choice.as_str()]
    };
    for name in names {
        // SAFETY: loading OpenBLAS runs only its own initialisers; the symbol
        // types below are the CBLAS/OpenBLAS C signatures.
        unsafe {
            let Ok(lib) = libloading::Library::new(name) else {
                continue;
            };
            let Ok(sgemm) = lib.get::<SgemmFn>(b"cblas_sgemm\0") else {
                continue;
            };
            let sgemm = *sgemm;
            if let Ok(set) = lib.get::<unsafe extern "C" fn(c_int)>(b"openblas_set_num_threads\0") {
                set(1);
            }
            let mut label = name.to_string();
            if let Ok(core) =
                lib.get::<unsafe extern "C" fn() -> *const c_char>(b"openblas_get_corename\0")
            {
                let p = core();
                if !p.is_null() {
                    label = format!("{name} ({})", CStr::from_ptr(p).to_string_lossy());
                }
            }
            return Some(Blas {
                sgemm,
                name: label,
                _lib: lib,
            });
        }
    }
    None
}

/// OpenBLAS picks its kernels once, when loaded, from the CPU model; releases
/// older than the CPU (Debian 12 ships 0.3.21) fall back to SSE3 "Prescott"
/// kernels, ten times slower than the AVX-512 ones the CPU can run. So on an
/// AVX-512 CPU we name the SkylakeX kernels, unless the user already chose.
fn pick_openblas_core() {
    if std::env::var_os("OPENBLAS_CORETYPE").is_some() {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    {
        let avx512 = std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512dq")
            && std::arch::is_x86_feature_detected!("avx512vl");
        if avx512 {
            // Set before the library is opened, once; OpenBLAS reads it in its
            // load-time initialiser and nothing of ours reads it concurrently.
            std::env::set_var("OPENBLAS_CORETYPE", "SkylakeX");
        }
    }
}

/// The library for ops already created on the BLAS path, even if
/// [`set_enabled`] turned it off since (their backward still runs here).
fn loaded() -> Result<SgemmFn> {
    match BLAS.get() {
        Some(Some(b)) => Ok(b.sgemm),
        _ => candle_core::bail!("blas: no library loaded"),
    }
}

fn blas() -> Option<&'static Blas> {
    if !ENABLED.load(Ordering::Relaxed) {
        return None;
    }
    BLAS.get_or_init(load).as_ref()
}

/// Call first thing in `main`, before any thread starts: keeps candle's
/// "barrier pool" empty unless `CANDLE_NUM_THREADS` says otherwise.
///
/// candle 0.11 runs its elementwise ops on a second pool of spinning threads
/// beside rayon's (which our kernels and OpenBLAS calls use). On a 2-core
/// machine the two pools preempt each other and the caller spins at candle's
/// barrier waiting for a descheduled worker: a training step took 2.5x as
/// long (docs/perf-notes.md). With the pool empty those ops run on the calling
/// thread, and only rayon's threads share the cores.
///
/// It also keeps glibc from handing big freed blocks back to the kernel: a
/// step allocates and frees hundreds of multi-MB activations and gradients,
/// and fresh pages cost a page fault and a kernel memset each (12% of a
/// bert-base step in `perf`; the step got 16% faster without them).
pub fn init_cpu_threads() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: plain integer settings of the allocator, set before other threads run.
    unsafe {
        // 32 MiB is glibc's largest mmap threshold: smaller blocks come from
        // the heap; a huge trim threshold keeps the heap's freed top mapped.
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

/// Name (and OpenBLAS core) of the BLAS in use, `None` when matmuls use candle's.
pub fn backend() -> Option<&'static str> {
    blas().map(|b| b.name.as_str())
}

/// Turns the BLAS path off or on for this process (benchmarks compare both).
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// A 2-D matrix inside a storage slice: element (r, c) is at
/// `off + r * ld + c`, or `off + r + c * ld` when `trans` (column-major).
#[derive(Debug, Clone, Copy)]
struct Mat {
    off: usize,
    rows: usize,
    cols: usize,
    ld: usize,
    trans: bool,
}

impl Mat {
    /// The last two dims of `dims`/`strides` as a BLAS operand, if one of
    /// their strides is 1 (a plain or a transposed view).
    fn new(rows: usize, cols: usize, rs: usize, cs: usize, off: usize) -> Option<Self> {
        let row_major = (cs == 1 || cols == 1) && (rows == 1 || rs >= cols.max(1));
        if row_major {
            let ld = if rows == 1 { cols.max(1) } else { rs };
            return Some(Self {
                off,
                rows,
                cols,
                ld,
                trans: false,
            });
        }
        let col_major = (rs == 1 || rows == 1) && (cols == 1 || cs >= rows.max(1));
        if col_major {
            let ld = if cols == 1 { rows.max(1) } else { cs };
            return Some(Self {
                off,
                rows,
                cols,
                ld,
                trans: true,
            });
        }
        None
    }

    fn strides(&self) -> (usize, usize) {
        if self.trans {
            (1, self.ld)
        } else {
            (self.ld, 1)
        }
    }

    fn rows_from(mut self, r0: usize, n: usize) -> Self {
        self.off += r0 * self.strides().0;
        self.rows = n;
        self
    }

    fn cols_from(mut self, c0: usize, n: usize) -> Self {
        self.off += c0 * self.strides().1;
        self.cols = n;
        self
    }

    fn flag(&self) -> c_int {
        if self.trans {
            TRANS
        } else {
            NO_TRANS
        }
    }
}

/// Whether a layout's last two dims can be handed to BLAS as they are.
fn blas_ready(l: &Layout) -> bool {
    let (d, s) = (l.dims(), l.stride());
    let r = d.len();
    r >= 2 && Mat::new(d[r - 2], d[r - 1], s[r - 2], s[r - 1], 0).is_some()
}

/// Start offsets of every matrix of a batched layout, in row-major batch order.
fn batch_offsets(l: &Layout) -> Vec<usize> {
    let (d, s) = (l.dims(), l.stride());
    let nb = d.len() - 2;
    let mut offs = vec![l.start_offset()];
    for i in 0..nb {
        let mut next = Vec::with_capacity(offs.len() * d[i]);
        for &o in &offs {
            for j in 0..d[i] {
                next.push(o + j * s[i]);
            }
        }
        offs = next;
    }
    offs
}

fn mat_of(l: &Layout, off: usize) -> Result<Mat> {
    let (d, s) = (l.dims(), l.stride());
    let r = d.len();
    Mat::new(d[r - 2], d[r - 1], s[r - 2], s[r - 1], off)
        .ok_or_else(|| candle_core::Error::Msg("blas: operand is not a plain matrix view".into()))
}

/// Raw output pointer shared by rayon tasks that write disjoint blocks.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: every task writes a block of C no other task touches.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// Taking `self` whole makes closures capture the `Sync` wrapper, not the raw pointer.
    fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

/// `c[off..] = alpha * a @ b + beta * c` for one product, `c` row-major with row stride `ldc`.
///
/// # Safety
/// `a` and `b` must lie inside `a_data`/`b_data`, and the `a.rows x b.cols` block
/// at `c` (stride `ldc`) inside memory no one else accesses during the call.
#[allow(clippy::too_many_arguments)]
unsafe fn sgemm_one(
    f: SgemmFn,
    alpha: f32,
    a_data: &[f32],
    a: Mat,
    b_data: &[f32],
    b: Mat,
    beta: f32,
    c: *mut f32,
    ldc: usize,
) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    if m == 0 || n == 0 {
        return;
    }
    f(
        ROW_MAJOR,
        a.flag(),
        b.flag(),
        m as c_int,
        n as c_int,
        k as c_int,
        alpha,
        a_data.as_ptr().add(a.off),
        a.ld as c_int,
        b_data.as_ptr().add(b.off),
        b.ld as c_int,
        beta,
        c,
        ldc.max(1) as c_int,
    );
}

/// A single product is cut into blocks only if each does at least this many
/// multiply-adds: OpenBLAS runs products of up to 100^3 through other
/// ("small matrix") kernels that round differently.
const SPLIT_MIN_WORK: usize = 1 << 20;
/// At most this many blocks, which spreads evenly over 2, 4 or 8 threads.
const SPLIT_MAX_BLOCKS: usize = 8;

/// Rows (columns) per block at least: each block packs all of the other
/// operand again, which thin blocks would spend more time on than on products.
const SPLIT_MIN_SIDE: usize = 64;

/// The most blocks worth cutting a product into on rayon's current pool: one
/// per thread (rounded up to a power of two), up to [`SPLIT_MAX_BLOCKS`].
/// Every block packs all of the other operand again, so blocks beyond the
/// threads only cost (on 2 threads, 8 blocks made a small training step 5%
/// slower than 2).
fn max_blocks() -> usize {
    rayon::current_num_threads()
        .next_power_of_two()
        .min(SPLIT_MAX_BLOCKS)
}

/// How a single `[m, k] @ [k, n]` product is cut: along its rows if `m >= n`
/// (else its columns) into `blocks` pieces (at most `max_blocks`), piece `i`
/// starting at `i * step` and the last one running to the end; `blocks == 1`
/// is one call.
///
/// The cut keeps every output element computed as one call computes it
/// (checked against single calls with OpenBLAS 0.3.21's SkylakeX kernels for
/// the products training runs, cut for 1 to 8 threads; see the tests): `step`
/// is a multiple of 16, so blocks start on the kernels' tiles, and each block
/// is big enough for OpenBLAS's regular path. So a product has the same bits
/// however many blocks the number of threads asks for.
fn split_plan(m: usize, n: usize, k: usize, max_blocks: usize) -> (bool, usize, usize) {
    let along_rows = m >= n;
    let (len, other) = if along_rows { (m, n) } else { (n, m) };
    let line_work = (other * k).max(1);
    let min_side = SPLIT_MIN_WORK
        .div_ceil(line_work)
        .next_multiple_of(16)
        .max(SPLIT_MIN_SIDE);
    let blocks = (len / min_side).min(max_blocks);
    if blocks < 2 {
        return (along_rows, len, 1);
    }
    let blocks = 1 << blocks.ilog2();
    (along_rows, len / blocks / 16 * 16, blocks)
}

/// `c = alpha * a_i @ b_i + beta * c` for every batch item `i`, `c` contiguous
/// `[batch, m, n]`. Batches are spread over rayon's threads; a single big
/// product is cut as [`split_plan`] says, so each thread packs only its
/// share of the other operand.
#[allow(clippy::too_many_arguments)]
fn gemm_batched(
    f: SgemmFn,
    alpha: f32,
    a_data: &[f32],
    a: &[Mat],
    b_data: &[f32],
    b: &[Mat],
    beta: f32,
    c: &mut [f32],
) {
    let (m, n) = (a[0].rows, b[0].cols);
    let out = OutPtr(c.as_mut_ptr());
    if a.len() > 1 {
        (0..a.len()).into_par_iter().for_each(|i| {
            // SAFETY: item i writes only its own [m, n] block of c.
            unsafe {
                sgemm_one(
                    f,
                    alpha,
                    a_data,
                    a[i],
                    b_data,
                    b[i],
                    beta,
                    out.at(i * m * n),
                    n,
                )
            }
        });
        return;
    }
    let (a, b) = (a[0], b[0]);
    let (along_rows, step, blocks) = split_plan(m, n, a.cols, max_blocks());
    if blocks == 1 {
        // SAFETY: c is the whole [m, n] output.
        unsafe { sgemm_one(f, alpha, a_data, a, b_data, b, beta, out.at(0), n) };
        return;
    }
    let len = if along_rows { m } else { n };
    (0..blocks).into_par_iter().for_each(|p| {
        let s = p * step;
        let e = if p + 1 == blocks { len } else { s + step };
        // SAFETY: block p writes rows (or columns) s..e of c only.
        unsafe {
            if along_rows {
                let ap = a.rows_from(s, e - s);
                sgemm_one(f, alpha, a_data, ap, b_data, b, beta, out.at(s * n), n);
            } else {
                let bp = b.cols_from(s, e - s);
                sgemm_one(f, alpha, a_data, a, b_data, bp, beta, out.at(s), n);
            }
        }
    });
}

/// One operand of [`gemm`]: a `rows x cols` matrix inside `data` whose
/// element (r, c) is at `off + r * row_stride + c * col_stride`; one of the
/// strides must be 1 (a row-major matrix or a transposed view of one).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Operand<'a> {
    pub data: &'a [f32],
    pub off: usize,
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl Operand<'_> {
    fn mat(&self) -> Result<Mat> {
        let m = Mat::new(
            self.rows,
            self.cols,
            self.row_stride,
            self.col_stride,
            self.off,
        )
        .ok_or_else(|| {
            candle_core::Error::Msg("blas: operand is not a plain matrix view".into())
        })?;
        if self.rows > 0 && self.cols > 0 {
            let last =
                self.off + (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride;
            if last >= self.data.len() {
                candle_core::bail!("blas: operand runs past its slice");
            }
        }
        Ok(m)
    }
}

/// The library's sgemm and the two operands as BLAS matrices, checked to
/// lie in their slices and to fit one another.
fn product(a: &Operand, b: &Operand) -> Result<(SgemmFn, Mat, Mat)> {
    let f = loaded()?;
    if a.cols != b.rows {
        candle_core::bail!(
            "blas gemm: [{}, {}] @ [{}, {}]",
            a.rows,
            a.cols,
            b.rows,
            b.cols
        );
    }
    Ok((f, a.mat()?, b.mat()?))
}

/// Whether [`gemm`] has a library to call (one was found and is switched on).
pub(crate) fn available() -> bool {
    blas().is_some()
}

/// `c = alpha * a @ b + beta * c` as one BLAS call on the calling thread, for
/// code that manages its own buffers (the inference path); `c` is the
/// `a.rows x b.cols` block of `out` at `c_off` with row stride `ldc`.
pub(crate) fn gemm(
    alpha: f32,
    a: Operand,
    b: Operand,
    beta: f32,
    out: &mut [f32],
    c_off: usize,
    ldc: usize,
) -> Result<()> {
    let (f, am, bm) = product(&a, &b)?;
    let (m, n) = (a.rows, b.cols);
    if m > 0 && n > 0 && (ldc < n || c_off + (m - 1) * ldc + n > out.len()) {
        candle_core::bail!("blas gemm: the [{m}, {n}] output runs past its slice");
    }
    // SAFETY: both operands lie inside their slices and the output block
    // inside `out`, which the exclusive borrow keeps from anyone else.
    unsafe {
        sgemm_one(
            f,
            alpha,
            a.data,
            am,
            b.data,
            bm,
            beta,
            out.as_mut_ptr().wrapping_add(c_off),
            ldc,
        )
    };
    Ok(())
}

/// `c = alpha * a @ b + beta * c` for a whole contiguous `[a.rows, b.cols]`
/// output, cut over rayon's threads as [`split_plan`] says (the same bits on
/// any number of them): for code that manages its own buffers and runs one
/// big product at a time (the training encoder).
pub(crate) fn gemm_split(
    alpha: f32,
    a: Operand,
    b: Operand,
    beta: f32,
    c: &mut [f32],
) -> Result<()> {
    let (f, am, bm) = product(&a, &b)?;
    let (m, n) = (a.rows, b.cols);
    if c.len() != m * n {
        candle_core::bail!("blas gemm: a [{m}, {n}] output in {} elements", c.len());
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    gemm_batched(f, alpha, a.data, &[am], b.data, &[bm], beta, c);
    Ok(())
}

/// Column sums of a row-major `[n, d]` matrix (a bias gradient), summed in
/// fixed blocks of rows joined in a fixed order: the same bits on any number
/// of threads.
pub(crate) fn column_sums(g: &[f32], d: usize) -> Vec<f32> {
    let rows = (16 * 1024 / d.max(1)).max(1);
    let blocks: Vec<Vec<f32>> = g
        .par_chunks(rows * d.max(1))
        .map(|block| {
            let mut acc = vec![0f32; d];
            for row in block.chunks(d) {
                acc.iter_mut().zip(row).for_each(|(a, &v)| *a += v);
            }
            acc
        })
        .collect();
    crate::fused::ordered_reduce(blocks, &|| vec![0f32; d], &|mut a, b| {
        a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
        a
    })
}

fn f32_slice(s: &CpuStorage) -> Result<&[f32]> {
    s.as_slice::<f32>()
}

fn usable(xs: &[&Tensor]) -> Option<&'static Blas> {
    if xs
        .iter()
        .all(|x| matches!(x.device(), Device::Cpu) && x.dtype() == DType::F32)
    {
        blas()
    } else {
        None
    }
}

/// A view BLAS can take as is, else a contiguous copy.
fn ready(x: &Tensor) -> Result<Tensor> {
    if blas_ready(x.layout()) {
        Ok(x.clone())
    } else {
        x.contiguous()
    }
}

/// `alpha * a @ b` over matching batch dims (no broadcasting); views of
/// transposed or strided matrices are read in place. Falls back to candle.
pub fn matmul_scaled(a: &Tensor, b: &Tensor, alpha: f64) -> Result<Tensor> {
    let same_batch = a.rank() >= 2
        && a.rank() == b.rank()
        && a.dims()[..a.rank() - 2] == b.dims()[..b.rank() - 2];
    if usable(&[a, b]).is_none() || !same_batch {
        // candle's matmul takes contiguous operands or plain transposes of them.
        let fix = |x: &Tensor| -> Result<Tensor> {
            if x.is_contiguous() || x.t()?.is_contiguous() {
                Ok(x.clone())
            } else {
                x.contiguous()
            }
        };
        let y = fix(a)?.matmul(&fix(b)?)?;
        return if alpha == 1.0 { Ok(y) } else { y * alpha };
    }
    ready(a)?.apply_op2(&ready(b)?, MatMul { alpha })
}

/// `a @ b`, see [`matmul_scaled`].
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    matmul_scaled(a, b, 1.0)
}

struct MatMul {
    alpha: f64,
}

impl CustomOp2 for MatMul {
    fn name(&self) -> &'static str {
        "cws-blas-matmul"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let f = loaded()?;
        let (a_data, b_data) = (f32_slice(s1)?, f32_slice(s2)?);
        let r = l1.dims().len();
        let (m, k, n) = (l1.dims()[r - 2], l1.dims()[r - 1], l2.dims()[r - 1]);
        if l2.dims()[r - 2] != k {
            candle_core::bail!("blas matmul: {:?} @ {:?}", l1.dims(), l2.dims());
        }
        let a: Vec<Mat> = batch_offsets(l1)
            .into_iter()
            .map(|o| mat_of(l1, o))
            .collect::<Result<_>>()?;
        let b: Vec<Mat> = batch_offsets(l2)
            .into_iter()
            .map(|o| mat_of(l2, o))
            .collect::<Result<_>>()?;
        let mut dims = l1.dims().to_vec();
        dims[r - 1] = n;
        let mut c = vec![0f32; a.len() * m * n];
        if !c.is_empty() {
            gemm_batched(f, self.alpha as f32, a_data, &a, b_data, &b, 0.0, &mut c);
        }
        Ok((CpuStorage::F32(c), Shape::from(dims)))
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // d(alpha a b)/da = alpha g b^T, /db = alpha a^T g; transposes are views.
        let r = a.rank();
        let ga = matmul_no_bwd(g, &b.transpose(r - 2, r - 1)?, self.alpha)?;
        let gb = matmul_no_bwd(&a.transpose(r - 2, r - 1)?, g, self.alpha)?;
        Ok((Some(ga), Some(gb)))
    }
}

fn matmul_no_bwd(a: &Tensor, b: &Tensor, alpha: f64) -> Result<Tensor> {
    ready(a)?.apply_op2_no_bwd(&ready(b)?, &MatMul { alpha })
}

/// `x @ w.T + bias` for `x` `[n, in]`, `w` `[out, in]` (torch's layout), with
/// the bias written into the output before the product adds to it.
pub fn linear(x: &Tensor, w: &Tensor, bias: &Tensor) -> Result<Tensor> {
    if usable(&[x, w, bias]).is_none() || x.rank() != 2 || w.rank() != 2 || bias.rank() != 1 {
        return x.matmul(&w.t()?)?.broadcast_add(bias);
    }
    ready(x)?.apply_op3(&ready(w)?, &bias.contiguous()?, Linear)
}

struct Linear;

impl CustomOp3 for Linear {
    fn name(&self) -> &'static str {
        "cws-blas-linear"
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
        let f = loaded()?;
        let x = mat_of(l1, l1.start_offset())?;
        let w = mat_of(l2, l2.start_offset())?;
        let (n, out) = (x.rows, w.rows);
        if w.cols != x.cols || l3.dims() != [out] {
            candle_core::bail!(
                "blas linear: x {:?}, w {:?}, b {:?}",
                l1.dims(),
                l2.dims(),
                l3.dims()
            );
        }
        let bias = match l3.contiguous_offsets() {
            Some((s, e)) => &f32_slice(s3)?[s..e],
            None => candle_core::bail!("blas linear: bias must be contiguous"),
        };
        let mut c = vec![0f32; n * out];
        if c.is_empty() {
            return Ok((CpuStorage::F32(c), Shape::from((n, out))));
        }
        c.par_chunks_mut(out)
            .for_each(|row| row.copy_from_slice(bias));
        // w^T as a view: swap its roles of rows/cols and its storage order.
        let wt = Mat {
            rows: w.cols,
            cols: w.rows,
            trans: !w.trans,
            ..w
        };
        gemm_batched(
            f,
            1.0,
            f32_slice(s1)?,
            &[x],
            f32_slice(s2)?,
            &[wt],
            1.0,
            &mut c,
        );
        Ok((CpuStorage::F32(c), Shape::from((n, out))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _bias: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let gx = matmul_no_bwd(g, w, 1.0)?;
        let gw = matmul_no_bwd(&g.t()?, x, 1.0)?;
        let gb = g.contiguous()?.apply_op1_no_bwd(&ColumnSums)?;
        Ok((Some(gx), Some(gw), Some(gb)))
    }
}

/// Column sums of a contiguous `[n, d]` matrix: the bias gradient.
struct ColumnSums;

impl CustomOp1 for ColumnSums {
    fn name(&self) -> &'static str {
        "cws-column-sums"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = match l.contiguous_offsets() {
            Some((a, b)) => &f32_slice(s)?[a..b],
            None => candle_core::bail!("column sums need a contiguous input"),
        };
        let d = l.dims()[1];
        let sums = column_sums(g, d);
        Ok((CpuStorage::F32(sums), Shape::from(d)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fused::under_threads;
    use rand::{Rng, SeedableRng};

    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
    }

    #[test]
    fn column_sums_have_the_same_bits_on_any_number_of_threads() {
        // [3000, 128]: 24 blocks of 128 rows, more than one thread's 8 groups.
        let g = Tensor::from_vec(random(3000 * 128, 1), (3000, 128), &Device::Cpu).unwrap();
        let sums = |n| {
            under_threads(n, || {
                g.apply_op1_no_bwd(&ColumnSums)
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
            })
        };
        let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
        let one = bits(sums(1));
        for n in [2, 3, 2, 3] {
            assert_eq!(bits(sums(n)), one, "{n} threads");
        }
    }

    #[test]
    fn split_plan_cuts_by_shape_into_big_tile_aligned_blocks() {
        for (m, n, k) in [
            (4096, 128, 128),
            (128, 128, 4096),
            (4, 128, 4096),
            (500, 512, 128),
            (4096, 4, 128),
            (3000, 768, 3072),
            (17, 9, 5),
            (0, 128, 128),
        ] {
            let (along_rows, step, blocks) = split_plan(m, n, k, SPLIT_MAX_BLOCKS);
            let (len, other) = if along_rows { (m, n) } else { (n, m) };
            assert_eq!(along_rows, m >= n);
            assert!([1, 2, 4, 8].contains(&blocks), "{m}x{n}x{k}: {blocks}");
            if blocks > 1 {
                assert_eq!(step % 16, 0);
                assert!(step >= SPLIT_MIN_SIDE && step * other * k >= SPLIT_MIN_WORK);
                assert!(
                    len - (blocks - 1) * step >= step,
                    "the last block is no smaller"
                );
            }
        }
        assert_eq!(split_plan(4096, 128, 128, 8), (true, 512, 8));
        assert_eq!(split_plan(4096, 128, 128, 2), (true, 2048, 2));
        assert_eq!(split_plan(4096, 128, 128, 1), (true, 4096, 1));
        assert_eq!(split_plan(4, 128, 4096, 8), (false, 64, 2));
        assert_eq!(split_plan(2048, 4, 128, 8), (true, 2048, 1));
    }

    /// With OpenBLAS present: the products a training step runs (forward
    /// `x @ w^T + b`, backward `g @ w` and `g^T @ x`, at the layer shapes of
    /// the tiny and small models and the encoder's stacked q/k/v) give the
    /// same bits cut into blocks as in one call, on 1, 2, 3 and 8 threads
    /// (1, 2, 4 and 8 blocks). One call is what one thread ran before
    /// products were cut, so weights trained then still reproduce.
    #[test]
    fn split_products_match_one_call() {
        let Some(f) = blas().map(|b| b.sgemm) else {
            eprintln!("SKIPPED: no OpenBLAS (see CWS_BLAS)");
            return;
        };
        let mat = |rows, cols, trans| Mat {
            off: 0,
            rows,
            cols,
            ld: if trans { rows } else { cols },
            trans,
        };
        let mut split = 0;
        for rows in [256, 500, 1000, 2048, 2500, 3000, 4096] {
            for (inp, out) in [
                (128, 128),
                (128, 512),
                (512, 128),
                (128, 4),
                (256, 1024),
                (128, 384),
                (256, 768),
                (256, 256),
            ] {
                let x = random(rows * inp, 2);
                let w = random(out * inp, 3);
                let g: Vec<f32> = random(rows * out, 4).iter().map(|v| v * 1e-3).collect();
                let bias_rows: Vec<f32> =
                    (0..rows * out).map(|i| (i % out) as f32 * 0.01).collect();
                // (a data, a, b data, b, beta, c before)
                let products = [
                    (
                        &x,
                        mat(rows, inp, false),
                        &w,
                        mat(inp, out, true),
                        1.0,
                        bias_rows,
                    ),
                    (
                        &g,
                        mat(rows, out, false),
                        &w,
                        mat(out, inp, false),
                        0.0,
                        vec![0.0; rows * inp],
                    ),
                    (
                        &g,
                        mat(out, rows, true),
                        &x,
                        mat(rows, inp, false),
                        0.0,
                        vec![0.0; out * inp],
                    ),
                ];
                for (ad, a, bd, b, beta, c0) in products {
                    let (m, n, k) = (a.rows, b.cols, a.cols);
                    if split_plan(m, n, k, SPLIT_MAX_BLOCKS).2 > 1 {
                        split += 1;
                    }
                    let mut one = c0.clone();
                    // SAFETY: one call writing all of `one`.
                    unsafe { sgemm_one(f, 1.0, ad, a, bd, b, beta, one.as_mut_ptr(), n) };
                    for threads in [1, 2, 3, 8] {
                        let mut c = c0.clone();
                        under_threads(threads, || {
                            gemm_batched(f, 1.0, ad, &[a], bd, &[b], beta, &mut c)
                        });
                        let differ = c
                            .iter()
                            .zip(&one)
                            .filter(|(x, y)| x.to_bits() != y.to_bits());
                        assert_eq!(
                            differ.count(),
                            0,
                            "{m}x{k} @ {k}x{n} on {threads} threads, cut {:?}",
                            split_plan(m, n, k, threads.next_power_of_two())
                        );
                    }
                }
            }
        }
        assert!(split > 50, "most of these products are cut: {split}");
    }
}
