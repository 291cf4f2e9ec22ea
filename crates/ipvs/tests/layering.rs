//! The codec modules never see a socket: only `src/handle.rs` may name `netlink_sys`.

#[test]
fn only_the_handle_does_io() {
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/src");
    for entry in std::fs::read_dir(src).expect("src") {
        let path = entry.expect("entry").path();
        if path.file_name().is_some_and(|n| n == "handle.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read");
        for forbidden in ["netlink_sys", "std::io::Read", "std::fs", "std::os::fd"] {
            assert!(
                !text.contains(forbidden),
                "{} names {forbidden}: I/O belongs in handle.rs",
                path.display()
            );
        }
    }
}
