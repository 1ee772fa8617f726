//! Time spent per kernel, recorded only while `INTERP_PROFILE` is set (and not `0`).
//! Kernels that call others (`sdpa`) count their inner kernels twice: once on their
//! own line and once inside the caller's.

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

static TABLE: Mutex<BTreeMap<&'static str, (Duration, u64)>> = Mutex::new(BTreeMap::new());

pub fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("INTERP_PROFILE").is_some_and(|v| v != "0"))
}

/// Adds the time until it is dropped to `name`'s line.
pub(super) struct Span(Option<(&'static str, Instant)>);

pub(super) fn span(name: &'static str) -> Span {
    Span(enabled().then(|| (name, Instant::now())))
}

impl Drop for Span {
    fn drop(&mut self) {
        if let Some((name, t)) = self.0 {
            let mut table = TABLE.lock().unwrap_or_else(|e| e.into_inner());
            let e = table.entry(name).or_default();
            e.0 += t.elapsed();
            e.1 += 1;
        }
    }
}

/// `(kernel, total time, calls)` recorded since the last call, longest first.
pub fn take() -> Vec<(&'static str, Duration, u64)> {
    let table = std::mem::take(&mut *TABLE.lock().unwrap_or_else(|e| e.into_inner()));
    let mut v: Vec<_> = table.into_iter().map(|(k, (d, n))| (k, d, n)).collect();
    v.sort_by_key(|e| std::cmp::Reverse(e.1));
    v
}
