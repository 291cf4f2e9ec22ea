//! Rules (`NEWRULE`) and their expressions: every IR statement as the kernel expressions
//! `nft` 1.0.6 generates for its text form (payload and meta loads into 32-bit register
//! slots, `cmp`, `bitwise`, `lookup`, `numgen`, `nat`, `masq`, `reject`, `dynset`, `fib`,
//! `ct`, `immediate` verdicts).

use std::net::IpAddr;

use rudder_nft::{Atom, CmpOp, Expr, Family, FibKind, Name, Reject, Rule, Stmt, TableRef, Verdict};

use crate::anon::Anon;
use crate::batch::{EncodeError, Encoder, nfproto};
use crate::element::{atom_bytes, verdict_code};
use crate::set::IntervalSets;
use crate::wire::*;

/// The netlink register number of 32-bit slot `slot` (slot 0 is `NFT_REG_1`): 16-byte
/// registers are named where a slot starts one, as nft does.
pub(crate) fn reg(slot: u32) -> u32 {
    if slot % 4 == 0 {
        slot / 4 + 1
    } else {
        slot + 8
    }
}

/// Offset of the source (`saddr`) or destination address in the network header.
pub(crate) fn addr_offset(f: Family, saddr: bool) -> u32 {
    match (f, saddr) {
        (Family::Ip, true) => 12,
        (Family::Ip, false) => 16,
        (Family::Ip6, true) => 8,
        (Family::Ip6, false) => 24,
    }
}

pub(crate) fn addr_len(f: Family) -> u32 {
    match f {
        Family::Ip => 4,
        Family::Ip6 => 16,
    }
}

pub(crate) fn slots(len: u32) -> u32 {
    len.div_ceil(4)
}

impl Encoder {
    pub(crate) fn rule(
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
pub(crate) fn needs_tcp_dependency(rule: &Rule) -> bool {
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
pub(crate) struct Exprs<'a> {
    w: &'a mut Writer,
}

impl Exprs<'_> {
    pub(crate) fn expr(
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

    pub(crate) fn payload(
        &mut self,
        slot: u32,
        base: u32,
        offset: u32,
        len: u32,
    ) -> Result<(), EncodeError> {
        self.expr("payload", |w| {
            w.u32(1, reg(slot)); // DREG
            w.u32(2, base);
            w.u32(3, offset);
            w.u32(4, len);
            Ok(())
        })
    }

    pub(crate) fn meta_load(&mut self, slot: u32, key: u32) -> Result<(), EncodeError> {
        self.expr("meta", |w| {
            w.u32(2, key); // KEY
            w.u32(1, reg(slot)); // DREG
            Ok(())
        })
    }

    pub(crate) fn bitwise(
        &mut self,
        slot: u32,
        mask: &[u8],
        xor: &[u8],
    ) -> Result<(), EncodeError> {
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

    pub(crate) fn cmp(&mut self, slot: u32, op: CmpOp, data: &[u8]) -> Result<(), EncodeError> {
        self.expr("cmp", |w| {
            w.u32(1, reg(slot));
            w.u32(2, if op == CmpOp::Eq { 0 } else { 1 });
            let n = w.nest(3);
            w.attr(NFTA_DATA_VALUE, data);
            w.end_nest(n)?;
            Ok(())
        })
    }

    pub(crate) fn immediate_value(&mut self, slot: u32, data: &[u8]) -> Result<(), EncodeError> {
        self.expr("immediate", |w| {
            w.u32(1, reg(slot));
            let n = w.nest(2);
            w.attr(NFTA_DATA_VALUE, data);
            w.end_nest(n)?;
            Ok(())
        })
    }

    pub(crate) fn verdict(&mut self, v: &Verdict) -> Result<(), EncodeError> {
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

    pub(crate) fn lookup(
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
    pub(crate) fn load(&mut self, e: &Expr, slot: u32, interval: bool) -> Result<u32, EncodeError> {
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

    pub(crate) fn stmt(
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

    pub(crate) fn set_mark(&mut self, mask: u32, xor: u32) -> Result<(), EncodeError> {
        self.meta_load(0, 3)?;
        self.bitwise(0, &mask.to_ne_bytes(), &xor.to_ne_bytes())?;
        self.expr("meta", |w| {
            w.u32(2, 3); // KEY: mark
            w.u32(3, reg(0)); // SREG
            Ok(())
        })
    }

    pub(crate) fn compare(
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
