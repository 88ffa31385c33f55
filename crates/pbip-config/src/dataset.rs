//! Dataset discovery: split CSV + labels CSV + slide / coordinate / GT files.
//!
//! Every problem found is collected and returned together in [`DatasetErrors`].

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::Config;

/// Slide file extensions searched in `wsi_dir` (case-insensitive), in order of preference.
pub const SUPPORTED_SLIDE_EXTENSIONS: &[&str] = &[
    "svs", "tif", "tiff", "ndpi", "mrxs", "scn", "bif", "vms", "vmu", "svslide", "png", "jpg",
    "jpeg", "dcm",
];

/// A split of the split CSV.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    /// `train` column.
    Train,
    /// `val` column.
    Val,
    /// `test` column.
    Test,
}

impl Split {
    /// The CSV column name.
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::Test => "test",
        }
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Kind of a dataset problem (for programmatic matching).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProblemKind {
    /// A file or folder could not be read.
    Io,
    /// Malformed CSV (header, columns, quoting).
    Csv,
    /// A slide of a split has no row in the labels CSV.
    MissingLabel,
    /// A class index is >= the number of classes.
    LabelOutOfRange,
    /// A label cell cannot be parsed.
    BadLabel,
    /// The same name appears twice in one CSV (same split or labels).
    DuplicateRow,
    /// A name appears in two splits.
    InTwoSplits,
    /// No slide file with that stem in wsi_dir.
    SlideMissing,
    /// Several slide files with that stem.
    SlideAmbiguous,
    /// The coordinate file does not exist.
    CoordinatesMissing,
    /// The train split is empty.
    EmptyTrain,
}

/// One problem found while loading the dataset.
#[derive(Debug, Clone, PartialEq)]
pub struct DatasetProblem {
    /// What kind of problem.
    pub kind: ProblemKind,
    /// Human-readable description naming the file, line and slide.
    pub message: String,
}

impl fmt::Display for DatasetProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// All problems found while loading a dataset.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("dataset has {} problem(s):\n{}", problems.len(), problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
pub struct DatasetErrors {
    /// Every problem, in discovery order.
    pub problems: Vec<DatasetProblem>,
}

/// One slide of the dataset.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SlideEntry {
    /// Slide key: file name without folder and slide extension.
    pub name: String,
    /// Split it belongs to.
    pub split: Split,
    /// Multi-hot image-level label (0/1 per class of class_order).
    pub labels: Vec<u8>,
    /// Slide file.
    pub slide_path: PathBuf,
    /// Coordinate file.
    pub coordinates_path: PathBuf,
    /// Ground-truth mask, when gt_dir is set and the file exists.
    pub gt_path: Option<PathBuf>,
}

impl SlideEntry {
    /// Slide file name with extension (the `wsi_name` stored in prototype coordinate files).
    pub fn wsi_name(&self) -> String {
        self.slide_path
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| self.name.clone())
    }

    /// Indices of the classes this slide is labelled with.
    pub fn class_indices(&self) -> Vec<usize> {
        self.labels
            .iter()
            .enumerate()
            .filter(|(_, v)| **v != 0)
            .map(|(i, _)| i)
            .collect()
    }
}

/// A validated dataset.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Dataset {
    /// Class names (from the config).
    pub class_order: Vec<String>,
    /// All slides: train, then val, then test, each in CSV order.
    pub slides: Vec<SlideEntry>,
    /// Non-fatal findings (e.g. missing GT masks, unlabelled slides).
    pub warnings: Vec<String>,
}

impl Dataset {
    /// Slides of one split.
    pub fn split(&self, split: Split) -> Vec<&SlideEntry> {
        self.slides.iter().filter(|s| s.split == split).collect()
    }

    /// Looks a slide up by its key or file name (with or without extension).
    pub fn find(&self, name: &str) -> Option<&SlideEntry> {
        let key = normalise_slide_key(name);
        self.slides.iter().find(|s| s.name == key)
    }

