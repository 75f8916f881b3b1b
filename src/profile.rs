//! The table `--profile` prints: the time of a program's steps grouped by label, the layers of
//! a model merged (`model.layers.3.mlp` and `model.layers.7.mlp` count as `model.layers.N.mlp`),
//! largest first. Times are summed over every call of the program while profiling (the header
//! says over what: `kiln bench`'s timed runs, `kiln train`'s steps); the steps column counts one
//! call's.

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

/// Time per kind of step (its label, layers merged), largest first, summed over what `over`
/// names.
pub fn print((desc, times): (&ProgramDesc, Option<&[Duration]>), over: &str) {
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
