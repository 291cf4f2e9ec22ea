//! Virtual and real servers as `ipvsadm -S -n` prints them (and `ipvsadm -R` reads them):
//! one `-A` line per virtual server, one `-a` line per real server. Pure formatting, so what
//! Rudder means to program can be compared line by line with what the kernel holds.

use std::net::SocketAddr;

use crate::types::{ForwardMethod, Protocol, RealServer, Scheduler, ServiceKey, VirtualServer};

/// `-t ADDR:PORT`, `-u …`, `--sctp-service …` or `-f MARK`.
fn service_spec(key: &ServiceKey) -> String {
    match key {
        ServiceKey::Addr { protocol, addr } => {
            let flag = match protocol {
                Protocol::Tcp => "-t".to_owned(),
                Protocol::Udp => "-u".to_owned(),
                Protocol::Sctp => "--sctp-service".to_owned(),
                Protocol::Other(n) => format!("--protocol {n}"),
            };
            format!("{flag} {}", addr_port(addr))
        }
        ServiceKey::Fwmark { mark, .. } => format!("-f {mark}"),
    }
}

fn addr_port(a: &SocketAddr) -> String {
    match a {
        SocketAddr::V4(a) => a.to_string(),
        SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
    }
}

/// The `-A` line of a virtual server.
pub fn service_line(vs: &VirtualServer) -> String {
    let mut out = format!("-A {} -s {}", service_spec(&vs.key), vs.scheduler);
    let names: [&str; 3] = match vs.scheduler {
        Scheduler::SourceHashing => ["sh-fallback", "sh-port", "flag-3"],
        Scheduler::MaglevHashing => ["mh-fallback", "mh-port", "flag-3"],
        _ => ["flag-1", "flag-2", "flag-3"],
    };
    let set: Vec<&str> = [vs.flags.sched1, vs.flags.sched2, vs.flags.sched3]
        .iter()
        .zip(names)
        .filter(|(on, _)| **on)
        .map(|(_, n)| n)
        .collect();
    if !set.is_empty() {
        out.push_str(&format!(" -b {}", set.join(",")));
    }
    if let Some(p) = &vs.persistence {
        out.push_str(&format!(" -p {}", p.timeout));
        let v4 = match vs.key {
            ServiceKey::Addr { addr, .. } => addr.is_ipv4(),
            ServiceKey::Fwmark { family, .. } => family == crate::types::Family::V4,
        };
        if v4 && p.prefix_len < 32 {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(p.prefix_len))
                .unwrap_or(0);
            out.push_str(&format!(" -M {}", std::net::Ipv4Addr::from(mask)));
        } else if !v4 && p.prefix_len < 128 {
            out.push_str(&format!(" -M {}", p.prefix_len));
        }
    }
    if let Some(pe) = &vs.persistence_engine {
        out.push_str(&format!(" --pe {pe}"));
    }
    if vs.flags.one_packet {
        out.push_str(" -o");
    }
    out
}

/// The `-a` line of a real server of the virtual server `key`.
pub fn dest_line(key: &ServiceKey, rs: &RealServer) -> String {
    let fwd = match rs.forward {
        ForwardMethod::Masquerade => "-m",
        ForwardMethod::Local | ForwardMethod::DirectRoute => "-g",
        ForwardMethod::Tunnel(_) => "-i",
    };
    let mut out = format!(
        "-a {} -r {} {fwd} -w {}",
        service_spec(key),
        addr_port(&rs.addr),
        rs.weight.get()
    );
    if rs.upper_threshold != 0 {
        out.push_str(&format!(" -x {}", rs.upper_threshold));
    }
    if rs.lower_threshold != 0 {
        out.push_str(&format!(" -y {}", rs.lower_threshold));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Family, Persistence, ServiceFlags, Weight};

    fn sa(s: &str) -> SocketAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn lines_read_as_ipvsadm_writes_them() {
        let vs = VirtualServer::new(ServiceKey::tcp(sa("10.96.0.10:80")), Scheduler::RoundRobin);
        assert_eq!(service_line(&vs), "-A -t 10.96.0.10:80 -s rr");
        let sticky =
            VirtualServer::new(ServiceKey::udp(sa("[fd00::10]:53")), Scheduler::RoundRobin)
                .persistent(10800);
        assert_eq!(service_line(&sticky), "-A -u [fd00::10]:53 -s rr -p 10800");
        let mut mh = VirtualServer::new(
            ServiceKey::sctp(sa("10.96.0.11:9000")),
            Scheduler::MaglevHashing,
        );
        mh.flags = ServiceFlags {
            sched2: true,
            ..ServiceFlags::default()
        };
        assert_eq!(
            service_line(&mh),
            "-A --sctp-service 10.96.0.11:9000 -s mh -b mh-port"
        );
        let mut grouped = vs.clone();
        grouped.persistence = Some(Persistence {
            timeout: 60,
            prefix_len: 24,
        });
        assert_eq!(
            service_line(&grouped),
            "-A -t 10.96.0.10:80 -s rr -p 60 -M 255.255.255.0"
        );
        let per_client = Persistence::per_client(60, Family::V6);
        let mut v6 = VirtualServer::new(ServiceKey::tcp(sa("[fd00::1]:80")), Scheduler::RoundRobin);
        v6.persistence = Some(per_client);
        assert_eq!(service_line(&v6), "-A -t [fd00::1]:80 -s rr -p 60");
        let rs = RealServer::masquerade(sa("[fd00:10:244:1::2]:8080"), Weight::ONE);
        assert_eq!(
            dest_line(&v6.key, &rs),
            "-a -t [fd00::1]:80 -r [fd00:10:244:1::2]:8080 -m -w 1"
        );
        let drained = RealServer::masquerade(sa("10.244.1.5:8080"), Weight::ZERO);
        assert_eq!(
            dest_line(&vs.key, &drained),
            "-a -t 10.96.0.10:80 -r 10.244.1.5:8080 -m -w 0"
        );
    }
}
