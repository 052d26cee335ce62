//! The rxe lab topology, read from the environment that `scripts/rxe-lab run` gives a command
//! (see `docs/lab-contract.md`).
//!
//! Device tests start with [`LabTopology::from_env_or_skip`]: outside the lab it prints a
//! `SKIPPED` line and returns `None`; inside the lab (`CCM_LAB=1`) any missing or malformed
//! variable is a panic, never a silent skip.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

/// One side (node A or node B) of an interconnect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabSide {
    /// rxe device name, e.g. `rxe0`.
    pub device: String,
    /// Network device the rxe device sits on, e.g. `vethA0`.
    pub netdev: String,
    /// IP address of the netdev.
    pub ip: IpAddr,
    /// RoCE v2 GID index the lab read at boot: informational only, select GIDs by address.
    pub gid_index_hint: u32,
}

/// Which node of the pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Node A (rxe0, rxe2).
    A,
    /// Node B (rxe1, rxe3).
    B,
}

impl Side {
    fn letter(self) -> &'static str {
        match self {
            Side::A => "A",
            Side::B => "B",
        }
    }
}

/// One interconnect: a link between node A and node B.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interconnect {
    /// Node A's end.
    pub a: LabSide,
    /// Node B's end.
    pub b: LabSide,
}

impl Interconnect {
    /// The given side's end.
    pub fn side(&self, side: Side) -> &LabSide {
        match side {
            Side::A => &self.a,
            Side::B => &self.b,
        }
    }
}

/// The whole lab: workspace root and every interconnect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabTopology {
    /// Workspace root (`CCM_LAB_ROOT`).
    pub root: PathBuf,
    /// Interconnects, index = interconnect number.
    pub interconnects: Vec<Interconnect>,
}

impl LabTopology {
    /// Reads the topology when running in the lab; otherwise prints
    /// `SKIPPED (needs the rxe lab; scripts/test runs it there): NAME` to stderr and returns `None`.
    ///
    /// # Panics
    /// Inside the lab (`CCM_LAB=1`), panics on any missing or malformed variable.
    pub fn from_env_or_skip(test_name: &str) -> Option<LabTopology> {
        Self::from_lookup_or_skip(test_name, |k| std::env::var(k).ok())
    }

    /// Same as [`from_env_or_skip`](Self::from_env_or_skip) with an explicit variable lookup
    /// (used by host tests).
    pub fn from_lookup_or_skip(
        test_name: &str,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Option<LabTopology> {
        if lookup("CCM_LAB").as_deref() != Some("1") {
            // Written to the fd, not through eprintln!: libtest captures the macros, and a skip must be seen.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED (needs the rxe lab; scripts/test runs it there): {test_name}"
            );
            return None;
        }
        let get = |k: &str| -> String {
            match lookup(k) {
                Some(v) if !v.is_empty() => v,
                _ => panic!("CCM_LAB=1 but {k} is not set (see docs/lab-contract.md)"),
            }
        };
        let root = PathBuf::from(get("CCM_LAB_ROOT"));
        let count: usize = get("CCM_LAB_IC_COUNT")
            .parse()
            .unwrap_or_else(|e| panic!("CCM_LAB_IC_COUNT is not a number: {e}"));
        let side = |i: usize, s: Side| -> LabSide {
            let p = format!("CCM_IC{i}_{}", s.letter());
            let ip_s = get(&format!("{p}_IP"));
            let gid_s = get(&format!("{p}_GID_INDEX"));
            LabSide {
                device: get(&format!("{p}_DEV")),
                netdev: get(&format!("{p}_NETDEV")),
                ip: ip_s
                    .parse()
                    .unwrap_or_else(|e| panic!("{p}_IP={ip_s:?} is not an IP address: {e}")),
                gid_index_hint: gid_s
                    .parse()
                    .unwrap_or_else(|e| panic!("{p}_GID_INDEX={gid_s:?} is not a number: {e}")),
            }
        };
        let interconnects = (0..count)
            .map(|i| Interconnect {
                a: side(i, Side::A),
                b: side(i, Side::B),
            })
            .collect();
        Some(LabTopology {
            root,
            interconnects,
        })
    }

    /// Interconnect `i`.
    ///
    /// # Panics
    /// If the lab has fewer interconnects (a test precondition).
    pub fn ic(&self, i: usize) -> &Interconnect {
        &self.interconnects[i]
    }

    /// Every device name of the lab, interconnect by interconnect, A before B.
    pub fn all_devices(&self) -> Vec<&str> {
        self.interconnects
            .iter()
            .flat_map(|ic| [ic.a.device.as_str(), ic.b.device.as_str()])
            .collect()
    }

    /// Path of the fault hook script.
    pub fn fault_script(&self) -> PathBuf {
        self.root.join("scripts").join("lab-fault")
    }

    /// Runs `scripts/lab-fault ARGS...` and returns an error unless it exits with status 0.
    pub fn fault(&self, args: &[&str]) -> std::io::Result<()> {
        run_checked(&self.fault_script(), args)
    }
}

fn run_checked(script: &Path, args: &[&str]) -> std::io::Result<()> {
    let out = Command::new(script).args(args).output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "{} {} failed ({}): {}{}",
            script.display(),
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn full_env() -> HashMap<String, String> {
        let mut m = HashMap::new();
        m.insert("CCM_LAB".into(), "1".into());
        m.insert("CCM_LAB_ROOT".into(), "/work/main".into());
        m.insert("CCM_LAB_IC_COUNT".into(), "2".into());
        for i in 0..2 {
            for (s, n) in [("A", 0), ("B", 1)] {
                let p = format!("CCM_IC{i}_{s}");
                m.insert(format!("{p}_DEV"), format!("rxe{}", 2 * i + n));
                m.insert(format!("{p}_NETDEV"), format!("veth{s}{i}"));
                m.insert(format!("{p}_IP"), format!("10.0.{i}.{}", n + 1));
                m.insert(format!("{p}_GID_INDEX"), "1".into());
            }
        }
        m
    }

    #[test]
    fn outside_lab_skips() {
        assert_eq!(LabTopology::from_lookup_or_skip("t", |_| None), None);
        let t = LabTopology::from_lookup_or_skip("t", |k| (k == "CCM_LAB").then(|| "0".into()));
        assert_eq!(t, None);
    }

    #[test]
    fn inside_lab_reads_everything() {
        let env = full_env();
        let t = LabTopology::from_lookup_or_skip("t", |k| env.get(k).cloned()).unwrap();
        assert_eq!(t.interconnects.len(), 2);
        assert_eq!(t.ic(1).b.device, "rxe3");
        assert_eq!(t.ic(0).a.netdev, "vethA0");
        assert_eq!(t.ic(1).a.ip, "10.0.1.1".parse::<IpAddr>().unwrap());
        assert_eq!(t.all_devices(), vec!["rxe0", "rxe1", "rxe2", "rxe3"]);
        assert_eq!(
            t.fault_script(),
            PathBuf::from("/work/main/scripts/lab-fault")
        );
    }

    #[test]
    #[should_panic(expected = "CCM_IC1_B_IP")]
    fn inside_lab_missing_variable_panics() {
        let mut env = full_env();
        env.remove("CCM_IC1_B_IP");
        LabTopology::from_lookup_or_skip("t", |k| env.get(k).cloned());
    }

    #[test]
    #[should_panic(expected = "not an IP address")]
    fn inside_lab_bad_ip_panics() {
        let mut env = full_env();
        env.insert("CCM_IC0_A_IP".into(), "10.0.0".into());
        LabTopology::from_lookup_or_skip("t", |k| env.get(k).cloned());
    }
}
