//! The codec's byte-exact vectors (`crates/nft-codec/tests/vectors/`) against the kernel and
//! `nft`, in throwaway network namespaces (root):
//!
//! - every committed batch, sent as it is, is accepted by the kernel (in order: the cases
//!   build on each other);
//! - every committed batch has the messages `nft --debug=mnl` shows for the same
//!   transaction as `nft -f` text (`nft --check` for the dry run): the same message types,
//!   lengths and attribute bytes (sequence numbers and flags aside, which `nft` numbers and
//!   prints differently);
//! - the kernel's answers to the reply cases decode as the committed reply vectors do.
//!
//! With `RUDDER_WRITE_VECTORS=1` the reply vectors (`replies/*.hex`) are written from what the
//! kernel answers here instead.

#[path = "../../nft-codec/tests/cases/mod.rs"]
mod cases;

use std::io::ErrorKind;
use std::path::PathBuf;

use netlink_sys::Socket;
use rudder_e2e::{Netns, e2e_enabled};
use rudder_nft_codec::decode::{BatchError, BatchReplies, Refusal};
use rudder_nft_codec::wire::NETLINK_NETFILTER;

use cases::{SEQ, cases, reply_cases};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../nft-codec/tests/vectors")
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(l: &str) -> Vec<u8> {
    (0..l.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&l[i..i + 2], 16).expect("hex"))
        .collect()
}

/// The hex lines of a vector file starting with `prefix` (comments start with `#`).
fn lines(path: &std::path::Path, prefix: &str) -> Vec<Vec<u8>> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.strip_prefix(prefix))
        .map(|l| unhex(l.trim()))
        .collect()
}

/// Sends `batch` on a socket set up as the writer sets up its own, and returns every
/// datagram the kernel answered.
fn exchange(batch: &[u8]) -> Vec<Vec<u8>> {
    let mut socket = Socket::new(NETLINK_NETFILTER as isize).expect("socket");
    socket.bind_auto().expect("bind");
    socket.set_cap_ack(true).expect("cap ack");
    socket.set_ext_ack(true).expect("ext ack");
    socket.set_non_blocking(true).expect("non-blocking");
    socket.send(batch, 0).expect("send");
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match socket.recv(&mut &mut buf[..], 0) {
            Ok(n) => out.push(buf[..n].to_vec()),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) => panic!("recv: {e}"),
        }
    }
    out
}

fn outcome(batch: &rudder_nft_codec::Batch, replies: &[Vec<u8>]) -> Result<(), BatchError> {
    let mut r = BatchReplies::new(batch);
    for d in replies {
        r.read(d);
    }
    r.outcome()
}

/// The messages of the batch in `nft --debug=mnl` output, rebuilt as bytes, from
/// `BATCH_BEGIN` on (the cache requests before it are left out).
fn mnl_batch(dump: &str) -> Vec<Vec<u8>> {
    let mut msgs: Vec<Vec<u8>> = Vec::new();
    let mut in_batch = false;
    let mut cur: Option<Vec<u8>> = None;
    let mut pending_len: Option<u32> = None;
    let finish = |cur: &mut Option<Vec<u8>>, msgs: &mut Vec<Vec<u8>>, in_batch: bool| {
        if let Some(m) = cur.take()
            && in_batch
        {
            msgs.push(m);
        }
    };
    for raw in dump.lines() {
        // Strip the colours.
        let mut line = String::new();
        let mut esc = false;
        for c in raw.chars() {
            match (esc, c) {
                (false, '\x1b') => esc = true,
                (true, 'm') => esc = false,
                (true, _) => {}
                (false, c) => line.push(c),
            }
        }
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if line.contains("message length") {
            finish(&mut cur, &mut msgs, in_batch);
            pending_len = cells.get(1).and_then(|c| c.parse().ok());
        } else if line.contains("type | flags") {
            let ty: u16 = cells.get(1).and_then(|c| c.parse().ok()).expect("type");
            if ty == 0x10 {
                in_batch = true;
            }
            let mut m = Vec::new();
            m.extend_from_slice(&pending_len.take().expect("length first").to_ne_bytes());
            m.extend_from_slice(&ty.to_ne_bytes());
            // Flags, sequence number and port id are not compared.
            m.extend_from_slice(&[0; 10]);
            cur = Some(m);
        } else if line.contains("extra header") || line.contains("|      data      |") {
            if let Some(m) = cur.as_mut() {
                for b in cells.get(1).expect("bytes").split_whitespace() {
                    m.push(u8::from_str_radix(b, 16).expect("hex byte"));
                }
            }
        } else if line.contains("|len |flags| type|") {
            if let Some(m) = cur.as_mut() {
                let len: u16 = cells[1].parse().expect("attr len");
                let mut ty: u16 = cells[3].parse().expect("attr type");
                if cells[2].contains('N') {
                    ty |= 0x8000;
                }
                if cells[2].contains('B') {
                    ty |= 0x4000;
                }
                m.extend_from_slice(&len.to_ne_bytes());
                m.extend_from_slice(&ty.to_ne_bytes());
            }
        }
    }
    finish(&mut cur, &mut msgs, in_batch);
    msgs
}

