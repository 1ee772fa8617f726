//! Helpers the benchmark examples share (not an example itself: Cargo only builds
//! `examples/*.rs` and `examples/*/main.rs`).

/// Peak resident set size of this process (VmHWM), in bytes; 0 where /proc is missing.
pub fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}
