//! The batch loader: shapes and values, reproducibility, resuming, bad images, and
//! stopping early.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use image::{Rgb, RgbImage};
use mlx_coreml_pipeline::config::Preprocess;
use mlx_coreml_pipeline::data::{
    Augment, BadImages, Batch, DataError, Dataset, Loader, LoaderOptions, Sample,
};
use mlx_coreml_pipeline::imaging;

/// A small deterministic pattern generator, so test images differ from one another.
fn pattern(w: u32, h: u32, seed: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        let v = x
            .wrapping_mul(31)
            .wrapping_add(y.wrapping_mul(17))
            .wrapping_add(seed.wrapping_mul(101));
        Rgb([
            (v % 251) as u8,
            ((v / 3) % 253) as u8,
            ((v * 7) % 255) as u8,
        ])
    })
}

/// `n` images of varying sizes in `dir`, labels cycling over 3 classes.
fn dataset(dir: &Path, n: usize) -> Dataset {
    let samples = (0..n)
        .map(|i| {
            let path = dir.join(format!("{i:03}.png"));
            let (w, h) = (24 + (i as u32 * 7) % 29, 20 + (i as u32 * 5) % 31);
            pattern(w, h, i as u32).save(&path).unwrap();
            Sample { path, label: i % 3 }
        })
        .collect();
    Dataset {
        classes: vec!["a".into(), "b".into(), "c".into()],
        samples,
    }
}

fn opts(batch_size: usize, size: usize) -> LoaderOptions {
    LoaderOptions {
        batch_size,
        image_size: size,
        resize_shorter: size + size / 7,
        ..LoaderOptions::default()
    }
}

fn collect(loader: &Loader, epoch: u64, start: usize) -> Vec<Batch> {
    loader
        .epoch(epoch, start)
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
}

#[test]
fn shape_and_normalisation_match_a_hand_computation() {
    let tmp = tempfile::tempdir().unwrap();
    // 4x4 black image with one known pixel; resize_shorter = size = 4 makes the eval
    // transform the identity, so the pixel must land exactly at (row 2, col 1).
    let mut img = RgbImage::new(4, 4);
    img.put_pixel(1, 2, Rgb([255, 128, 0]));
    let path = tmp.path().join("p.png");
    img.save(&path).unwrap();
    let ds = Dataset {
        classes: vec!["only".into()],
        samples: vec![
            Sample {
                path: path.clone(),
                label: 0,
            };
            3
        ],
    };
    let o = LoaderOptions {
        batch_size: 2,
        image_size: 4,
        resize_shorter: 4,
        mean: [0.5, 0.25, 0.125],
        std: [0.5, 0.25, 2.0],
        ..LoaderOptions::default()
    };
    let loader = Loader::new(Arc::new(ds), o).unwrap();
    assert_eq!(loader.num_batches(), 2);
    let batches = collect(&loader, 0, 0);
    assert_eq!(batches.len(), 2);
    assert_eq!(batches[0].shape(), [2, 3, 4, 4]);
    assert_eq!(batches[1].shape(), [1, 3, 4, 4]);
    assert_eq!(batches[0].pixels.len(), 2 * 3 * 16);
    assert_eq!(batches[0].labels, [0, 0]);
    assert_eq!(batches[0].indices, [0, 1]);
    assert_eq!(batches[1].indices, [2]);

    let p = &batches[1].pixels;
    let at = |c: usize, y: usize, x: usize| p[c * 16 + y * 4 + x];
    // (v / 255 - mean) / std, by hand.
    assert_eq!(at(0, 2, 1), (1.0 - 0.5) / 0.5);
    assert_eq!(at(1, 2, 1), (128.0f32 / 255.0 - 0.25) / 0.25);
    assert_eq!(at(2, 2, 1), (0.0 - 0.125) / 2.0);
    // 128 / 255 = 0.501961; (0.501961 - 0.25) / 0.25 = 1.007843.
    assert!((at(1, 2, 1) - 1.007843).abs() < 1e-6);
    // A black pixel elsewhere.
    assert_eq!(at(0, 0, 0), -1.0);
    assert_eq!(at(1, 3, 3), -1.0);
    assert_eq!(at(2, 1, 2), -0.0625);
}

