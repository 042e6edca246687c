//! Hostile and malformed requests (issue 9 item 4): every task RPC with bad, unknown, duplicate
//! or nonsensical fields answers the right ttrpc code, raw-socket abuse (undecodable payloads,
//! oversized or truncated frames, garbage, connection floods) leaves the shim serving, and a
//! valid container in the same shim is unharmed throughout.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use containerd_shim_protos::api;
use containerd_shim_protos::shim_async::TaskClient;
use containerd_shim_protos::types::task::Status;
use protobuf::well_known_types::any::Any;
use protobuf::Message;
use shim_tests::req::{delete, exec, kill, resize, start, state, wait};
use shim_tests::*;
use ttrpc::Code;

/// Bound on any single call: a hang is a failure, not a stuck test.
const CALL_LIMIT: Duration = Duration::from_secs(15);
const VALID: &str = "hostile-valid";

/// Ids containerd's identifier rule refuses (`^[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*$`, ≤ 76).
fn bad_ids() -> Vec<String> {
    let mut v: Vec<String> = [
        "", "a/b", "/abs", "..", "../x", "x/../y", "a..b", "-a", "a-", ".a", "a b", "a\0b", "héllo", "日本", "a\nb",
        "a:b", "a%2fb", "*",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    v.push("x".repeat(77));
    v.push("a".repeat(4096));
    v
}

/// Every task RPC, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rpc {
    Create,
    Start,
    Delete,
    Exec,
    State,
    Pids,
    Pause,
    Resume,
    Kill,
    ResizePty,
    CloseIo,
    Update,
    Wait,
    Stats,
    Connect,
    Shutdown,
    Checkpoint,
}

const ALL: [Rpc; 17] = [
    Rpc::Create,
    Rpc::Start,
    Rpc::Delete,
    Rpc::Exec,
    Rpc::State,
    Rpc::Pids,
    Rpc::Pause,
    Rpc::Resume,
    Rpc::Kill,
    Rpc::ResizePty,
    Rpc::CloseIo,
    Rpc::Update,
    Rpc::Wait,
    Rpc::Stats,
    Rpc::Connect,
    Rpc::Shutdown,
    Rpc::Checkpoint,
];

/// The RPCs that carry an exec id.
const WITH_EXEC_ID: [Rpc; 8] =
    [Rpc::Start, Rpc::Delete, Rpc::Exec, Rpc::State, Rpc::Kill, Rpc::ResizePty, Rpc::CloseIo, Rpc::Wait];

fn resources_any(value: &[u8]) -> Any {
    let mut a = Any::new();
    a.type_url = "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources".into();
    a.value = value.to_vec();
    a
}

/// Sends `rpc` for `id`/`exec_id` with otherwise well-formed fields; Wait gets a short
/// deadline (it legitimately blocks on a live process).
async fn call(env: &TestEnv, client: &TaskClient, rpc: Rpc, id: &str, exec_id: &str) -> ttrpc::Result<()> {
    let c = ctx();
    let fut = async {
        match rpc {
            Rpc::Create => {
                let bundle = env.dir.join("bundles").join(VALID);
                client.create(c, &env.create_request(id, &bundle)).await.map(drop)
            }
            Rpc::Start => client.start(c, &start(id, exec_id)).await.map(drop),
            Rpc::Delete => client.delete(c, &delete(id, exec_id)).await.map(drop),
            Rpc::Exec => client.exec(c, &exec(id, exec_id, &["true"])).await.map(drop),
            Rpc::State => client.state(c, &state(id, exec_id)).await.map(drop),
            Rpc::Pids => {
                let mut r = api::PidsRequest::new();
                r.id = id.into();
                client.pids(c, &r).await.map(drop)
            }
            Rpc::Pause => {
                let mut r = api::PauseRequest::new();
                r.id = id.into();
                client.pause(c, &r).await.map(drop)
            }
            Rpc::Resume => {
                let mut r = api::ResumeRequest::new();
                r.id = id.into();
                client.resume(c, &r).await.map(drop)
            }
            Rpc::Kill => client.kill(c, &kill(id, exec_id, 9)).await.map(drop),
            Rpc::ResizePty => client.resize_pty(c, &resize(id, exec_id, 80, 24)).await.map(drop),
            Rpc::CloseIo => {
                let mut r = api::CloseIORequest::new();
                r.id = id.into();
                r.exec_id = exec_id.into();
                r.stdin = true;
                client.close_io(c, &r).await.map(drop)
            }
            Rpc::Update => {
                let mut r = api::UpdateTaskRequest::new();
                r.id = id.into();
                r.resources = protobuf::MessageField::some(resources_any(b"{}"));
                client.update(c, &r).await.map(drop)
            }
            Rpc::Wait => {
                let mut wc = ctx();
                wc.timeout_nano = 300_000_000;
                client.wait(wc, &wait(id, exec_id)).await.map(drop)
            }
            Rpc::Stats => {
                let mut r = api::StatsRequest::new();
                r.id = id.into();
                client.stats(c, &r).await.map(drop)
            }
            Rpc::Connect => {
                let mut r = api::ConnectRequest::new();
                r.id = id.into();
                client.connect(c, &r).await.map(drop)
            }
            Rpc::Shutdown => {
                let mut r = api::ShutdownRequest::new();
                r.id = id.into();
                client.shutdown(c, &r).await.map(drop)
            }
            Rpc::Checkpoint => {
                let mut r = api::CheckpointTaskRequest::new();
                r.id = id.into();
                r.path = env.dir.join("checkpoint").display().to_string();
                client.checkpoint(c, &r).await.map(drop)
            }
        }
    };
    tokio::time::timeout(CALL_LIMIT, fut).await.unwrap_or_else(|_| panic!("{rpc:?} {id:?}/{exec_id:?} hung"))
}

