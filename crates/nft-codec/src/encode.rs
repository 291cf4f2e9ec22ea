//! Encodes a [`Transaction`] as one nf_tables netlink batch.
//!
//! Pure: bytes in memory, no socket. Each IR statement becomes the same kernel expressions
//! that `nft` 1.0.6 generates for its text form (the tests load both into a kernel and compare
//! the listings), and sets carry the same userdata, so `nft list` shows identical rulesets
//! whichever backend wrote them.

use std::collections::HashSet;
use std::net::IpAddr;

use rudder_nft::{
    Atom, CmpOp, DataType, Expr, Family, FibKind, Hook, Key, KeyType, Name, Op, Reject, Rule,
    SetDecl, SetFlag, Stmt, TableRef, Transaction, Value, Verdict,
};

use crate::wire::*;

/// A transaction the netlink encoder cannot express.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// A statement or set shape this encoder does not know.
    #[error("cannot encode {0} as netlink")]
    Unsupported(String),
    /// An object larger than a netlink attribute can hold.
    #[error("{0} is too large for one netlink attribute")]
    TooLarge(String),
}

impl From<NestTooLarge> for EncodeError {
    fn from(_: NestTooLarge) -> EncodeError {
        EncodeError::TooLarge("a nested attribute".into())
    }
}

/// A batch ready to send, and which operation each message sequence number belongs to.
#[derive(Debug)]
pub struct Batch {
    /// The messages, from `BATCH_BEGIN` to `BATCH_END` (no `BATCH_END` in a dry run).
    pub bytes: Vec<u8>,
    /// `(sequence number, index of the operation in the transaction)` per message.
    pub seqs: Vec<(u32, usize)>,
    /// Sequence number of the last operation message (it asks for an acknowledgement).
    pub last_seq: Option<u32>,
}

/// Keep the element list of one message below the 16-bit attribute length.
const ELEMENTS_BYTES_PER_MESSAGE: usize = 60_000;

/// The sets of each table whose keys are intervals; their lookups need nft's byte-order
/// conversion of host-order fields.
pub type IntervalSets = HashSet<(TableRef, Name)>;

/// Updates `sets` with what `tx` declares and deletes.
pub fn track_interval_sets(tx: &Transaction, sets: &mut IntervalSets) {
    for op in tx.ops() {
        match op {
            Op::AddSet(t, s) if s.flags.contains(&SetFlag::Interval) => {
                sets.insert((t.clone(), s.name.clone()));
            }
            Op::DeleteSet(t, n, _) => {
                sets.remove(&(t.clone(), n.clone()));
            }
            Op::DeleteTable(t) => sets.retain(|(tt, _)| tt != t),
            _ => {}
        }
    }
}

fn nfproto(f: Family) -> u8 {
    match f {
        Family::Ip => 2,
        Family::Ip6 => 10,
    }
}

fn msg_type(m: u16) -> u16 {
    (NFNL_SUBSYS_NFTABLES << 8) | m
}

/// The netlink register number of 32-bit slot `slot` (slot 0 is `NFT_REG_1`): 16-byte
/// registers are named where a slot starts one, as nft does.
fn reg(slot: u32) -> u32 {
    if slot % 4 == 0 {
        slot / 4 + 1
    } else {
        slot + 8
    }
}

/// Offset of the source (`saddr`) or destination address in the network header.
fn addr_offset(f: Family, saddr: bool) -> u32 {
    match (f, saddr) {
        (Family::Ip, true) => 12,
        (Family::Ip, false) => 16,
        (Family::Ip6, true) => 8,
        (Family::Ip6, false) => 24,
    }
}

fn addr_len(f: Family) -> u32 {
    match f {
        Family::Ip => 4,
        Family::Ip6 => 16,
    }
}

fn slots(len: u32) -> u32 {
    len.div_ceil(4)
}

/// Encodes `tx` with sequence numbers starting at `seq`.
pub fn encode(tx: &Transaction, known: &IntervalSets, seq: u32) -> Result<Batch, EncodeError> {
    encode_batch(tx, known, seq, true)
}

/// Encodes `tx` as a batch the kernel validates completely and then throws away: the same
/// messages without the closing `BATCH_END`. The kernel processes every message as it would
/// for a commit and reports every error, then, finding no end, aborts the transaction and
/// runs the same table validation it runs before a commit (`NFNL_ABORT_VALIDATE`). This is
/// what `nft --check` sends. Nothing changes, and no change notification is sent.
pub fn encode_dry_run(
    tx: &Transaction,
    known: &IntervalSets,
    seq: u32,
) -> Result<Batch, EncodeError> {
    encode_batch(tx, known, seq, false)
}

fn encode_batch(
    tx: &Transaction,
    known: &IntervalSets,
    seq: u32,
    commit: bool,
) -> Result<Batch, EncodeError> {
    let mut intervals = known.clone();
    // Reserve enough up front: growing a multi-megabyte buffer by doubling would copy it and
    // briefly hold both copies. Pages reserved but never written cost no memory.
    let stats = tx.stats();
    let estimate =
        4096 + stats.objects * 1024 + (stats.elements_added + stats.elements_deleted) * 96;
    let mut e = Encoder {
        w: Writer::with_capacity(estimate),
        seq,
        next_set_id: 1,
        seqs: Vec::with_capacity(tx.len()),
        op: 0,
        last_msg: None,
    };
    let m = e.w.begin_msg(
        NFNL_MSG_BATCH_BEGIN,
        NLM_F_REQUEST,
        e.seq,
        0,
        NFNL_SUBSYS_NFTABLES,
    );
    e.w.end_msg(m);
    e.seq = e.seq.wrapping_add(1);
    for (i, op) in tx.ops().iter().enumerate() {
        e.op = i;
        if let Op::AddSet(t, s) = op
            && s.flags.contains(&SetFlag::Interval)
        {
            intervals.insert((t.clone(), s.name.clone()));
        }
        e.encode_op(op, &intervals)?;
    }
    // The last message asks for an acknowledgement: receiving it proves the kernel processed
    // the whole batch (errors are reported whether asked for or not).
    let mut last_seq = None;
    if let Some((start, seq)) = e.last_msg {
        let at = start + 6;
        let flags = u16::from_ne_bytes([e.w.buf[at], e.w.buf[at + 1]]) | NLM_F_ACK;
        e.w.buf[at..at + 2].copy_from_slice(&flags.to_ne_bytes());
        last_seq = Some(seq);
    }
    if commit {
        let m = e.w.begin_msg(
            NFNL_MSG_BATCH_END,
            NLM_F_REQUEST,
            e.seq,
            0,
            NFNL_SUBSYS_NFTABLES,
        );
        e.w.end_msg(m);
    }
    if e.w.overflow {
        return Err(EncodeError::TooLarge("an attribute".into()));
    }
    Ok(Batch {
        bytes: e.w.buf,
        seqs: e.seqs,
        last_seq,
    })
}