/// A message with its flags, sequence number and port id cleared, for comparison with `nft`.
fn normalized(m: &[u8]) -> Vec<u8> {
    let mut m = m.to_vec();
    m[6..16].fill(0);
    m
}

/// Whether a message may differ from nft's in the ways the encoder knowingly differs (none of
/// which changes what the kernel holds; see `tests/vectors/README.md`): rules and element
/// additions (nft refers to sets declared in the same batch by ID as well as by name, numbers
/// list elements, and writes `bitwise`'s default operation), anonymous set declarations (nft's
/// set IDs count differently) and set flushes (nft writes the set's name before the table's).
fn explained(m: &[u8]) -> bool {
    let kind = u16::from_ne_bytes([m[4], m[5]]) & 0xff;
    let attrs = rudder_nft_codec::decode::Attrs(&m[20..]);
    match kind {
        6 | 12 => true,
        9 => attrs.string(2).is_some_and(|n| n.starts_with("__")),
        14 => attrs.get(3).is_none(),
        _ => false,
    }
}

#[test]
fn vectors_are_taken_by_the_kernel_and_are_what_nft_sends() {
    if !e2e_enabled() {
        return;
    }
    let kernel = Netns::new("veck").expect("netns");
    let nft = Netns::new("vecn").expect("netns");
    let mut differ = Vec::new();
    let (mut same, mut explained_count) = (0, 0);
    for case in cases() {
        let path = dir().join(format!("{}.hex", case.name));
        let vector = lines(&path, "");
        let bytes: Vec<u8> = vector.concat();
        let batch = case.encode();
        assert_eq!(
            bytes, batch.bytes,
            "{}: the vector is not today's encoding",
            case.name
        );
        let replies = kernel.enter(|| exchange(&bytes)).expect("enter");
        assert_eq!(
            outcome(&batch, &replies),
            Ok(()),
            "{}: the kernel refused the vector",
            case.name
        );

        let script = std::env::temp_dir().join(format!("rudder-vector-{}.nft", case.name));
        std::fs::write(&script, case.tx.render()).expect("script");
        let script = script.to_string_lossy().into_owned();
        let mut args = vec!["nft", "--debug=mnl"];
        if case.dry_run {
            args.push("--check");
        }
        args.extend(["-f", script.as_str()]);
        let out = nft.exec(&args).expect("nft");
        let _ = std::fs::remove_file(&script);
        assert!(
            out.status.success(),
            "{}: nft -f: {}",
            case.name,
            String::from_utf8_lossy(&out.stderr)
        );
        let dump = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        let sent = mnl_batch(&dump);
        let ours: Vec<Vec<u8>> = vector.iter().map(|m| normalized(m)).collect();
        let kinds = |ms: &[Vec<u8>]| -> Vec<u16> {
            ms.iter()
                .map(|m| u16::from_ne_bytes([m[4], m[5]]))
                .collect()
        };
        assert_eq!(kinds(&ours), kinds(&sent), "{}: message types", case.name);
        for (i, (a, b)) in ours.iter().zip(&sent).enumerate() {
            if a == b {
                same += 1;
            } else if explained(a) {
                explained_count += 1;
            } else {
                differ.push(format!(
                    "{} message {i}:\n ours: {}\n nft:  {}",
                    case.name,
                    hex(a),
                    hex(b)
                ));
            }
        }
    }
    eprintln!(
        "{same} messages byte-identical to nft's, {explained_count} rule and element messages \
         with the known differences"
    );
    assert!(differ.is_empty(), "{}", differ.join("\n"));
}

/// What a reply vector decodes to: the first refusal, with the index of the operation.
fn decoded(
    batch: &rudder_nft_codec::Batch,
    replies: &[Vec<u8>],
) -> Option<(Refusal, Option<usize>)> {
    match outcome(batch, replies) {
        Ok(()) => None,
        Err(BatchError::Refused(r)) => {
            let op = batch.operation(r.seq);
            Some((r, op))
        }
        Err(BatchError::NoAck) => panic!("no acknowledgement"),
    }
}

