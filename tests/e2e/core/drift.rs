//! Periodic full resyncs detect and repair drift.

use super::*;

#[test]
fn periodic_full_resyncs_detect_and_repair_drift() {
    if !e2e_enabled() {
        return;
    }
    const FULL: &str = "kind=\"full\"";
    // Without the table monitor, which would repair the tampering below at once (that is
    // tested in reliability.rs): here the periodic resync must find it.
    let mut c = Cluster::start(&["--full-sync-period", "2s", "--watch-tables=false"]);
    // Interval sets (source ranges) and sets the packet path fills (affinity) must not look
    // like drift.
    c.manifests
        .write("fw.yaml", &firewalled_service("10.0.0.0/8, 172.18.0.0/24"))
        .expect("write");
    c.manifests
        .write(
            "sticky.yaml",
            &sticky_service(&["10.244.1.2", "10.244.2.2", "10.244.3.2"]),
        )
        .expect("write");
    let fulls = c.daemon.count(FULL);
    c.daemon
        .wait_for(FULL, fulls + 1, Duration::from_secs(10))
        .expect("a periodic full resync");
    let sticky = c.hist(&c.topo.pods[0], "10.96.100.140:80", 5, Proto::Tcp);
    assert_eq!(sticky.len(), 1, "affinity in use: {sticky:?}");
    // A periodic resync over untouched rules finds no drift.
    let fulls = c.daemon.count(FULL);
    c.daemon
        .wait_for(FULL, fulls + 1, Duration::from_secs(10))
        .expect("a periodic full resync");
    let drift = |c: &Cluster| {
        let (_, _, text) =
            http_get_path(&c.topo.node, "127.0.0.1:10249", "/metrics").expect("metrics");
        metric(&text, "rudder_drift_repairs_total")
    };
    assert_eq!(drift(&c), Some(0.0), "false drift:\n{}", c.daemon.log());
    assert!(!c.daemon.log().contains("drift:"), "{}", c.daemon.log());
    // Someone empties a map behind Rudder's back: the ClusterIP stops working...
    nft::load(&c.topo.node, "flush map ip rudder service-ips\n").expect("tamper");
    let r = tcp_request(
        &c.topo.pods[0],
        addr("10.96.100.100:80"),
        Duration::from_millis(300),
    );
    assert!(r.is_err(), "the tampering had no effect: {r:?}");
    // ...until the next periodic resync notices and repairs it.
    let fulls = c.daemon.count(FULL);
    c.daemon
        .wait_for(FULL, fulls + 1, Duration::from_secs(10))
        .expect("the next full resync");
    assert_eq!(drift(&c), Some(1.0), "{}", c.daemon.log());
    assert!(
        c.daemon.log().contains("set service-ips"),
        "the log names what drifted:\n{}",
        c.daemon.log()
    );
    assert_all_backends(
        &c.hist(&c.topo.pods[0], "10.96.100.100:80", 30, Proto::Tcp),
        "after the repair",
    );
}
