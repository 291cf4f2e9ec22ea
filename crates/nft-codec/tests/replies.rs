//! The decoder against the kernel's own answers, captured once and committed under
//! `tests/vectors/replies/` (see `tests/vectors/README.md`): acknowledgements, an `EEXIST`
//! and two `ENOENT`s (with the extended acknowledgement), a `NEWGEN`. No socket, no root.

mod cases;

use std::path::PathBuf;

use rudder_nft_codec::decode::{self, BatchError, BatchReplies, Message};

use cases::{SEQ, reply_cases};

fn vector(name: &str, prefix: &str) -> Vec<Vec<u8>> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/vectors/replies")
        .join(format!("{name}.hex"));
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .filter_map(|l| l.strip_prefix(prefix))
        .map(|l| {
            let l = l.trim();
            (0..l.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&l[i..i + 2], 16).expect("hex"))
                .collect()
        })
        .collect()
}

#[test]
fn kernel_answers_decode_to_the_failing_operation_and_errno() {
    for case in reply_cases() {
        let batch = rudder_nft_codec::encode(&case.tx, &Default::default(), SEQ).expect("encode");
        assert_eq!(
            vector(case.name, "> ").concat(),
            batch.bytes,
            "{}: the request is today's encoding",
            case.name
        );
        let mut replies = BatchReplies::new(&batch);
        for d in vector(case.name, "< ") {
            replies.read(&d);
        }
        match (replies.outcome(), case.errno) {
            (Ok(()), 0) => {}
            (Err(BatchError::Refused(r)), errno) if errno != 0 => {
                assert_eq!(r.errno, errno, "{}", case.name);
                // Every case's refused operation is its last.
                assert_eq!(
                    batch.operation(r.seq),
                    Some(case.tx.len() - 1),
                    "{}: {r:?}",
                    case.name
                );
                let io = std::io::Error::from(&r);
                assert_eq!(io.raw_os_error(), Some(errno));
            }
            (other, errno) => panic!("{}: {other:?}, expected errno {errno}", case.name),
        }
    }
}

#[test]
fn the_extended_ack_names_the_attribute_at_fault() {
    let batch = rudder_nft_codec::encode(
        &reply_cases()
            .into_iter()
            .find(|c| c.name == "eexist")
            .expect("eexist")
            .tx,
        &Default::default(),
        SEQ,
    )
    .expect("encode");
    let reply = vector("eexist", "< ");
    let refusal = decode::messages(&reply[0])
        .find_map(|m| match m {
            Ok(Message::Error(r)) => Some(r),
            _ => None,
        })
        .expect("an error");
    // The offset is into the refused message: the set's name, after the header, nfgenmsg and
    // the table's name.
    let offset = refusal.offset.expect("offset") as usize;
    let start: usize = {
        let mut at = 0;
        let mut rest = batch.bytes.as_slice();
        loop {
            let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            let seq = u32::from_ne_bytes([rest[8], rest[9], rest[10], rest[11]]);
            if seq == refusal.seq {
                break at;
            }
            at += len;
            rest = &rest[len..];
        }
    };
    let attr = &batch.bytes[start + offset..];
    assert_eq!(u16::from_ne_bytes([attr[2], attr[3]]), 2, "NFTA_SET_NAME");
    assert_eq!(&attr[4..8], b"ips\0");
}

#[test]
fn the_generation_is_read_from_the_kernels_newgen() {
    assert_eq!(
        vector("getgen", "> ").concat(),
        rudder_nft_codec::encode_get_generation(SEQ)
    );
    let reply = vector("getgen", "< ");
    let generation = reply.iter().find_map(|d| decode::generation(d, SEQ));
    assert!(matches!(generation, Some(Ok(g)) if g > 0), "{generation:?}");
    assert_eq!(
        reply.iter().find_map(|d| decode::generation(d, SEQ + 1)),
        None
    );
}
