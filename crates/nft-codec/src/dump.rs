//! Reading a table back: the dump requests (`GETTABLE`, and `GETCHAIN`, `GETRULE`, `GETSET`,
//! `GETSETELEM` with `NLM_F_DUMP`), the gathering of their replies ([`DumpReplies`]), and
//! the decoding of what they hold into Rudder's IR ([`decode_table`]).
//!
//! Chains, sets and elements are decoded exactly: chains with their hook, priority, type and
//! policy; sets and maps with their key and data types from the userdata Rudder writes (the
//! same `typeof` and byte-order records as `nft`), flags and timeout; elements as typed
//! atoms, concatenated interval keys as prefixes. Rules are compared, not decoded: each
//! dumped rule's expressions are put in canonical form ([`crate::canon`]) and matched with
//! the encoding of the rules Rudder means (`expected`); a match is returned as Rudder's rule,
//! anything else as a placeholder rule that names it, so the table read back equals the
//! table Rudder programmed exactly when the kernel holds the same bytecode.
//!
//! Nothing here does I/O: the caller sends the requests and passes every datagram of the
//! answers in.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netlink_packet_core::{NLM_F_DUMP, NLM_F_DUMP_INTR};
use rudder_nft::{
    Atom, BaseChain, Chain, ChainDecl, ChainType, Comment, DataType, Elements, Expr, Family, Hook,
    Key, KeyType, L4Proto, Name, Policy, Rule, Set, SetDecl, SetFlag, Table, TableRef, Verdict,
};

use crate::batch::{msg_type, nfproto};
use crate::canon::{self, CanonicalRule};
use crate::decode::{Attrs, Malformed, Message, Refusal, messages};
use crate::set::{
    EXPR_CONCAT, EXPR_META, EXPR_NUMGEN, EXPR_PAYLOAD, Field, IntervalSets, key_fields,
};
use crate::wire::*;

/// `NFT_MSG_GETTABLE`.
pub const NFT_MSG_GETTABLE: u16 = 1;
/// `NFT_MSG_GETCHAIN`.
pub const NFT_MSG_GETCHAIN: u16 = 4;
/// `NFT_MSG_GETRULE`.
pub const NFT_MSG_GETRULE: u16 = 7;
/// `NFT_MSG_GETSET`.
pub const NFT_MSG_GETSET: u16 = 10;
/// `NFT_MSG_GETSETELEM`.
pub const NFT_MSG_GETSETELEM: u16 = 13;
/// `NFTA_RULE_HANDLE`.
const NFTA_RULE_HANDLE: u16 = 3;
/// `NFTA_SET_ELEM_LIST_ELEMENTS` holds `NFTA_LIST_ELEM`s.
const ELEMS: u16 = NFTA_SET_ELEM_LIST_ELEMENTS;

/// What to ask the kernel for, about one table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request<'a> {
    /// The table itself (`GETTABLE`, answered and acknowledged, or refused with `ENOENT`).
    Table,
    /// Every chain of the table's family (the kernel does not filter chains by table).
    Chains,
    /// The table's rules.
    Rules,
    /// The table's sets and maps, anonymous ones included.
    Sets,
    /// The elements of one set.
    Elements(&'a str),
}

/// The request `req` about `table`, with sequence number `seq`.
pub fn encode_request(req: Request<'_>, table: &TableRef, seq: u32) -> Vec<u8> {
    let mut w = Writer::default();
    let fam = nfproto(table.family);
    let name = table.name.as_str();
    let (ty, flags) = match req {
        Request::Table => (NFT_MSG_GETTABLE, NLM_F_ACK),
        Request::Chains => (NFT_MSG_GETCHAIN, NLM_F_DUMP),
        Request::Rules => (NFT_MSG_GETRULE, NLM_F_DUMP),
        Request::Sets => (NFT_MSG_GETSET, NLM_F_DUMP),
        Request::Elements(_) => (NFT_MSG_GETSETELEM, NLM_F_DUMP),
    };
    let m = w.begin_msg(msg_type(ty), NLM_F_REQUEST | flags, seq, fam, 0);
    match req {
        Request::Table => w.str(NFTA_TABLE_NAME, name),
        Request::Chains => w.str(NFTA_CHAIN_TABLE, name),
        Request::Rules => w.str(NFTA_RULE_TABLE, name),
        Request::Sets => w.str(NFTA_SET_TABLE, name),
        Request::Elements(set) => {
            w.str(NFTA_SET_ELEM_LIST_TABLE, name);
            w.str(NFTA_SET_ELEM_LIST_SET, set);
        }
    }
    w.end_msg(m);
    w.buf
}

