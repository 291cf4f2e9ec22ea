//! Round trips over random values: request → bytes → request, bytes → request → bytes, and
//! a service or destination as the kernel would report it → the same typed value.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::num::NonZeroU32;

use proptest::prelude::*;
use rudder_ipvs::{
    Config, Family, ForwardMethod, IpvsMessage, Name, Persistence, Protocol, RealServer, Reply,
    Request, Scheduler, ServiceFlags, ServiceKey, Tunnel, TunnelChecksum, TunnelKind,
    VirtualServer, Weight, reply,
};

fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(|a| IpAddr::V4(Ipv4Addr::from(a))),
        any::<[u8; 16]>().prop_map(|a| IpAddr::V6(Ipv6Addr::from(a))),
    ]
}

fn socket_addr() -> impl Strategy<Value = SocketAddr> {
    (ip(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::new(ip, port))
}

fn protocol() -> impl Strategy<Value = Protocol> {
    prop_oneof![
        Just(Protocol::Tcp),
        Just(Protocol::Udp),
        Just(Protocol::Sctp),
        any::<u16>().prop_map(Protocol::from_number),
    ]
}

fn key() -> impl Strategy<Value = ServiceKey> {
    prop_oneof![
        (protocol(), socket_addr())
            .prop_map(|(protocol, addr)| ServiceKey::Addr { protocol, addr }),
        (any::<bool>(), 1..=u32::MAX).prop_map(|(v6, mark)| ServiceKey::Fwmark {
            family: if v6 { Family::V6 } else { Family::V4 },
            mark: NonZeroU32::new(mark).expect("non-zero"),
        }),
    ]
}

fn name() -> impl Strategy<Value = Name> {
    "[a-z0-9_]{1,15}".prop_map(|s| Name::new(&s).expect("valid name"))
}

fn scheduler() -> impl Strategy<Value = Scheduler> {
    prop_oneof![
        Just(Scheduler::RoundRobin),
        Just(Scheduler::WeightedRoundRobin),
        Just(Scheduler::SourceHashing),
        Just(Scheduler::MaglevHashing),
        Just(Scheduler::LocalityBasedLeastConnectionReplication),
        name().prop_map(|n| Scheduler::from_name(n.as_str()).expect("valid")),
    ]
}

fn virtual_server() -> impl Strategy<Value = VirtualServer> {
    (
        key(),
        scheduler(),
        any::<[bool; 4]>(),
        proptest::option::of((any::<u32>(), any::<u8>())),
        proptest::option::of(name()),
    )
        .prop_map(|(key, scheduler, f, persistence, persistence_engine)| {
            let max = key.family().max_prefix();
            VirtualServer {
                key,
                scheduler,
                flags: ServiceFlags {
                    one_packet: f[0],
                    sched1: f[1],
                    sched2: f[2],
                    sched3: f[3],
                },
                persistence: persistence.map(|(timeout, p)| Persistence {
                    timeout,
                    prefix_len: p % (max + 1),
                }),
                persistence_engine,
            }
        })
}

fn forward() -> impl Strategy<Value = ForwardMethod> {
    let kind = prop_oneof![
        Just(TunnelKind::Ipip),
        Just(TunnelKind::Gre),
        any::<u16>().prop_map(|port| TunnelKind::Gue { port }),
    ];
    let checksum = prop_oneof![
        Just(TunnelChecksum::None),
        Just(TunnelChecksum::Checksum),
        Just(TunnelChecksum::RemoteChecksum),
    ];
    prop_oneof![
        Just(ForwardMethod::Masquerade),
        Just(ForwardMethod::Local),
        Just(ForwardMethod::DirectRoute),
        (kind, checksum)
            .prop_map(|(kind, checksum)| ForwardMethod::Tunnel(Tunnel { kind, checksum })),
    ]
}

fn real_server() -> impl Strategy<Value = RealServer> {
    (
        socket_addr(),
        forward(),
        0..=i32::MAX as u32,
        any::<u32>(),
        any::<u32>(),
    )
        .prop_map(
            |(addr, forward, w, upper_threshold, lower_threshold)| RealServer {
                addr,
                forward,
                weight: Weight::new(w).expect("in range"),
                upper_threshold,
                lower_threshold,
            },
        )
}

fn config() -> impl Strategy<Value = Config> {
    (
        proptest::option::of(any::<u32>()),
        proptest::option::of(any::<u32>()),
        proptest::option::of(any::<u32>()),
    )
        .prop_map(|(tcp, tcp_fin, udp)| Config { tcp, tcp_fin, udp })
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        virtual_server().prop_map(Request::NewService),
        virtual_server().prop_map(Request::SetService),
        key().prop_map(Request::DelService),
        key().prop_map(Request::GetService),
        Just(Request::GetServices),
        (key(), real_server()).prop_map(|(k, r)| Request::NewDest(k, r)),
        (key(), real_server()).prop_map(|(k, r)| Request::SetDest(k, r)),
        (key(), socket_addr()).prop_map(|(k, a)| Request::DelDest(k, a)),
        key().prop_map(Request::GetDests),
        config().prop_map(Request::SetConfig),
        Just(Request::GetConfig),
        Just(Request::Flush),
    ]
}