/// A shim with one running container [`VALID`].
async fn live(env: &TestEnv) -> Shim {
    let bundle = env.bundle(VALID, &["sleep", "1000"], &[]);
    let shim = env.start_shim(VALID, &bundle).await;
    shim.client.create(ctx(), &env.create_request(VALID, &bundle)).await.unwrap();
    shim.client.start(ctx(), &start(VALID, "")).await.unwrap();
    shim
}

/// The valid container is still running and still runs an exec, through a fresh connection.
async fn assert_unharmed(shim: &Shim, tag: &str) {
    assert!(alive(shim.pid), "{tag}: shim died");
    let client = tokio::time::timeout(CALL_LIMIT, connect(&shim.address)).await.expect("connect hung");
    let st = tokio::time::timeout(CALL_LIMIT, client.state(ctx(), &state(VALID, "")))
        .await
        .expect("state hung")
        .unwrap_or_else(|e| panic!("{tag}: state: {e:?}"));
    assert_eq!(st.status.enum_value().unwrap(), Status::RUNNING, "{tag}");
    let exec_id = format!("unharmed-{}", tag.len() + st.pid as usize % 1000);
    let exec_id = exec_id.replace('_', "-");
    client.exec(ctx(), &exec(VALID, &exec_id, &["sh", "-c", "exit 7"])).await.unwrap();
    client.start(ctx(), &start(VALID, &exec_id)).await.unwrap();
    let w = tokio::time::timeout(CALL_LIMIT, client.wait(ctx(), &wait(VALID, &exec_id))).await.expect("wait hung");
    assert_eq!(w.unwrap().exit_status, 7, "{tag}");
    client.delete(ctx(), &delete(VALID, &exec_id)).await.unwrap();
}

async fn teardown(shim: &Shim) {
    let _ = shim.client.kill(ctx(), &kill(VALID, "", 9)).await;
    shim.client.wait(ctx(), &wait(VALID, "")).await.unwrap();
    shim.client.delete(ctx(), &delete(VALID, "")).await.unwrap();
    let _ = shim.client.shutdown(ctx(), &api::ShutdownRequest::new()).await;
    for _ in 0..200 {
        if !alive(shim.pid) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("shim {} did not exit after Shutdown", shim.pid);
}

fn expect_code(r: ttrpc::Result<()>, want: Code, what: &str) {
    match r {
        Ok(()) => panic!("{what}: succeeded, want {want:?}"),
        Err(e) => assert_eq!(code_of(&e), want, "{what}: {e:?}"),
    }
}

/// Directories named `id` anywhere in the first levels of the cgroup hierarchies.
fn cgroups_named(id: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut dirs = vec![(PathBuf::from("/sys/fs/cgroup"), 0)];
    while let Some((d, depth)) = dirs.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            if e.file_name().to_string_lossy() == id {
                found.push(e.path());
            }
            if depth < 3 {
                dirs.push((e.path(), depth + 1));
            }
        }
    }
    found
}

