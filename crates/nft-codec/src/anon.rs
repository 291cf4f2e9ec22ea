//! Anonymous sets and maps, created in the batch right before the rule that uses them and
//! referenced by set ID: address sets with `nft`'s interval merging, `numgen` verdict maps.

use std::net::IpAddr;

use rudder_nft::{Atom, Expr, Family, Rule, Stmt, TableRef, Verdict};

use crate::batch::{EncodeError, Encoder};
use crate::element::{ELEMENTS_BYTES_PER_MESSAGE, atom_bytes, prefix_range};
use crate::expr::addr_len;
use crate::set::{EXPR_VERDICT, expr_field, typeof_one};
use crate::wire::*;

/// One anonymous set or map a rule needs, created in the batch right before the rule.
pub(crate) struct Anon {
    pub(crate) id: u32,
    pub(crate) map: bool,
}

impl Encoder {
    /// Creates the anonymous sets and maps `rule` uses, in statement order.
    pub(crate) fn anon_sets(
        &mut self,
        t: &TableRef,
        rule: &Rule,
    ) -> Result<Vec<Anon>, EncodeError> {
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

    pub(crate) fn anon_interval_set(
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

    pub(crate) fn anon_vmap(
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
    pub(crate) fn anon_decl(
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
    pub(crate) fn anon_elements(
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
}
