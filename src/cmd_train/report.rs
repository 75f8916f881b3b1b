//! What `kiln train` leaves behind besides weights: a CSV log with one row per step and a PNG
//! of the loss curve.

use kiln_runtime::train::{Outcome, StepReport};
use plotters::prelude::*;
use std::io::Write;
use std::path::Path;

/// Writes `rows` as CSV: `step,lr,loss,grad_norm,micro_batches,tokens,seconds,outcome`.
pub fn write_csv(path: &Path, rows: &[(StepReport, f64)]) -> Result<(), String> {
    let file = path.display().to_string();
    let mut out =
        std::io::BufWriter::new(std::fs::File::create(path).map_err(|e| format!("{file}: {e}"))?);
    let mut write = || -> std::io::Result<()> {
        writeln!(
            out,
            "step,lr,loss,grad_norm,micro_batches,tokens,seconds,outcome"
        )?;
        for (r, seconds) in rows {
            let outcome = match &r.outcome {
                Outcome::Applied => "applied".to_string(),
                Outcome::Skipped(why) => format!("skipped: {why}"),
                Outcome::RolledBack(why) => format!("rolled back: {why}"),
            };
            writeln!(
                out,
                "{},{:e},{},{},{},{},{seconds:.3},\"{}\"",
                r.step,
                r.lr,
                r.loss,
                r.grad_norm,
                r.micro_batches,
                r.tokens,
                outcome.replace('"', "'")
            )?;
        }
        out.flush()
    };
    write().map_err(|e| format!("{file}: {e}"))
}

/// Draws the loss of every step (applied or not) against the step's index, as a PNG.
pub fn plot_loss(path: &Path, losses: &[f64]) -> Result<(), String> {
    let file = path.display().to_string();
    let fail = |e: String| format!("{file}: {e}");
    let finite: Vec<(f64, f64)> = losses
        .iter()
        .enumerate()
        .filter(|(_, l)| l.is_finite())
        .map(|(i, &l)| ((i + 1) as f64, l))
        .collect();
    if finite.is_empty() {
        return Err(fail("no finite loss to plot".into()));
    }
    let top = finite.iter().map(|p| p.1).fold(f64::MIN, f64::max);
    let bottom = finite.iter().map(|p| p.1).fold(f64::MAX, f64::min).min(0.0);
    let root = BitMapBackend::new(path, (800, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(e.to_string()))?;
    let area = root.margin(20, 20, 20, 20);
    let mut chart = ChartBuilder::on(&area)
        .build_cartesian_2d(0.0..(losses.len() as f64 + 1.0), bottom..top * 1.05)
        .map_err(|e| fail(e.to_string()))?;
    // Grid lines without text: the bitmap backend is built without a font.
    chart
        .configure_mesh()
        .x_labels(10)
        .y_labels(8)
        .x_label_formatter(&|_| String::new())
        .y_label_formatter(&|_| String::new())
        .light_line_style(WHITE)
        .draw()
        .map_err(|e| fail(e.to_string()))?;
    chart
        .draw_series(LineSeries::new(finite, &BLUE))
        .map_err(|e| fail(e.to_string()))?;
    root.present().map_err(|e| fail(e.to_string()))
}
