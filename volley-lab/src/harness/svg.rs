//! The strokes every SVG plot of the lab is drawn with (`plotters`): a white canvas, one colour
//! per series from the same palette, a line that carries its legend entry, and the legend box.

use std::path::Path;

use plotters::coord::{CoordTranslate, Shift};
use plotters::prelude::*;

/// A chart on an SVG canvas, whatever its axes.
pub type Chart<'a, CT> = ChartContext<'a, SVGBackend<'a>, CT>;

/// A white SVG canvas of `size` pixels, to be written to `path` when presented.
pub fn canvas(path: &Path, size: (u32, u32)) -> anyhow::Result<DrawingArea<SVGBackend<'_>, Shift>> {
    let root = SVGBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE)?;
    Ok(root)
}

/// Series `i`'s colour, as a stroke `width` pixels wide.
pub fn stroke(i: usize, width: u32) -> ShapeStyle {
    ShapeStyle {
        color: Palette99::pick(i).to_rgba(),
        filled: false,
        stroke_width: width,
    }
}

/// `points` as a line in `style`, with its legend entry `name` (a short stroke of the same
/// style).
pub fn labelled_line<CT>(
    chart: &mut Chart<'_, CT>,
    points: Vec<(f64, f64)>,
    style: ShapeStyle,
    name: &str,
) -> anyhow::Result<()>
where
    CT: CoordTranslate<From = (f64, f64)>,
{
    chart
        .draw_series(LineSeries::new(points, style))?
        .label(name)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
    Ok(())
}

/// The legend box of every labelled series, at `position`.
pub fn legend<CT>(chart: &mut Chart<'_, CT>, position: SeriesLabelPosition) -> anyhow::Result<()>
where
    CT: CoordTranslate,
{
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 11))
        .draw()?;
    Ok(())
}
