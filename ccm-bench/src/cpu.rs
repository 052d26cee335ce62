//! Where the machine's CPU time went during a run: the kernel's `/proc/stat` counters read before and after.
//!
//! In the lab the NIC is rxe, which does its protocol work (segmenting, ICRC, copying into the target
//! memory) on the same vCPUs as the benchmark, in system and softirq time. A throughput run whose own
//! threads keep the vCPUs busy in user time leaves rxe less of them; these figures show how a run shared
//! the machine, next to the peer tool's.

use serde_json::{json, Value};

/// The machine's CPU time counters, summed over all CPUs, in clock ticks (`USER_HZ`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuTimes {
    /// User time (with `nice`).
    pub user: u64,
    /// System time outside interrupts.
    pub system: u64,
    /// Hard and soft interrupt time (rxe's packet work runs mostly here).
    pub irq: u64,
    /// Idle (with I/O wait).
    pub idle: u64,
    /// Time stolen by the hypervisor and anything else the kernel counts.
    pub other: u64,
    /// CPUs counted.
    pub cpus: u32,
}

impl CpuTimes {
    /// Reads `/proc/stat`; `None` where it cannot be read or parsed (not Linux).
    pub fn read() -> Option<CpuTimes> {
        Self::parse(&std::fs::read_to_string("/proc/stat").ok()?)
    }

    /// Parses the text of `/proc/stat`: the aggregate `cpu` line and the count of `cpuN` lines.
    pub fn parse(text: &str) -> Option<CpuTimes> {
        let mut lines = text.lines();
        let first = lines.next()?;
        let mut f = first.split_whitespace();
        if f.next()? != "cpu" {
            return None;
        }
        let v: Vec<u64> = f.map(|x| x.parse().ok()).collect::<Option<_>>()?;
        // user nice system idle iowait irq softirq [steal guest guest_nice]; guest time is inside user.
        if v.len() < 7 {
            return None;
        }
        let at = |i: usize| v.get(i).copied().unwrap_or(0);
        let cpus = lines
            .take_while(|l| l.starts_with("cpu"))
            .filter(|l| l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
            .count() as u32;
        Some(CpuTimes {
            user: at(0) + at(1),
            system: at(2),
            irq: at(5) + at(6),
            idle: at(3) + at(4),
            other: at(7),
            cpus: cpus.max(1),
        })
    }

    fn total(&self) -> u64 {
        self.user + self.system + self.irq + self.idle + self.other
    }

    /// The use between `earlier` and `self`, in CPUs (0 to the CPU count); `None` if no tick passed.
    pub fn since(&self, earlier: &CpuTimes) -> Option<CpuUse> {
        let d = |a: u64, b: u64| a.saturating_sub(b) as f64;
        let total = d(self.total(), earlier.total());
        if total <= 0.0 {
            return None;
        }
        let cpus = self.cpus as f64;
        let share = |x: f64| x / total * cpus;
        Some(CpuUse {
            user: share(d(self.user, earlier.user)),
            system: share(d(self.system, earlier.system)),
            irq: share(d(self.irq, earlier.irq)),
            idle: share(d(self.idle, earlier.idle)),
            cpus: self.cpus,
        })
    }
}

/// CPU use over a run, in CPUs (so `user + system + irq + idle` is about the CPU count).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CpuUse {
    /// User time: the benchmark's and the nodes' own threads.
    pub user: f64,
    /// System time (system calls; rxe's requester runs in the poster's `ibv_post_send`).
    pub system: f64,
    /// Interrupt and softirq time (rxe's packet processing).
    pub irq: f64,
    /// Idle.
    pub idle: f64,
    /// CPUs of the machine.
    pub cpus: u32,
}

impl CpuUse {
    /// Measures `f`'s run: `(f's result, use)`; the use is `None` where `/proc/stat` cannot be read.
    pub fn during<T>(f: impl FnOnce() -> T) -> (T, Option<CpuUse>) {
        let before = CpuTimes::read();
        let r = f();
        let after = CpuTimes::read();
        let u = match (before, after) {
            (Some(b), Some(a)) => a.since(&b),
            _ => None,
        };
        (r, u)
    }

    /// As a JSON object (CPUs, two decimals).
    pub fn json(&self) -> Value {
        let r = |x: f64| (x * 100.0).round() / 100.0;
        json!({"user": r(self.user), "system": r(self.system), "irq": r(self.irq), "idle": r(self.idle),
               "cpus": self.cpus})
    }
}

/// Clock ticks per second of `/proc`'s counters (`USER_HZ`: 100 in the kernel's ABI on x86-64 and arm64).
pub const USER_HZ: f64 = 100.0;

