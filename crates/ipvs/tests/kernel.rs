//! Against a real kernel with IPVS: ignored by default (this machine's kernel has none); the
//! VM harness runs them as root with `cargo test -p rudder-ipvs --test kernel -- --ignored`.
//! Each test moves its thread into a new network namespace first, so the host's IPVS state
//! is never touched.
//!
//! `recapture` also writes what the kernel really answered to the vectors' requests into
//! `$RUDDER_IPVS_CAPTURE/<name>.hex`, to compare with (and replace) the derived
//! `tests/vectors/reply_*.hex` (see tests/vectors/README.md).
#![cfg(target_endian = "little")]

mod common;

use std::net::SocketAddr;

use nix::sched::{CloneFlags, unshare};
use rudder_ipvs::reply::{self, FamilyReply};
use rudder_ipvs::{
    Config, Handle, RealServer, Request, Scheduler, ServiceKey, VirtualServer, Weight,
    family_request,
};

fn sa(s: &str) -> SocketAddr {
    s.parse().expect("socket address")
}

fn own_namespace() {
    unshare(CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET): run as root");
    // IPVS refuses a real server it has no unicast route to (`EINVAL`, `ip_vs_new_dest`), and
    // a new namespace has no routes: the tests' real servers get one through `lo`.
    for args in [
        &["link", "set", "lo", "up"][..],
        &["route", "add", "10.244.0.0/16", "dev", "lo"][..],
    ] {
        let status = std::process::Command::new("ip")
            .args(args)
            .status()
            .expect("ip (iproute2)");
        assert!(status.success(), "ip {args:?}: {status}");
    }
}

#[test]
#[ignore = "needs root and a kernel with ip_vs (the VM harness)"]
fn kernel_round_trip() {
    own_namespace();
    let mut ipvs = Handle::new().expect("a kernel with IPVS");
    let tcp = ServiceKey::tcp(sa("10.96.0.10:80"));
    let udp6 = ServiceKey::udp(sa("[fd00::10]:53"));
    let svc = VirtualServer::new(tcp, Scheduler::RoundRobin);
    let svc6 = VirtualServer::new(udp6, Scheduler::RoundRobin).persistent(10800);
    ipvs.apply(&Request::NewService(svc.clone()))
        .expect("add tcp");
    ipvs.apply(&Request::NewService(svc6.clone()))
        .expect("add udp6");
    let again = ipvs
        .apply(&Request::NewService(svc.clone()))
        .expect_err("EEXIST");
    assert!(again.is_exists(), "{again:?}");

    let rs = RealServer::masquerade(sa("10.244.1.5:8080"), Weight::ONE);
    let rs2 = RealServer::masquerade(sa("10.244.2.9:8080"), Weight::ONE);
    let outcomes = ipvs
        .batch(&[
            Request::NewDest(tcp, rs),
            Request::NewDest(tcp, rs2),
            Request::NewDest(tcp, rs), // EEXIST, and the next one still runs
            Request::SetDest(
                tcp,
                RealServer {
                    weight: Weight::ZERO,
                    ..rs2
                },
            ),
        ])
        .expect("batch");
    assert!(
        outcomes[0].is_ok() && outcomes[1].is_ok() && outcomes[3].is_ok(),
        "{outcomes:?}"
    );
    assert!(outcomes[2].is_err_and(|e| e.is_exists()), "{outcomes:?}");

    let mut services: Vec<_> = ipvs
        .services()
        .expect("dump")
        .into_iter()
        .map(|e| e.server)
        .collect();
    services.sort_by_key(|s| s.key);
    let mut want = vec![svc.clone(), svc6.clone()];
    want.sort_by_key(|s| s.key);
    assert_eq!(services, want);
    assert_eq!(ipvs.service(&udp6).expect("get").server, svc6);

    let mut dests: Vec<_> = ipvs
        .dests(&tcp)
        .expect("dests")
        .into_iter()
        .map(|e| e.server)
        .collect();
    dests.sort_by_key(|d| d.addr);
    assert_eq!(
        dests,
        vec![
            rs,
            RealServer {
                weight: Weight::ZERO,
                ..rs2
            }
        ]
    );

    let config = Config {
        tcp: Some(900),
        tcp_fin: Some(120),
        udp: Some(300),
    };
    ipvs.apply(&Request::SetConfig(config)).expect("set config");
    assert_eq!(ipvs.config().expect("get config"), config);

    ipvs.apply(&Request::DelDest(tcp, rs.addr))
        .expect("del dest");
    let gone = ipvs
        .apply(&Request::DelDest(tcp, rs.addr))
        .expect_err("ENOENT");
    assert!(gone.is_not_found(), "{gone:?}");
    ipvs.apply(&Request::DelService(tcp)).expect("del service");
    let gone = ipvs.apply(&Request::DelService(tcp)).expect_err("ESRCH");
    assert!(gone.is_not_found(), "{gone:?}");
    assert!(
        ipvs.dests(&tcp)
            .expect("dests of a missing service")
            .is_empty()
    );
    ipvs.apply(&Request::Flush).expect("flush");
    assert!(ipvs.services().expect("dump").is_empty());
}

