//! Compressing the selected weights on worker threads while the program builder takes
//! them in its own order, and the statistics of what it took.

use std::collections::HashMap;
use std::sync::{Condvar, Mutex};

use serde::Serialize;

use super::{compress, Candidate, CompressError, CompressOptions, CompressedTensor, Method};
use crate::coreml::mil::DType;
use crate::coreml::target::Target;

/// What compression did to an export.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CompressStats {
    pub method: Method,
    pub settings: String,
    pub tensors: usize,
    /// Large enough but kept uncompressed (shape does not fit the method).
    pub skipped: Vec<String>,
    /// The compressed tensors' size as fp16.
    pub bytes_fp16: u64,
    /// Their size compressed (data, scales, palettes).
    pub bytes: u64,
}

type Slot = Option<Result<CompressedTensor, CompressError>>;

struct State {
    slots: Vec<Slot>,
    taken: Vec<bool>,
    /// Next index a worker starts.
    next: usize,
    /// Lowest index not yet taken.
    low: usize,
    done: bool,
    stats: CompressStats,
}

/// Compresses the selected weights on worker threads, at most a window of tensors ahead
/// of the one the program builder takes next (so memory stays bounded), and hands them
/// over by name.
pub struct Pipeline<'a> {
    items: Vec<(Candidate, &'a [u8])>,
    index: HashMap<String, usize>,
    opts: CompressOptions,
    dtype: DType,
    target: Target,
    window: usize,
    state: Mutex<State>,
    cv: Condvar,
}

impl<'a> Pipeline<'a> {
    /// `items`: the weights to compress, in the order they will be taken, with their
    /// little-endian float32 data.
    pub fn new(
        items: Vec<(Candidate, &'a [u8])>,
        opts: &CompressOptions,
        dtype: DType,
        target: Target,
        skipped: Vec<String>,
    ) -> Self {
        let n = items.len();
        let index = items
            .iter()
            .enumerate()
            .map(|(i, (c, _))| (c.name.clone(), i))
            .collect();
        Pipeline {
            items,
            index,
            opts: opts.clone(),
            dtype,
            target,
            window: 2 * threads(opts.threads),
            state: Mutex::new(State {
                slots: (0..n).map(|_| None).collect(),
                taken: vec![false; n],
                next: 0,
                low: 0,
                done: false,
                stats: CompressStats {
                    method: opts.method,
                    settings: opts.describe(),
                    tensors: 0,
                    skipped,
                    bytes_fp16: 0,
                    bytes: 0,
                },
            }),
            cv: Condvar::new(),
        }
    }

    fn compute(&self, i: usize) -> Result<CompressedTensor, CompressError> {
        let (c, bytes) = &self.items[i];
        let values = crate::checkpoint::le_f32(bytes);
        compress(&c.name, &c.shape, &values, &self.opts, self.dtype)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn work(&self) {
        loop {
            let i = {
                let mut st = self.lock();
                loop {
                    if st.done || st.next >= self.items.len() {
                        return;
                    }
                    if st.taken[st.next] {
                        st.next += 1;
                        continue;
                    }
                    if st.next < st.low + self.window {
                        break;
                    }
                    st = self.cv.wait(st).unwrap_or_else(|e| e.into_inner());
                }
                st.next += 1;
                st.next - 1
            };
            let r = self.compute(i);
            let mut st = self.lock();
            if !st.taken[i] {
                st.slots[i] = Some(r);
            }
            self.cv.notify_all();
        }
    }

    /// The compressed form of `name`, or `None` when it is not one of the selected
    /// weights (it then stays uncompressed).
    pub fn take(&self, name: &str) -> Option<Result<CompressedTensor, CompressError>> {
        let &i = self.index.get(name)?;
        let mut st = self.lock();
        let r = loop {
            if let Some(r) = st.slots[i].take() {
                break r;
            }
            // Not started and out of the workers' reach (taken out of order, or twice):
            // computed here.
            if st.taken[i] || (i >= st.next && i >= st.low + self.window) {
                st.taken[i] = true;
                drop(st);
                let r = self.compute(i);
                st = self.lock();
                break r;
            }
            st = self.cv.wait(st).unwrap_or_else(|e| e.into_inner());
        };
        st.taken[i] = true;
        while st.low < st.taken.len() && st.taken[st.low] {
            st.low += 1;
        }
        if let Ok(t) = &r {
            st.stats.tensors += 1;
            st.stats.bytes_fp16 += 2 * t.numel() as u64;
            st.stats.bytes += t.stored_bytes(self.target);
        }
        self.cv.notify_all();
        Some(r)
    }

    /// Stops the workers.
    fn finish(&self) {
        self.lock().done = true;
        self.cv.notify_all();
    }

    pub fn stats(&self) -> CompressStats {
        self.lock().stats.clone()
    }

    /// Runs `f` with the workers compressing in the background; returns its result and
    /// the statistics of what `f` took.
    pub fn run<R>(&self, f: impl FnOnce(&Self) -> R) -> (R, CompressStats) {
        struct Stop<'p, 'a>(&'p Pipeline<'a>);
        impl Drop for Stop<'_, '_> {
            fn drop(&mut self) {
                self.0.finish();
            }
        }
        let workers = threads(self.opts.threads).min(self.items.len()).max(1);
        let r = std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(|| self.work());
            }
            let _stop = Stop(self);
            f(self)
        });
        (r, self.stats())
    }
}

fn threads(n: usize) -> usize {
    if n > 0 {
        n
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coreml::compress::values;

    #[test]
    fn pipeline_order_and_threads_do_not_matter() {
        let data: Vec<Vec<u8>> = (0..9)
            .map(|k| {
                values(256 + 64 * k)
                    .iter()
                    .flat_map(|x| x.to_le_bytes())
                    .collect()
            })
            .collect();
        fn items(d: &[Vec<u8>]) -> Vec<(Candidate, &[u8])> {
            d.iter()
                .enumerate()
                .map(|(k, b)| {
                    (
                        Candidate {
                            name: format!("w{k}"),
                            shape: vec![4 + k, 64],
                        },
                        b.as_slice(),
                    )
                })
                .collect()
        }
        let mut o = CompressOptions::new(Method::Palette(4));
        o.min_elements = 0;
        let mut results = Vec::new();
        for threads in [1usize, 3, 8] {
            o.threads = threads;
            let p = Pipeline::new(items(&data), &o, DType::F16, Target::Ios16, Vec::new());
            // Taken out of order, one twice, one unknown.
            let (got, stats) = p.run(|p| {
                let mut v: Vec<CompressedTensor> = [8usize, 0, 1, 2, 3, 4, 5, 6, 7, 3]
                    .iter()
                    .map(|k| p.take(&format!("w{k}")).unwrap().unwrap())
                    .collect();
                assert!(p.take("other").is_none());
                v.sort_by(|a, b| a.name.cmp(&b.name));
                v
            });
            assert_eq!(stats.tensors, 10);
            results.push(got);
        }
        assert_eq!(results[0], results[1]);
        assert_eq!(results[0], results[2]);
    }
}
