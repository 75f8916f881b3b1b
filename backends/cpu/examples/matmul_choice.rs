//! Measures where kiln's own matmul loops stop paying and the GEMM library should take over:
//! `x[m, 576] · Wᵀ` with `W` a `[1536, 576]` weight (SmolLM2's MLP up-projection shape), for
//! growing `m`, compiled once with every tile on kiln's loops and once with every tile on the
//! `gemm` crate, on one thread and on all. Prints a markdown table of medians (GFLOP/s).
//!
//!     cargo run --release -p kiln-backend-cpu --example matmul_choice

use kiln_backend_cpu::{compile_with, CpuOptions};
use kiln_ir::{DType, Graph, TensorType};
use kiln_runtime::manifest::ModelInfo;
use kiln_runtime::{Model, Tensor};
use std::time::Instant;

const K: usize = 576;
const N: usize = 1536;

fn graph(m: usize) -> Graph {
    let mut g = Graph::new("prefill");
    let x = g
        .input("x", TensorType::fixed(DType::F32, &[m, K]))
        .unwrap();
    let w = g
        .weight("w", TensorType::fixed(DType::F32, &[N, K]))
        .unwrap();
    let wt = g.permute(w, &[1, 0]).unwrap();
    let y = g.matmul(x, wt).unwrap();
    g.output("y", y).unwrap();
    g
}

/// Median GFLOP/s of the matmul over enough repetitions to take ~0.2 s.
fn gflops(m: usize, gemm_min_rows: Option<i64>, threads: usize) -> f64 {
    let artifact = compile_with(
        &[graph(m)],
        ModelInfo::default(),
        &CpuOptions { gemm_min_rows },
    )
    .unwrap();
    let weights: Vec<f32> = (0..N * K)
        .map(|i| ((i % 97) as f32 - 48.0) / 97.0)
        .collect();
    let model = Model::new(
        artifact,
        "bench",
        vec![Tensor::f32(&[N, K], &weights)],
        threads,
    )
    .unwrap();
    let mut runner = model.runner("prefill").unwrap();
    let x: Vec<f32> = (0..m * K).map(|i| ((i % 13) as f32 - 6.0) / 13.0).collect();
    runner.set_input("x", Tensor::f32(&[m, K], &x)).unwrap();
    let flops = 2.0 * (m * N * K) as f64;
    let reps = ((0.02e9 / flops) as usize).clamp(5, 2000);
    let mut times = Vec::new();
    for _ in 0..10 {
        let started = Instant::now();
        for _ in 0..reps {
            runner.run().unwrap();
        }
        times.push(started.elapsed().as_secs_f64() / reps as f64);
    }
    times.sort_by(f64::total_cmp);
    flops / times[times.len() / 2] / 1e9
}

fn main() {
    let all = kiln_runtime::executor::default_threads();
    println!("| m | kiln loops, 1 thread | gemm, 1 thread | kiln loops, {all} threads | gemm, {all} threads |");
    println!("| --- | --- | --- | --- | --- |");
    for m in [1, 2, 4, 8, 16, 32, 64, 128] {
        let row: Vec<String> = [(None, 1), (Some(1), 1), (None, all), (Some(1), all)]
            .into_iter()
            .map(|(gemm, threads)| format!("{:.1}", gflops(m, gemm, threads)))
            .collect();
        println!("| {m} | {} |", row.join(" | "));
    }
}
