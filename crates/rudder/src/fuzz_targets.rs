//! Fuzz targets (see `rudder_e2e::fuzz` for the driver and `tests/fuzz/README.md`): the
//! manifest reader with the model conversion and the compiler behind it, the `--config`
//! file, and the decoders of what the kernel sends over netlink. Each runs for `RUDDER_FUZZ_SECS` in `cargo test`; `cargo xtask fuzz` runs them
//! longer and reports executions and findings.
//!
//! Beyond "no panic", the manifest target checks what must hold for any input: the compiled
//! ruleset is consistent (what the kernel would refuse, the in-memory ruleset refuses too),
//! the `nft` text has no control characters, and the fuzzed objects applied as an incremental
//! update on top of the example produce exactly what a fresh full compile of the result does.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use clap::{CommandFactory, FromArgMatches};
use rudder_compiler::{Compiler, NodeContext};
use rudder_model::{IpFamily, ProxyState};
use rudder_nft::Ruleset;

use crate::cli::{Cli, Command};
use crate::{config, convert, files, manifests, nesting, proxier};

const FAMILIES: [IpFamily; 2] = [IpFamily::V4, IpFamily::V6];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Settings as `rudder compile --hostname-override node-1` has them.
static SETTINGS: LazyLock<proxier::Settings> = LazyLock::new(|| {
    let m = Cli::command()
        .try_get_matches_from([
            "rudder",
            "compile",
            "--manifests",
            "unused",
            "--hostname-override",
            "node-1",
            "--cluster-cidr",
            "10.244.0.0/16,fd00:10:244::/56",
        ])
        .expect("arguments");
    let Command::Compile(args) = Cli::from_arg_matches(&m).expect("arguments").command else {
        panic!("not compile")
    };
    proxier::Settings::from_args(&args.proxy).expect("settings")
});

/// The example (examples/nginx) converted: the base the fuzzed objects are added to.
static BASE: LazyLock<(ProxyState, NodeContext)> = LazyLock::new(|| {
    let (by_file, errors, skipped) = files::load(&[repo().join("examples/nginx")]);
    assert!(errors.is_empty() && skipped.is_empty(), "the example reads");
    let conv = convert::convert(&manifests::merge(&by_file), "node-1");
    let mut node = SETTINGS.node_context(conv.node.as_ref(), None);
    node.service_cidrs = conv.service_cidrs.iter().map(|c| c.cidr).collect();
    let mut state = ProxyState::new();
    state.replace_all(conv.services, conv.slices);
    state.take_dirty();
    (state, node)
});

fn render(c: &Compiler) -> String {
    c.create_transaction().render()
}

fn check_text(text: &str) {
    assert!(
        !text
            .chars()
            .any(|c| c.is_control() && c != '\n' && c != '\t'),
        "control characters in the ruleset"
    );
}

/// Kernel datagrams as one input: split at each `\xff\xfe` pair, so that a burst of several
/// datagrams (the monitor's case) is fuzzed too.
fn datagrams(data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = data;
    while let Some(i) = rest.windows(2).position(|w| w == [0xff, 0xfe]) {
        out.push(&rest[..i]);
        rest = &rest[i + 2..];
    }
    out.push(rest);
    out
}

/// The tables the monitor watches in the netlink target: Rudder's, and the `probe` tables of
/// the captured seeds.
static WATCHED: LazyLock<Vec<rudder_nft::TableRef>> = LazyLock::new(|| {
    let name = |n: &str| rudder_nft::Name::new(n).expect("table name");
    vec![
        rudder_nft::TableRef {
            family: rudder_nft::Family::Ip,
            name: name("rudder"),
        },
        rudder_nft::TableRef {
            family: rudder_nft::Family::Ip6,
            name: name("rudder"),
        },
        rudder_nft::TableRef {
            family: rudder_nft::Family::Ip,
            name: name("probe"),
        },
    ]
});

