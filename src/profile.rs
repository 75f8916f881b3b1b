//! The table `--profile` prints: the time of a program's steps grouped by label, the layers of
//! a model merged (`model.layers.3.mlp` and `model.layers.7.mlp` count as `model.layers.N.mlp`),
//! largest first. Times are summed over every call of the program while profiling (the header
//! says over what: `kiln bench`'s timed runs, `kiln train`'s steps); the steps column counts one
//! call's. With a path, every step is also written as a line of CSV (`write_steps`), for reading
//! a profile step by step beside the artifact's manifest.

use kiln_runtime::manifest::ProgramDesc;
use std::time::Duration;

/// A step's label with its layer numbers replaced by `N`, so a layer's steps group together.
fn step_kind(label: &str) -> String {
    label
        .split('.')
        .map(|part| match part.parse::<u64>() {
            Ok(_) => "N",
            Err(_) => part,
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// [`print`] for each of `programs`, and [`write_steps`] of them all where `steps` names a file.
pub fn report(
    programs: &[(&ProgramDesc, Option<&[Duration]>)],
    over: &str,
    steps: Option<&std::path::Path>,
) -> Result<(), String> {
    programs.iter().for_each(|&p| print(p, over));
    steps.map_or(Ok(()), |path| write_steps(path, programs))
}

/// Time per kind of step (its label, layers merged), largest first, summed over what `over`
/// names.
fn print((desc, times): (&ProgramDesc, Option<&[Duration]>), over: &str) {
    let Some(times) = times else {
        return;
    };
    let mut by_kind: std::collections::BTreeMap<String, (Duration, usize)> = Default::default();
    for (step, t) in desc.steps.iter().zip(times) {
        let entry = by_kind.entry(step_kind(&step.label)).or_default();
        entry.0 += *t;
        entry.1 += 1;
    }
    let total: f64 = times.iter().map(|t| t.as_secs_f64()).sum();
    let mut rows: Vec<_> = by_kind.into_iter().collect();
    rows.sort_by_key(|row| std::cmp::Reverse(row.1 .0));
    println!(
        "\n{}: {:.3} s in {} steps, summed over {over}",
        desc.name,
        total,
        times.len()
    );
    println!("| step | steps | time (s) | share |\n| --- | --- | --- | --- |");
    for (kind, (t, n)) in rows.iter().take(16) {
        let secs = t.as_secs_f64();
        println!(
            "| {kind} | {n} | {secs:.4} | {:.1}% |",
            100.0 * secs / total.max(1e-12)
        );
    }
}

/// Writes every step of the profiled `programs` to `path` as CSV: the program, the step's
/// index, kernel and label, and its seconds (summed as in [`print`]).
fn write_steps(
    path: &std::path::Path,
    programs: &[(&ProgramDesc, Option<&[Duration]>)],
) -> Result<(), String> {
    let mut csv = String::from("program,step,kernel,label,seconds\n");
    for (desc, times) in programs {
        let Some(times) = times else { continue };
        for (i, (step, t)) in desc.steps.iter().zip(times.iter()).enumerate() {
            csv.push_str(&format!(
                "{},{i},{},\"{}\",{:.9}\n",
                desc.name,
                step.kernel,
                step.label.replace('"', "'"),
                t.as_secs_f64()
            ));
        }
    }
    std::fs::write(path, csv).map_err(|e| format!("writing {}: {e}", path.display()))
}
