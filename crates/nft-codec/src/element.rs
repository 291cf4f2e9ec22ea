//! Set elements (`NEWSETELEM`, `DELSETELEM`): keys, interval ends, map data and verdicts,
//! split into messages below the 16-bit attribute length.

use std::net::IpAddr;

use rudder_nft::{Atom, Key, Name, TableRef, Value, Verdict};

use crate::batch::{EncodeError, Encoder};
use crate::wire::*;

/// Keep the element list of one message below the 16-bit attribute length.
pub(crate) const ELEMENTS_BYTES_PER_MESSAGE: usize = 60_000;

/// Bytes of one atom; `pad` rounds up to whole 32-bit registers (set keys and map data).
/// `end` selects the last address of a prefix (interval ends).
pub(crate) fn atom_bytes(
    a: &Atom,
    out: &mut Vec<u8>,
    pad: bool,
    end: bool,
) -> Result<(), EncodeError> {
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
pub(crate) fn prefix_range(addr: &IpAddr, len: u8) -> (u128, u128) {
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
pub(crate) fn key_bytes(k: &Key, end: bool) -> Result<Vec<u8>, EncodeError> {
    let pad = k.atoms().len() > 1;
    let mut out = Vec::with_capacity(k.atoms().len() * 4);
    for a in k.atoms() {
        atom_bytes(a, &mut out, pad, end)?;
    }
    Ok(out)
}

pub(crate) fn verdict_code(v: &Verdict) -> (u32, Option<&Name>) {
    match v {
        Verdict::Accept => (1, None),
        Verdict::Drop => (0, None),
        Verdict::Return => (-5i32 as u32, None),
        Verdict::Jump(c) => (-3i32 as u32, Some(c)),
        Verdict::Goto(c) => (-4i32 as u32, Some(c)),
    }
}

impl Encoder {
    pub(crate) fn elements<'a>(
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
    pub(crate) fn element(
        &mut self,
        k: &Key,
        v: Option<&Value>,
        interval: bool,
    ) -> Result<(), EncodeError> {
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

    pub(crate) fn verdict_data(&mut self, v: &Verdict) -> Result<(), EncodeError> {
        let (code, chain) = verdict_code(v);
        let n = self.w.nest(NFTA_DATA_VERDICT);
        self.w.u32(NFTA_VERDICT_CODE, code);
        if let Some(c) = chain {
            self.w.str(NFTA_VERDICT_CHAIN, c.as_str());
        }
        self.w.end_nest(n)?;
        Ok(())
    }
}
