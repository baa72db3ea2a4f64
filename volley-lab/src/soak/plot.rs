//! The soak's plot: four panels over time — resident memory, open descriptors, open sessions, and
//! the running totals of failovers, failures and restarts.

use std::path::Path;

use plotters::prelude::*;

use super::fleet::Restart;
use super::sample::Sample;
use crate::harness::svg::{canvas, labelled_line, legend, stroke};

type Series = (String, Vec<(f64, f64)>);

/// Draws `soak.svg`: time in minutes on every x axis; restarts as thin grey verticals.
pub fn draw(
    path: &Path,
    samples: &[Sample],
    restarts: &[Restart],
    warm_up_s: f64,
) -> anyhow::Result<()> {
    let root = canvas(path, (1400, 900))?;
    let panels = root.split_evenly((2, 2));
    let n = samples.first().map_or(0, |s| s.servers.len());
    let t = |s: &Sample| s.t_s / 60.0;
    let mb = |kb: u64| kb as f64 / 1024.0;

    let mut rss: Vec<Series> = (0..n)
        .map(|i| {
            (
                format!("server {i}"),
                samples
                    .iter()
                    .map(|s| (t(s), mb(s.servers[i].proc.rss_kb)))
                    .collect(),
            )
        })
        .collect();
    rss.push((
        "proxy".into(),
        samples.iter().map(|s| (t(s), mb(s.proxy.rss_kb))).collect(),
    ));
    rss.push((
        "lab (clients)".into(),
        samples.iter().map(|s| (t(s), mb(s.lab.rss_kb))).collect(),
    ));
    panel(
        &panels[0],
        "resident memory (MB)",
        &rss,
        restarts,
        warm_up_s,
    )?;

    let mut fds: Vec<Series> = (0..n)
        .map(|i| {
            (
                format!("server {i}"),
                samples
                    .iter()
                    .map(|s| (t(s), s.servers[i].proc.fds as f64))
                    .collect(),
            )
        })
        .collect();
    fds.push((
        "proxy".into(),
        samples.iter().map(|s| (t(s), s.proxy.fds as f64)).collect(),
    ));
    fds.push((
        "lab (clients)".into(),
        samples.iter().map(|s| (t(s), s.lab.fds as f64)).collect(),
    ));
    panel(
        &panels[1],
        "open file descriptors",
        &fds,
        restarts,
        warm_up_s,
    )?;

    let mut sessions: Vec<Series> = (0..n)
        .map(|i| {
            (
                format!("server {i}"),
                samples
                    .iter()
                    .map(|s| (t(s), s.servers[i].sessions as f64))
                    .collect(),
            )
        })
        .collect();
    sessions.push((
        "proxy flows open".into(),
        samples
            .iter()
            .map(|s| (t(s), s.proxy_open_flows as f64))
            .collect(),
    ));
    panel(
        &panels[2],
        "sessions open (per server)",
        &sessions,
        restarts,
        warm_up_s,
    )?;

    let counters: Vec<Series> = vec![
        (
            "failovers".into(),
            samples.iter().map(|s| (t(s), s.failovers as f64)).collect(),
        ),
        (
            "restarts".into(),
            samples.iter().map(|s| (t(s), s.restarts as f64)).collect(),
        ),
        (
            "connect failures".into(),
            samples
                .iter()
                .map(|s| (t(s), s.connect_failures as f64))
                .collect(),
        ),
        (
            "requests failed".into(),
            samples
                .iter()
                .map(|s| (t(s), (s.request_failures + s.proxy_failures) as f64))
                .collect(),
        ),
        (
            "misrouted".into(),
            samples.iter().map(|s| (t(s), s.misrouted as f64)).collect(),
        ),
    ];
    panel(&panels[3], "running totals", &counters, restarts, warm_up_s)?;
    root.present()?;
    Ok(())
}

fn panel(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    title: &str,
    series: &[Series],
    restarts: &[Restart],
    warm_up_s: f64,
) -> anyhow::Result<()> {
    let xmax = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|p| p.0))
        .fold(1.0 / 60.0, f64::max);
    let ymax = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|p| p.1))
        .fold(1.0, f64::max)
        * 1.15;
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(55)
        .build_cartesian_2d(0.0..xmax, 0.0..ymax)?;
    chart
        .configure_mesh()
        .x_desc("minutes")
        .light_line_style(WHITE)
        .draw()?;
    let grey = RGBColor(200, 200, 200);
    for r in restarts {
        let x = r.t_s / 60.0;
        chart.draw_series(LineSeries::new([(x, 0.0), (x, ymax)], grey.stroke_width(1)))?;
    }
    let w = warm_up_s / 60.0;
    chart.draw_series(LineSeries::new(
        [(w, 0.0), (w, ymax)],
        BLACK.mix(0.5).stroke_width(1),
    ))?;
    for (i, (name, points)) in series.iter().enumerate() {
        labelled_line(&mut chart, points.clone(), stroke(i, 2), name)?;
    }
    legend(&mut chart, SeriesLabelPosition::UpperLeft)?;
    Ok(())
}
