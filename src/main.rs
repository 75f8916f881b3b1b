//! The `kiln` command line: parses arguments and hands each subcommand to its module.
//! Every failure prints one `error:` line naming the file, the field and what was expected, and
//! exits with status 1.

mod cmd_bench;
mod cmd_compile;
mod cmd_generate;
mod cmd_ir;
mod cmd_run;
mod cmd_train;
mod device;
mod profile;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "kiln",
    version,
    about = "Ahead-of-time compiler for language models"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print a program's IR, as built or after passes of the pipeline.
    Ir(cmd_ir::IrArgs),
    /// Compile a model into a `.kiln` artifact.
    Compile(cmd_compile::CompileArgs),
    /// Generate text with an artifact (or the embedded tiny model).
    Generate(cmd_generate::GenerateArgs),
    /// Run one program of an artifact on inputs from a safetensors file.
    Run(cmd_run::RunArgs),
    /// Measure prefill and decode throughput of an artifact.
    Bench(cmd_bench::BenchArgs),
    /// Train a model (default: the embedded tiny Llama on the embedded text), then generate.
    Train(Box<cmd_train::TrainArgs>),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Ir(args) => cmd_ir::run(args),
        Command::Compile(args) => cmd_compile::run(args),
        Command::Generate(args) => cmd_generate::run(args),
        Command::Run(args) => cmd_run::run(args),
        Command::Bench(args) => cmd_bench::run(args),
        Command::Train(args) => cmd_train::run(*args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}
