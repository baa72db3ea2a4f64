//! SVG plots with `plotters`: the latency CDF per policy, the utilisation per server, and p99
//! against the number of independent clients.

use std::path::Path;

use plotters::prelude::*;

use crate::harness::svg::{self, canvas, labelled_line, legend};

/// One policy's series.
pub struct Series<'a> {
    pub name: &'a str,
    /// Sorted latencies in ms; infinite ones (timeouts) are left off the right edge.
    pub latencies: &'a [f64],
    /// Per server: utilisation, averaged over seeds.
    pub utilisation: &'a [f64],
}

fn style(i: usize) -> ShapeStyle {
    // Volley's policies come after the peers: draw the peers thicker so they stand out.
    let width = if i < super::policy::Policy::peers().len() {
        3
    } else {
        1
    };
    svg::stroke(i, width)
}

/// The latency CDF (log x axis) of every series.
pub fn latency_cdf(path: &Path, title: &str, series: &[Series<'_>]) -> anyhow::Result<()> {
    let mut hi: f64 = 10.0;
    let mut lo: f64 = f64::MAX;
    for s in series {
        if let Some(max) = s.latencies.iter().rev().find(|x| x.is_finite()) {
            hi = hi.max(*max);
        }
        if let Some(min) = s.latencies.first() {
            lo = lo.min(*min);
        }
    }
    let lo = if lo.is_finite() && lo > 0.0 {
        lo * 0.9
    } else {
        0.1
    };
    let root = canvas(path, (1100, 700))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d((lo..hi * 1.1).log_scale(), 0.0..1.0)?;
    chart
        .configure_mesh()
        .x_desc("end-to-end latency, ms (log scale)")
        .y_desc("fraction of sessions")
        .draw()?;
    for (i, s) in series.iter().enumerate() {
        let n = s.latencies.len().max(1) as f64;
        // At most ~400 points per series.
        let step = (s.latencies.len() / 400).max(1);
        let points: Vec<(f64, f64)> = s
            .latencies
            .iter()
            .enumerate()
            .filter(|(k, x)| x.is_finite() && (k % step == 0 || *k + 1 == s.latencies.len()))
            .map(|(k, &x)| (x.max(lo), (k + 1) as f64 / n))
            .collect();
        labelled_line(&mut chart, points, style(i), s.name)?;
    }
    legend(&mut chart, SeriesLabelPosition::LowerRight)?;
    root.present()?;
    Ok(())
}

/// Utilisation per server, one line per policy; servers in the order given.
pub fn utilisation(
    path: &Path,
    title: &str,
    series: &[Series<'_>],
    capacity_share: &[f64],
) -> anyhow::Result<()> {
    let n = capacity_share.len();
    let root = canvas(path, (1100, 700))?;
    let ymax = series
        .iter()
        .flat_map(|s| s.utilisation.iter().copied())
        .fold(1.0f64, f64::max);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..(n.max(1) - 1) as f64, 0.0..ymax * 1.05)?;
    chart
        .configure_mesh()
        .x_desc("server (sorted by capacity share, slowest first)")
        .y_desc("utilisation (slot time worked / slot time)")
        .draw()?;
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| {
        capacity_share[a]
            .total_cmp(&capacity_share[b])
            .then(a.cmp(&b))
    });
    for (i, s) in series.iter().enumerate() {
        let points: Vec<(f64, f64)> = order
            .iter()
            .enumerate()
            .map(|(x, &srv)| (x as f64, s.utilisation.get(srv).copied().unwrap_or(0.0)))
            .collect();
        labelled_line(&mut chart, points, style(i), s.name)?;
    }
    legend(&mut chart, SeriesLabelPosition::LowerRight)?;
    root.present()?;
    Ok(())
}

/// p99 (log y axis; timeouts drawn at the top) against the number of independent clients (log x
/// axis), one line per policy.
pub fn p99_vs_clients(
    path: &Path,
    title: &str,
    clients: &[usize],
    series: &[(String, Vec<(usize, f64)>)],
) -> anyhow::Result<()> {
    let finite = series
        .iter()
        .flat_map(|(_, v)| v.iter().map(|(_, y)| *y))
        .filter(|y| y.is_finite());
    let (mut lo, mut hi) = (f64::MAX, 1.0f64);
    for y in finite {
        lo = lo.min(y);
        hi = hi.max(y);
    }
    let lo = if lo.is_finite() && lo > 0.0 {
        lo * 0.8
    } else {
        1.0
    };
    let top = hi * 1.5;
    let xmax = clients.iter().copied().max().unwrap_or(1).max(2) as f64;
    let root = canvas(path, (1100, 700))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((0.8f64..xmax * 1.25).log_scale(), (lo..top).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("independent clients M (log scale; M = 1 is a central balancer)")
        .y_desc("p99 end to end, ms (log scale; timeouts at the top)")
        .draw()?;
    for (i, (name, points)) in series.iter().enumerate() {
        let pts: Vec<(f64, f64)> = points
            .iter()
            .map(|(m, y)| (*m as f64, if y.is_finite() { *y } else { top * 0.99 }))
            .collect();
        let st = style(i);
        chart.draw_series(pts.iter().map(|p| Circle::new(*p, 3, st)))?;
        labelled_line(&mut chart, pts, st, name)?;
    }
    legend(&mut chart, SeriesLabelPosition::UpperLeft)?;
    root.present()?;
    Ok(())
}
