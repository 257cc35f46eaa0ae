//! `subsocket-plot`: turns the JSON lines that `subsocket-bench` appends (one object per run)
//! into PNG charts, one set per scenario:
//!
//! - `latency-cdf-<scenario>.png`: end-to-end latency CDF per server (log-scale latency axis),
//! - `timeline-<scenario>.png`: deliveries/s over the measured period per server,
//! - `compare-<scenario>.png`: server CPU ns per delivery and deliveries/s side by side, when
//!   more than one server ran the scenario.
//!
//! Runs are grouped by `scenario`; when a scenario+server pair appears several times the last
//! line wins. Text is drawn with a system font found through fontconfig (loaded at run time
//! with dlopen) and rasterized by FreeType: `--font FAMILY`, default `sans-serif` (DejaVu Sans
//! on Debian, from `fonts-dejavu-core`).

use clap::Parser;
use plotters::coord::combinators::BindKeyPoints;
use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::error::Error;
use std::path::{Path, PathBuf};

type Res<T> = Result<T, Box<dyn Error>>;

#[derive(Debug, Parser)]
#[command(
    name = "subsocket-plot",
    about = "Plot subsocket-bench JSONL results as PNG charts"
)]
struct Args {
    /// JSONL file(s) written by subsocket-bench (`--json`); later lines override earlier ones.
    #[arg(long, required = true, num_args = 1..)]
    input: Vec<PathBuf>,
    /// Folder for the PNGs (created when missing).
    #[arg(long)]
    out: PathBuf,
    /// Font family for the text, as fontconfig names it (`fc-list : family`).
    #[arg(long, default_value = "sans-serif")]
    font: String,
}

static FONT_FAMILY: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// The font family every text in the charts uses.
fn font() -> &'static str {
    FONT_FAMILY.get().map_or("sans-serif", String::as_str)
}

/// Tableau-10: distinct on white, readable when printed in grey.
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// One run of one server in one scenario.
struct RunResult {
    server: String,
    v: Value,
}

impl RunResult {
    fn f(&self, key: &str) -> Option<f64> {
        self.v.get(key).and_then(Value::as_f64)
    }
    fn latency(&self, key: &str) -> Option<f64> {
        self.v.get("latency_us")?.get(key)?.as_f64()
    }
    /// `[latency µs, quantile]` points; falls back to the few percentiles of `latency_us` for
    /// results written before `latency_cdf_us` existed.
    fn cdf(&self) -> (Vec<(f64, f64)>, bool) {
        let full: Vec<(f64, f64)> = self
            .v
            .get("latency_cdf_us")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|p| Some((p.get(0)?.as_f64()?, p.get(1)?.as_f64()?)))
                    .collect()
            })
            .unwrap_or_default();
        if !full.is_empty() {
            return (full, true);
        }
        if self.latency("count").unwrap_or(0.0) <= 0.0 {
            return (Vec::new(), false);
        }
        let pts = [
            ("p50", 0.5),
            ("p90", 0.9),
            ("p99", 0.99),
            ("p999", 0.999),
            ("max", 1.0),
        ]
        .iter()
        .filter_map(|&(k, q)| Some((self.latency(k)?, q)))
        .collect();
        (pts, false)
    }
    fn timeline(&self) -> Vec<f64> {
        self.v
            .get("deliveries_per_s_timeline")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_f64).collect())
            .unwrap_or_default()
    }
}

fn main() {
    let args = Args::parse();
    if let Err(e) = run(&args) {
        eprintln!("subsocket-plot: {e}");
        std::process::exit(1);
    }
}

