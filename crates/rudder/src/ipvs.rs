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
use rtnetlink::packet_route::address::AddressMessage;
use rudder_controller::DataplaneError;
use rudder_controller::ipvs::IpvsDataplane;
use rudder_ipvs::request::Request;
use rudder_ipvs::types::{Protocol, RealServer, Weight};
use rudder_ipvs_compiler::{Op, Server, Target, VsKey};
use rudder_model::Cidr;
use tracing::{debug, error, info, warn};

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
    let index = match dummy_index(handle).await? {
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
            dummy_index(handle)
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
fn proto_of(m: &AddressMessage) -> Option<u8> {
    use rtnetlink::packet_route::address::AddressAttribute;
    m.attributes.iter().find_map(|a| match a {
        AddressAttribute::Protocol(p) => Some(u8::from(*p)),
        _ => None,
    })
}

/// Every address on the interface `index`: the address, the protocol it was added with, and
/// the kernel's message (to delete it with).
async fn address_messages(
    handle: &rtnetlink::Handle,
    index: u32,
) -> Result<Vec<(IpAddr, Option<u8>, AddressMessage)>, String> {
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
        let ip = m.attributes.iter().find_map(|a| match a {
            AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        });
        if let Some(ip) = ip {
            out.push((ip, proto, m));
        }
    }
    Ok(out)
}