#[test]
fn grayscale_and_alpha_become_three_channels() {
    let tmp = tempfile::tempdir().unwrap();
    let la = tmp.path().join("la.png");
    image::GrayAlphaImage::from_pixel(3, 3, image::LumaA([100, 40]))
        .save(&la)
        .unwrap();
    let l = tmp.path().join("l.png");
    image::GrayImage::from_pixel(3, 3, image::Luma([200]))
        .save(&l)
        .unwrap();
    let rgba = tmp.path().join("rgba.png");
    image::RgbaImage::from_pixel(3, 3, image::Rgba([10, 20, 30, 0]))
        .save(&rgba)
        .unwrap();
    let ds = Dataset {
        classes: vec!["x".into()],
        samples: [&la, &l, &rgba]
            .iter()
            .map(|p| Sample {
                path: p.to_path_buf(),
                label: 0,
            })
            .collect(),
    };
    let o = LoaderOptions {
        batch_size: 3,
        image_size: 3,
        resize_shorter: 3,
        mean: [0.0; 3],
        std: [1.0; 3],
        ..LoaderOptions::default()
    };
    let b = collect(&Loader::new(Arc::new(ds), o).unwrap(), 0, 0).remove(0);
    assert_eq!(b.shape(), [3, 3, 3, 3]);
    let expect = |img: usize, c: usize, v: u8| {
        let plane = &b.pixels[(img * 3 + c) * 9..(img * 3 + c + 1) * 9];
        assert!(
            plane.iter().all(|&x| x == f32::from(v) / 255.0),
            "{plane:?}"
        );
    };
    for c in 0..3 {
        expect(0, c, 100);
        expect(1, c, 200);
    }
    // Alpha is dropped, not premultiplied.
    expect(2, 0, 10);
    expect(2, 1, 20);
    expect(2, 2, 30);
}

#[test]
fn eval_matches_imaging_eval_transform() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = dataset(tmp.path(), 5);
    let o = opts(5, 16);
    let pre = Preprocess {
        mean: o.mean,
        std: o.std,
        resize_shorter: o.resize_shorter,
    };
    let mut expected = Vec::new();
    for s in &ds.samples {
        let img = imaging::load_rgb(&s.path).unwrap();
        imaging::normalise_into(&imaging::eval_transform(&img, 18, 16), &pre, &mut expected);
    }
    let b = collect(&Loader::new(Arc::new(ds), o).unwrap(), 0, 0).remove(0);
    assert_eq!(b.pixels, expected);
}

fn train_opts(seed: u64, workers: usize) -> LoaderOptions {
    LoaderOptions {
        augment: Augment::TRAIN,
        shuffle: true,
        seed,
        workers,
        prefetch: 3,
        ..opts(4, 16)
    }
}

#[test]
fn same_seed_same_batches_whatever_the_workers() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = Arc::new(dataset(tmp.path(), 22));
    let run = |seed, workers, epoch| {
        collect(
            &Loader::new(Arc::clone(&ds), train_opts(seed, workers)).unwrap(),
            epoch,
            0,
        )
    };
    let a = run(7, 2, 0);
    assert_eq!(a.len(), 6);
    assert_eq!(
        a.last().unwrap().len(),
        2,
        "no drop_last: partial last batch"
    );
    // Bit for bit, with 0, 1, 2 and 3 workers.
    assert_eq!(a, run(7, 2, 0));
    assert_eq!(a, run(7, 0, 0));
    assert_eq!(a, run(7, 1, 0));
    assert_eq!(a, run(7, 3, 0));

    let order = |bs: &[Batch]| {
        bs.iter()
            .flat_map(|b| b.indices.clone())
            .collect::<Vec<_>>()
    };
    let mut sorted = order(&a);
    sorted.sort();
    assert_eq!(sorted, (0..22).collect::<Vec<_>>(), "each sample once");
    // Another seed or another epoch reshuffles.
    assert_ne!(order(&a), order(&run(8, 2, 0)));
    assert_ne!(order(&a), order(&run(7, 2, 1)));
    // Labels follow the samples.
    for b in &a {
        for (l, i) in b.labels.iter().zip(&b.indices) {
            assert_eq!(*l as usize, i % 3);
        }
    }
}