/// Nothing of a failed Create of `id` in `bundle` is left: runc state, mount, cgroup.
fn assert_nothing_left(env: &TestEnv, id: &str, bundle: &Path) {
    assert!(!env.runc_root().join(NAMESPACE).join(id).exists(), "{id}: runc state left");
    assert!(mounts_under(bundle).is_empty(), "{id}: mounts left: {:?}", mounts_under(bundle));
    assert!(cgroups_named(id).is_empty(), "{id}: cgroups left: {:?}", cgroups_named(id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_ids_are_invalid_argument_on_every_rpc() {
    let env = TestEnv::new().await;
    let shim = live(&env).await;
    for bad in bad_ids() {
        for rpc in ALL {
            // Connect and Shutdown accept an empty id (the Go shim ignores it there).
            if bad.is_empty() && matches!(rpc, Rpc::Connect | Rpc::Shutdown) {
                continue;
            }
            let r = call(&env, &shim.client, rpc, &bad, "").await;
            expect_code(r, Code::INVALID_ARGUMENT, &format!("{rpc:?} id {bad:?}"));
        }
        // The same malformed string as an exec id of the valid container; an empty exec id
        // means the init except for Exec.
        for rpc in WITH_EXEC_ID {
            if bad.is_empty() && rpc != Rpc::Exec {
                continue;
            }
            let r = call(&env, &shim.client, rpc, VALID, &bad).await;
            expect_code(r, Code::INVALID_ARGUMENT, &format!("{rpc:?} exec id {bad:?}"));
        }
    }
    assert!(cgroups_named("..").is_empty());
    assert_unharmed(&shim, "bad-ids").await;
    teardown(&shim).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_ids_and_exec_ids_are_not_found() {
    let env = TestEnv::new().await;
    let shim = live(&env).await;
    // Create of an unknown id creates it: covered with broken bundles below.
    for rpc in ALL.into_iter().filter(|r| *r != Rpc::Create) {
        let r = call(&env, &shim.client, rpc, "no-such-container", "").await;
        match rpc {
            // As the Go shim: Connect answers for any id (task_pid 0), Shutdown ignores it.
            Rpc::Connect | Rpc::Shutdown => r.unwrap(),
            _ => expect_code(r, Code::NOT_FOUND, &format!("{rpc:?} unknown id")),
        }
    }
    let mut cr = api::ConnectRequest::new();
    cr.id = "no-such-container".into();
    assert_eq!(shim.client.connect(ctx(), &cr).await.unwrap().task_pid, 0);
    for rpc in WITH_EXEC_ID {
        if rpc == Rpc::Exec {
            continue; // an unknown exec id is a new exec
        }
        let r = call(&env, &shim.client, rpc, VALID, "no-such-exec").await;
        expect_code(r, Code::NOT_FOUND, &format!("{rpc:?} unknown exec id"));
    }
    // A deleted exec is unknown again.
    shim.client.exec(ctx(), &exec(VALID, "gone", &["true"])).await.unwrap();
    shim.client.start(ctx(), &start(VALID, "gone")).await.unwrap();
    shim.client.wait(ctx(), &wait(VALID, "gone")).await.unwrap();
    shim.client.delete(ctx(), &delete(VALID, "gone")).await.unwrap();
    for rpc in WITH_EXEC_ID {
        if rpc != Rpc::Exec {
            expect_code(call(&env, &shim.client, rpc, VALID, "gone").await, Code::NOT_FOUND, &format!("{rpc:?} gone"));
        }
    }
    assert_unharmed(&shim, "unknown-ids").await;
    teardown(&shim).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_wrong_state_and_nonsense_fields() {
    let env = TestEnv::new().await;
    let shim = live(&env).await;
    let c = &shim.client;
    // Duplicates.
    expect_code(call(&env, c, Rpc::Create, VALID, "").await, Code::ALREADY_EXISTS, "duplicate create");
    c.exec(ctx(), &exec(VALID, "dup", &["sleep", "1000"])).await.unwrap();
    expect_code(call(&env, c, Rpc::Exec, VALID, "dup").await, Code::ALREADY_EXISTS, "duplicate exec");
    // Wrong state.
    expect_code(call(&env, c, Rpc::Start, VALID, "").await, Code::FAILED_PRECONDITION, "start running init");
    expect_code(call(&env, c, Rpc::Delete, VALID, "").await, Code::FAILED_PRECONDITION, "delete running init");
    expect_code(call(&env, c, Rpc::Resume, VALID, "").await, Code::FAILED_PRECONDITION, "resume running init");
    c.start(ctx(), &start(VALID, "dup")).await.unwrap();
    expect_code(call(&env, c, Rpc::Start, VALID, "dup").await, Code::FAILED_PRECONDITION, "start twice");
    expect_code(call(&env, c, Rpc::Delete, VALID, "dup").await, Code::FAILED_PRECONDITION, "delete running exec");
    c.kill(ctx(), &kill(VALID, "dup", 9)).await.unwrap();
    assert_eq!(c.wait(ctx(), &wait(VALID, "dup")).await.unwrap().exit_status, 137);
    expect_code(call(&env, c, Rpc::Start, VALID, "dup").await, Code::FAILED_PRECONDITION, "start exited exec");
    c.delete(ctx(), &delete(VALID, "dup")).await.unwrap();

    // Kill: signals out of range.
    for sig in [0, 65, 1000, u32::MAX] {
        let e = c.kill(ctx(), &kill(VALID, "", sig)).await.unwrap_err();
        assert_eq!(code_of(&e), Code::INVALID_ARGUMENT, "signal {sig}");
    }
    // Exec: missing, mistyped, undecodable, empty, oversized specs.
    let mut specs: Vec<Option<Any>> = vec![None];
    let mut typed = |url: &str, value: Vec<u8>| {
        let mut a = Any::new();
        a.type_url = url.into();
        a.value = value;
        specs.push(Some(a));
    };
    let url = "types.containerd.io/opencontainers/runtime-spec/1/Process";
    typed("", b"{\"args\":[\"true\"]}".to_vec());
    typed("bogus/Type", b"{\"args\":[\"true\"]}".to_vec());
    typed(url, Vec::new());
    typed(url, vec![0xff, 0xfe, 0x00]);
    typed(url, b"[1,2,3]".to_vec());
    typed(url, b"{}".to_vec());
    typed(url, b"{\"args\":[]}".to_vec());
    typed(url, b"{\"args\":\"true\"}".to_vec());
    let mut big = b"{\"args\":[\"true\"],\"x\":\"".to_vec();
    big.extend(std::iter::repeat_n(b'a', (1 << 20) + 16));
    big.extend(b"\"}");
    typed(url, big);
    for (i, spec) in specs.into_iter().enumerate() {
        let mut r = exec(VALID, &format!("bad-spec-{i}"), &["true"]);
        r.spec = spec.into();
        let e = c.exec(ctx(), &r).await.unwrap_err();
        assert_eq!(code_of(&e), Code::INVALID_ARGUMENT, "spec {i}: {e:?}");
        let e = c.state(ctx(), &state(VALID, &format!("bad-spec-{i}"))).await.unwrap_err();
        assert_eq!(code_of(&e), Code::NOT_FOUND, "refused exec {i} must not be registered");
    }
    // Update: missing, mistyped, undecodable resources.
    for (i, res) in
        [None, Some(Any::new()), Some(resources_any(b"not json")), Some(resources_any(b"42"))].into_iter().enumerate()
    {
        let mut r = api::UpdateTaskRequest::new();
        r.id = VALID.into();
        r.resources = res.into();
        let e = c.update(ctx(), &r).await.unwrap_err();
        assert_eq!(code_of(&e), Code::INVALID_ARGUMENT, "resources {i}: {e:?}");
    }

    // Create: broken bundles, specs, options, mounts; each leaves nothing behind.
    let broken = env.dir.join("bundles/broken-json");
    std::fs::create_dir_all(broken.join("rootfs")).unwrap();
    std::fs::write(broken.join("config.json"), b"{ not json").unwrap();
    let no_config = env.dir.join("bundles/no-config");
    std::fs::create_dir_all(no_config.join("rootfs")).unwrap();
    let bad_args = env.bundle("bad-args", &["/no/such/binary"], &[]);
    let good = env.bundle("bad-create", &["sleep", "1000"], &[]);
    let mut cases: Vec<(String, api::CreateTaskRequest, Option<Code>)> = Vec::new();
    let mut case = |name: &str, bundle: &Path, f: &dyn Fn(&mut api::CreateTaskRequest), want: Option<Code>| {
        let id = format!("create-{name}");
        let mut r = env.create_request(&id, bundle);
        f(&mut r);
        cases.push((id, r, want));
    };
    let inv = Some(Code::INVALID_ARGUMENT);
    case("relative", &good, &|r| r.bundle = "bundles/x".into(), inv);
    case("dotdot", &good, &|r| r.bundle = format!("{}/../bad-create", env.dir.join("bundles").display()), inv);
    case("empty-bundle", &good, &|r| r.bundle = String::new(), inv);
    case("no-config", &no_config, &|_| {}, inv);
    case("broken-json", &broken, &|_| {}, inv);
    case("bad-options", &good, &|r| r.options.as_mut().unwrap().value = vec![0xff; 7], inv);
    case("options-type", &good, &|r| r.options.as_mut().unwrap().type_url = "bogus".into(), inv);
    case(
        "mount-type",
        &good,
        &|r| {
            r.rootfs[0].type_ = "no-such-fs".into();
            r.rootfs[0].options.clear();
        },
        None,
    );
    case("mount-source", &good, &|r| r.rootfs[0].source = "/no/such/dir".into(), None);
    case("stdout-dir", &good, &|r| r.stdout = "/".into(), None);
    case("stdin-missing", &good, &|r| r.stdin = "/no/such/fifo".into(), None);
    case("bad-args", &bad_args, &|_| {}, None);
    // Under the test's own dir: runc restore (at Create before issue 15) made a missing image
    // dir, and a fixed path outside would outlive the test.
    let no_images = env.dir.join("no-such-checkpoint").display().to_string();
    case("checkpoint", &good, &|r| r.checkpoint = no_images.clone(), inv);
    for (id, r, want) in cases {
        let bundle = PathBuf::from(&r.bundle);
        if bundle.is_absolute() {
            env.track_container(&id, &bundle);
        }
        let res = tokio::time::timeout(CALL_LIMIT, c.create(ctx(), &r)).await.expect("create hung");
        let e = res.map(drop).expect_err(&id);
        if let Some(want) = want {
            assert_eq!(code_of(&e), want, "{id}: {e:?}");
        }
        expect_code(call(&env, c, Rpc::State, &id, "").await, Code::NOT_FOUND, &format!("{id} registered"));
        if bundle.is_absolute() {
            assert_nothing_left(&env, &id, &bundle);
        }
        // The id is free again: a failed Create does not hold it.
        if id == "create-mount-source" {
            let ok = env.create_request(&id, &good);
            c.create(ctx(), &ok).await.unwrap();
            c.delete(ctx(), &delete(&id, "")).await.unwrap();
            assert_nothing_left(&env, &id, &good);
        }
    }
    // A refused exec start rolls back: nothing of it is left running (runc's own exiting
    // helpers may linger in the cgroup until reaped, hence the bounded wait).
    c.exec(ctx(), &exec(VALID, "no-binary", &["/no/such/binary"])).await.unwrap();
    assert!(c.start(ctx(), &start(VALID, "no-binary")).await.is_err());
    let mut pr = api::PidsRequest::new();
    pr.id = VALID.into();
    let mut pids = Vec::new();
    for _ in 0..100 {
        pids = c.pids(ctx(), &pr).await.unwrap().processes.iter().map(|p| p.pid).collect::<Vec<_>>();
        if pids.len() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(pids.len(), 1, "only the init runs: {pids:?}");
    assert_unharmed(&shim, "nonsense").await;
    teardown(&shim).await;
}

/// A raw ttrpc frame.
fn frame(stream_id: u32, kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(10 + payload.len());
    f.extend(u32::try_from(payload.len()).unwrap().to_be_bytes());
    f.extend(stream_id.to_be_bytes());
    f.extend([kind, 0]);
    f.extend(payload);
    f
}

fn request(service: &str, method: &str, payload: &[u8]) -> Vec<u8> {
    let mut r = ttrpc::Request::new();
    r.service = service.into();
    r.method = method.into();
    r.payload = payload.to_vec();
    r.write_to_bytes().unwrap()
}

fn raw_conn(address: &str) -> UnixStream {
    let s = UnixStream::connect(address.trim_start_matches("unix://")).unwrap();
    s.set_read_timeout(Some(CALL_LIMIT)).unwrap();
    s
}

/// Reads one response frame: (stream id, status code).
fn read_response(s: &mut UnixStream) -> (u32, Code) {
    let mut h = [0u8; 10];
    s.read_exact(&mut h).expect("no response frame");
    let len = u32::from_be_bytes(h[0..4].try_into().unwrap()) as usize;
    let stream = u32::from_be_bytes(h[4..8].try_into().unwrap());
    assert_eq!(h[8], 2, "not a response frame");
    let mut body = vec![0; len];
    s.read_exact(&mut body).unwrap();
    let r = ttrpc::Response::parse_from_bytes(&body).unwrap();
    (stream, r.status.code.enum_value().unwrap())
}

/// Sends one raw frame on a fresh connection and returns the answer's code.
fn raw_call(shim: &str, bytes: &[u8]) -> Code {
    let mut s = raw_conn(shim);
    s.write_all(bytes).unwrap();
    let (stream, code) = read_response(&mut s);
    assert_eq!(stream, u32::from_be_bytes(bytes[4..8].try_into().unwrap()));
    code
}

const TASK: &str = "containerd.task.v3.Task";

fn state_payload(id: &str) -> Vec<u8> {
    state(id, "").write_to_bytes().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_socket_abuse_leaves_the_shim_serving() {
    let env = TestEnv::new().await;
    let shim = live(&env).await;
    let address = shim.address.clone();
    tokio::task::spawn_blocking(move || {
        let shim = address.as_str();
        // Sanity: a well-formed raw State answers OK, also under the v2 service name.
        assert_eq!(raw_call(shim, &frame(1, 1, &request(TASK, "State", &state_payload(VALID)))), Code::OK);
        assert_eq!(
            raw_call(shim, &frame(3, 1, &request("containerd.task.v2.Task", "State", &state_payload(VALID)))),
            Code::OK
        );
        // Undecodable request envelope; undecodable method payloads for every method.
        assert_eq!(raw_call(shim, &frame(1, 1, &[0xff, 0xff, 0xff, 0xff, 0x0f])), Code::INVALID_ARGUMENT);
        for method in [
            "Create",
            "Start",
            "Delete",
            "Exec",
            "State",
            "Pids",
            "Pause",
            "Resume",
            "Kill",
            "ResizePty",
            "CloseIO",
            "Update",
            "Wait",
            "Stats",
            "Connect",
            "Shutdown",
            "Checkpoint",
        ] {
            let code = raw_call(shim, &frame(5, 1, &request(TASK, method, &[0x0a, 0xff, 0xff, 0xff])));
            assert_eq!(code, Code::INVALID_ARGUMENT, "{method} with an undecodable payload");
        }
        // Even stream ids are refused.
        assert_eq!(
            raw_call(shim, &frame(2, 1, &request(TASK, "State", &state_payload(VALID)))),
            Code::INVALID_ARGUMENT
        );
        // A header announcing more than ttrpc's 4 MiB: refused with InvalidArgument once the
        // body is discarded, and the connection still serves the next request.
        {
            let mut c = raw_conn(shim);
            let len = (4u32 << 20) + 1;
            let mut h = Vec::new();
            h.extend(len.to_be_bytes());
            h.extend(7u32.to_be_bytes());
            h.extend([1u8, 0]);
            c.write_all(&h).unwrap();
            let chunk = vec![0u8; 64 << 10];
            let mut left = len as usize;
            while left > 0 {
                let n = left.min(chunk.len());
                c.write_all(&chunk[..n]).unwrap();
                left -= n;
            }
            assert_eq!(read_response(&mut c), (7, Code::INVALID_ARGUMENT));
            c.write_all(&frame(9, 1, &request(TASK, "State", &state_payload(VALID)))).unwrap();
            assert_eq!(read_response(&mut c), (9, Code::OK));
        }
        // The same, but the peer hangs up mid-body; and a header claiming 4 GiB.
        for len in [(4u32 << 20) + 1, u32::MAX] {
            let mut c = raw_conn(shim);
            let mut h = Vec::new();
            h.extend(len.to_be_bytes());
            h.extend(1u32.to_be_bytes());
            h.extend([1u8, 0]);
            c.write_all(&h).unwrap();
            c.write_all(&[0u8; 1000]).unwrap();
        }
        // Truncated frames: half a header; a header and half a body.
        let whole = frame(1, 1, &request(TASK, "State", &state_payload(VALID)));
        for cut in [3, 10, whole.len() - 1] {
            let mut c = raw_conn(shim);
            c.write_all(&whole[..cut]).unwrap();
        }
        // Garbage bytes; unknown frame types; a data frame for no stream.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for n in [1usize, 9, 10, 11, 64, 4096] {
            let mut c = raw_conn(shim);
            let junk: Vec<u8> = (0..n)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed.to_le_bytes()[0]
                })
                .collect();
            let _ = c.write_all(&junk);
        }
        {
            let mut c = raw_conn(shim);
            c.write_all(&frame(1, 0x7f, b"whatever")).unwrap();
            c.write_all(&frame(3, 3, b"data for no stream")).unwrap();
            assert_eq!(read_response(&mut c), (3, Code::INVALID_ARGUMENT));
            c.write_all(&frame(5, 1, &request(TASK, "State", &state_payload(VALID)))).unwrap();
            assert_eq!(read_response(&mut c), (5, Code::OK));
        }
        // A flood: 200 connections that close at once, then 200 that stay idle while the
        // shim keeps answering on another.
        for _ in 0..200 {
            drop(raw_conn(shim));
        }
        let idle: Vec<UnixStream> = (0..200).map(|_| raw_conn(shim)).collect();
        assert_eq!(raw_call(shim, &frame(1, 1, &request(TASK, "State", &state_payload(VALID)))), Code::OK);
        drop(idle);
    })
    .await
    .unwrap();
    assert_unharmed(&shim, "raw").await;
    // The abandoned connections are all closed again: the shim holds no more fds than a
    // handful over its count with one client.
    let fds = || std::fs::read_dir(format!("/proc/{}/fd", shim.pid)).unwrap().count();
    let mut n = fds();
    for _ in 0..100 {
        if n < 64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        n = fds();
    }
    assert!(n < 64, "shim holds {n} fds after the flood");
    teardown(&shim).await;
}

/// Unknown methods and services answer Unimplemented, and the connection keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_method_or_service_is_unimplemented() {
    let env = TestEnv::new().await;
    let shim = live(&env).await;
    let address = shim.address.clone();
    tokio::task::spawn_blocking(move || {
        let mut c = raw_conn(&address);
        let mut stream = 1;
        for (service, method) in [
            (TASK, "NoSuchMethod"),
            (TASK, ""),
            ("containerd.task.v2.Task", "Nope"),
            ("no.such.Service", "State"),
            ("", ""),
            ("containerd.task.v3.Task/State", ""),
            ("grpc.health.v1.Health", "Check"),
        ] {
            c.write_all(&frame(stream, 1, &request(service, method, &state_payload(VALID)))).unwrap();
            assert_eq!(read_response(&mut c), (stream, Code::UNIMPLEMENTED), "{service}/{method}");
            stream += 2;
        }
        c.write_all(&frame(stream, 1, &request(TASK, "State", &state_payload(VALID)))).unwrap();
        assert_eq!(read_response(&mut c), (stream, Code::OK));
    })
    .await
    .unwrap();
    assert_unharmed(&shim, "unimplemented").await;
    teardown(&shim).await;
}

/// containerd's identifier rule, written independently of the shim's.
fn well_formed(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 76
        && s.split(['.', '_', '-']).all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric()))
}

/// One arbitrary request: which RPC and the raw material for its fields.
#[derive(Debug, Clone)]
struct Arb {
    rpc: usize,
    id: String,
    exec_id: String,
    n1: u32,
    n2: u32,
    flag: bool,
    path: String,
    type_url: String,
    bytes: Vec<u8>,
    args: Vec<String>,
}

mod arb {
    use super::*;
    use proptest::prelude::*;

    pub fn id() -> BoxedStrategy<String> {
        prop_oneof![
            3 => Just(VALID.to_owned()),
            1 => Just("no-such".to_owned()),
            1 => Just(String::new()),
            3 => "[A-Za-z0-9._/-]{0,12}",
            2 => ".{0,90}",
            1 => "[a-z]{70,90}",
        ]
        .boxed()
    }

    pub fn exec_id() -> BoxedStrategy<String> {
        prop_oneof![
            3 => Just(String::new()),
            3 => "[a-z][a-z0-9]{0,7}",
            3 => "[A-Za-z0-9._/-]{0,12}",
            1 => ".{0,90}",
        ]
        .boxed()
    }

    pub fn request(dir: String) -> impl Strategy<Value = Arb> {
        let paths = prop_oneof![
            Just(String::new()),
            Just("relative/path".to_owned()),
            Just(dir.clone()),
            Just(format!("{dir}/bundles/broken")),
            Just(format!("{dir}/../..")),
            Just("/dev/null".to_owned()),
            "[a-z]{1,8}".prop_map(move |s| format!("{dir}/{s}")),
            ".{0,40}".prop_filter("not an absolute path", |s| !s.starts_with('/')),
        ];
        let type_urls = prop_oneof![
            Just(String::new()),
            Just("containerd.runc.v1.Options".to_owned()),
            Just("types.containerd.io/opencontainers/runtime-spec/1/Process".to_owned()),
            Just("types.containerd.io/opencontainers/runtime-spec/1/LinuxResources".to_owned()),
            ".{0,30}",
        ];
        let args = prop_oneof![
            Just(vec!["true".to_owned()]),
            (0u8..=255).prop_map(|n| vec!["sh".to_owned(), "-c".to_owned(), format!("exit {n}")]),
            proptest::collection::vec("x-[a-z]{0,6}|.{0,10}", 0..4),
        ];
        let bytes = prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..64),
            Just(b"{}".to_vec()),
            Just(b"null".to_vec()),
            Just(vec![b'['; 10_000]),
            Just(vec![0u8; (1 << 20) + 1]),
        ];
        (
            (0usize..ALL.len(), id(), exec_id(), any::<u32>(), any::<u32>(), any::<bool>()),
            (paths, type_urls, bytes, args),
        )
            .prop_map(|((rpc, id, exec_id, n1, n2, flag), (path, type_url, bytes, args))| Arb {
                rpc,
                id,
                exec_id,
                n1,
                n2,
                flag,
                path,
                type_url,
                bytes,
                args,
            })
    }
}

