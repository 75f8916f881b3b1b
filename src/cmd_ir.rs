//! `kiln ir`: builds one program of a model and prints its IR — as built, after a named pass,
//! or after every pass — as canonical text or Graphviz DOT.

use crate::cmd_compile::Target;
use clap::{Args, ValueEnum};
use kiln::model;
use kiln_frontend::{build, BuildOptions, Program};
use kiln_ir::Graph;
use kiln_passes::{PipelineOptions, Precision, Recompute};
use std::path::PathBuf;

#[derive(Args)]
pub struct IrArgs {
    /// config.json, a model directory, or a .gguf file (default: an embedded tiny Llama).
    model: Option<PathBuf>,
    /// Which program to build.
    #[arg(long, default_value = "prefill")]
    program: Program,
    /// Print the IR after this pass (`build` for the graph as built); default: after all passes.
    #[arg(long, conflicts_with = "print_after_all")]
    after: Option<String>,
    /// Print the IR as built and after every pass.
    #[arg(long)]
    print_after_all: bool,
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
    /// Largest batch the program accepts.
    #[arg(long)]
    max_batch: Option<usize>,
    /// Longest sequence the program accepts (default: the model's position limit).
    #[arg(long)]
    max_seq: Option<usize>,
    /// Mixed-precision policy: f32, bf16-weights, bf16 or f16.
    #[arg(long, default_value = "f32")]
    precision: Precision,
    /// Passes of the pipeline to leave out, comma-separated.
    #[arg(long, value_delimiter = ',')]
    skip_passes: Vec<String>,
    /// Training programs: `save-all`, `selective`, `layers`, or a memory budget such as `64MiB`.
    #[arg(long, default_value = "save-all")]
    recompute: Recompute,
    /// The backend whose pipeline runs: `cpu` or `cuda` (which recomputes a softmax's
    /// exponentials where they are read; docs/passes.md).
    #[arg(long, value_enum, default_value = "cpu")]
    target: Target,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Text,
    Dot,
}

pub fn run(args: IrArgs) -> Result<(), String> {
    let spec = model::spec(args.model.as_deref())?;
    let mut opts = BuildOptions::for_spec(&spec);
    opts.max_batch = args.max_batch.unwrap_or(opts.max_batch);
    opts.max_seq = args.max_seq.unwrap_or(opts.max_seq);
    let mut graph = build(&spec, args.program, opts).map_err(|e| e.to_string())?;
    let pipeline = args.target.backend().pipeline(&PipelineOptions {
        precision: args.precision,
        recompute: args.recompute,
        skip: args.skip_passes.clone(),
    });
    if let Some(after) = &args.after {
        if after != "build" && !pipeline.names().contains(&after.as_str()) {
            return Err(format!(
                "--after: unknown pass `{after}` (expected build or one of: {})",
                pipeline.names().join(", ")
            ));
        }
    }
    let show = |stage: &str, g: &Graph| {
        if args.print_after_all {
            println!("// ----- after {stage} -----");
        }
        print!("{}", render(g, args.format));
    };
    if args.print_after_all || args.after.as_deref() == Some("build") {
        show("build", &graph);
    }
    pipeline
        .run(&mut graph, |pass, g| {
            if args.print_after_all || args.after.as_deref() == Some(pass) {
                show(pass, g);
            }
        })
        .map_err(|e| e.to_string())?;
    if !args.print_after_all && args.after.is_none() {
        show("all passes", &graph);
    }
    Ok(())
}

fn render(g: &Graph, format: Format) -> String {
    match format {
        Format::Text => kiln_ir::text::print(g),
        Format::Dot => kiln_ir::dot::to_dot(g),
    }
}
