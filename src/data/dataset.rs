//! Datasets: a class list and a list of (image path, class index) samples, read from an
//! image folder, a CSV file or a JSON / JSONL manifest.

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

use super::DataError;

/// File extensions (compared case-insensitively) that count as images in a folder.
pub const IMAGE_EXTENSIONS: [&str; 5] = ["png", "jpg", "jpeg", "webp", "bmp"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    pub path: PathBuf,
    /// Index into [`Dataset::classes`].
    pub label: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dataset {
    /// Class names in label order.
    pub classes: Vec<String>,
    pub samples: Vec<Sample>,
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// Number of samples of each class, in label order (labels outside the class list,
    /// possible only in a hand-built dataset, are not counted).
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.classes.len()];
        for s in &self.samples {
            if let Some(c) = counts.get_mut(s.label) {
                *c += 1;
            }
        }
        counts
    }
}

/// Where a split comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataSource {
    /// `ROOT/train/<class>/*` (with `ROOT/val/<class>/*` as the implicit validation
    /// split), or a folder whose subfolders are the classes.
    Folder(PathBuf),
    /// `image_path,label` with a header row; paths relative to the CSV file's folder.
    Csv(PathBuf),
    /// A JSON array of `{"image": path, "label": name}`, or JSONL with one such object
    /// per line; paths relative to the file's folder.
    Json(PathBuf),
}

impl DataSource {
    /// A folder, or a file told apart by its extension (`.csv`, `.json`, `.jsonl`).
    pub fn detect(path: impl AsRef<Path>) -> Result<DataSource, DataError> {
        let path = path.as_ref();
        let meta = fs::metadata(path).map_err(|e| DataError::io(path, e))?;
        if meta.is_dir() {
            return Ok(DataSource::Folder(path.to_path_buf()));
        }
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some("csv") => Ok(DataSource::Csv(path.to_path_buf())),
            Some("json") | Some("jsonl") => Ok(DataSource::Json(path.to_path_buf())),
            _ => Err(DataError::UnknownSource(path.to_path_buf())),
        }
    }

    pub fn path(&self) -> &Path {
        match self {
            DataSource::Folder(p) | DataSource::Csv(p) | DataSource::Json(p) => p,
        }
    }
}

/// Reads the training split and the validation split.
///
/// The class list is `classes` when given; otherwise the sorted class folder names of the
/// training folder, or the sorted set of labels of the training file. The validation
/// split is mapped onto the same list, so label `i` means the same class in both. For a
/// folder source without an explicit `val`, `ROOT/val` is used when it exists.
pub fn load_split(
    train: &DataSource,
    val: Option<&DataSource>,
    classes: Option<Vec<String>>,
) -> Result<(Dataset, Option<Dataset>), DataError> {
    if let Some(c) = &classes {
        check_class_list(c)?;
    }
    let (train_raw, implicit_val) = match train {
        DataSource::Folder(root) => {
            // A `train/` subfolder means the ROOT/{train,val} layout; otherwise the
            // folder itself holds the class folders.
            let split = root.join("train");
            if split.is_dir() {
                let v = root.join("val");
                (read_folder(&split)?, v.is_dir().then_some(v))
            } else {
                (read_folder(root)?, None)
            }
        }
        other => (read_source(other)?, None),
    };
    let classes = match classes {
        Some(c) => c,
        None => train_raw.default_classes(),
    };
    let train_set = train_raw.into_dataset(&classes)?;

    let val_raw = match (val, implicit_val) {
        (Some(DataSource::Folder(p)), _) => {
            let split = p.join("val");
            Some(read_folder(if split.is_dir() { &split } else { p })?)
        }
        (Some(other), _) => Some(read_source(other)?),
        (None, Some(dir)) => Some(read_folder(&dir)?),
        (None, None) => None,
    };
    let val_set = match val_raw {
        Some(raw) => Some(raw.into_dataset(&classes)?),
        None => None,
    };
    Ok((train_set, val_set))
}

fn check_class_list(classes: &[String]) -> Result<(), DataError> {
    if classes.is_empty() {
        return Err(DataError::InvalidClasses("the list is empty".into()));
    }
    let mut seen = BTreeSet::new();
    for c in classes {
        if !seen.insert(c.as_str()) {
            return Err(DataError::InvalidClasses(format!(
                "class {c:?} appears twice"
            )));
        }
    }
    Ok(())
}