    /// Loads and validates the split CSV, labels CSV, and the slide / coordinate files of `cfg`,
    /// reporting every problem at once.
    pub fn load(cfg: &Config) -> Result<Dataset, DatasetErrors> {
        let mut problems = Vec::new();
        let mut warnings = Vec::new();
        let p = &cfg.paths;
        let splits = parse_split_csv_inner(&p.split_csv, &mut problems);
        let labels = parse_labels_csv_inner(&p.labels_csv, &cfg.class_order, &mut problems);
        let slide_index = index_slides(&p.wsi_dir, &mut problems);
        let coords_dir_ok = check_dir(&p.coordinates_dir, "paths.coordinates_dir", &mut problems);
        let gt_dir_ok = match &p.gt_dir {
            Some(d) => check_dir(d, "paths.gt_dir", &mut problems),
            None => false,
        };

        if let Some(rows) = &splits
            && !rows.iter().any(|r| r.split == Split::Train)
        {
            problems.push(DatasetProblem {
                kind: ProblemKind::EmptyTrain,
                message: format!(
                    "{}: the train column has no slide names",
                    p.split_csv.display()
                ),
            });
        }

        let mut slides = Vec::new();
        for row in splits.iter().flatten() {
            let name = &row.name;
            let label = match &labels {
                Some(map) => match map.get(name) {
                    Some(l) => l.clone(),
                    None => {
                        problems.push(DatasetProblem {
                            kind: ProblemKind::MissingLabel,
                            message: format!(
                                "slide `{name}` ({} split, {} line {}) has no row in the labels CSV {}",
                                row.split,
                                p.split_csv.display(),
                                row.line,
                                p.labels_csv.display()
                            ),
                        });
                        None
                    }
                },
                None => None,
            };
            let slide_path = match &slide_index {
                Some(idx) => match idx.get(name).map(Vec::as_slice) {
                    Some([one]) => Some(one.clone()),
                    Some(many) if many.len() > 1 => {
                        problems.push(DatasetProblem {
                            kind: ProblemKind::SlideAmbiguous,
                            message: format!(
                                "slide `{name}`: several files in {} match: {}",
                                p.wsi_dir.display(),
                                many.iter()
                                    .map(|m| m.display().to_string())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ),
                        });
                        None
                    }
                    _ => {
                        problems.push(DatasetProblem {
                            kind: ProblemKind::SlideMissing,
                            message: format!(
                                "slide `{name}` ({} split): no file {}/{name}.<ext> with a supported extension ({})",
                                row.split,
                                p.wsi_dir.display(),
                                SUPPORTED_SLIDE_EXTENSIONS.join(" ")
                            ),
                        });
                        None
                    }
                },
                None => None,
            };
            let coordinates_path = p
                .coordinates_dir
                .join(format!("{name}{}", p.coordinates_suffix));
            if coords_dir_ok && !coordinates_path.is_file() {
                problems.push(DatasetProblem {
                    kind: ProblemKind::CoordinatesMissing,
                    message: format!(
                        "slide `{name}` ({} split): coordinate file {} does not exist",
                        row.split,
                        coordinates_path.display()
                    ),
                });
            }
            let gt_path = match &p.gt_dir {
                Some(d) if gt_dir_ok => {
                    let g = d.join(format!("{name}{}", p.gt_suffix));
                    if g.is_file() {
                        Some(g)
                    } else {
                        if row.split != Split::Train {
                            warnings.push(format!(
                                "slide `{name}` ({} split): no ground-truth mask {}",
                                row.split,
                                g.display()
                            ));
                        }
                        None
                    }
                }
                _ => None,
            };
            if let (Some(labels), Some(slide_path)) = (label, slide_path) {
                if labels.iter().all(|v| *v == 0) {
                    warnings.push(format!(
                        "slide `{name}` ({} split) has no positive class label",
                        row.split
                    ));
                }
                slides.push(SlideEntry {
                    name: name.clone(),
                    split: row.split,
                    labels,
                    slide_path,
                    coordinates_path,
                    gt_path,
                });
            }
        }
        if !problems.is_empty() {
            return Err(DatasetErrors { problems });
        }
        slides.sort_by_key(|s| s.split); // stable: CSV order within a split
        for w in &warnings {
            tracing::warn!("{w}");
        }
        Ok(Dataset {
            class_order: cfg.class_order.clone(),
            slides,
            warnings,
        })
    }
}

