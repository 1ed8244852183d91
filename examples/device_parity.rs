//! CPU vs CUDA parity of the model: the same weights and padded batch give the
//! same logits, loss and gradients on both devices (f32). A difference is taken
//! relative to the tensor's largest value, floored at 1e-4 of the largest
//! gradient in the model: the attention key bias has an exactly-zero true
//! gradient (softmax ignores a constant shift), so both devices return rounding
//! noise there and a purely per-tensor ratio would compare noise with noise.
//! Prints one JSON line; exits non-zero above 1e-3.
//!
//! `gpu-bundle/run.sh device_parity [tiny|small|base]` on the GPU machine
//! (scripts/gpu-check.sh runs it); without the `cuda` feature it only says so.

#[cfg(feature = "cuda")]
fn main() -> anyhow::Result<()> {
    use candle_core::{DType, Device, Tensor};
    use candle_nn::VarMap;
    use clap::ValueEnum;
    use cws::bench::Shape;
    use cws::model::{masked_cross_entropy, BertForTokenClassification};
    use cws::weights::{self, LoadOptions};

    let shape = std::env::args().nth(1).unwrap_or_else(|| "small".into());
    let shape = Shape::from_str(&shape, true).map_err(anyhow::Error::msg)?;
    let cfg = shape.config();
    let cpu = Device::Cpu;
    let gpu = Device::new_cuda(0)?;

    let cpu_vars = VarMap::new();
    let cpu_model = BertForTokenClassification::new_random(&cpu_vars, &cfg, 7, DType::F32, &cpu)?;
    let file = std::env::temp_dir().join(format!("cws-parity-{}.safetensors", std::process::id()));
    weights::save(&cpu_vars, &file, DType::F32)?;
    let gpu_vars = VarMap::new();
    let gpu_model = BertForTokenClassification::new_random(&gpu_vars, &cfg, 0, DType::F32, &gpu)?;
    weights::load(&gpu_vars, &file, LoadOptions::default())?;
    std::fs::remove_file(&file)?;

    // Four sequences of different lengths, padded to 64.
    let (b, t) = (4usize, 64usize);
    let lens = [64usize, 50, 23, 5];
    let mut ids = vec![0u32; b * t];
    let mut mask = vec![0f32; b * t];
    let mut labels = vec![-100i64; b * t];
    for (r, &n) in lens.iter().enumerate() {
        for k in 0..n {
            ids[r * t + k] = 700 + ((r * 131 + k * 17) % 20000) as u32;
            mask[r * t + k] = 1.0;
            if k > 0 && k + 1 < n {
                labels[r * t + k] = ((r + k) % 4) as i64;
            }
        }
    }
    let inputs = |d: &Device| -> anyhow::Result<(Tensor, Tensor, Tensor)> {
        Ok((
            Tensor::from_vec(ids.clone(), (b, t), d)?,
            Tensor::from_vec(mask.clone(), (b, t), d)?,
            Tensor::from_vec(labels.clone(), (b, t), d)?,
        ))
    };
    let absmax = |t: &Tensor| -> anyhow::Result<f32> {
        let t = t.to_device(&cpu)?.to_dtype(DType::F32)?;
        Ok(t.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?)
    };
    let rel_floor = |a: &Tensor, e: &Tensor, floor: f32| -> anyhow::Result<f32> {
        let a = a.to_device(&cpu)?.to_dtype(DType::F32)?;
        let e = e.to_device(&cpu)?.to_dtype(DType::F32)?;
        let diff = absmax(&(a - &e)?)?;
        Ok(diff / absmax(&e)?.max(floor).max(1e-12))
    };
    let rel = |a: &Tensor, e: &Tensor| rel_floor(a, e, 0.0);

    let (ci, cm, cl) = inputs(&cpu)?;
    let (gi, gm, gl) = inputs(&gpu)?;
    let c_logits = cpu_model.forward(&ci, &cm, None)?;
    let g_logits = gpu_model.forward(&gi, &gm, None)?;
    let c_loss = masked_cross_entropy(&c_logits, &cl)?;
    let g_loss = masked_cross_entropy(&g_logits, &gl)?;
    let c_grads = cpu_model.backward(&c_loss)?;
    let g_grads = gpu_model.backward(&g_loss)?;

    let mut worst = (String::new(), 0f32);
    let cpu_data = cpu_vars.data().lock().expect("varmap lock").clone();
    let gpu_data = gpu_vars.data().lock().expect("varmap lock").clone();
    let mut names: Vec<&String> = cpu_data.keys().collect();
    names.sort();
    let mut largest = 0f32;
    for name in &names {
        if let Some(g) = c_grads.get(cpu_data[*name].as_tensor()) {
            largest = largest.max(absmax(g)?);
        }
    }
    let mut checked = 0;
    for name in names {
        let cg = c_grads.get(cpu_data[name].as_tensor());
        let gg = g_grads.get(gpu_data[name].as_tensor());
        let (Some(cg), Some(gg)) = (cg, gg) else {
            anyhow::bail!("{name}: a gradient is missing on one device");
        };
        let r = rel_floor(gg, cg, 1e-4 * largest)?;
        checked += 1;
        if r > worst.1 {
            worst = (name.clone(), r);
        }
    }
    let logits_rel = rel(&g_logits, &c_logits)?;
    let (lc, lg) = (c_loss.to_scalar::<f32>()?, g_loss.to_scalar::<f32>()?);
    let loss_rel = (lc - lg).abs() / lc.abs();
    let ok = logits_rel <= 1e-3 && loss_rel <= 1e-3 && worst.1 <= 1e-3;
    println!(
        "{}",
        serde_json::json!({
            "check": "cpu_vs_cuda", "shape": format!("{shape:?}").to_lowercase(), "device": format!("{gpu:?}"),
            "logits_max_rel": logits_rel, "loss_cpu": lc, "loss_cuda": lg, "loss_rel": loss_rel,
            "grad_worst_rel": worst.1, "grad_worst_tensor": worst.0, "grads_checked": checked,
            "largest_grad": largest, "ok": ok,
        })
    );
    anyhow::ensure!(ok, "CPU and CUDA disagree beyond 1e-3");
    Ok(())
}

#[cfg(not(feature = "cuda"))]
fn main() {
    eprintln!("device_parity needs a build with --features cuda (see docs/cuda.md)");
}
