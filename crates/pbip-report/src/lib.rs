//! Stage 4 evaluation report: one self-contained HTML page (`report.html`).
//!
//! The page has a title and run info (key/value list: config summary, checkpoint, date ...),
//! one metrics table per named section (a [`pbip_metrics::MetricsReport`]: per-class and
//! macro/weighted IoU, Dice, precision, recall, F1; or any [`SimpleTable`]), the confusion
//! matrix as a heat map (cells coloured by the row-normalised value, showing count and row
//! percentage), a class colour legend, and sample triplets (input, GT, prediction) embedded as
//! base64 PNG data URIs with captions. No external CSS, JS or fonts; all text is HTML-escaped;
//! print styles keep colours and avoid splitting figures.
//!
//! ```no_run
//! use pbip_report::{Report, MetricsSection, SectionBody, PngImage, SampleTriplet};
//! let mut r = Report::new("PBIP evaluation");
//! r.info.push(("checkpoint".into(), "best.safetensors".into()));
//! r.info.push(("date".into(), pbip_report::utc_timestamp(1_700_000_000)));
//! r.write(std::path::Path::new("results/report.html")).unwrap();
//! ```

mod image;

pub use image::{
    PngImage, base64_encode, default_class_colors, encode_png_gray8, encode_png_labels,
    encode_png_rgb8, png_data_uri,
};

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use pbip_metrics::{Averages, ConfusionMatrix, MetricsReport};

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// Pixel buffer does not match the given size.
    #[error("{what}: {width}x{height} needs {expected} bytes, got {got}")]
    ImageSize {
        /// Which kind of image.
        what: &'static str,
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
        /// Expected byte count (0 when the size itself is invalid).
        expected: usize,
        /// Given byte count.
        got: usize,
    },
    /// PNG encoding failed.
    #[error("PNG encoding: {0}")]
    Png(String),
    /// Confusion matrix and class names disagree.
    #[error("confusion matrix has {classes} classes but {names} class names were given")]
    ClassNames {
        /// Classes in the matrix.
        classes: usize,
        /// Names given.
        names: usize,
    },
    /// Writing the report failed.
    #[error("{path}: {what}: {source}")]
    Io {
        /// File concerned.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// A plain table: header cells and rows of text cells (all escaped when rendered).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SimpleTable {
    /// Header cells.
    pub headers: Vec<String>,
    /// Rows; rows may be shorter or longer than the header.
    pub rows: Vec<Vec<String>>,
}

/// Content of a metrics section.
#[derive(Debug, Clone, PartialEq)]
pub enum SectionBody {
    /// A `metrics.json` report: per-class rows, macro and weighted rows, summary figures.
    Metrics(Box<MetricsReport>),
    /// Any table.
    Table(SimpleTable),
}

/// One named section (e.g. one evaluation protocol: "global pixels", "mean over patches").
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsSection {
    /// Section heading.
    pub name: String,
    /// Optional explanatory paragraph under the heading.
    pub note: Option<String>,
    /// The table.
    pub body: SectionBody,
}

/// One sample: input patch, GT and prediction images with a caption.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleTriplet {
    /// Caption title (e.g. slide name and coordinates).
    pub title: String,
    /// Per-patch IoU (shown in the caption when present; e.g. the patch's mIoU).
    pub iou: Option<f64>,
    /// Extra caption key/values (e.g. `("x, y (lv0)", "1024, 2048")`).
    pub details: Vec<(String, String)>,
    /// Input RGB patch.
    pub input: PngImage,
    /// Ground-truth label image.
    pub gt: PngImage,
    /// Predicted label image.
    pub pred: PngImage,
}

/// The evaluation report.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Report {
    /// Page title and main heading.
    pub title: String,
    /// Run information, shown as a key/value table in order.
    pub info: Vec<(String, String)>,
    /// Metrics sections, in order.
    pub sections: Vec<MetricsSection>,
    /// Confusion matrix (rows GT, columns prediction) and its class names.
    pub confusion: Option<(ConfusionMatrix, Vec<String>)>,
    /// Class colour legend for the label images: `(class name, RGB)`.
    pub legend: Vec<(String, [u8; 3])>,
    /// Sample triplets.
    pub samples: Vec<SampleTriplet>,
}

/// Escapes `&`, `<`, `>`, `"` and `'` for HTML text and attribute values.
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// (year, month, day, hour, minute, second) in UTC for seconds since the Unix epoch.
fn utc_civil(unix_secs: u64) -> (i64, i64, i64, u64, u64, u64) {
    let days = (unix_secs / 86_400) as i64;
    let rem = unix_secs % 86_400;
    // civil-from-days (H. Hinnant)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d, rem / 3600, rem % 3600 / 60, rem % 60)
}

