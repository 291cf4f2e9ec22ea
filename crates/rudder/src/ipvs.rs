//! The IPVS mode's kernel side: virtual and real servers over generic netlink
//! (`rudder_ipvs::Handle`), the dummy interface `kube-ipvs0` and its addresses over rtnetlink,
//! and kube-proxy's IPVS sysctls.
//!
//! The sync loop is synchronous; rtnetlink is async. The dummy interface is therefore handled
//! by a thread of its own running a current-thread tokio runtime, which the loop asks and
//! waits for: the loop's thread blocks, no runtime worker does.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use futures::TryStreamExt;
use rudder_controller::DataplaneError;
use rudder_controller::ipvs::IpvsDataplane;
use rudder_ipvs::request::Request;
use rudder_ipvs::types::{Protocol, RealServer, Weight};
use rudder_ipvs_compiler::{Op, Server, Target, VsKey};
use rudder_model::Cidr;
use tracing::{debug, info, warn};

/// The dummy interface that holds the VIPs, as kube-proxy names it.
pub const DUMMY: &str = "kube-ipvs0";

/// The address protocol (`IFA_PROTO`, kernel 5.18) Rudder marks the addresses it adds with:
/// only those are ever removed. The kernel reserves 0–3 (unspecified, loopback, router
/// advertisement, link-local); `R`.
pub const ADDRESS_PROTO: u8 = b'R';

/// Which addresses on the dummy interface are Rudder's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ownership {
    /// The kernel keeps address protocols (5.18 and later): those marked [`ADDRESS_PROTO`].
    Marked,
    /// It does not: every address but the link-local ones, as kube-proxy treats them.
    All,
}

impl Ownership {
    /// From the kernel release (`uname -r`): `Marked` from 5.18, `All` before or when the
    /// release cannot be read.
    pub fn of_release(release: &str) -> Ownership {
        let mut parts = release
            .split(|c: char| !c.is_ascii_digit())
            .map(|p| p.parse::<u32>().ok());
        match (parts.next().flatten(), parts.next().flatten()) {
            (Some(major), Some(minor)) if (major, minor) >= (5, 18) => Ownership::Marked,
            _ => Ownership::All,
        }
    }

    /// Whether an address with protocol `proto` (`None`: not reported) is Rudder's.
    pub fn owns(self, ip: &IpAddr, proto: Option<u8>) -> bool {
        let link_local = matches!(ip, IpAddr::V6(a) if (a.segments()[0] & 0xffc0) == 0xfe80);
        match self {
            Ownership::Marked => proto == Some(ADDRESS_PROTO),
            Ownership::All => !link_local,
        }
    }
}

/// The ownership rule of this kernel.
fn ownership() -> Ownership {
    Ownership::of_release(
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim(),
    )
}

/// What the link thread is asked.
enum LinkOp {
    /// Create the dummy interface if it is missing and set it up; answers its index.
    Ensure,
    /// Rudder's addresses on it (see [`Ownership`]).
    List,
    /// Add an address (a host prefix).
    Add(IpAddr),
    /// Remove an address.
    Del(IpAddr),
}

type LinkReply = Result<Vec<IpAddr>, String>;

/// The dummy interface, through the link thread.
struct Links {
    tx: tokio::sync::mpsc::UnboundedSender<(LinkOp, std::sync::mpsc::SyncSender<LinkReply>)>,
}

impl Links {
    fn start() -> std::io::Result<Links> {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(
            LinkOp,
            std::sync::mpsc::SyncSender<LinkReply>,
        )>();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name("rudder-links".into())
            .spawn(move || {
                rt.block_on(async move {
                    let (conn, handle, _) = match rtnetlink::new_connection() {
                        Ok(c) => c,
                        Err(e) => {
                            while let Some((_, reply)) = rx.recv().await {
                                let _ = reply.send(Err(format!("no rtnetlink socket: {e}")));
                            }
                            return;
                        }
                    };
                    tokio::spawn(conn);
                    let mut index: Option<u32> = None;
                    while let Some((op, reply)) = rx.recv().await {
                        let answer = link_op(&handle, &mut index, op).await;
                        let _ = reply.send(answer);
                    }
                });
            })?;
        Ok(Links { tx })
    }

