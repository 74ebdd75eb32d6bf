//! Plots of a run, in SVG and PNG (plotters): the completion CDF with the bound marked, the
//! bytes received per second stacked by source (origin first), and WAN ingress per site.
//!
//! Text needs a TrueType font: the first of a few common system paths that exists
//! (`DOSIM_FONT` overrides them), e.g. Debian's `fonts-dejavu-core`.

use std::{
    path::{Path, PathBuf},
    sync::OnceLock,
};

use anyhow::{Context, anyhow, bail};
use plotters::{
    coord::{CoordTranslate, Shift},
    prelude::*,
    style::FontStyle,
};

use crate::{Scenario, Summary, sim::Outcome};

const FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];

/// Registers a font once; an error says where one was looked for.
fn font() -> anyhow::Result<()> {
    static FONT: OnceLock<Result<(), String>> = OnceLock::new();
    FONT.get_or_init(|| {
        let env = std::env::var("DOSIM_FONT").ok();
        let candidates: Vec<&str> = env
            .as_deref()
            .into_iter()
            .chain(FONTS.iter().copied())
            .collect();
        let path = candidates
            .iter()
            .find(|p| Path::new(p).exists())
            .ok_or_else(|| {
                format!("no TrueType font found (looked at {candidates:?}; set DOSIM_FONT)")
            })?;
        let bytes = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
        // The font lives as long as the process: plotters keeps a 'static reference.
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
            .map_err(|_| format!("{path}: not a usable font"))
    })
    .clone()
    .map_err(|e| anyhow!(e))
}

/// Writes `cdf`, `egress` and `wan` as `.svg` and `.png` into `dir`; returns the paths.
pub fn write_all(
    dir: &Path,
    sc: &Scenario,
    summary: &Summary,
    outcome: &Outcome,
) -> anyhow::Result<Vec<PathBuf>> {
    font()?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut written = Vec::new();
    let size = (1000, 600);
    for name in ["cdf", "egress", "wan"] {
        let stem = format!("{}-{name}", summary.scenario);
        let svg = dir.join(format!("{stem}.svg"));
        {
            let root = SVGBackend::new(&svg, size).into_drawing_area();
            draw(name, &root, sc, summary, outcome)?;
            root.present().map_err(|e| anyhow!("{e}"))?;
        }
        written.push(svg);
        let png = dir.join(format!("{stem}.png"));
        {
            let root = BitMapBackend::new(&png, size).into_drawing_area();
            draw(name, &root, sc, summary, outcome)?;
            root.present().map_err(|e| anyhow!("{e}"))?;
        }
        written.push(png);
    }
    Ok(written)
}

fn draw<DB: DrawingBackend>(
    name: &str,
    root: &DrawingArea<DB, Shift>,
    sc: &Scenario,
    summary: &Summary,
    outcome: &Outcome,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let result = match name {
        "cdf" => cdf(root, summary, outcome),
        "egress" => egress(root, summary, outcome),
        "wan" => wan(root, sc, summary),
        _ => bail!("unknown plot {name}"),
    };
    result.map_err(|e| anyhow!("{name}: {e}"))
}

type PlotResult<DB> = Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

/// The series' legend, boxed, at `position`.
fn legend<'a, DB: DrawingBackend + 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
    position: SeriesLabelPosition,
) -> PlotResult<DB> {
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(position)
        .draw()
}

fn cdf<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    s: &Summary,
    o: &Outcome,
) -> PlotResult<DB> {
    let mut done: Vec<f64> = o.completions.iter().map(|c| c.3).collect();
    done.sort_by(f64::total_cmp);
    let x_max = (s.makespan_s.max(s.t_min_s) * 1.05).max(1e-3);
    let mut chart = ChartBuilder::on(root)
        .caption(
            format!(
                "{}: completions ({} nodes; bound {:.1} s, efficiency {:.2})",
                s.scenario, s.nodes, s.t_min_s, s.efficiency
            ),
            ("sans-serif", 22),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..x_max, 0.0..1.0)?;
    chart
        .configure_mesh()
        .x_desc("time since the start (s)")
        .y_desc("share of downloads finished")
        .draw()?;
    let n = done.len().max(1) as f64;
    chart
        .draw_series(LineSeries::new(
            std::iter::once((0.0, 0.0)).chain(
                done.iter()
                    .enumerate()
                    .map(|(k, &t)| (t, (k + 1) as f64 / n)),
            ),
            BLUE.stroke_width(2),
        ))?
        .label("simulated")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLUE));
    chart
        .draw_series(LineSeries::new(
            [(s.t_min_s, 0.0), (s.t_min_s, 1.0)],
            RED.stroke_width(2),
        ))?
        .label(format!("T_min ({})", s.t_min_binding))
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], RED));
    legend(&mut chart, SeriesLabelPosition::LowerRight)
}

