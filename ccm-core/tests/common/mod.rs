//! Scaffolding shared by the lab's mirror tests: the pair's node configuration and ring-file cleanup.

use std::path::PathBuf;

use ccm_core::node::config::NodeConfig;
use ccm_verbs::lab::{LabTopology, Side};

/// Node `node` (1 on the interconnects' A sides, 2 on the B sides) of a mirror pair: 30 ms x 10 heartbeats,
/// a 300 ms failback hold-down, sessions on `tcp_port`.
pub fn config(lab: &LabTopology, node: u64, tcp_port: u16) -> NodeConfig {
    let side = if node == 1 { Side::A } else { Side::B };
    let other = if node == 1 { Side::B } else { Side::A };
    let secret = format!(
        "/tmp/ccm-lab-nvram-secret-{tcp_port}-{node}-{}",
        std::process::id()
    );
    std::fs::write(&secret, "lab secret 0123456789abcdef nvram").unwrap();
    let mut text = format!(
        r#"
        node = {node}
        partner = {partner}
        cluster = 7
        secret_file = "{secret}"
        [timing]
        heartbeat_ms = 30
        heartbeat_misses = 10
        connect_ms = 200
        handshake_ms = 1000
        failback_hold_down_ms = 300
        "#,
        partner = 3 - node,
    );
    for ic in &lab.interconnects {
        text.push_str(&format!(
            r#"
            [[interconnect]]
            device = "{}"
            local_ip = "{}"
            partner_ip = "{}"
            tcp_port = {tcp_port}
            "#,
            ic.side(side).device,
            ic.side(side).ip,
            ic.side(other).ip,
        ));
    }
    NodeConfig::parse(&text).unwrap()
}

/// Files removed when dropped (the rings of a test, also when it fails).
pub struct Files(pub Vec<PathBuf>);
impl Drop for Files {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}