/// One nf_tables message of a reply, copied out of its datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dumped {
    /// `NFT_MSG_NEWCHAIN`, `NFT_MSG_NEWRULE`, …
    pub kind: u16,
    /// Its attributes.
    pub attrs: Vec<u8>,
}

impl Dumped {
    fn attrs(&self) -> Attrs<'_> {
        Attrs(&self.attrs)
    }
}

/// Why a table could not be read back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DumpError {
    /// The kernel refused a request (`ENOENT` when the table does not exist).
    #[error("the kernel refused the request: {}", std::io::Error::from_raw_os_error(.0.errno))]
    Refused(Refusal),
    /// The table changed during the dump (`NLM_F_DUMP_INTR`): read it again.
    #[error("the table changed while it was read")]
    Interrupted,
    /// The kernel sent something that is not a well-formed message.
    #[error(transparent)]
    Malformed(#[from] Malformed),
    /// The table holds something Rudder's IR cannot express (it was not written by Rudder).
    #[error("{0}")]
    Foreign(String),
}

impl DumpError {
    /// Whether the object asked for does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, DumpError::Refused(r) if r.errno == 2)
    }
}

/// The answers to one request, gathered datagram by datagram.
#[derive(Debug, Clone)]
pub struct DumpReplies {
    seq: u32,
    messages: Vec<Dumped>,
    done: bool,
    error: Option<DumpError>,
}

impl DumpReplies {
    /// Ready for the answers to the request `seq`.
    pub fn new(seq: u32) -> DumpReplies {
        DumpReplies {
            seq,
            messages: Vec::new(),
            done: false,
            error: None,
        }
    }

    /// One datagram.
    pub fn read(&mut self, datagram: &[u8]) {
        for m in messages(datagram) {
            match m {
                Ok(Message::Nft(n)) if n.header.sequence_number == self.seq => {
                    if n.header.flags & NLM_F_DUMP_INTR != 0 && self.error.is_none() {
                        self.error = Some(DumpError::Interrupted);
                    }
                    self.messages.push(Dumped {
                        kind: n.kind,
                        attrs: n.attrs.0.to_vec(),
                    });
                }
                Ok(Message::Done) => self.done = true,
                Ok(Message::Ack { seq }) if seq == self.seq => self.done = true,
                Ok(Message::Error(r)) if r.seq == self.seq || r.seq == 0 => {
                    self.error.get_or_insert(DumpError::Refused(r));
                    self.done = true;
                }
                Ok(_) => {}
                Err(e) => {
                    self.error.get_or_insert(DumpError::Malformed(e));
                    self.done = true;
                    break;
                }
            }
        }
    }

    /// Whether the last answer has been read.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// The messages, or what went wrong.
    pub fn finish(self) -> Result<Vec<Dumped>, DumpError> {
        match self.error {
            Some(e) => Err(e),
            None => Ok(self.messages),
        }
    }
}

/// Everything dumped about one table.
#[derive(Debug, Clone, Default)]
pub struct TableDump {
    /// The answers to [`Request::Chains`].
    pub chains: Vec<Dumped>,
    /// The answers to [`Request::Rules`].
    pub rules: Vec<Dumped>,
    /// The answers to [`Request::Sets`].
    pub sets: Vec<Dumped>,
    /// The answers to [`Request::Elements`], by set.
    pub elements: BTreeMap<String, Vec<Dumped>>,
}

impl TableDump {
    /// The sets (anonymous ones included) whose elements are to be dumped.
    pub fn set_names(&self) -> Vec<String> {
        self.sets
            .iter()
            .filter_map(|s| s.attrs().string(NFTA_SET_NAME).map(str::to_owned))
            .collect()
    }

