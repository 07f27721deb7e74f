// SPDX-License-Identifier: GPL-2.0

//! The plot: balloon size over time, target and actual, for each driver
//! (`plotters`' SVG backend: text is written as SVG text, no font files
//! needed).

use std::path::Path;

use anyhow::anyhow;
use plotters::prelude::*;
use qemu_test::Driver;
use qemu_test::Result;

use crate::speed::Trace;
use crate::GUEST_MIB;
use crate::SMALL_MIB;

fn color(driver: Driver) -> RGBColor {
    match driver {
        Driver::C => RGBColor(200, 60, 40),
        Driver::Rs => RGBColor(40, 90, 200),
    }
}

/// The target balloon size over a trace: the inflate's from 0 s, the
/// deflate's from when it was asked for (after the guest's `MemTotal` was
/// read).
fn target_steps(trace: &Trace) -> Vec<(f64, f64)> {
    let inflated = (GUEST_MIB - SMALL_MIB) as f64;
    vec![
        (0.0, 0.0),
        (0.0, inflated),
        (trace.deflate_at, inflated),
        (trace.deflate_at, 0.0),
        (trace.end, 0.0),
    ]
}

/// Draws each driver's trace into an SVG file at `path`.
pub fn draw(path: &Path, traces: &[(Driver, &Trace)]) -> Result<()> {
    let plot_error = |e: &dyn std::fmt::Display| anyhow!("drawing {}: {e}", path.display());
    let x_max = traces.iter().map(|(_, t)| t.end).fold(1.0, f64::max) * 1.05;
    let y_max = (GUEST_MIB - SMALL_MIB) as f64 * 1.1;
    let root = SVGBackend::new(path, (1000, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_error(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "balloon size, {GUEST_MIB} -> {SMALL_MIB} -> {GUEST_MIB} MiB guest (QMP query-balloon every 20 ms)"
            ),
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(65)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)
        .map_err(|e| plot_error(&e))?;
    chart
        .configure_mesh()
        .x_desc("seconds since the inflate request")
        .y_desc("balloon MiB")
        .y_label_formatter(&|mib| format!("{mib:.0}"))
        .draw()
        .map_err(|e| plot_error(&e))?;
    for &(driver, trace) in traces {
        let c = color(driver);
        chart
            .draw_series(DashedLineSeries::new(
                target_steps(trace),
                6,
                4,
                c.mix(0.6).stroke_width(1),
            ))
            .map_err(|e| plot_error(&e))?
            .label(format!("{} target", driver.module_name()))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.mix(0.6)));
        chart
            .draw_series(LineSeries::new(
                trace.samples.iter().copied(),
                c.stroke_width(2),
            ))
            .map_err(|e| plot_error(&e))?
            .label(format!("{} actual", driver.module_name()))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(|e| plot_error(&e))?;
    root.present().map_err(|e| plot_error(&e))?;
    Ok(())
}
