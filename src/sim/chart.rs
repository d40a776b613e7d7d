//! The rollout chart: installs over virtual time, one line per summary group, as an
//! SVG file drawn with plotters.

use plotters::prelude::*;
use std::path::Path;

/// Colours of the group lines, in order (all leaves first).
const COLOURS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// Draws `series` (per group: (seconds, installs so far)) into `path`, on a scale of
/// `leaves`.
pub fn draw(
    path: &Path,
    title: &str,
    series: Vec<(String, Vec<(f64, f64)>)>,
    leaves: u64,
) -> Result<(), Box<dyn std::error::Error>> {
    let end = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(t, _)| *t))
        .fold(1.0f64, f64::max);
    let (scale, unit) = if end >= 7200.0 {
        (3600.0, "hours")
    } else if end >= 120.0 {
        (60.0, "minutes")
    } else {
        (1.0, "seconds")
    };
    let root = SVGBackend::new(path, (960, 540)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("{title}: installed over time"), ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..end / scale, 0.0..(leaves.max(1) as f64))?;
    chart
        .configure_mesh()
        .x_desc(format!("virtual time ({unit})"))
        .y_desc("leaves installed")
        .draw()?;
    for (i, (name, points)) in series.into_iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        chart
            .draw_series(LineSeries::new(
                points.into_iter().map(|(t, n)| (t / scale, n)),
                colour.stroke_width(2),
            ))?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()?;
    root.present()?;
    Ok(())
}