/// The addresses on the interface `index` that are Rudder's under `owned`.
async fn addresses(
    handle: &rtnetlink::Handle,
    index: u32,
    owned: Ownership,
) -> Result<Vec<IpAddr>, String> {
    let mut out: Vec<IpAddr> = address_messages(handle, index)
        .await?
        .into_iter()
        .filter(|(ip, proto, _)| owned.owns(ip, *proto))
        .map(|(ip, _, _)| ip)
        .collect();
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
        let handle = rudder_ipvs::Handle::new().map_err(|e| match e {
            rudder_ipvs::Error::NoIpvs => anyhow::anyhow!(
                "--proxy-mode ipvs: this kernel has no IPVS (no \"IPVS\" generic netlink family): \
                 load the ip_vs kernel module (`modprobe ip_vs`, or list ip_vs in \
                 /etc/modules-load.d/), use a kernel built with CONFIG_IP_VS, or run with \
                 --proxy-mode nftables"
            ),
            e => anyhow::Error::new(e).context("--proxy-mode ipvs: cannot talk to IPVS"),
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
            // Active and inactive ones (a half-closed stream is inactive but still sends),
            // as kube-proxy counts them.
            if d.active_conns + d.inactive_conns == 0 {
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
    fn excluded(&self, key: &VsKey) -> bool {
        match key {
            VsKey::Addr { addr, .. } => self.exclude.iter().any(|c| c.contains(&addr.ip())),
            VsKey::Fwmark { .. } => true,
        }
    }

    fn read(&mut self) -> Result<Target, DataplaneError> {
        self.sweep();
        let mut t = Target::default();
        for e in self.handle.services().map_err(err)? {
            let key = e.server.key;
            let real = self
                .handle
                .dests(&key)
                .map_err(err)?
                .into_iter()
                .map(|d| (d.server.addr, d.server.weight.get()))
                .collect::<std::collections::BTreeMap<_, _>>();
            // A real server at weight 0 is being drained, by this run or an earlier one:
            // it is deleted once its connections are gone (kube-proxy re-queues them too).
            for (addr, _) in real.iter().filter(|(_, w)| **w == 0) {
                if !self.excluded(&key) {
                    self.draining.insert((key, *addr));
                }
            }
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
                    let at_once = matches!(
                        k,
                        VsKey::Addr {
                            protocol: Protocol::Udp | Protocol::Sctp,
                            ..
                        }
                    );
                    if at_once {
                        // kube-proxy deletes UDP and SCTP real servers at once
                        // (`IsRsGracefulTerminationNeeded`).
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

/// A kernel release's version (`/proc/sys/kernel/osrelease`), compared as kube-proxy compares
/// it: major, minor and patch, a missing patch being 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct KernelVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl KernelVersion {
    /// The first kernel with `net.ipv4.vs.conn_reuse_mode` (kube-proxy's
    /// `connReuseMinSupportedKernelVersion`).
    pub const CONN_REUSE_MIN: KernelVersion = KernelVersion::new(4, 1, 0);
    /// The first kernel whose `conn_reuse_mode=1` no longer delays reused connections by a
    /// second when conntrack is on (torvalds/linux 35dfb013149f, kubernetes#93297; kube-proxy's
    /// `connReuseFixedKernelVersion`).
    pub const CONN_REUSE_FIXED: KernelVersion = KernelVersion::new(5, 9, 0);

    pub const fn new(major: u32, minor: u32, patch: u32) -> KernelVersion {
        KernelVersion {
            major,
            minor,
            patch,
        }
    }

    /// Parses a kernel release the way kube-proxy does (`version.ParseGeneric`): optional
    /// leading blanks and `v`, then at least `MAJOR.MINOR` (`.PATCH` and more components are
    /// optional), then anything (`-48-amd64`, `+`, `-rc1`). Components past the patch are
    /// ignored.
    pub fn parse(release: &str) -> Result<KernelVersion, String> {
        let text = release.trim_start();
        let text = text.strip_prefix('v').unwrap_or(text);
        let mut numbers = Vec::new();
        let mut rest = text;
        loop {
            let len = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            if len == 0 {
                break;
            }
            let n: u32 = rest[..len]
                .parse()
                .map_err(|_| format!("kernel release {release:?}: component out of range"))?;
            numbers.push(n);
            rest = &rest[len..];
            // Another component only if a digit follows the dot.
            match rest.strip_prefix('.') {
                Some(after) if after.starts_with(|c: char| c.is_ascii_digit()) => rest = after,
                _ => break,
            }
        }
        match numbers.as_slice() {
            [major, minor, more @ ..] => Ok(KernelVersion::new(
                *major,
                *minor,
                more.first().copied().unwrap_or(0),
            )),
            _ => Err(format!(
                "kernel release {release:?}: expected MAJOR.MINOR[.PATCH]"
            )),
        }
    }
}

impl std::fmt::Display for KernelVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// One sysctl to set, by its dotted name (`net.ipv4.vs.conntrack`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sysctl {
    pub name: &'static str,
    pub value: &'static str,
}

impl Sysctl {
    const fn new(name: &'static str, value: &'static str) -> Sysctl {
        Sysctl { name, value }
    }

    /// Its path under `/proc/sys`.
    pub fn path(&self) -> std::path::PathBuf {
        self.name.split('.').collect()
    }
}

/// What is done with `net.ipv4.vs.conn_reuse_mode`, by kube-proxy's rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnReuse {
    /// From 4.1 and before 5.9: set to 0 (among the sysctls to write).
    Set(KernelVersion),
    /// From 5.9: left as it is (the kernel's 1 no longer delays reused connections).
    Fixed(KernelVersion),
    /// Before 4.1: the sysctl does not exist (kube-proxy logs an error and goes on).
    TooOld(KernelVersion),
    /// The kernel release could not be read or parsed: left as it is (kube-proxy refuses to
    /// start instead).
    Unknown(String),
}

/// The IPVS mode's sysctls to write, and why `conn_reuse_mode` is or is not among them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SysctlPlan {
    pub writes: Vec<Sysctl>,
    pub conn_reuse: ConnReuse,
}

/// The sysctls kube-proxy's IPVS mode sets (`NewProxier` in `pkg/proxy/ipvs/proxier.go`), in
/// its order: `net.ipv4.vs.conntrack=1`; `net.ipv4.vs.conn_reuse_mode=0` on kernels from 4.1
/// and before 5.9 only; `expire_nodest_conn=1`, `expire_quiescent_template=1`,
/// `net.ipv4.ip_forward=1`; and with `--ipvs-strict-arp`, `net.ipv4.conf.all.arp_ignore=1` and
/// `arp_announce=2`. Pure: `kernel` is the parsed kernel release, or why there is none.
pub fn plan_sysctls(kernel: Result<KernelVersion, String>, strict_arp: bool) -> SysctlPlan {
    let mut writes = vec![Sysctl::new("net.ipv4.vs.conntrack", "1")];
    let conn_reuse = match kernel {
        Err(why) => ConnReuse::Unknown(why),
        Ok(v) if v < KernelVersion::CONN_REUSE_MIN => ConnReuse::TooOld(v),
        Ok(v) if v >= KernelVersion::CONN_REUSE_FIXED => ConnReuse::Fixed(v),
        Ok(v) => {
            writes.push(Sysctl::new("net.ipv4.vs.conn_reuse_mode", "0"));
            ConnReuse::Set(v)
        }
    };
    writes.extend([
        Sysctl::new("net.ipv4.vs.expire_nodest_conn", "1"),
        Sysctl::new("net.ipv4.vs.expire_quiescent_template", "1"),
        Sysctl::new("net.ipv4.ip_forward", "1"),
    ]);
    if strict_arp {
        writes.extend([
            Sysctl::new("net.ipv4.conf.all.arp_ignore", "1"),
            Sysctl::new("net.ipv4.conf.all.arp_announce", "2"),
        ]);
    }
    SysctlPlan { writes, conn_reuse }
}

/// What writing one sysctl did: `Ok(Some(old))` when it changed, `Ok(None)` when it already
/// had the value.
#[derive(Debug)]
pub struct SysctlOutcome {
    pub sysctl: Sysctl,
    pub result: std::io::Result<Option<String>>,
}

/// Writes each sysctl under `proc_sys` (`/proc/sys`) that does not have its value yet.
pub fn write_sysctls(proc_sys: &std::path::Path, writes: &[Sysctl]) -> Vec<SysctlOutcome> {
    writes
        .iter()
        .map(|s| {
            let path = proc_sys.join(s.path());
            let result = std::fs::read_to_string(&path).and_then(|current| {
                let current = current.trim();
                if current == s.value {
                    Ok(None)
                } else {
                    std::fs::write(&path, s.value).map(|()| Some(current.to_owned()))
                }
            });
            SysctlOutcome { sysctl: *s, result }
        })
        .collect()
}

/// Whether `o` failed to turn `net.ipv4.vs.conntrack` on and it reads 0 (under `proc_sys`):
/// IPVS then marks the packets it forwards untracked, so the masquerade rules (conntrack
/// NAT) never see them and masqueraded traffic does not work.
pub fn ipvs_conntrack_left_off(proc_sys: &std::path::Path, o: &SysctlOutcome) -> bool {
    o.result.is_err()
        && o.sysctl.name == "net.ipv4.vs.conntrack"
        && std::fs::read_to_string(proc_sys.join(o.sysctl.path())).is_ok_and(|v| v.trim() == "0")
}

/// kube-proxy's IPVS sysctls ([`plan_sysctls`]) for this kernel, in this network namespace,
/// each with a log line; one that cannot be set is a warning, not a failure (an error line
/// when it is `net.ipv4.vs.conntrack`, left at 0: masquerading cannot work then).
pub fn set_sysctls(strict_arp: bool) {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_err(|e| format!("reading /proc/sys/kernel/osrelease: {e}"))
        .and_then(|r| KernelVersion::parse(r.trim()));
    let plan = plan_sysctls(kernel, strict_arp);
    match &plan.conn_reuse {
        ConnReuse::Set(v) => {
            debug!(kernel = %v, "kernel before 5.9: net.ipv4.vs.conn_reuse_mode is set to 0")
        }
        ConnReuse::Fixed(v) => info!(
            kernel = %v,
            "net.ipv4.vs.conn_reuse_mode left as it is: kernels from 5.9 no longer delay reused connections (kubernetes#93297)"
        ),
        ConnReuse::TooOld(v) => warn!(
            kernel = %v,
            "cannot set net.ipv4.vs.conn_reuse_mode: it exists from kernel 4.1"
        ),
        ConnReuse::Unknown(why) => warn!(
            "net.ipv4.vs.conn_reuse_mode left as it is: the kernel's version is unknown ({why})"
        ),
    }
    if strict_arp {
        info!("--ipvs-strict-arp: arp_ignore=1 and arp_announce=2 on all interfaces");
    }
    let proc_sys = std::path::Path::new("/proc/sys");
    for o in write_sysctls(proc_sys, &plan.writes) {
        let (sysctl, new) = (o.sysctl.name, o.sysctl.value);
        let left_off = ipvs_conntrack_left_off(proc_sys, &o);
        match o.result {
            Ok(Some(old)) => info!(sysctl, old, new, "set IPVS sysctl"),
            Ok(None) => debug!(sysctl, value = new, "IPVS sysctl already set"),
            Err(e) if left_off => error!(
                sysctl,
                value = new,
                "cannot set IPVS sysctl and it is 0: IPVS marks the packets it forwards untracked, so masquerading (off-cluster clients of ClusterIPs, node ports, hairpin traffic) will not work; set it to 1 on the host or run privileged: {e}"
            ),
            Err(e) => warn!(
                sysctl,
                value = new,
                "cannot set IPVS sysctl (set it on the host): {e}"
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

/// The node-port range of a default API server (`--service-node-port-range`).
const NODE_PORTS: std::ops::RangeInclusive<u16> = 30000..=32767;

/// Whether `rudder cleanup` deletes the virtual server `key`: one on a VIP Rudder bound to the
/// dummy interface (`vips`), or a node port's (in the default node-port range on one of the
/// node's own addresses, `local`), and never one in `exclude`. Anything else (keepalived's,
/// a load balancer's on the host) is not Rudder's.
fn rudders_virtual_server(
    key: &VsKey,
    vips: &[IpAddr],
    local: &[IpAddr],
    exclude: &[Cidr],
) -> bool {
    let VsKey::Addr { addr, .. } = key else {
        return false;
    };
    let ip = addr.ip();
    if exclude.iter().any(|c| c.contains(&ip)) {
        return false;
    }
    vips.contains(&ip) || (local.contains(&ip) && NODE_PORTS.contains(&addr.port()))
}

/// `rudder cleanup` for the IPVS mode, when it ran here (the dummy interface exists; else
/// nothing is touched): the virtual servers Rudder makes (on its VIPs, and node ports on the
/// node's addresses) outside `exclude`, its addresses on the dummy interface, and the
/// interface itself once nothing else is on it. IPVS is left alone when it is not loaded
/// (cleanup never loads the module).
pub fn cleanup(exclude: &[Cidr]) -> anyhow::Result<Cleaned> {
    let mut out = Cleaned::default();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let owned = ownership();
    let Some(vips) = rt
        .block_on(dummy_addresses(owned))
        .map_err(|e| anyhow::anyhow!("{e}"))?
    else {
        return Ok(out);
    };
    if std::path::Path::new("/proc/net/ip_vs").exists() {
        let local: Vec<IpAddr> = crate::proxier::local_addresses()
            .into_iter()
            .filter(|a| !vips.contains(a))
            .collect();
        let mut handle = rudder_ipvs::Handle::new()
            .map_err(|e| anyhow::anyhow!("opening IPVS for cleanup: {e}"))?;
        for e in handle
            .services()
            .map_err(|e| anyhow::anyhow!("listing the virtual servers: {e}"))?
        {
            let key = e.server.key;
            if !rudders_virtual_server(&key, &vips, &local, exclude) {
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
    let (addresses, interface) = rt
        .block_on(cleanup_link(owned))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    out.addresses = addresses;
    out.interface = interface;
    Ok(out)
}

/// The dummy interface's index, if it exists.
async fn dummy_index(handle: &rtnetlink::Handle) -> Result<Option<u32>, String> {
    let mut links = handle.link().get().match_name(DUMMY.to_owned()).execute();
    match links.try_next().await {
        Ok(Some(l)) => Ok(Some(l.header.index)),
        Ok(None) => Ok(None),
        // "No such device" is how the kernel says it is not there.
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -19 => Ok(None),
        Err(e) => Err(format!("listing {DUMMY}: {e}")),
    }
}

/// Rudder's addresses on the dummy interface (`None`: there is no dummy interface).
async fn dummy_addresses(owned: Ownership) -> Result<Option<Vec<IpAddr>>, String> {
    let (conn, handle, _) =
        rtnetlink::new_connection().map_err(|e| format!("no rtnetlink socket: {e}"))?;
    tokio::spawn(conn);
    let Some(index) = dummy_index(&handle).await? else {
        return Ok(None);
    };
    Ok(Some(addresses(&handle, index, owned).await?))
}

/// Removes Rudder's addresses from the dummy interface, and the interface when nothing else
/// is left on it.
async fn cleanup_link(owned: Ownership) -> Result<(Vec<IpAddr>, bool), String> {
    let (conn, handle, _) =
        rtnetlink::new_connection().map_err(|e| format!("no rtnetlink socket: {e}"))?;
    tokio::spawn(conn);
    let Some(index) = dummy_index(&handle).await? else {
        return Ok((Vec::new(), false));
    };
    let mut removed = Vec::new();
    let mut others = 0usize;
    let mut mine = Vec::new();
    for (ip, proto, m) in address_messages(&handle, index).await? {
        if owned.owns(&ip, proto) {
            mine.push((ip, m));
        } else if Ownership::All.owns(&ip, proto) {
            others += 1;
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

/// One timeout flag as `IPVS_CMD_SET_CONFIG` takes it: whole seconds, `None` (not sent, the
/// kernel's value kept) for 0 — and for less than a second, which kube-proxy's conversion
/// truncates to 0 too.
fn timeout_secs(flag: &str, d: std::time::Duration) -> anyhow::Result<Option<u32>> {
    match d.as_secs() {
        0 => Ok(None),
        s => u32::try_from(s)
            .map(Some)
            .map_err(|_| anyhow::anyhow!("{flag}: {s}s is more than IPVS can hold")),
    }
}

/// `--ipvs-tcp-timeout`, `--ipvs-tcpfin-timeout` and `--ipvs-udp-timeout` as the timeouts to
/// set (`ipvsadm --set tcp tcpfin udp`).
pub fn timeouts(
    tcp: std::time::Duration,
    tcp_fin: std::time::Duration,
    udp: std::time::Duration,
) -> anyhow::Result<rudder_ipvs::types::Config> {
    Ok(rudder_ipvs::types::Config {
        tcp: timeout_secs("--ipvs-tcp-timeout", tcp)?,
        tcp_fin: timeout_secs("--ipvs-tcpfin-timeout", tcp_fin)?,
        udp: timeout_secs("--ipvs-udp-timeout", udp)?,
    })
}

/// One timeout for the log: `900s->3600s` when asked for and changed, `120s` otherwise.
pub fn timeout_change(old: Option<u32>, new: Option<u32>) -> String {
    let show = |t: Option<u32>| t.map_or_else(|| "?".to_owned(), |t| format!("{t}s"));
    if old == new {
        show(new)
    } else {
        format!("{}->{}", show(old), show(new))
    }
}

impl IpvsKernel {
    /// Sets the global timeouts that `wanted` holds (IPVS_CMD_SET_CONFIG; none: nothing is
    /// sent) and answers the kernel's timeouts before and after.
    pub fn set_timeouts(
        &mut self,
        wanted: rudder_ipvs::types::Config,
    ) -> Result<Option<(rudder_ipvs::types::Config, rudder_ipvs::types::Config)>, rudder_ipvs::Error>
    {
        if wanted == rudder_ipvs::types::Config::default() {
            return Ok(None);
        }
        let old = self.handle.config()?;
        self.handle.apply(&Request::SetConfig(wanted))?;
        let new = self.handle.config()?;
        Ok(Some((old, new)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn cleanup_deletes_only_virtual_servers_on_rudders_vips_and_node_ports() {
        let sa = |s: &str| -> std::net::SocketAddr { s.parse().expect("test address") };
        let vips = [ip("10.96.0.10")];
        let local = [ip("172.18.0.2")];
        let exclude: Vec<Cidr> = vec!["10.96.0.8/29".parse().expect("cidr")];
        let mine = |k: &str| rudders_virtual_server(&VsKey::tcp(sa(k)), &vips, &local, &[]);
        assert!(mine("10.96.0.10:80"));
        assert!(mine("172.18.0.2:30080"));
        assert!(mine("172.18.0.2:32767"));
        // keepalived's on the node's address, another on an address that is not local.
        assert!(!mine("172.18.0.2:80"));
        assert!(!mine("192.0.2.7:30080"));
        assert!(!rudders_virtual_server(
            &VsKey::tcp(sa("10.96.0.10:80")),
            &vips,
            &local,
            &exclude
        ));
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

    use std::time::Duration;

    fn names(plan: &SysctlPlan) -> Vec<(&'static str, &'static str)> {
        plan.writes.iter().map(|s| (s.name, s.value)).collect()
    }

    #[test]
    fn kernel_releases_parse_like_kube_proxy() {
        for (release, expected) in [
            ("6.1.0-48-amd64", KernelVersion::new(6, 1, 0)),
            ("5.4.0", KernelVersion::new(5, 4, 0)),
            ("5.8", KernelVersion::new(5, 8, 0)),
            ("4.19.0.1-custom", KernelVersion::new(4, 19, 0)),
            ("v4.19.0-rc1", KernelVersion::new(4, 19, 0)),
            ("  5.10.0+\n", KernelVersion::new(5, 10, 0)),
            ("6.18.44-fc-v1147", KernelVersion::new(6, 18, 44)),
            ("3.10.0-1160.el7.x86_64", KernelVersion::new(3, 10, 0)),
            ("5.15.0-1052-azure", KernelVersion::new(5, 15, 0)),
            ("6.1abc", KernelVersion::new(6, 1, 0)),
        ] {
            assert_eq!(KernelVersion::parse(release), Ok(expected), "{release:?}");
        }
        for garbage in [
            "",
            "garbage",
            "6",
            "6.",
            "6.x",
            "-6.1",
            ".5.4",
            "99999999999.1",
            "6.99999999999",
        ] {
            let e = KernelVersion::parse(garbage).expect_err(garbage);
            assert!(e.contains("kernel release"), "{e}");
        }
        assert_eq!(KernelVersion::new(5, 8, 18).to_string(), "5.8.18");
        assert!(KernelVersion::new(5, 8, 99) < KernelVersion::CONN_REUSE_FIXED);
        assert!(KernelVersion::new(5, 10, 0) > KernelVersion::CONN_REUSE_FIXED);
    }

    #[test]
    fn conn_reuse_mode_is_set_only_from_4_1_and_before_5_9() {
        let v = |s: &str| KernelVersion::parse(s);
        let plan = plan_sysctls(v("5.4.0-150-generic"), false);
        assert_eq!(
            names(&plan),
            [
                ("net.ipv4.vs.conntrack", "1"),
                ("net.ipv4.vs.conn_reuse_mode", "0"),
                ("net.ipv4.vs.expire_nodest_conn", "1"),
                ("net.ipv4.vs.expire_quiescent_template", "1"),
                ("net.ipv4.ip_forward", "1"),
            ]
        );
        assert_eq!(plan.conn_reuse, ConnReuse::Set(KernelVersion::new(5, 4, 0)));
        for (release, set) in [
            ("3.10.0", false),
            ("4.0.9", false),
            ("4.1", true),
            ("4.1.0", true),
            ("5.8.18", true),
            ("5.9", false),
            ("5.9.0", false),
            ("6.1.0-48-amd64", false),
            ("6.18.44-fc-v1147", false),
        ] {
            let plan = plan_sysctls(v(release), false);
            let has = plan
                .writes
                .iter()
                .any(|s| s.name == "net.ipv4.vs.conn_reuse_mode");
            assert_eq!(has, set, "{release}: {plan:?}");
            assert_eq!(
                matches!(plan.conn_reuse, ConnReuse::Set(_)),
                set,
                "{release}"
            );
        }
        assert_eq!(
            plan_sysctls(v("6.1.0"), false).conn_reuse,
            ConnReuse::Fixed(KernelVersion::new(6, 1, 0))
        );
        assert_eq!(
            plan_sysctls(v("3.10.0"), false).conn_reuse,
            ConnReuse::TooOld(KernelVersion::new(3, 10, 0))
        );
        // An unknown kernel: left as it is, the other sysctls still set.
        let plan = plan_sysctls(v("garbage"), false);
        assert!(matches!(plan.conn_reuse, ConnReuse::Unknown(ref why) if why.contains("garbage")));
        assert_eq!(plan.writes.len(), 4);
        assert!(
            !plan
                .writes
                .iter()
                .any(|s| s.name == "net.ipv4.vs.conn_reuse_mode")
        );
    }

    #[test]
    fn strict_arp_adds_arp_ignore_and_arp_announce() {
        let kernel = || KernelVersion::parse("6.1.0");
        let off = plan_sysctls(kernel(), false);
        assert!(
            !off.writes.iter().any(|s| s.name.contains("arp")),
            "{off:?}"
        );
        let on = plan_sysctls(kernel(), true);
        assert_eq!(
            names(&on)[names(&off).len()..],
            [
                ("net.ipv4.conf.all.arp_ignore", "1"),
                ("net.ipv4.conf.all.arp_announce", "2"),
            ]
        );
        assert_eq!(
            Sysctl::new("net.ipv4.conf.all.arp_ignore", "1").path(),
            std::path::Path::new("net/ipv4/conf/all/arp_ignore")
        );
    }

    #[test]
    fn sysctls_are_written_only_when_they_differ() {
        // A directory standing for /proc/sys: the host's sysctls are never written by tests.
        let root = tempfile::tempdir().expect("temp dir");
        let plan = plan_sysctls(KernelVersion::parse("6.1.0"), true);
        for (name, value) in [
            ("net/ipv4/vs/conntrack", "0\n"),
            ("net/ipv4/vs/expire_nodest_conn", "1\n"),
            ("net/ipv4/vs/expire_quiescent_template", "0\n"),
            ("net/ipv4/ip_forward", "0\n"),
            ("net/ipv4/conf/all/arp_ignore", "0\n"),
        ] {
            let path = root.path().join(name);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("dirs");
            std::fs::write(path, value).expect("write");
        }
        // arp_announce is missing: its write fails, the others go on.
        let outcomes = write_sysctls(root.path(), &plan.writes);
        let got: Vec<(&str, Result<Option<String>, ()>)> = outcomes
            .into_iter()
            .map(|o| (o.sysctl.name, o.result.map_err(|_| ())))
            .collect();
        assert_eq!(
            got,
            [
                ("net.ipv4.vs.conntrack", Ok(Some("0".to_owned()))),
                ("net.ipv4.vs.expire_nodest_conn", Ok(None)),
                (
                    "net.ipv4.vs.expire_quiescent_template",
                    Ok(Some("0".to_owned()))
                ),
                ("net.ipv4.ip_forward", Ok(Some("0".to_owned()))),
                ("net.ipv4.conf.all.arp_ignore", Ok(Some("0".to_owned()))),
                ("net.ipv4.conf.all.arp_announce", Err(())),
            ]
        );
        let read = |name: &str| std::fs::read_to_string(root.path().join(name)).expect("read");
        assert_eq!(read("net/ipv4/vs/conntrack"), "1");
        assert_eq!(read("net/ipv4/conf/all/arp_ignore"), "1");
        assert_eq!(
            read("net/ipv4/vs/expire_nodest_conn"),
            "1\n",
            "not rewritten"
        );
    }

    #[test]
    fn a_conntrack_sysctl_left_at_zero_is_told_apart() {
        let root = tempfile::tempdir().expect("temp dir");
        let dir = root.path().join("net/ipv4/vs");
        std::fs::create_dir_all(&dir).expect("dirs");
        let conntrack = Sysctl::new("net.ipv4.vs.conntrack", "1");
        let failed = |s: Sysctl| SysctlOutcome {
            sysctl: s,
            result: Err(std::io::Error::from(std::io::ErrorKind::PermissionDenied)),
        };
        std::fs::write(dir.join("conntrack"), "0\n").expect("write");
        assert!(ipvs_conntrack_left_off(root.path(), &failed(conntrack)));
        // Set after all (by the host), written, or another sysctl: no error.
        let ok = SysctlOutcome {
            sysctl: conntrack,
            result: Ok(Some("0".to_owned())),
        };
        assert!(!ipvs_conntrack_left_off(root.path(), &ok));
        std::fs::write(dir.join("expire_nodest_conn"), "0\n").expect("write");
        let other = Sysctl::new("net.ipv4.vs.expire_nodest_conn", "1");
        assert!(!ipvs_conntrack_left_off(root.path(), &failed(other)));
        std::fs::write(dir.join("conntrack"), "1\n").expect("write");
        assert!(!ipvs_conntrack_left_off(root.path(), &failed(conntrack)));
        // Unreadable (no IPVS module): nothing known, no error.
        std::fs::remove_file(dir.join("conntrack")).expect("remove");
        assert!(!ipvs_conntrack_left_off(root.path(), &failed(conntrack)));
    }

    #[test]
    fn timeouts_are_whole_seconds_and_zero_is_not_sent() {
        let c = timeouts(
            Duration::from_secs(3600),
            Duration::ZERO,
            Duration::from_millis(1900),
        )
        .expect("valid");
        assert_eq!(
            c,
            rudder_ipvs::types::Config {
                tcp: Some(3600),
                tcp_fin: None,
                udp: Some(1),
            }
        );
        // Less than a second is 0 for kube-proxy too: the kernel's value stays.
        let c = timeouts(Duration::from_millis(500), Duration::ZERO, Duration::ZERO).expect("ok");
        assert_eq!(c, rudder_ipvs::types::Config::default());
        let e = timeouts(
            Duration::ZERO,
            Duration::from_secs(u64::from(u32::MAX) + 1),
            Duration::ZERO,
        )
        .expect_err("too long");
        assert!(e.to_string().contains("--ipvs-tcpfin-timeout"), "{e}");
    }

    #[test]
    fn timeout_changes_read_old_to_new() {
        assert_eq!(timeout_change(Some(900), Some(3600)), "900s->3600s");
        assert_eq!(timeout_change(Some(120), Some(120)), "120s");
        assert_eq!(timeout_change(None, Some(60)), "?->60s");
    }
}
