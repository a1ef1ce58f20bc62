//! CPU time from `/proc`: stable across noisy machines where wall time is not.

use std::path::Path;
use std::time::Duration;

/// The fields of `/proc/<pid>/stat` the benchmark reads; times in clock ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// The parent's pid.
    pub ppid: u32,
    /// User time of the process (all its threads).
    pub utime: u64,
    /// System time of the process (all its threads).
    pub stime: u64,
    /// User time of its children that exited and were reaped.
    pub cutime: u64,
    /// System time of the same.
    pub cstime: u64,
}

/// Parses one `/proc/<pid>/stat` line. The command name sits in parentheses and may itself
/// hold spaces and parentheses, so fields are counted from the last `)`.
pub fn parse_stat(line: &str) -> Option<Stat> {
    let after = &line[line.rfind(')')? + 1..];
    // After the name: state(3) ppid(4) … utime(14) stime(15) cutime(16) cstime(17).
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(Stat {
        ppid: u32::try_from(field(4)?).ok()?,
        utime: field(14)?,
        stime: field(15)?,
        cutime: field(16)?,
        cstime: field(17)?,
    })
}

fn read_stat(pid: u32) -> Option<Stat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Clock ticks per second, the unit of `/proc` times.
fn ticks_per_second() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|t| u64::try_from(t).ok())
        .filter(|t| *t > 0)
        // Linux exports 100 to user space on every common architecture.
        .unwrap_or(100)
}

fn ticks(t: u64) -> Duration {
    let per_second = ticks_per_second();
    Duration::from_secs(t / per_second) + Duration::from_secs(t % per_second) / per_u32(per_second)
}

fn per_u32(v: u64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

/// The CPU time a live process has used (user and system, all threads); `None` if it is gone.
pub fn process_cpu(pid: u32) -> Option<Duration> {
    read_stat(pid).map(|s| ticks(s.utime + s.stime))
}

/// The CPU time of a process and of all its children, live and exited: how much a PostgreSQL
/// server (the postmaster and its backends) has used. A backend that exits moves from the live
/// children into the postmaster's `cutime`/`cstime` when it is reaped, so the sum stays whole.
pub fn tree_cpu(root: u32) -> Option<Duration> {
    let own = read_stat(root)?;
    let mut total = own.utime + own.stime + own.cutime + own.cstime;
    for (_, child) in children(root)? {
        total += child.utime + child.stime + child.cutime + child.cstime;
    }
    Some(ticks(total))
}

/// The time a PostgreSQL server's live processes (the postmaster and the backends it started)
/// have been on a CPU, in nanoseconds, from `/proc/<pid>/schedstat`: precise enough to time one
/// statement, where `/proc/<pid>/stat` counts 10 ms ticks. Backends that exited are not in it, so
/// it is for differences over a span in which no session ends.
pub fn tree_on_cpu(root: u32) -> Option<Duration> {
    let mut total = on_cpu_ns(root)?;
    for (pid, _) in children(root)? {
        total += on_cpu_ns(pid).unwrap_or(0);
    }
    Some(Duration::from_nanos(total))
}

/// The live children of `root`, with their stat lines; `None` if /proc cannot be read.
fn children(root: u32) -> Option<Vec<(u32, Stat)>> {
    let entries = std::fs::read_dir(Path::new("/proc")).ok()?;
    Some(
        entries
            .flatten()
            .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
            .filter_map(|pid| Some((pid, read_stat(pid)?)))
            .filter(|(_, stat)| stat.ppid == root)
            .collect(),
    )
}

/// The first field of `/proc/<pid>/schedstat`: nanoseconds on a CPU.
fn on_cpu_ns(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/schedstat"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The parent of a process, to find a backend's postmaster.
pub fn parent(pid: u32) -> Option<u32> {
    read_stat(pid).map(|s| s.ppid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_are_read_past_names_with_spaces_and_parentheses() {
        let line = "4242 (postgres: a (b) c) S 17 4242 4242 0 -1 4194560 1200 0 0 0 \
                    250 75 9 3 20 0 1 0 123456 220000000 3000 18446744073709551615";
        assert_eq!(
            parse_stat(line),
            Some(Stat {
                ppid: 17,
                utime: 250,
                stime: 75,
                cutime: 9,
                cstime: 3,
            })
        );
        assert_eq!(parse_stat("4242 (cut short) S 17 1 2"), None);
        assert_eq!(parse_stat("no parenthesis at all"), None);
    }

    #[test]
    fn this_process_has_a_parent_and_spends_cpu() {
        let me = std::process::id();
        assert!(parent(me).is_some_and(|p| p > 0));
        let spent = process_cpu(me).expect("our own stat");
        let tree = tree_cpu(me).expect("our own tree");
        assert!(tree >= spent, "{tree:?} < {spent:?}");
        let on_cpu = tree_on_cpu(me).expect("our own schedstat");
        assert!(on_cpu > Duration::ZERO);
    }

    #[test]
    fn ticks_become_durations() {
        let per_second = ticks_per_second();
        assert_eq!(ticks(per_second * 3), Duration::from_secs(3));
        assert_eq!(ticks(per_second / 2), Duration::from_millis(500));
    }
}
