//! SystemdCgroup: the runtime gets `--systemd-cgroup` and the bundle's `slice:prefix:name`
//! cgroupsPath is passed through untouched. systemd is not PID 1 on the test machine, so runc
//! cannot reach it: what is checked is that Create then fails with runc's systemd error (not a
//! cgroupfs path error), leaves nothing, and that the same bundle works with the cgroupfs
//! driver once the option is off.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use containerd_shim_protos::api;
use containerd_shim_protos::shim::oci::Options;
use protobuf::Message;
use shim_tests::req::{delete as delete_req, kill as kill_req, start as start_req, wait as wait_req};
use shim_tests::*;
use ttrpc::Code;

fn systemd_is_init() -> bool {
    std::fs::read_to_string("/proc/1/comm").is_ok_and(|c| c.trim() == "systemd")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_cgroup_reaches_runc_with_the_slice_path() {
    let env = TestEnv::new().await;
    let id = "sd-cgroup";
    let bundle = env.bundle(id, &["sleep", "1000"], &[]);
    let cfg_path = bundle.join("config.json");
    let mut cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(&cfg_path).unwrap()).unwrap();
    let slice_path = format!("system.slice:shimtest:{id}");
    cfg["linux"]["cgroupsPath"] = serde_json::Value::String(slice_path.clone());
    std::fs::write(&cfg_path, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
    let config_before = std::fs::read(&cfg_path).unwrap();
    let shim = env.start_shim(id, &bundle).await;

    let mut req = env.create_request(id, &bundle);
    let mut o = Options::parse_from_bytes(&req.options.value).unwrap();
    o.systemd_cgroup = true;
    req.options.as_mut().unwrap().value = o.write_to_bytes().unwrap();
    let r = shim.client.create(ctx(), &req).await;
    // The shim never rewrites the spec: the slice path reaches runc as given.
    assert_eq!(std::fs::read(&cfg_path).unwrap(), config_before);
    let options_json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bundle.join("options.json")).unwrap()).unwrap();
    assert_eq!(options_json["systemd_cgroup"], true, "recorded for `delete`: {options_json}");
    if systemd_is_init() {
        // With systemd, the container lands in <slice>/<prefix>-<name>.scope.
        let created = r.unwrap();
        let cg = std::fs::read_to_string(format!("/proc/{}/cgroup", created.pid)).unwrap();
        assert!(cg.contains(&format!("system.slice/shimtest-{id}.scope")), "{cg}");
        shim.client.kill(ctx(), &kill_req(id, "", 9)).await.unwrap();
        shim.client.wait(ctx(), &wait_req(id, "")).await.unwrap();
        shim.client.delete(ctx(), &delete_req(id, "")).await.unwrap();
    } else {
        let e = r.unwrap_err();
        assert_eq!(code_of(&e), Code::UNKNOWN, "{e:?}");
        let msg = format!("{e:?}").to_lowercase();
        assert!(msg.contains("oci runtime create failed"), "{msg}");
        // runc's systemd driver failed (dbus/systemd), not a cgroupfs path parse.
        assert!(msg.contains("systemd") || msg.contains("dbus"), "{msg}");
        assert!(!env.runc_root().join(NAMESPACE).join(id).exists(), "runc state left");
        assert!(mounts_under(&bundle).is_empty(), "rootfs still mounted");
    }
    // With the option off (cgroupfs driver) and a plain path, the same id and bundle work.
    cfg["linux"]["cgroupsPath"] = serde_json::Value::String(format!("/shimtest-{id}"));
    std::fs::write(&cfg_path, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
    let created = shim.client.create(ctx(), &env.create_request(id, &bundle)).await.unwrap();
    shim.client.start(ctx(), &start_req(id, "")).await.unwrap();
    let cg = std::fs::read_to_string(format!("/proc/{}/cgroup", created.pid)).unwrap();
    assert!(cg.contains(&format!(":pids:/shimtest-{id}")), "{cg}");
    shim.client.kill(ctx(), &kill_req(id, "", 9)).await.unwrap();
    assert_eq!(shim.client.wait(ctx(), &wait_req(id, "")).await.unwrap().exit_status, 137);
    shim.client.delete(ctx(), &delete_req(id, "")).await.unwrap();
    assert!(!std::path::Path::new(&format!("/sys/fs/cgroup/pids/shimtest-{id}")).exists(), "cgroup left");
    let _ = shim.client.shutdown(ctx(), &api::ShutdownRequest::new()).await;
}
