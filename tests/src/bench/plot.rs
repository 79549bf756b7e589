//! The benchmarks' charts: SVG files drawn from a run's report, shown beside the tables in
//! docs/benchmarks.md. `vk-bench plot FILE.json DIR` draws a saved run again.
//!
//! NB: plotters' SVG backend writes text as SVG text elements; without its font features it
//! only estimates text widths, which is all the layout needs (no font files on the machine).
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use plotters::{coord::Shift, prelude::*};

use super::{discovery::DiscoveryReport, failover::Death, report::Report, vpc::VpcReport};

const W: u32 = 960;
const H: u32 = 420;
const FONT: &str = "sans-serif";

fn color(path: &str) -> RGBColor {
    match path {
        "direct" => RGBColor(90, 90, 90),
        "viking" | "viking, ejection" => RGBColor(31, 119, 180),
        "iptables DNAT" => RGBColor(214, 39, 40),
        "haproxy" => RGBColor(44, 160, 44),
        "viking, no ejection" => RGBColor(255, 127, 14),
        "none" => RGBColor(90, 90, 90),
        "vpc" => RGBColor(31, 119, 180),
        "nftables" => RGBColor(214, 39, 40),
        _ => RGBColor(148, 103, 189),
    }
}

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow::anyhow!("drawing: {e:?}")
}

/// Draws a saved run's charts into `dir`.
pub fn from_json(file: &Path, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", file.display()))?;
    match v.get("benchmark").and_then(|b| b.as_str()) {
        Some("datapath") => datapath(&serde_json::from_value(v).context("a datapath report")?, dir),
        Some("discovery") => {
            discovery(&serde_json::from_value(v).context("a discovery report")?, dir)
        }
        Some("vpc") => vpc(&serde_json::from_value(v).context("a vpc report")?, dir),
        other => anyhow::bail!("{}: not a benchmark report ({other:?})", file.display()),
    }
}

/// Every chart of the datapath benchmark that its report has data for.
pub fn datapath(r: &Report, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut out = Vec::new();
    if !r.latency.is_empty() {
        out.push(latency(r, &dir.join("datapath-connect-latency.svg"))?);
    }
    if r.rows.iter().any(|row| row.metric.starts_with("throughput")) {
        out.push(paths(r, &dir.join("datapath-paths.svg"))?);
    }
    if !r.hooks.is_empty() {
        out.push(hooks(r, &dir.join("datapath-hook-time.svg"))?);
    }
    if !r.failover.is_empty() {
        out.push(failover(r, &dir.join("datapath-failover.svg"))?);
    }
    Ok(out)
}