fn egress<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    s: &Summary,
    o: &Outcome,
) -> PlotResult<DB> {
    // At most 400 bars: seconds grouped into equal bins.
    let secs = o.timeline.len().max(1);
    let per = secs.div_ceil(400);
    let bins: Vec<[f64; 4]> = o
        .timeline
        .chunks(per)
        .map(|c| {
            let mut sum = [0.0; 4];
            for row in c {
                for k in 0..4 {
                    sum[k] += row[k] as f64 / f64::from(1 << 20) / per as f64;
                }
            }
            sum
        })
        .collect();
    let y_max = bins
        .iter()
        .map(|b| b.iter().sum::<f64>())
        .fold(1.0, f64::max)
        * 1.1;
    let x_max = (bins.len() * per).max(1) as f64;
    let mut chart = ChartBuilder::on(root)
        .caption(
            format!(
                "{}: bytes received by source (origin sent {:.2} copies)",
                s.scenario, s.origin_copies
            ),
            ("sans-serif", 22),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)?;
    chart
        .configure_mesh()
        .x_desc("time (s)")
        .y_desc("MiB/s received")
        .draw()?;
    let names = ["origin", "LAN peers", "group peers", "internet peers"];
    let colors = [RED, BLUE, GREEN, MAGENTA];
    // Stacked: draw the cumulative sums from the top layer down.
    for layer in (0..4).rev() {
        if bins.iter().all(|b| b[layer] == 0.0) && layer > 0 {
            continue;
        }
        let color = colors[layer];
        chart
            .draw_series(AreaSeries::new(
                bins.iter()
                    .enumerate()
                    .map(|(k, b)| ((k * per) as f64, b[..=layer].iter().sum::<f64>())),
                0.0,
                color.mix(0.5),
            ))?
            .label(names[layer])
            .legend(move |(x, y)| {
                Rectangle::new([(x, y - 5), (x + 20, y + 5)], color.mix(0.5).filled())
            });
    }
    legend(&mut chart, SeriesLabelPosition::UpperRight)
}

fn wan<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    sc: &Scenario,
    s: &Summary,
) -> PlotResult<DB> {
    let k = s.sites.len();
    let y_max = s
        .sites
        .iter()
        .map(|x| x.wan_ingress_copies)
        .fold(1.0, f64::max)
        * 1.2;
    let mut chart = ChartBuilder::on(root)
        .caption(
            format!("{}: WAN ingress per site, in file copies", s.scenario),
            ("sans-serif", 22),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..k as f64, 0.0..y_max)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(k.min(20))
        .x_label_formatter(&|x| {
            sc.sites
                .get(x.floor() as usize)
                .map(|site| site.name.clone())
                .unwrap_or_default()
        })
        .y_desc("WAN ingress / file size")
        .draw()?;
    chart.draw_series(s.sites.iter().enumerate().map(|(i, site)| {
        Rectangle::new(
            [
                (i as f64 + 0.15, 0.0),
                (i as f64 + 0.85, site.wan_ingress_copies),
            ],
            BLUE.mix(0.6).filled(),
        )
    }))?;
    chart
        .draw_series(LineSeries::new(
            [(0.0, 1.0), (k as f64, 1.0)],
            RED.stroke_width(2),
        ))?
        .label("one copy")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], RED));
    legend(&mut chart, SeriesLabelPosition::UpperRight)
}