    fn ask(&self, op: LinkOp) -> LinkReply {
        let (reply, answer) = std::sync::mpsc::sync_channel(1);
        self.tx
            .send((op, reply))
            .map_err(|_| "the link thread is gone".to_owned())?;
        answer
            .recv()
            .map_err(|_| "the link thread is gone".to_owned())?
    }
}

/// The index of the dummy interface, created (and set up) when it is missing.
async fn ensure(handle: &rtnetlink::Handle) -> Result<u32, String> {
    let find = || async {
        let mut links = handle.link().get().match_name(DUMMY.to_owned()).execute();
        match links.try_next().await {
            Ok(Some(l)) => Ok(Some(l.header.index)),
            Ok(None) => Ok(None),
            // "No such device" is how the kernel says it is not there.
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -19 => Ok(None),
            Err(e) => Err(format!("listing {DUMMY}: {e}")),
        }
    };
    let index = match find().await? {
        Some(i) => i,
        None => {
            handle
                .link()
                .add(rtnetlink::LinkDummy::new(DUMMY).up().build())
                .execute()
                .await
                .map_err(|e| {
                    format!(
                        "creating the dummy interface {DUMMY} (is the dummy module there?): {e}"
                    )
                })?;
            info!(
                interface = DUMMY,
                "created the dummy interface for the VIPs"
            );
            find()
                .await?
                .ok_or_else(|| format!("{DUMMY} created but not found"))?
        }
    };
    handle
        .link()
        .set(rtnetlink::LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(|e| format!("setting {DUMMY} up: {e}"))?;
    Ok(index)
}

/// The protocol an address was added with, if the kernel reports one.
fn proto_of(m: &rtnetlink::packet_route::address::AddressMessage) -> Option<u8> {
    use rtnetlink::packet_route::address::AddressAttribute;
    m.attributes.iter().find_map(|a| match a {
        AddressAttribute::Protocol(p) => Some(u8::from(*p)),
        _ => None,
    })
}

/// The addresses on the interface `index` that are Rudder's under `owned`.
async fn addresses(
    handle: &rtnetlink::Handle,
    index: u32,
    owned: Ownership,
) -> Result<Vec<IpAddr>, String> {
    use rtnetlink::packet_route::address::AddressAttribute;
    let mut out = Vec::new();
    let mut msgs = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute();
    while let Some(m) = msgs
        .try_next()
        .await
        .map_err(|e| format!("listing the addresses of {DUMMY}: {e}"))?
    {
        if m.header.index != index {
            continue;
        }
        let proto = proto_of(&m);
        for a in &m.attributes {
            if let AddressAttribute::Address(ip) = a {
                if owned.owns(ip, proto) {
                    out.push(*ip);
                }
            }
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

async fn link_op(
    handle: &rtnetlink::Handle,
    index: &mut Option<u32>,
    op: LinkOp,
) -> Result<Vec<IpAddr>, String> {
    let idx = match *index {
        Some(i) if !matches!(op, LinkOp::Ensure) => i,
        _ => {
            let i = ensure(handle).await?;
            *index = Some(i);
            i
        }
    };
    match op {
        LinkOp::Ensure => Ok(Vec::new()),
        LinkOp::List => addresses(handle, idx, ownership()).await,
        LinkOp::Add(ip) => {
            use rtnetlink::packet_route::address::{AddressAttribute, AddressProtocol};
            let prefix = if ip.is_ipv4() { 32 } else { 128 };
            let mut add = handle.address().add(idx, ip, prefix);
            add.message_mut()
                .attributes
                .push(AddressAttribute::Protocol(AddressProtocol::from(
                    ADDRESS_PROTO,
                )));
            // An address that is there already stays whoever's it is: never taken over.
            match add.execute().await {
                Ok(()) => Ok(Vec::new()),
                Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -17 => Ok(Vec::new()),
                Err(e) => Err(format!("adding {ip} to {DUMMY}: {e}")),
            }
        }
        LinkOp::Del(ip) => {
            let mut msgs = handle
                .address()
                .get()
                .set_link_index_filter(idx)
                .set_address_filter(ip)
                .execute();
            let owned = ownership();
            while let Some(m) = msgs
                .try_next()
                .await
                .map_err(|e| format!("finding {ip} on {DUMMY}: {e}"))?
            {
                if m.header.index != idx || !owned.owns(&ip, proto_of(&m)) {
                    continue;
                }
                handle
                    .address()
                    .del(m)
                    .execute()
                    .await
                    .map_err(|e| format!("removing {ip} from {DUMMY}: {e}"))?;
            }
            Ok(Vec::new())
        }
    }
}

/// IPVS and the dummy interface of this network namespace.
pub struct IpvsKernel {
    handle: rudder_ipvs::Handle,
    links: Links,
    /// Real servers at weight 0, to delete once their connections are gone.
    draining: BTreeSet<(VsKey, SocketAddr)>,
    /// `--ipvs-exclude-cidrs`: virtual servers on these addresses are not Rudder's.
    exclude: Vec<Cidr>,
}

fn err(e: impl std::fmt::Display) -> DataplaneError {
    e.to_string().into()
}

impl IpvsKernel {
    /// IPVS of this network namespace, with the dummy interface created if it is missing.
    /// Fails with the module to load when the kernel has no IPVS.
    pub fn new(exclude: Vec<Cidr>) -> anyhow::Result<IpvsKernel> {
        let handle = rudder_ipvs::Handle::new().map_err(|e| {
            anyhow::anyhow!(
                "--proxy-mode ipvs: the kernel has no IPVS (load the ip_vs module: `modprobe ip_vs`): {e}"
            )
        })?;
        let links = Links::start()?;
        links
            .ask(LinkOp::Ensure)
            .map_err(|e| anyhow::anyhow!("--proxy-mode ipvs: {e}"))?;
        Ok(IpvsKernel {
            handle,
            links,
            draining: BTreeSet::new(),
            exclude,
        })
    }

    fn excluded(&self, key: &VsKey) -> bool {
        match key {
            VsKey::Addr { addr, .. } => self.exclude.iter().any(|c| c.contains(&addr.ip())),
            VsKey::Fwmark { .. } => true,
        }
    }

    /// Deletes the drained real servers whose connections are gone (kube-proxy's graceful
    /// termination), and forgets those taken back.
    fn sweep(&mut self) {
        let draining = std::mem::take(&mut self.draining);
        for (key, addr) in draining {
            let Ok(dests) = self.handle.dests(&key) else {
                continue;
            };
            let Some(d) = dests.iter().find(|d| d.server.addr == addr) else {
                continue;
            };
            if d.server.weight.get() != 0 {
                continue;
            }
            if d.active_conns == 0 {
                match self.handle.apply(&Request::DelDest(key, addr)) {
                    Ok(()) => debug!(?key, %addr, "drained real server deleted"),
                    Err(e) => warn!(?key, %addr, "cannot delete a drained real server: {e}"),
                }
            } else {
                self.draining.insert((key, addr));
            }
        }
    }
}

impl IpvsDataplane for IpvsKernel {
    fn read(&mut self) -> Result<Target, DataplaneError> {
        self.sweep();
        let mut t = Target::default();
        for e in self.handle.services().map_err(err)? {
            let key = e.server.key;
            if self.excluded(&key) {
                continue;
            }
            let real = self
                .handle
                .dests(&key)
                .map_err(err)?
                .into_iter()
                .map(|d| (d.server.addr, d.server.weight.get()))
                .collect();
            t.servers.insert(
                key,
                Server {
                    service: e.server,
                    real,
                    bind: false,
                    owner: None,
                },
            );
        }
        t.addresses = self
            .links
            .ask(LinkOp::List)
            .map_err(err)?
            .into_iter()
            .collect();
        Ok(t)
    }

    fn apply(&mut self, ops: &[Op]) -> Result<(), DataplaneError> {
        self.sweep();
        for op in ops {
            match op {
                Op::Bind(ip) => {
                    self.links.ask(LinkOp::Add(*ip)).map_err(err)?;
                }
                Op::Unbind(ip) => {
                    self.links.ask(LinkOp::Del(*ip)).map_err(err)?;
                }
                Op::AddService(vs) => self
                    .handle
                    .apply(&Request::NewService(vs.clone()))
                    .map_err(err)?,
                Op::EditService(vs) => self
                    .handle
                    .apply(&Request::SetService(vs.clone()))
                    .map_err(err)?,
                Op::DelService(k) => {
                    self.draining.retain(|(key, _)| key != k);
                    self.handle.apply(&Request::DelService(*k)).map_err(err)?
                }
                Op::AddReal(k, a) => {
                    self.draining.remove(&(*k, *a));
                    self.handle
                        .apply(&Request::NewDest(
                            *k,
                            RealServer::masquerade(*a, Weight::ONE),
                        ))
                        .map_err(err)?
                }
                Op::SetWeight(k, a, w) => {
                    let weight = Weight::new(*w).unwrap_or(Weight::ONE);
                    self.draining.remove(&(*k, *a));
                    self.handle
                        .apply(&Request::SetDest(*k, RealServer::masquerade(*a, weight)))
                        .map_err(err)?
                }
                Op::Retire(k, a) => {
                    let udp = matches!(
                        k,
                        VsKey::Addr {
                            protocol: Protocol::Udp,
                            ..
                        }
                    );
                    if udp {
                        // kube-proxy deletes UDP real servers at once.
                        self.handle.apply(&Request::DelDest(*k, *a)).map_err(err)?;
                    } else {
                        self.handle
                            .apply(&Request::SetDest(
                                *k,
                                RealServer::masquerade(*a, Weight::ZERO),
                            ))
                            .map_err(err)?;
                        self.draining.insert((*k, *a));
                    }
                }
            }
        }
        Ok(())
    }
}

/// kube-proxy's IPVS sysctls (`pkg/proxy/ipvs/proxier.go`), each with a log line when it
/// cannot be set.
pub fn set_sysctls() {
    for (path, value) in [
        ("/proc/sys/net/ipv4/vs/conntrack", "1"),
        ("/proc/sys/net/ipv4/vs/conn_reuse_mode", "0"),
        ("/proc/sys/net/ipv4/vs/expire_nodest_conn", "1"),
        ("/proc/sys/net/ipv4/vs/expire_quiescent_template", "1"),
        ("/proc/sys/net/ipv4/ip_forward", "1"),
    ] {
        let current = std::fs::read_to_string(path).unwrap_or_default();
        if current.trim() == value {
            continue;
        }
        match std::fs::write(path, value) {
            Ok(()) => info!(sysctl = path, value, "set IPVS sysctl"),
            Err(e) => warn!(
                sysctl = path,
                value, "cannot set IPVS sysctl (set it on the host): {e}"
            ),
        }
    }
}

/// What `rudder cleanup` removed of the IPVS mode.
#[derive(Debug, Default)]
pub struct Cleaned {
    /// Virtual servers deleted.
    pub services: Vec<String>,
    /// Addresses removed from the dummy interface.
    pub addresses: Vec<IpAddr>,
    /// Whether the dummy interface was deleted (nothing but Rudder's addresses was on it).
    pub interface: bool,
}

/// `rudder cleanup` for the IPVS mode: the virtual servers outside `exclude` (those the
/// daemon owns, as kube-proxy's IPVS mode owns them), Rudder's addresses on the dummy
/// interface, and the interface itself once nothing else is on it. IPVS is left alone when
/// it is not loaded (cleanup never loads the module).
pub fn cleanup(exclude: &[Cidr]) -> anyhow::Result<Cleaned> {
    let mut out = Cleaned::default();
    if std::path::Path::new("/proc/net/ip_vs").exists() {
        let mut handle = rudder_ipvs::Handle::new()
            .map_err(|e| anyhow::anyhow!("opening IPVS for cleanup: {e}"))?;
        for e in handle
            .services()
            .map_err(|e| anyhow::anyhow!("listing the virtual servers: {e}"))?
        {
            let key = e.server.key;
            let mine = match key {
                VsKey::Addr { addr, .. } => !exclude.iter().any(|c| c.contains(&addr.ip())),
                VsKey::Fwmark { .. } => false,
            };
            if !mine {
                continue;
            }
            handle
                .apply(&Request::DelService(key))
                .map_err(|e| anyhow::anyhow!("deleting the virtual server {key:?}: {e}"))?;
            out.services.push(match key {
                VsKey::Addr { protocol, addr } => {
                    format!("{} {addr}", format!("{protocol:?}").to_lowercase())
                }
                VsKey::Fwmark { .. } => format!("{key:?}"),
            });
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (addresses, interface) = rt
        .block_on(cleanup_link(ownership()))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    out.addresses = addresses;
    out.interface = interface;
    Ok(out)
}

/// Removes Rudder's addresses from the dummy interface, and the interface when nothing else
/// is left on it.
async fn cleanup_link(owned: Ownership) -> Result<(Vec<IpAddr>, bool), String> {
    let (conn, handle, _) =
        rtnetlink::new_connection().map_err(|e| format!("no rtnetlink socket: {e}"))?;
    tokio::spawn(conn);
    let mut links = handle.link().get().match_name(DUMMY.to_owned()).execute();
    let index = match links.try_next().await {
        Ok(Some(l)) => l.header.index,
        Ok(None) => return Ok((Vec::new(), false)),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -19 => {
            return Ok((Vec::new(), false));
        }
        Err(e) => return Err(format!("listing {DUMMY}: {e}")),
    };
    let mut removed = Vec::new();
    let mut others = 0usize;
    let mut msgs = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute();
    let mut mine = Vec::new();
    while let Some(m) = msgs
        .try_next()
        .await
        .map_err(|e| format!("listing the addresses of {DUMMY}: {e}"))?
    {
        if m.header.index != index {
            continue;
        }
        let proto = proto_of(&m);
        let ip = m.attributes.iter().find_map(|a| match a {
            rtnetlink::packet_route::address::AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        });
        match ip {
            Some(ip) if owned.owns(&ip, proto) => mine.push((ip, m)),
            Some(ip) if Ownership::All.owns(&ip, proto) => others += 1,
            _ => {}
        }
    }
    for (ip, m) in mine {
        handle
            .address()
            .del(m)
            .execute()
            .await
            .map_err(|e| format!("removing {ip} from {DUMMY}: {e}"))?;
        removed.push(ip);
    }
    if others > 0 {
        return Ok((removed, false));
    }
    handle
        .link()
        .del(index)
        .execute()
        .await
        .map_err(|e| format!("deleting {DUMMY}: {e}"))?;
    Ok((removed, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn addresses_are_rudders_by_their_mark_from_5_18_and_all_but_link_local_before() {
        assert_eq!(Ownership::of_release("6.1.0-48-amd64"), Ownership::Marked);
        assert_eq!(Ownership::of_release("5.18.0"), Ownership::Marked);
        assert_eq!(Ownership::of_release("5.17.15-arch1"), Ownership::All);
        assert_eq!(Ownership::of_release("4.19"), Ownership::All);
        assert_eq!(Ownership::of_release(""), Ownership::All);
        assert_eq!(Ownership::of_release("garbage"), Ownership::All);
        let vip = ip("10.96.0.10");
        assert!(Ownership::Marked.owns(&vip, Some(ADDRESS_PROTO)));
        assert!(!Ownership::Marked.owns(&vip, None));
        assert!(!Ownership::Marked.owns(&vip, Some(3)));
        assert!(Ownership::All.owns(&vip, None));
        assert!(Ownership::All.owns(&ip("fd00::10"), None));
        assert!(!Ownership::All.owns(&ip("fe80::1"), None));
        assert!(!Ownership::All.owns(&ip("febf::1"), Some(3)));
    }
}