fn run(args: &Args) -> Res<()> {
    let scenarios = load(&args.input)?;
    if scenarios.is_empty() {
        return Err(format!("no results in {:?}", args.input).into());
    }
    FONT_FAMILY.get_or_init(|| args.font.clone());
    // font-kit loads fontconfig with dlopen and panics when it is missing: say so plainly first.
    // SAFETY: dlopen gets a NUL-terminated name; the handle is only compared with null (the
    // library stays loaded for font-kit, which opens it again by the same name).
    if unsafe { libc::dlopen(c"libfontconfig.so.1".as_ptr(), libc::RTLD_LAZY) }.is_null() {
        return Err("the fontconfig library (libfontconfig.so.1) is missing: \
                    `apt-get install libfontconfig1 fonts-dejavu-core`"
            .into());
    }
    // Fail early and clearly when no font can be had, not halfway through the first chart.
    FontDesc::from((font(), 12.0)).box_size("Ag").map_err(|e| {
        format!(
            "no font for family {:?} ({e}): install one (e.g. `apt-get install \
                 fonts-dejavu-core`) or pick another with --font (see `fc-list : family`)",
            font()
        )
    })?;
    std::fs::create_dir_all(&args.out).map_err(|e| format!("{}: {e}", args.out.display()))?;

    // One colour per server name across all charts of this invocation.
    let mut servers: Vec<&str> = scenarios
        .values()
        .flat_map(|runs| runs.iter().map(|r| r.server.as_str()))
        .collect();
    servers.sort_unstable();
    servers.dedup();
    let color = |server: &str| {
        let i = servers.iter().position(|s| *s == server).unwrap_or(0);
        PALETTE[i % PALETTE.len()]
    };

    let mut written = Vec::new();
    for (scenario, runs) in &scenarios {
        let name = file_safe(scenario);
        let subtitle = describe(&runs[0]);
        let path = args.out.join(format!("latency-cdf-{name}.png"));
        if plot_cdf(&path, scenario, &subtitle, runs, &color)? {
            written.push(path);
        }
        let path = args.out.join(format!("timeline-{name}.png"));
        if plot_timeline(&path, scenario, &subtitle, runs, &color)? {
            written.push(path);
        }
        if runs.len() > 1 {
            let path = args.out.join(format!("compare-{name}.png"));
            plot_compare(&path, scenario, &subtitle, runs, &color)?;
            written.push(path);
        }
    }
    for p in &written {
        println!("{}", p.display());
    }
    Ok(())
}

/// scenario -> runs, one per server (the last line for that server), in order of first appearance.
fn load(inputs: &[PathBuf]) -> Res<BTreeMap<String, Vec<RunResult>>> {
    let mut out: BTreeMap<String, Vec<RunResult>> = BTreeMap::new();
    for input in inputs {
        let text =
            std::fs::read_to_string(input).map_err(|e| format!("{}: {e}", input.display()))?;
        for (n, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let v: Value = match serde_json::from_str(line) {
                Ok(v) => v,
                Err(e) => {
                    eprintln!(
                        "subsocket-plot: {}:{}: skipped ({e})",
                        input.display(),
                        n + 1
                    );
                    continue;
                }
            };
            let field = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
            let (Some(scenario), Some(server)) = (field("scenario"), field("server")) else {
                eprintln!(
                    "subsocket-plot: {}:{}: skipped (no scenario/server)",
                    input.display(),
                    n + 1
                );
                continue;
            };
            let runs = out.entry(scenario).or_default();
            match runs.iter_mut().find(|r| r.server == server) {
                Some(r) => r.v = v,
                None => runs.push(RunResult { server, v }),
            }
        }
    }
    Ok(out)
}

fn file_safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// One line about the load: connections, topics, payload, loop kind, duration.
fn describe(r: &RunResult) -> String {
    let num = |k: &str| r.f(k).unwrap_or(0.0);
    let mut parts = vec![format!("{} subscribers", num("conns"))];
    let topics = num("topics");
    let per = num("topics_per_conn");
    parts.push(if per > 1.0 {
        format!("{topics} topics, {per} per subscriber")
    } else {
        format!("{topics} topic{}", if topics == 1.0 { "" } else { "s" })
    });
    parts.push(format!("{} B payload", num("payload_bytes")));
    let rate = num("rate");
    parts.push(if rate > 0.0 {
        format!("open loop {rate} publishes/s")
    } else {
        format!("closed loop, window {}", num("window"))
    });
    if let Some(s) = r.f("measured_s") {
        parts.push(format!("{s:.0} s measured"));
    }
    parts.join(" · ")
}

/// Compact number: 1234567 -> "1.23M", 45300 -> "45.3k", 12.5 -> "12.5".
fn si(v: f64) -> String {
    let a = v.abs();
    let (x, suffix) = if a >= 1e9 {
        (v / 1e9, "G")
    } else if a >= 1e6 {
        (v / 1e6, "M")
    } else if a >= 1e3 {
        (v / 1e3, "k")
    } else {
        (v, "")
    };
    let s = if x.abs() >= 100.0 || x.fract() == 0.0 {
        format!("{x:.0}")
    } else if x.abs() >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    };
    let s = if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    };
    format!("{s}{suffix}")
}

