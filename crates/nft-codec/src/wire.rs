//! Netlink message building: headers, attributes and nests, and the nf_tables constants
//! Rudder uses (from `linux/netfilter/nf_tables.h` and `linux/netfilter/nfnetlink.h`).
//!
//! Attributes are written straight into one growing buffer; a nest is opened by reserving its
//! header and closed by patching the length, so a whole batch is built without intermediate
//! allocations.

/// `NETLINK_NETFILTER`.
pub const NETLINK_NETFILTER: i32 = 12;
/// `NFNL_SUBSYS_NFTABLES`.
pub const NFNL_SUBSYS_NFTABLES: u16 = 10;
/// `NFNL_MSG_BATCH_BEGIN`.
pub const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
/// `NFNL_MSG_BATCH_END`.
pub const NFNL_MSG_BATCH_END: u16 = 0x11;

// The netlink header's flags and control message types (`linux/netlink.h`), as rust-netlink
// defines them.
pub use netlink_packet_core::{
    NLA_F_NESTED, NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR,
};

// enum nf_tables_msg_types
/// `NFT_MSG_NEWTABLE`.
pub const NFT_MSG_NEWTABLE: u16 = 0;
/// `NFT_MSG_DELTABLE`.
pub const NFT_MSG_DELTABLE: u16 = 2;
/// `NFT_MSG_NEWCHAIN`.
pub const NFT_MSG_NEWCHAIN: u16 = 3;
/// `NFT_MSG_DELCHAIN`.
pub const NFT_MSG_DELCHAIN: u16 = 5;
/// `NFT_MSG_NEWRULE`.
pub const NFT_MSG_NEWRULE: u16 = 6;
/// `NFT_MSG_DELRULE`.
pub const NFT_MSG_DELRULE: u16 = 8;
/// `NFT_MSG_NEWSET`.
pub const NFT_MSG_NEWSET: u16 = 9;
/// `NFT_MSG_DELSET`.
pub const NFT_MSG_DELSET: u16 = 11;
/// `NFT_MSG_NEWSETELEM`.
pub const NFT_MSG_NEWSETELEM: u16 = 12;
/// `NFT_MSG_DELSETELEM`.
pub const NFT_MSG_DELSETELEM: u16 = 14;
/// `NFT_MSG_NEWGEN`.
pub const NFT_MSG_NEWGEN: u16 = 15;
/// `NFT_MSG_GETGEN`.
pub const NFT_MSG_GETGEN: u16 = 16;

/// `NFTA_LIST_ELEM`.
pub const NFTA_LIST_ELEM: u16 = 1;

/// `NFTA_TABLE_NAME`.
pub const NFTA_TABLE_NAME: u16 = 1;
/// `NFTA_TABLE_FLAGS`.
pub const NFTA_TABLE_FLAGS: u16 = 2;

/// `NFTA_CHAIN_TABLE`.
pub const NFTA_CHAIN_TABLE: u16 = 1;
/// `NFTA_CHAIN_NAME`.
pub const NFTA_CHAIN_NAME: u16 = 3;
/// `NFTA_CHAIN_HOOK`.
pub const NFTA_CHAIN_HOOK: u16 = 4;
/// `NFTA_CHAIN_POLICY`.
pub const NFTA_CHAIN_POLICY: u16 = 5;
/// `NFTA_CHAIN_TYPE`.
pub const NFTA_CHAIN_TYPE: u16 = 7;
/// `NFTA_CHAIN_USERDATA`.
pub const NFTA_CHAIN_USERDATA: u16 = 12;
/// `NFTA_HOOK_HOOKNUM`.
pub const NFTA_HOOK_HOOKNUM: u16 = 1;
/// `NFTA_HOOK_PRIORITY`.
pub const NFTA_HOOK_PRIORITY: u16 = 2;

/// `NFTA_RULE_TABLE`.
pub const NFTA_RULE_TABLE: u16 = 1;
/// `NFTA_RULE_CHAIN`.
pub const NFTA_RULE_CHAIN: u16 = 2;
/// `NFTA_RULE_EXPRESSIONS`.
pub const NFTA_RULE_EXPRESSIONS: u16 = 4;
/// `NFTA_RULE_USERDATA`.
pub const NFTA_RULE_USERDATA: u16 = 7;

