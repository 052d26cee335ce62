//! The node's configuration file (TOML), validated field by field into a typed [`NodeConfig`].
//!
//! ```toml
//! node = 1                       # this node's id; the lower id of the pair connects the initial sessions
//! partner = 2
//! cluster = 7
//! secret_file = "/etc/ccm/secret" # the shared cluster secret (at least 16 bytes; never sent, never logged)
//! status_socket = "/run/ccm-a.sock"
//! realtime = true                # driver (and connector) threads at SCHED_FIFO 1 when permitted (CAP_SYS_NICE), as corosync
//!
//! [timing]                       # optional; defaults derived in ccm_core::manager
//! heartbeat_ms = 10
//! heartbeat_misses = 3
//! partner_down_ms = 500
//! failback_hold_down_ms = 500
//! home_grace_ms = 150            # at bring-up, how long a client waits for its home interconnect
//!
//! [balance]                      # optional; adaptive balancing by measured bandwidth
//! period_ms = 100                # sampling period (and the shortest time between two migrations)
//! window_ms = 1000               # sliding window of a client's rate
//! high_pct = 80                  # a link above this share of its capacity is overloaded
//! low_pct = 60                   # a migration leaves its target below this
//! dwell_ms = 2000                # a client stays this long on a binding before it may migrate
//!
//! [protocol]                     # optional, for compatibility tests only: the protocol versions spoken
//! min_version = 1                # (default: 1..=2, this build's range; 2 adds standby bindings); a partner with no version in
//! max_version = 1                # common is refused on both sides with "incompatible version"
//!
//! [[interconnect]]               # by device name, or by local IP (the device whose GID holds it)
//! device = "rxe0"
//! local_ip = "10.0.0.1"
//! partner_ip = "10.0.0.2"
//! tcp_port = 18515               # the initial session (step 410) listens/connects here
//! capacity_mb_s = 1250.0         # the link's rate in MB/s for measured utilisation (default 1250 = 10 Gb/s)
//!
//! [[client]]
//! name = "failover-monitor"
//! id = 1
//! kind = "monitor"               # monitor | mirror | counter
//! class = "low"                  # low | high (the NVRAM mirror: a link of its own)
//! ```

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;

use crate::wire::{BandwidthClass, ClientId, ClusterId, InterconnectId, NodeId, ProtocolVersion};

/// A configuration that cannot be used, naming the field and what was wrong.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Not TOML, or a field of the wrong type, or an unknown field.
    #[error("{path}: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's message (names the field and line).
        message: String,
    },
    /// A field whose value is not acceptable.
    #[error("{field}: {problem}")]
    Invalid {
        /// The field, e.g. `interconnect[1].partner_ip`.
        field: String,
        /// What is wrong with it.
        problem: String,
    },
}