/// A small batch, to read replies against.
static BATCH: LazyLock<rudder_nft_codec::Batch> = LazyLock::new(|| {
    let mut compiler = Compiler::new(&[IpFamily::V4], SETTINGS.config.clone(), BASE.1.clone());
    let tx = compiler.full(&ProxyState::new());
    rudder_nft_codec::encode(&tx, &Default::default(), 1).expect("encode")
});

/// Everything that decodes what the kernel sends: the nf_tables monitor's reader, the
/// codec's batch replies, `NEWGEN` and message iterator, and the IPVS replies. Beyond "no
/// panic": the monitor reports changes of watched tables only, and decoding is a function of
/// the bytes (the same input decodes the same way twice).
pub(crate) fn netlink(data: &[u8]) {
    let grams = datagrams(data);
    let notices = rudder_nft_backend::monitor::read_datagrams(&WATCHED, &grams);
    for n in &notices {
        if let rudder_nft_backend::Notice::Changed { deleted, .. } = n {
            assert!(
                deleted.iter().all(|t| WATCHED.contains(t)),
                "a deletion of a table the monitor does not watch: {deleted:?}"
            );
        }
    }
    assert_eq!(
        format!("{notices:?}"),
        format!(
            "{:?}",
            rudder_nft_backend::monitor::read_datagrams(&WATCHED, &grams)
        )
    );
    for g in &grams {
        for m in rudder_nft_codec::decode::messages(g) {
            if let Ok(rudder_nft_codec::decode::Message::Nft(n)) = m {
                let attrs = n.attrs;
                let _ = attrs.count();
                for (ty, value) in attrs.iter() {
                    let _ = (attrs.get(ty), attrs.string(ty), attrs.be32(ty), value.len());
                    let nested = rudder_nft_codec::decode::Attrs(value);
                    let _ = nested.iter().count();
                }
            }
        }
        let _ = rudder_nft_codec::decode::generation(g, 1);
        let _ = rudder_ipvs::reply::decode(g);
        let _ = rudder_ipvs::reply::decode_message(g);
        let _ = rudder_ipvs::reply::decode_family_reply(g);
        assert_eq!(
            format!("{:?}", rudder_ipvs::reply::decode(g)),
            format!("{:?}", rudder_ipvs::reply::decode(g))
        );
    }
    let mut replies = rudder_nft_codec::decode::BatchReplies::new(&BATCH);
    for g in &grams {
        replies.read(g);
    }
    let _ = replies.outcome();
}

