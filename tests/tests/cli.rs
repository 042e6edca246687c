//! The binary's command-line protocol (SPEC §1): -v, -info, start's output formats, bad flags.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::process::{Command, Stdio};

use containerd_shim_protos::types::introspection::RuntimeInfo;
use protobuf::Message;
use shim_tests::*;

#[test]
fn version_and_bad_flags() {
    let out = Command::new(shim_binary()).arg("-v").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("containerd-shim-runc-v2:\n  Version:  "), "{text:?}");
    assert!(text.contains("Revision:"));
    let out = Command::new(shim_binary()).args(["-bogus", "x"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("-bogus"));
    // start without a namespace fails with the Go shim's message, and prints nothing on stdout.
    let out = Command::new(shim_binary()).args(["-id", "x", "start"]).stdin(Stdio::null()).output().unwrap();
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("namespace cannot be empty"));
}

#[test]
fn info_reports_runtime_and_features() {
    let env_any = {
        let mut o = containerd_shim_protos::shim::oci::Options::new();
        o.binary_name = "runc".into();
        let mut any = protobuf::well_known_types::any::Any::new();
        any.type_url = "containerd.runc.v1.Options".into();
        any.value = o.write_to_bytes().unwrap();
        any
    };
    let mut child =
        Command::new(shim_binary()).arg("-info").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(&env_any.write_to_bytes().unwrap()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let info = RuntimeInfo::parse_from_bytes(&out.stdout).unwrap();
    assert_eq!(info.name, "io.containerd.runc.v2");
    assert!(!info.version.version.is_empty());
    assert_eq!(info.options.type_url, "containerd.runc.v1.Options");
    let features = info.features.as_ref().expect("runc features");
    assert_eq!(features.type_url, "types.containerd.io/opencontainers/runtime-spec/1/features/Features");
    let json: serde_json::Value = serde_json::from_slice(&features.value).unwrap();
    assert!(json.get("ociVersionMin").is_some(), "{json}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_prints_v3_json_for_containerd_2() {
    let env = TestEnv::new().await;
    let id = "cli-json";
    let bundle = env.bundle(id, &["true"], &[]);
    let mut cmd = env.shim_command(&bundle, id, "start");
    cmd.env("SHIM_BOOTSTRAP_FORMAT", "json");
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["version"], 3);
    assert_eq!(v["protocol"], "ttrpc");
    let address = v["address"].as_str().unwrap().to_owned();
    assert!(address.starts_with("unix:///run/containerd/s/"));
    // The `address` file is written for 1.x-style reconnects too.
    assert_eq!(std::fs::read_to_string(bundle.join("address")).unwrap(), address);
    // The daemon answers both task API versions.
    let client = connect(&address).await;
    let resp = client.connect(ctx(), &containerd_shim_protos::api::ConnectRequest::new()).await.unwrap();
    env.track_container(id, &bundle);
    let raw = ttrpc::asynchronous::Client::connect(&address).await.unwrap();
    let mut req = ttrpc::Request::new();
    req.service = "containerd.task.v2.Task".into();
    req.method = "Connect".into();
    req.payload = containerd_shim_protos::api::ConnectRequest::new().write_to_bytes().unwrap();
    let v2 = raw.request(req).await.unwrap();
    let v2: containerd_shim_protos::api::ConnectResponse = Message::parse_from_bytes(&v2.payload).unwrap();
    assert_eq!(v2.shim_pid, resp.shim_pid);
    let _ = client.shutdown(ctx(), &containerd_shim_protos::api::ShutdownRequest::new()).await;
    for _ in 0..100 {
        if !alive(resp.shim_pid) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(!alive(resp.shim_pid), "shim without containers exits on Shutdown");
}
