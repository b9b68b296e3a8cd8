//! The CPU thread count, resolved once per process.
//!
//! candle 0.11 looks its thread count up on every matrix product: with `RAYON_NUM_THREADS`
//! unset it counts physical cores by reading `/proc/cpuinfo`, ~26 us per call, which is 8 % of a
//! `generate` whose attention runs thousands of tiny products per step. Exporting the resolved
//! count into `RAYON_NUM_THREADS` makes every later lookup a cheap environment read, and gives
//! rayon's pool (which this crate's ops share) the same size.

use std::sync::OnceLock;

static RESOLVED: OnceLock<usize> = OnceLock::new();

/// Resolves the number of compute threads (`RAYON_NUM_THREADS` if set, else candle's default:
/// the physical cores, or `CANDLE_CPU_MASK`) and exports it so the lookup is not repeated.
///
/// Call it first thing in `main`. The export only happens while the process still has one
/// thread (checked, since changing the environment while another thread reads it is undefined);
/// later calls, or calls from a multi-threaded process, just return the count.
pub fn resolve_thread_count() -> usize {
    *RESOLVED.get_or_init(|| {
        let count = candle_core::utils::get_num_threads();
        if std::env::var_os("RAYON_NUM_THREADS").is_none() && single_threaded() {
            // SAFETY: `single_threaded` saw this process with exactly one thread, the one
            // running this code, so no other thread can read or write the environment now.
            unsafe { std::env::set_var("RAYON_NUM_THREADS", count.to_string()) };
        }
        count
    })
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
        let first = resolve_thread_count();
        assert!(first >= 1);
        assert_eq!(resolve_thread_count(), first);
    }

    #[test]
    fn a_test_process_is_not_single_threaded() {
        // The test harness runs tests on worker threads, so the export must be skipped here.
        let spawned = std::thread::spawn(single_threaded);
        assert_eq!(spawned.join().ok(), Some(false));
    }
}
