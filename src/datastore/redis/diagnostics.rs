//! Trove's management diagnostics: `get_diagnostics` (the agent process, from /proc/self/status) and `get_hwinfo` (memory and CPUs).

use std::path::Path;

use serde_json::{json, Value};

use crate::datastore::{Error, Result};

/// `get_diagnostics`: what Trove's `DiagnosticsView` shows, for the agent's own process. Sizes are
/// in kB, as the kernel reports them; `version` is the agent's.
pub fn diagnostics() -> Result<Value> {
    let path = Path::new("/proc/self/status");
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    from_status(&text).map_err(|field| Error::io(path, format!("no {field} line")))
}

/// The diagnostics from the text of a `/proc/<pid>/status` file; Err names a missing field.
fn from_status(text: &str) -> Result<Value, &'static str> {
    let field = |name: &'static str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .ok_or(name)
    };
    Ok(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "fd_size": field("FDSize")?,
        "vm_size": field("VmSize")?,
        "vm_peak": field("VmPeak")?,
        "vm_rss": field("VmRSS")?,
        "vm_hwm": field("VmHWM")?,
        "threads": field("Threads")?,
    }))
}

/// `get_hwinfo`: what Trove's `HwInfoView` shows: `mem_total` in kB (the cgroup's memory limit
/// when it is lower, as in a container) and `num_cpus`, the online CPUs.
pub fn hwinfo() -> Result<Value> {
    let path = Path::new("/proc/meminfo");
    let meminfo = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut mem_total = mem_total_kb(&meminfo).ok_or_else(|| Error::io(path, "no MemTotal line"))?;
    if let Some(limit) = cgroup_memory_limit_kb() {
        mem_total = mem_total.min(limit);
    }
    let num_cpus = std::fs::read_to_string("/sys/devices/system/cpu/online")
        .ok()
        .and_then(|t| count_cpus(&t))
        .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get() as u64))
        .unwrap_or(1);
    Ok(json!({"mem_total": mem_total, "num_cpus": num_cpus}))
}

/// The number of CPUs in a kernel CPU list (`0-3,5`).
fn count_cpus(list: &str) -> Option<u64> {
    let mut n = 0;
    for part in list.trim().split(',').filter(|p| !p.is_empty()) {
        n += match part.split_once('-') {
            Some((a, b)) => b.parse::<u64>().ok()?.checked_sub(a.parse::<u64>().ok()?)? + 1,
            None => part.parse::<u64>().map(|_| 1).ok()?,
        };
    }
    (n > 0).then_some(n)
}

fn mem_total_kb(meminfo: &str) -> Option<u64> {
    meminfo.lines().find_map(|l| l.strip_prefix("MemTotal:"))?.split_whitespace().next()?.parse().ok()
}

/// The memory limit of this process's cgroup (v2 `memory.max`), in kB; None when unlimited or unknown.
fn cgroup_memory_limit_kb() -> Option<u64> {
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let rel = cgroup.lines().find_map(|l| l.strip_prefix("0::"))?.trim_start_matches('/');
    let max = std::fs::read_to_string(Path::new("/sys/fs/cgroup").join(rel).join("memory.max")).ok()?;
    parse_memory_max(&max)
}

fn parse_memory_max(text: &str) -> Option<u64> {
    text.trim().parse::<u64>().ok().map(|bytes| bytes / 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_fields_as_trove_names_them() {
        let text = "Name:\ttrove-guestage\nFDSize:\t64\nVmPeak:\t   29160 kB\nVmSize:\t   29096 kB\nVmHWM:\t    2872 kB\nVmRSS:\t    2872 kB\nThreads:\t2\n";
        let d = from_status(text).unwrap();
        assert_eq!(d["fd_size"], 64);
        assert_eq!(d["vm_size"], 29096);
        assert_eq!(d["vm_peak"], 29160);
        assert_eq!(d["vm_rss"], 2872);
        assert_eq!(d["vm_hwm"], 2872);
        assert_eq!(d["threads"], 2);
        assert_eq!(d["version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(from_status("FDSize:\t64\n").unwrap_err(), "VmSize");
    }

    #[test]
    fn this_process_has_diagnostics_and_hardware() {
        let d = diagnostics().unwrap();
        assert!(d["threads"].as_u64().unwrap() >= 1);
        assert!(d["vm_hwm"].as_u64().unwrap() >= d["vm_rss"].as_u64().unwrap() / 2);
        let h = hwinfo().unwrap();
        assert!(h["mem_total"].as_u64().unwrap() > 1024);
        assert!(h["num_cpus"].as_u64().unwrap() >= 1);
    }

    #[test]
    fn meminfo_and_cgroup_limits() {
        assert_eq!(mem_total_kb("MemTotal:       16318708 kB\nMemFree: 1 kB\n"), Some(16318708));
        assert_eq!(parse_memory_max("max\n"), None);
        assert_eq!(count_cpus("0-3,5\n"), Some(5));
        assert_eq!(count_cpus("0\n"), Some(1));
        assert_eq!(count_cpus("3-1"), None);
        assert_eq!(parse_memory_max("536870912\n"), Some(524288));
    }
}