/// `NFTA_SET_TABLE`.
pub const NFTA_SET_TABLE: u16 = 1;
/// `NFTA_SET_NAME`.
pub const NFTA_SET_NAME: u16 = 2;
/// `NFTA_SET_FLAGS`.
pub const NFTA_SET_FLAGS: u16 = 3;
/// `NFTA_SET_KEY_TYPE`.
pub const NFTA_SET_KEY_TYPE: u16 = 4;
/// `NFTA_SET_KEY_LEN`.
pub const NFTA_SET_KEY_LEN: u16 = 5;
/// `NFTA_SET_DATA_TYPE`.
pub const NFTA_SET_DATA_TYPE: u16 = 6;
/// `NFTA_SET_DATA_LEN`.
pub const NFTA_SET_DATA_LEN: u16 = 7;
/// `NFTA_SET_DESC`.
pub const NFTA_SET_DESC: u16 = 9;
/// `NFTA_SET_ID`.
pub const NFTA_SET_ID: u16 = 10;
/// `NFTA_SET_TIMEOUT`.
pub const NFTA_SET_TIMEOUT: u16 = 11;
/// `NFTA_SET_USERDATA`.
pub const NFTA_SET_USERDATA: u16 = 13;
/// `NFTA_SET_DESC_SIZE`.
pub const NFTA_SET_DESC_SIZE: u16 = 1;
/// `NFTA_SET_DESC_CONCAT`.
pub const NFTA_SET_DESC_CONCAT: u16 = 2;
/// `NFTA_SET_FIELD_LEN`.
pub const NFTA_SET_FIELD_LEN: u16 = 1;

/// `NFT_SET_ANONYMOUS`.
pub const NFT_SET_ANONYMOUS: u32 = 0x1;
/// `NFT_SET_CONSTANT`.
pub const NFT_SET_CONSTANT: u32 = 0x2;
/// `NFT_SET_INTERVAL`.
pub const NFT_SET_INTERVAL: u32 = 0x4;
/// `NFT_SET_MAP`.
pub const NFT_SET_MAP: u32 = 0x8;
/// `NFT_SET_TIMEOUT`.
pub const NFT_SET_TIMEOUT: u32 = 0x10;
/// `NFT_SET_EVAL`.
pub const NFT_SET_EVAL: u32 = 0x20;
/// `NFT_SET_CONCAT`.
pub const NFT_SET_CONCAT: u32 = 0x80;

/// `NFTA_SET_ELEM_LIST_TABLE`.
pub const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
/// `NFTA_SET_ELEM_LIST_SET`.
pub const NFTA_SET_ELEM_LIST_SET: u16 = 2;
/// `NFTA_SET_ELEM_LIST_ELEMENTS`.
pub const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
/// `NFTA_SET_ELEM_LIST_SET_ID`.
pub const NFTA_SET_ELEM_LIST_SET_ID: u16 = 4;
/// `NFTA_SET_ELEM_KEY`.
pub const NFTA_SET_ELEM_KEY: u16 = 1;
/// `NFTA_SET_ELEM_DATA`.
pub const NFTA_SET_ELEM_DATA: u16 = 2;
/// `NFTA_SET_ELEM_FLAGS`.
pub const NFTA_SET_ELEM_FLAGS: u16 = 3;
/// `NFTA_SET_ELEM_KEY_END`.
pub const NFTA_SET_ELEM_KEY_END: u16 = 10;
/// `NFT_SET_ELEM_INTERVAL_END`.
pub const NFT_SET_ELEM_INTERVAL_END: u32 = 0x1;

/// `NFTA_DATA_VALUE`.
pub const NFTA_DATA_VALUE: u16 = 1;
/// `NFTA_DATA_VERDICT`.
pub const NFTA_DATA_VERDICT: u16 = 2;
/// `NFTA_VERDICT_CODE`.
pub const NFTA_VERDICT_CODE: u16 = 1;
/// `NFTA_VERDICT_CHAIN`.
pub const NFTA_VERDICT_CHAIN: u16 = 2;
/// `NFT_DATA_VERDICT`: the data type of verdict maps.
pub const NFT_DATA_VERDICT: u32 = 0xffff_ff00;

/// `NFTA_EXPR_NAME`.
pub const NFTA_EXPR_NAME: u16 = 1;
/// `NFTA_EXPR_DATA`.
pub const NFTA_EXPR_DATA: u16 = 2;

/// The verdict register.
pub const NFT_REG_VERDICT: u32 = 0;

/// A writer of netlink messages into one buffer.
#[derive(Debug, Default)]
pub struct Writer {
    /// The messages written so far.
    pub buf: Vec<u8>,
    /// Set when an attribute was too long for its 16-bit length (and was left out): the
    /// batch must not be sent.
    pub overflow: bool,
}

impl Writer {
    /// A writer whose buffer has room for `n` bytes.
    pub fn with_capacity(n: usize) -> Writer {
        Writer {
            buf: Vec::with_capacity(n),
            overflow: false,
        }
    }

    /// Starts a message: `nlmsghdr` followed by `nfgenmsg`. Returns its start offset, to be
    /// passed to [`Writer::end_msg`].
    pub fn begin_msg(&mut self, ty: u16, flags: u16, seq: u32, family: u8, res_id: u16) -> usize {
        let start = self.buf.len();
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // length, patched in end_msg
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
        self.buf.push(family);
        self.buf.push(0); // NFNETLINK_V0
        self.buf.extend_from_slice(&res_id.to_be_bytes());
        start
    }

    /// Ends the message started at `start` (from [`Writer::begin_msg`]): patches its length.
    pub fn end_msg(&mut self, start: usize) {
        let len = (self.buf.len() - start) as u32;
        self.buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
    }

    fn pad(&mut self) {
        while self.buf.len() % 4 != 0 {
            self.buf.push(0);
        }
    }

