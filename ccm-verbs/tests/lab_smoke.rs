//! First device test of the lab (issue 2 item 6): open every rxe device, query its port, list
//! its GIDs, and do one RC SEND/RECV between rxe0 and rxe1.

mod common;

use ccm_verbs::lab::LabTopology;
use ccm_verbs::*;
use common::*;

#[test]
fn open_all_devices_query_ports_list_gids_and_send_recv() {
    let Some(lab) = LabTopology::from_env_or_skip("lab_smoke") else {
        return;
    };
    let listed: Vec<String> = devices()
        .expect("device list")
        .into_iter()
        .map(|d| d.name)
        .collect();
    eprintln!("devices: {listed:?}");
    // Open all four at once and keep them open together.
    let mut open = Vec::new();
    for ic in &lab.interconnects {
        for side in [&ic.a, &ic.b] {
            assert!(listed.contains(&side.device), "{} not listed", side.device);
            let ctx = Context::open(&side.device).expect("open");
            let port = ctx.query_port(1).expect("query port");
            eprintln!("{}: {port:?}", side.device);
            assert_eq!(port.state, PortState::Active);
            assert_eq!(port.link_layer, LinkLayer::Ethernet);
            assert_eq!(port.active_mtu, Some(Mtu::Mtu1024));
            let table = ctx.gid_table(1).expect("gid table");
            for e in &table {
                eprintln!(
                    "  gid[{}] {} {:?} {:?}",
                    e.index, e.gid, e.gid_type, e.netdev
                );
            }
            let g = select_roce_v2_by_ip(&table, side.ip).expect("RoCE v2 GID of the IP");
            assert_eq!(g.netdev.as_deref(), Some(side.netdev.as_str()));
            assert_eq!(
                select_roce_v2_by_netdev(&table, &side.netdev).unwrap().gid,
                g.gid
            );
            open.push(ctx);
        }
    }
    assert_eq!(open.len(), 4);

    let ic = lab.ic(0);
    let a = Node::open(&ic.a);
    let b = Node::open(&ic.b);
    let mut sbuf = buffer(&a.pd, 256, AccessFlags::LOCAL_WRITE);
    let rbuf = buffer(&b.pd, 256, AccessFlags::LOCAL_WRITE);
    let msg = b"hello from rxe0 over RC";
    sbuf.as_mut_slice()[..msg.len()].copy_from_slice(msg);
    let rsge = [rbuf.sge().unwrap()];
    connect(&a, &b, AccessFlags::LOCAL_WRITE, || {
        b.qp.post_recv_one(7, &rsge).expect("post recv");
    });
    let ssge = [sbuf.slice(0, msg.len()).unwrap()];
    a.qp.post_send_one(&SendWr::new(42, SendOp::Send, &ssge))
        .expect("post send");
    let sc = one(&a.send_cq);
    assert_eq!(
        (sc.status(), sc.wr_id(), sc.opcode()),
        (WcStatus::Success, 42, WcOpcode::Send)
    );
    let rc = one(&b.recv_cq);
    assert_eq!(rc.status(), WcStatus::Success);
    assert_eq!(rc.wr_id(), 7);
    assert_eq!(rc.opcode(), WcOpcode::Recv);
    assert_eq!(rc.byte_len() as usize, msg.len());
    assert_eq!(rc.qp_num(), b.qp.qpn());
    assert_eq!(rc.imm(), None);
    assert_eq!(&rbuf.as_slice()[..msg.len()], msg);
    eprintln!("RC SEND/RECV rxe0 -> rxe1: {} bytes verified", msg.len());
}
