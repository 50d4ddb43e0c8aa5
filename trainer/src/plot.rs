//! PNG plots (plotters): the LR range test, and validation accuracy against iteration with the LR
//! on a second axis for the experiment reports. plotters draws into an RGB buffer; `image` encodes
//! it and the file is written atomically (plotters' own encoder would pull in a second,
//! older `image`).

use std::path::Path;

use anyhow::anyhow;
use plotters::prelude::*;

use crate::lrfind::LrFindReport;

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("plotting failed: {e:?}")
}

/// The plots' one font, compiled in (a 20 KB cut of DejaVu Sans; `assets/LICENSE-DejaVu.txt`):
/// plots look the same on every machine, need no system fonts, and the build needs no
/// FreeType or fontconfig.
static FONT: &[u8] = include_bytes!("../assets/DejaVuSans-subset.ttf");

/// Registers [`FONT`] as plotters' "sans-serif", once per process.
fn register_font() -> anyhow::Result<()> {
    static REGISTERED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        plotters::style::register_font("sans-serif", FontStyle::Normal, FONT).is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(anyhow!(
            "plotting failed: the compiled-in font did not load"
        ))
    }
}

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(23, 190, 207),
];

/// Plot size in pixels.
const SIZE: (u32, u32) = (1000, 560);

/// A white RGB canvas of [`SIZE`].
fn canvas() -> Vec<u8> {
    vec![255; SIZE.0 as usize * SIZE.1 as usize * 3]
}

/// Encodes the canvas as PNG and writes it to `path` atomically.
fn save_png(path: &Path, rgb: Vec<u8>) -> anyhow::Result<()> {
    let mut png = Vec::new();
    image::RgbImage::from_raw(SIZE.0, SIZE.1, rgb)
        .ok_or_else(|| anyhow!("plotting failed: canvas of the wrong size"))?
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(|e| anyhow!("plotting failed: PNG encoding: {e}"))?;
    crate::io::write_atomic(path, &png)
}

fn span(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
    if !lo.is_finite() {
        (0.0, 1.0)
    } else if hi - lo < 1e-12 {
        (lo - 0.5, hi + 0.5)
    } else {
        (lo, hi)
    }
}

