//! Byte-exact vectors: every request kind encodes to the bytes `tests/vectors/derive.py`
//! derived from the uapi layout, decodes back to the same request, and the kernel's answers
//! (dumps, timeouts, acks, errors) decode to the expected values. See tests/vectors/README.md.
#![cfg(target_endian = "little")]

mod common;

use std::net::SocketAddr;
use std::num::NonZeroU32;

use common::{FAMILY, assert_bytes, vector};
use rudder_ipvs::reply::{self, FamilyReply};
use rudder_ipvs::{
    Config, Family, ForwardMethod, Frame, KernelError, Persistence, RealServer, RealServerEntry,
    Reply, Request, Scheduler, ServiceFlags, ServiceKey, Stats, Tunnel, TunnelChecksum, TunnelKind,
    VirtualServer, VirtualServerEntry, Weight, encode_batch, family_request,
};

fn sa(s: &str) -> SocketAddr {
    s.parse().expect("socket address")
}

fn svc_key() -> ServiceKey {
    ServiceKey::tcp(sa("10.96.0.10:80"))
}

fn v6_key() -> ServiceKey {
    ServiceKey::udp(sa("[fd00::10]:53"))
}

fn masq(addr: &str, weight: Weight) -> RealServer {
    RealServer::masquerade(sa(addr), weight)
}

/// Every request vector: name, sequence number, request.
fn requests() -> Vec<(&'static str, u32, Request)> {
    let sctp_sh = VirtualServer {
        flags: ServiceFlags {
            sched1: true,
            sched2: true,
            ..ServiceFlags::default()
        },
        ..VirtualServer::new(
            ServiceKey::sctp(sa("10.96.0.20:9000")),
            Scheduler::SourceHashing,
        )
    };
    let fwmark = VirtualServer::new(
        ServiceKey::Fwmark {
            family: Family::V4,
            mark: NonZeroU32::new(7).expect("non-zero"),
        },
        Scheduler::WeightedLeastConnection,
    );
    let wrr_persistent = VirtualServer {
        persistence: Some(Persistence {
            timeout: 300,
            prefix_len: 24,
        }),
        ..VirtualServer::new(svc_key(), Scheduler::WeightedRoundRobin)
    };
    let gue = RealServer {
        addr: sa("[fd00:244::7]:53"),
        forward: ForwardMethod::Tunnel(Tunnel {
            kind: TunnelKind::Gue { port: 6080 },
            checksum: TunnelChecksum::Checksum,
        }),
        weight: Weight::new(3).expect("weight"),
        upper_threshold: 0,
        lower_threshold: 0,
    };
    vec![
        (
            "new_service_tcp4_rr",
            1,
            Request::NewService(VirtualServer::new(svc_key(), Scheduler::RoundRobin)),
        ),
        (
            "new_service_udp6_persistent",
            2,
            Request::NewService(
                VirtualServer::new(v6_key(), Scheduler::RoundRobin).persistent(10800),
            ),
        ),
        ("new_service_sctp4_sh", 3, Request::NewService(sctp_sh)),
        ("new_service_fwmark", 4, Request::NewService(fwmark)),
        (
            "set_service_tcp4_wrr_persistent",
            5,
            Request::SetService(wrr_persistent),
        ),
        ("del_service_tcp4", 6, Request::DelService(svc_key())),
        (
            "new_dest_masq",
            7,
            Request::NewDest(svc_key(), masq("10.244.1.5:8080", Weight::ONE)),
        ),
        (
            "set_dest_weight0",
            8,
            Request::SetDest(svc_key(), masq("10.244.1.5:8080", Weight::ZERO)),
        ),
        (
            "del_dest",
            9,
            Request::DelDest(svc_key(), sa("10.244.1.5:8080")),
        ),
        (
            "new_dest_v6_tunnel_gue",
            10,
            Request::NewDest(v6_key(), gue),
        ),
        ("get_services_dump", 11, Request::GetServices),
        ("get_dests_dump", 12, Request::GetDests(svc_key())),
        ("get_config", 13, Request::GetConfig),
        (
            "set_config",
            14,
            Request::SetConfig(Config {
                tcp: Some(900),
                tcp_fin: Some(120),
                udp: Some(300),
            }),
        ),
        ("flush", 15, Request::Flush),
    ]
}

#[test]
fn requests_encode_to_the_vectors() {
    for (name, seq, request) in requests() {
        assert_bytes(&request.encode(FAMILY, seq), &vector(name), name);
    }
}

