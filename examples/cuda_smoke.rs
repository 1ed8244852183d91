//! CUDA smoke test for the GPU machine: `cargo build --release --features cuda --examples`
//! (or `scripts/build-cuda.sh`), then `gpu-bundle/run.sh cuda_smoke`.
//!
//! Exercises every CUDA library the cuda build links: the driver (device, memory, PTX
//! kernels), cuRAND (randn), cuBLAS/cuBLASLt (f32/bf16 matmul), and the candle PTX kernels
//! (softmax, layer norm, gelu), and compares each result with the CPU.
//! Without the `cuda` feature it only prints a note, so the CPU build stays CUDA-free.

#[cfg(feature = "cuda")]
fn main() -> anyhow::Result<()> {
    use candle_core::{DType, Device, Tensor, D};

    let gpu = Device::new_cuda(0)?;
    println!("cuda device 0 opened: {gpu:?}");
    let cpu = Device::Cpu;

    let max_diff = |a: &Tensor, b: &Tensor| -> anyhow::Result<f32> {
        let a = a.to_device(&cpu)?.to_dtype(DType::F32)?;
        let b = b.to_device(&cpu)?.to_dtype(DType::F32)?;
        Ok((a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?)
    };

    // cuRAND
    let a = Tensor::randn(0f32, 1.0, (4, 128, 256), &gpu)?;
    let b = Tensor::randn(0f32, 1.0, (4, 256, 64), &gpu)?;
    let mean = a.mean_all()?.to_scalar::<f32>()?;
    println!("randn on gpu: mean {mean:.4}");
    anyhow::ensure!(mean.abs() < 0.05, "randn mean looks wrong: {mean}");
    let (ac, bc) = (a.to_device(&cpu)?, b.to_device(&cpu)?);

    // cuBLAS (batched f32 gemm)
    let d = max_diff(&a.matmul(&b)?, &ac.matmul(&bc)?)?;
    println!("f32 matmul max |gpu-cpu| = {d:.2e}");
    anyhow::ensure!(d < 1e-2, "f32 matmul mismatch {d}");

    // cuBLAS bf16 gemm (what a bf16 BERT would use)
    let d = max_diff(
        &a.to_dtype(DType::BF16)?.matmul(&b.to_dtype(DType::BF16)?)?,
        &ac.matmul(&bc)?,
    )?;
    println!("bf16 matmul max |gpu-cpu| = {d:.2e}");
    anyhow::ensure!(d < 1.0, "bf16 matmul mismatch {d}");

    // PTX kernels: softmax, layer norm, gelu, reductions
    let d = max_diff(
        &candle_nn::ops::softmax_last_dim(&a)?,
        &candle_nn::ops::softmax_last_dim(&ac)?,
    )?;
    println!("softmax max diff = {d:.2e}");
    anyhow::ensure!(d < 1e-5, "softmax mismatch {d}");
    let w = Tensor::ones(256, DType::F32, &gpu)?;
    let bias = Tensor::zeros(256, DType::F32, &gpu)?;
    let d = max_diff(
        &candle_nn::ops::layer_norm(&a, &w, &bias, 1e-12)?,
        &candle_nn::ops::layer_norm(&ac, &w.to_device(&cpu)?, &bias.to_device(&cpu)?, 1e-12)?,
    )?;
    println!("layer_norm max diff = {d:.2e}");
    anyhow::ensure!(d < 1e-3, "layer_norm mismatch {d}");
    let d = max_diff(&a.gelu_erf()?, &ac.gelu_erf()?)?;
    println!("gelu_erf max diff = {d:.2e}");
    anyhow::ensure!(d < 1e-4, "gelu mismatch {d}");
    let d = max_diff(&a.argmax(D::Minus1)?, &ac.argmax(D::Minus1)?)?;
    anyhow::ensure!(d == 0.0, "argmax mismatch {d}");

    println!("CUDA smoke test OK");
    Ok(())
}

#[cfg(not(feature = "cuda"))]
fn main() {
    eprintln!("cuda_smoke: built without the `cuda` feature; nothing to test");
}