/// Loss (smoothed and raw) and validation accuracy against the LR, with the suggestions marked.
pub fn lr_find_plot(path: &Path, r: &LrFindReport, log_x: bool) -> anyhow::Result<()> {
    let x = |lr: f64| if log_x { lr.max(1e-12).log10() } else { lr };
    let (x0, x1) = span(
        r.curve
            .iter()
            .map(|p| x(p.lr))
            .chain(r.accuracy.iter().map(|a| x(a.lr))),
    );
    // Clip the loss axis so that the divergence spike does not flatten the interesting part.
    let first = r.curve.first().map(|p| p.smoothed_loss).unwrap_or(1.0);
    let (l0, l1) = span(r.curve.iter().map(|p| p.smoothed_loss));
    let l1 = l1.min(first * 1.5).max(l0 + 1e-3);
    register_font()?;
    let mut rgb = canvas();
    let root = BitMapBackend::with_buffer(&mut rgb, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("LR range test", ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .right_y_label_area_size(60)
        .build_cartesian_2d(x0..x1, l0..l1)
        .map_err(err)?
        .set_secondary_coord(x0..x1, 0.0..1.0);
    chart
        .configure_mesh()
        .x_desc(if log_x {
            "log10(learning rate)"
        } else {
            "learning rate"
        })
        .y_desc("training loss (smoothed)")
        .draw()
        .map_err(err)?;
    chart
        .configure_secondary_axes()
        .y_desc("validation accuracy")
        .draw()
        .map_err(err)?;
    let clip = |v: f64| v.clamp(l0, l1);
    chart
        .draw_series(LineSeries::new(
            r.curve.iter().map(|p| (x(p.lr), clip(p.loss))),
            COLORS[0].mix(0.25),
        ))
        .map_err(err)?;
    chart
        .draw_series(LineSeries::new(
            r.curve.iter().map(|p| (x(p.lr), clip(p.smoothed_loss))),
            COLORS[0].stroke_width(2),
        ))
        .map_err(err)?
        .label("smoothed loss")
        .legend(|(a, b)| PathElement::new(vec![(a, b), (a + 20, b)], COLORS[0]));
    chart
        .draw_secondary_series(LineSeries::new(
            r.accuracy.iter().map(|a| (x(a.lr), a.val_acc)),
            COLORS[1].stroke_width(2),
        ))
        .map_err(err)?
        .label("validation accuracy")
        .legend(|(a, b)| PathElement::new(vec![(a, b), (a + 20, b)], COLORS[1]));
    let marks = [
        (&r.paper_max_lr, "paper max", COLORS[2]),
        (&r.paper_min_lr, "paper min", COLORS[3]),
        (&r.steepest, "steepest", COLORS[4]),
        (&r.valley, "valley", COLORS[5]),
    ];
    for (s, name, color) in marks {
        if let Some(s) = s {
            let xv = x(s.lr);
            chart
                .draw_series(LineSeries::new(
                    vec![(xv, l0), (xv, l1)],
                    color.stroke_width(1),
                ))
                .map_err(err)?
                .label(format!("{name}: {:.4}", s.lr))
                .legend(move |(a, b)| PathElement::new(vec![(a, b), (a + 20, b)], color));
        }
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    drop(chart);
    drop(root);
    save_png(path, rgb)?;
    Ok(())
}

/// The series' legend in the lower right corner, on a translucent white box.
fn legend_lower_right<'a, DB: DrawingBackend + 'a, CT: plotters::coord::CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(err)
}

/// One curve of a comparison: validation accuracy and LR against iteration.
pub struct Series {
    pub label: String,
    pub acc: Vec<(f64, f64)>,
    pub lr: Vec<(f64, f64)>,
}

/// Validation accuracy against iteration for several runs, LR on the right axis.
pub fn accuracy_plot(path: &Path, title: &str, series: &[Series]) -> anyhow::Result<()> {
    let (x0, x1) = span(
        series
            .iter()
            .flat_map(|s| s.acc.iter().chain(&s.lr).map(|p| p.0)),
    );
    let (_, lr_max) = span(series.iter().flat_map(|s| s.lr.iter().map(|p| p.1)));
    register_font()?;
    let mut rgb = canvas();
    let root = BitMapBackend::with_buffer(&mut rgb, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .right_y_label_area_size(60)
        .build_cartesian_2d(0.0..x1.max(x0 + 1.0), 0.0..1.0)
        .map_err(err)?
        .set_secondary_coord(0.0..x1.max(x0 + 1.0), 0.0..lr_max * 1.05);
    chart
        .configure_mesh()
        .x_desc("iteration")
        .y_desc("validation accuracy")
        .draw()
        .map_err(err)?;
    chart
        .configure_secondary_axes()
        .y_desc("learning rate (dashed)")
        .draw()
        .map_err(err)?;
    for (i, s) in series.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(s.acc.iter().copied(), c.stroke_width(2)))
            .map_err(err)?
            .label(s.label.clone())
            .legend(move |(a, b)| PathElement::new(vec![(a, b), (a + 20, b)], c));
        chart
            .draw_secondary_series(DashedLineSeries::new(
                s.lr.iter().copied(),
                6,
                4,
                c.mix(0.6).stroke_width(1),
            ))
            .map_err(err)?;
    }
    legend_lower_right(&mut chart)?;
    root.present().map_err(err)?;
    drop(chart);
    drop(root);
    save_png(path, rgb)?;
    Ok(())
}

/// One point of a [`means_plot`] line (a schedule at one budget, an arm at one training-set
/// size): accuracies are fractions.
#[derive(Debug, Clone)]
pub struct MeanPoint {
    /// Where it sits on the (log) x axis: epochs, training images.
    pub x: f64,
    /// Over the finished seeds.
    pub mean: f64,
    pub std: f64,
    /// Each finished seed's accuracy (drawn as its own small mark when there are several).
    pub seeds: Vec<f64>,
}

/// One line of a [`means_plot`]: its label and its points.
pub type MeanSeries = (String, Vec<MeanPoint>);

/// Every x of the series, once, in order: the x axis labels them.
fn key_points(series: &[MeanSeries]) -> Vec<f64> {
    let mut e: Vec<f64> = series
        .iter()
        .flat_map(|s| s.1.iter().map(|p| p.x))
        .collect();
    e.sort_by(f64::total_cmp);
    e.dedup();
    e
}

/// Final validation accuracy against `x_desc` (training epochs, training images: a log axis
/// labelled at every point's x), one line per series through the mean of each point (a filled
/// point, and a ± std bar when seeds differ), every seed's own result as a small open mark where
/// a point has several, and the target as a horizontal line.
pub fn means_plot(
    path: &Path,
    title: &str,
    x_desc: &str,
    series: &[MeanSeries],
    target: Option<(f64, &str)>,
) -> anyhow::Result<()> {
    let pts = || series.iter().flat_map(|s| s.1.iter());
    let (e0, e1) = span(pts().map(|p| p.x));
    let (a0, a1) = span(
        pts()
            .flat_map(|p| [p.mean - p.std, p.mean + p.std])
            .chain(pts().flat_map(|p| p.seeds.iter().copied()))
            .chain(target.map(|t| t.0)),
    );
    let (x0, x1) = (e0 / 1.25, e1 * 1.25);
    let pad = ((a1 - a0) * 0.1).max(0.005);
    let (y0, y1) = ((a0 - pad).max(0.0), (a1 + pad).min(1.0));
    register_font()?;
    let mut rgb = canvas();
    let root = BitMapBackend::with_buffer(&mut rgb, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(
            (x0..x1).log_scale().with_key_points(key_points(series)),
            y0..y1,
        )
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(format!("{x_desc} (log scale)"))
        .y_desc("final validation accuracy")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{:.0}%", y * 100.0))
        .draw()
        .map_err(err)?;
    if let Some((t, what)) = target {
        chart
            .draw_series(DashedLineSeries::new(
                vec![(x0, t), (x1, t)],
                6,
                4,
                BLACK.mix(0.6).stroke_width(1),
            ))
            .map_err(err)?
            .label(format!("{:.2}%: {what}", t * 100.0))
            .legend(|(a, b)| PathElement::new(vec![(a, b), (a + 20, b)], BLACK.mix(0.6)));
    }
    for (i, (label, p)) in series.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(
                p.iter().map(|q| (q.x, q.mean)),
                c.stroke_width(2),
            ))
            .map_err(err)?
            .label(label.clone())
            .legend(move |(a, b)| PathElement::new(vec![(a, b), (a + 20, b)], c));
        chart
            .draw_series(p.iter().map(|q| Circle::new((q.x, q.mean), 4, c.filled())))
            .map_err(err)?;
        chart
            .draw_series(
                p.iter().filter(|q| q.std > 0.0).map(|q| {
                    PathElement::new(vec![(q.x, q.mean - q.std), (q.x, q.mean + q.std)], c)
                }),
            )
            .map_err(err)?;
        chart
            .draw_series(
                p.iter()
                    .filter(|q| q.seeds.len() > 1)
                    .flat_map(|q| q.seeds.iter().map(move |&a| (q.x, a)))
                    .map(|(e, a)| Circle::new((e, a), 4, c.stroke_width(2))),
            )
            .map_err(err)?;
    }
    legend_lower_right(&mut chart)?;
    root.present().map_err(err)?;
    drop(chart);
    drop(root);
    save_png(path, rgb)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_means_plot_marks_every_seed_beside_the_mean() {
        let dir = tempfile::tempdir().unwrap();
        let point = |x: f64, mean: f64, seeds: Vec<f64>| MeanPoint {
            x,
            mean,
            std: 0.002,
            seeds,
        };
        // The same axes both times: the other line spans more than the seeds do.
        let draw = |name: &str, seeds: Vec<f64>| {
            let series = vec![
                (
                    "one".to_string(),
                    vec![point(10.0, 0.86, vec![]), point(30.0, 0.90, seeds)],
                ),
                (
                    "two".to_string(),
                    vec![point(10.0, 0.80, vec![]), point(60.0, 0.92, vec![])],
                ),
            ];
            let path = dir.path().join(name);
            means_plot(
                &path,
                "t",
                "training epochs",
                &series,
                Some((0.85, "target")),
            )
            .unwrap();
            let img = image::open(&path).unwrap().to_rgb8();
            assert_eq!(img.dimensions(), SIZE);
            img
        };
        let mean_only = draw("mean.png", vec![]);
        let with_seeds = draw("seeds.png", vec![0.906, 0.897, 0.86]);
        let changed = mean_only
            .pixels()
            .zip(with_seeds.pixels())
            .filter(|(a, b)| a != b)
            .count();
        // Three rings of radius 4 (one far from the line); a ring is ~25 pixels.
        assert!(
            changed > 50,
            "each seed gets its own mark: {changed} pixels differ"
        );
    }
}