struct Encoder {
    w: Writer,
    seq: u32,
    next_set_id: u32,
    seqs: Vec<(u32, usize)>,
    op: usize,
    /// Start offset and sequence number of the last operation message.
    last_msg: Option<(usize, u32)>,
}

/// The data type of one key field: nft's type number, its length and its byte order
/// (`BYTEORDER_HOST_ENDIAN` 1, `BYTEORDER_BIG_ENDIAN` 2).
#[derive(Clone, Copy)]
struct Field {
    id: u32,
    len: u32,
    byteorder: u32,
}

fn datatype_field(d: DataType) -> Option<Field> {
    let (id, len, byteorder) = match d {
        DataType::Ipv4Addr => (7, 4, 2),
        DataType::Ipv6Addr => (8, 16, 2),
        DataType::InetProto => (12, 1, 2),
        DataType::InetService => (13, 2, 2),
        DataType::Mark => (19, 4, 1),
        DataType::Verdict => return None,
    };
    Some(Field { id, len, byteorder })
}

fn expr_field(e: &Expr) -> Result<Field, EncodeError> {
    let (id, len, byteorder) = match e {
        Expr::Saddr(Family::Ip) | Expr::Daddr(Family::Ip) => (7, 4, 2),
        Expr::Saddr(Family::Ip6) | Expr::Daddr(Family::Ip6) => (8, 16, 2),
        Expr::L4Proto => (12, 1, 1),
        Expr::ThDport => (13, 2, 2),
        Expr::Numgen(_) => (4, 4, 1),
        Expr::Mark | Expr::MarkAnd(_) => (19, 4, 1),
        other => return Err(EncodeError::Unsupported(format!("a set keyed by {other}"))),
    };
    Ok(Field { id, len, byteorder })
}

fn key_fields(k: &KeyType) -> Result<Vec<Field>, EncodeError> {
    match k {
        KeyType::Types(t) => t
            .iter()
            .map(|d| {
                datatype_field(*d)
                    .ok_or_else(|| EncodeError::Unsupported("verdicts as set keys".into()))
            })
            .collect(),
        KeyType::Typeof(e) => e.iter().map(expr_field).collect(),
    }
}

fn type_number(fields: &[Field]) -> u32 {
    fields.iter().fold(0u32, |acc, f| (acc << 6) | f.id)
}

/// Length of a key or datum: a concatenation rounds each field up to whole 32-bit registers;
/// a single field keeps its own length (2 bytes for a port), as nft declares it.
fn padded_len(fields: &[Field]) -> u32 {
    match fields {
        [one] => one.len,
        _ => fields.iter().map(|f| slots(f.len) * 4).sum(),
    }
}

// nft's expression type numbers and protocol descriptions, as stored in set userdata.
const EXPR_VERDICT: u32 = 1;
const EXPR_PAYLOAD: u32 = 7;
const EXPR_META: u32 = 9;
const EXPR_CONCAT: u32 = 13;
const EXPR_NUMGEN: u32 = 23;

/// The `typeof` userdata of one expression: `{0: expression type, 1: its own data}`.
fn typeof_one(e: &Expr) -> Result<Udata, EncodeError> {
    let mut inner = Udata::default();
    let ty = match e {
        Expr::Saddr(f) | Expr::Daddr(f) => {
            let (desc, field) = match (f, matches!(e, Expr::Saddr(_))) {
                (Family::Ip, true) => (12, 11),
                (Family::Ip, false) => (12, 12),
                (Family::Ip6, true) => (13, 8),
                (Family::Ip6, false) => (13, 9),
            };
            inner.put_u32(0, desc);
            inner.put_u32(1, field);
            EXPR_PAYLOAD
        }
        Expr::ThDport => {
            inner.put_u32(0, 11);
            inner.put_u32(1, 2);
            EXPR_PAYLOAD
        }
        Expr::L4Proto => {
            inner.put_u32(0, 16);
            EXPR_META
        }
        Expr::Numgen(m) => {
            inner.put_u32(0, 1);
            inner.put_u32(1, *m);
            inner.put_u32(2, 0);
            EXPR_NUMGEN
        }
        other => return Err(EncodeError::Unsupported(format!("typeof {other}"))),
    };
    let mut u = Udata::default();
    u.put_u32(0, ty);
    u.put_nested(1, &inner);
    Ok(u)
}

fn typeof_udata(exprs: &[Expr]) -> Result<Udata, EncodeError> {
    if let [one] = exprs {
        return typeof_one(one);
    }
    let mut list = Udata::default();
    for (i, e) in exprs.iter().enumerate() {
        list.put_nested(u8::try_from(i).unwrap_or(u8::MAX), &typeof_one(e)?);
    }
    let mut u = Udata::default();
    u.put_u32(0, EXPR_CONCAT);
    u.put_nested(1, &list);
    Ok(u)
}

/// What nft stores for a `type a . b` concatenation: a concat without sub-expressions.
fn empty_concat() -> Udata {
    let mut u = Udata::default();
    u.put_u32(0, EXPR_CONCAT);
    u.put(1, &[]);
    u
}

/// Bytes of one atom; `pad` rounds up to whole 32-bit registers (set keys and map data).
/// `end` selects the last address of a prefix (interval ends).
fn atom_bytes(a: &Atom, out: &mut Vec<u8>, pad: bool, end: bool) -> Result<(), EncodeError> {
    let start = out.len();
    match a {
        Atom::Ipv4(x) => out.extend_from_slice(&x.octets()),
        Atom::Ipv6(x) => out.extend_from_slice(&x.octets()),
        Atom::Proto(p) => out.push(match p {
            rudder_nft::L4Proto::Tcp => 6,
            rudder_nft::L4Proto::Udp => 17,
            rudder_nft::L4Proto::Sctp => 132,
        }),
        Atom::Port(p) => out.extend_from_slice(&p.to_be_bytes()),
        Atom::Int(i) | Atom::Hex(i) => out.extend_from_slice(&i.to_ne_bytes()),
        Atom::Prefix(addr, len) => {
            let (lo, hi) = prefix_range(addr, *len);
            let v = if end { hi } else { lo };
            match addr {
                IpAddr::V4(_) => out.extend_from_slice(&(v as u32).to_be_bytes()),
                IpAddr::V6(_) => out.extend_from_slice(&v.to_be_bytes()),
            }
        }
        Atom::Verdict(_) => {
            return Err(EncodeError::Unsupported("a verdict inside a key".into()));
        }
    }
    if pad {
        while (out.len() - start) % 4 != 0 {
            out.push(0);
        }
    }
    Ok(())
}