/// One split as read from disk, before labels are turned into indices.
struct RawSplit {
    /// The folder or file the split came from, for "empty split" errors.
    origin: PathBuf,
    kind: RawKind,
}

enum RawKind {
    /// Class folder name, its path and its images (sorted).
    Folder(Vec<(String, PathBuf, Vec<PathBuf>)>),
    /// (image path, label, location such as "line 3" or "entry 0") from `file`.
    Listed {
        file: PathBuf,
        rows: Vec<(PathBuf, String, String)>,
    },
}

impl RawSplit {
    fn default_classes(&self) -> Vec<String> {
        match &self.kind {
            // Folders are already sorted by name.
            RawKind::Folder(classes) => classes.iter().map(|(n, _, _)| n.clone()).collect(),
            RawKind::Listed { rows, .. } => rows
                .iter()
                .map(|(_, l, _)| l.clone())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect(),
        }
    }

    fn into_dataset(self, classes: &[String]) -> Result<Dataset, DataError> {
        let index: HashMap<&str, usize> = classes
            .iter()
            .enumerate()
            .map(|(i, c)| (c.as_str(), i))
            .collect();
        let mut samples = Vec::new();
        match self.kind {
            RawKind::Folder(folders) => {
                for (name, dir, images) in folders {
                    let label =
                        *index
                            .get(name.as_str())
                            .ok_or_else(|| DataError::UnknownClassFolder {
                                folder: dir.clone(),
                                num_classes: classes.len(),
                            })?;
                    samples.extend(images.into_iter().map(|path| Sample { path, label }));
                }
            }
            RawKind::Listed { file, rows } => {
                for (path, label, location) in rows {
                    let Some(&label_idx) = index.get(label.as_str()) else {
                        return Err(DataError::UnknownLabel {
                            file,
                            location,
                            label,
                            num_classes: classes.len(),
                        });
                    };
                    samples.push(Sample {
                        path,
                        label: label_idx,
                    });
                }
            }
        }
        if samples.is_empty() {
            return Err(DataError::EmptySplit(self.origin));
        }
        Ok(Dataset {
            classes: classes.to_vec(),
            samples,
        })
    }
}

fn read_source(src: &DataSource) -> Result<RawSplit, DataError> {
    match src {
        DataSource::Folder(p) => read_folder(p),
        DataSource::Csv(p) => read_csv(p),
        DataSource::Json(p) => read_json(p),
    }
}

fn is_hidden(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.'))
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| DataError::io(dir, e))? {
        let entry = entry.map_err(|e| DataError::io(dir, e))?;
        let path = entry.path();
        // Dot files (.DS_Store, editor swap files) are never data.
        if !is_hidden(&path) {
            out.push(path);
        }
    }
    // read_dir order is file-system dependent; sorting makes the sample list (and so
    // every seeded order built on it) the same on every machine.
    out.sort();
    Ok(out)
}

fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| e.eq_ignore_ascii_case(x)))
}

/// Images under `dir`, including nested folders, sorted by path.
fn collect_images(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), DataError> {
    for path in sorted_entries(dir)? {
        // `is_dir` follows symlinks, so linked class folders work.
        if path.is_dir() {
            collect_images(&path, out)?;
        } else if has_image_extension(&path) {
            out.push(path);
        }
    }
    Ok(())
}

fn read_folder(dir: &Path) -> Result<RawSplit, DataError> {
    let mut classes = Vec::new();
    for path in sorted_entries(dir)? {
        if !path.is_dir() {
            continue;
        }
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| DataError::NonUtf8Name { path: path.clone() })?
            .to_string();
        let mut images = Vec::new();
        collect_images(&path, &mut images)?;
        if images.is_empty() {
            return Err(DataError::EmptyClass(path));
        }
        classes.push((name, path, images));
    }
    if classes.is_empty() {
        return Err(DataError::NoClasses(dir.to_path_buf()));
    }
    Ok(RawSplit {
        origin: dir.to_path_buf(),
        kind: RawKind::Folder(classes),
    })
}

