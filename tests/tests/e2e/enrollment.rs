//! Test 5: enrolling and unenrolling a running pod through the config file.

use std::net::IpAddr;

use ambit_tests::require_root;
use ambit_tests::sample::{echo_connect, echo_roundtrip, exchange};
use ambit_tests::topology::{APP_PORT, Standard};
use mesh::config::{DATAPLANE_MODE_AMBIENT, DATAPLANE_MODE_LABEL};

use crate::support::{access_log, opened, wait_capture_version};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrollment_changes_apply_to_new_connections_only() {
    require_root();
    let mut bed = Standard::start().await.unwrap();
    let dst = bed.cluster.pod("n2-a").addr(APP_PORT);
    let pod_ip = IpAddr::V4(bed.cluster.pod("n1-plain").ip);

    // A direct connection, opened before enrollment.
    let (hello, mut direct) = echo_connect(&bed.cluster.pod("n1-plain").netns, "n1-plain", dst).await.unwrap();
    assert_eq!(hello.peer.ip(), pod_ip);
    echo_roundtrip(&mut direct, b"before").await.unwrap();

    bed.cluster.set_pod_label("n1-plain", DATAPLANE_MODE_LABEL, Some(DATAPLANE_MODE_AMBIENT));
    bed.cluster.write_config().unwrap();
    wait_capture_version(&bed.cluster, 0, 2).await;

    echo_roundtrip(&mut direct, b"still works after enrolling").await.unwrap();
    let pod = bed.cluster.pod("n1-plain");
    let done = exchange(&pod.netns, &pod.name, dst, 4096, 4096).await.unwrap();
    assert_eq!(done.hello.peer.ip(), pod_ip);
    access_log(&bed.cluster, 0, pod_ip, &dst.to_string()).await;

    // A captured connection, opened while enrolled, survives unenrollment.
    let (_, mut captured) = echo_connect(&pod.netns, "n1-plain", dst).await.unwrap();
    echo_roundtrip(&mut captured, b"captured").await.unwrap();

    bed.cluster.set_pod_label("n1-plain", DATAPLANE_MODE_LABEL, None);
    bed.cluster.write_config().unwrap();
    wait_capture_version(&bed.cluster, 0, 3).await;

    echo_roundtrip(&mut captured, b"still works after unenrolling").await.unwrap();
    echo_roundtrip(&mut direct, b"and so does the direct one").await.unwrap();
    let before = opened(&bed.cluster, 0).await;
    let pod = bed.cluster.pod("n1-plain");
    exchange(&pod.netns, &pod.name, dst, 4096, 4096).await.unwrap();
    assert_eq!(opened(&bed.cluster, 0).await, before, "new connections must go direct again");
}