    /// Elements held (messages with their lists), for measurements.
    pub fn element_count(&self) -> usize {
        self.elements
            .values()
            .flatten()
            .map(|m| {
                Attrs(m.attrs().get(ELEMS).unwrap_or_default())
                    .iter()
                    .count()
            })
            .sum()
    }
}

fn foreign(what: String) -> DumpError {
    DumpError::Foreign(what)
}

fn name(s: Option<&str>, what: &str) -> Result<Name, DumpError> {
    let s = s.ok_or_else(|| foreign(format!("a {what} without a name")))?;
    Name::new(s).map_err(|e| foreign(format!("{what} {s:?}: {e}")))
}

/// Userdata TLVs: `(type, value)`.
fn tlvs(mut b: &[u8]) -> Vec<(u8, &[u8])> {
    let mut out = Vec::new();
    while b.len() >= 2 {
        let (ty, len) = (b[0], usize::from(b[1]));
        let Some(v) = b.get(2..2 + len) else { break };
        out.push((ty, v));
        b = &b[2 + len..];
    }
    out
}

fn tlv(b: &[u8], ty: u8) -> Option<&[u8]> {
    tlvs(b).into_iter().find(|(t, _)| *t == ty).map(|(_, v)| v)
}

fn tlv_u32(b: &[u8], ty: u8) -> Option<u32> {
    let v = tlv(b, ty)?.get(..4)?;
    Some(u32::from_ne_bytes([v[0], v[1], v[2], v[3]]))
}

fn tlv_str(b: &[u8], ty: u8) -> Option<String> {
    let v = tlv(b, ty)?;
    let v = v.split(|c| *c == 0).next().unwrap_or(v);
    Some(String::from_utf8_lossy(v).into_owned())
}

fn chain_decl(a: Attrs<'_>) -> Result<ChainDecl, DumpError> {
    let name = name(a.string(NFTA_CHAIN_NAME), "chain")?;
    let base = match a.get(NFTA_CHAIN_HOOK) {
        None => None,
        Some(h) => {
            let h = Attrs(h);
            let what = || foreign(format!("base chain {name} of a kind Rudder does not write"));
            let hook = match h.be32(NFTA_HOOK_HOOKNUM) {
                Some(0) => Hook::Prerouting,
                Some(1) => Hook::Input,
                Some(2) => Hook::Forward,
                Some(3) => Hook::Output,
                Some(4) => Hook::Postrouting,
                _ => return Err(what()),
            };
            let kind = match a.string(NFTA_CHAIN_TYPE) {
                Some("filter") => ChainType::Filter,
                Some("nat") => ChainType::Nat,
                _ => return Err(what()),
            };
            let policy = match a.be32(NFTA_CHAIN_POLICY) {
                Some(0) => Policy::Drop,
                _ => Policy::Accept,
            };
            let priority = h.be32(NFTA_HOOK_PRIORITY).ok_or_else(what)? as i32;
            Some(BaseChain {
                kind,
                hook,
                priority,
                policy,
            })
        }
    };
    let comment = a
        .get(NFTA_CHAIN_USERDATA)
        .and_then(|u| tlv_str(u, 0))
        .map(|c| Comment::sanitize(&c));
    Ok(ChainDecl {
        name,
        base,
        comment,
    })
}

fn datatype(id: u32) -> Option<DataType> {
    Some(match id {
        7 => DataType::Ipv4Addr,
        8 => DataType::Ipv6Addr,
        12 => DataType::InetProto,
        13 => DataType::InetService,
        19 => DataType::Mark,
        _ => return None,
    })
}

/// The data types of a (concatenated) type number, 6 bits per field.
fn datatypes(mut n: u32) -> Option<Vec<DataType>> {
    let mut out = Vec::new();
    while n != 0 {
        out.push(datatype(n & 0x3f)?);
        n >>= 6;
    }
    out.reverse();
    (!out.is_empty()).then_some(out)
}

