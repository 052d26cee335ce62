//! What `ccm status` shows: a snapshot of a running node, served as JSON on a Unix socket.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::NodeHandle;

/// One interconnect as seen by the node.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct InterconnectStatus {
    /// Its index.
    pub id: u8,
    /// Its device (`-` while it is missing).
    pub device: String,
    /// Local address.
    pub local_ip: String,
    /// Whether the port is active.
    pub port_up: bool,
    /// The manager's view (Up, PortDown, Backoff, ...).
    pub state: String,
    /// Clients whose VIs are connected on it.
    pub clients: Vec<String>,
    /// Measured load against the configured capacity (adaptive balancing).
    #[serde(default)]
    pub load: Option<LinkLoad>,
}

/// An interconnect's measured load.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct LinkLoad {
    /// The clients bound on it, MB/s over the balance window (both directions on the placer).
    pub mb_s: f64,
    /// Its configured capacity, MB/s.
    pub capacity_mb_s: f64,
    /// `mb_s / capacity_mb_s`, in percent.
    pub utilisation_pct: f64,
}

impl LinkLoad {
    /// From bytes/s.
    pub fn new(rate: u64, capacity: u64) -> LinkLoad {
        LinkLoad {
            mb_s: mb_s(rate),
            capacity_mb_s: mb_s(capacity),
            utilisation_pct: if capacity == 0 {
                0.0
            } else {
                rate as f64 * 100.0 / capacity as f64
            },
        }
    }
}

/// Bytes/s as MB/s (10^6 bytes).
pub fn mb_s(bytes_per_s: u64) -> f64 {
    bytes_per_s as f64 / 1e6
}

/// One client as seen by the node.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ClientStatusLine {
    /// Its id.
    pub id: u32,
    /// Its name.
    pub name: String,
    /// Its bandwidth class.
    pub class: String,
    /// The manager's view (Ready, WaitingForPartnerClient, ...).
    pub state: String,
    /// Connected VIs of its binding.
    pub vis: usize,
    /// VIs of its standby bindings on the other interconnects (made ahead for a fast failover).
    #[serde(default)]
    pub standby_vis: usize,
    /// Measured bandwidth over the balance window, MB/s (on the placer: both nodes' posts).
    #[serde(default)]
    pub mb_s: f64,
    /// The last thing the node told the client (`Ready on ic0 (gen 3)`, `Stop on ic1`, `PartnerDown`, ...),
    /// or its registration.
    #[serde(default)]
    pub last_event: Option<EventRecord>,
}

/// A recent event, with its time since the node started.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct EventRecord {
    /// Milliseconds since start.
    pub at_ms: f64,
    /// What happened.
    pub what: String,
}

/// A snapshot of a node.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct NodeStatus {
    /// This node's id.
    pub node: u64,
    /// The partner's id.
    pub partner: u64,
    /// Milliseconds since start.
    pub uptime_ms: f64,
    /// Partner state (Up, Suspect, Down, Unknown).
    pub partner_state: String,
    /// Interconnects.
    pub interconnects: Vec<InterconnectStatus>,
    /// Clients.
    pub clients: Vec<ClientStatusLine>,
    /// Recent events, oldest first.
    pub events: Vec<EventRecord>,
    /// Interconnects that were up and failed since start (any reason: a flap shows here).
    #[serde(default)]
    pub link_failures: u64,
    /// When the first heartbeat from the partner arrived, in milliseconds since start.
    #[serde(default)]
    pub first_heartbeat_ms: Option<f64>,
    /// Whether the driver thread runs with real-time scheduling (see `realtime` in the config).
    #[serde(default)]
    pub driver_realtime: bool,
}

