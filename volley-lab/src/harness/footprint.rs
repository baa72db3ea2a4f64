//! What a process holds, from `/proc`: its resident memory (`VmRSS`) and its open descriptors.

use std::path::PathBuf;

/// `/proc/PID`, or `/proc/self` for this process (readable even where other processes' are not).
pub fn proc_dir(pid: u32) -> PathBuf {
    if pid == std::process::id() {
        PathBuf::from("/proc/self")
    } else {
        PathBuf::from(format!("/proc/{pid}"))
    }
}

/// Resident memory of process `pid` (`VmRSS`), in kB; `None` when it cannot be read.
pub fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(proc_dir(pid).join("status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Descriptors process `pid` holds open; 0 when they cannot be listed.
pub fn open_fds(pid: u32) -> u64 {
    std::fs::read_dir(proc_dir(pid).join("fd")).map_or(0, |d| d.count() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_resident_memory_and_open_descriptors() {
        let me = std::process::id();
        assert!(rss_kb(me).is_some_and(|kb| kb > 0));
        assert!(open_fds(me) >= 3, "stdin, stdout, stderr at least");
        assert_eq!(rss_kb(u32::MAX), None, "no such process");
    }
}
