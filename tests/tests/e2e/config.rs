//! Test 8: bad config files get a clear error naming the problem; a
//! running agent keeps its last good config.

use std::net::IpAddr;
use std::time::Duration;

use ambit_tests::cluster::Cluster;
use ambit_tests::require_root;
use ambit_tests::sample::exchange;
use ambit_tests::topology::{APP_PORT, Standard};
use ambit_tests::ztunnel::Ztunnel;

use crate::support::{WAIT, access_log};

/// Each bad file, and a fragment its error message must contain.
fn bad_configs(good: &str) -> Vec<(&'static str, String, &'static str)> {
    let first_ip = "10.1.0.2";
    let second_ip = "10.1.0.3";
    vec![
        ("syntax error", format!("{good}\n  - [unclosed\n"), "invalid config"),
        ("unknown field", good.replacen("serviceAccount:", "serviceAcount:", 1), "unknown field `serviceAcount`"),
        (
            "duplicate IP",
            good.replacen(&format!("- {second_ip}"), &format!("- {first_ip}"), 1),
            "duplicate IP \"10.1.0.2\"",
        ),
    ]
}

/// A config with two pods whose only difference is the IP, as the
/// duplicate-IP case needs.
fn two_pod_cluster() -> Cluster {
    use ambit_tests::cluster::PodSpec;
    let mut cluster = Cluster::new(1, false).unwrap();
    for name in ["first", "second"] {
        cluster.add_pod(0, PodSpec { name: name.into(), namespace: "ns".into(), ..Default::default() }).unwrap();
    }
    cluster
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_config_at_start_is_a_clear_error() {
    require_root();
    let cluster = two_pod_cluster();
    let good = cluster.config().to_yaml().unwrap();
    for (case, text, expected) in bad_configs(&good) {
        assert_ne!(text, good, "{case}: the test did not break the config");
        cluster.write_config_text(&text).unwrap();
        let mut ztunnel = Ztunnel::spawn(&cluster.nodes[0].netns, &cluster.launch(0)).unwrap();
        let status = ztunnel.wait_exit(Duration::from_secs(20)).await.unwrap();
        assert!(!status.success(), "{case}: ztunnel started on a bad config");
        let log = ztunnel.log_lines().join("\n");
        assert!(log.contains(expected), "{case}: error should mention {expected:?}; log:\n{log}");
        assert!(log.contains("mesh.yaml"), "{case}: error should name the file; log:\n{log}");
    }
}

/// Run by hand as a newcomer would: with a CA key that is not the CA
/// certificate's, the agent refuses to start and says which flags disagree
/// (instead of reporting ready and failing every handshake later); its
/// plain log lines carry no colour codes into a pipe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_key_that_is_not_the_certificates_is_refused_in_plain_words() {
    require_root();
    let cluster = two_pod_cluster();
    cluster.write_config().unwrap();
    let mut launch = cluster.launch(0);
    let dir = tempfile::tempdir().unwrap();
    let other_key = dir.path().join("other.key");
    let other = mesh::ca::CertificateAuthority::generate("cluster.local").unwrap();
    std::fs::write(&other_key, other.key_pem()).unwrap();
    launch.source = ambit_tests::ztunnel::Source::File { config: cluster.config_path(), ca_key: other_key };
    launch.extra_args = vec!["--log-format".into(), "plain".into()];
    let mut ztunnel = Ztunnel::spawn(&cluster.nodes[0].netns, &launch).unwrap();
    let status = ztunnel.wait_exit(Duration::from_secs(20)).await.unwrap();
    assert!(!status.success(), "ztunnel started with a CA key of another CA");
    let log = ztunnel.log_lines().join("\n");
    assert!(log.contains("not a pair") && log.contains("--ca-key"), "the error must say what is wrong: {log}");
    assert!(!log.contains('\x1b'), "colour codes in piped plain logs: {log:?}");
    assert!(!log.contains("ready"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_agent_keeps_last_good_config() {
    require_root();
    let bed = Standard::start().await.unwrap();
    let good = bed.cluster.config().to_yaml().unwrap();
    let pods = &bed.cluster.pods;
    let dup = good.replacen(&format!("- {}", pods[1].ip), &format!("- {}", pods[0].ip), 1);
    let cases = [
        ("syntax error", format!("{good}\n  - [unclosed\n"), "invalid config"),
        ("unknown field", good.replacen("serviceAccount:", "serviceAcount:", 1), "unknown field `serviceAcount`"),
        ("duplicate IP", dup, "duplicate IP"),
    ];
    for (round, (case, text, expected)) in cases.into_iter().enumerate() {
        assert_ne!(text, good, "{case}: the test did not break the config");
        bed.cluster.write_config_text(&text).unwrap();
        for node in 0..2 {
            bed.cluster
                .ztunnel(node)
                .wait_for_log(&format!("rejection #{}", round + 1), WAIT, |_| rejections(&bed, node) > round)
                .await
                .unwrap();
            let last = last_rejection(&bed, node);
            assert!(last.contains(expected), "{case}: {last}");
            assert_eq!(last_kept_version(&bed, node), 1, "{case}");
        }
        // The good config is still in force: enrolled traffic is captured.
        let client = bed.cluster.pod("n1-a");
        let dst = bed.cluster.pod("n2-b").addr(APP_PORT);
        let done = exchange(&client.netns, &client.name, dst, 1024, 1024).await.unwrap();
        assert_eq!(done.hello.peer.ip(), IpAddr::V4(client.ip));
        access_log(&bed.cluster, 0, IpAddr::V4(client.ip), &dst.to_string()).await;
    }
    let dump = crate::support::config_dump(&bed.cluster, 0).await;
    assert_eq!(dump["version"], 1);
    assert_eq!(dump["config"]["workloads"].as_array().unwrap().len(), 6);
}

fn rejection_records(bed: &Standard, node: usize) -> Vec<serde_json::Value> {
    bed.cluster
        .ztunnel(node)
        .log_records()
        .into_iter()
        .filter(|r| r["message"] == "config rejected; keeping the last good config")
        .collect()
}

fn rejections(bed: &Standard, node: usize) -> usize {
    rejection_records(bed, node).len()
}

fn last_rejection(bed: &Standard, node: usize) -> String {
    rejection_records(bed, node).last().map(|r| r["error"].to_string()).unwrap_or_default()
}

fn last_kept_version(bed: &Standard, node: usize) -> u64 {
    rejection_records(bed, node).last().and_then(|r| r["kept_version"].as_u64()).unwrap_or(0)
}

/// A tunnel that outlives several config versions must not keep them in
/// memory: each agent holds one version, whatever its connections do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_connections_do_not_pin_old_config_versions() {
    require_root();
    let mut bed = Standard::start().await.unwrap();
    let (client, server) = (bed.cluster.pod("n1-a"), bed.cluster.pod("n2-a"));
    let stream = client.netns.connect(server.addr(APP_PORT)).await.unwrap();
    let (_, mut tunnel) = ambit_tests::sample::echo_on(stream, "long-lived").await.unwrap();
    ambit_tests::sample::echo_roundtrip(&mut tunnel, b"before").await.unwrap();
    for round in 0..3 {
        bed.apply(|config| {
            config.workloads[0].labels.insert("round".into(), round.to_string());
        })
        .await
        .unwrap();
    }
    for node in 0..2 {
        crate::support::wait_for_metric(&bed.cluster, node, "ambit_config_versions_held", &[], |held| held == 1.0)
            .await;
    }
    // The tunnel is still the same working connection.
    ambit_tests::sample::echo_roundtrip(&mut tunnel, b"after").await.unwrap();
}
