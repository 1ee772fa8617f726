//! Reading datasets: image folders, CSV, JSON and JSONL manifests, and the errors for
//! data a user has to fix.

use std::fs;
use std::path::{Path, PathBuf};

use mlx_coreml_pipeline::data::{load_split, DataError, DataSource, Dataset};

/// Writes a tiny valid PNG (the loaders here never decode, but keep files realistic).
fn png(path: &Path) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::RgbImage::from_pixel(2, 2, image::Rgb([1, 2, 3]))
        .save(path)
        .unwrap();
}

fn folder_tree(root: &Path) {
    for (split, class, file) in [
        ("train", "dog", "b.png"),
        ("train", "dog", "a.JPG"),
        ("train", "cat", "x.png"),
        ("train", "cat", "nested/y.webp"),
        ("train", "ant", "z.bmp"),
        ("val", "dog", "v.jpeg"),
        ("val", "cat", "w.png"),
    ] {
        png(&root.join(split).join(class).join(file));
    }
    // Not images: ignored.
    fs::write(root.join("train/dog/notes.txt"), "x").unwrap();
    fs::write(root.join("train/cat/.DS_Store"), "x").unwrap();
    fs::write(root.join("train/README"), "x").unwrap();
}

fn names(ds: &Dataset, root: &Path) -> Vec<(String, usize)> {
    ds.samples
        .iter()
        .map(|s| {
            let rel = s.path.strip_prefix(root).unwrap();
            (rel.to_string_lossy().replace('\\', "/"), s.label)
        })
        .collect()
}

#[test]
fn image_folder_with_val() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    folder_tree(root);
    let src = DataSource::detect(root).unwrap();
    assert_eq!(src, DataSource::Folder(root.to_path_buf()));
    let (train, val) = load_split(&src, None, None).unwrap();
    assert_eq!(train.classes, ["ant", "cat", "dog"]);
    assert_eq!(
        names(&train, root),
        [
            ("train/ant/z.bmp".to_string(), 0),
            ("train/cat/nested/y.webp".to_string(), 1),
            ("train/cat/x.png".to_string(), 1),
            ("train/dog/a.JPG".to_string(), 2),
            ("train/dog/b.png".to_string(), 2),
        ]
    );
    assert_eq!(train.class_counts(), [1, 2, 2]);
    let val = val.expect("ROOT/val is picked up");
    // Same class list, even though val has no "ant".
    assert_eq!(val.classes, train.classes);
    assert_eq!(
        names(&val, root),
        [
            ("val/cat/w.png".to_string(), 1),
            ("val/dog/v.jpeg".to_string(), 2)
        ]
    );
}

#[test]
fn folder_without_val_and_split_folder_directly() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    png(&root.join("train/a/1.png"));
    let (train, val) = load_split(&DataSource::Folder(root.into()), None, None).unwrap();
    assert_eq!(train.len(), 1);
    assert!(val.is_none());
    // A folder whose subfolders are the classes works too, and can be the val source.
    let (train, val) = load_split(
        &DataSource::Folder(root.join("train")),
        Some(&DataSource::Folder(root.join("train"))),
        None,
    )
    .unwrap();
    assert_eq!(val.unwrap(), train);
}

#[test]
fn empty_class_folder_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    png(&root.join("train/a/1.png"));
    fs::create_dir_all(root.join("train/empty_one")).unwrap();
    fs::write(root.join("train/empty_one/readme.txt"), "no images").unwrap();
    let err = load_split(&DataSource::Folder(root.into()), None, None).unwrap_err();
    assert!(matches!(err, DataError::EmptyClass(_)), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("empty_one"), "{msg}");
}

#[test]
fn empty_splits_are_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    fs::create_dir_all(root.join("train")).unwrap();
    let err = load_split(&DataSource::Folder(root.into()), None, None).unwrap_err();
    assert!(err.to_string().contains("train"), "{err}");

    let csv = root.join("only_header.csv");
    fs::write(&csv, "image_path,label\n\n").unwrap();
    let err = load_split(&DataSource::Csv(csv.clone()), None, None).unwrap_err();
    assert!(
        matches!(err, DataError::EmptySplit(ref p) if *p == csv),
        "{err:?}"
    );

    let json = root.join("empty.json");
    fs::write(&json, "[]").unwrap();
    let err = load_split(&DataSource::Json(json.clone()), None, None).unwrap_err();
    assert!(
        matches!(err, DataError::EmptySplit(ref p) if *p == json),
        "{err:?}"
    );
}