fn any_of(type_url: &str, value: Vec<u8>) -> Any {
    let mut a = Any::new();
    a.type_url = type_url.into();
    a.value = value;
    a
}

/// Sends `a` to the shim. Requests that would legitimately stop or freeze the valid container
/// (Kill/Pause/Update/Checkpoint of its init) are sent to another id instead.
async fn send_arbitrary(env: &TestEnv, client: &TaskClient, a: &Arb) -> ttrpc::Result<()> {
    let rpc = ALL[a.rpc];
    let id = if a.id == VALID && matches!(rpc, Rpc::Pause | Rpc::Update | Rpc::Checkpoint)
        || a.id == VALID && rpc == Rpc::Kill && a.exec_id.is_empty()
    {
        "redirected"
    } else {
        a.id.as_str()
    };
    let c = ctx();
    let (id, exec_id) = (id.to_owned(), a.exec_id.clone());
    let spec = || {
        // Mostly the right type, so that decoding the JSON gets exercised too.
        let type_url = if a.n2.is_multiple_of(4) {
            a.type_url.as_str()
        } else {
            "types.containerd.io/opencontainers/runtime-spec/1/Process"
        };
        if a.flag {
            let v = serde_json::json!({
                "args": a.args, "cwd": a.path, "env": ["PATH=/bin"],
                "user": {"uid": a.n1 % 3, "gid": a.n2 % 3}, "terminal": a.n1.is_multiple_of(2),
            });
            any_of(type_url, serde_json::to_vec(&v).unwrap())
        } else {
            any_of(type_url, a.bytes.clone())
        }
    };
    match rpc {
        Rpc::Create => {
            let mut r = api::CreateTaskRequest::new();
            r.id = id;
            r.bundle = a.path.clone();
            r.terminal = a.flag;
            r.stdin = if a.n1.is_multiple_of(3) { a.path.clone() } else { String::new() };
            r.stdout = if a.n2.is_multiple_of(3) { a.path.clone() } else { String::new() };
            r.checkpoint = if a.n1.is_multiple_of(5) { a.path.clone() } else { String::new() };
            if a.n2.is_multiple_of(2) {
                let mut m = api::Mount::new();
                m.type_ = a.type_url.clone();
                m.source = a.path.clone();
                m.options = a.args.clone();
                r.rootfs.push(m);
            }
            r.options = protobuf::MessageField::some(any_of(&a.type_url, a.bytes.clone()));
            client.create(c, &r).await.map(drop)
        }
        Rpc::Start => client.start(c, &start(&id, &exec_id)).await.map(drop),
        Rpc::Delete => client.delete(c, &delete(&id, &exec_id)).await.map(drop),
        Rpc::Exec => {
            let mut r = exec(&id, &exec_id, &["true"]);
            r.spec = protobuf::MessageField::some(spec());
            r.terminal = a.flag && a.n2.is_multiple_of(2);
            r.stdout = if a.n2.is_multiple_of(3) { a.path.clone() } else { String::new() };
            client.exec(c, &r).await?;
            if std::env::var_os("HOSTILE_VERBOSE").is_some() {
                eprintln!("  exec registered");
            }
            // A registered exec is run to its end so the valid container keeps no strays.
            let run = async {
                client.start(ctx(), &start(&id, &exec_id)).await?;
                let mut wc = ctx();
                wc.timeout_nano = 2_000_000_000;
                if client.wait(wc, &wait(&id, &exec_id)).await.is_err() {
                    let _ = client.kill(ctx(), &kill(&id, &exec_id, 9)).await;
                    client.wait(ctx(), &wait(&id, &exec_id)).await?;
                }
                Ok::<_, ttrpc::Error>(())
            };
            let _ = run.await;
            let _ = client.delete(ctx(), &delete(&id, &exec_id)).await;
            Ok(())
        }
        Rpc::State => client.state(c, &state(&id, &exec_id)).await.map(drop),
        Rpc::Pids => {
            let mut r = api::PidsRequest::new();
            r.id = id;
            client.pids(c, &r).await.map(drop)
        }
        Rpc::Pause => {
            let mut r = api::PauseRequest::new();
            r.id = id;
            client.pause(c, &r).await.map(drop)
        }
        Rpc::Resume => {
            let mut r = api::ResumeRequest::new();
            r.id = id;
            client.resume(c, &r).await.map(drop)
        }
        Rpc::Kill => {
            let mut r = kill(&id, &exec_id, a.n1 % 70);
            r.all = a.flag;
            client.kill(c, &r).await.map(drop)
        }
        Rpc::ResizePty => client.resize_pty(c, &resize(&id, &exec_id, a.n1, a.n2)).await.map(drop),
        Rpc::CloseIo => {
            let mut r = api::CloseIORequest::new();
            r.id = id;
            r.exec_id = exec_id;
            r.stdin = a.flag;
            client.close_io(c, &r).await.map(drop)
        }
        Rpc::Update => {
            let mut r = api::UpdateTaskRequest::new();
            r.id = id;
            if a.flag {
                r.resources = protobuf::MessageField::some(any_of(&a.type_url, a.bytes.clone()));
            }
            client.update(c, &r).await.map(drop)
        }
        Rpc::Wait => {
            let mut wc = ctx();
            wc.timeout_nano = 200_000_000;
            client.wait(wc, &wait(&id, &exec_id)).await.map(drop)
        }
        Rpc::Stats => {
            let mut r = api::StatsRequest::new();
            r.id = id;
            client.stats(c, &r).await.map(drop)
        }
        Rpc::Connect => {
            let mut r = api::ConnectRequest::new();
            r.id = id;
            client.connect(c, &r).await.map(drop)
        }
        Rpc::Shutdown => {
            let mut r = api::ShutdownRequest::new();
            r.id = id;
            r.now = a.flag;
            client.shutdown(c, &r).await.map(drop)
        }
        Rpc::Checkpoint => {
            let mut r = api::CheckpointTaskRequest::new();
            r.id = id;
            r.path = format!("{}/checkpoint", env.dir.display());
            r.options = protobuf::MessageField::some(any_of(&a.type_url, a.bytes.clone()));
            client.checkpoint(c, &r).await.map(drop)
        }
    }
}