/// `YYYY-MM-DD HH:MM:SS UTC` for seconds since the Unix epoch.
pub fn utc_timestamp(unix_secs: u64) -> String {
    let (y, m, d, h, mi, s) = utc_civil(unix_secs);
    format!("{y:04}-{m:02}-{d:02} {h:02}:{mi:02}:{s:02} UTC")
}

/// ISO 8601 `YYYY-MM-DDTHH:MM:SSZ` for seconds since the Unix epoch.
pub fn utc_iso8601(unix_secs: u64) -> String {
    let (y, m, d, h, mi, s) = utc_civil(unix_secs);
    format!("{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

/// Current time as [`utc_timestamp`].
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    utc_timestamp(secs)
}

fn fmt_score(v: Option<f64>) -> String {
    match v {
        Some(x) if x.is_finite() => format!("{x:.4}"),
        Some(x) => format!("{x}"),
        None => "n/a".to_string(),
    }
}

fn fmt_pct(v: f64) -> String {
    format!("{:.1}%", v * 100.0)
}

/// Heat-map colour for a fraction in [0, 1]: white to dark blue.
fn heat_color(f: f64) -> (String, &'static str) {
    let f = if f.is_finite() {
        f.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let lo = [247.0, 251.0, 255.0];
    let hi = [8.0, 48.0, 107.0];
    let c: Vec<u8> = (0..3)
        .map(|i| (lo[i] + (hi[i] - lo[i]) * f).round() as u8)
        .collect();
    let fg = if f > 0.5 { "#fff" } else { "#111" };
    (format!("#{:02x}{:02x}{:02x}", c[0], c[1], c[2]), fg)
}

const CSS: &str = r#"
*{box-sizing:border-box}
body{font-family:-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;color:#1b1f23;margin:24px auto;max-width:1120px;padding:0 16px;line-height:1.4;-webkit-print-color-adjust:exact;print-color-adjust:exact}
h1{font-size:1.7em;border-bottom:3px solid #08306b;padding-bottom:6px}
h2{font-size:1.3em;margin-top:1.6em;color:#08306b}
table{border-collapse:collapse;margin:8px 0 16px 0;font-size:0.92em}
th,td{border:1px solid #c8ced6;padding:4px 9px}
th{background:#eef2f7;text-align:left}
td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.avg td{font-weight:600;background:#f6f8fa}
table.info th{width:14em}
p.note{color:#555;margin:4px 0}
p.summary span{display:inline-block;margin-right:18px}
table.cm td{text-align:center;min-width:6.5em}
table.cm td small{display:block;opacity:0.85}
.legend span{display:inline-block;margin-right:16px}
.swatch{display:inline-block;width:14px;height:14px;border:1px solid #555;vertical-align:middle;margin-right:5px}
.samples{display:flex;flex-wrap:wrap;gap:18px}
figure.sample{margin:0;border:1px solid #c8ced6;padding:8px;background:#fafbfc;break-inside:avoid;page-break-inside:avoid}
figure.sample .imgs{display:flex;gap:6px}
figure.sample .imgs div{text-align:center;font-size:0.8em;color:#444}
figure.sample img{display:block;width:160px;height:auto;image-rendering:pixelated;border:1px solid #999}
figcaption{font-size:0.85em;margin-top:6px;max-width:500px;overflow-wrap:anywhere}
footer{margin-top:2em;color:#777;font-size:0.8em}
@media print{body{margin:0;max-width:none}h2{break-after:avoid}table{break-inside:avoid}}
"#;

impl Report {
    /// Empty report with a title.
    pub fn new(title: impl Into<String>) -> Self {
        Self {
            title: title.into(),
            ..Default::default()
        }
    }

    /// Renders the full HTML page. Fails only if the confusion matrix and its names disagree.
    pub fn to_html(&self) -> Result<String, ReportError> {
        let mut h = String::with_capacity(64 * 1024);
        let t = escape_html(&self.title);
        let _ = write!(
            h,
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
             <title>{t}</title>\n<style>{CSS}</style>\n</head>\n<body>\n<h1>{t}</h1>\n"
        );
        if !self.info.is_empty() {
            h.push_str("<h2 id=\"run-info\">Run information</h2>\n<table class=\"info\">\n");
            for (k, v) in &self.info {
                let _ = writeln!(
                    h,
                    "<tr><th>{}</th><td>{}</td></tr>",
                    escape_html(k),
                    escape_html(v)
                );
            }
            h.push_str("</table>\n");
        }
        for (i, s) in self.sections.iter().enumerate() {
            let _ = writeln!(
                h,
                "<section class=\"metrics\" id=\"section-{i}\">\n<h2>{}</h2>",
                escape_html(&s.name)
            );
            if let Some(n) = &s.note {
                let _ = writeln!(h, "<p class=\"note\">{}</p>", escape_html(n));
            }
            match &s.body {
                SectionBody::Metrics(m) => render_metrics(&mut h, m.as_ref()),
                SectionBody::Table(t) => render_table(&mut h, t),
            }
            h.push_str("</section>\n");
        }
        if let Some((m, names)) = &self.confusion {
            render_confusion(&mut h, m, names)?;
        }
        if !self.legend.is_empty() {
            h.push_str("<h2 id=\"legend\">Class colours</h2>\n<p class=\"legend\">");
            for (name, c) in &self.legend {
                let _ = write!(
                    h,
                    "<span><span class=\"swatch\" style=\"background:#{:02x}{:02x}{:02x}\"></span>{}</span>",
                    c[0],
                    c[1],
                    c[2],
                    escape_html(name)
                );
            }
            h.push_str("</p>\n");
        }
        if !self.samples.is_empty() {
            h.push_str("<h2 id=\"samples\">Sample predictions</h2>\n<div class=\"samples\">\n");
            for s in &self.samples {
                render_sample(&mut h, s);
            }
            h.push_str("</div>\n");
        }
        h.push_str("<footer>Generated by pbip-report.</footer>\n</body>\n</html>\n");
        Ok(h)
    }

    /// Renders and writes the page to `path` (temporary file in the same folder, then rename).
    pub fn write(&self, path: &Path) -> Result<(), ReportError> {
        let html = self.to_html()?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| ReportError::Io {
                path: dir.to_path_buf(),
                what: "creating the output folder",
                source,
            })?;
        }
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        std::fs::write(&tmp, html.as_bytes()).map_err(|source| ReportError::Io {
            path: tmp.clone(),
            what: "writing the report",
            source,
        })?;
        std::fs::rename(&tmp, path).map_err(|source| ReportError::Io {
            path: path.to_path_buf(),
            what: "renaming the temporary report into place",
            source,
        })?;
        tracing::info!(path = %path.display(), "wrote HTML report");
        Ok(())
    }
}

fn avg_row(h: &mut String, label: &str, a: &Averages) {
    let _ = writeln!(
        h,
        "<tr class=\"avg\"><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td></td><td></td></tr>",
        escape_html(label),
        fmt_score(a.iou),
        fmt_score(a.dice),
        fmt_score(a.precision),
        fmt_score(a.recall),
        fmt_score(a.f1)
    );
}

fn render_metrics(h: &mut String, m: &MetricsReport) {
    h.push_str("<p class=\"summary\">");
    let _ = write!(h, "<span><b>mIoU</b> {}</span>", fmt_score(m.miou));
    let _ = write!(h, "<span><b>FwIoU</b> {}</span>", fmt_score(m.fwiou));
    let _ = write!(
        h,
        "<span><b>pixel accuracy</b> {}</span>",
        fmt_score(m.pixel_accuracy)
    );
    let _ = write!(h, "<span><b>pixels</b> {}</span>", m.num_pixels);
    if let Some(n) = m.num_patches {
        let _ = write!(h, "<span><b>patches</b> {n}</span>");
    }
    if m.patch_pixel_accuracy.is_some() {
        let _ = write!(
            h,
            "<span><b>patch-mean pixel accuracy</b> {}</span>",
            fmt_score(m.patch_pixel_accuracy)
        );
    }
    h.push_str("</p>\n<table class=\"scores\">\n<tr><th>class</th><th>IoU</th><th>Dice</th><th>precision</th><th>recall</th><th>F1</th><th>GT pixels</th><th>predicted pixels</th></tr>\n");
    for (name, s) in &m.per_class.0 {
        let _ = writeln!(
            h,
            "<tr class=\"class\"><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
            escape_html(name),
            fmt_score(s.iou),
            fmt_score(s.dice),
            fmt_score(s.precision),
            fmt_score(s.recall),
            fmt_score(s.f1),
            s.gt_pixels,
            s.pred_pixels
        );
    }
    avg_row(h, "macro average", &m.macro_avg);
    avg_row(h, "weighted average", &m.weighted_avg);
    if let Some(p) = &m.patch_macro {
        avg_row(h, "mean over patches", p);
    }
    h.push_str("</table>\n");
}

fn render_table(h: &mut String, t: &SimpleTable) {
    h.push_str("<table class=\"simple\">\n");
    if !t.headers.is_empty() {
        h.push_str("<tr>");
        for c in &t.headers {
            let _ = write!(h, "<th>{}</th>", escape_html(c));
        }
        h.push_str("</tr>\n");
    }
    for r in &t.rows {
        h.push_str("<tr>");
        for c in r {
            let numeric = c.trim().parse::<f64>().is_ok();
            let cls = if numeric { " class=\"num\"" } else { "" };
            let _ = write!(h, "<td{cls}>{}</td>", escape_html(c));
        }
        h.push_str("</tr>\n");
    }
    h.push_str("</table>\n");
}

fn render_confusion(
    h: &mut String,
    m: &ConfusionMatrix,
    names: &[String],
) -> Result<(), ReportError> {
    let n = m.num_classes();
    if names.len() != n {
        return Err(ReportError::ClassNames {
            classes: n,
            names: names.len(),
        });
    }
    let unpred = m.unpredicted();
    let has_unpred = unpred.iter().any(|&u| u > 0);
    h.push_str("<h2 id=\"confusion\">Confusion matrix</h2>\n<p class=\"note\">Rows: ground truth; columns: prediction. Cell colour and percentage are normalised by the row (GT pixel count).</p>\n<table class=\"cm\">\n<tr><th>GT \\ predicted</th>");
    for name in names {
        let _ = write!(h, "<th>{}</th>", escape_html(name));
    }
    if has_unpred {
        h.push_str("<th>unpredicted</th>");
    }
    h.push_str("<th>GT total</th></tr>\n");
    for (g, gname) in names.iter().enumerate() {
        let row_total = m.gt_count(g);
        let _ = write!(h, "<tr><th>{}</th>", escape_html(gname));
        let cols = (0..n)
            .map(|p| m.get(g, p))
            .chain(has_unpred.then(|| unpred[g]));
        for count in cols {
            if row_total == 0 {
                let _ = write!(
                    h,
                    "<td style=\"background:#eeeeee;color:#777\">{count}<small>n/a</small></td>"
                );
            } else {
                let f = count as f64 / row_total as f64;
                let (bg, fg) = heat_color(f);
                let _ = write!(
                    h,
                    "<td style=\"background:{bg};color:{fg}\">{count}<small>{}</small></td>",
                    fmt_pct(f)
                );
            }
        }
        let _ = writeln!(h, "<td class=\"num\">{row_total}</td></tr>");
    }
    h.push_str("</table>\n");
    Ok(())
}

fn render_sample(h: &mut String, s: &SampleTriplet) {
    h.push_str("<figure class=\"sample\">\n<div class=\"imgs\">");
    let alt = escape_html(&s.title);
    for (label, img) in [
        ("input", &s.input),
        ("ground truth", &s.gt),
        ("prediction", &s.pred),
    ] {
        let _ = write!(
            h,
            "<div><img src=\"{}\" width=\"{}\" height=\"{}\" alt=\"{alt} {label}\">{label}</div>",
            img.data_uri(),
            img.width,
            img.height
        );
    }
    let _ = write!(h, "</div>\n<figcaption><b>{}</b>", escape_html(&s.title));
    if let Some(iou) = s.iou {
        let _ = write!(h, " &middot; IoU {}", fmt_score(Some(iou)));
    }
    for (k, v) in &s.details {
        let _ = write!(h, "<br>{}: {}", escape_html(k), escape_html(v));
    }
    h.push_str("</figcaption>\n</figure>\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping() {
        assert_eq!(
            escape_html("<script>alert('x&y')</script>\""),
            "&lt;script&gt;alert(&#39;x&amp;y&#39;)&lt;/script&gt;&quot;"
        );
    }

    #[test]
    fn timestamps() {
        // Values from `date -u -d @SECS`.
        assert_eq!(utc_timestamp(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc_timestamp(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc_timestamp(1_700_000_000), "2023-11-14 22:13:20 UTC");
        assert_eq!(utc_timestamp(4_102_444_799), "2099-12-31 23:59:59 UTC");
    }

    #[test]
    fn heat_colors() {
        assert_eq!(heat_color(0.0).0, "#f7fbff");
        assert_eq!(heat_color(1.0).0, "#08306b");
        assert_eq!(heat_color(f64::NAN).0, "#f7fbff");
    }
}