/// File name without folder and without a supported slide extension (case-insensitive).
pub fn normalise_slide_key(name: &str) -> String {
    let name = name.trim();
    let base = name.rsplit(['/', '\\']).next().unwrap_or(name);
    if let Some((stem, ext)) = base.rsplit_once('.') {
        let ext = ext.to_ascii_lowercase();
        if SUPPORTED_SLIDE_EXTENSIONS.contains(&ext.as_str()) && !stem.is_empty() {
            return stem.to_string();
        }
    }
    base.to_string()
}

/// One non-empty cell of the split CSV.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitRow {
    /// Split (column).
    pub split: Split,
    /// Slide key.
    pub name: String,
    /// 1-based line in the CSV.
    pub line: usize,
}

fn check_dir(dir: &Path, key: &str, problems: &mut Vec<DatasetProblem>) -> bool {
    if dir.is_dir() {
        true
    } else {
        problems.push(DatasetProblem {
            kind: ProblemKind::Io,
            message: format!("{key}: folder {} does not exist", dir.display()),
        });
        false
    }
}

fn index_slides(
    dir: &Path,
    problems: &mut Vec<DatasetProblem>,
) -> Option<HashMap<String, Vec<PathBuf>>> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) => {
            problems.push(DatasetProblem {
                kind: ProblemKind::Io,
                message: format!("paths.wsi_dir: cannot list folder {}: {e}", dir.display()),
            });
            return None;
        }
    };
    let mut index: HashMap<String, Vec<PathBuf>> = HashMap::new();
    for entry in rd.flatten() {
        let path = entry.path();
        if !path.is_file() {
            continue;
        }
        let Some(file_name) = path.file_name().and_then(|f| f.to_str()) else {
            continue;
        };
        let Some((stem, ext)) = file_name.rsplit_once('.') else {
            continue;
        };
        if SUPPORTED_SLIDE_EXTENSIONS.contains(&ext.to_ascii_lowercase().as_str()) {
            index
                .entry(stem.to_string())
                .or_default()
                .push(path.clone());
        }
    }
    for v in index.values_mut() {
        v.sort();
    }
    Some(index)
}

/// The CSV record, or `None` with the problem (file and line) recorded.
fn record_or_problem(
    rec: csv::Result<csv::StringRecord>,
    path: &Path,
    line: usize,
    problems: &mut Vec<DatasetProblem>,
) -> Option<csv::StringRecord> {
    rec.map_err(|e| {
        problems.push(DatasetProblem {
            kind: ProblemKind::Csv,
            message: format!("{} line {line}: {e}", path.display()),
        })
    })
    .ok()
}

fn open_csv(path: &Path, problems: &mut Vec<DatasetProblem>) -> Option<csv::Reader<std::fs::File>> {
    match csv::ReaderBuilder::new()
        .flexible(true)
        .trim(csv::Trim::All)
        .from_path(path)
    {
        Ok(r) => Some(r),
        Err(e) => {
            problems.push(DatasetProblem {
                kind: ProblemKind::Io,
                message: format!("cannot read {}: {e}", path.display()),
            });
            None
        }
    }
}

/// Parses the split CSV (header with `train`, and optionally `val`, `test`; blank cells allowed).
pub fn parse_split_csv(path: &Path) -> Result<Vec<SplitRow>, DatasetErrors> {
    let mut problems = Vec::new();
    let rows = parse_split_csv_inner(path, &mut problems);
    match rows {
        Some(r) if problems.is_empty() => Ok(r),
        _ => Err(DatasetErrors { problems }),
    }
}

