//! Stats through the built binary over ttrpc, with real runc and the host's cgroups (issue 16):
//! the files Stats keeps open are a fixed set per container, re-read on every call, and closed
//! with the container.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use containerd_shim_protos::api;
use containerd_shim_protos::cgroups::metrics as v1;
use containerd_shim_protos::cgroups_v2::metrics as v2;
use protobuf::Message;
use shim_tests::req::id_req;
use shim_tests::*;

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
}

/// The cgroup CPU usage a Stats reply carries (ns for v1, µs for v2).
fn cpu_usage(r: &api::StatsResponse) -> u64 {
    match r.stats.type_url.as_str() {
        "io.containerd.cgroups.v1.Metrics" => v1::Metrics::parse_from_bytes(&r.stats.value).unwrap().cpu.usage.total,
        "io.containerd.cgroups.v2.Metrics" => v2::Metrics::parse_from_bytes(&r.stats.value).unwrap().cpu.usage_usec,
        other => panic!("unexpected metrics type {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_keep_a_fixed_set_of_files_open_until_the_container_goes() {
    let env = TestEnv::new().await;
    let bundle = env.bundle("st1", &["sh", "-c", "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; sleep 1000"], &[]);
    let shim = env.start_shim("st1", &bundle).await;
    shim.client.create(ctx(), &env.create_request("st1", &bundle)).await.unwrap();
    shim.client.start(ctx(), &req::start("st1", "")).await.unwrap();
    let before = fds(shim.pid);
    let stats = id_req(|r: &mut api::StatsRequest| r.id = "st1".into());

    let first = shim.client.stats(ctx(), &stats).await.unwrap();
    let opened = fds(shim.pid);
    assert!(opened > before, "Stats opened no cgroup file ({before} fds before and after)");
    let mut last = cpu_usage(&first);
    for _ in 0..300 {
        let r = shim.client.stats(ctx(), &stats).await.unwrap();
        let usage = cpu_usage(&r);
        assert!(usage >= last, "cpu usage went back: {last} -> {usage}");
        last = usage;
        assert_eq!(fds(shim.pid), opened, "Stats opened files again");
    }

    shim.client.kill(ctx(), &req::kill("st1", "", 9)).await.unwrap();
    shim.client.wait(ctx(), &req::wait("st1", "")).await.unwrap();
    shim.client.delete(ctx(), &req::delete("st1", "")).await.unwrap();
    let after = fds(shim.pid);
    assert!(after <= before, "the deleted container's cgroup files are still open: {after} > {before}");
}
