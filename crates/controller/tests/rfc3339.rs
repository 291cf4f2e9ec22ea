//! `parse_rfc3339`: Kubernetes `Time` and `MicroTime` strings as seconds since the epoch.

use rudder_controller::parse_rfc3339;

#[test]
fn kubernetes_timestamps_parse_to_seconds() {
    assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0.0));
    assert_eq!(parse_rfc3339("2026-01-02T03:04:05Z"), Some(1_767_323_045.0));
    assert_eq!(parse_rfc3339("2000-02-29T00:00:00Z"), Some(951_782_400.0));
    let micro = parse_rfc3339("2026-01-02T03:04:05.123456Z").expect("MicroTime");
    assert!((micro - 1_767_323_045.123_456).abs() < 1e-6, "{micro}");
    // An explicit offset is RFC 3339 too.
    assert_eq!(
        parse_rfc3339("2026-01-02T04:04:05+01:00"),
        Some(1_767_323_045.0)
    );
}

#[test]
fn what_is_not_rfc3339_is_none() {
    for bad in [
        "",
        "yesterday",
        "2026-01-02",
        "2026-01-02T03:04:05",
        "2026-13-02T03:04:05Z",
        "2026-02-30T03:04:05Z",
        "2026-01-02T25:04:05Z",
        "2026-01-02 03:04:05Z x",
    ] {
        assert_eq!(parse_rfc3339(bad), None, "{bad:?}");
    }
}