impl NodeStatus {
    /// The human table.
    pub fn table(&self) -> String {
        let mut s = format!(
            "node {}  partner {} is {}  up {:.0} ms  driver {}\n\nINTERCONNECT  DEVICE  ADDRESS       PORT    STATE        LOAD                     CLIENTS\n",
            self.node,
            self.partner,
            self.partner_state,
            self.uptime_ms,
            if self.driver_realtime {
                "real-time"
            } else {
                "normal priority"
            }
        );
        for i in &self.interconnects {
            let load = i.load.as_ref().map_or("-".to_string(), |l| {
                format!(
                    "{:.1}/{:.0} MB/s {:.0}%",
                    l.mb_s, l.capacity_mb_s, l.utilisation_pct
                )
            });
            s += &format!(
                "{:<13} {:<7} {:<13} {:<7} {:<12} {:<24} {}\n",
                i.id,
                i.device,
                i.local_ip,
                if i.port_up { "ACTIVE" } else { "DOWN" },
                i.state,
                load,
                i.clients.join(",")
            );
        }
        // The state (the manager's Debug form, of any length) comes last.
        s += "\nCLIENT  NAME                CLASS  VIS  STANDBY  MB/S      LAST EVENT                               STATE\n";
        for c in &self.clients {
            let last = c.last_event.as_ref().map_or("-".to_string(), |e| {
                format!("+{:.0} ms {}", e.at_ms, e.what)
            });
            s += &format!(
                "{:<7} {:<19} {:<6} {:<4} {:<8} {:<9.2} {:<40} {}\n",
                c.id, c.name, c.class, c.vis, c.standby_vis, c.mb_s, last, c.state
            );
        }
        s += "\nRECENT EVENTS\n";
        for e in self.events.iter().rev().take(12).rev() {
            s += &format!("{:>10.3} ms  {}\n", e.at_ms, e.what);
        }
        s
    }
}

/// Serve snapshots on `path` (one JSON document per connection) until the process exits.
pub fn serve(
    path: &Path,
    node: NodeHandle,
    extra: impl Fn() -> serde_json::Value + Send + 'static,
) -> std::io::Result<PathBuf> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    let owned = path.to_owned();
    std::thread::Builder::new()
        .name("ccm-status".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut v = serde_json::to_value(node.status()).unwrap_or_default();
                v["clients_detail"] = extra();
                let mut stream = stream;
                let _ = stream.write_all(v.to_string().as_bytes());
            }
        })?;
    Ok(owned)
}

/// Fetch a snapshot from a node's status socket (for `ccm status`).
pub fn fetch(path: &Path) -> std::io::Result<serde_json::Value> {
    let mut s = UnixStream::connect(path)?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    serde_json::from_str(&text).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_shows_each_links_load_each_clients_bandwidth_and_last_event() {
        let s = NodeStatus {
            node: 1,
            partner: 2,
            partner_state: "Up".into(),
            interconnects: vec![InterconnectStatus {
                id: 0,
                device: "rxe0".into(),
                local_ip: "10.0.0.1".into(),
                port_up: true,
                state: "Up".into(),
                clients: vec!["nvram".into()],
                load: Some(LinkLoad::new(30_000_000, 40_000_000)),
            }],
            clients: vec![ClientStatusLine {
                id: 1,
                name: "nvram".into(),
                class: "High".into(),
                state: "Ready".into(),
                vis: 1,
                standby_vis: 1,
                mb_s: 29.5,
                last_event: Some(EventRecord {
                    at_ms: 1234.4,
                    what: "Ready on ic0 (gen 3)".into(),
                }),
            }],
            ..NodeStatus::default()
        };
        let t = s.table();
        assert!(t.contains("30.0/40 MB/s 75%"), "{t}");
        assert!(t.contains("29.50"), "{t}");
        assert!(t.contains("LAST EVENT"), "{t}");
        assert!(t.contains("+1234 ms Ready on ic0 (gen 3)"), "{t}");
        // `--json` carries it too.
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(
            v["clients"][0]["last_event"]["what"],
            "Ready on ic0 (gen 3)"
        );
        assert_eq!(v["clients"][0]["last_event"]["at_ms"], 1234.4);
        // A status from a node without load figures still reads.
        let old: NodeStatus = serde_json::from_str(
            r#"{"node":1,"partner":2,"uptime_ms":1.0,"partner_state":"Up","events":[],
               "interconnects":[{"id":0,"device":"rxe0","local_ip":"x","port_up":true,"state":"Up","clients":[]}],
               "clients":[{"id":1,"name":"m","class":"Low","state":"Ready","vis":1}]}"#,
        )
        .unwrap();
        assert_eq!(old.interconnects[0].load, None);
        assert_eq!(old.clients[0].last_event, None);
        assert!(old.table().contains(" - "), "{}", old.table());
    }
}