/// One manifest file's bytes, named `name` (its extension picks JSON or YAML).
pub fn manifest(data: &[u8], name: &str) {
    // What `files::load_file` does before parsing: UTF-8 only, nesting bounded.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new(name);
    let deep = if name.ends_with(".json") {
        nesting::check_json(text, nesting::MAX_DEPTH)
    } else {
        nesting::check_yaml(text, nesting::MAX_DEPTH)
    };
    if deep.is_err() {
        return;
    }
    let Ok((objs, _errors)) = manifests::parse_str(path, text) else {
        return;
    };
    let conv = convert::convert(&objs, "node-1");
    for p in &conv.problems {
        // Problems are logged: their text must be printable once escaped.
        let shown = rudder_model::escape_controls(&p.to_string()).into_owned();
        assert!(!shown.chars().any(char::is_control), "{shown:?}");
    }

    // The fuzzed input alone, compiled from scratch.
    let mut node = SETTINGS.node_context(conv.node.as_ref(), None);
    node.service_cidrs = conv.service_cidrs.iter().map(|c| c.cidr).collect();
    let mut state = ProxyState::new();
    state.replace_all(conv.services.clone(), conv.slices.clone());
    let mut alone = Compiler::new(&FAMILIES, SETTINGS.config.clone(), node);
    alone.full(&state);
    alone.take_problems();
    if let Err(e) = alone.ruleset() {
        panic!("inconsistent ruleset: {e}");
    }
    check_text(&render(&alone));

    // The same objects as an incremental change on top of the example: the update applies
    // to what the kernel holds (modelled), leaves exactly what the compiler believes, and
    // matches a full compile of the result (set sizes and rule counts: endpoint slots may be
    // numbered differently; classes a partial sync keeps unused until the next full sync
    // are left out).
    let (base_state, base_node) = &*BASE;
    let mut state = base_state.clone();
    let mut inc = Compiler::new(&FAMILIES, SETTINGS.config.clone(), base_node.clone());
    let mut kernel = Ruleset::new();
    if let Err(e) = kernel.apply(&inc.full(&state)) {
        panic!("the example does not apply: {e}");
    }
    for s in conv.services {
        state.upsert_service(s);
    }
    for s in conv.slices {
        state.upsert_slice(s);
    }
    let dirty: BTreeSet<_> = state.take_dirty();
    let tx = inc.update(&state, &dirty);
    inc.take_problems();
    if let Err(e) = kernel.apply(&tx) {
        panic!("the update does not apply: {e}");
    }
    match inc.ruleset() {
        Ok(believed) => assert!(
            believed == kernel,
            "the compiler's view differs from the kernel's"
        ),
        Err(e) => panic!("inconsistent ruleset after an update: {e}"),
    }
    let mut fresh = Compiler::new(&FAMILIES, SETTINGS.config.clone(), base_node.clone());
    fresh.full(&state);
    fresh.take_problems();
    let expected = match fresh.ruleset() {
        Ok(r) => r,
        Err(e) => panic!("inconsistent full ruleset: {e}"),
    };
    for (t, table) in &expected.tables {
        let Some(got) = kernel.tables.get(t) else {
            panic!("table {t:?} missing after the update");
        };
        for (name, set) in &table.sets {
            let n = got.sets.get(name).map(|s| s.elements.len());
            assert_eq!(n, Some(set.elements.len()), "set {name} after the update");
        }
        for (name, chain) in &table.chains {
            let n = got.chains.get(name).map(|c| c.rules.len());
            assert_eq!(n, Some(chain.rules.len()), "chain {name} after the update");
        }
    }
}