proptest! {
    #[test]
    fn request_bytes_request(r in request(), family in any::<u16>(), seq in any::<u32>()) {
        let bytes = r.encode(family, seq);
        prop_assert_eq!(bytes.len() % 4, 0);
        prop_assert_eq!(u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize, bytes.len());
        let (decoded, s) = Request::decode(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(s, seq);
        prop_assert_eq!(decoded.encode(family, seq), bytes);
        prop_assert_eq!(decoded, r);
    }

    /// The kernel reports a service with the attributes it was given (plus counters): the
    /// typed value comes back whole.
    #[test]
    fn service_reply_decodes_to_the_service(vs in virtual_server()) {
        let msg = Request::NewService(vs.clone()).message();
        match Reply::from_message(msg).map_err(|e| TestCaseError::fail(e.to_string()))? {
            Reply::Service(entry) => prop_assert_eq!(entry.server, vs),
            other => prop_assert!(false, "not a service: {:?}", other),
        }
    }

    #[test]
    fn dest_reply_decodes_to_the_dest(k in key(), rs in real_server()) {
        let msg: IpvsMessage = Request::NewDest(k, rs).message();
        match Reply::from_message(msg).map_err(|e| TestCaseError::fail(e.to_string()))? {
            Reply::Dest(entry) => prop_assert_eq!(entry.server, rs),
            other => prop_assert!(false, "not a destination: {:?}", other),
        }
    }

    /// A valid message with bytes changed: an error or a value, never a panic.
    #[test]
    fn mutated_messages_do_not_panic(
        r in request(),
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
    ) {
        let mut bytes = r.encode(0x22, 1);
        for (i, v) in edits {
            let n = bytes.len();
            bytes[i % n] = v;
        }
        let _ = Request::decode(&bytes);
        let _ = reply::decode(&bytes);
    }

    /// Any bytes: the decoder returns an error or a value, never panics.
    #[test]
    fn decoding_garbage_does_not_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = reply::decode(&bytes);
        let _ = Request::decode(&bytes);
        let _ = reply::decode_family_reply(&bytes);
    }
}

#[test]
fn names_are_checked() {
    assert!(Name::new("").is_err());
    assert!(Name::new("sixteen_letters_").is_err());
    assert!(Name::new("a\0b").is_err());
    assert_eq!(Scheduler::from_name("rr"), Ok(Scheduler::RoundRobin));
    assert_eq!(
        Scheduler::from_name("mh").map(|s| s.name().to_owned()),
        Ok("mh".to_owned())
    );
    assert!(matches!(
        Scheduler::from_name("none"),
        Ok(Scheduler::Other(_))
    ));
    assert_eq!(Weight::new(i32::MAX as u32 + 1), None);
}
