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
    /// Connected VIs.
    pub vis: usize,
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
}

impl NodeStatus {
    /// The human table.
    pub fn table(&self) -> String {
        let mut s = format!(
            "node {}  partner {} is {}  up {:.0} ms\n\nINTERCONNECT  DEVICE  ADDRESS       PORT    STATE        CLIENTS\n",
            self.node, self.partner, self.partner_state, self.uptime_ms
        );
        for i in &self.interconnects {
            s += &format!(
                "{:<13} {:<7} {:<13} {:<7} {:<12} {}\n",
                i.id,
                i.device,
                i.local_ip,
                if i.port_up { "ACTIVE" } else { "DOWN" },
                i.state,
                i.clients.join(",")
            );
        }
        s += "\nCLIENT  NAME                CLASS  VIS  STATE\n";
        for c in &self.clients {
            s += &format!(
                "{:<7} {:<19} {:<6} {:<4} {}\n",
                c.id, c.name, c.class, c.vis, c.state
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
