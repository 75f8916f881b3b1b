//! `--device`: where a command runs a compiled model.

/// `cpu`, or `cuda` (the first GPU, through the CUDA driver).
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Device {
    Cpu,
    Cuda,
}
