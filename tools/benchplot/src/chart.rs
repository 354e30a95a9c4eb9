//! Draws benchmark rows as SVG with plotters: one panel per row (each in
//! its own unit, so latency in µs and rate in msgs/s never share an axis),
//! three bars per panel (kerntransport, vsock, virtio-serial), the value
//! above each bar, `n/a` where a transport was not measured, and a header
//! with the title and the environment the numbers came from. Owns layout
//! and colours only.

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::csv::{Row, TRANSPORTS};

/// Drawing failed (the SVG backend writes into a String, so this is rare).
#[derive(Debug, thiserror::Error)]
#[error("drawing the chart: {0}")]
pub struct DrawError(#[from] DrawingAreaErrorKind<std::io::Error>);

const PANEL_W: u32 = 560;
const PANEL_H: u32 = 360;
const COLUMNS: u32 = 2;
const HEADER_LINE: u32 = 22;
const COLORS: [RGBColor; 3] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
];

/// A value as bench-peers prints it: no decimals from 1000 on, one from
/// 10 on, two below (never an exponent).
pub fn short(v: f64) -> String {
    if v >= 1000.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// An axis label: as many decimals as the axis' scale needs.
fn axis(v: f64, top: f64) -> String {
    if top >= 20.0 {
        format!("{v:.0}")
    } else if top >= 2.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// The SVG document for `rows`, headed by `title` and one line per entry
/// of `notes` (the environment).
pub fn svg(rows: &[Row], title: &str, notes: &[String]) -> Result<String, DrawError> {
    let panel_rows = (rows.len() as u32).div_ceil(COLUMNS);
    let header = 20 + HEADER_LINE * (2 + notes.len() as u32);
    let size = (PANEL_W * COLUMNS, header + PANEL_H * panel_rows.max(1));
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, size).into_drawing_area();
        root.fill(&WHITE)?;
        let (top, body) = root.split_vertically(header);
        draw_header(&top, title, notes)?;
        let panels = body.split_evenly((panel_rows.max(1) as usize, COLUMNS as usize));
        for (row, area) in rows.iter().zip(panels.iter()) {
            draw_panel(area, row)?;
        }
        root.present()?;
    }
    Ok(out)
}

fn draw_header(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    title: &str,
    notes: &[String],
) -> Result<(), DrawError> {
    let line = HEADER_LINE as i32;
    let mut y = 12;
    area.draw_text(
        title,
        &("sans-serif", 22)
            .into_font()
            .style(FontStyle::Bold)
            .color(&BLACK),
        (16, y),
    )?;
    y += line + 6;
    // Legend: a swatch and a name per transport, on one line.
    let mut x = 16;
    for (name, color) in TRANSPORTS.iter().zip(COLORS) {
        area.draw(&Rectangle::new(
            [(x, y + 2), (x + 14, y + 16)],
            color.filled(),
        ))?;
        area.draw_text(
            name,
            &("sans-serif", 16).into_font().color(&BLACK),
            (x + 20, y),
        )?;
        x += 40 + 9 * name.len() as i32;
    }
    y += line;
    for note in notes {
        area.draw_text(
            note,
            &("sans-serif", 13).into_font().color(&RGBColor(80, 80, 80)),
            (16, y),
        )?;
        y += line - 4;
    }
    Ok(())
}

fn draw_panel(area: &DrawingArea<SVGBackend<'_>, Shift>, row: &Row) -> Result<(), DrawError> {
    let max = row.values.iter().flatten().copied().fold(0.0, f64::max);
    // Headroom for the value labels; a panel of zeros or n/a still has a scale.
    let top = if max > 0.0 { max * 1.18 } else { 1.0 };
    let caption = format!("{} ({})", row.name, row.better);
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 17))
        .margin(12)
        .x_label_area_size(28)
        .y_label_area_size(70)
        .build_cartesian_2d((0u32..2u32).into_segmented(), 0f64..top)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .y_desc(row.unit.as_str())
        .y_labels(6)
        .y_label_formatter(&|v| axis(*v, top))
        .light_line_style(WHITE)
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => TRANSPORTS
                .get(*i as usize)
                .copied()
                .unwrap_or("")
                .to_string(),
            _ => String::new(),
        })
        .label_style(("sans-serif", 13))
        .axis_desc_style(("sans-serif", 14))
        .draw()?;
    let centered = ("sans-serif", 13)
        .into_font()
        .color(&BLACK)
        .pos(Pos::new(HPos::Center, VPos::Bottom));
    for (i, v) in row.values.iter().enumerate() {
        let i = i as u32;
        match v {
            Some(v) => {
                let mut bar = Rectangle::new(
                    [
                        (SegmentValue::Exact(i), 0.0),
                        (SegmentValue::Exact(i + 1), *v),
                    ],
                    COLORS[i as usize].filled(),
                );
                bar.set_margin(0, 0, 28, 28);
                chart.draw_series(std::iter::once(bar))?;
                chart.draw_series(std::iter::once(Text::new(
                    format!("{} {}", short(*v), row.unit),
                    (SegmentValue::CenterOf(i), *v + top * 0.01),
                    centered.clone(),
                )))?;
            }
            None => {
                chart.draw_series(std::iter::once(Text::new(
                    "n/a".to_string(),
                    (SegmentValue::CenterOf(i), top * 0.02),
                    centered.clone(),
                )))?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::csv::parse;

    const SAMPLE: &str = "row,unit,kerntransport,vsock,virtio_serial,better\n\
        \"latency p50, 64 B\",us,151.6,193.2,136.8,lower\n\
        \"latency p99, 64 B\",us,293.9,948.5,265.8,lower\n\
        \"one-way throughput, 64 KiB msgs\",MB/s,46.1,n/a,73.9,higher\n\
        \"message rate, 16 B msgs\",msgs/s,61785,39375,58803,higher\n";

    #[test]
    fn draws_every_row_and_value() {
        let rows = parse(SAMPLE).unwrap();
        let notes = vec!["guest kernel 6.12 & <host>".to_string()];
        let s = svg(&rows, "kerntransport vs peers", &notes).unwrap();
        assert!(
            s.starts_with("<svg") && s.trim_end().ends_with("</svg>"),
            "{s}"
        );
        for want in [
            "kerntransport vs peers",
            "latency p50, 64 B (lower is better)",
            "message rate, 16 B msgs (higher is better)",
            "151.6 us",
            "948.5 us",
            "61785 msgs/s",
            "46.1 MB/s",
            "n/a",
            "virtio-serial",
            "guest kernel 6.12 &amp; &lt;host&gt;",
        ] {
            assert!(s.contains(want), "SVG lacks {want:?}");
        }
        // 11 measured bars + 3 legend swatches, in the transports' colours.
        let filled = |c: &RGBColor| format!("fill=\"#{:02X}{:02X}{:02X}\"", c.0, c.1, c.2);
        let bars: usize = COLORS.iter().map(|c| s.matches(&filled(c)).count()).sum();
        assert_eq!(bars, 11 + 3, "{s}");
    }

    #[test]
    fn short_numbers() {
        assert_eq!(axis(150.0, 228.0), "150");
        assert_eq!(axis(1.5, 8.0), "1.5");
        assert_eq!(axis(0.25, 1.0), "0.25");
        assert_eq!(short(61785.4), "61785");
        assert_eq!(short(151.64), "151.6");
        assert_eq!(short(46.1), "46.1");
        assert_eq!(short(0.5), "0.50");
    }
}