/// What must hold for the answer to `a` (beyond "an answer, in time").
fn check_answer(a: &Arb, r: &ttrpc::Result<()>) -> Result<(), String> {
    let rpc = ALL[a.rpc];
    let code = match r {
        Ok(()) => Code::OK,
        Err(ttrpc::Error::RpcStatus(s)) => s.code(),
        // Wait on a live process blocks legitimately; the client gives up at its deadline.
        Err(ttrpc::Error::Others(m)) if rpc == Rpc::Wait && m.contains("deadline") => Code::DEADLINE_EXCEEDED,
        Err(e) => return Err(format!("not an rpc status: {e:?}")),
    };
    let lenient_id = matches!(rpc, Rpc::Connect | Rpc::Shutdown) && a.id.is_empty();
    let want: &[Code] = if code == Code::DEADLINE_EXCEEDED {
        if a.id == VALID && (well_formed(&a.exec_id) || a.exec_id.is_empty()) {
            return Ok(());
        }
        return Err(format!("{rpc:?}: only a Wait on a live process may outlast its deadline: {r:?}"));
    } else if (!well_formed(&a.id) && !lenient_id)
        || (a.id == VALID
            && WITH_EXEC_ID.contains(&rpc)
            && !well_formed(&a.exec_id)
            && (!a.exec_id.is_empty() || rpc == Rpc::Exec))
    {
        // A malformed id, or a malformed exec id of the valid container.
        &[Code::INVALID_ARGUMENT]
    } else if a.id != VALID && !matches!(rpc, Rpc::Create | Rpc::Connect | Rpc::Shutdown) {
        // Unknown container: NotFound, or InvalidArgument for a field checked first.
        &[Code::NOT_FOUND, Code::INVALID_ARGUMENT]
    } else {
        return Ok(());
    };
    if want.contains(&code) {
        Ok(())
    } else {
        Err(format!("{rpc:?}: got {code:?}, want one of {want:?}: {r:?}"))
    }
}