/// The nearest value of the 1-2-5 series (…, 0.5, 1, 2, 5, 10, 20, …) at or below `v` (or at
/// or above it when `up`).
fn nice_125(v: f64, up: bool) -> f64 {
    let decade = 10f64.powf(v.log10().floor());
    let steps = [1.0, 2.0, 5.0, 10.0];
    if up {
        steps
            .iter()
            .map(|s| s * decade)
            .find(|&x| x >= v * 0.999_999)
            .unwrap_or(10.0 * decade)
    } else {
        steps
            .iter()
            .rev()
            .map(|s| s * decade)
            .find(|&x| x <= v * 1.000_001)
            .unwrap_or(decade)
    }
}

/// `steps` × 10^k for every decade k, within `lo..=hi`.
fn log_ticks(lo: f64, hi: f64, steps: &[f64]) -> Vec<f64> {
    let mut out = Vec::new();
    let mut decade = 10f64.powf(lo.log10().floor());
    while decade <= hi {
        out.extend(
            steps
                .iter()
                .map(|s| s * decade)
                .filter(|&x| x >= lo * 0.999_999 && x <= hi * 1.000_001),
        );
        decade *= 10.0;
    }
    out
}

/// Latency for labels: "850 µs", "12.3 ms".
fn us(v: f64) -> String {
    if v >= 1000.0 {
        format!("{} ms", si(v / 1000.0))
    } else {
        format!("{} µs", si(v))
    }
}

/// Stroke width of the `i`th line of a chart: 5, 4, 3, then 2 px.
fn line_width(i: usize) -> u32 {
    5u32.saturating_sub(i as u32).max(2)
}

/// White canvas with a title and a subtitle; returns the area below them.
fn titled<'a>(
    root: &DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>,
    title: &str,
    subtitle: &str,
) -> Res<DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>> {
    root.fill(&WHITE)?;
    let area = root.margin(8, 0, 0, 0);
    let area = area.titled(title, (font(), 30).into_font().color(&BLACK))?;
    let area = area.titled(
        subtitle,
        (font(), 18).into_font().color(&RGBColor(90, 90, 90)),
    )?;
    Ok(area.margin(5, 10, 10, 25))
}

fn plot_cdf(
    path: &Path,
    scenario: &str,
    subtitle: &str,
    runs: &[RunResult],
    color: &dyn Fn(&str) -> RGBColor,
) -> Res<bool> {
    // (run, [latency µs, quantile] points, whether they are the full CDF)
    type Curve<'r> = (&'r RunResult, Vec<(f64, f64)>, bool);
    let curves: Vec<Curve> = runs
        .iter()
        .map(|r| {
            let (pts, full) = r.cdf();
            let pts: Vec<_> = pts.into_iter().map(|(x, q)| (x.max(0.001), q)).collect();
            (r, pts, full)
        })
        .filter(|c| !c.1.is_empty())
        .collect();
    if curves.is_empty() {
        eprintln!("subsocket-plot: {scenario}: no latency samples, no CDF");
        return Ok(false);
    }
    let (mut lo, mut hi) = (f64::MAX, f64::MIN);
    for (x, _) in curves.iter().flat_map(|c| c.1.iter()) {
        lo = lo.min(*x);
        hi = hi.max(*x);
    }
    // Round 1-2-5 bounds around the data, so the log axis ends on readable values.
    let lo = nice_125(lo, false);
    let hi = nice_125(hi, true).max(lo * 10.0);

    let root = BitMapBackend::new(path, (1280, 800)).into_drawing_area();
    let area = titled(
        &root,
        &format!("End-to-end latency CDF — {scenario}"),
        subtitle,
    )?;
    let mut chart = ChartBuilder::on(&area)
        .x_label_area_size(55)
        .y_label_area_size(75)
        .build_cartesian_2d(
            (lo..hi)
                .log_scale()
                .with_key_points(log_ticks(lo, hi, &[1.0, 2.0, 5.0]))
                .with_light_points(log_ticks(
                    lo,
                    hi,
                    &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0],
                )),
            0f64..1.0,
        )?;
    chart
        .configure_mesh()
        .x_desc("latency from publish to delivery (log scale)")
        .y_desc("quantile (fraction of deliveries ≤ latency)")
        .x_label_formatter(&|v| us(*v))
        .y_label_formatter(&|v| format!("{v:.1}"))
        .y_labels(11)
        .label_style((font(), 17))
        .axis_desc_style((font(), 19))
        .light_line_style(RGBColor(235, 235, 235))
        .bold_line_style(RGBColor(200, 200, 200))
        .draw()?;
    for (i, (r, pts, full)) in curves.iter().enumerate() {
        // Later lines are thinner, so one drawn over an equal earlier one leaves it visible.
        let w = line_width(i);
        let c = color(&r.server);
        let label = format!(
            "{}   p50 {}, p99 {}, p99.9 {}, max {}{}",
            r.server,
            r.latency("p50").map_or("-".into(), us),
            r.latency("p99").map_or("-".into(), us),
            r.latency("p999").map_or("-".into(), us),
            r.latency("max").map_or("-".into(), us),
            if *full { "" } else { " (percentiles only)" }
        );
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(w)))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 25, y)], c.stroke_width(w)));
        chart.draw_series(pts.iter().map(|&p| Circle::new(p, w, c.filled())))?;
    }
    // The legend goes in whichever of the two empty-looking corners has fewer points under it.
    let (l_lo, l_span) = (lo.ln(), (hi / lo).ln());
    let crowd = |upper_left: bool| {
        curves
            .iter()
            .flat_map(|c| c.1.iter())
            .filter(|&&(x, q)| {
                let fx = (x.ln() - l_lo) / l_span;
                if upper_left {
                    fx < 0.6 && q > 0.75
                } else {
                    fx > 0.4 && q < 0.25
                }
            })
            .count()
    };
    let pos = if crowd(true) <= crowd(false) {
        SeriesLabelPosition::UpperLeft
    } else {
        SeriesLabelPosition::LowerRight
    };
    legend(&mut chart, pos)?;
    root.present()?;
    Ok(true)
}