fn invalid(field: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        problem: problem.into(),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    node: u64,
    partner: u64,
    cluster: u64,
    secret_file: PathBuf,
    status_socket: Option<PathBuf>,
    realtime: Option<bool>,
    #[serde(default)]
    timing: RawTiming,
    protocol: Option<RawProtocol>,
    #[serde(default)]
    balance: RawBalance,
    #[serde(default)]
    interconnect: Vec<RawInterconnect>,
    #[serde(default)]
    client: Vec<RawClient>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTiming {
    heartbeat_ms: Option<u64>,
    heartbeat_misses: Option<u32>,
    partner_down_ms: Option<u64>,
    failback_hold_down_ms: Option<u64>,
    home_grace_ms: Option<u64>,
    connect_ms: Option<u64>,
    handshake_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBalance {
    period_ms: Option<u64>,
    window_ms: Option<u64>,
    high_pct: Option<u64>,
    low_pct: Option<u64>,
    dwell_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProtocol {
    min_version: ProtocolVersion,
    max_version: ProtocolVersion,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInterconnect {
    device: Option<String>,
    port: Option<u8>,
    local_ip: IpAddr,
    partner_ip: IpAddr,
    tcp_port: Option<u16>,
    capacity_mb_s: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClient {
    name: String,
    id: u32,
    kind: String,
    class: Option<String>,
    pin: Option<u8>,
    mirror_path: Option<PathBuf>,
    mirror_bytes: Option<u64>,
    mirror_load_per_sec: Option<u32>,
    mirror_load_seconds: Option<f64>,
    mirror_entry_bytes: Option<usize>,
    period_ms: Option<u64>,
}

/// One interconnect: an RDMA device port and the IP addresses of both ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InterconnectConfig {
    /// Its index (the same on both nodes: the order in the file).
    pub id: InterconnectId,
    /// The device, or `None` to find it by `local_ip` in the GID tables.
    pub device: Option<String>,
    /// The device port (1 unless configured).
    pub port: u8,
    /// This node's address on the interconnect (selects the RoCE v2 GID).
    pub local_ip: IpAddr,
    /// The partner's address on the interconnect.
    pub partner_ip: IpAddr,
    /// TCP port of the initial session.
    pub tcp_port: u16,
    /// Its capacity in bytes/s (adaptive balancing).
    pub capacity: u64,
}

/// Adaptive balancing (see `ccm_core::manager` for the defaults' derivation).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Balance {
    /// Sampling period.
    pub period: Duration,
    /// Sliding window of a client's rate.
    pub window: Duration,
    /// Overload watermark, per mille of capacity.
    pub high_permille: u64,
    /// A migration's target stays below this, per mille.
    pub low_permille: u64,
    /// Least time on a binding before a client may migrate.
    pub dwell: Duration,
}

/// What a configured client does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientKind {
    /// The failover monitor (heartbeats to its peer, partner up/suspect/down decisions).
    Monitor,
    /// NVRAM mirroring into the partner's memory.
    Mirror {
        /// The local NVRAM log (a file, /dev/shm, or a DAX path); the partner's mirror is `PATH.mirror`.
        path: PathBuf,
        /// Ring size in bytes.
        bytes: u64,
        /// A built-in writer (for demos and benches): entries per second, 0 for none.
        load_per_sec: u32,
        /// How long the built-in writer runs after the mirror is first ready, in milliseconds.
        load_ms: u64,
        /// Payload size of the built-in writer's entries.
        entry_bytes: usize,
    },
    /// A message counter (shows undisturbed traffic while other clients come and go).
    Counter {
        /// Time between two messages.
        period: Duration,
    },
}

/// One configured client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientConfig {
    /// Its name.
    pub name: String,
    /// Its id (the same on both nodes).
    pub id: ClientId,
    /// What it does.
    pub kind: ClientKind,
    /// Its bandwidth class.
    pub class: BandwidthClass,
    /// A pinned interconnect.
    pub pin: Option<InterconnectId>,
}

/// Timings of the manager (see `ccm_core::manager` for the defaults' derivation).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timing {
    /// Heartbeat period on each interconnect.
    pub heartbeat: Duration,
    /// Missed periods before an interconnect is failed.
    pub heartbeat_misses: u32,
    /// Suspect time before the partner is declared down.
    pub partner_down: Duration,
    /// Health required before clients fail back.
    pub failback_hold_down: Duration,
    /// At bring-up, how long an unplaced client waits for its home interconnect.
    pub home_grace: Duration,
    /// Bound on one connect of the initial session.
    pub connect: Duration,
    /// Bound on the whole peer-info exchange.
    pub handshake: Duration,
}

/// A validated node configuration.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// This node.
    pub node: NodeId,
    /// The partner.
    pub partner: NodeId,
    /// The cluster.
    pub cluster: ClusterId,
    /// The cluster secret's file.
    pub secret_file: PathBuf,
    /// Where `ccm status` finds the node.
    pub status_socket: PathBuf,
    /// Whether the driver thread asks for real-time scheduling (SCHED_FIFO, lowest real-time
    /// priority), so heartbeats are not starved by the node's own busy clients.
    pub realtime: bool,
    /// Manager timings.
    pub timing: Timing,
    /// Adaptive balancing.
    pub balance: Balance,
    /// The protocol versions spoken, `min..=max`. Normally this build's range,
    /// [`MIN_PROTOCOL_VERSION`](crate::manager::MIN_PROTOCOL_VERSION) to
    /// [`PROTOCOL_VERSION`](crate::manager::PROTOCOL_VERSION); the optional `[protocol]` section
    /// (`min_version`, `max_version`) overrides it, for compatibility tests (a node that speaks an
    /// incompatible range is refused by its partner on every interconnect).
    pub versions: (ProtocolVersion, ProtocolVersion),
    /// The interconnects, in index order.
    pub interconnects: Vec<InterconnectConfig>,
    /// The clients.
    pub clients: Vec<ClientConfig>,
}