/// First and last address of a prefix, as integers.
fn prefix_range(addr: &IpAddr, len: u8) -> (u128, u128) {
    let (v, bits) = match addr {
        IpAddr::V4(a) => (u128::from(u32::from(*a)), 32u32),
        IpAddr::V6(a) => (u128::from(*a), 128u32),
    };
    let len = u32::from(len).min(bits);
    let host = bits - len;
    let all: u128 = if bits == 128 {
        u128::MAX
    } else {
        (1u128 << bits) - 1
    };
    let host_mask: u128 = if host == 0 {
        0
    } else if host >= 128 {
        u128::MAX
    } else {
        (1u128 << host) - 1
    };
    let lo = v & !host_mask & all;
    (lo, lo | host_mask)
}

/// Bytes of a key or datum: fields of a concatenation padded to whole registers, a single
/// field as long as its type (matching [`padded_len`]).
fn key_bytes(k: &Key, end: bool) -> Result<Vec<u8>, EncodeError> {
    let pad = k.atoms().len() > 1;
    let mut out = Vec::with_capacity(k.atoms().len() * 4);
    for a in k.atoms() {
        atom_bytes(a, &mut out, pad, end)?;
    }
    Ok(out)
}

fn verdict_code(v: &Verdict) -> (u32, Option<&Name>) {
    match v {
        Verdict::Accept => (1, None),
        Verdict::Drop => (0, None),
        Verdict::Return => (-5i32 as u32, None),
        Verdict::Jump(c) => (-3i32 as u32, Some(c)),
        Verdict::Goto(c) => (-4i32 as u32, Some(c)),
    }
}

/// One anonymous set or map a rule needs, created in the batch right before the rule.
struct Anon {
    id: u32,
    map: bool,
}

impl Encoder {
    fn begin(&mut self, m: u16, flags: u16, family: Family) -> usize {
        let seq = self.seq;
        self.seq = self.seq.wrapping_add(1);
        self.seqs.push((seq, self.op));
        let start = self
            .w
            .begin_msg(msg_type(m), NLM_F_REQUEST | flags, seq, nfproto(family), 0);
        self.last_msg = Some((start, seq));
        start
    }

    fn encode_op(&mut self, op: &Op, intervals: &IntervalSets) -> Result<(), EncodeError> {
        match op {
            Op::AddTable(t) => {
                let m = self.begin(NFT_MSG_NEWTABLE, NLM_F_CREATE, t.family);
                self.w.str(NFTA_TABLE_NAME, t.name.as_str());
                self.w.u32(NFTA_TABLE_FLAGS, 0);
                self.w.end_msg(m);
            }
            Op::DeleteTable(t) => {
                let m = self.begin(NFT_MSG_DELTABLE, 0, t.family);
                self.w.str(NFTA_TABLE_NAME, t.name.as_str());
                self.w.end_msg(m);
            }
            Op::AddChain(t, c) => {
                let m = self.begin(NFT_MSG_NEWCHAIN, NLM_F_CREATE, t.family);
                self.w.str(NFTA_CHAIN_TABLE, t.name.as_str());
                self.w.str(NFTA_CHAIN_NAME, c.name.as_str());
                if let Some(b) = &c.base {
                    self.w.str(
                        NFTA_CHAIN_TYPE,
                        match b.kind {
                            rudder_nft::ChainType::Filter => "filter",
                            rudder_nft::ChainType::Nat => "nat",
                        },
                    );
                    self.w.u32(
                        NFTA_CHAIN_POLICY,
                        match b.policy {
                            rudder_nft::Policy::Accept => 1,
                            rudder_nft::Policy::Drop => 0,
                        },
                    );
                    let h = self.w.nest(NFTA_CHAIN_HOOK);
                    self.w.u32(
                        NFTA_HOOK_HOOKNUM,
                        match b.hook {
                            Hook::Prerouting => 0,
                            Hook::Input => 1,
                            Hook::Forward => 2,
                            Hook::Output => 3,
                            Hook::Postrouting => 4,
                        },
                    );
                    self.w.u32(NFTA_HOOK_PRIORITY, b.priority as u32);
                    self.w.end_nest(h)?;
                }
                if let Some(cm) = &c.comment {
                    let mut u = Udata::default();
                    u.put_str(0, cm.as_str());
                    self.udata(NFTA_CHAIN_USERDATA, &u)?;
                }
                self.w.end_msg(m);
            }
            Op::FlushChain(t, c) => {
                let m = self.begin(NFT_MSG_DELRULE, 0, t.family);
                self.w.str(NFTA_RULE_TABLE, t.name.as_str());
                self.w.str(NFTA_RULE_CHAIN, c.as_str());
                self.w.end_msg(m);
            }
            Op::DeleteChain(t, c) => {
                let m = self.begin(NFT_MSG_DELCHAIN, 0, t.family);
                self.w.str(NFTA_CHAIN_TABLE, t.name.as_str());
                self.w.str(NFTA_CHAIN_NAME, c.as_str());
                self.w.end_msg(m);
            }
            Op::AddRule(t, c, r) => self.rule(t, c, r, intervals)?,
            Op::AddSet(t, s) => self.set(t, s)?,
            Op::FlushSet(t, s, _) => {
                let m = self.begin(NFT_MSG_DELSETELEM, 0, t.family);
                self.w.str(NFTA_SET_ELEM_LIST_TABLE, t.name.as_str());
                self.w.str(NFTA_SET_ELEM_LIST_SET, s.as_str());
                self.w.end_msg(m);
            }
            Op::DeleteSet(t, s, _) => {
                let m = self.begin(NFT_MSG_DELSET, 0, t.family);
                self.w.str(NFTA_SET_TABLE, t.name.as_str());
                self.w.str(NFTA_SET_NAME, s.as_str());
                self.w.end_msg(m);
            }
            Op::AddElements(t, s, elems) => {
                let interval = intervals.contains(&(t.clone(), s.clone()));
                let items = elems.iter().map(|(k, v)| (k, v.as_ref()));
                self.elements(t, s, items, true, interval)?;
            }
            Op::DeleteElements(t, s, keys) => {
                let interval = intervals.contains(&(t.clone(), s.clone()));
                self.elements(t, s, keys.iter().map(|k| (k, None)), false, interval)?;
            }
            other => return Err(EncodeError::Unsupported(format!("{other:?}"))),
        }
        Ok(())
    }

