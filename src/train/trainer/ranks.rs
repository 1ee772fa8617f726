//! What data-parallel training adds to the run: the checks every rank makes before the
//! first step, its share of the CPU, and its own dropout stream.

use mlx_rs::Array;
use sha2::{Digest, Sha256};

use super::{Plan, State};
use crate::distributed::Group;
use crate::train::lanes::{self, Lanes};
use crate::train::{TrainConfig, TrainError};

/// The global batch must split evenly: every rank computes the same number of images.
pub(super) fn validate(cfg: &TrainConfig, group: &Group) -> Result<(), TrainError> {
    let n = group.size();
    if cfg.batch_size % n != 0 {
        return Err(TrainError::Settings(format!(
            "batch size {} (the global batch) does not divide over {n} ranks; use a multiple of {n}",
            cfg.batch_size
        )));
    }
    Ok(())
}

/// The lanes of this rank: its share of the host's cores, as the host's ranks split
/// them (`cpu_threads` 0 = the share, else as given).
pub(super) fn lanes(cfg: &TrainConfig, group: &Group) -> Lanes {
    if group.local_ranks() <= 1 {
        return Lanes::for_default_device(cfg.cpu_threads);
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let share = (cores / group.local_ranks()).max(1);
    let threads = if cfg.cpu_threads == 0 {
        share
    } else {
        cfg.cpu_threads
    };
    // One lane still runs BLAS on as many threads as there are cores: ranks sharing
    // them would fight over them.
    lanes::set_blas_threads(threads);
    Lanes::for_default_device(threads)
}

/// The dropout seed of a step on this rank: rank 0's is the single-process one, other
/// ranks draw other masks (as other images do).
pub(super) fn dropout_seed(seed: u64, step: usize, rank: usize) -> u64 {
    let s = seed.wrapping_mul(1_000_003).wrapping_add(step as u64);
    if rank == 0 {
        s
    } else {
        (s ^ 0x5851_F42D_4C95_7F2D).wrapping_mul(0x9E37_79B9_7F4A_7C15 ^ rank as u64)
    }
}

/// Checks that every rank runs the same binary with the same settings from the same
/// step: a mismatch would otherwise show as a hang or silently different updates. Each
/// rank puts its hash in its own row and the rows are summed over the ranks.
pub(super) fn check_same_start(group: &Group, plan: &Plan, st: &State) -> Result<(), TrainError> {
    if !group.is_distributed() {
        return Ok(());
    }
    let mine = settings_hash(plan, st);
    let (n, width) = (group.size(), mine.len());
    let mut rows = vec![0i32; n * width];
    rows[group.rank() * width..][..width].copy_from_slice(&mine);
    let local = Array::from_slice(&rows, &[(n * width) as i32]);
    let all = group.all_sum(&local)?;
    group.eval(
        "the start-up check with the other ranks",
        std::slice::from_ref(&all),
    )?;
    let all: &[i32] = all.as_slice();
    let differ: Vec<String> = (0..n)
        .filter(|r| all[r * width..][..width] != mine[..])
        .map(|r| r.to_string())
        .collect();
    if differ.is_empty() {
        return Ok(());
    }
    Err(TrainError::Settings(format!(
        "rank {}: ranks {} run another binary, other settings or another resume step than this one; \
         start every rank with the same `pipeline` and arguments",
        group.rank(),
        differ.join(", ")
    )))
}

/// 16-bit pieces of a SHA-256 over the binary, the settings, the base and the step
/// (16-bit so that the sum of one row and zeros can never overflow).
fn settings_hash(plan: &Plan, st: &State) -> Vec<i32> {
    let mut h = Sha256::new();
    if let Ok(bytes) = std::env::current_exe().and_then(std::fs::read) {
        h.update(&bytes);
    }
    h.update(serde_json::to_vec(&plan.cfg).unwrap_or_default());
    h.update(plan.base_hash.as_bytes());
    h.update(plan.classes.join("\n").as_bytes());
    h.update(st.counters.step.to_le_bytes());
    h.finalize()
        .chunks_exact(2)
        .map(|c| i32::from(u16::from_le_bytes([c[0], c[1]])))
        .collect()
}
