//! `kiln run`: runs one program of an artifact on named inputs from a safetensors file and
//! writes every named output to another, so kiln can be compared with any framework in a few
//! lines of Python. `--device cuda` runs a `--target cuda` artifact on the GPU.

use crate::device::Device;
use clap::Args;
use kiln_runtime::{open_model, ElemType, Tensor};
use safetensors::{Dtype, SafeTensors};
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Args)]
pub struct RunArgs {
    /// The `.kiln` artifact.
    artifact: PathBuf,
    /// Weights: a .gguf, a .safetensors file, a sharded index or a model directory.
    #[arg(long)]
    weights: PathBuf,
    /// Which program to run (e.g. prefill, decode).
    #[arg(long, default_value = "prefill")]
    program: String,
    /// Inputs by name, as a safetensors file (e.g. `input_ids` i64 [batch, seq]).
    #[arg(long)]
    inputs: PathBuf,
    /// Where to write every output, as safetensors.
    #[arg(long)]
    outputs: PathBuf,
    /// Where to run: `cpu`, or `cuda` for an artifact compiled with `--target cuda`.
    #[arg(long, value_enum, default_value = "cpu")]
    device: Device,
    #[arg(long, default_value_t = kiln_runtime::executor::default_threads())]
    threads: usize,
}

fn elem_type(dtype: Dtype, file: &str, name: &str) -> Result<ElemType, String> {
    Ok(match dtype {
        Dtype::F32 => ElemType::F32,
        Dtype::I64 => ElemType::I64,
        Dtype::I32 => ElemType::I32,
        Dtype::BOOL => ElemType::Bool,
        other => {
            return Err(format!(
            "{file}: `{name}`: dtype {other:?} is not a program input type (f32, i64, i32, bool)"
        ))
        }
    })
}

fn dtype(t: ElemType) -> Dtype {
    match t {
        ElemType::F32 => Dtype::F32,
        ElemType::F16 => Dtype::F16,
        ElemType::Bf16 => Dtype::BF16,
        ElemType::I32 => Dtype::I32,
        ElemType::I64 => Dtype::I64,
        ElemType::Bool => Dtype::BOOL,
    }
}

/// The named tensors of a safetensors file, as program inputs.
fn read_inputs(path: &std::path::Path) -> Result<Vec<(String, Tensor)>, String> {
    let file = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| format!("{file}: {e}"))?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| format!("{file}: not a safetensors file: {e}"))?;
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            let dtype = elem_type(view.dtype(), &file, &name)?;
            Ok((name, Tensor::from_bytes(dtype, view.shape(), view.data())))
        })
        .collect()
}

/// Every output of `program` after one run on `inputs`, on the CPU.
fn run_cpu(args: &RunArgs, inputs: Vec<(String, Tensor)>) -> Result<Vec<(String, Tensor)>, String> {
    let model =
        open_model(&args.artifact, &args.weights, args.threads).map_err(|e| e.to_string())?;
    let mut runner = model.runner(&args.program).map_err(|e| e.to_string())?;
    let file = args.inputs.display().to_string();
    for (name, t) in inputs {
        runner
            .set_input(&name, t)
            .map_err(|e| format!("{file}: {e}"))?;
    }
    runner.run().map_err(|e| e.to_string())?;
    runner
        .desc()
        .outputs
        .iter()
        .map(|o| {
            let t = runner.output(&o.name).map_err(|e| e.to_string())?;
            Ok((o.name.clone(), t.into_owned()))
        })
        .collect()
}

/// As [`run_cpu`], on the GPU.
fn run_cuda(
    args: &RunArgs,
    inputs: Vec<(String, Tensor)>,
) -> Result<Vec<(String, Tensor)>, String> {
    let artifact = kiln_runtime::Artifact::read(&args.artifact).map_err(|e| e.to_string())?;
    let m = &artifact.manifest;
    let weights = kiln_runtime::load_weights(&args.weights, &m.weights, &m.model)
        .map_err(|e| e.to_string())?;
    let file = args.artifact.display().to_string();
    let model = kiln_runtime::cuda::CudaModel::new(artifact, &file, weights.tensors)
        .map_err(|e| e.to_string())?;
    let mut runner = model.runner(&args.program).map_err(|e| e.to_string())?;
    let inputs_file = args.inputs.display().to_string();
    for (name, t) in inputs {
        runner
            .set_input(&name, t)
            .map_err(|e| format!("{inputs_file}: {e}"))?;
    }
    runner.run().map_err(|e| e.to_string())?;
    runner
        .output_names()
        .into_iter()
        .map(|name| {
            let t = runner.output(&name).map_err(|e| e.to_string())?;
            Ok((name, t))
        })
        .collect()
}

pub fn run(args: RunArgs) -> Result<(), String> {
    let inputs = read_inputs(&args.inputs)?;
    let outputs = match args.device {
        Device::Cpu => run_cpu(&args, inputs)?,
        Device::Cuda => run_cuda(&args, inputs)?,
    };
    let views: BTreeMap<String, safetensors::tensor::TensorView<'_>> = outputs
        .iter()
        .map(|(name, t)| {
            let view =
                safetensors::tensor::TensorView::new(dtype(t.dtype), t.shape.clone(), t.bytes())
                    .map_err(|e| format!("output `{name}`: {e}"))?;
            Ok((name.clone(), view))
        })
        .collect::<Result<_, String>>()?;
    let out = safetensors::serialize(&views, None).map_err(|e| e.to_string())?;
    kiln_runtime::atomic::write_file(&args.outputs, &out).map_err(|e| e.to_string())?;
    eprintln!(
        "wrote {} outputs to {}",
        views.len(),
        args.outputs.display()
    );
    Ok(())
}