    fn set(&mut self, t: &TableRef, s: &SetDecl) -> Result<(), EncodeError> {
        let key = key_fields(&s.key)?;
        let interval = s.flags.contains(&SetFlag::Interval);
        let mut flags = 0;
        if s.is_map() {
            flags |= NFT_SET_MAP;
        }
        if interval {
            flags |= NFT_SET_INTERVAL;
            if key.len() > 1 {
                flags |= NFT_SET_CONCAT;
            }
        }
        if s.flags.contains(&SetFlag::Timeout) || s.timeout_secs.is_some() {
            flags |= NFT_SET_TIMEOUT;
        }
        if s.flags.contains(&SetFlag::Dynamic) {
            flags |= NFT_SET_EVAL;
        }
        if interval && key.iter().any(|f| f.byteorder == 1 && f.len > 1) {
            // nft converts such fields (marks, numgen results) to big endian for interval
            // lookups and stores the elements converted; Rudder declares no such set.
            return Err(EncodeError::Unsupported(format!(
                "interval set {} keyed by a host-order field",
                s.name
            )));
        }
        if interval && key.len() == 1 {
            // A single-field interval set needs nft's start/end element pairs and merging
            // against the kernel's contents; Rudder declares none.
            return Err(EncodeError::Unsupported(format!(
                "single-field interval set {}",
                s.name
            )));
        }
        let id = self.next_set_id;
        self.next_set_id += 1;
        let m = self.begin(NFT_MSG_NEWSET, NLM_F_CREATE, t.family);
        self.w.str(NFTA_SET_TABLE, t.name.as_str());
        self.w.str(NFTA_SET_NAME, s.name.as_str());
        self.w.u32(NFTA_SET_FLAGS, flags);
        self.w.u32(NFTA_SET_KEY_TYPE, type_number(&key));
        self.w.u32(NFTA_SET_KEY_LEN, padded_len(&key));
        let mut u = Udata::default();
        u.put_u32(0, if key.len() == 1 { key[0].byteorder } else { 0 });
        let verdict_map = s.is_verdict_map();
        let data = match &s.data {
            Some(d) if !verdict_map => Some(key_fields(d)?),
            _ => None,
        };
        if verdict_map {
            self.w.u32(NFTA_SET_DATA_TYPE, NFT_DATA_VERDICT);
            self.w.u32(NFTA_SET_DATA_LEN, 0);
            u.put_u32(1, 0);
        } else if let Some(d) = &data {
            self.w.u32(NFTA_SET_DATA_TYPE, type_number(d));
            self.w.u32(NFTA_SET_DATA_LEN, padded_len(d));
            u.put_u32(1, if d.len() == 1 { d[0].byteorder } else { 0 });
        }
        self.w.u32(NFTA_SET_ID, id);
        if let Some(secs) = s.timeout_secs {
            self.w.u64(NFTA_SET_TIMEOUT, u64::from(secs) * 1000);
        }
        if interval {
            let d = self.w.nest(NFTA_SET_DESC);
            let c = self.w.nest(NFTA_SET_DESC_CONCAT);
            for f in &key {
                let e = self.w.nest(NFTA_LIST_ELEM);
                self.w.u32(NFTA_SET_FIELD_LEN, f.len);
                self.w.end_nest(e)?;
            }
            self.w.end_nest(c)?;
            self.w.end_nest(d)?;
        }
        match &s.key {
            KeyType::Typeof(e) => u.put_nested(3, &typeof_udata(e)?),
            KeyType::Types(t) if t.len() > 1 => u.put_nested(3, &empty_concat()),
            KeyType::Types(_) => {}
        }
        if s.is_map() {
            match &s.data {
                Some(KeyType::Typeof(e)) => u.put_nested(4, &typeof_udata(e)?),
                Some(KeyType::Types(t)) if t.len() > 1 => u.put_nested(4, &empty_concat()),
                _ => {}
            }
            u.put_u32(6, 0);
        }
        if let Some(c) = &s.comment {
            u.put_str(7, c.as_str());
        }
        self.udata(NFTA_SET_USERDATA, &u)?;
        self.w.end_msg(m);
        Ok(())
    }