fn parse_split_csv_inner(path: &Path, problems: &mut Vec<DatasetProblem>) -> Option<Vec<SplitRow>> {
    let mut rdr = open_csv(path, problems)?;
    let headers = match rdr.headers() {
        Ok(h) => h.clone(),
        Err(e) => {
            problems.push(DatasetProblem {
                kind: ProblemKind::Csv,
                message: format!("{}: cannot read header: {e}", path.display()),
            });
            return None;
        }
    };
    let mut cols: Vec<(usize, Split)> = Vec::new();
    for (i, h) in headers.iter().enumerate() {
        let split = match h
            .trim()
            .trim_start_matches('\u{feff}')
            .to_ascii_lowercase()
            .as_str()
        {
            "train" => Split::Train,
            "val" | "valid" | "validation" => Split::Val,
            "test" => Split::Test,
            _ => continue,
        };
        cols.push((i, split));
    }
    if !cols.iter().any(|(_, s)| *s == Split::Train) {
        problems.push(DatasetProblem {
            kind: ProblemKind::Csv,
            message: format!(
                "{}: header {:?} has no `train` column (expected columns train,val,test)",
                path.display(),
                headers.iter().collect::<Vec<_>>()
            ),
        });
        return None;
    }
    let mut rows = Vec::new();
    let mut seen: HashMap<String, (Split, usize)> = HashMap::new();
    for (r, rec) in rdr.records().enumerate() {
        let line = r + 2;
        let Some(rec) = record_or_problem(rec, path, line, problems) else {
            continue;
        };
        for (col, split) in &cols {
            let Some(cell) = rec.get(*col) else { continue };
            if cell.is_empty() {
                continue;
            }
            let name = normalise_slide_key(cell);
            if let Some((first_split, first_line)) = seen.get(&name) {
                if first_split == split {
                    problems.push(DatasetProblem {
                        kind: ProblemKind::DuplicateRow,
                        message: format!("{}: slide `{name}` is listed twice in the {split} column (lines {first_line} and {line})", path.display()),
                    });
                } else {
                    problems.push(DatasetProblem {
                        kind: ProblemKind::InTwoSplits,
                        message: format!(
                            "{}: slide `{name}` is in two splits: {first_split} (line {first_line}) and {split} (line {line})",
                            path.display()
                        ),
                    });
                }
                continue;
            }
            seen.insert(name.clone(), (*split, line));
            rows.push(SplitRow {
                split: *split,
                name,
                line,
            });
        }
    }
    Some(rows)
}

/// Parses the labels CSV into slide key → multi-hot label.
///
/// Accepted forms: `image_name,label` where label is a class index (`1`) or a multi-hot string with
/// one 0/1 per class (`"0,1"` or `"0 1"`); or `image_name` plus one 0/1 column per class, named as in
/// `class_order`.
pub fn parse_labels_csv(
    path: &Path,
    class_order: &[String],
) -> Result<BTreeMap<String, Vec<u8>>, DatasetErrors> {
    let mut problems = Vec::new();
    let labels = parse_labels_csv_inner(path, class_order, &mut problems);
    match labels {
        Some(l) if problems.is_empty() => Ok(l
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .collect()),
        _ => Err(DatasetErrors { problems }),
    }
}

