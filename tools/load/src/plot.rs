//! PNG plots of sweeps (plotters, bitmap backend): latency percentiles against the offered rate
//! of an open-loop sweep, and throughput against concurrency of a closed-loop one.
//!
//! Text is drawn with ab_glyph from a TrueType font on the system (DejaVu Sans or Liberation
//! Sans, as Debian's `fonts-dejavu-core` / `fonts-liberation` install them; the browser test's
//! chromium brings one) or the file `VIDCASCADE_PLOT_FONT` names.

use std::path::Path;
use std::sync::OnceLock;

use anyhow::{Context, bail};
use plotters::prelude::*;

use crate::report::Report;

/// Where fonts are looked for, in order.
const FONT_PATHS: [&str; 4] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/Library/Fonts/Arial Unicode.ttf",
];

/// Plot size in pixels.
const SIZE: (u32, u32) = (900, 560);

/// Registers the plot font once ("sans-serif"), or says how to get one.
fn ensure_font() -> anyhow::Result<()> {
    static FONT: OnceLock<Result<(), String>> = OnceLock::new();
    FONT.get_or_init(|| {
        let candidates = std::env::var("VIDCASCADE_PLOT_FONT")
            .into_iter()
            .chain(FONT_PATHS.iter().map(|p| p.to_string()));
        for path in candidates {
            if let Ok(bytes) = std::fs::read(&path) {
                // plotters keeps fonts for the life of the process.
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                return plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
                    .map_err(|_| format!("{path} is not a TrueType font"));
            }
        }
        Err(format!(
            "no TrueType font for the plots: install fonts-dejavu-core, or set VIDCASCADE_PLOT_FONT (looked in {FONT_PATHS:?})"
        ))
    })
    .clone()
    .map_err(anyhow::Error::msg)
}

/// One line of a chart.
struct Series {
    name: &'static str,
    color: RGBColor,
    points: Vec<(f64, f64)>,
}

/// Latency p50/p90/p99 against the offered rate of an open-loop sweep.
pub fn latency_vs_rate(reports: &[Report], title: &str, path: &Path) -> anyhow::Result<()> {
    let points = |pick: fn(&crate::report::Percentiles) -> f64| {
        reports
            .iter()
            .filter_map(|r| Some((r.offered_rate?, pick(&r.latency?))))
            .collect::<Vec<_>>()
    };
    let series = [
        Series {
            name: "p50",
            color: BLUE,
            points: points(|p| p.p50),
        },
        Series {
            name: "p90",
            color: RGBColor(230, 140, 0),
            points: points(|p| p.p90),
        },
        Series {
            name: "p99",
            color: RED,
            points: points(|p| p.p99),
        },
    ];
    draw(
        title,
        "offered load (requests / s)",
        "latency (s)",
        &series,
        path,
    )
}

/// Achieved throughput against the concurrency of a closed-loop sweep.
pub fn throughput_vs_concurrency(
    reports: &[Report],
    title: &str,
    path: &Path,
) -> anyhow::Result<()> {
    let points = reports
        .iter()
        .filter_map(|r| Some((r.concurrency? as f64, r.achieved_rate)))
        .collect();
    let series = [Series {
        name: "achieved",
        color: BLUE,
        points,
    }];
    draw(
        title,
        "requests in flight",
        "throughput (requests / s)",
        &series,
        path,
    )
}

fn draw(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    path: &Path,
) -> anyhow::Result<()> {
    ensure_font()?;
    let all: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|s| s.points.iter().copied())
        .collect();
    if all.is_empty() {
        bail!("nothing to plot for {}", path.display());
    }
    let x_max = all.iter().map(|p| p.0).fold(0.0, f64::max) * 1.1;
    let y_max = all.iter().map(|p| p.1).fold(0.0, f64::max) * 1.15;
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    let failed = |err| anyhow::anyhow!("drawing {}: {err}", path.display());
    root.fill(&WHITE).map_err(|e| failed(e.to_string()))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 26))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..x_max.max(1e-6), 0.0..y_max.max(1e-6))
        .map_err(|e| failed(e.to_string()))?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .label_style(("sans-serif", 16))
        .draw()
        .map_err(|e| failed(e.to_string()))?;
    for line in series {
        let color = line.color;
        chart
            .draw_series(LineSeries::new(
                line.points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(|e| failed(e.to_string()))?
            .label(line.name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart
            .draw_series(
                line.points
                    .iter()
                    .map(|&p| Circle::new(p, 4, color.filled())),
            )
            .map_err(|e| failed(e.to_string()))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 16))
        .draw()
        .map_err(|e| failed(e.to_string()))?;
    root.present()
        .with_context(|| format!("writing {}", path.display()))
}