#[test]
fn augmentation_depends_on_epoch_and_can_be_switched_off() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = Arc::new(dataset(tmp.path(), 4));
    let pixels_of = |aug: Augment, epoch: u64| {
        let o = LoaderOptions {
            augment: aug,
            ..opts(4, 16)
        };
        collect(&Loader::new(Arc::clone(&ds), o).unwrap(), epoch, 0)
            .remove(0)
            .pixels
    };
    let none = pixels_of(Augment::NONE, 0);
    assert_eq!(none, pixels_of(Augment::NONE, 1));
    let train0 = pixels_of(Augment::TRAIN, 0);
    assert_ne!(train0, none);
    assert_ne!(train0, pixels_of(Augment::TRAIN, 1));
    let flip_only = Augment {
        random_resized_crop: false,
        hflip: true,
    };
    // Flip only: every image is the eval image or its mirror.
    let f = pixels_of(flip_only, 0);
    let s = 16;
    for plane in 0..4 * 3 {
        for y in 0..s {
            let row = |v: &[f32]| v[plane * s * s + y * s..plane * s * s + (y + 1) * s].to_vec();
            let (got, eval) = (row(&f), row(&none));
            let mut mirrored = eval.clone();
            mirrored.reverse();
            assert!(got == eval || got == mirrored);
        }
    }
}

#[test]
fn resume_gives_the_rest_of_the_uninterrupted_epoch() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = Arc::new(dataset(tmp.path(), 19));
    let loader = Loader::new(Arc::clone(&ds), train_opts(3, 2)).unwrap();
    let full = collect(&loader, 4, 0);
    assert_eq!(full.len(), 5);
    for k in 0..=full.len() {
        let rest = collect(&loader, 4, k);
        assert_eq!(rest, full[k..], "resume at batch {k}");
    }
    // A resumed run with another worker count agrees too.
    let other = Loader::new(ds, train_opts(3, 0)).unwrap();
    assert_eq!(collect(&other, 4, 3), full[3..]);
    // Past the end: one error, then nothing.
    let mut it = loader.epoch(4, 6);
    assert!(matches!(
        it.next(),
        Some(Err(DataError::StartBeyondEpoch { .. }))
    ));
    assert!(it.next().is_none());
}

#[test]
fn drop_last_and_option_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = Arc::new(dataset(tmp.path(), 10));
    let o = LoaderOptions {
        drop_last: true,
        ..opts(4, 8)
    };
    let loader = Loader::new(Arc::clone(&ds), o.clone()).unwrap();
    assert_eq!(loader.num_batches(), 2);
    assert!(collect(&loader, 0, 0).iter().all(|b| b.len() == 4));
    let too_big = LoaderOptions {
        batch_size: 11,
        ..o.clone()
    };
    assert!(Loader::new(Arc::clone(&ds), too_big).is_err());
    let zero = LoaderOptions {
        batch_size: 0,
        ..o.clone()
    };
    assert!(Loader::new(Arc::clone(&ds), zero).is_err());
    let bad_std = LoaderOptions {
        std: [1.0, 0.0, 1.0],
        ..o.clone()
    };
    assert!(Loader::new(Arc::clone(&ds), bad_std).is_err());
    // A hand-built dataset with a label outside its class list.
    let mut bad_label = (*ds).clone();
    bad_label.samples[3].label = 3;
    let err = Loader::new(Arc::new(bad_label), o).err().unwrap();
    assert!(err.to_string().contains("003.png"), "{err}");
}

fn with_corrupt(dir: &Path) -> (Dataset, PathBuf) {
    let mut ds = dataset(dir, 9);
    let bad = dir.join("corrupt.png");
    fs::write(&bad, b"\x89PNG\r\n\x1a\nnot really a png").unwrap();
    ds.samples[4].path = bad.clone();
    (ds, bad)
}

#[test]
fn corrupt_image_fails_with_its_path() {
    let tmp = tempfile::tempdir().unwrap();
    let (ds, bad) = with_corrupt(tmp.path());
    for workers in [0, 2] {
        let o = LoaderOptions {
            workers,
            ..opts(3, 8)
        };
        let loader = Loader::new(Arc::new(ds.clone()), o).unwrap();
        let results: Vec<_> = loader.epoch(0, 0).collect();
        // Batch 0 fine, batch 1 (samples 3..6) holds the bad image; then the epoch ends.
        assert_eq!(results.len(), 2, "workers {workers}");
        assert!(results[0].is_ok());
        let err = results[1].as_ref().unwrap_err();
        assert!(matches!(err, DataError::Image(_)), "{err:?}");
        assert!(
            err.to_string().contains(&bad.display().to_string()),
            "{err}"
        );
    }
}

