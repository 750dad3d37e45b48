//! The loss-against-offered-rate picture (SVG), one line per receiver, drawn with plotters.

use std::path::Path;

use anyhow::{Result, anyhow};
use plotters::prelude::*;

use super::procs::Rx;
use super::scenarios::Curves;

/// Colour of each receiver's line: netcon's two in strong colours, the baselines muted.
fn colour(rx: Rx) -> RGBColor {
    match rx {
        Rx::Xdp => RGBColor(0x1f, 0x77, 0xb4),
        Rx::XdpNats => RGBColor(0x94, 0x67, 0xbd),
        Rx::Raw => RGBColor(0x2c, 0xa0, 0x2c),
        Rx::Tcpdump => RGBColor(0xff, 0x7f, 0x0e),
        Rx::Socat => RGBColor(0x7f, 0x7f, 0x7f),
    }
}

/// Draws `curves` (records/s sent, % lost) into `path`.
///
/// # Errors
/// When plotters cannot draw or the file cannot be written.
pub fn loss_curves(curves: &Curves, path: &Path) -> Result<()> {
    let max_rate = curves
        .values()
        .flatten()
        .map(|p| p.0)
        .fold(1.0f64, f64::max)
        / 1000.0;
    let max_loss = curves
        .values()
        .flatten()
        .map(|p| p.1)
        .fold(1.0f64, f64::max);
    let root = SVGBackend::new(path, (800, 480)).into_drawing_area();
    let draw = |e: &dyn std::fmt::Display| anyhow!("drawing {}: {e}", path.display());
    root.fill(&WHITE).map_err(|e| draw(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Records lost against rate offered (1 sender, 200-byte records)",
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..max_rate * 1.05, 0.0..(max_loss * 1.1).min(100.0))
        .map_err(|e| draw(&e))?;
    chart
        .configure_mesh()
        .x_desc("records/s sent (thousands)")
        .y_desc("records lost (%)")
        .draw()
        .map_err(|e| draw(&e))?;
    for (rx, points) in curves {
        let c = colour(*rx);
        let series: Vec<(f64, f64)> = points.iter().map(|&(r, l)| (r / 1000.0, l)).collect();
        chart
            .draw_series(LineSeries::new(series.clone(), c.stroke_width(2)))
            .map_err(|e| draw(&e))?
            .label(rx.label())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2)));
        chart
            .draw_series(series.into_iter().map(|p| Circle::new(p, 3, c.filled())))
            .map_err(|e| draw(&e))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(|e| draw(&e))?;
    root.present().map_err(|e| draw(&e))?;
    Ok(())
}