/// A `--config` file's bytes.
pub fn config_file(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let m = Cli::command()
        .try_get_matches_from(["rudder", "run", "--config", "fuzz.yaml"])
        .expect("arguments");
    let Command::Run(mut args) = Cli::from_arg_matches(&m).expect("arguments").command else {
        panic!("not run")
    };
    let sub = m.subcommand_matches("run").cloned().unwrap_or_default();
    if config::apply_text(text, Path::new("fuzz.yaml"), &sub, &mut args).is_ok() {
        // What the daemon does next with an accepted file.
        let _ = proxier::Settings::from_args(&args.proxy);
        let _ = config::effective(&args);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rudder_e2e::fuzz;

    /// Tokens of Kubernetes manifests and of the values Rudder reads.
    const MANIFEST_DICT: &[&[u8]] = &[
        b"apiVersion: v1\nkind: Service\n",
        b"apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n",
        b"apiVersion: networking.k8s.io/v1\nkind: ServiceCIDR\n",
        b"apiVersion: v1\nkind: Node\n",
        b"\n---\n",
        b"clusterIP: ",
        b"clusterIPs: [",
        b"externalIPs: [",
        b"loadBalancerSourceRanges: [",
        b"ingress: [{ip: ",
        b"nodePort: ",
        b"port: ",
        b"targetPort: ",
        b"protocol: UDP",
        b"type: LoadBalancer",
        b"type: NodePort",
        b"externalTrafficPolicy: Local",
        b"internalTrafficPolicy: Local",
        b"sessionAffinity: ClientIP",
        b"healthCheckNodePort: ",
        b"addressType: IPv6",
        b"kubernetes.io/service-name: ",
        b"nodeName: node-1",
        b"ready: false",
        b"serving: true",
        b"terminating: true",
        b"10.96.100.100",
        b"172.18.0.2",
        b"fd00:10:96::100",
        b"127.0.0.1",
        b"::ffff:10.96.0.1",
        b"0.0.0.0/0",
        b"10.0.0.0/8",
        b"/32",
        b"/0",
        b"&a",
        b"*a",
        b"<<: *a",
        b"!!binary ",
        b"\"\\u0000\"",
        b"\"\\n\"",
    ];

    const CONFIG_DICT: &[&[u8]] = &[
        b"apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n",
        b"mode: ",
        b"nftables",
        b"clusterCIDR: ",
        b"nodePortAddresses: [",
        b"detectLocalMode: ",
        b"syncPeriod: ",
        b"minSyncPeriod: ",
        b"masqueradeBit: ",
        b"metricsBindAddress: ",
        b"healthzBindAddress: ",
        b"conntrack: {",
        b"1h2m3.5s",
        b"-1s",
        b"999999999999h",
        b"0.0.0.0:10249",
        b"[::]:10256",
    ];

    fn manifest_seeds() -> Vec<Vec<u8>> {
        let root = repo();
        fuzz::seeds_from(&[
            &root.join("tests/hostile"),
            &root.join("examples/nginx"),
            &root.join("tests/fuzz/manifest"),
        ])
    }

    #[test]
    fn fuzz_manifest_yaml() {
        fuzz::run(
            "manifest-yaml",
            &manifest_seeds(),
            MANIFEST_DICT,
            256 << 10,
            |d| manifest(d, "fuzz.yaml"),
        );
    }

    #[test]
    fn fuzz_manifest_json() {
        fuzz::run(
            "manifest-json",
            &fuzz::seeds_from(&[&repo().join("tests/fuzz/manifest-json")]),
            &[
                b"{\"", b"\":", b"[", b"]", b"{", b"}", b",", b"null", b"1e999",
            ],
            256 << 10,
            |d| manifest(d, "fuzz.json"),
        );
    }

    #[test]
    fn fuzz_netlink() {
        fuzz::run(
            "netlink",
            &fuzz::seeds_from(&[&repo().join("tests/fuzz/netlink")]),
            &[
                b"\xff\xfe",
                b"\x14\x00\x00\x00",
                b"\x02\x00",
                b"\x03\x00",
                b"\x0a\x00",
                b"\x00\x80",
                b"rudder\x00\x00",
            ],
            64 << 10,
            netlink,
        );
    }

    #[test]
    fn fuzz_config_file() {
        fuzz::run(
            "config",
            &fuzz::seeds_from(&[&repo().join("tests/fuzz/config")]),
            CONFIG_DICT,
            64 << 10,
            config_file,
        );
    }

    /// Replays the saved findings (`target/fuzz-findings/`) with full panic output:
    /// `cargo test -p rudder --bin rudder replay_findings -- --ignored --nocapture`.
    #[test]
    #[ignore = "for replaying findings by hand"]
    fn replay_findings() {
        let mut left = Vec::new();
        for (target, name) in [("manifest-yaml", "f.yaml"), ("manifest-json", "f.json")] {
            left.extend(fuzz::replay(target, |d| manifest(d, name)));
        }
        left.extend(fuzz::replay("config", config_file));
        left.extend(fuzz::replay("netlink", netlink));
        assert!(left.is_empty(), "{left:#?}");
    }

    /// The targets can fail: an input known to be invalid is refused without a panic, and
    /// the example passes every check.
    #[test]
    fn the_targets_accept_the_example_and_refuse_quietly() {
        let example = std::fs::read(repo().join("examples/nginx/nginx.yaml")).expect("example");
        manifest(&example, "nginx.yaml");
        manifest(b"kind: [", "bad.yaml");
        config_file(b"apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nmode: nftables\n");
        for seed in fuzz::seeds_from(&[&repo().join("tests/fuzz/netlink")]) {
            netlink(&seed);
        }
        netlink(b"");
        // Found by this target: an error code of i32::MIN (negated, it overflowed), and a
        // family reply whose policy attribute is shorter than its header (netlink-packet-generic
        // panics on it; the reply is read from its raw attributes instead).
        let errno_min =
            std::fs::read(repo().join("tests/fuzz/netlink/regression-errno-i32-min.bin"))
                .expect("seed");
        assert!(matches!(
            rudder_ipvs::reply::decode(&errno_min).as_deref(),
            Ok([f]) if matches!(f.reply, rudder_ipvs::reply::Reply::Error(e) if e.errno == i32::MAX)
        ));
    }
}