#[test]
fn kernel_replies_decode_as_the_reply_vectors() {
    if !e2e_enabled() {
        return;
    }
    let write = std::env::var("RUDDER_WRITE_VECTORS").is_ok_and(|v| v == "1");
    std::fs::create_dir_all(dir().join("replies")).expect("dir");
    for case in reply_cases() {
        let ns = Netns::new("vecr").expect("netns");
        let setup =
            rudder_nft_codec::encode(&case.setup, &Default::default(), 100).expect("encode setup");
        let replies = ns.enter(|| exchange(&setup.bytes)).expect("enter");
        assert_eq!(outcome(&setup, &replies), Ok(()), "{}: setup", case.name);
        let batch = rudder_nft_codec::encode(&case.tx, &Default::default(), SEQ).expect("encode");
        let replies = ns.enter(|| exchange(&batch.bytes)).expect("enter");
        let live = decoded(&batch, &replies);
        assert_eq!(
            live.as_ref().map_or(0, |(r, _)| r.errno),
            case.errno,
            "{}: {live:?}",
            case.name
        );
        let path = dir().join("replies").join(format!("{}.hex", case.name));
        if write {
            let mut text = format!(
                "# {}: {}\n\
                 # Captured from Linux {} by crates/nft-backend/tests/vectors.rs\n\
                 # (RUDDER_WRITE_VECTORS=1). `>` lines: the batch sent (one message each, first\n\
                 # sequence number {SEQ}, after the setup below was applied); `<` lines: the\n\
                 # datagrams the kernel answered, on a socket with NETLINK_CAP_ACK and\n\
                 # NETLINK_EXT_ACK.\n#\n# setup:\n",
                case.name,
                case.about,
                kernel_release(),
            );
            for l in case.setup.render().lines() {
                text.push_str(&format!("#   {l}\n"));
            }
            text.push_str("# batch:\n");
            for l in case.tx.render().lines() {
                text.push_str(&format!("#   {l}\n"));
            }
            let mut rest = batch.bytes.as_slice();
            while rest.len() >= 16 {
                let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
                text.push_str(&format!("> {}\n", hex(&rest[..len])));
                rest = &rest[len.div_ceil(4) * 4..];
            }
            for d in &replies {
                text.push_str(&format!("< {}\n", hex(d)));
            }
            std::fs::write(&path, text).expect("write");
        } else {
            assert_eq!(
                lines(&path, "> ").concat(),
                batch.bytes,
                "{}: the request is not today's encoding",
                case.name
            );
            let committed = decoded(&batch, &lines(&path, "< "));
            assert_eq!(
                live, committed,
                "{}: the kernel answers otherwise now",
                case.name
            );
        }
    }
}

#[test]
fn the_generation_reply_decodes_as_its_vector() {
    if !e2e_enabled() {
        return;
    }
    let write = std::env::var("RUDDER_WRITE_VECTORS").is_ok_and(|v| v == "1");
    let ns = Netns::new("vecg").expect("netns");
    let request = rudder_nft_codec::encode_get_generation(SEQ);
    let replies = ns.enter(|| exchange(&request)).expect("enter");
    let live = replies
        .iter()
        .find_map(|d| rudder_nft_codec::decode::generation(d, SEQ));
    assert!(matches!(live, Some(Ok(_))), "{live:?}");
    let path = dir().join("replies/getgen.hex");
    if write {
        let mut text = format!(
            "# getgen: NFT_MSG_GETGEN and the kernel's NFT_MSG_NEWGEN (generation, pid, process name)\n\
             # Captured from Linux {} by crates/nft-backend/tests/vectors.rs (RUDDER_WRITE_VECTORS=1).\n",
            kernel_release()
        );
        text.push_str(&format!("> {}\n", hex(&request)));
        for d in &replies {
            text.push_str(&format!("< {}\n", hex(d)));
        }
        std::fs::write(&path, text).expect("write");
    } else {
        assert_eq!(
            lines(&path, "> ").concat(),
            request,
            "the request is not today's"
        );
        let committed = lines(&path, "< ")
            .iter()
            .find_map(|d| rudder_nft_codec::decode::generation(d, SEQ));
        assert!(matches!(committed, Some(Ok(_))), "{committed:?}");
    }
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "?".into())
}
