//! The CPU thread count, resolved once per process.
//!
//! candle 0.11 looks its thread count up on every matrix product: with `RAYON_NUM_THREADS`
//! unset it counts physical cores by reading `/proc/cpuinfo`, ~26 us per call, which is 8 % of a
//! `generate` whose attention runs thousands of tiny products per step. Exporting the resolved
//! count into `RAYON_NUM_THREADS` makes every later lookup a cheap environment read, and gives
//! rayon's pool (which this crate's ops share) the same size.
//!
//! candle also keeps a pool of its own for element-wise ops, whose workers spin between
//! operations. When the process samples ([`Workload::Inference`]), the heavy work runs in this
//! crate's ops and the matrix products on rayon, and that second pool only competes with
//! rayon for the same cores: it is sized to the calling thread alone (`CANDLE_NUM_THREADS=1`).
//! Measured with `vidcascade generate` on 2 cores, six alternating runs each: median 1.4 s
//! instead of 1.7 s. Training runs candle's element-wise ops everywhere and keeps its pool.

use std::sync::OnceLock;

static RESOLVED: OnceLock<usize> = OnceLock::new();

/// What a process mostly runs, which decides how candle's own pool is sized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// Sampling through this crate's ops (services, `generate`, evaluation).
    Inference,
    /// Training through candle's composed ops.
    Training,
}

/// Resolves the number of compute threads (`RAYON_NUM_THREADS` if set, else candle's default:
/// the physical cores, or `CANDLE_CPU_MASK`), exports it so the lookup is not repeated, and
/// for [`Workload::Inference`] keeps candle's element-wise pool to the calling thread (unless
/// `CANDLE_NUM_THREADS` is set).
///
/// Call it first thing in `main`. The exports only happen while the process still has one
/// thread (checked, since changing the environment while another thread reads it is undefined);
/// later calls, or calls from a multi-threaded process, just return the count.
pub fn configure_threads(workload: Workload) -> usize {
    *RESOLVED.get_or_init(|| {
        let count = candle_core::utils::get_num_threads();
        if single_threaded() {
            export_unless_set("RAYON_NUM_THREADS", &count.to_string());
            if workload == Workload::Inference {
                export_unless_set("CANDLE_NUM_THREADS", "1");
            }
        }
        count
    })
}

fn export_unless_set(name: &str, value: &str) {
    if std::env::var_os(name).is_none() {
        // SAFETY: only called after `single_threaded` saw this process with exactly one thread,
        // the one running this code, so no other thread can read or write the environment.
        unsafe { std::env::set_var(name, value) };
    }
}

/// Whether the process has exactly one thread (Linux: `Threads:` of `/proc/self/status`).
fn single_threaded() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("Threads:"))
                .map(|n| n.trim() == "1")
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_count_is_positive_and_stable() {
        let first = configure_threads(Workload::Inference);
        assert!(first >= 1);
        assert_eq!(configure_threads(Workload::Training), first);
    }

    #[test]
    fn a_test_process_is_not_single_threaded() {
        // The test harness runs tests on worker threads, so the export must be skipped here.
        let spawned = std::thread::spawn(single_threaded);
        assert_eq!(spawned.join().ok(), Some(false));
    }
}