#[test]
#[ignore = "needs root and a kernel with ip_vs; writes to $RUDDER_IPVS_CAPTURE"]
fn recapture() {
    let Some(dir) = std::env::var_os("RUDDER_IPVS_CAPTURE") else {
        eprintln!("RUDDER_IPVS_CAPTURE not set: nothing to capture");
        return;
    };
    own_namespace();
    let socket = {
        let mut s =
            netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_GENERIC).expect("socket");
        s.bind_auto().expect("bind");
        s.connect(&netlink_sys::SocketAddr::new(0, 0))
            .expect("connect");
        s
    };
    let exchange = |bytes: &[u8], until_done: bool| -> Vec<u8> {
        socket.send(bytes, 0).expect("send");
        let mut all = Vec::new();
        loop {
            let (data, _) = socket.recv_from_full().expect("recv");
            all.extend_from_slice(&data);
            let frames = reply::split_messages(&data).expect("split");
            let last_type = frames.last().map(|m| u16::from_ne_bytes([m[4], m[5]]));
            // NLMSG_ERROR (2) ends a request, NLMSG_DONE (3) a dump.
            if last_type == Some(if until_done { 3 } else { 2 }) {
                return all;
            }
        }
    };
    let write = |name: &str, bytes: &[u8]| {
        let path = std::path::Path::new(&dir).join(format!("{name}.hex"));
        let mut text = String::from("# captured from the kernel by tests/kernel.rs recapture\n");
        text.push_str(
            &common::dump(bytes)
                .lines()
                .map(|l| &l[6..])
                .collect::<Vec<_>>()
                .join("\n"),
        );
        text.push('\n');
        std::fs::write(&path, text).expect("write capture");
    };

    let answer = exchange(&family_request(1), false);
    write("reply_family", &answer);
    let family = reply::split_messages(&answer)
        .expect("split")
        .into_iter()
        .find_map(|m| match reply::decode_family_reply(m) {
            Ok((_, FamilyReply::Id(id))) => Some(id),
            _ => None,
        })
        .expect("the IPVS family id");

    let tcp = ServiceKey::tcp(sa("10.96.0.10:80"));
    let udp6 = ServiceKey::udp(sa("[fd00::10]:53"));
    let add = Request::NewService(VirtualServer::new(tcp, Scheduler::RoundRobin));
    exchange(&add.encode(family, 1), false);
    exchange(
        &Request::NewService(VirtualServer::new(udp6, Scheduler::RoundRobin).persistent(10800))
            .encode(family, 2),
        false,
    );
    write(
        "reply_error_eexist",
        &exchange(&add.encode(family, 1), false),
    );
    let rs = RealServer::masquerade(sa("10.244.1.5:8080"), Weight::ONE);
    write(
        "reply_ack",
        &exchange(&Request::NewDest(tcp, rs).encode(family, 7), false),
    );
    let quiesced = RealServer::masquerade(sa("10.244.2.9:8080"), Weight::ZERO);
    exchange(&Request::NewDest(tcp, quiesced).encode(family, 8), false);
    write(
        "reply_services_dump",
        &exchange(&Request::GetServices.encode(family, 11), true),
    );
    write(
        "reply_dests_dump",
        &exchange(&Request::GetDests(tcp).encode(family, 12), true),
    );
    exchange(
        &Request::SetConfig(Config {
            tcp: Some(900),
            tcp_fin: Some(120),
            udp: Some(300),
        })
        .encode(family, 14),
        false,
    );
    write(
        "reply_config",
        &exchange(&Request::GetConfig.encode(family, 13), false),
    );
    write(
        "reply_error_enoent",
        &exchange(
            &Request::DelDest(tcp, sa("10.244.3.3:8080")).encode(family, 9),
            false,
        ),
    );
    exchange(&Request::Flush.encode(family, 15), false);
    write(
        "reply_error_esrch",
        &exchange(&Request::DelService(tcp).encode(family, 6), false),
    );
}