fn parse_label_cell(cell: &str, n: usize) -> Result<Vec<u8>, (ProblemKind, String)> {
    let inner = cell.trim().trim_start_matches('[').trim_end_matches(']');
    let tokens: Vec<&str> = inner
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|t| !t.is_empty())
        .collect();
    match tokens.as_slice() {
        [] => Err((ProblemKind::BadLabel, "empty label".into())),
        [one] => {
            let idx: i64 = one.parse().map_err(|_| {
                (
                    ProblemKind::BadLabel,
                    format!(
                        "label `{cell}` is not a class index (integer 0..{})",
                        n.saturating_sub(1)
                    ),
                )
            })?;
            if idx < 0 || idx as usize >= n {
                return Err((
                    ProblemKind::LabelOutOfRange,
                    format!(
                        "class index {idx} is out of range 0..{} ({n} classes)",
                        n.saturating_sub(1)
                    ),
                ));
            }
            let mut v = vec![0u8; n];
            v[idx as usize] = 1;
            Ok(v)
        }
        many => {
            if many.len() != n {
                return Err((
                    ProblemKind::LabelOutOfRange,
                    format!(
                        "multi-hot label `{cell}` has {} values but there are {n} classes",
                        many.len()
                    ),
                ));
            }
            many.iter()
                .map(|t| match *t {
                    "0" | "0.0" => Ok(0u8),
                    "1" | "1.0" => Ok(1u8),
                    other => Err((
                        ProblemKind::BadLabel,
                        format!("multi-hot label `{cell}`: value `{other}` is not 0 or 1"),
                    )),
                })
                .collect()
        }
    }
}

/// Label map where `None` marks a row whose label was invalid (already reported).
type LabelMap = BTreeMap<String, Option<Vec<u8>>>;