    fn elements<'a>(
        &mut self,
        t: &TableRef,
        set: &Name,
        items: impl Iterator<Item = (&'a Key, Option<&'a Value>)>,
        add: bool,
        interval: bool,
    ) -> Result<(), EncodeError> {
        let mut items = items.peekable();
        while items.peek().is_some() {
            let (ty, flags) = if add {
                (NFT_MSG_NEWSETELEM, NLM_F_CREATE)
            } else {
                (NFT_MSG_DELSETELEM, 0)
            };
            let m = self.begin(ty, flags, t.family);
            self.w.str(NFTA_SET_ELEM_LIST_TABLE, t.name.as_str());
            self.w.str(NFTA_SET_ELEM_LIST_SET, set.as_str());
            let list = self.w.nest(NFTA_SET_ELEM_LIST_ELEMENTS);
            while self.w.since(list) < ELEMENTS_BYTES_PER_MESSAGE {
                let Some((k, v)) = items.next() else { break };
                self.element(k, v, interval)?;
            }
            self.w.end_nest(list)?;
            self.w.end_msg(m);
        }
        Ok(())
    }

    /// One element; elements of (concatenated) interval sets carry their range's end, as nft
    /// sends them.
    fn element(&mut self, k: &Key, v: Option<&Value>, interval: bool) -> Result<(), EncodeError> {
        let e = self.w.nest(NFTA_LIST_ELEM);
        let n = self.w.nest(NFTA_SET_ELEM_KEY);
        self.w.attr(NFTA_DATA_VALUE, &key_bytes(k, false)?);
        self.w.end_nest(n)?;
        if interval || k.atoms().iter().any(|a| matches!(a, Atom::Prefix(..))) {
            let n = self.w.nest(NFTA_SET_ELEM_KEY_END);
            self.w.attr(NFTA_DATA_VALUE, &key_bytes(k, true)?);
            self.w.end_nest(n)?;
        }
        if let Some(v) = v {
            let d = self.w.nest(NFTA_SET_ELEM_DATA);
            match v.atoms() {
                [Atom::Verdict(verdict)] => self.verdict_data(verdict)?,
                _ => self.w.attr(NFTA_DATA_VALUE, &key_bytes(v, false)?),
            }
            self.w.end_nest(d)?;
        }
        self.w.end_nest(e)?;
        Ok(())
    }

    fn verdict_data(&mut self, v: &Verdict) -> Result<(), EncodeError> {
        let (code, chain) = verdict_code(v);
        let n = self.w.nest(NFTA_DATA_VERDICT);
        self.w.u32(NFTA_VERDICT_CODE, code);
        if let Some(c) = chain {
            self.w.str(NFTA_VERDICT_CHAIN, c.as_str());
        }
        self.w.end_nest(n)?;
        Ok(())
    }

    /// Creates the anonymous sets and maps `rule` uses, in statement order.
    fn anon_sets(&mut self, t: &TableRef, rule: &Rule) -> Result<Vec<Anon>, EncodeError> {
        let mut out = Vec::new();
        for s in &rule.stmts {
            match s {
                Stmt::Cmp(lhs, _, Expr::AnonSet(items)) => {
                    out.push(self.anon_interval_set(t, lhs, items)?);
                }
                Stmt::VmapAnon(k, items) => out.push(self.anon_vmap(t, k, items)?),
                _ => {}
            }
        }
        Ok(out)
    }

    fn anon_interval_set(
        &mut self,
        t: &TableRef,
        lhs: &Expr,
        items: &[Expr],
    ) -> Result<Anon, EncodeError> {
        let fam = match lhs {
            Expr::Saddr(f) | Expr::Daddr(f) => *f,
            other => {
                return Err(EncodeError::Unsupported(format!(
                    "an anonymous set compared with {other}"
                )));
            }
        };
        // Ranges of the prefixes, merged where they overlap or touch (nft's auto-merge).
        let mut ranges: Vec<(u128, u128)> = Vec::new();
        for it in items {
            let (addr, len) = match it {
                Expr::Prefix(a, l) => (*a, *l),
                Expr::Const(Atom::Ipv4(a)) => (IpAddr::V4(*a), 32),
                Expr::Const(Atom::Ipv6(a)) => (IpAddr::V6(*a), 128),
                other => {
                    return Err(EncodeError::Unsupported(format!(
                        "{other} in an anonymous address set"
                    )));
                }
            };
            if Family::of(&addr) != fam {
                return Err(EncodeError::Unsupported(format!(
                    "{it} in an {fam} address set"
                )));
            }
            ranges.push(prefix_range(&addr, len));
        }
        ranges.sort_unstable();
        let mut merged: Vec<(u128, u128)> = Vec::new();
        for (lo, hi) in ranges {
            match merged.last_mut() {
                Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
                _ => merged.push((lo, hi)),
            }
        }
        let len = addr_len(fam);
        let max: u128 = if len == 4 {
            u128::from(u32::MAX)
        } else {
            u128::MAX
        };
        let bytes = |v: u128| -> Vec<u8> {
            if len == 4 {
                (v as u32).to_be_bytes().to_vec()
            } else {
                v.to_be_bytes().to_vec()
            }
        };
        // rbtree intervals: an end marker at 0 unless the first range starts there, then
        // each range's start and the address after its end.
        let mut elems: Vec<(Vec<u8>, bool)> = Vec::new();
        if merged.first().is_some_and(|(lo, _)| *lo != 0) {
            elems.push((bytes(0), true));
        }
        for (lo, hi) in &merged {
            elems.push((bytes(*lo), false));
            if *hi != max {
                elems.push((bytes(hi + 1), true));
            }
        }
        let mut u = Udata::default();
        u.put_u32(0, 2);
        u.put_u32(2, 1);
        u.put_nested(3, &typeof_one(lhs)?);
        let flags = NFT_SET_ANONYMOUS | NFT_SET_CONSTANT | NFT_SET_INTERVAL;
        let key_type = if len == 4 { 7 } else { 8 };
        let id = self.anon_decl(t, "__set%d", flags, (key_type, len), elems.len(), &u)?;
        self.anon_elements(t, "__set%d", id, elems.len(), |e, i| {
            let (key, end) = &elems[i];
            let n = e.w.nest(NFTA_LIST_ELEM);
            if *end {
                e.w.u32(NFTA_SET_ELEM_FLAGS, NFT_SET_ELEM_INTERVAL_END);
            }
            let k = e.w.nest(NFTA_SET_ELEM_KEY);
            e.w.attr(NFTA_DATA_VALUE, key);
            e.w.end_nest(k)?;
            e.w.end_nest(n)?;
            Ok(())
        })?;
        Ok(Anon { id, map: false })
    }

    fn anon_vmap(
        &mut self,
        t: &TableRef,
        k: &Expr,
        items: &[(Atom, Verdict)],
    ) -> Result<Anon, EncodeError> {
        let f = expr_field(k)?;
        let mut u = Udata::default();
        u.put_u32(0, f.byteorder);
        u.put_u32(1, 0);
        let mut verdict = Udata::default();
        verdict.put_u32(0, EXPR_VERDICT);
        verdict.put(1, &[]);
        u.put_nested(4, &verdict);
        u.put_u32(6, 0);
        let flags = NFT_SET_ANONYMOUS | NFT_SET_CONSTANT | NFT_SET_MAP;
        let key = (f.id, f.len);
        let id = self.anon_decl(t, "__map%d", flags, key, items.len(), &u)?;
        self.anon_elements(t, "__map%d", id, items.len(), |e, i| {
            let (a, v) = &items[i];
            let n = e.w.nest(NFTA_LIST_ELEM);
            let kn = e.w.nest(NFTA_SET_ELEM_KEY);
            let mut kb = Vec::new();
            atom_bytes(a, &mut kb, false, false)?;
            e.w.attr(NFTA_DATA_VALUE, &kb);
            e.w.end_nest(kn)?;
            let dn = e.w.nest(NFTA_SET_ELEM_DATA);
            e.verdict_data(v)?;
            e.w.end_nest(dn)?;
            e.w.end_nest(n)?;
            Ok(())
        })?;
        Ok(Anon { id, map: true })
    }

    /// Declares an anonymous set (or verdict map, with `NFT_SET_MAP` in `flags`) of `size`
    /// elements for the rule that follows. Returns the set's ID.
    fn anon_decl(
        &mut self,
        t: &TableRef,
        name: &str,
        flags: u32,
        (key_type, key_len): (u32, u32),
        size: usize,
        udata: &Udata,
    ) -> Result<u32, EncodeError> {
        let id = self.next_set_id;
        self.next_set_id += 1;
        let m = self.begin(NFT_MSG_NEWSET, NLM_F_CREATE, t.family);
        self.w.str(NFTA_SET_TABLE, t.name.as_str());
        self.w.str(NFTA_SET_NAME, name);
        self.w.u32(NFTA_SET_FLAGS, flags);
        self.w.u32(NFTA_SET_KEY_TYPE, key_type);
        self.w.u32(NFTA_SET_KEY_LEN, key_len);
        if flags & NFT_SET_MAP != 0 {
            self.w.u32(NFTA_SET_DATA_TYPE, NFT_DATA_VERDICT);
            self.w.u32(NFTA_SET_DATA_LEN, 0);
        }
        self.w.u32(NFTA_SET_ID, id);
        let d = self.w.nest(NFTA_SET_DESC);
        self.w
            .u32(NFTA_SET_DESC_SIZE, u32::try_from(size).unwrap_or(u32::MAX));
        self.w.end_nest(d)?;
        self.udata(NFTA_SET_USERDATA, udata)?;
        self.w.end_msg(m);
        Ok(id)
    }

    /// Fills the anonymous set `id` with `count` elements written by `write`, in as many
    /// messages as the 16-bit attribute length needs (the set is bound to its rule only
    /// after the batch's last element message).
    fn anon_elements(
        &mut self,
        t: &TableRef,
        name: &str,
        id: u32,
        count: usize,
        mut write: impl FnMut(&mut Encoder, usize) -> Result<(), EncodeError>,
    ) -> Result<(), EncodeError> {
        let mut i = 0;
        while i < count {
            let m = self.begin(NFT_MSG_NEWSETELEM, NLM_F_CREATE, t.family);
            self.w.str(NFTA_SET_ELEM_LIST_TABLE, t.name.as_str());
            self.w.str(NFTA_SET_ELEM_LIST_SET, name);
            self.w.u32(NFTA_SET_ELEM_LIST_SET_ID, id);
            let list = self.w.nest(NFTA_SET_ELEM_LIST_ELEMENTS);
            while i < count && self.w.since(list) < ELEMENTS_BYTES_PER_MESSAGE {
                write(self, i)?;
                i += 1;
            }
            self.w.end_nest(list)?;
            self.w.end_msg(m);
        }
        Ok(())
    }

    /// A userdata attribute; refuses TLVs that overflowed their 8-bit lengths.
    fn udata(&mut self, ty: u16, u: &Udata) -> Result<(), EncodeError> {
        if u.overflow() {
            return Err(EncodeError::TooLarge("set or rule userdata".into()));
        }
        self.w.attr(ty, &u.0);
        Ok(())
    }

    fn rule(
        &mut self,
        t: &TableRef,
        chain: &Name,
        rule: &Rule,
        intervals: &IntervalSets,
    ) -> Result<(), EncodeError> {
        let anons = self.anon_sets(t, rule)?;
        let m = self.begin(NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, t.family);
        self.w.str(NFTA_RULE_TABLE, t.name.as_str());
        self.w.str(NFTA_RULE_CHAIN, chain.as_str());
        let list = self.w.nest(NFTA_RULE_EXPRESSIONS);
        let mut anons = anons.into_iter();
        let mut x = Exprs { w: &mut self.w };
        if needs_tcp_dependency(rule) {
            // nft's implicit dependency of `reject with tcp reset`, at the rule's start so
            // that nothing in the rule acts on other protocols.
            x.meta_load(0, 16)?;
            x.cmp(0, CmpOp::Eq, &[6])?;
        }
        for s in &rule.stmts {
            x.stmt(s, t, &mut anons, intervals)?;
        }
        self.w.end_nest(list)?;
        if let Some(c) = &rule.comment {
            let mut u = Udata::default();
            u.put_str(0, c.as_str());
            self.udata(NFTA_RULE_USERDATA, &u)?;
        }
        self.w.end_msg(m);
        Ok(())
    }
}

