//! Data loader throughput: decode + random resized crop + flip + normalise, in images per
//! second, with 1 and 2 worker threads.
//!
//! ```sh
//! python3 scripts/make_digits_dataset.py runs/digits
//! cargo run --release --no-default-features --example bench_data -- runs/digits [SIZE] [EPOCHS]
//! ```

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use mlx_coreml_pipeline::data::{load_split, Augment, DataSource, Loader, LoaderOptions};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let root = PathBuf::from(args.next().unwrap_or_else(|| "runs/digits".into()));
    let size: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(224);
    let epochs: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(2);
    if !root.is_dir() {
        anyhow::bail!(
            "{} not found: run `python3 scripts/make_digits_dataset.py {}` first",
            root.display(),
            root.display()
        );
    }
    let (train, _) = load_split(&DataSource::detect(&root)?, None, None)?;
    let train = Arc::new(train);
    println!(
        "{}: {} training images, {} classes, output {size}x{size}, batch 32, {epochs} epochs",
        root.display(),
        train.len(),
        train.classes.len()
    );

    for (name, augment) in [("eval", Augment::NONE), ("train", Augment::TRAIN)] {
        for workers in [1, 2] {
            let opts = LoaderOptions {
                batch_size: 32,
                image_size: size,
                resize_shorter: size * 8 / 7,
                augment,
                shuffle: true,
                workers,
                prefetch: 4,
                ..LoaderOptions::default()
            };
            let loader = Loader::new(Arc::clone(&train), opts)?;
            // One untimed batch so the file cache and allocator are warm.
            loader.epoch(99, 0).next().transpose()?;
            loader.take_stats();
            let start = Instant::now();
            let mut images = 0usize;
            for epoch in 0..epochs {
                for batch in loader.epoch(epoch, 0) {
                    images += batch?.len();
                }
            }
            let secs = start.elapsed().as_secs_f64();
            println!(
                "{name:5} workers={workers}: {images} images in {secs:.2} s = {:.0} images/s (consumer waited {:.2} s)",
                images as f64 / secs,
                loader.wait_seconds()
            );
        }
    }
    Ok(())
}
