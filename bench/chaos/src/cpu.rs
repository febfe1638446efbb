//! How much CPU the rest of the machine is using, so a run disturbed by
//! other work (a build, another benchmark) can be told from a slow proxy.
//! Everything here runs in this one process, so "the rest" is every other
//! process: the machine's busy time less ours.

/// Linux reports both files in USER_HZ, 100 per second everywhere that
/// matters (it is fixed by the kernel ABI, not by the tick rate).
pub const TICKS_PER_SECOND: f64 = 100.0;

/// CPU ticks spent so far by every other process, or 0 where `/proc` is
/// missing (the column then reads 0).
pub fn others_ticks() -> u64 {
    machine_busy()
        .zip(own())
        .map_or(0, |(all, own)| all.saturating_sub(own))
}

/// Busy ticks of all CPUs from the first line of /proc/stat:
/// user nice system idle iowait irq softirq steal ...; busy = all but idle and iowait.
fn machine_busy() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    let get = |i: usize| fields.get(i).copied().unwrap_or(0);
    Some(get(0) + get(1) + get(2) + get(5) + get(6) + get(7))
}

/// This process's user + system ticks, fields 14 and 15 of /proc/self/stat
/// (counted after the command name, which may contain spaces).
fn own() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    // `rest` starts at field 3 (state), so utime and stime are its 12th and 13th.
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_proc_on_linux() {
        if std::path::Path::new("/proc/self/stat").exists() {
            assert!(super::own().is_some());
            assert!(super::machine_busy().is_some());
        }
    }
}