/// One `typeof` expression of set userdata.
fn typeof_one(b: &[u8]) -> Option<Expr> {
    let ty = tlv_u32(b, 0)?;
    let inner = tlv(b, 1)?;
    match ty {
        EXPR_PAYLOAD => match (tlv_u32(inner, 0)?, tlv_u32(inner, 1)?) {
            (12, 11) => Some(Expr::Saddr(Family::Ip)),
            (12, 12) => Some(Expr::Daddr(Family::Ip)),
            (13, 8) => Some(Expr::Saddr(Family::Ip6)),
            (13, 9) => Some(Expr::Daddr(Family::Ip6)),
            (11, 2) => Some(Expr::ThDport),
            _ => None,
        },
        EXPR_META if tlv_u32(inner, 0)? == 16 => Some(Expr::L4Proto),
        EXPR_NUMGEN => Some(Expr::Numgen(tlv_u32(inner, 1)?)),
        _ => None,
    }
}

/// A key or data type from its userdata record (absent: one basic type).
fn key_type(udata: Option<&[u8]>, number: u32) -> Option<KeyType> {
    let Some(u) = udata else {
        return Some(KeyType::Types(vec![datatype(number)?]));
    };
    if tlv_u32(u, 0)? != EXPR_CONCAT {
        return Some(KeyType::Typeof(vec![typeof_one(u)?]));
    }
    let list = tlv(u, 1)?;
    if list.is_empty() {
        return Some(KeyType::Types(datatypes(number)?));
    }
    let exprs: Option<Vec<Expr>> = tlvs(list).into_iter().map(|(_, e)| typeof_one(e)).collect();
    Some(KeyType::Typeof(exprs?))
}

/// A set declaration; `None` for anonymous sets.
fn set_decl(a: Attrs<'_>) -> Result<Option<SetDecl>, DumpError> {
    let flags = a.be32(NFTA_SET_FLAGS).unwrap_or(0);
    if flags & NFT_SET_ANONYMOUS != 0 {
        return Ok(None);
    }
    let name = name(a.string(NFTA_SET_NAME), "set")?;
    let udata = a.get(NFTA_SET_USERDATA).unwrap_or_default();
    let what = || foreign(format!("set {name} of a type Rudder does not write"));
    let key = key_type(tlv(udata, 3), a.be32(NFTA_SET_KEY_TYPE).unwrap_or(0)).ok_or_else(what)?;
    let data = if flags & NFT_SET_MAP == 0 {
        None
    } else {
        let number = a.be32(NFTA_SET_DATA_TYPE).unwrap_or(0);
        if number == NFT_DATA_VERDICT {
            Some(KeyType::Types(vec![DataType::Verdict]))
        } else {
            Some(key_type(tlv(udata, 4), number).ok_or_else(what)?)
        }
    };
    let mut set_flags = Vec::new();
    if flags & NFT_SET_EVAL != 0 {
        set_flags.push(SetFlag::Dynamic);
    }
    if flags & NFT_SET_TIMEOUT != 0 {
        set_flags.push(SetFlag::Timeout);
    }
    if flags & NFT_SET_INTERVAL != 0 {
        set_flags.push(SetFlag::Interval);
    }
    let timeout_secs = a.get(NFTA_SET_TIMEOUT).and_then(|v| {
        let v: [u8; 8] = v.get(..8)?.try_into().ok()?;
        u32::try_from(u64::from_be_bytes(v) / 1000).ok()
    });
    Ok(Some(SetDecl {
        name,
        key,
        data,
        flags: set_flags,
        timeout_secs,
        comment: tlv_str(udata, 7).map(|c| Comment::sanitize(&c)),
    }))
}

/// The value of an `nft_data` nest: raw bytes, or a verdict.
enum Data<'a> {
    Value(&'a [u8]),
    Verdict(Verdict),
}

fn data(b: &[u8]) -> Result<Data<'_>, DumpError> {
    let a = Attrs(b);
    if let Some(v) = a.get(NFTA_DATA_VALUE) {
        return Ok(Data::Value(v));
    }
    let v = Attrs(a.get(NFTA_DATA_VERDICT).unwrap_or_default());
    let chain = || name(v.string(NFTA_VERDICT_CHAIN), "verdict's chain");
    let verdict = match v.be32(NFTA_VERDICT_CODE).map(|c| c as i32) {
        Some(1) => Verdict::Accept,
        Some(0) => Verdict::Drop,
        Some(-5) => Verdict::Return,
        Some(-3) => Verdict::Jump(chain()?),
        Some(-4) => Verdict::Goto(chain()?),
        other => return Err(foreign(format!("verdict code {other:?}"))),
    };
    Ok(Data::Verdict(verdict))
}