/// Connect latency (mean, solid; p99, dashed) against the number of services, log-log.
fn latency(r: &Report, file: &Path) -> anyhow::Result<PathBuf> {
    let root = SVGBackend::new(file, (W, H + 60)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let names = ["direct", "viking", "iptables DNAT"];
    let series = |name: &str, pick: fn(&super::client::LatencyStats) -> f64| -> Vec<(f64, f64)> {
        let mut pts: Vec<(f64, f64)> = r
            .latency
            .iter()
            .filter(|l| l.path == name)
            .map(|l| (l.services as f64, pick(&l.stats)))
            .filter(|(_, y)| *y > 0.0)
            .collect();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        pts
    };
    let all: Vec<f64> = names
        .iter()
        .flat_map(|n| series(n, |s| s.mean_us).into_iter().chain(series(n, |s| s.p99_us)))
        .map(|p| p.1)
        .collect();
    let (ymin, ymax) = all.iter().fold((f64::MAX, 0f64), |(a, b), &y| (a.min(y), b.max(y)));
    let xmax = r.latency.iter().map(|l| l.services).max().unwrap_or(1) as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption("connect() latency against the number of services", (FONT, 22))
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(
            (0.7f64..xmax * 1.5).log_scale(),
            (ymin.max(0.1) * 0.7..ymax * 1.5).log_scale(),
        )
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("services in the table (iptables: rules before the measured one)")
        .y_desc("µs per connect()")
        .x_label_formatter(&|x| human(*x))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .label_style((FONT, 14))
        .draw()
        .map_err(err)?;
    for name in names {
        let c = color(name);
        let mean = series(name, |s| s.mean_us);
        chart
            .draw_series(LineSeries::new(mean.clone(), c.stroke_width(2)))
            .map_err(err)?
            .label(format!("{name}, mean"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        chart.draw_series(mean.iter().map(|p| Circle::new(*p, 3, c.filled()))).map_err(err)?;
        chart
            .draw_series(DashedLineSeries::new(series(name, |s| s.p99_us), 6, 4, c.stroke_width(1)))
            .map_err(err)?
            .label(format!("{name}, p99"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(1)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font((FONT, 14))
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(file.to_owned())
}

fn human(x: f64) -> String {
    if x >= 1000.0 {
        format!("{:.0}k", x / 1000.0)
    } else {
        format!("{x:.0}")
    }
}

/// Throughput (1 and 4 streams) and connection rate per path: the rows' medians.
fn paths(r: &Report, file: &Path) -> anyhow::Result<PathBuf> {
    let root = SVGBackend::new(file, (W, H)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let panels = root.split_evenly((1, 3));
    for (area, (metric, unit)) in panels.iter().zip([
        ("throughput, 1 stream", "Gbit/s"),
        ("throughput, 4 streams", "Gbit/s"),
        ("new connections/s", "connections/s"),
    ]) {
        let bars: Vec<(String, f64)> = r
            .rows
            .iter()
            .filter(|row| row.metric == metric)
            .map(|row| (row.path.clone(), row.value))
            .collect();
        bar_panel(area, metric, unit, &bars, |v| {
            if unit == "Gbit/s" {
                format!("{v:.1}")
            } else {
                format!("{v:.0}")
            }
        })?;
    }
    root.present().map_err(err)?;
    Ok(file.to_owned())
}

/// One bar per (label, value), coloured by label, the value written above each.
fn bar_panel(
    area: &Area<'_>,
    title: &str,
    y_desc: &str,
    bars: &[(String, f64)],
    fmt: impl Fn(f64) -> String,
) -> anyhow::Result<()> {
    let max = bars.iter().map(|b| b.1).fold(0.0, f64::max).max(1e-9);
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FONT, 18))
        .margin(10)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d((0..bars.len()).into_segmented(), 0f64..max * 1.18)
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .y_desc(y_desc)
        .x_labels(bars.len().max(1))
        .x_label_formatter(&|x| match x {
            SegmentValue::CenterOf(i) => bars.get(*i).map(|b| b.0.clone()).unwrap_or_default(),
            _ => String::new(),
        })
        .label_style((FONT, 12))
        .draw()
        .map_err(err)?;
    chart
        .draw_series(bars.iter().enumerate().map(|(i, (label, v))| {
            let mut bar = Rectangle::new(
                [(SegmentValue::Exact(i), 0.0), (SegmentValue::Exact(i + 1), *v)],
                color(label).filled(),
            );
            bar.set_margin(0, 0, 10, 10);
            bar
        }))
        .map_err(err)?;
    chart
        .draw_series(bars.iter().enumerate().map(|(i, (_, v))| {
            Text::new(fmt(*v), (SegmentValue::CenterOf(i), v + max * 0.03), (FONT, 13))
        }))
        .map_err(err)?;
    Ok(())
}

/// The hooks' kernel time per connect: connect4 and the socket's other programs, direct against
/// viking, at each moment it was measured, with the no-op programs' floor as a line.
fn hooks(r: &Report, file: &Path) -> anyhow::Result<PathBuf> {
    let mut whens: Vec<&str> = Vec::new();
    for h in &r.hooks {
        if !whens.contains(&h.when.as_str()) {
            whens.push(&h.when);
        }
    }
    let root = SVGBackend::new(file, (W, H)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let panels = root.split_evenly((1, whens.len().max(1)));
    let max = r.hooks.iter().map(|h| h.connect4_ns + h.socket_ns).fold(0.0, f64::max);
    for (area, when) in panels.iter().zip(&whens) {
        let hs: Vec<_> = r.hooks.iter().filter(|h| h.when == *when).collect();
        let mut chart = ChartBuilder::on(area)
            .caption(format!("hook time per connect, {when}"), (FONT, 15))
            .margin(10)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d((0..hs.len()).into_segmented(), 0f64..max.max(1.0) * 1.2)
            .map_err(err)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .y_desc("ns of BPF per connect")
            .x_labels(hs.len().max(1))
            .x_label_formatter(&|x| match x {
                SegmentValue::CenterOf(i) => hs.get(*i).map(|h| h.path.clone()).unwrap_or_default(),
                _ => String::new(),
            })
            .label_style((FONT, 12))
            .draw()
            .map_err(err)?;
        for (i, h) in hs.iter().enumerate() {
            let c = color(&h.path);
            let total = h.connect4_ns + h.socket_ns;
            let mut lower = Rectangle::new(
                [(SegmentValue::Exact(i), 0.0), (SegmentValue::Exact(i + 1), h.connect4_ns)],
                c.filled(),
            );
            lower.set_margin(0, 0, 14, 14);
            let mut upper = Rectangle::new(
                [(SegmentValue::Exact(i), h.connect4_ns), (SegmentValue::Exact(i + 1), total)],
                c.mix(0.45).filled(),
            );
            upper.set_margin(0, 0, 14, 14);
            chart.draw_series([lower, upper]).map_err(err)?;
            // The no-op programs' time on the same hooks: what the runs cost before any work.
            if let Some(floor) = h.floor_ns {
                chart
                    .draw_series([PathElement::new(
                        [(SegmentValue::Exact(i), floor), (SegmentValue::Exact(i + 1), floor)],
                        BLACK.stroke_width(2),
                    )])
                    .map_err(err)?;
                chart
                    .draw_series([Text::new(
                        format!("no-op floor {floor:.0}"),
                        (SegmentValue::Exact(i), floor + max * 0.07),
                        (FONT, 10),
                    )])
                    .map_err(err)?;
            }
            chart
                .draw_series([Text::new(
                    format!("{total:.0} ns ({:.0} + {:.0})", h.connect4_ns, h.socket_ns),
                    (SegmentValue::CenterOf(i), total + max * 0.03),
                    (FONT, 11),
                )])
                .map_err(err)?;
        }
    }
    root.present().map_err(err)?;
    Ok(file.to_owned())
}

/// Completed and failed connections per 100 ms while one of three backends dies, with and
/// without ejection: a column per way of dying.
fn failover(r: &Report, file: &Path) -> anyhow::Result<PathBuf> {
    let root = SVGBackend::new(file, (W, 2 * H)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let panels = root.split_evenly((2, 2));
    type Pick = fn(&super::failover::FailoverDetail) -> &Vec<u32>;
    let rows: [(&str, Pick); 2] = [
        ("completed connections per 100 ms", |d| &d.ok_per_100ms),
        ("failed connects per 100 ms", |d| &d.failed_per_100ms),
    ];
    for (row, (y_desc, values)) in rows.iter().enumerate() {
        for (col, death) in [Death::Killed, Death::Unplugged].into_iter().enumerate() {
            let area = &panels[row * 2 + col];
            let cases: Vec<_> = r.failover.iter().filter(|d| d.death == death).collect();
            let len = cases.iter().map(|d| values(d).len()).max().unwrap_or(1).max(1);
            let ymax =
                cases.iter().flat_map(|d| values(d).iter().copied()).max().unwrap_or(1).max(1)
                    as f64;
            let mut chart = ChartBuilder::on(area)
                .caption(death.label(), (FONT, 15))
                .margin(10)
                .x_label_area_size(40)
                .y_label_area_size(60)
                .build_cartesian_2d(0f64..len as f64 / 10.0, 0f64..ymax * 1.3)
                .map_err(err)?;
            chart
                .configure_mesh()
                .x_desc("seconds into the run (backend dies at the grey line)")
                .y_desc(*y_desc)
                .label_style((FONT, 12))
                .draw()
                .map_err(err)?;
            if let Some(d) = cases.first() {
                let x = f64::from(d.kill_after_ms) / 1000.0;
                chart
                    .draw_series(LineSeries::new(
                        [(x, 0.0), (x, ymax * 1.25)],
                        BLACK.mix(0.4).stroke_width(1),
                    ))
                    .map_err(err)?;
            }
            for d in &cases {
                let name = if d.ejection { "viking, ejection" } else { "viking, no ejection" };
                let c = color(name);
                let pts: Vec<(f64, f64)> = values(d)
                    .iter()
                    .enumerate()
                    .map(|(i, n)| (i as f64 / 10.0 + 0.05, f64::from(*n)))
                    .collect();
                chart
                    .draw_series(LineSeries::new(pts, c.stroke_width(2)))
                    .map_err(err)?
                    .label(format!(
                        "{name}: {:.3}% ok, p99 {:.0} µs, {:.0}/s after",
                        100.0 * d.success_rate,
                        d.connect.p99_us,
                        d.ok_per_sec_after
                    ))
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
                    });
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .label_font((FONT, 11))
                .draw()
                .map_err(err)?;
        }
    }
    root.present().map_err(err)?;
    Ok(file.to_owned())
}

/// The discovery benchmark: p50 and p99 from the put to each stage.
pub fn discovery(r: &DiscoveryReport, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let file = dir.join("discovery-latency.svg");
    let root = SVGBackend::new(&file, (W, H)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let panels = root.split_evenly((1, 2));
    let short = |what: &str| {
        what.split(" (")
            .next()
            .unwrap_or(what)
            .replace("etcd ", "")
            .replace("put acknowledged by etcd", "put acked")
    };
    for (area, (title, pick)) in panels.iter().zip([
        (
            "p50 from the put being sent",
            (|s: &super::client::LatencyStats| s.p50_us) as fn(_) -> f64,
        ),
        ("p99 from the put being sent", |s: &super::client::LatencyStats| s.p99_us),
    ]) {
        let bars: Vec<(String, f64)> =
            r.rows.iter().map(|row| (short(&row.what), pick(&row.stats))).collect();
        bar_panel(area, title, "µs", &bars, |v| format!("{v:.0}"))?;
    }
    root.present().map_err(err)?;
    drop(root);
    Ok(vec![dir.join("discovery-latency.svg")])
}

/// The VPC benchmark: throughput, CPU per GB and the SYN burst's CPU, per receiver.
pub fn vpc(r: &VpcReport, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let file = dir.join("vpc.svg");
    let root = SVGBackend::new(&file, (W + 320, H)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let panels = root.split_evenly((1, 4));
    let filters = [("none", &r.none), ("vpc", &r.vpc), ("nftables", &r.nftables)];
    let bars = |pick: fn(&super::vpc::FilterResult) -> f64| -> Vec<(String, f64)> {
        filters.iter().map(|(n, f)| ((*n).to_owned(), pick(f))).collect()
    };
    let syn = |f: &super::vpc::FilterResult| f.syn.as_ref().map_or(0.0, |s| s.cpu_ms_per_million);
    let charts = [
        ("throughput, 1 stream", "Gbit/s", bars(|f| f.throughput_1_stream_gbps)),
        ("throughput, 4 streams", "Gbit/s", bars(|f| f.throughput_4_streams_gbps)),
        ("CPU per GB, 4 streams", "ms per GB", bars(|f| f.cpu_ms_per_gb_4_streams)),
        ("SYN burst (outsider)", "CPU ms per million SYNs", bars(syn)),
    ];
    for (area, (title, unit, bars)) in panels.iter().zip(charts) {
        bar_panel(area, title, unit, &bars, |v| {
            if unit == "Gbit/s" {
                format!("{v:.2}")
            } else {
                format!("{v:.0}")
            }
        })?;
    }
    root.present().map_err(err)?;
    Ok(vec![file.clone()])
}