/// A measurement, not a test (`cargo xtask bench-ipvs` runs it in the VM; docs/performance.md,
/// "IPVS mode"): `RUDDER_IPVS_MEASURE_SERVICES` (default 200) virtual servers with 10 real
/// servers each, written one request at a time and waiting for each acknowledgement
/// (`Handle::apply`, as the IPVS mode writes them), then in a fresh namespace the same requests
/// batched (`Handle::batch`, 64 per datagram), then every virtual server's real servers read
/// back (one dump of the services, one dump per service). Prints `BENCH-BATCH <what>
/// <services> <requests> <seconds>`.
#[test]
#[ignore = "a measurement: needs root and a kernel with ip_vs (the VM harness)"]
fn measure_one_by_one_and_batched() {
    let services: u32 = std::env::var("RUDDER_IPVS_MEASURE_SERVICES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let mut requests = Vec::new();
    for i in 0..services {
        let vip = std::net::Ipv4Addr::from(0x0a60_0000 + i);
        let key = ServiceKey::tcp(SocketAddr::from((vip, 80)));
        requests.push(Request::NewService(VirtualServer::new(
            key,
            Scheduler::RoundRobin,
        )));
        for e in 0..10 {
            let ep = std::net::Ipv4Addr::from(0x0a00_0000 + i * 64 + e + 1);
            requests.push(Request::NewDest(
                key,
                RealServer::masquerade(SocketAddr::from((ep, 8080)), Weight::ONE),
            ));
        }
    }
    let n = requests.len();
    let report = |what: &str, started: std::time::Instant| {
        println!(
            "BENCH-BATCH {what} {services} {n} {:.6}",
            started.elapsed().as_secs_f64()
        );
    };

    // A masqueraded real server must be a unicast address by the namespace's local table,
    // which a namespace only has once an interface is up.
    let fresh_namespace = || {
        own_namespace();
        let up = std::process::Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .status()
            .expect("ip link set lo up");
        assert!(up.success(), "ip link set lo up: {up}");
    };
    fresh_namespace();
    let mut ipvs = Handle::new().expect("a kernel with IPVS");
    let started = std::time::Instant::now();
    for r in &requests {
        ipvs.apply(r).expect("one by one");
    }
    report("one-by-one", started);
    let started = std::time::Instant::now();
    let mut read = 0;
    for s in ipvs.services().expect("dump") {
        read += ipvs.dests(&s.server.key).expect("dests").len();
    }
    report("dump", started);
    assert_eq!(read, 10 * services as usize);
    // IPVS hashes the virtual servers of every namespace into one table: empty it first.
    ipvs.apply(&Request::Flush).expect("flush");
    drop(ipvs);

    fresh_namespace();
    let mut ipvs = Handle::new().expect("a kernel with IPVS");
    let started = std::time::Instant::now();
    let outcomes = ipvs.batch(&requests).expect("batched");
    report("batched", started);
    assert!(
        outcomes.iter().all(Result::is_ok),
        "a batched request failed"
    );
    assert_eq!(ipvs.services().expect("dump").len(), services as usize);
    ipvs.apply(&Request::Flush).expect("flush");
}
