//! Batch framing: `BATCH_BEGIN`, one message per object operation, the acknowledgement
//! asked on the last one, `BATCH_END` (left out in a dry run); the table, chain and
//! deletion messages; and the standalone `GETGEN` request.

use rudder_nft::{Family, Hook, Op, SetFlag, Transaction};

use crate::set::IntervalSets;
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

impl Batch {
    /// The index in the transaction of the operation the message with sequence number `seq`
    /// belongs to; `None` for the batch framing and for numbers not in this batch.
    pub fn operation(&self, seq: u32) -> Option<usize> {
        self.seqs.iter().find(|(s, _)| *s == seq).map(|&(_, i)| i)
    }
}

/// The `NFT_MSG_GETGEN` request, with sequence number `seq`: the kernel answers with a
/// `NFT_MSG_NEWGEN` carrying its current nf_tables generation
/// ([`decode::generation`](crate::decode::generation)).
pub fn encode_get_generation(seq: u32) -> Vec<u8> {
    let mut w = Writer::default();
    let m = w.begin_msg(msg_type(NFT_MSG_GETGEN), NLM_F_REQUEST, seq, 0, 0);
    w.end_msg(m);
    w.buf
}

pub(crate) fn nfproto(f: Family) -> u8 {
    match f {
        Family::Ip => 2,
        Family::Ip6 => 10,
    }
}

pub(crate) fn msg_type(m: u16) -> u16 {
    (NFNL_SUBSYS_NFTABLES << 8) | m
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

pub(crate) fn encode_batch(
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

pub(crate) struct Encoder {
    pub(crate) w: Writer,
    seq: u32,
    pub(crate) next_set_id: u32,
    seqs: Vec<(u32, usize)>,
    op: usize,
    /// Start offset and sequence number of the last operation message.
    last_msg: Option<(usize, u32)>,
}

impl Encoder {
    pub(crate) fn begin(&mut self, m: u16, flags: u16, family: Family) -> usize {
        let seq = self.seq;
        self.seq = self.seq.wrapping_add(1);
        self.seqs.push((seq, self.op));
        let start = self
            .w
            .begin_msg(msg_type(m), NLM_F_REQUEST | flags, seq, nfproto(family), 0);
        self.last_msg = Some((start, seq));
        start
    }

    pub(crate) fn encode_op(
        &mut self,
        op: &Op,
        intervals: &IntervalSets,
    ) -> Result<(), EncodeError> {
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
}