/// One thread's CPU time counters (`/proc/self/task/TID/stat`), clock ticks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThreadTimes {
    /// Thread id.
    pub tid: u32,
    /// Its name (`comm`).
    pub name: String,
    /// User time.
    pub user: u64,
    /// System time (system calls, rxe's work done in them).
    pub system: u64,
}

impl ThreadTimes {
    /// Parses one `stat` line: `tid (comm) state ...`, user and system time the 14th and 15th fields.
    pub fn parse(line: &str) -> Option<ThreadTimes> {
        let open = line.find('(')?;
        let close = line.rfind(')')?;
        let tid = line[..open].trim().parse().ok()?;
        let name = line[open + 1..close].to_string();
        // After the name: state is field 3, so utime (14) and stime (15) are the 12th and 13th here.
        let rest: Vec<&str> = line[close + 1..].split_whitespace().collect();
        Some(ThreadTimes {
            tid,
            name,
            user: rest.get(11)?.parse().ok()?,
            system: rest.get(12)?.parse().ok()?,
        })
    }

    /// Every thread of this process (those that cannot be read, having just exited, are left out).
    pub fn read_all() -> Vec<ThreadTimes> {
        let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
            return Vec::new();
        };
        dir.filter_map(|e| {
            let path = e.ok()?.path().join("stat");
            Self::parse(&std::fs::read_to_string(path).ok()?)
        })
        .collect()
    }
}

/// The CPU use of this process's threads between two [`ThreadTimes::read_all`], in CPUs over `seconds`:
/// `(name, user, system)`, busiest first, threads that used nothing left out. Threads sharing a name are
/// told apart as `name#1`, `name#2`, ... in the order they were started (thread id), so two nodes' mirror
/// threads in one process are `ccm-nvram#1` (node 1's) and `ccm-nvram#2`.
pub fn threads_since(
    before: &[ThreadTimes],
    after: &[ThreadTimes],
    seconds: f64,
    ticks_per_second: f64,
) -> Vec<(String, f64, f64)> {
    let mut after: Vec<&ThreadTimes> = after.iter().collect();
    after.sort_by_key(|a| a.tid);
    let mut out = Vec::new();
    for a in &after {
        let (u0, s0) = before
            .iter()
            .find(|b| b.tid == a.tid)
            .map_or((0, 0), |b| (b.user, b.system));
        let to_cpus = |t: u64| t as f64 / ticks_per_second / seconds;
        let (u, s) = (
            to_cpus(a.user.saturating_sub(u0)),
            to_cpus(a.system.saturating_sub(s0)),
        );
        if u + s <= 0.0 {
            continue;
        }
        let same: Vec<u32> = after
            .iter()
            .filter(|b| b.name == a.name)
            .map(|b| b.tid)
            .collect();
        let name = if same.len() > 1 {
            let k = same.iter().position(|&t| t == a.tid).unwrap_or(0) + 1;
            format!("{}#{k}", a.name)
        } else {
            a.name.clone()
        };
        out.push((name, u, s));
    }
    out.sort_by(|x, y| (y.1 + y.2).total_cmp(&(x.1 + x.2)));
    out
}

/// `threads_since` as a JSON object `{name: {"user": CPUs, "system": CPUs}}`.
pub fn threads_json(t: &[(String, f64, f64)]) -> Value {
    let r = |x: f64| (x * 100.0).round() / 100.0;
    let mut m = serde_json::Map::new();
    for (name, u, s) in t {
        m.insert(name.clone(), json!({"user": r(*u), "system": r(*s)}));
    }
    Value::Object(m)
}

/// The RDMA devices' port counters (`/sys/class/infiniband/DEV/ports/N/hw_counters`: rxe's packets sent
/// and received, retransmissions, sequence errors, RNR NAKs), by `DEV/N/counter`.
pub fn device_counters() -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let Ok(devs) = std::fs::read_dir("/sys/class/infiniband") else {
        return out;
    };
    for dev in devs.flatten() {
        let Ok(ports) = std::fs::read_dir(dev.path().join("ports")) else {
            continue;
        };
        for port in ports.flatten() {
            let Ok(counters) = std::fs::read_dir(port.path().join("hw_counters")) else {
                continue;
            };
            for c in counters.flatten() {
                let Some(v) = std::fs::read_to_string(c.path())
                    .ok()
                    .and_then(|t| t.trim().parse().ok())
                else {
                    continue;
                };
                out.push((
                    format!(
                        "{}/{}/{}",
                        dev.file_name().to_string_lossy(),
                        port.file_name().to_string_lossy(),
                        c.file_name().to_string_lossy()
                    ),
                    v,
                ));
            }
        }
    }
    out.sort();
    out
}

