//! Set and map declarations (`NEWSET`): key and data types, flags, and the userdata `nft`
//! stores with them (`typeof` expressions, byte orders, comments); and the catalogue of
//! interval sets the caller keeps between transactions.

use std::collections::HashSet;

use crate::expr::slots;
use rudder_nft::{
    DataType, Expr, Family, KeyType, Name, Op, SetDecl, SetFlag, TableRef, Transaction,
};

use crate::batch::{EncodeError, Encoder};
use crate::wire::*;

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

/// The data type of one key field: nft's type number, its length and its byte order
/// (`BYTEORDER_HOST_ENDIAN` 1, `BYTEORDER_BIG_ENDIAN` 2).
#[derive(Clone, Copy)]
pub(crate) struct Field {
    pub(crate) id: u32,
    pub(crate) len: u32,
    pub(crate) byteorder: u32,
}

pub(crate) fn datatype_field(d: DataType) -> Option<Field> {
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

pub(crate) fn expr_field(e: &Expr) -> Result<Field, EncodeError> {
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

pub(crate) fn key_fields(k: &KeyType) -> Result<Vec<Field>, EncodeError> {
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

pub(crate) fn type_number(fields: &[Field]) -> u32 {
    fields.iter().fold(0u32, |acc, f| (acc << 6) | f.id)
}

/// Length of a key or datum: a concatenation rounds each field up to whole 32-bit registers;
/// a single field keeps its own length (2 bytes for a port), as nft declares it.
pub(crate) fn padded_len(fields: &[Field]) -> u32 {
    match fields {
        [one] => one.len,
        _ => fields.iter().map(|f| slots(f.len) * 4).sum(),
    }
}

// nft's expression type numbers and protocol descriptions, as stored in set userdata.
pub(crate) const EXPR_VERDICT: u32 = 1;
pub(crate) const EXPR_PAYLOAD: u32 = 7;
pub(crate) const EXPR_META: u32 = 9;
pub(crate) const EXPR_CONCAT: u32 = 13;
pub(crate) const EXPR_NUMGEN: u32 = 23;

/// The `typeof` userdata of one expression: `{0: expression type, 1: its own data}`.
pub(crate) fn typeof_one(e: &Expr) -> Result<Udata, EncodeError> {
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

pub(crate) fn typeof_udata(exprs: &[Expr]) -> Result<Udata, EncodeError> {
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
pub(crate) fn empty_concat() -> Udata {
    let mut u = Udata::default();
    u.put_u32(0, EXPR_CONCAT);
    u.put(1, &[]);
    u
}

impl Encoder {
    pub(crate) fn set(&mut self, t: &TableRef, s: &SetDecl) -> Result<(), EncodeError> {
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

    /// A userdata attribute; refuses TLVs that overflowed their 8-bit lengths.
    pub(crate) fn udata(&mut self, ty: u16, u: &Udata) -> Result<(), EncodeError> {
        if u.overflow() {
            return Err(EncodeError::TooLarge("set or rule userdata".into()));
        }
        self.w.attr(ty, &u.0);
        Ok(())
    }
}