fn plot_timeline(
    path: &Path,
    scenario: &str,
    subtitle: &str,
    runs: &[RunResult],
    color: &dyn Fn(&str) -> RGBColor,
) -> Res<bool> {
    // Bucket i counts deliveries in second [i, i+1) of the measured period; the last bucket may
    // cover only part of a second (or a sliver after the end), so it is scaled to a rate, and
    // dropped when under a fifth of a second.
    let lines: Vec<(&RunResult, Vec<(f64, f64)>)> = runs
        .iter()
        .map(|r| {
            let t = r.timeline();
            let end = r.f("measured_s").unwrap_or(t.len() as f64);
            let pts = t
                .iter()
                .enumerate()
                .filter_map(|(i, &n)| {
                    let start = i as f64;
                    let width = (start + 1.0).min(end) - start;
                    (width >= 0.2).then(|| (start + width, n / width))
                })
                .collect();
            (r, pts)
        })
        .filter(|(_, pts): &(_, Vec<_>)| !pts.is_empty())
        .collect();
    if lines.is_empty() {
        eprintln!("subsocket-plot: {scenario}: no timeline");
        return Ok(false);
    }
    let x_max = lines
        .iter()
        .flat_map(|l| l.1.iter().map(|p| p.0))
        .fold(1.0, f64::max)
        .ceil();
    let y_max = lines
        .iter()
        .flat_map(|l| l.1.iter().map(|p| p.1))
        .fold(1.0, f64::max)
        * 1.12;

    let root = BitMapBackend::new(path, (1280, 800)).into_drawing_area();
    let area = titled(
        &root,
        &format!("Deliveries per second over time — {scenario}"),
        subtitle,
    )?;
    let mut chart = ChartBuilder::on(&area)
        .x_label_area_size(55)
        .y_label_area_size(85)
        .build_cartesian_2d(0f64..x_max, 0f64..y_max)?;
    chart
        .configure_mesh()
        .x_desc("time since the measured period started (s); each point is the second ending there")
        .x_labels((x_max as usize + 1).clamp(2, 13))
        .y_desc("deliveries per second (all subscribers)")
        .x_label_formatter(&|v| si(*v))
        .y_label_formatter(&|v| si(*v))
        .label_style((font(), 17))
        .axis_desc_style((font(), 19))
        .light_line_style(RGBColor(235, 235, 235))
        .bold_line_style(RGBColor(200, 200, 200))
        .draw()?;
    for (i, (r, pts)) in lines.iter().enumerate() {
        let w = line_width(i);
        let c = color(&r.server);
        let label = format!(
            "{}   mean {}/s",
            r.server,
            r.f("deliveries_per_s").map_or("-".into(), si)
        );
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(w)))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 25, y)], c.stroke_width(w)));
        chart.draw_series(pts.iter().map(|&p| Circle::new(p, w + 1, c.filled())))?;
    }
    legend(&mut chart, SeriesLabelPosition::LowerRight)?;
    root.present()?;
    Ok(true)
}