/// The folder that relative paths in a manifest file are resolved against.
fn base_dir(file: &Path) -> PathBuf {
    file.parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn read_text(file: &Path) -> Result<String, DataError> {
    let text = fs::read_to_string(file).map_err(|e| DataError::io(file, e))?;
    // A UTF-8 byte-order mark (spreadsheet exports) would otherwise end up in the first
    // header name.
    Ok(text.strip_prefix('\u{feff}').unwrap_or(&text).to_string())
}

fn read_csv(file: &Path) -> Result<RawSplit, DataError> {
    let text = read_text(file)?;
    let base = base_dir(file);
    let parse_err = |line: usize, msg: String| DataError::Parse {
        file: file.to_path_buf(),
        location: format!("line {line}"),
        msg,
    };
    let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l));
    let (header_line, header) = lines
        .by_ref()
        .find(|(_, l)| !l.trim().is_empty())
        .ok_or_else(|| DataError::EmptySplit(file.to_path_buf()))?;
    let header = split_csv_line(header).map_err(|m| parse_err(header_line, m))?;
    let column = |name: &str| {
        header.iter().position(|h| h.trim() == name).ok_or_else(|| {
            parse_err(
                header_line,
                format!("the header has no {name:?} column (expected image_path,label)"),
            )
        })
    };
    let path_col = column("image_path")?;
    let label_col = column("label")?;

    let mut rows = Vec::new();
    for (n, line) in lines {
        if line.trim().is_empty() {
            continue;
        }
        let fields = split_csv_line(line).map_err(|m| parse_err(n, m))?;
        let get = |col: usize, what: &str| {
            fields
                .get(col)
                .map(|f| f.trim().to_string())
                .filter(|f| !f.is_empty())
                .ok_or_else(|| parse_err(n, format!("missing {what}")))
        };
        let rel = get(path_col, "image_path")?;
        let label = get(label_col, "label")?;
        rows.push((base.join(rel), label, format!("line {n}")));
    }
    if rows.is_empty() {
        return Err(DataError::EmptySplit(file.to_path_buf()));
    }
    Ok(RawSplit {
        origin: file.to_path_buf(),
        kind: RawKind::Listed {
            file: file.to_path_buf(),
            rows,
        },
    })
}

/// Splits one CSV record: comma-separated, fields optionally in double quotes with `""`
/// for a literal quote (RFC 4180 without line breaks inside fields).
fn split_csv_line(line: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut chars = line.chars().peekable();
    let mut in_quotes = false;
    while let Some(c) = chars.next() {
        match (c, in_quotes) {
            ('"', true) if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            ('"', true) => in_quotes = false,
            ('"', false) if field.trim().is_empty() => {
                field.clear();
                in_quotes = true;
            }
            (',', false) => fields.push(std::mem::take(&mut field)),
            _ => field.push(c),
        }
    }
    if in_quotes {
        return Err("unterminated quoted field".into());
    }
    fields.push(field);
    Ok(fields)
}

#[derive(serde::Deserialize)]
struct JsonEntry {
    image: String,
    label: String,
}

fn read_json(file: &Path) -> Result<RawSplit, DataError> {
    let text = read_text(file)?;
    let base = base_dir(file);
    let parse_err = |location: String, msg: String| DataError::Parse {
        file: file.to_path_buf(),
        location,
        msg,
    };
    let mut rows = Vec::new();
    // An array is JSON whatever the extension; anything else is read as JSON lines, so a
    // `.json` file written one object per line also works.
    if text.trim_start().starts_with('[') {
        let entries: Vec<serde_json::Value> = serde_json::from_str(&text).map_err(|e| {
            parse_err(
                format!("line {} column {}", e.line(), e.column()),
                e.to_string(),
            )
        })?;
        for (i, value) in entries.into_iter().enumerate() {
            let location = format!("entry {i}");
            let e: JsonEntry = serde_json::from_value(value)
                .map_err(|err| parse_err(location.clone(), err.to_string()))?;
            rows.push((base.join(e.image), e.label, location));
        }
    } else {
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let location = format!("line {}", i + 1);
            let e: JsonEntry = serde_json::from_str(line)
                .map_err(|err| parse_err(location.clone(), err.to_string()))?;
            rows.push((base.join(e.image), e.label, location));
        }
    }
    if rows.is_empty() {
        return Err(DataError::EmptySplit(file.to_path_buf()));
    }
    Ok(RawSplit {
        origin: file.to_path_buf(),
        kind: RawKind::Listed {
            file: file.to_path_buf(),
            rows,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::split_csv_line;

    #[test]
    fn csv_quotes() {
        assert_eq!(
            split_csv_line(r#"a,"b,c","d""e",  "f" "#).unwrap(),
            vec!["a", "b,c", "d\"e", "f "]
        );
        assert!(split_csv_line(r#"a,"b"#).is_err());
    }
}