#[test]
fn val_class_folder_unknown_to_train() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    png(&root.join("train/a/1.png"));
    png(&root.join("val/b/1.png"));
    let err = load_split(&DataSource::Folder(root.into()), None, None).unwrap_err();
    assert!(
        matches!(err, DataError::UnknownClassFolder { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("val/b"), "{err}");
}

#[test]
fn csv_relative_paths_quotes_and_class_list() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let dir = root.join("lists");
    fs::create_dir_all(&dir).unwrap();
    fs::write(
        dir.join("train.csv"),
        "\u{feff}image_path,label\nimg/1.png,zebra\n\"img/with, comma.png\",apple\n\nimg/3.png,zebra\n",
    )
    .unwrap();
    fs::write(dir.join("val.csv"), "label,image_path\napple,img/4.png\n").unwrap();
    let train_src = DataSource::detect(dir.join("train.csv")).unwrap();
    let val_src = DataSource::detect(dir.join("val.csv")).unwrap();
    let (train, val) = load_split(&train_src, Some(&val_src), None).unwrap();
    assert_eq!(train.classes, ["apple", "zebra"]);
    assert_eq!(
        train
            .samples
            .iter()
            .map(|s| (s.path.clone(), s.label))
            .collect::<Vec<_>>(),
        [
            (dir.join("img/1.png"), 1),
            (dir.join("img/with, comma.png"), 0),
            (dir.join("img/3.png"), 1)
        ]
    );
    let val = val.unwrap();
    assert_eq!(val.samples[0].path, dir.join("img/4.png"));
    assert_eq!(val.samples[0].label, 0);

    // An explicit list sets the order.
    let (train, _) = load_split(
        &train_src,
        None,
        Some(vec!["zebra".into(), "apple".into(), "unused".into()]),
    )
    .unwrap();
    assert_eq!(train.classes, ["zebra", "apple", "unused"]);
    assert_eq!(train.samples[0].label, 0);
    assert_eq!(train.samples[1].label, 1);
}

#[test]
fn unknown_label_names_file_line_and_label() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    fs::write(root.join("train.csv"), "image_path,label\na.png,cat\n").unwrap();
    fs::write(
        root.join("val.csv"),
        "image_path,label\nb.png,cat\nc.png,giraffe\n",
    )
    .unwrap();
    let err = load_split(
        &DataSource::Csv(root.join("train.csv")),
        Some(&DataSource::Csv(root.join("val.csv"))),
        None,
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, DataError::UnknownLabel { .. }), "{err:?}");
    assert!(msg.contains("val.csv"), "{msg}");
    assert!(msg.contains("line 3"), "{msg}");
    assert!(msg.contains("giraffe"), "{msg}");

    // Against an explicit list, in the training file itself.
    let err = load_split(
        &DataSource::Csv(root.join("train.csv")),
        None,
        Some(vec!["dog".into()]),
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("train.csv") && msg.contains("line 2") && msg.contains("\"cat\""));

    // JSON names the entry.
    fs::write(
        root.join("val.json"),
        r#"[{"image": "a.png", "label": "cat"}, {"image": "b.png", "label": "emu"}]"#,
    )
    .unwrap();
    let err = load_split(
        &DataSource::Csv(root.join("train.csv")),
        Some(&DataSource::Json(root.join("val.json"))),
        None,
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("val.json") && msg.contains("entry 1") && msg.contains("emu"));
}

#[test]
fn json_and_jsonl() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    fs::create_dir_all(root.join("m")).unwrap();
    fs::write(
        root.join("m/train.json"),
        r#"[
            {"image": "x/1.png", "label": "b"},
            {"image": "x/2.png", "label": "a", "extra": 3}
        ]"#,
    )
    .unwrap();
    fs::write(
        root.join("m/val.jsonl"),
        "{\"image\": \"y/1.png\", \"label\": \"a\"}\n\n{\"image\": \"/abs/2.png\", \"label\": \"b\"}\n",
    )
    .unwrap();
    let train_src = DataSource::detect(root.join("m/train.json")).unwrap();
    let val_src = DataSource::detect(root.join("m/val.jsonl")).unwrap();
    assert!(matches!(val_src, DataSource::Json(_)));
    let (train, val) = load_split(&train_src, Some(&val_src), None).unwrap();
    assert_eq!(train.classes, ["a", "b"]);
    let labels: Vec<(PathBuf, usize)> = train
        .samples
        .iter()
        .map(|s| (s.path.clone(), s.label))
        .collect();
    assert_eq!(
        labels,
        [(root.join("m/x/1.png"), 1), (root.join("m/x/2.png"), 0)]
    );
    let val = val.unwrap();
    assert_eq!(val.samples[0].path, root.join("m/y/1.png"));
    assert_eq!(val.samples[0].label, 0);
    // Absolute paths stay absolute.
    assert_eq!(val.samples[1].path, PathBuf::from("/abs/2.png"));

    // A malformed line is reported with its number.
    fs::write(
        root.join("m/bad.jsonl"),
        "{\"image\": \"a.png\", \"label\": \"a\"}\n{\"image\": 3}\n",
    )
    .unwrap();
    let err = load_split(&DataSource::Json(root.join("m/bad.jsonl")), None, None).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("bad.jsonl") && msg.contains("line 2"), "{msg}");
}

#[test]
fn detect_and_bad_inputs() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    fs::write(root.join("list.txt"), "x").unwrap();
    assert!(matches!(
        DataSource::detect(root.join("list.txt")),
        Err(DataError::UnknownSource(_))
    ));
    assert!(matches!(
        DataSource::detect(root.join("missing.csv")),
        Err(DataError::Io { .. })
    ));
    fs::write(root.join("h.csv"), "path,label\na.png,x\n").unwrap();
    let err = load_split(&DataSource::Csv(root.join("h.csv")), None, None).unwrap_err();
    assert!(err.to_string().contains("image_path"), "{err}");

    fs::write(root.join("ok.csv"), "image_path,label\na.png,x\n").unwrap();
    let dup = Some(vec!["x".into(), "x".into()]);
    let err = load_split(&DataSource::Csv(root.join("ok.csv")), None, dup).unwrap_err();
    assert!(matches!(err, DataError::InvalidClasses(_)), "{err:?}");
}