/// Whether a `reject with tcp reset` in `rule` is not preceded by a TCP match, so that nft
/// would add `meta l4proto tcp` to it.
fn needs_tcp_dependency(rule: &Rule) -> bool {
    let Some(at) = rule
        .stmts
        .iter()
        .position(|s| matches!(s, Stmt::Reject(Reject::TcpReset)))
    else {
        return false;
    };
    !rule.stmts[..at].iter().any(|s| {
        matches!(
            s,
            Stmt::Cmp(
                Expr::L4Proto,
                CmpOp::Eq,
                Expr::Const(Atom::Proto(rudder_nft::L4Proto::Tcp))
            )
        )
    })
}

/// Writes the expressions of one rule.
struct Exprs<'a> {
    w: &'a mut Writer,
}

impl Exprs<'_> {
    fn expr(
        &mut self,
        name: &str,
        body: impl FnOnce(&mut Writer) -> Result<(), EncodeError>,
    ) -> Result<(), EncodeError> {
        let e = self.w.nest(NFTA_LIST_ELEM);
        self.w.str(NFTA_EXPR_NAME, name);
        let d = self.w.nest(NFTA_EXPR_DATA);
        body(self.w)?;
        self.w.end_nest(d)?;
        self.w.end_nest(e)?;
        Ok(())
    }

    fn payload(&mut self, slot: u32, base: u32, offset: u32, len: u32) -> Result<(), EncodeError> {
        self.expr("payload", |w| {
            w.u32(1, reg(slot)); // DREG
            w.u32(2, base);
            w.u32(3, offset);
            w.u32(4, len);
            Ok(())
        })
    }

    fn meta_load(&mut self, slot: u32, key: u32) -> Result<(), EncodeError> {
        self.expr("meta", |w| {
            w.u32(2, key); // KEY
            w.u32(1, reg(slot)); // DREG
            Ok(())
        })
    }

    fn bitwise(&mut self, slot: u32, mask: &[u8], xor: &[u8]) -> Result<(), EncodeError> {
        self.expr("bitwise", |w| {
            w.u32(1, reg(slot)); // SREG
            w.u32(2, reg(slot)); // DREG
            w.u32(3, mask.len() as u32); // LEN
            let n = w.nest(4);
            w.attr(NFTA_DATA_VALUE, mask);
            w.end_nest(n)?;
            let n = w.nest(5);
            w.attr(NFTA_DATA_VALUE, xor);
            w.end_nest(n)?;
            Ok(())
        })
    }

    fn cmp(&mut self, slot: u32, op: CmpOp, data: &[u8]) -> Result<(), EncodeError> {
        self.expr("cmp", |w| {
            w.u32(1, reg(slot));
            w.u32(2, if op == CmpOp::Eq { 0 } else { 1 });
            let n = w.nest(3);
            w.attr(NFTA_DATA_VALUE, data);
            w.end_nest(n)?;
            Ok(())
        })
    }

    fn immediate_value(&mut self, slot: u32, data: &[u8]) -> Result<(), EncodeError> {
        self.expr("immediate", |w| {
            w.u32(1, reg(slot));
            let n = w.nest(2);
            w.attr(NFTA_DATA_VALUE, data);
            w.end_nest(n)?;
            Ok(())
        })
    }

    fn verdict(&mut self, v: &Verdict) -> Result<(), EncodeError> {
        let (code, chain) = verdict_code(v);
        self.expr("immediate", |w| {
            w.u32(1, NFT_REG_VERDICT);
            let n = w.nest(2);
            let vn = w.nest(NFTA_DATA_VERDICT);
            w.u32(NFTA_VERDICT_CODE, code);
            if let Some(c) = chain {
                w.str(NFTA_VERDICT_CHAIN, c.as_str());
            }
            w.end_nest(vn)?;
            w.end_nest(n)?;
            Ok(())
        })
    }

    fn lookup(
        &mut self,
        set: &str,
        id: Option<u32>,
        dreg: Option<u32>,
        inv: bool,
    ) -> Result<(), EncodeError> {
        self.expr("lookup", |w| {
            w.u32(2, reg(0)); // SREG
            if let Some(d) = dreg {
                w.u32(3, d); // DREG
            }
            w.str(1, set); // SET
            if let Some(id) = id {
                w.u32(4, id); // SET_ID
            }
            if inv {
                w.u32(5, 1); // FLAGS: NFT_LOOKUP_F_INV
            }
            Ok(())
        })
    }

    /// Loads `e` into consecutive registers from `slot`; returns the slots used.
    /// `interval` adds nft's byte-order conversion of host-order fields for interval sets.
    fn load(&mut self, e: &Expr, slot: u32, interval: bool) -> Result<u32, EncodeError> {
        match e {
            Expr::Saddr(f) | Expr::Daddr(f) => {
                let off = addr_offset(*f, matches!(e, Expr::Saddr(_)));
                self.payload(slot, 1, off, addr_len(*f))?;
                Ok(slots(addr_len(*f)))
            }
            Expr::ThDport => {
                self.payload(slot, 2, 2, 2)?;
                Ok(1)
            }
            Expr::L4Proto => {
                self.meta_load(slot, 16)?;
                if interval {
                    self.expr("byteorder", |w| {
                        w.u32(1, reg(slot));
                        w.u32(2, reg(slot));
                        w.u32(3, 1); // NFT_BYTEORDER_HTON
                        w.u32(4, 1); // LEN
                        w.u32(5, 2); // SIZE
                        Ok(())
                    })?;
                }
                Ok(1)
            }
            Expr::Mark => {
                self.meta_load(slot, 3)?;
                Ok(1)
            }
            Expr::MarkAnd(m) => {
                self.meta_load(slot, 3)?;
                self.bitwise(slot, &m.to_ne_bytes(), &[0; 4])?;
                Ok(1)
            }
            Expr::Iifname => {
                self.meta_load(slot, 6)?;
                Ok(4)
            }
            Expr::CtState | Expr::CtStatus => {
                let key = if matches!(e, Expr::CtState) { 0 } else { 2 };
                self.expr("ct", |w| {
                    w.u32(2, key);
                    w.u32(1, reg(slot));
                    Ok(())
                })?;
                Ok(1)
            }
            Expr::Numgen(m) => {
                let m = *m;
                self.expr("numgen", |w| {
                    w.u32(1, reg(slot));
                    w.u32(2, m);
                    w.u32(3, 1); // NFT_NG_RANDOM
                    w.u32(4, 0);
                    Ok(())
                })?;
                Ok(1)
            }
            Expr::FibType(k) => {
                let flags = match k {
                    FibKind::Saddr => 1,
                    FibKind::Daddr => 2,
                };
                self.expr("fib", |w| {
                    w.u32(3, flags); // FLAGS
                    w.u32(2, 3); // RESULT: NFT_FIB_RESULT_ADDRTYPE
                    w.u32(1, reg(slot));
                    Ok(())
                })?;
                Ok(1)
            }
            Expr::Concat(parts) => {
                let mut used = 0;
                for p in parts {
                    used += self.load(p, slot + used, interval)?;
                }
                if used > 16 {
                    return Err(EncodeError::TooLarge(format!("key {e}")));
                }
                Ok(used)
            }
            other => Err(EncodeError::Unsupported(format!("loading {other}"))),
        }
    }

    fn stmt(
        &mut self,
        s: &Stmt,
        t: &TableRef,
        anons: &mut impl Iterator<Item = Anon>,
        intervals: &IntervalSets,
    ) -> Result<(), EncodeError> {
        match s {
            Stmt::Cmp(lhs, op, rhs) => self.compare(lhs, *op, rhs, anons),
            Stmt::Lookup(k, op, set) => {
                let interval = intervals.contains(&(t.clone(), set.clone()));
                self.load(k, 0, interval)?;
                self.lookup(set.as_str(), None, None, *op == CmpOp::Ne)
            }
            Stmt::Vmap(k, map) => {
                self.load(k, 0, false)?;
                self.lookup(map.as_str(), None, Some(NFT_REG_VERDICT), false)
            }
            Stmt::MarkOr(bits) => self.set_mark(!bits, *bits),
            Stmt::MarkXor(bits) => self.set_mark(u32::MAX, *bits),
            Stmt::DnatMap(fam, key, map) => {
                self.load(key, 0, false)?;
                self.lookup(map.as_str(), None, Some(reg(0)), false)?;
                let proto = reg(slots(addr_len(*fam)));
                let fam = u32::from(nfproto(*fam));
                self.expr("nat", |w| {
                    w.u32(1, 1); // NFT_NAT_DNAT
                    w.u32(2, fam);
                    w.u32(3, reg(0)); // REG_ADDR_MIN
                    w.u32(5, proto); // REG_PROTO_MIN
                    Ok(())
                })
            }
            Stmt::DnatTo(addr, port) => {
                let fam = Family::of(addr);
                let bytes: Vec<u8> = match addr {
                    IpAddr::V4(a) => a.octets().to_vec(),
                    IpAddr::V6(a) => a.octets().to_vec(),
                };
                self.immediate_value(0, &bytes)?;
                self.immediate_value(4, &port.to_be_bytes())?;
                let fam = u32::from(nfproto(fam));
                self.expr("nat", |w| {
                    w.u32(1, 1);
                    w.u32(2, fam);
                    w.u32(3, reg(0));
                    w.u32(5, reg(4));
                    w.u32(7, 2); // FLAGS: NF_NAT_RANGE_PROTO_SPECIFIED
                    Ok(())
                })
            }
            Stmt::Masquerade { fully_random } => {
                let random = *fully_random;
                self.expr("masq", |w| {
                    if random {
                        w.u32(1, 0x10); // NF_NAT_RANGE_PROTO_RANDOM_FULLY
                    }
                    Ok(())
                })
            }
            Stmt::Reject(kind) => {
                let (ty, code) = match (kind, t.family) {
                    (Reject::TcpReset, _) => (1, 0u8),
                    (Reject::Default, Family::Ip) => (0, 3),
                    (Reject::Default, Family::Ip6) => (0, 4),
                };
                self.expr("reject", |w| {
                    w.u32(1, ty);
                    w.attr(2, &[code]);
                    Ok(())
                })
            }
            Stmt::Verdict(v) => self.verdict(v),
            Stmt::Counter => self.expr("counter", |_| Ok(())),
            Stmt::VmapAnon(k, _) => {
                let anon = anons
                    .next()
                    .filter(|a| a.map)
                    .ok_or_else(|| EncodeError::Unsupported("anonymous map order".into()))?;
                self.load(k, 0, false)?;
                self.lookup("__map%d", Some(anon.id), Some(NFT_REG_VERDICT), false)
            }
            Stmt::UpdateSet(k, set) => {
                self.load(k, 0, false)?;
                self.expr("dynset", |w| {
                    w.u32(3, 1); // OP: NFT_DYNSET_OP_UPDATE
                    w.u32(4, reg(0)); // SREG_KEY
                    w.str(1, set.as_str()); // SET_NAME
                    Ok(())
                })
            }
        }
    }

    fn set_mark(&mut self, mask: u32, xor: u32) -> Result<(), EncodeError> {
        self.meta_load(0, 3)?;
        self.bitwise(0, &mask.to_ne_bytes(), &xor.to_ne_bytes())?;
        self.expr("meta", |w| {
            w.u32(2, 3); // KEY: mark
            w.u32(3, reg(0)); // SREG
            Ok(())
        })
    }

    fn compare(
        &mut self,
        lhs: &Expr,
        op: CmpOp,
        rhs: &Expr,
        anons: &mut impl Iterator<Item = Anon>,
    ) -> Result<(), EncodeError> {
        match (lhs, rhs) {
            (Expr::Saddr(_) | Expr::Daddr(_), Expr::Const(Atom::Prefix(addr, len))) => {
                self.compare(lhs, op, &Expr::Prefix(*addr, *len), anons)
            }
            (Expr::Saddr(f) | Expr::Daddr(f), Expr::Prefix(addr, len)) => {
                if Family::of(addr) != *f || u32::from(*len) > addr_len(*f) * 8 {
                    return Err(EncodeError::Unsupported(format!(
                        "{lhs} compared with {rhs}"
                    )));
                }
                let off = addr_offset(*f, matches!(lhs, Expr::Saddr(_)));
                let full = addr_len(*f);
                let bits = u32::from(*len).min(full * 8);
                let bytes: Vec<u8> = match addr {
                    IpAddr::V4(a) => a.octets().to_vec(),
                    IpAddr::V6(a) => a.octets().to_vec(),
                };
                // As nft does: a byte-aligned prefix loads only the bytes it covers; any
                // other loads the whole address under a mask.
                let aligned = bits % 8 == 0 && bits > 0;
                let n = if aligned { bits / 8 } else { full };
                let mut mask = vec![0u8; n as usize];
                for (i, m) in mask.iter_mut().enumerate() {
                    let covered = bits.saturating_sub(i as u32 * 8).min(8);
                    *m = if covered == 0 {
                        0
                    } else {
                        0xffu8 << (8 - covered)
                    };
                }
                let data: Vec<u8> = bytes.iter().zip(&mask).map(|(b, m)| b & m).collect();
                self.payload(0, 1, off, n)?;
                if !aligned {
                    self.bitwise(0, &mask, &vec![0u8; n as usize])?;
                }
                self.cmp(0, op, &data)
            }
            (Expr::Saddr(_) | Expr::Daddr(_), Expr::AnonSet(_)) => {
                let anon = anons
                    .next()
                    .filter(|a| !a.map)
                    .ok_or_else(|| EncodeError::Unsupported("anonymous set order".into()))?;
                self.load(lhs, 0, false)?;
                self.lookup("__set%d", Some(anon.id), None, op == CmpOp::Ne)
            }
            (Expr::Iifname, Expr::Iface(name)) => {
                self.load(lhs, 0, false)?;
                let n = name.as_str();
                let data: Vec<u8> = match n.strip_suffix('*') {
                    Some(prefix) => prefix.as_bytes().to_vec(),
                    None => {
                        let mut d = n.as_bytes().to_vec();
                        d.resize(16, 0);
                        d
                    }
                };
                self.cmp(0, op, &data)
            }
            (Expr::CtState | Expr::CtStatus, Expr::Keyword(k)) => {
                let bit: u32 = match (lhs, *k) {
                    (Expr::CtState, "invalid") => 1,
                    (Expr::CtState, "established") => 2,
                    (Expr::CtState, "related") => 4,
                    (Expr::CtState, "new") => 8,
                    (Expr::CtState, "untracked") => 64,
                    (Expr::CtStatus, "expected") => 1,
                    (Expr::CtStatus, "seen-reply") => 2,
                    (Expr::CtStatus, "assured") => 4,
                    (Expr::CtStatus, "confirmed") => 8,
                    (Expr::CtStatus, "snat") => 0x10,
                    (Expr::CtStatus, "dnat") => 0x20,
                    _ => {
                        return Err(EncodeError::Unsupported(format!("{lhs} {k}")));
                    }
                };
                self.load(lhs, 0, false)?;
                match op {
                    // `ct state new`: the flag is set (masked value not zero).
                    CmpOp::Eq => {
                        self.bitwise(0, &bit.to_ne_bytes(), &[0; 4])?;
                        self.cmp(0, CmpOp::Ne, &[0; 4])
                    }
                    // `ct state != new`: nft compares the whole value.
                    CmpOp::Ne => self.cmp(0, CmpOp::Ne, &bit.to_ne_bytes()),
                }
            }
            (Expr::FibType(_), Expr::Keyword(k)) => {
                let rtn: u32 = match *k {
                    "unicast" => 1,
                    "local" => 2,
                    "broadcast" => 3,
                    "anycast" => 4,
                    "multicast" => 5,
                    _ => return Err(EncodeError::Unsupported(format!("{lhs} {k}"))),
                };
                self.load(lhs, 0, false)?;
                self.cmp(0, op, &rtn.to_ne_bytes())
            }
            (_, Expr::Const(a)) => {
                self.load(lhs, 0, false)?;
                let mut data = Vec::new();
                atom_bytes(a, &mut data, false, false)?;
                self.cmp(0, op, &data)
            }
            _ => Err(EncodeError::Unsupported(format!(
                "{lhs} compared with {rhs}"
            ))),
        }
    }
}