#[test]
fn request_vectors_decode_to_the_requests() {
    for (name, seq, request) in requests() {
        let decoded = Request::decode(&vector(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(decoded, (request, seq), "{name}");
    }
}

#[test]
fn family_resolution() {
    assert_bytes(
        &family_request(1),
        &vector("family_request"),
        "family_request",
    );
    let answer = vector("reply_family");
    let replies: Vec<_> = reply::split_messages(&answer)
        .expect("split")
        .into_iter()
        .map(|m| reply::decode_family_reply(m).expect("decode"))
        .collect();
    assert_eq!(
        replies,
        vec![(1, FamilyReply::Id(FAMILY)), (1, FamilyReply::Ack)]
    );
}

fn frame(seq: u32, multipart: bool, reply: Reply) -> Frame {
    Frame {
        seq,
        multipart,
        reply,
    }
}

fn stats(c: [u64; 10]) -> Option<Stats> {
    Some(Stats {
        conns: c[0],
        in_packets: c[1],
        out_packets: c[2],
        in_bytes: c[3],
        out_bytes: c[4],
        cps: c[5],
        in_pps: c[6],
        out_pps: c[7],
        in_bps: c[8],
        out_bps: c[9],
    })
}

#[test]
fn service_dump_decodes() {
    let frames = reply::decode(&vector("reply_services_dump")).expect("decode");
    let want = vec![
        frame(
            11,
            true,
            Reply::Service(VirtualServerEntry {
                server: VirtualServer::new(svc_key(), Scheduler::RoundRobin),
                stats: stats([5, 50, 40, 3000, 2000, 0, 0, 0, 0, 0]),
            }),
        ),
        frame(
            11,
            true,
            Reply::Service(VirtualServerEntry {
                server: VirtualServer::new(v6_key(), Scheduler::RoundRobin).persistent(10800),
                stats: stats([1, 2, 2, 120, 240, 0, 0, 0, 0, 0]),
            }),
        ),
        frame(11, true, Reply::Done),
    ];
    assert_eq!(frames, want);
}

#[test]
fn dest_dump_decodes() {
    let frames = reply::decode(&vector("reply_dests_dump")).expect("decode");
    let want = vec![
        frame(
            12,
            true,
            Reply::Dest(RealServerEntry {
                server: masq("10.244.1.5:8080", Weight::ONE),
                active_conns: 3,
                inactive_conns: 1,
                persist_conns: 0,
                stats: stats([4, 40, 30, 2000, 1500, 1, 2, 3, 4, 5]),
            }),
        ),
        frame(
            12,
            true,
            Reply::Dest(RealServerEntry {
                server: masq("10.244.2.9:8080", Weight::ZERO),
                active_conns: 1,
                inactive_conns: 0,
                persist_conns: 0,
                stats: stats([1, 10, 10, 500, 700, 0, 0, 0, 0, 0]),
            }),
        ),
        frame(12, true, Reply::Done),
    ];
    assert_eq!(frames, want);
}

#[test]
fn config_reply_decodes() {
    let frames = reply::decode(&vector("reply_config")).expect("decode");
    let want = vec![
        frame(
            13,
            false,
            Reply::Config(Config {
                tcp: Some(900),
                tcp_fin: Some(120),
                udp: Some(300),
            }),
        ),
        frame(13, false, Reply::Ack),
    ];
    assert_eq!(frames, want);
}

#[test]
fn acks_and_errors_decode() {
    let one = |name: &str| {
        let mut frames = reply::decode(&vector(name)).expect("decode");
        assert_eq!(frames.len(), 1, "{name}");
        frames.remove(0)
    };
    assert_eq!(one("reply_ack"), frame(7, false, Reply::Ack));

    let eexist = one("reply_error_eexist");
    assert_eq!(
        eexist,
        frame(1, false, Reply::Error(KernelError { errno: 17 }))
    );
    let esrch = one("reply_error_esrch");
    assert_eq!(
        esrch,
        frame(6, false, Reply::Error(KernelError { errno: 3 }))
    );
    let enoent = one("reply_error_enoent");
    assert_eq!(
        enoent,
        frame(9, false, Reply::Error(KernelError { errno: 2 }))
    );

    let errno = |f: Frame| match f.reply {
        Reply::Error(e) => e,
        other => panic!("not an error: {other:?}"),
    };
    assert!(errno(eexist).is_exists());
    assert!(errno(esrch).is_not_found());
    assert!(errno(enoent).is_not_found());
    assert!(!KernelError { errno: 17 }.is_not_found());
}

#[test]
fn a_batch_is_the_requests_back_to_back() {
    let batch = [
        Request::NewService(VirtualServer::new(svc_key(), Scheduler::RoundRobin)),
        Request::NewDest(svc_key(), masq("10.244.1.5:8080", Weight::ONE)),
        Request::DelDest(svc_key(), sa("10.244.1.5:8080")),
    ];
    let bytes = encode_batch(&batch, FAMILY, 100);
    let messages = reply::split_messages(&bytes).expect("split");
    assert_eq!(messages.len(), 3);
    for (i, (m, r)) in messages.iter().zip(&batch).enumerate() {
        assert_eq!(
            Request::decode(m).expect("decode"),
            (r.clone(), 100 + i as u32)
        );
    }
    let mut concatenated = vector("new_service_tcp4_rr");
    concatenated[8..12].copy_from_slice(&100u32.to_ne_bytes());
    let mut dest = vector("new_dest_masq");
    dest[8..12].copy_from_slice(&101u32.to_ne_bytes());
    concatenated.extend(dest);
    assert_bytes(&bytes[..concatenated.len()], &concatenated, "batch");
}

/// The sizes quoted in the crate documentation (`# Encoded sizes`).
#[test]
fn encoded_sizes() {
    let len = |r: Request| r.encode(FAMILY, 1).len();
    let v4 = VirtualServer::new(svc_key(), Scheduler::RoundRobin);
    let v6 = VirtualServer::new(v6_key(), Scheduler::WeightedRoundRobin).persistent(10800);
    let lblcr = VirtualServer::new(
        svc_key(),
        Scheduler::LocalityBasedLeastConnectionReplication,
    );
    assert_eq!(len(Request::NewService(v4.clone())), 104);
    assert_eq!(len(Request::SetService(v6)), 104);
    assert_eq!(len(Request::NewService(lblcr)), 108);
    assert_eq!(len(Request::DelService(svc_key())), 68);
    let rs = masq("10.244.1.5:8080", Weight::ONE);
    assert_eq!(len(Request::NewDest(svc_key(), rs)), 140);
    assert_eq!(
        len(Request::SetDest(
            v6_key(),
            masq("[fd00::1]:53", Weight::ZERO)
        )),
        140
    );
    assert_eq!(len(Request::DelDest(svc_key(), rs.addr)), 108);
    assert_eq!(vector("reply_ack").len(), 36);
}

#[test]
fn persistence_netmasks_follow_the_family() {
    // IPv4: the mask itself, network order; IPv6: the prefix length, host order.
    let v4 = vector("set_service_tcp4_wrr_persistent");
    assert!(
        v4.windows(8)
            .any(|w| w == [8, 0, 9, 0, 0xff, 0xff, 0xff, 0])
    );
    let v6 = vector("new_service_udp6_persistent");
    assert!(v6.windows(8).any(|w| w == [8, 0, 9, 0, 128, 0, 0, 0]));
    assert_eq!(
        Persistence::per_client(10, Family::V6),
        Persistence {
            timeout: 10,
            prefix_len: 128
        }
    );
}

/// The same answers as a real kernel (Debian's 6.1) sent them, captured in the test VM
/// (`tests/vectors/captured/`): they decode to the vectors' values, with the counters a fresh
/// namespace has (zero), the family id this kernel assigned, and the kernel's own order.
#[test]
fn captured_replies_decode() {
    let decode = |name: &str| reply::decode(&vector(&format!("captured/{name}"))).expect(name);
    let one = |name: &str| {
        let mut frames = decode(name);
        assert_eq!(frames.len(), 1, "{name}");
        frames.remove(0)
    };
    assert_eq!(one("reply_ack"), frame(7, false, Reply::Ack));
    for (name, seq, errno) in [
        ("reply_error_eexist", 1, 17),
        ("reply_error_esrch", 6, 3),
        ("reply_error_enoent", 9, 2),
    ] {
        assert_eq!(
            one(name),
            frame(seq, false, Reply::Error(KernelError { errno })),
            "{name}"
        );
    }
    assert_eq!(
        decode("reply_config"),
        [
            frame(
                13,
                false,
                Reply::Config(Config {
                    tcp: Some(900),
                    tcp_fin: Some(120),
                    udp: Some(300),
                }),
            ),
            frame(13, false, Reply::Ack),
        ]
    );
    let zero = stats([0; 10]);
    let mut services: Vec<VirtualServerEntry> = decode("reply_services_dump")
        .into_iter()
        .filter_map(|f| match f.reply {
            Reply::Service(s) => Some(s),
            Reply::Done => None,
            other => panic!("not a service: {other:?}"),
        })
        .collect();
    services.sort_by_key(|s| s.server.key);
    let mut want = vec![
        VirtualServerEntry {
            server: VirtualServer::new(svc_key(), Scheduler::RoundRobin),
            stats: zero,
        },
        VirtualServerEntry {
            server: VirtualServer::new(v6_key(), Scheduler::RoundRobin).persistent(10800),
            stats: zero,
        },
    ];
    want.sort_by_key(|s| s.server.key);
    assert_eq!(services, want);
    let mut dests: Vec<RealServerEntry> = decode("reply_dests_dump")
        .into_iter()
        .filter_map(|f| match f.reply {
            Reply::Dest(d) => Some(d),
            Reply::Done => None,
            other => panic!("not a real server: {other:?}"),
        })
        .collect();
    dests.sort_by_key(|d| d.server.addr);
    let entry = |addr: &str, weight| RealServerEntry {
        server: masq(addr, weight),
        active_conns: 0,
        inactive_conns: 0,
        persist_conns: 0,
        stats: zero,
    };
    assert_eq!(
        dests,
        [
            entry("10.244.1.5:8080", Weight::ONE),
            entry("10.244.2.9:8080", Weight::ZERO)
        ]
    );
    let family: Vec<_> = reply::split_messages(&vector("captured/reply_family"))
        .expect("split")
        .into_iter()
        .map(|m| reply::decode_family_reply(m).expect("decode"))
        .collect();
    assert!(
        matches!(family.as_slice(), [(1, FamilyReply::Id(id)), (1, FamilyReply::Ack)] if *id > 0x10),
        "{family:?}"
    );
}