fn parse_labels_csv_inner(
    path: &Path,
    class_order: &[String],
    problems: &mut Vec<DatasetProblem>,
) -> Option<LabelMap> {
    let mut rdr = open_csv(path, problems)?;
    let headers = match rdr.headers() {
        Ok(h) => h
            .iter()
            .map(|s| s.trim().trim_start_matches('\u{feff}').to_string())
            .collect::<Vec<_>>(),
        Err(e) => {
            problems.push(DatasetProblem {
                kind: ProblemKind::Csv,
                message: format!("{}: cannot read header: {e}", path.display()),
            });
            return None;
        }
    };
    let n = class_order.len();
    let Some(name_col) = headers
        .iter()
        .position(|h| h.eq_ignore_ascii_case("image_name"))
    else {
        problems.push(DatasetProblem {
            kind: ProblemKind::Csv,
            message: format!(
                "{}: header {headers:?} has no `image_name` column",
                path.display()
            ),
        });
        return None;
    };
    enum Form {
        Single(usize),
        PerClass(Vec<usize>),
    }
    let form = if let Some(c) = headers.iter().position(|h| h.eq_ignore_ascii_case("label")) {
        Form::Single(c)
    } else {
        let cols: Option<Vec<usize>> = class_order
            .iter()
            .map(|c| headers.iter().position(|h| h == c))
            .collect();
        match cols {
            Some(cols) if !cols.is_empty() => Form::PerClass(cols),
            _ => {
                problems.push(DatasetProblem {
                    kind: ProblemKind::Csv,
                    message: format!(
                        "{}: header {headers:?} needs a `label` column or one column per class ({})",
                        path.display(),
                        class_order.join(", ")
                    ),
                });
                return None;
            }
        }
    };
    let mut out: LabelMap = BTreeMap::new();
    let mut lines: HashMap<String, usize> = HashMap::new();
    for (r, rec) in rdr.records().enumerate() {
        let line = r + 2;
        let Some(rec) = record_or_problem(rec, path, line, problems) else {
            continue;
        };
        if rec.iter().all(str::is_empty) {
            continue;
        }
        let name = normalise_slide_key(rec.get(name_col).unwrap_or(""));
        if name.is_empty() {
            problems.push(DatasetProblem {
                kind: ProblemKind::Csv,
                message: format!("{} line {line}: empty image_name", path.display()),
            });
            continue;
        }
        let parsed = match &form {
            Form::Single(c) => parse_label_cell(rec.get(*c).unwrap_or(""), n),
            Form::PerClass(cols) => {
                let cells: Vec<&str> = cols.iter().map(|c| rec.get(*c).unwrap_or("")).collect();
                parse_label_cell(&cells.join(","), n)
            }
        };
        match parsed {
            Ok(v) => {
                if let Some(first) = lines.get(&name) {
                    problems.push(DatasetProblem {
                        kind: ProblemKind::DuplicateRow,
                        message: format!(
                            "{}: image `{name}` has two rows (lines {first} and {line})",
                            path.display()
                        ),
                    });
                    continue;
                }
                lines.insert(name.clone(), line);
                out.insert(name, Some(v));
            }
            Err((kind, msg)) => {
                lines.entry(name.clone()).or_insert(line);
                out.entry(name.clone()).or_insert(None);
                problems.push(DatasetProblem {
                    kind,
                    message: format!("{} line {line} (image `{name}`): {msg}", path.display()),
                })
            }
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_strip_only_slide_extensions() {
        assert_eq!(normalise_slide_key("a/b/slide_1.TIF"), "slide_1");
        assert_eq!(normalise_slide_key("slide_1"), "slide_1");
        assert_eq!(normalise_slide_key("DD.S03"), "DD.S03");
        assert_eq!(normalise_slide_key("x.svs"), "x");
    }

    #[test]
    fn label_forms() {
        assert_eq!(parse_label_cell("1", 3).unwrap(), vec![0, 1, 0]);
        assert_eq!(parse_label_cell("0,1,1", 3).unwrap(), vec![0, 1, 1]);
        assert_eq!(parse_label_cell("1 0 1", 3).unwrap(), vec![1, 0, 1]);
        assert_eq!(
            parse_label_cell("3", 3).unwrap_err().0,
            ProblemKind::LabelOutOfRange
        );
        assert_eq!(
            parse_label_cell("0,1", 3).unwrap_err().0,
            ProblemKind::LabelOutOfRange
        );
        assert_eq!(
            parse_label_cell("0,2,1", 3).unwrap_err().0,
            ProblemKind::BadLabel
        );
        assert_eq!(
            parse_label_cell("x", 3).unwrap_err().0,
            ProblemKind::BadLabel
        );
    }

    #[test]
    fn labels_csv_per_class_columns_and_quoted() {
        let d = tempfile::tempdir().unwrap();
        let classes = vec!["a".to_string(), "b".to_string()];
        let p = d.path().join("l.csv");
        std::fs::write(&p, "image_name,b,a\ns1.tif,1,0\ns2,1,1\n").unwrap();
        let m = parse_labels_csv(&p, &classes).unwrap();
        assert_eq!(m["s1"], vec![0, 1]);
        assert_eq!(m["s2"], vec![1, 1]);
        std::fs::write(&p, "image_name,label\ns1,\"1,0\"\ns2,1\ns2,0\ns3,7\n").unwrap();
        let e = parse_labels_csv(&p, &classes).unwrap_err();
        let kinds: Vec<_> = e.problems.iter().map(|p| p.kind).collect();
        assert_eq!(
            kinds,
            vec![ProblemKind::DuplicateRow, ProblemKind::LabelOutOfRange],
            "{e}"
        );
    }

    #[test]
    fn split_csv_blanks_and_two_splits() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s.csv");
        std::fs::write(&p, "train,val,test\na,b,c\nd,,\ne.tif,a,\n").unwrap();
        let e = parse_split_csv(&p).unwrap_err();
        assert_eq!(e.problems.len(), 1);
        assert_eq!(e.problems[0].kind, ProblemKind::InTwoSplits);
        std::fs::write(&p, "train,val,test\na,b,c\nd,,\ne.tif,,\n").unwrap();
        let rows = parse_split_csv(&p).unwrap();
        let names: Vec<_> = rows.iter().map(|r| (r.split, r.name.as_str())).collect();
        assert_eq!(
            names,
            vec![
                (Split::Train, "a"),
                (Split::Val, "b"),
                (Split::Test, "c"),
                (Split::Train, "d"),
                (Split::Train, "e")
            ]
        );
    }
}