/// Arbitrary requests for every RPC against one live shim: each answers a ttrpc status in
/// time, bad ids are InvalidArgument and unknown ones NotFound, and the valid container in the
/// same shim keeps running.
#[test]
fn arbitrary_requests_never_harm_the_shim() {
    use proptest::test_runner::{Config, TestCaseError, TestRunner};
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let _guard = rt.enter();
    let env = rt.block_on(TestEnv::new());
    let broken = env.dir.join("bundles/broken");
    std::fs::create_dir_all(broken.join("rootfs")).unwrap();
    std::fs::write(broken.join("config.json"), b"{\"ociVersion\": 7}").unwrap();
    let shim = rt.block_on(live(&env));
    let cases: u32 = std::env::var("HOSTILE_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(256);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: std::env::var("HOSTILE_SHRINK").ok().and_then(|s| s.parse().ok()).unwrap_or(16),
        ..Config::default()
    });
    let verbose = std::env::var_os("HOSTILE_VERBOSE").is_some();
    let result = runner.run(&arb::request(env.dir.display().to_string()), |a| {
        if verbose {
            eprintln!(
                "case {:?} id={:?} exec={:?} path={:?} url={:?} bytes={} flag={}",
                ALL[a.rpc],
                a.id,
                a.exec_id,
                a.path,
                a.type_url,
                a.bytes.len(),
                a.flag
            );
        }
        rt.block_on(async {
            let r = tokio::time::timeout(CALL_LIMIT, send_arbitrary(&env, &shim.client, &a))
                .await
                .map_err(|_| TestCaseError::fail(format!("{a:?}: no answer within {CALL_LIMIT:?}")))?;
            if verbose {
                eprintln!("  -> {r:?}");
            }
            check_answer(&a, &r).map_err(TestCaseError::fail)?;
            if !alive(shim.pid) {
                return Err(TestCaseError::fail("shim died"));
            }
            let st = tokio::time::timeout(CALL_LIMIT, shim.client.state(ctx(), &state(VALID, "")))
                .await
                .map_err(|_| TestCaseError::fail("state hung"))?
                .map_err(|e| TestCaseError::fail(format!("state: {e:?}")))?;
            if st.status.enum_value() != Ok(Status::RUNNING) {
                return Err(TestCaseError::fail(format!("valid container is {:?}", st.status)));
            }
            Ok(())
        })
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    rt.block_on(async {
        // Nothing but the valid container was ever created, and it still runs execs.
        let out = std::process::Command::new("runc")
            .args(["--root", env.runc_root().join(NAMESPACE).to_str().unwrap(), "list", "-q"])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), VALID);
        assert_unharmed(&shim, "proptest").await;
        teardown(&shim).await;
    });
}