/// One field's atom from its bytes (`id` is nft's type number).
fn atom(id: u32, b: &[u8]) -> Option<Atom> {
    Some(match id {
        7 => Atom::Ipv4(Ipv4Addr::from(<[u8; 4]>::try_from(b.get(..4)?).ok()?)),
        8 => Atom::Ipv6(Ipv6Addr::from(<[u8; 16]>::try_from(b.get(..16)?).ok()?)),
        12 => Atom::Proto(match b.first()? {
            6 => L4Proto::Tcp,
            17 => L4Proto::Udp,
            132 => L4Proto::Sctp,
            _ => return None,
        }),
        13 => Atom::Port(u16::from_be_bytes([*b.first()?, *b.get(1)?])),
        19 => Atom::Hex(u32::from_ne_bytes(b.get(..4)?.try_into().ok()?)),
        4 => Atom::Int(u32::from_ne_bytes(b.get(..4)?.try_into().ok()?)),
        _ => return None,
    })
}

/// The prefix `[start, end]` covers, if it is one.
fn prefix(start: &Atom, end: &Atom) -> Option<Atom> {
    let (lo, hi, bits, v4) = match (start, end) {
        (Atom::Ipv4(a), Atom::Ipv4(b)) => (
            u128::from(u32::from(*a)),
            u128::from(u32::from(*b)),
            32u32,
            true,
        ),
        (Atom::Ipv6(a), Atom::Ipv6(b)) => (u128::from(*a), u128::from(*b), 128, false),
        _ => return None,
    };
    let host = (hi ^ lo).count_ones();
    let mask = if host == 0 {
        0
    } else {
        u128::MAX >> (128 - host)
    };
    if hi < lo || lo & mask != 0 || lo | mask != hi {
        return None;
    }
    let addr = if v4 {
        IpAddr::V4(Ipv4Addr::from(lo as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from(lo))
    };
    Some(Atom::Prefix(addr, (bits - host) as u8))
}

/// The fields of a key or datum, at their offsets.
fn fields_of(fields: &[Field], b: &[u8]) -> Option<Vec<Atom>> {
    let pad = fields.len() > 1;
    let mut at = 0usize;
    let mut out = Vec::with_capacity(fields.len());
    for f in fields {
        let len = f.len as usize;
        out.push(atom(f.id, b.get(at..at + len)?)?);
        at += if pad { len.div_ceil(4) * 4 } else { len };
    }
    (at == b.len()).then_some(out)
}

/// How to decode the elements of one set.
struct Layout {
    key: Vec<Field>,
    data: Option<Vec<Field>>,
    interval: bool,
}

fn layout(d: &SetDecl) -> Result<Layout, DumpError> {
    let err = |e| foreign(format!("set {}: {e}", d.name));
    let key = key_fields(&d.key).map_err(err)?;
    let data = match &d.data {
        Some(k) if !d.is_verdict_map() => Some(key_fields(k).map_err(err)?),
        _ => None,
    };
    Ok(Layout {
        key,
        data,
        interval: d.flags.contains(&SetFlag::Interval),
    })
}

/// Decodes one element; `known` (the set Rudder programmed) resolves whether a one-address
/// range of an interval key is an address or a host prefix: both are the same bytes.
fn element(
    decl: &SetDecl,
    l: &Layout,
    b: &[u8],
    known: Option<&Elements>,
) -> Result<(Key, Option<Key>), DumpError> {
    let a = Attrs(b);
    let bad = || {
        foreign(format!(
            "an element of set {} Rudder does not write",
            decl.name
        ))
    };
    fn value(nest: Option<&[u8]>, bad: impl Fn() -> DumpError) -> Result<&[u8], DumpError> {
        match data(nest.unwrap_or_default())? {
            Data::Value(v) => Ok(v),
            Data::Verdict(_) => Err(bad()),
        }
    }
    let start = fields_of(&l.key, value(a.get(NFTA_SET_ELEM_KEY), bad)?).ok_or_else(bad)?;
    let flags = a.be32(NFTA_SET_ELEM_FLAGS).unwrap_or(0);
    if flags & NFT_SET_ELEM_INTERVAL_END != 0 {
        return Err(bad());
    }
    let mut key = start.clone();
    let mut hosts = Vec::new();
    if let Some(end) = a.get(NFTA_SET_ELEM_KEY_END) {
        if !l.interval {
            return Err(bad());
        }
        let end = fields_of(&l.key, value(Some(end), bad)?).ok_or_else(bad)?;
        for (i, (s, e)) in start.iter().zip(&end).enumerate() {
            if s == e {
                if matches!(s, Atom::Ipv4(_) | Atom::Ipv6(_)) {
                    hosts.push(i);
                }
            } else {
                key[i] = prefix(s, e).ok_or_else(bad)?;
            }
        }
    }
    let mut key = Key::new(key);
    if let Some(known) = known.filter(|k| !hosts.is_empty() && !k.contains_key(&key)) {
        // Which host addresses were written as prefixes: try each combination.
        for mask in 1u32..(1 << hosts.len().min(4)) {
            let mut atoms = key.atoms().to_vec();
            for (bit, &i) in hosts.iter().enumerate().take(4) {
                if mask & (1 << bit) != 0 {
                    if let Atom::Ipv4(x) = atoms[i] {
                        atoms[i] = Atom::Prefix(IpAddr::V4(x), 32);
                    } else if let Atom::Ipv6(x) = atoms[i] {
                        atoms[i] = Atom::Prefix(IpAddr::V6(x), 128);
                    }
                }
            }
            let candidate = Key::new(atoms);
            if known.contains_key(&candidate) {
                key = candidate;
                break;
            }
        }
    }
    let value = match (&decl.data, a.get(NFTA_SET_ELEM_DATA)) {
        (None, None) => None,
        (Some(_), Some(d)) => Some(match (data(d)?, &l.data) {
            (Data::Verdict(v), None) => Key::verdict(v),
            (Data::Value(v), Some(f)) => Key::new(fields_of(f, v).ok_or_else(bad)?),
            _ => return Err(bad()),
        }),
        _ => return Err(bad()),
    };
    Ok((key, value))
}

fn element_lists(msgs: &[Dumped]) -> impl Iterator<Item = &[u8]> {
    msgs.iter().flat_map(|m| {
        Attrs(m.attrs().get(ELEMS).unwrap_or_default())
            .iter()
            .filter(|(ty, _)| *ty == NFTA_LIST_ELEM)
            .map(|(_, e)| e)
    })
}

/// The table `table` from what was dumped about it. `expected` is the table Rudder
/// programmed: dumped rules that match one of its rules (in canonical form) are returned as
/// that rule, every other rule as a placeholder that names it (see the module docs).
pub fn decode_table(
    dump: &TableDump,
    table: &TableRef,
    expected: Option<&Table>,
) -> Result<Table, DumpError> {
    let mut out = Table::default();
    for c in &dump.chains {
        let a = c.attrs();
        if a.string(NFTA_CHAIN_TABLE) != Some(table.name.as_str()) {
            continue;
        }
        let decl = chain_decl(a)?;
        out.chains.insert(
            decl.name.clone(),
            Chain {
                decl,
                rules: Vec::new(),
            },
        );
    }
    let no_elements = Vec::new();
    for s in &dump.sets {
        let Some(decl) = set_decl(s.attrs())? else {
            continue;
        };
        let l = layout(&decl)?;
        let known = expected
            .and_then(|t| t.sets.get(&decl.name))
            .map(|s| &s.elements);
        let msgs = dump
            .elements
            .get(decl.name.as_str())
            .unwrap_or(&no_elements);
        let mut elements = Elements::new();
        for e in element_lists(msgs) {
            let (k, v) = element(&decl, &l, e, known)?;
            elements.insert(k, v);
        }
        out.sets.insert(decl.name.clone(), Set { decl, elements });
    }
    // Rules, matched with Rudder's by canonical form.
    let intervals: IntervalSets = expected
        .map(|t| {
            t.sets
                .values()
                .filter(|s| s.decl.flags.contains(&SetFlag::Interval))
                .map(|s| (table.clone(), s.decl.name.clone()))
                .collect()
        })
        .unwrap_or_default();
    let mut wanted: HashMap<Name, HashMap<CanonicalRule, &Rule>> = HashMap::new();
    let anon = |n: &str, _: Option<u32>| {
        let elems: Vec<_> = element_lists(dump.elements.get(n)?)
            .map(canon::element)
            .collect();
        Some(canon::anon_value(elems))
    };
    for r in &dump.rules {
        let a = r.attrs();
        if a.string(NFTA_RULE_TABLE) != Some(table.name.as_str()) {
            continue;
        }
        let chain = name(a.string(NFTA_RULE_CHAIN), "rule's chain")?;
        if !wanted.contains_key(&chain) {
            let mut forms = HashMap::new();
            if let Some(c) = expected.and_then(|t| t.chains.get(&chain)) {
                for rule in &c.rules {
                    if let Ok(form) = canon::expected_rule(table, &chain, rule, &intervals) {
                        forms.entry(form).or_insert(rule);
                    }
                }
            }
            wanted.insert(chain.clone(), forms);
        }
        let form = canon::dumped_rule(a, &anon);
        let rule = match wanted.get(&chain).and_then(|f| f.get(&form)) {
            Some(rule) => (*rule).clone(),
            None => {
                let handle = a
                    .get(NFTA_RULE_HANDLE)
                    .and_then(|h| Some(u64::from_be_bytes(h.get(..8)?.try_into().ok()?)))
                    .unwrap_or(0);
                Rule::new(Vec::new()).with_comment(&format!(
                    "rule not written by Rudder: handle {handle}: {}",
                    form.summary()
                ))
            }
        };
        out.chains
            .get_mut(&chain)
            .ok_or_else(|| foreign(format!("a rule of chain {chain}, which was not listed")))?
            .rules
            .push(rule);
    }
    Ok(out)
}

/// Whether `rule` is a placeholder [`decode_table`] put for a rule Rudder did not write.
pub fn is_foreign_rule(rule: &Rule) -> bool {
    rule.stmts.is_empty()
        && rule
            .comment
            .as_ref()
            .is_some_and(|c| c.as_str().starts_with("rule not written by Rudder"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_recognized() {
        let a = |s: &str| Atom::Ipv4(s.parse().unwrap());
        assert_eq!(
            prefix(&a("10.0.0.0"), &a("10.255.255.255")),
            Some(Atom::Prefix("10.0.0.0".parse().unwrap(), 8))
        );
        assert_eq!(
            prefix(&a("0.0.0.0"), &a("255.255.255.255")),
            Some(Atom::Prefix("0.0.0.0".parse().unwrap(), 0))
        );
        assert_eq!(prefix(&a("10.0.0.1"), &a("10.0.0.5")), None);
        assert_eq!(prefix(&a("10.0.0.1"), &a("10.0.0.2")), None);
    }

    #[test]
    fn type_numbers_split_into_fields() {
        assert_eq!(
            datatypes((7 << 12) | (12 << 6) | 13),
            Some(vec![
                DataType::Ipv4Addr,
                DataType::InetProto,
                DataType::InetService
            ])
        );
        assert_eq!(datatypes(0), None);
        assert_eq!(datatypes(63), None);
    }

    #[test]
    fn requests_carry_the_table() {
        let t = TableRef::new(Family::Ip6, Name::new("rudder").unwrap());
        let b = encode_request(Request::Elements("s"), &t, 5);
        let m = messages(&b).next().unwrap().unwrap();
        let Message::Nft(n) = m else { panic!("{m:?}") };
        assert_eq!(n.kind, NFT_MSG_GETSETELEM);
        assert_eq!(n.family, 10);
        assert_eq!(n.header.flags, NLM_F_REQUEST | NLM_F_DUMP);
        assert_eq!(n.attrs.string(NFTA_SET_ELEM_LIST_TABLE), Some("rudder"));
        assert_eq!(n.attrs.string(NFTA_SET_ELEM_LIST_SET), Some("s"));
    }
}