/// The counters that moved between two [`device_counters`], as a JSON object `{name: increase}`.
pub fn counters_json(before: &[(String, u64)], after: &[(String, u64)]) -> Value {
    let mut m = serde_json::Map::new();
    for (name, v) in after {
        let v0 = before
            .iter()
            .find(|(n, _)| n == name)
            .map_or(0, |(_, v)| *v);
        if *v > v0 {
            m.insert(name.clone(), json!(v - v0));
        }
    }
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = "cpu  100 0 50 800 0 0 50 0 0 0\ncpu0 50 0 25 400 0 0 25 0 0 0\n\
                          cpu1 50 0 25 400 0 0 25 0 0 0\nintr 1 2 3\n";
    const AFTER: &str = "cpu  250 10 90 840 10 5 95 0 0 0\ncpu0 1 0 0 0 0 0 0 0 0 0\n\
                         cpu1 1 0 0 0 0 0 0 0 0 0\nctxt 5\n";

    #[test]
    fn the_aggregate_line_is_split_into_user_system_interrupts_and_idle() {
        let t = CpuTimes::parse(BEFORE).unwrap();
        assert_eq!(
            t,
            CpuTimes {
                user: 100,
                system: 50,
                irq: 50,
                idle: 800,
                other: 0,
                cpus: 2
            }
        );
        assert_eq!(CpuTimes::parse("intr 1\n"), None);
        assert_eq!(CpuTimes::parse("cpu 1 2 x 4 5 6 7\n"), None);
    }

    #[test]
    fn use_over_a_run_is_counted_in_cpus() {
        let (b, a) = (
            CpuTimes::parse(BEFORE).unwrap(),
            CpuTimes::parse(AFTER).unwrap(),
        );
        // 300 ticks passed on 2 CPUs: user 160, system 40, irq 50, idle 50.
        let u = a.since(&b).unwrap();
        let near = |x: f64, y: f64| (x - y).abs() < 1e-9;
        assert!(near(u.user, 160.0 / 300.0 * 2.0), "{u:?}");
        assert!(near(u.system, 40.0 / 300.0 * 2.0), "{u:?}");
        assert!(near(u.irq, 50.0 / 300.0 * 2.0), "{u:?}");
        assert!(near(u.idle, 50.0 / 300.0 * 2.0), "{u:?}");
        assert_eq!(b.since(&b), None);
    }

    #[test]
    fn a_threads_times_are_read_past_a_name_with_spaces_and_parentheses() {
        let line = "4242 (ccm (nvram) x) S 1 2 3 4 5 6 7 8 9 10 111 222 13 14 15";
        let t = ThreadTimes::parse(line).unwrap();
        assert_eq!(
            (t.tid, t.name.as_str(), t.user, t.system),
            (4242, "ccm (nvram) x", 111, 222)
        );
        assert_eq!(ThreadTimes::parse("4242 (x) S 1 2"), None);
    }

    #[test]
    fn thread_use_is_per_thread_busiest_first_and_namesakes_are_numbered_by_start() {
        let t = |tid, name: &str, user, system| ThreadTimes {
            tid,
            name: name.into(),
            user,
            system,
        };
        let before = [
            t(1, "main", 0, 0),
            t(2, "ccm-nvram", 10, 10),
            t(3, "ccm-nvram", 0, 0),
        ];
        let after = [
            t(3, "ccm-nvram", 0, 50),
            t(1, "main", 50, 0),
            t(2, "ccm-nvram", 60, 110),
            t(4, "ccm-node", 0, 0),
        ];
        // 2 s at 100 ticks per second.
        let u = threads_since(&before, &after, 2.0, 100.0);
        assert_eq!(
            u,
            vec![
                ("ccm-nvram#1".to_string(), 0.25, 0.5),
                ("main".to_string(), 0.25, 0.0),
                ("ccm-nvram#2".to_string(), 0.0, 0.25),
            ]
        );
    }

    #[test]
    fn only_the_counters_that_moved_are_reported() {
        let c = |n: &str, v| (n.to_string(), v);
        let before = [c("rxe0/1/sent_pkts", 10), c("rxe0/1/rcvd_seq_err", 2)];
        let after = [
            c("rxe0/1/sent_pkts", 15),
            c("rxe0/1/rcvd_seq_err", 2),
            c("rxe1/1/sent_pkts", 3),
        ];
        assert_eq!(
            counters_json(&before, &after),
            json!({"rxe0/1/sent_pkts": 5, "rxe1/1/sent_pkts": 3})
        );
    }
}