    /// One attribute with raw data.
    pub fn attr(&mut self, ty: u16, data: &[u8]) {
        let Ok(len) = u16::try_from(4 + data.len()) else {
            self.overflow = true;
            return;
        };
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.pad();
    }

    /// A big-endian `u32` attribute (nf_tables numbers are in network order).
    pub fn u32(&mut self, ty: u16, v: u32) {
        self.attr(ty, &v.to_be_bytes());
    }

    /// A big-endian `u64` attribute.
    pub fn u64(&mut self, ty: u16, v: u64) {
        self.attr(ty, &v.to_be_bytes());
    }

    /// A NUL-terminated string attribute.
    pub fn str(&mut self, ty: u16, s: &str) {
        let Ok(len) = u16::try_from(4 + s.len() + 1) else {
            self.overflow = true;
            return;
        };
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(s.as_bytes());
        self.buf.push(0);
        self.pad();
    }

    /// Opens a nested attribute; returns the offset for [`Writer::end_nest`].
    pub fn nest(&mut self, ty: u16) -> usize {
        let start = self.buf.len();
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        start
    }

    /// Closes a nested attribute. Fails if it outgrew the 16-bit attribute length.
    pub fn end_nest(&mut self, start: usize) -> Result<(), NestTooLarge> {
        let len = self.buf.len() - start;
        let len = u16::try_from(len).map_err(|_| NestTooLarge)?;
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        Ok(())
    }

    /// Bytes written since `start`.
    pub fn since(&self, start: usize) -> usize {
        self.buf.len() - start
    }
}

/// A nested attribute longer than 65,535 bytes (a netlink attribute length is 16 bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NestTooLarge;

/// Userdata TLVs (libnftnl's `nftnl_udata`): one byte of type, one of length, then the value.
#[derive(Debug, Default, Clone)]
pub struct Udata(
    /// The TLVs written so far.
    pub Vec<u8>,
    /// Whether a value did not fit (see [`Udata::overflow`]).
    pub bool,
);

impl Udata {
    /// One TLV. A value longer than 255 bytes cannot be written: it is left out and the
    /// userdata marked as overflowed (see [`Udata::overflow`]).
    pub fn put(&mut self, ty: u8, value: &[u8]) {
        let Ok(len) = u8::try_from(value.len()) else {
            self.1 = true;
            return;
        };
        self.0.push(ty);
        self.0.push(len);
        self.0.extend_from_slice(value);
    }

    /// Whether a value did not fit.
    pub fn overflow(&self) -> bool {
        self.1
    }

    /// A host-order `u32` value, as libnftnl writes them.
    pub fn put_u32(&mut self, ty: u8, v: u32) {
        self.put(ty, &v.to_ne_bytes());
    }

    /// A NUL-terminated string, cut so that it fits one TLV.
    pub fn put_str(&mut self, ty: u8, s: &str) {
        let mut v: Vec<u8> = s.as_bytes().iter().copied().take(254).collect();
        v.push(0);
        self.put(ty, &v);
    }

    /// `inner` as the value of one TLV (an overflow inside it carries over).
    pub fn put_nested(&mut self, ty: u8, inner: &Udata) {
        self.1 |= inner.1;
        self.put(ty, &inner.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_padded_and_nests_patched() {
        let mut w = Writer::default();
        let m = w.begin_msg(0x0a00, NLM_F_REQUEST, 7, 2, 0);
        w.str(1, "t");
        let n = w.nest(4);
        w.u32(1, 0x0102_0304);
        w.end_nest(n).expect("small nest");
        w.end_msg(m);
        let b = &w.buf;
        assert_eq!(
            u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize,
            b.len()
        );
        // header 16 + nfgenmsg 4 + "t\0" attr padded to 8 + nest 4 + u32 attr 8
        assert_eq!(b.len(), 16 + 4 + 8 + 4 + 8);
        assert_eq!(&b[20..26], &[6, 0, 1, 0, b't', 0]);
        assert_eq!(u16::from_ne_bytes([b[28], b[29]]), 12);
        assert_eq!(u16::from_ne_bytes([b[30], b[31]]), 4 | 0x8000);
        assert_eq!(&b[36..40], &[1, 2, 3, 4]);
    }

    #[test]
    fn oversized_attributes_and_udata_are_flagged() {
        let mut w = Writer::default();
        w.attr(1, &vec![0u8; 70_000]);
        assert!(w.overflow);
        assert!(w.buf.is_empty(), "nothing written");
        let mut u = Udata::default();
        u.put(1, &[0u8; 255]);
        assert!(!u.overflow());
        let mut outer = Udata::default();
        outer.put_nested(3, &u);
        assert!(outer.overflow(), "255 bytes plus a TLV header do not fit");
    }

    #[test]
    fn oversized_nests_are_refused() {
        let mut w = Writer::default();
        let n = w.nest(3);
        for _ in 0..10_000 {
            w.u32(1, 0);
        }
        assert_eq!(w.end_nest(n), Err(NestTooLarge));
    }
}
