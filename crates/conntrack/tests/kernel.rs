//! Lists and deletes a real UDP conntrack entry inside a throwaway network namespace.

use std::net::UdpSocket;
use std::time::Duration;

use rudder_conntrack::ConntrackSocket;
use rudder_e2e::{Netns, e2e_enabled, nft};
use rudder_model::IpFamily;

#[test]
fn lists_and_deletes_udp_flows() {
    if !e2e_enabled() {
        return;
    }
    let ns = Netns::new("ct").expect("netns");
    // Any rule using conntrack enables tracking in the namespace.
    nft::load(&ns, "add table ip t\nadd chain ip t out { type filter hook output priority 0 ; }\nadd rule ip t out ct state new accept\n")
        .expect("nft");
    ns.enter(|| {
        let server = UdpSocket::bind("127.0.0.1:5300").expect("server");
        let client = UdpSocket::bind("127.0.0.1:4300").expect("client");
        client.send_to(b"x", "127.0.0.1:5300").expect("send");
        let mut buf = [0u8; 8];
        server
            .set_read_timeout(Some(Duration::from_secs(1)))
            .expect("timeout");
        let (_, peer) = server.recv_from(&mut buf).expect("received");
        server.send_to(b"y", peer).expect("reply");

        let mut ct = ConntrackSocket::new().expect("conntrack socket");
        let flows = ct.udp_flows(IpFamily::V4).expect("list");
        let flow = flows
            .iter()
            .find(|f| f.orig_src.port() == 4300 && f.orig_dst.port() == 5300)
            .copied()
            .unwrap_or_else(|| panic!("flow not listed: {flows:?}"));
        assert_eq!(flow.reply_src.to_string(), "127.0.0.1:5300");
        assert!(ct.delete(&flow).expect("delete"), "the flow existed");
        assert!(!ct.delete(&flow).expect("delete again"), "already gone");
        let after = ct.udp_flows(IpFamily::V4).expect("list");
        assert!(
            !after.iter().any(|f| f.orig_src.port() == 4300),
            "still listed: {after:?}"
        );
        assert!(
            ct.udp_flows(IpFamily::V6)
                .expect("list v6")
                .iter()
                .all(|f| f.orig_src.is_ipv6())
        );
    })
    .expect("enter");
}