#[test]
fn corrupt_image_skipped_and_counted() {
    let tmp = tempfile::tempdir().unwrap();
    let (ds, bad) = with_corrupt(tmp.path());
    // A missing file is skipped the same way.
    let mut ds = ds;
    let missing = tmp.path().join("gone.png");
    ds.samples[8].path = missing.clone();
    let o = LoaderOptions {
        bad_images: BadImages::Skip,
        ..opts(3, 8)
    };
    let loader = Loader::new(Arc::new(ds), o).unwrap();
    let batches = collect(&loader, 0, 0);
    let sizes: Vec<usize> = batches.iter().map(Batch::len).collect();
    assert_eq!(sizes, [3, 2, 2]);
    assert_eq!(batches[1].indices, [3, 5]);
    assert_eq!(batches[1].skipped, std::slice::from_ref(&bad));
    assert_eq!(batches[1].pixels.len(), 2 * 3 * 8 * 8);
    let stats = loader.stats();
    assert_eq!(stats.skipped, [bad, missing]);
    assert_eq!(stats.images, 7);
    assert_eq!(stats.batches, 3);
    // take_stats resets.
    assert_eq!(loader.take_stats().batches, 3);
    assert_eq!(loader.stats().batches, 0);
}

#[test]
fn all_skipped_batch_is_passed_over_but_keeps_numbering() {
    let tmp = tempfile::tempdir().unwrap();
    let mut ds = dataset(tmp.path(), 6);
    for i in 2..4 {
        ds.samples[i].path = tmp.path().join(format!("missing{i}.png"));
    }
    let o = LoaderOptions {
        bad_images: BadImages::Skip,
        ..opts(2, 8)
    };
    let loader = Loader::new(Arc::new(ds), o).unwrap();
    let idx: Vec<usize> = collect(&loader, 0, 0).iter().map(|b| b.index).collect();
    assert_eq!(idx, [0, 2]);
    assert_eq!(loader.stats().skipped.len(), 2);
}

#[test]
fn wait_time_is_tracked() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = Arc::new(dataset(tmp.path(), 6));
    let o = LoaderOptions {
        workers: 0,
        ..opts(2, 64)
    };
    let loader = Loader::new(ds, o).unwrap();
    assert_eq!(loader.wait_seconds(), 0.0);
    collect(&loader, 0, 0);
    // With no workers every decode happens inside next(), so it all counts as waiting.
    assert!(loader.wait_seconds() > 0.0);
}

#[test]
fn dropping_mid_epoch_returns_promptly() {
    let tmp = tempfile::tempdir().unwrap();
    // Large images so a full epoch takes far longer than the drop is allowed to.
    let samples: Vec<Sample> = (0..4)
        .map(|i| {
            let path = tmp.path().join(format!("big{i}.png"));
            pattern(900, 700, i).save(&path).unwrap();
            Sample { path, label: 0 }
        })
        .collect();
    let many = Dataset {
        classes: vec!["x".into()],
        samples: samples.iter().cycle().take(400).cloned().collect(),
    };
    let o = LoaderOptions {
        augment: Augment::TRAIN,
        shuffle: true,
        workers: 2,
        prefetch: 2,
        ..opts(8, 224)
    };
    let loader = Loader::new(Arc::new(many), o).unwrap();

    let full_batch = {
        let t = Instant::now();
        let mut it = loader.epoch(0, 0);
        it.next().unwrap().unwrap();
        let first = t.elapsed();
        // Let the queues fill and the workers block on them.
        std::thread::sleep(first * 2);
        let t = Instant::now();
        drop(it);
        assert!(
            t.elapsed() < first.max(Duration::from_millis(200)) * 2,
            "drop took {:?}, one batch {first:?}",
            t.elapsed()
        );
        first
    };
    // Dropped before the first batch, while workers are busy decoding.
    let t = Instant::now();
    let it = loader.epoch(1, 0);
    std::thread::sleep(Duration::from_millis(5));
    drop(it);
    assert!(t.elapsed() < full_batch.max(Duration::from_millis(200)) * 2);
    // Dropped without ever being polled and with no workers.
    drop(loader.epoch(2, 50));
}
