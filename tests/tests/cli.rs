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

/// Runs `shim start` for `id` as containerd would, with `stdin` on its stdin.
fn start_with_stdin(env: &TestEnv, bundle: &std::path::Path, id: &str, stdin: &[u8]) -> std::process::Output {
    let mut child = env
        .shim_command(bundle, id, "start")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

/// Connects to a started daemon and records it (and the container id) for cleanup.
async fn adopt(env: &TestEnv, bundle: &std::path::Path, id: &str, address: &str) -> u32 {
    let client = connect(address).await;
    let pid = client.connect(ctx(), &containerd_shim_protos::api::ConnectRequest::new()).await.unwrap().shim_pid;
    env.track_shim(pid, std::path::Path::new(address.trim_start_matches("unix://")));
    env.track_container(id, bundle);
    pid
}

/// The runc options as containerd sends them (an Any).
fn options_any(env: &TestEnv, shim_cgroup: &str) -> protobuf::well_known_types::any::Any {
    let mut any = env.options();
    let mut o = containerd_shim_protos::shim::oci::Options::parse_from_bytes(&any.value).unwrap();
    o.shim_cgroup = shim_cgroup.into();
    any.value = o.write_to_bytes().unwrap();
    any
}

/// `BootstrapParams` as containerd 2.3 marshals them for instance `cli-boot` in namespace
/// `shimtest` (fields 1–7: id, namespace, log level DEBUG, version, ttrpc and grpc addresses,
/// binary). Proto fields concatenate, so tests append extensions (8) and socket_dir (9).
const RECORDED_PARAMS: [&str; 3] = [
    "0a08636c692d626f6f7412087368696d7465737418fcffffffffffffffff01220676322e332e302a2c756e69783a2f2f",
    "2f72756e2f636f6e7461696e6572642f636f6e7461696e6572642e736f636b2e7474727063321f2f72756e2f636f6e74",
    "61696e6572642f636f6e7461696e6572642e736f636b3a132f7573722f62696e2f636f6e7461696e657264",
];

fn bootstrap_params(options: &protobuf::well_known_types::any::Any, socket_dir: &std::path::Path) -> Vec<u8> {
    let hex = RECORDED_PARAMS.concat();
    let mut out: Vec<u8> = (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect();
    let mut ext = Vec::new();
    let mut os = protobuf::CodedOutputStream::vec(&mut ext);
    os.write_bytes(1, &options.write_to_bytes().unwrap()).unwrap();
    os.flush().unwrap();
    drop(os);
    let mut os = protobuf::CodedOutputStream::vec(&mut out);
    os.write_bytes(8, &ext).unwrap();
    os.write_string(9, socket_dir.to_str().unwrap()).unwrap();
    os.flush().unwrap();
    drop(os);
    out
}

/// Decodes `BootstrapResult{version = 1, address = 2, protocol = 3}`.
fn parse_result(bytes: &[u8]) -> (i32, String, String) {
    let mut is = protobuf::CodedInputStream::from_bytes(bytes);
    let (mut version, mut address, mut protocol) = (0, String::new(), String::new());
    while let Some(tag) = is.read_raw_tag_or_eof().unwrap() {
        match tag {
            0x08 => version = is.read_int32().unwrap(),
            0x12 => address = is.read_string().unwrap(),
            0x1a => protocol = is.read_string().unwrap(),
            t => panic!("unexpected tag {t:#x} in {bytes:?}"),
        }
    }
    (version, address, protocol)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_speaks_the_bootstrap_protocol_of_containerd_2_3() {
    let env = TestEnv::new().await;
    let id = "cli-boot";
    let bundle = env.bundle(id, &["true"], &[]);
    let socket_dir = env.dir.join("s");
    // SHIM_BOOTSTRAP_FORMAT=plain (set by shim_command) only overrides the legacy detection.
    let out = start_with_stdin(&env, &bundle, id, &bootstrap_params(&options_any(&env, ""), &socket_dir));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (version, address, protocol) = parse_result(&out.stdout);
    assert_eq!((version, protocol.as_str()), (3, "ttrpc"));
    let prefix = format!("unix://{}/", socket_dir.display());
    assert!(address.starts_with(&prefix), "{address} in socket_dir");
    assert_eq!(std::fs::read_to_string(bundle.join("address")).unwrap(), address);
    let pid = adopt(&env, &bundle, id, &address).await;
    let client = connect(&address).await;
    let _ = client.shutdown(ctx(), &containerd_shim_protos::api::ShutdownRequest::new()).await;
    for _ in 0..250 {
        if !alive(pid) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(!alive(pid));
    assert!(!std::path::Path::new(address.trim_start_matches("unix://")).exists(), "socket removed");

    // Params for another instance are not bootstrap params: the input is the legacy options Any
    // (which fails to decode, so defaults) and the reply is the legacy (here: plain) address.
    let other = "cli-boot-other";
    let bundle2 = env.bundle(other, &["true"], &[]);
    let out = start_with_stdin(&env, &bundle2, other, &bootstrap_params(&options_any(&env, ""), &socket_dir));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let address = String::from_utf8(out.stdout).unwrap();
    assert!(address.starts_with("unix:///run/containerd/s/"), "{address:?}");
    adopt(&env, &bundle2, other, &address).await;
}

/// Issue 15 item 12: as containerd 2.3's shims do, `start` records a BootstrapParams
/// `socket_dir` as the bundle's `s` symlink, and `delete` after a SIGKILLed daemon removes the
/// dead socket in that directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_after_sigkill_cleans_the_socket_under_socket_dir() {
    let env = TestEnv::new().await;
    let id = "cli-boot";
    let bundle = env.bundle(id, &["true"], &[]);
    let socket_dir = env.dir.join("sockets");
    let out = start_with_stdin(&env, &bundle, id, &bootstrap_params(&options_any(&env, ""), &socket_dir));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (_, address, _) = parse_result(&out.stdout);
    let socket = std::path::PathBuf::from(address.trim_start_matches("unix://"));
    assert_eq!(socket.parent(), Some(socket_dir.as_path()));
    assert_eq!(std::fs::read_link(bundle.join("s")).ok(), Some(socket_dir.clone()), "the s link");
    let pid = adopt(&env, &bundle, id, &address).await;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid.cast_signed()), nix::sys::signal::Signal::SIGKILL).unwrap();
    for _ in 0..250 {
        if !alive(pid) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(!alive(pid));
    assert!(socket.exists(), "a SIGKILLed daemon leaves its socket");
    let out = env.shim_command(&bundle, id, "delete").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!socket.exists(), "delete left the dead socket {}", socket.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_probes_each_containerd_binary_once() {
    let env = TestEnv::new().await;
    let fake = env.dir.join("containerd");
    std::fs::copy(env!("CARGO_BIN_EXE_fake-containerd"), &fake).unwrap();
    let probes = env.dir.join("probes");
    let count = || std::fs::read_to_string(&probes).map(|s| s.lines().count()).unwrap_or(0);
    let start = |id: &str, version: &str| {
        let bundle = env.bundle(id, &["true"], &[]);
        let shim = env.shim_command(&bundle, id, "start");
        let out = Command::new(&fake)
            .arg(shim_binary())
            .args(shim.get_args())
            .current_dir(&bundle)
            .env("TTRPC_ADDRESS", env.dir.join("events.sock"))
            .env("SHIM_BOOTSTRAP_CACHE_DIR", env.dir.join("version-cache"))
            .env("FAKE_CONTAINERD_VERSION", version)
            .env("FAKE_CONTAINERD_PROBES", &probes)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        (bundle, String::from_utf8(out.stdout).unwrap())
    };
    let json_address = |line: &str| -> String {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
        assert_eq!(v["version"], 3);
        v["address"].as_str().unwrap().to_owned()
    };
    let (b, line) = start("cli-probe-a", "v2.1.5");
    adopt(&env, &b, "cli-probe-a", &json_address(&line)).await;
    assert_eq!(count(), 1);
    // Same binary: the cached answer, no second probe (a probe would now say 1.x).
    let (b, line) = start("cli-probe-b", "1.7.0");
    adopt(&env, &b, "cli-probe-b", &json_address(&line)).await;
    assert_eq!(count(), 1);
    // A changed binary (containerd upgraded or downgraded in place) is probed again.
    std::fs::OpenOptions::new().append(true).open(&fake).unwrap().write_all(b"\0").unwrap();
    let (b, line) = start("cli-probe-c", "1.7.0");
    assert!(line.starts_with("unix:///run/containerd/s/"), "plain address for 1.x: {line:?}");
    adopt(&env, &b, "cli-probe-c", &line).await;
    assert_eq!(count(), 2);
}

/// A v1 cgroup made for a test, removed (after its members are gone) on drop.
struct TestCgroup(std::path::PathBuf);

impl Drop for TestCgroup {
    fn drop(&mut self) {
        for _ in 0..250 {
            if std::fs::remove_dir(&self.0).is_ok() || !self.0.exists() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        // A second panic while unwinding would abort the test binary.
        if std::thread::panicking() {
            eprintln!("cgroup {} left behind", self.0.display());
        } else {
            panic!("cgroup {} left behind", self.0.display());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_moves_the_daemon_into_shim_cgroup() {
    let name = format!("shimtest-shimcg-{}", std::process::id());
    // Declared before the env, so it is dropped after the env killed the daemon.
    let cg = TestCgroup(std::path::Path::new("/sys/fs/cgroup/pids").join(&name));
    std::fs::create_dir(&cg.0).unwrap();
    let env = TestEnv::new().await;
    let id = "cli-shimcg";
    let bundle = env.bundle(id, &["true"], &[]);
    let out = start_with_stdin(&env, &bundle, id, &options_any(&env, &format!("/{name}")).write_to_bytes().unwrap());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let address = String::from_utf8(out.stdout).unwrap();
    let pid = adopt(&env, &bundle, id, &address).await;
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(cgroups.lines().any(|l| l.ends_with(&format!(":pids:/{name}"))), "{cgroups}");
    let members = std::fs::read_to_string(cg.0.join("cgroup.procs")).unwrap();
    assert!(members.lines().any(|l| l == pid.to_string()), "{members}");

    // A cgroup that does not exist fails start (options here come as a 2.3 bootstrap
    // extension), and nothing is left: no daemon, no socket.
    let socket_dir = env.dir.join("s");
    let bad = "cli-boot";
    let bundle = env.bundle(bad, &["true"], &[]);
    let out =
        start_with_stdin(&env, &bundle, bad, &bootstrap_params(&options_any(&env, "/no-such-shimcg"), &socket_dir));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "start with a missing shim cgroup: {:?} {err}", out.stdout);
    assert!(err.contains("no-such-shimcg"), "{err}");
    assert!(out.stdout.is_empty());
    assert_eq!(std::fs::read_dir(&socket_dir).unwrap().count(), 0, "socket removed");
    for p in std::fs::read_dir("/proc").unwrap().filter_map(|e| e.unwrap().file_name().to_str()?.parse::<u32>().ok()) {
        if std::fs::read_link(format!("/proc/{p}/cwd")).is_ok_and(|c| c == bundle) {
            assert!(!alive(p), "daemon {p} left running");
        }
    }
}