fn plot_compare(
    path: &Path,
    scenario: &str,
    subtitle: &str,
    runs: &[RunResult],
    color: &dyn Fn(&str) -> RGBColor,
) -> Res<()> {
    let root = BitMapBackend::new(path, (1400, 720)).into_drawing_area();
    let area = titled(&root, &format!("Server comparison — {scenario}"), subtitle)?;
    let panels = area.split_evenly((1, 2));
    bars(
        &panels[0],
        "Server CPU per delivery (lower is better)",
        "server CPU time per delivery (ns)",
        runs,
        |r| r.f("server_cpu_ns_per_delivery"),
        color,
    )?;
    bars(
        &panels[1],
        "Throughput (higher is better)",
        "deliveries per second",
        runs,
        |r| r.f("deliveries_per_s"),
        color,
    )?;
    root.present()?;
    Ok(())
}

fn bars(
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    caption: &str,
    y_desc: &str,
    runs: &[RunResult],
    value: impl Fn(&RunResult) -> Option<f64>,
    color: &dyn Fn(&str) -> RGBColor,
) -> Res<()> {
    let vals: Vec<Option<f64>> = runs.iter().map(&value).collect();
    let y_max = vals
        .iter()
        .flatten()
        .fold(0.0, |a: f64, &b| a.max(b))
        .max(1e-9)
        * 1.15;
    let n = runs.len();
    let mut chart = ChartBuilder::on(area)
        .caption(caption, (font(), 21))
        .margin(10)
        .x_label_area_size(45)
        .y_label_area_size(80)
        .build_cartesian_2d((0..n - 1).into_segmented(), 0f64..y_max)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n)
        .x_label_formatter(&|x| match x {
            SegmentValue::CenterOf(i) => runs.get(*i).map_or(String::new(), |r| r.server.clone()),
            _ => String::new(),
        })
        .x_desc("server")
        .y_desc(y_desc)
        .y_label_formatter(&|v| si(*v))
        .label_style((font(), 17))
        .axis_desc_style((font(), 19))
        .light_line_style(RGBColor(235, 235, 235))
        .bold_line_style(RGBColor(200, 200, 200))
        .draw()?;
    let bar_margin = (area.dim_in_pixel().0 / (n as u32 * 8)).max(4);
    for (i, (r, v)) in runs.iter().zip(&vals).enumerate() {
        let c = color(&r.server);
        let label_style =
            (font(), 18)
                .into_font()
                .color(&BLACK)
                .pos(plotters::style::text_anchor::Pos::new(
                    plotters::style::text_anchor::HPos::Center,
                    plotters::style::text_anchor::VPos::Bottom,
                ));
        match v {
            Some(v) => {
                let mut rect = Rectangle::new(
                    [
                        (SegmentValue::Exact(i), 0.0),
                        (SegmentValue::Exact(i + 1), *v),
                    ],
                    c.filled(),
                );
                rect.set_margin(0, 0, bar_margin, bar_margin);
                chart.draw_series(std::iter::once(rect))?;
                chart.draw_series(std::iter::once(Text::new(
                    si(*v),
                    (SegmentValue::CenterOf(i), *v + y_max * 0.01),
                    label_style,
                )))?;
            }
            None => {
                chart.draw_series(std::iter::once(Text::new(
                    "n/a".to_string(),
                    (SegmentValue::CenterOf(i), y_max * 0.01),
                    label_style,
                )))?;
            }
        }
    }
    Ok(())
}

fn legend<'a, X, Y>(
    chart: &mut ChartContext<'a, BitMapBackend<'a>, Cartesian2d<X, Y>>,
    pos: SeriesLabelPosition,
) -> Res<()>
where
    X: plotters::coord::ranged1d::Ranged,
    Y: plotters::coord::ranged1d::Ranged,
{
    chart
        .configure_series_labels()
        .position(pos)
        .margin(15)
        .label_font((font(), 18))
        .background_style(WHITE.mix(0.9))
        .border_style(RGBColor(150, 150, 150))
        .draw()?;
    Ok(())
}