/// Default TCP port of the initial session.
pub const DEFAULT_TCP_PORT: u16 = 18515;
/// Shortest accepted cluster secret.
pub const MIN_SECRET_LEN: usize = 16;

impl NodeConfig {
    /// Read and validate a configuration file.
    pub fn load(path: &Path) -> Result<NodeConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|e| match e {
            ConfigError::Syntax { message, .. } => ConfigError::Syntax {
                path: path.to_owned(),
                message,
            },
            other => other,
        })
    }

    /// Parse and validate configuration text.
    pub fn parse(text: &str) -> Result<NodeConfig, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: PathBuf::from("<config>"),
            message: e.to_string(),
        })?;
        if raw.node == raw.partner {
            return Err(invalid(
                "partner",
                format!("must differ from node ({})", raw.node),
            ));
        }
        if raw.interconnect.is_empty() {
            return Err(invalid(
                "interconnect",
                "at least one [[interconnect]] is needed",
            ));
        }
        if raw.interconnect.len() > 8 {
            return Err(invalid(
                "interconnect",
                format!("{} configured, at most 8", raw.interconnect.len()),
            ));
        }
        let d = crate::manager::Config::new(NodeId(0), NodeId(1), ClusterId(0), Vec::new(), 1);
        let ms = |v: Option<u64>, field: &str, default: Duration, min: u64, max: u64| match v {
            None => Ok(default),
            Some(v) if (min..=max).contains(&v) => Ok(Duration::from_millis(v)),
            Some(v) => Err(invalid(
                format!("timing.{field}"),
                format!("{v} ms is outside {min}..={max} ms"),
            )),
        };
        let heartbeat = ms(
            raw.timing.heartbeat_ms,
            "heartbeat_ms",
            d.heartbeat_period,
            1,
            10_000,
        )?;
        let heartbeat_misses = match raw.timing.heartbeat_misses {
            None => d.heartbeat_misses,
            Some(m @ 2..=100) => m,
            Some(m) => {
                return Err(invalid(
                    "timing.heartbeat_misses",
                    format!("{m} is outside 2..=100"),
                ))
            }
        };
        let partner_down = ms(
            raw.timing.partner_down_ms,
            "partner_down_ms",
            d.partner_down_after,
            10,
            600_000,
        )?;
        if partner_down <= heartbeat * heartbeat_misses {
            return Err(invalid(
                "timing.partner_down_ms",
                format!(
                    "must be longer than heartbeat_ms x heartbeat_misses ({:?})",
                    heartbeat * heartbeat_misses
                ),
            ));
        }
        let timing = Timing {
            heartbeat,
            heartbeat_misses,
            partner_down,
            failback_hold_down: ms(
                raw.timing.failback_hold_down_ms,
                "failback_hold_down_ms",
                d.failback_hold_down,
                0,
                3_600_000,
            )?,
            home_grace: ms(
                raw.timing.home_grace_ms,
                "home_grace_ms",
                d.home_grace,
                0,
                60_000,
            )?,
            connect: ms(
                raw.timing.connect_ms,
                "connect_ms",
                d.connect_timeout,
                1,
                60_000,
            )?,
            handshake: ms(
                raw.timing.handshake_ms,
                "handshake_ms",
                d.handshake_timeout,
                1,
                60_000,
            )?,
        };
        let bms = |v: Option<u64>, field: &str, default: Duration, min: u64, max: u64| match v {
            None => Ok(default),
            Some(v) if (min..=max).contains(&v) => Ok(Duration::from_millis(v)),
            Some(v) => Err(invalid(
                format!("balance.{field}"),
                format!("{v} ms is outside {min}..={max} ms"),
            )),
        };
        let period = bms(
            raw.balance.period_ms,
            "period_ms",
            d.balance_period,
            10,
            60_000,
        )?;
        let window = bms(
            raw.balance.window_ms,
            "window_ms",
            d.balance_window,
            10,
            3_600_000,
        )?;
        if window < period {
            return Err(invalid(
                "balance.window_ms",
                format!("must be at least period_ms ({period:?})"),
            ));
        }
        let high_pct = raw.balance.high_pct.unwrap_or(d.balance_high_permille / 10);
        let low_pct = raw.balance.low_pct.unwrap_or(d.balance_low_permille / 10);
        if !(1..=100).contains(&high_pct) {
            return Err(invalid(
                "balance.high_pct",
                format!("{high_pct} is outside 1..=100"),
            ));
        }
        if low_pct >= high_pct {
            return Err(invalid(
                "balance.low_pct",
                format!("{low_pct} must be below high_pct ({high_pct})"),
            ));
        }
        let balance = Balance {
            period,
            window,
            high_permille: high_pct * 10,
            low_permille: low_pct * 10,
            dwell: bms(
                raw.balance.dwell_ms,
                "dwell_ms",
                d.balance_dwell,
                0,
                3_600_000,
            )?,
        };
        let mut interconnects = Vec::new();
        for (i, ic) in raw.interconnect.into_iter().enumerate() {
            let field = |f: &str| format!("interconnect[{i}].{f}");
            if ic.local_ip == ic.partner_ip {
                return Err(invalid(field("partner_ip"), "must differ from local_ip"));
            }
            if ic.local_ip.is_ipv4() != ic.partner_ip.is_ipv4() {
                return Err(invalid(
                    field("partner_ip"),
                    "local_ip and partner_ip must be the same IP family",
                ));
            }
            if let Some(dev) = &ic.device {
                if dev.is_empty() || dev.len() > 64 || dev.contains('/') {
                    return Err(invalid(
                        field("device"),
                        format!("{dev:?} is not a device name"),
                    ));
                }
            }
            let port = ic.port.unwrap_or(1);
            if port == 0 {
                return Err(invalid(field("port"), "ports are numbered from 1"));
            }
            if interconnects
                .iter()
                .any(|o: &InterconnectConfig| o.local_ip == ic.local_ip)
            {
                return Err(invalid(
                    field("local_ip"),
                    format!("{} is used by another interconnect", ic.local_ip),
                ));
            }
            interconnects.push(InterconnectConfig {
                id: InterconnectId(i as u8),
                device: ic.device,
                port,
                local_ip: ic.local_ip,
                partner_ip: ic.partner_ip,
                tcp_port: ic.tcp_port.unwrap_or(DEFAULT_TCP_PORT),
                capacity: match ic.capacity_mb_s {
                    None => crate::manager::DEFAULT_CAPACITY,
                    Some(c) if (0.001..=10_000_000.0).contains(&c) => (c * 1e6) as u64,
                    Some(c) => {
                        return Err(invalid(
                            field("capacity_mb_s"),
                            format!("{c} is outside 0.001..=10000000"),
                        ))
                    }
                },
            });
        }
        let mut clients: Vec<ClientConfig> = Vec::new();
        for (i, c) in raw.client.into_iter().enumerate() {
            let field = |f: &str| format!("client[{i}].{f}");
            if c.name.is_empty() || c.name.len() > crate::wire::MAX_NAME_LEN {
                return Err(invalid(
                    field("name"),
                    format!("must be 1..={} bytes", crate::wire::MAX_NAME_LEN),
                ));
            }
            if clients.iter().any(|o| o.id.0 == c.id) {
                return Err(invalid(
                    field("id"),
                    format!("{} is used by another client", c.id),
                ));
            }
            let kind = match c.kind.as_str() {
                "monitor" => ClientKind::Monitor,
                "counter" => match c.period_ms.unwrap_or(1) {
                    p @ 1..=60_000 => ClientKind::Counter {
                        period: Duration::from_millis(p),
                    },
                    p => {
                        return Err(invalid(
                            field("period_ms"),
                            format!("{p} is outside 1..=60000"),
                        ))
                    }
                },
                "mirror" => {
                    let path = c.mirror_path.ok_or_else(|| {
                        invalid(field("mirror_path"), "a mirror needs its NVRAM log path")
                    })?;
                    let bytes = c.mirror_bytes.unwrap_or(4 << 20);
                    if !(64 << 10..=1 << 30).contains(&bytes) || bytes % 4096 != 0 {
                        return Err(invalid(
                            field("mirror_bytes"),
                            format!("{bytes} must be a multiple of 4096 in 64 KiB..=1 GiB"),
                        ));
                    }
                    let load_per_sec = c.mirror_load_per_sec.unwrap_or(0);
                    if load_per_sec > 1_000_000 {
                        return Err(invalid(
                            field("mirror_load_per_sec"),
                            format!("{load_per_sec} is above 1000000"),
                        ));
                    }
                    let entry_bytes = c.mirror_entry_bytes.unwrap_or(256);
                    if entry_bytes == 0 || entry_bytes as u64 > bytes / 8 {
                        return Err(invalid(
                            field("mirror_entry_bytes"),
                            format!("{entry_bytes} must be in 1..={}", bytes / 8),
                        ));
                    }
                    let load_seconds = c.mirror_load_seconds.unwrap_or(5.0);
                    if !(0.0..=86_400.0).contains(&load_seconds) {
                        return Err(invalid(
                            field("mirror_load_seconds"),
                            format!("{load_seconds} is outside 0..=86400"),
                        ));
                    }
                    let load_ms = (load_seconds * 1000.0) as u64;
                    ClientKind::Mirror {
                        path,
                        bytes,
                        load_per_sec,
                        load_ms,
                        entry_bytes,
                    }
                }
                other => {
                    return Err(invalid(
                        field("kind"),
                        format!("{other:?} is not one of monitor, mirror, counter"),
                    ))
                }
            };
            let class = match c.class.as_deref() {
                None if matches!(kind, ClientKind::Mirror { .. }) => BandwidthClass::High,
                None | Some("low") => BandwidthClass::Low,
                Some("high") => BandwidthClass::High,
                Some(other) => {
                    return Err(invalid(
                        field("class"),
                        format!("{other:?} is not low or high"),
                    ))
                }
            };
            let pin = match c.pin {
                Some(p) if (p as usize) < interconnects.len() => Some(InterconnectId(p)),
                Some(p) => {
                    return Err(invalid(
                        field("pin"),
                        format!("interconnect {p} is not configured"),
                    ))
                }
                None => None,
            };
            clients.push(ClientConfig {
                name: c.name,
                id: ClientId(c.id),
                kind,
                class,
                pin,
            });
        }
        let versions = match raw.protocol {
            None => (
                crate::manager::MIN_PROTOCOL_VERSION,
                crate::manager::PROTOCOL_VERSION,
            ),
            Some(p) if p.min_version <= p.max_version => (p.min_version, p.max_version),
            Some(p) => {
                return Err(invalid(
                    "protocol.min_version",
                    format!(
                        "{} is above protocol.max_version ({})",
                        p.min_version, p.max_version
                    ),
                ))
            }
        };
        Ok(NodeConfig {
            versions,
            node: NodeId(raw.node),
            partner: NodeId(raw.partner),
            cluster: ClusterId(raw.cluster),
            secret_file: raw.secret_file,
            status_socket: raw
                .status_socket
                .unwrap_or_else(|| PathBuf::from(format!("/run/ccm-node-{}.sock", raw.node))),
            realtime: raw.realtime.unwrap_or(true),
            timing,
            balance,
            interconnects,
            clients,
        })
    }

    /// Read the cluster secret (at least [`MIN_SECRET_LEN`] bytes, trailing newline removed).
    pub fn read_secret(&self) -> Result<Vec<u8>, ConfigError> {
        let mut s = std::fs::read(&self.secret_file).map_err(|source| ConfigError::Read {
            path: self.secret_file.clone(),
            source,
        })?;
        while s.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            s.pop();
        }
        if s.len() < MIN_SECRET_LEN {
            return Err(invalid(
                "secret_file",
                format!(
                    "the secret has {} bytes, at least {MIN_SECRET_LEN} are needed",
                    s.len()
                ),
            ));
        }
        Ok(s)
    }

    /// The manager configuration for this node.
    pub fn manager_config(&self, secret: Vec<u8>) -> crate::manager::Config {
        let mut c = crate::manager::Config::new(
            self.node,
            self.partner,
            self.cluster,
            secret,
            self.interconnects.len() as u8,
        );
        c.heartbeat_period = self.timing.heartbeat;
        c.heartbeat_misses = self.timing.heartbeat_misses;
        c.partner_down_after = self.timing.partner_down;
        c.failback_hold_down = self.timing.failback_hold_down;
        c.home_grace = self.timing.home_grace;
        c.connect_timeout = self.timing.connect;
        c.handshake_timeout = self.timing.handshake;
        c.capacity = self.interconnects.iter().map(|i| i.capacity).collect();
        c.balance_period = self.balance.period;
        c.balance_window = self.balance.window;
        c.balance_high_permille = self.balance.high_permille;
        c.balance_low_permille = self.balance.low_permille;
        c.balance_dwell = self.balance.dwell;
        (c.min_version, c.max_version) = self.versions;
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        node = 1
        partner = 2
        cluster = 7
        secret_file = "/tmp/s"
        [[interconnect]]
        device = "rxe0"
        local_ip = "10.0.0.1"
        partner_ip = "10.0.0.2"
        [[interconnect]]
        local_ip = "10.0.1.1"
        partner_ip = "10.0.1.2"
        tcp_port = 18600
        [[client]]
        name = "monitor"
        id = 1
        kind = "monitor"
        [[client]]
        name = "nvram"
        id = 2
        kind = "mirror"
        mirror_path = "/dev/shm/nvram"
    "#;

    #[test]
    fn a_full_configuration_is_read_with_defaults_filled() {
        let c = NodeConfig::parse(GOOD).unwrap();
        assert_eq!(c.interconnects.len(), 2);
        assert_eq!(c.interconnects[0].tcp_port, DEFAULT_TCP_PORT);
        assert_eq!(c.interconnects[1].device, None);
        assert_eq!(c.interconnects[1].tcp_port, 18600);
        assert_eq!(
            c.clients[1].class,
            BandwidthClass::High,
            "a mirror is high bandwidth by default"
        );
        assert_eq!(c.timing.heartbeat, Duration::from_millis(10));
        assert_eq!(
            c.interconnects[0].capacity,
            crate::manager::DEFAULT_CAPACITY
        );
        assert_eq!(c.balance.high_permille, 800);
        assert_eq!(c.balance.dwell, Duration::from_secs(2));
        assert_eq!(
            c.versions,
            (
                crate::manager::MIN_PROTOCOL_VERSION,
                crate::manager::PROTOCOL_VERSION
            )
        );
    }

    #[test]
    fn capacity_and_balance_settings_reach_the_manager() {
        let text = GOOD
            .replace(
                "tcp_port = 18600",
                "tcp_port = 18600\n        capacity_mb_s = 40.5",
            )
            .replace(
                "secret_file = \"/tmp/s\"",
                "secret_file = \"/tmp/s\"\n[balance]\nhigh_pct = 70\nlow_pct = 40\ndwell_ms = 500",
            );
        let c = NodeConfig::parse(&text)
            .unwrap()
            .manager_config(b"x".to_vec());
        assert_eq!(c.capacity, [crate::manager::DEFAULT_CAPACITY, 40_500_000]);
        assert_eq!(
            (c.balance_high_permille, c.balance_low_permille),
            (700, 400)
        );
        assert_eq!(c.balance_dwell, Duration::from_millis(500));
        let bad = |from: &str, to: &str| error_of(&GOOD.replace(from, to));
        assert!(bad("tcp_port = 18600", "capacity_mb_s = 0")
            .starts_with("interconnect[1].capacity_mb_s"));
        assert!(bad(
            "secret_file = \"/tmp/s\"",
            "secret_file = \"/tmp/s\"\n[balance]\nhigh_pct = 50\nlow_pct = 60"
        )
        .starts_with("balance.low_pct"));
        assert!(bad(
            "secret_file = \"/tmp/s\"",
            "secret_file = \"/tmp/s\"\n[balance]\nperiod_ms = 500\nwindow_ms = 100"
        )
        .starts_with("balance.window_ms"));
    }

    #[test]
    fn a_protocol_range_is_read_and_an_empty_one_refused() {
        let with = |section: &str| {
            GOOD.replace(
                "secret_file = \"/tmp/s\"",
                &format!("secret_file = \"/tmp/s\"\n{section}"),
            )
        };
        let c = NodeConfig::parse(&with("[protocol]\nmin_version = 7\nmax_version = 9")).unwrap();
        assert_eq!(c.versions, (7, 9));
        let m = c.manager_config(b"0123456789abcdef".to_vec());
        assert_eq!((m.min_version, m.max_version), (7, 9));
        assert!(
            error_of(&with("[protocol]\nmin_version = 9\nmax_version = 7"))
                .starts_with("protocol.min_version")
        );
    }

    #[test]
    fn real_time_and_home_grace_are_read_with_defaults() {
        let c = NodeConfig::parse(GOOD).unwrap();
        assert!(
            c.realtime,
            "the driver asks for real-time scheduling by default"
        );
        assert_eq!(
            c.manager_config(b"x".to_vec()).home_grace,
            crate::manager::Config::new(NodeId(1), NodeId(2), ClusterId(7), "x", 2).home_grace
        );
        let c = NodeConfig::parse(&GOOD.replace(
            "secret_file = \"/tmp/s\"",
            "secret_file = \"/tmp/s\"\nrealtime = false\n[timing]\nhome_grace_ms = 40",
        ))
        .unwrap();
        assert!(!c.realtime);
        assert_eq!(
            c.manager_config(b"x".to_vec()).home_grace,
            Duration::from_millis(40)
        );
        assert!(error_of(&GOOD.replace(
            "secret_file = \"/tmp/s\"",
            "secret_file = \"/tmp/s\"\n[timing]\nhome_grace_ms = 70000"
        ))
        .starts_with("timing.home_grace_ms"));
        assert!(
            error_of(&GOOD.replace("cluster = 7", "cluster = 7\nrealtime = \"yes\""))
                .contains("realtime")
        );
    }

    fn error_of(text: &str) -> String {
        NodeConfig::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn every_bad_field_is_named() {
        assert!(error_of(&GOOD.replace("partner = 2", "partner = 1")).starts_with("partner:"));
        assert!(error_of(&GOOD.replace("\"10.0.0.2\"", "\"10.0.0.1\""))
            .starts_with("interconnect[0].partner_ip"));
        assert!(error_of(&GOOD.replace("\"10.0.0.2\"", "\"fe80::1\"")).contains("same IP family"));
        assert!(
            error_of(&GOOD.replace("kind = \"monitor\"", "kind = \"telepathy\""))
                .starts_with("client[0].kind")
        );
        assert!(error_of(&GOOD.replace("id = 2", "id = 1")).starts_with("client[1].id"));
        assert!(error_of(&GOOD.replace(
            "secret_file = \"/tmp/s\"",
            "secret_file = \"/tmp/s\"\n[timing]\nheartbeat_misses = 1"
        ))
        .starts_with("timing.heartbeat_misses"));
        assert!(error_of(&GOOD.replace(
            "secret_file = \"/tmp/s\"",
            "secret_file = \"/tmp/s\"\n[timing]\npartner_down_ms = 20"
        ))
        .starts_with("timing.partner_down_ms"));
        assert!(
            error_of(&GOOD.replace("mirror_path = \"/dev/shm/nvram\"", ""))
                .starts_with("client[1].mirror_path")
        );
        assert!(
            error_of(&GOOD.replace("cluster = 7", "cluster = 7\ncolour = 3")).contains("colour")
        );
        assert!(
            error_of(&GOOD.replace("local_ip = \"10.0.0.1\"", "local_ip = \"ten\""))
                .contains("local_ip")
        );
    }

    #[test]
    fn a_short_secret_is_refused() {
        let dir = std::env::temp_dir().join(format!("ccm-secret-{}", std::process::id()));
        std::fs::write(&dir, "short\n").unwrap();
        let c = NodeConfig::parse(&GOOD.replace("/tmp/s", dir.to_str().unwrap())).unwrap();
        assert!(c
            .read_secret()
            .unwrap_err()
            .to_string()
            .contains("at least 16"));
        std::fs::write(&dir, "0123456789abcdef0123\n").unwrap();
        assert_eq!(c.read_secret().unwrap().len(), 20);
        let _ = std::fs::remove_file(dir);
    }
}
