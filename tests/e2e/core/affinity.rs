//! ClientIP session affinity.

use super::*;

#[test]
fn client_ip_session_affinity_sticks_expires_and_moves() {
    if !e2e_enabled() {
        return;
    }
    let mut c = Cluster::start(&[]);
    let syncs = c.daemon.count(SYNC_DONE);
    c.manifests
        .write(
            "sticky.yaml",
            &sticky_service(&["10.244.1.2", "10.244.2.2", "10.244.3.2"]),
        )
        .expect("write");
    c.daemon
        .wait_for(SYNC_DONE, syncs + 1, Duration::from_secs(5))
        .expect("sync");
    // Many new connections from one client all land on the same endpoint.
    let first = c.hist(&c.topo.pods[0], "10.96.100.140:80", 20, Proto::Tcp);
    assert_eq!(
        first.len(),
        1,
        "one client sticks to one endpoint: {first:?}"
    );
    let chosen = first.keys().next().cloned().expect("an answer");
    assert!(NAMES.contains(&chosen.as_str()), "{first:?}");
    // Another client sticks too (possibly elsewhere).
    let other = c.hist(&c.topo.client, "10.96.100.140:80", 10, Proto::Tcp);
    assert_eq!(other.len(), 1, "{other:?}");
    // After the 2 s timeout without connections the choice is free again: over a few
    // expiries the client sees more than one endpoint (all the same: probability (1/3)^5).
    let mut seen = std::collections::BTreeSet::from([chosen.clone()]);
    for _ in 0..6 {
        std::thread::sleep(Duration::from_millis(2300));
        let h = c.hist(&c.topo.pods[0], "10.96.100.140:80", 3, Proto::Tcp);
        assert_eq!(h.len(), 1, "still sticky within the timeout: {h:?}");
        seen.extend(h.into_keys());
    }
    assert!(seen.len() > 1, "affinity never expired: {seen:?}");
    // Removing the endpoint the client sticks to moves it to another one.
    let now = c.hist(&c.topo.pods[0], "10.96.100.140:80", 1, Proto::Tcp);
    let stuck = now.keys().next().cloned().expect("answer");
    let remaining: Vec<&str> = ["10.244.1.2", "10.244.2.2", "10.244.3.2"]
        .into_iter()
        .zip(NAMES)
        .filter(|(_, n)| *n != stuck)
        .map(|(ip, _)| ip)
        .collect();
    c.edit("sticky.yaml", |_| sticky_service(&remaining));
    let moved = c.hist(&c.topo.pods[0], "10.96.100.140:80", 10, Proto::Tcp);
    assert_eq!(moved.len(), 1, "sticky again after the move: {moved:?}");
    assert!(
        !moved.contains_key(&stuck),
        "client still sent to the removed endpoint {stuck}: {moved:?}"
    );
}
