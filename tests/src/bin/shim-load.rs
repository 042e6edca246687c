//! `shim-load`: drives one shim at the ttrpc level, with no containerd or ctr in the way, and
//! prints what the shim itself costs as one JSON line on stdout.
//!
//! ```text
//! shim-load stats  [--calls N]                          Stats in a loop against one container
//! shim-load exec   [--inflight N] [--total M] [--warmup W] Exec+Start+Wait+Delete, N in flight
//! shim-load runc   [--inflight N] [--total M]           bare `runc exec` against the same kind of container
//! shim-load soak   [--inflight N] [--total M] [--step S] exec cycles; RSS/fds/maps every S execs
//! shim-load idle   [--containers N] [--seconds S] [--pod]  N idle containers (one shim each, or
//!                                                       one shim per 4 with --pod); PSS, threads, fds, CPU
//! ```
//!
//! The shim binary is `SHIM_BIN` (default: the workspace's build), so the same driver measures
//! our shim, containerd's Go shims and the rust-extensions shim. CPU is read from
//! `/proc/<pid>/task/*/schedstat` (nanoseconds on CPU, every thread of the shim) and
//! `/proc/<pid>/stat` (the runtime children the shim reaped, in clock ticks). Everything it
//! starts lives in a [`TestEnv`] and is removed on exit, also on failure.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss
)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use containerd_shim_protos::api;
use protobuf::Message;
use shim_tests::{ctx, req, TestEnv};

/// A task API client that speaks `containerd.task.v3.Task` (containerd 2.x shims, ours) or,
/// when the shim does not know it, `containerd.task.v2.Task` (containerd 1.x Go shims): the
/// same messages under another service name.
#[derive(Clone)]
struct TaskClient {
    client: ttrpc::asynchronous::Client,
    service: &'static str,
}

macro_rules! methods {
    ($($name:ident($method:literal, $req:ty) -> $resp:ty;)+) => {
        impl TaskClient {
            $(
                async fn $name(&self, _ctx: ttrpc::context::Context, req: &$req) -> ttrpc::Result<$resp> {
                    self.call($method, req).await
                }
            )+
        }
    };
}

methods! {
    connect("Connect", api::ConnectRequest) -> api::ConnectResponse;
    create("Create", api::CreateTaskRequest) -> api::CreateTaskResponse;
    start("Start", api::StartRequest) -> api::StartResponse;
    exec("Exec", api::ExecProcessRequest) -> protobuf::well_known_types::empty::Empty;
    wait("Wait", api::WaitRequest) -> api::WaitResponse;
    delete("Delete", api::DeleteRequest) -> api::DeleteResponse;
    kill("Kill", api::KillRequest) -> protobuf::well_known_types::empty::Empty;
    stats("Stats", api::StatsRequest) -> api::StatsResponse;
    shutdown("Shutdown", api::ShutdownRequest) -> protobuf::well_known_types::empty::Empty;
}

impl TaskClient {
    async fn call<Req: Message, Resp: Message>(&self, method: &str, req: &Req) -> ttrpc::Result<Resp> {
        let payload = req.write_to_bytes().map_err(|e| ttrpc::Error::Others(e.to_string()))?;
        let request =
            ttrpc::Request { service: self.service.into(), method: method.into(), payload, ..Default::default() };
        let response = self.client.request(request).await?;
        Resp::parse_from_bytes(&response.payload).map_err(|e| ttrpc::Error::Others(e.to_string()))
    }
}

/// Connects to `address` and finds the task API version the shim serves.
async fn connect(address: &str) -> TaskClient {
    let client = ttrpc::asynchronous::Client::connect(address).await.unwrap();
    let v3 = TaskClient { client: client.clone(), service: "containerd.task.v3.Task" };
    if v3.connect(ctx(), &api::ConnectRequest::new()).await.is_ok() {
        return v3;
    }
    TaskClient { client, service: "containerd.task.v2.Task" }
}

fn arg(args: &[String], name: &str, default: u64) -> u64 {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse().unwrap_or_else(|_| panic!("{name}: not a number: {v}")))
        .unwrap_or(default)
}

/// Nanoseconds on CPU of `pid`: the sum over its live threads' schedstat, or its utime+stime
/// when larger (that also counts threads that have exited, such as tokio's idle blocking pool).
fn schedstat_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return 0 };
    let live: u64 = tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    live.max(stat_cpu_ns(pid).0)
}

/// Nanoseconds the live threads of `pid` spent runnable, waiting on a run queue (schedstat's
/// second field).
fn runqueue_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return 0 };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum()
}

/// (idle + iowait, all) jiffies of the machine, from /proc/stat's `cpu` line.
fn machine_jiffies() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<u64> =
        stat.lines().next().unwrap_or("").split_whitespace().skip(1).map(|v| v.parse().unwrap_or(0)).collect();
    (f.get(3).copied().unwrap_or(0) + f.get(4).copied().unwrap_or(0), f.iter().take(8).sum())
}

/// CPU of this process (every thread), in nanoseconds.
fn self_cpu_ns() -> u64 {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_PROCESS_CPUTIME_ID).unwrap();
    u64::try_from(ts.tv_sec()).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec()).unwrap_or(0)
}

/// (utime, stime) of `pid` (all its threads), in nanoseconds.
fn user_sys_ns(pid: u32) -> (u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<u64> = after.split_whitespace().map(|v| v.parse().unwrap_or(0)).collect();
    let get = |i: usize| f.get(i).copied().unwrap_or(0) * (1_000_000_000 / 100);
    (get(11), get(12))
}

/// (own utime+stime, reaped children's cutime+cstime) of `pid`, in nanoseconds.
fn stat_cpu_ns(pid: u32) -> (u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<u64> = after.split_whitespace().map(|v| v.parse().unwrap_or(0)).collect();
    // After the comm: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14).
    let tick = 1_000_000_000 / 100;
    let get = |i: usize| f.get(i).copied().unwrap_or(0) * tick;
    (get(11) + get(12), get(13) + get(14))
}

/// Threads of `pid` (its task dir entries).
fn threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task")).map(Iterator::count).unwrap_or(0)
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(Iterator::count).unwrap_or(0)
}

fn maps(pid: u32) -> usize {
    std::fs::read_to_string(format!("/proc/{pid}/maps")).map(|m| m.lines().count()).unwrap_or(0)
}

/// `key: N kB` fields of `/proc/<pid>/smaps_rollup` (Pss, Anonymous, Rss...) in bytes, and
/// `/proc/<pid>/status` VmRSS.
fn memory(pid: u32) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    for line in rollup.lines().skip(1) {
        let mut f = line.split_whitespace();
        if let (Some(k), Some(v)) = (f.next(), f.next()) {
            if let Ok(v) = v.parse::<u64>() {
                out.insert(k.trim_end_matches(':').to_owned(), v * 1024);
            }
        }
    }
    out
}

/// Voluntary + involuntary context switches of every live thread: wakeups while idle.
fn ctxt_switches(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return 0 };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("status")).ok())
        .map(|s| {
            s.lines()
                .filter(|l| l.starts_with("voluntary_ctxt_switches") || l.starts_with("nonvoluntary_ctxt_switches"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>()
        })
        .sum()
}

/// A shim started the way containerd starts it, with one running `sleep` container.
struct Target {
    env: TestEnv,
    address: String,
    client: TaskClient,
    pid: u32,
    id: String,
}

/// Runs `shim start` and returns the address it printed. The Go shims of containerd 2.x print
/// JSON bootstrap parameters; 1.x and ours print the plain address.
fn start_shim(env: &TestEnv, id: &str, bundle: &Path) -> String {
    drain_log_fifo(bundle);
    let out = env.shim_command(bundle, id, "start").output().unwrap();
    assert!(out.status.success(), "shim start failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let text = text.trim();
    if std::env::var_os("SHIM_LOAD_DEBUG").is_some() {
        eprintln!("shim start: {text:?} stderr {:?}", String::from_utf8_lossy(&out.stderr));
    }
    if text.starts_with('{') {
        let v: serde_json::Value = serde_json::from_str(text).unwrap();
        v["address"].as_str().unwrap().to_owned()
    } else {
        text.to_owned()
    }
}

/// The `log` fifo containerd makes in the bundle (the Go shim exits without it), drained by a
/// thread holding it open read-write, so neither side ever blocks or sees EOF.
fn drain_log_fifo(bundle: &Path) {
    let path = bundle.join("log");
    if !path.exists() {
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    }
    let mut fifo = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
    let debug = std::env::var_os("SHIM_LOAD_DEBUG").is_some();
    std::thread::spawn(move || {
        use std::io::Read;
        let mut buf = [0u8; 4096];
        while let Ok(n) = fifo.read(&mut buf) {
            if n == 0 {
                break;
            }
            if debug {
                eprint!("{}", String::from_utf8_lossy(&buf[..n]));
            }
        }
    });
}

async fn create_container(env: &TestEnv, client: &TaskClient, id: &str, bundle: &Path) {
    client.create(ctx(), &env.create_request(id, bundle)).await.unwrap();
    client.start(ctx(), &req::start(id, "")).await.unwrap();
}

impl Target {
    async fn new(env: TestEnv, annotations: &[(&str, &str)]) -> Target {
        let id = format!("load{}", std::process::id());
        let bundle = env.bundle(&id, &["sleep", "1000000"], annotations);
        let address = start_shim(&env, &id, &bundle);
        let client = connect(&address).await;
        let pid = client.connect(ctx(), &api::ConnectRequest::new()).await.unwrap().shim_pid;
        env.track_shim(pid, Path::new(address.trim_start_matches("unix://")));
        env.track_container(&id, &bundle);
        create_container(&env, &client, &id, &bundle).await;
        Target { env, address, client, pid, id }
    }

    async fn stop(self) {
        let Target { env, client, id, pid, .. } = self;
        let _ = client.kill(ctx(), &req::kill(&id, "", 9)).await;
        let _ = client.wait(ctx(), &req::wait(&id, "")).await;
        let _ = client.delete(ctx(), &req::delete(&id, "")).await;
        let _ = client.shutdown(ctx(), &req::id_req::<api::ShutdownRequest>(|r| r.id.clone_from(&id))).await;
        // Let the shim exit on its own (a profiler wrapping it writes its data then); the
        // environment kills what is left.
        for _ in 0..300 {
            if !shim_tests::alive(pid) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        drop(env);
    }
}

/// Stats in a loop: shim CPU per call.
async fn stats(args: &[String]) -> serde_json::Value {
    let calls = arg(args, "--calls", 2000);
    let t = Target::new(TestEnv::new().await, &[]).await;
    let stats_req = req::id_req::<api::StatsRequest>(|r| r.id.clone_from(&t.id));
    let first = t.client.stats(ctx(), &stats_req).await.unwrap();
    let bytes = first.stats.value.len();
    for _ in 0..50 {
        t.client.stats(ctx(), &stats_req).await.unwrap();
    }
    let (cpu0, wall0) = (schedstat_ns(t.pid), Instant::now());
    for _ in 0..calls {
        t.client.stats(ctx(), &stats_req).await.unwrap();
    }
    let (cpu1, wall) = (schedstat_ns(t.pid), wall0.elapsed());
    let out = serde_json::json!({
        "mode": "stats", "calls": calls, "type_url": first.stats.type_url, "metrics_bytes": bytes,
        "shim_cpu_us_per_call": cpu1.saturating_sub(cpu0) as f64 / calls as f64 / 1000.0,
        "wall_us_per_call": wall.as_secs_f64() * 1e6 / calls as f64,
        "threads": threads(t.pid), "fds": fds(t.pid),
    });
    t.stop().await;
    out
}

struct Latencies {
    /// (start offset, end offset) of each exec, by start index.
    spans: Vec<(Duration, Duration)>,
    /// Per-phase times of each exec cycle, by start index (empty for the runc floor).
    cycles: Vec<Cycle>,
}

/// When one Exec+Start+Wait+Delete cycle's replies arrived, as offsets from the run's epoch,
/// and the pid Start returned.
#[derive(Debug, Clone, Copy, Default)]
struct Cycle {
    /// Before the Exec request.
    begin: Duration,
    /// Exec replied (the shim registered the exec; no runtime call).
    exec: Duration,
    /// Start replied (`runc exec --detach` ran, the pid is known).
    start: Duration,
    /// Wait replied (the process's exit reached the client).
    wait: Duration,
    /// Delete replied: the cycle's end.
    delete: Duration,
    pid: u32,
}

/// p50 and p99 of `xs` (ms), sorted in place.
fn p50_p99(xs: &mut [f64]) -> serde_json::Value {
    if xs.is_empty() {
        return serde_json::Value::Null;
    }
    xs.sort_by(f64::total_cmp);
    let pct = |p: f64| xs[(xs.len() - 1) * (p * 1000.0) as usize / 1000];
    serde_json::json!({"p50": pct(0.5), "p99": pct(0.99), "mean": xs.iter().sum::<f64>() / xs.len() as f64})
}

/// The fraction of items overtaken: one that started later reached `end` earlier.
fn overtaken(ends: impl DoubleEndedIterator<Item = Duration> + ExactSizeIterator) -> f64 {
    let len = ends.len();
    let mut min_end_after = Duration::MAX;
    let mut overtaken = 0usize;
    for end in ends.rev() {
        if min_end_after < end {
            overtaken += 1;
        }
        min_end_after = min_end_after.min(end);
    }
    overtaken as f64 / len.max(1) as f64
}

impl Latencies {
    fn summary(&self) -> serde_json::Value {
        let mut lat: Vec<f64> = self.spans.iter().map(|(s, e)| (*e - *s).as_secs_f64() * 1000.0).collect();
        lat.sort_by(f64::total_cmp);
        let pct = |p: f64| lat[(lat.len() - 1) * (p * 1000.0) as usize / 1000];
        let mut out = serde_json::json!({
            "p50_ms": pct(0.5), "p90_ms": pct(0.9), "p99_ms": pct(0.99), "max_ms": lat[lat.len() - 1],
            "p99_over_p50": pct(0.99) / pct(0.5), "overtaken_fraction": overtaken(self.spans.iter().map(|s| s.1)),
            "latencies_ms": lat,
        });
        if !self.cycles.is_empty() {
            // Each RPC's share of the cycle, and where later cycles overtake earlier ones: the
            // overtaken fraction at each reply (it can only grow where a phase reorders).
            let ms = |f: &dyn Fn(&Cycle) -> Duration| -> Vec<f64> {
                self.cycles.iter().map(|c| f(c).as_secs_f64() * 1000.0).collect()
            };
            let phases = serde_json::json!({
                "exec": p50_p99(&mut ms(&|c| c.exec - c.begin)),
                "start": p50_p99(&mut ms(&|c| c.start - c.exec)),
                "wait": p50_p99(&mut ms(&|c| c.wait - c.start)),
                "delete": p50_p99(&mut ms(&|c| c.delete - c.wait)),
            });
            let at = serde_json::json!({
                "exec": overtaken(self.cycles.iter().map(|c| c.exec)),
                "start": overtaken(self.cycles.iter().map(|c| c.start)),
                "wait": overtaken(self.cycles.iter().map(|c| c.wait)),
                "delete": overtaken(self.cycles.iter().map(|c| c.delete)),
            });
            merge(&mut out, serde_json::json!({"phases_ms": phases, "overtaken_at": at}));
        }
        out
    }
}

/// CLOCK_MONOTONIC now, in seconds: the clock `Instant` reads (and `perf record -k
/// CLOCK_MONOTONIC` stamps with), so per-cycle times can be lined up with a kernel trace.
fn monotonic_s() -> f64 {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).unwrap();
    ts.tv_sec() as f64 + ts.tv_nsec() as f64 / 1e9
}

/// With `SHIM_LOAD_CYCLES=PATH`, every cycle's reply times (CLOCK_MONOTONIC seconds) and pid,
/// one JSON line each, for lining up with a kernel trace of the runtime's processes (the
/// runc fork and exit times; see hack/exec-phases.py).
fn write_cycles(lat: &Latencies, epoch_mono_s: f64, shim_pid: u32, prefix: &str) {
    let Some(path) = std::env::var_os("SHIM_LOAD_CYCLES") else { return };
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    let t = |d: Duration| epoch_mono_s + d.as_secs_f64();
    for (i, c) in lat.cycles.iter().enumerate() {
        let line = serde_json::json!({
            "i": i, "exec_id": format!("{prefix}{i}"), "pid": c.pid, "shim_pid": shim_pid,
            "t_begin": t(c.begin), "t_exec": t(c.exec), "t_start": t(c.start), "t_wait": t(c.wait),
            "t_delete": t(c.delete),
        });
        writeln!(f, "{line}").unwrap();
    }
}

/// One Exec+Start+Wait+Delete cycle; `true` in the container.
async fn exec_cycle(client: &TaskClient, id: &str, exec_id: &str, epoch: Instant) -> Cycle {
    let begin = epoch.elapsed();
    client.exec(ctx(), &req::exec(id, exec_id, &["true"])).await.unwrap();
    let exec = epoch.elapsed();
    let pid = client.start(ctx(), &req::start(id, exec_id)).await.unwrap().pid;
    let start = epoch.elapsed();
    let w = client.wait(ctx(), &req::wait(id, exec_id)).await.unwrap();
    let wait = epoch.elapsed();
    assert_eq!(w.exit_status, 0, "exec {exec_id} exited {}", w.exit_status);
    client.delete(ctx(), &req::delete(id, exec_id)).await.unwrap();
    Cycle { begin, exec, start, wait, delete: epoch.elapsed(), pid }
}

/// Runs `total` cycles, `inflight` at a time (a new one starts as soon as one ends), and returns
/// each one's span, in start order. `on_step` runs every `step` completions.
///
/// Each of the `inflight` workers has its own connection, with one request at a time on it: the
/// Rust ttrpc client may put concurrent requests of one connection on the wire out of stream-id
/// order, which Go's ttrpc server rejects ("StreamID cannot be re-used and must increment").
async fn run_cycles(
    t: &Target,
    prefix: &str,
    inflight: u64,
    total: u64,
    step: u64,
    mut on_step: impl FnMut(u64),
) -> Latencies {
    let (epoch, epoch_mono_s) = (Instant::now(), monotonic_s());
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..inflight.min(total) {
        let client = connect(&t.address).await;
        let (id, prefix, next, tx) = (t.id.clone(), prefix.to_owned(), next.clone(), tx.clone());
        workers.spawn(async move {
            loop {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if n >= total {
                    break;
                }
                let cycle = exec_cycle(&client, &id, &format!("{prefix}{n}"), epoch).await;
                let _ = tx.send((usize::try_from(n).unwrap(), cycle));
            }
        });
    }
    drop(tx);
    // The soak keeps only the spans (100 000 cycles).
    let keep = step == 0;
    let mut spans = vec![(Duration::ZERO, Duration::ZERO); usize::try_from(total).unwrap()];
    let mut cycles = vec![Cycle::default(); if keep { spans.len() } else { 0 }];
    let mut done = 0u64;
    while let Some((i, c)) = rx.recv().await {
        spans[i] = (c.begin, c.delete);
        if keep {
            cycles[i] = c;
        }
        done += 1;
        if step > 0 && done.is_multiple_of(step) {
            on_step(done);
        }
    }
    while let Some(r) = workers.join_next().await {
        r.unwrap();
    }
    assert_eq!(done, total, "a worker failed");
    let lat = Latencies { spans, cycles };
    if keep && prefix == "e" {
        write_cycles(&lat, epoch_mono_s, t.pid, prefix);
    }
    lat
}

/// Exec storm against one shim: shim CPU per exec, throughput, latency spread.
async fn exec(args: &[String]) -> serde_json::Value {
    let (inflight, total, warmup) =
        (arg(args, "--inflight", 100), arg(args, "--total", 1000), arg(args, "--warmup", 100));
    let t = Target::new(TestEnv::new().await, &[]).await;
    run_cycles(&t, "w", inflight.min(warmup), warmup, 0, |_| {}).await;
    let threads_before = threads(t.pid);
    let (cpu0, (_, child0), wall0) = (schedstat_ns(t.pid), stat_cpu_ns(t.pid), Instant::now());
    let (user0, sys0) = user_sys_ns(t.pid);
    let (runq0, client0, sw0, machine0) = (runqueue_ns(t.pid), self_cpu_ns(), ctxt_switches(t.pid), machine_jiffies());
    let lat = run_cycles(&t, "e", inflight, total, 0, |_| {}).await;
    let wall = wall0.elapsed();
    let (cpu1, (_, child1)) = (schedstat_ns(t.pid), stat_cpu_ns(t.pid));
    let (user1, sys1) = user_sys_ns(t.pid);
    let (runq1, client1, sw1, machine1) = (runqueue_ns(t.pid), self_cpu_ns(), ctxt_switches(t.pid), machine_jiffies());
    let (idle, all) = (machine1.0.saturating_sub(machine0.0), machine1.1.saturating_sub(machine0.1));
    let mut out = serde_json::json!({
        "mode": "exec", "inflight": inflight, "total": total,
        "shim_cpu_ms_per_exec": cpu1.saturating_sub(cpu0) as f64 / total as f64 / 1e6,
        "runtime_cpu_ms_per_exec": (child1 - child0) as f64 / total as f64 / 1e6,
        "shim_user_ms_per_exec": (user1 - user0) as f64 / total as f64 / 1e6,
        "shim_sys_ms_per_exec": (sys1 - sys0) as f64 / total as f64 / 1e6,
        "execs_per_s": total as f64 / wall.as_secs_f64(),
        // Time the shim's threads were runnable but waiting for a CPU (schedstat): under a
        // storm, the shim's part of the latency that is the machine's, not the shim's work.
        "shim_runqueue_ms_per_exec": runq1.saturating_sub(runq0) as f64 / total as f64 / 1e6,
        // Context switches of the shim's threads (voluntary: it had nothing left to do;
        // involuntary: preempted), i.e. how often it woke up.
        "shim_switches_per_exec": sw1.saturating_sub(sw0) as f64 / total as f64,
        // The machine's idle share over the run (/proc/stat): CPU a run left unused, which
        // tells a throughput lost to idling from one lost to other work on a shared machine.
        "machine_idle_fraction": idle as f64 / all.max(1) as f64,
        // This driver's own CPU (it shares the machine with the shim and runc).
        "client_cpu_ms_per_exec": client1.saturating_sub(client0) as f64 / total as f64 / 1e6,
        "threads_before": threads_before, "threads_after": threads(t.pid), "fds": fds(t.pid),
        "rss_bytes": memory(t.pid).get("Rss").copied().unwrap_or(0),
    });
    merge(&mut out, lat.summary());
    t.stop().await;
    out
}

/// The runc state root of the container (Options.root, under which shims add the namespace).
fn runc_root_of(env: &TestEnv, id: &str) -> PathBuf {
    let root = env.runc_root();
    [root.join(shim_tests::NAMESPACE), root.clone()]
        .into_iter()
        .find(|r| r.join(id).exists())
        .unwrap_or_else(|| panic!("no runc state of {id} under {}", root.display()))
}

/// The floor: `runc exec` run directly, `inflight` at a time, against a container of the shim.
async fn runc(args: &[String]) -> serde_json::Value {
    let (inflight, total) = (arg(args, "--inflight", 100), arg(args, "--total", 1000));
    let t = Target::new(TestEnv::new().await, &[]).await;
    let root = runc_root_of(&t.env, &t.id);
    let spec = t.env.dir.join("exec-process.json");
    let process = req::process_spec(&["true"]);
    std::fs::write(&spec, &process.value).unwrap();
    let sem = Arc::new(tokio::sync::Semaphore::new(usize::try_from(inflight).unwrap()));
    let cpu0 = children_cpu_ns();
    let wall0 = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for n in 0..total {
        let permit = sem.clone().acquire_owned().await.unwrap();
        let (root, spec, id) = (root.clone(), spec.clone(), t.id.clone());
        set.spawn(async move {
            let start = wall0.elapsed();
            let status = tokio::process::Command::new("runc")
                .arg("--root")
                .arg(&root)
                .args(["exec", "--process"])
                .arg(&spec)
                .arg(&id)
                .stdin(std::process::Stdio::null())
                .status()
                .await
                .unwrap();
            assert!(status.success(), "runc exec {n}: {status}");
            drop(permit);
            (usize::try_from(n).unwrap(), start, wall0.elapsed())
        });
    }
    let mut spans = vec![(Duration::ZERO, Duration::ZERO); usize::try_from(total).unwrap()];
    while let Some(r) = set.join_next().await {
        let (i, s, e) = r.unwrap();
        spans[i] = (s, e);
    }
    let wall = wall0.elapsed();
    let mut out = serde_json::json!({
        "mode": "runc", "inflight": inflight, "total": total,
        "runtime_cpu_ms_per_exec": (children_cpu_ns() - cpu0) as f64 / total as f64 / 1e6,
        "execs_per_s": total as f64 / wall.as_secs_f64(),
    });
    merge(&mut out, Latencies { spans, cycles: Vec::new() }.summary());
    t.stop().await;
    out
}

/// CPU of this process's reaped children (the runc floor's runc processes), in nanoseconds.
fn children_cpu_ns() -> u64 {
    stat_cpu_ns(std::process::id()).1
}

/// Long soak: RSS, fds and maps every `step` execs, and the slope per 10 000 execs after the
/// first step (allocator warm-up). The cycles run in batches of `step` (`inflight` at a time,
/// each batch on new connections); each sample is taken between batches, with nothing in
/// flight and the batch's events delivered, so it shows what the shim keeps, not what a
/// storm holds at that moment.
async fn soak(args: &[String]) -> serde_json::Value {
    let (inflight, total, step) =
        (arg(args, "--inflight", 50), arg(args, "--total", 100_000), arg(args, "--step", 10_000).max(1));
    let t = Target::new(TestEnv::new().await, &[]).await;
    let pid = t.pid;
    let mut samples = Vec::new();
    let sample = |n: u64| {
        let m = memory(pid);
        serde_json::json!({"execs": n, "rss": m.get("Rss").copied().unwrap_or(0),
            "anon": m.get("Anonymous").copied().unwrap_or(0), "fds": fds(pid), "maps": maps(pid),
            "threads": threads(pid)})
    };
    samples.push(sample(0));
    let wall0 = Instant::now();
    let mut done = 0;
    while done < total {
        let batch = step.min(total - done);
        run_cycles(&t, &format!("s{done}-"), inflight, batch, 0, |_| {}).await;
        done += batch;
        // Events of the batch out, connections closed on the shim's side.
        let events = 3 * done;
        for _ in 0..100 {
            if t.env.events.count() as u64 >= events {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let s = sample(done);
        eprintln!("soak: {s}");
        samples.push(s);
    }
    // Least squares over the samples after the first step: (slope, its standard error), per
    // 10 000 execs. The error says whether a slope is a trend or the samples' noise.
    let fit = |key: &str| -> (f64, f64) {
        let pts: Vec<(f64, f64)> = samples
            .iter()
            .filter(|s| s["execs"].as_u64().unwrap() >= step)
            .map(|s| (s["execs"].as_f64().unwrap() / 10_000.0, s[key].as_f64().unwrap()))
            .collect();
        if pts.len() < 2 {
            return (0.0, 0.0);
        }
        let n = pts.len() as f64;
        let (mx, my) = (pts.iter().map(|p| p.0).sum::<f64>() / n, pts.iter().map(|p| p.1).sum::<f64>() / n);
        let cov: f64 = pts.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
        let var: f64 = pts.iter().map(|p| (p.0 - mx).powi(2)).sum();
        let b = cov / var;
        let resid: f64 = pts.iter().map(|p| (p.1 - my - b * (p.0 - mx)).powi(2)).sum();
        let stderr = if pts.len() > 2 { (resid / (n - 2.0) / var).sqrt() } else { 0.0 };
        (b, stderr)
    };
    let (rss, anon, fds_fit, maps_fit) = (fit("rss"), fit("anon"), fit("fds"), fit("maps"));
    let out = serde_json::json!({
        "mode": "soak", "inflight": inflight, "total": total, "step": step,
        "seconds": wall0.elapsed().as_secs_f64(),
        "rss_slope_bytes_per_10k": rss.0, "anon_slope_bytes_per_10k": anon.0,
        "fds_slope_per_10k": fds_fit.0, "maps_slope_per_10k": maps_fit.0,
        "rss_slope_stderr": rss.1, "anon_slope_stderr": anon.1, "samples": samples,
    });
    t.stop().await;
    out
}

/// Idle density: `containers` running `sleep`, one shim each (or one per pod of a pause and
/// three containers with `--pod`); memory, threads, fds and CPU of the shims over `seconds`.
async fn idle(args: &[String]) -> serde_json::Value {
    let (n, seconds, pod) =
        (arg(args, "--containers", 10), arg(args, "--seconds", 60), args.iter().any(|a| a == "--pod"));
    let env = TestEnv::new().await;
    let mut shims: Vec<(TaskClient, u32, Vec<String>)> = Vec::new();
    let wall0 = Instant::now();
    let mut start_cpu_ns = 0u64;
    let per_pod = if pod { 4 } else { 1 };
    for p in 0..n.div_ceil(per_pod) {
        let sandbox = format!("idle{}-{p}", std::process::id());
        let mut ids = Vec::new();
        let mut client_pid: Option<(TaskClient, u32)> = None;
        for c in 0..per_pod.min(n - p * per_pod) {
            let id = if c == 0 { sandbox.clone() } else { format!("{sandbox}-c{c}") };
            let mut ann = vec![("io.kubernetes.cri.sandbox-id", sandbox.as_str())];
            ann.push(("io.kubernetes.cri.container-type", if c == 0 { "sandbox" } else { "container" }));
            let bundle = env.bundle(&id, &["sleep", "1000000"], if pod { &ann } else { &[] });
            let address = start_shim(&env, &id, &bundle);
            env.track_container(&id, &bundle);
            if client_pid.is_none() {
                let client = connect(&address).await;
                let pid = client.connect(ctx(), &api::ConnectRequest::new()).await.unwrap().shim_pid;
                env.track_shim(pid, Path::new(address.trim_start_matches("unix://")));
                client_pid = Some((client, pid));
            }
            let (client, pid) = client_pid.as_ref().unwrap();
            let before = schedstat_ns(*pid);
            create_container(&env, client, &id, &bundle).await;
            start_cpu_ns += schedstat_ns(*pid) - before;
            ids.push(id);
        }
        let (client, pid) = client_pid.unwrap();
        shims.push((client, pid, ids));
    }
    let start_wall = wall0.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pids: Vec<u32> = shims.iter().map(|s| s.1).collect();
    let distinct: std::collections::BTreeSet<u32> = pids.iter().copied().collect();
    let sum = |f: &dyn Fn(u32) -> u64| distinct.iter().map(|p| f(*p)).sum::<u64>();
    let (cpu0, sw0) = (sum(&schedstat_ns), sum(&ctxt_switches));
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let (cpu1, sw1) = (sum(&schedstat_ns), sum(&ctxt_switches));
    let k = distinct.len() as f64;
    let mem = |key: &str| sum(&|p| memory(p).get(key).copied().unwrap_or(0)) as f64 / k;
    let out = serde_json::json!({
        "mode": "idle", "containers": n, "pod": pod, "shims": distinct.len(), "seconds": seconds,
        "pss_bytes_per_shim": mem("Pss"), "anon_bytes_per_shim": mem("Anonymous"), "rss_bytes_per_shim": mem("Rss"),
        "threads_per_shim": sum(&|p| threads(p) as u64) as f64 / k,
        "fds_per_shim": sum(&|p| fds(p) as u64) as f64 / k,
        "idle_cpu_us_per_shim_per_min": cpu1.saturating_sub(cpu0) as f64 / k / 1000.0 * 60.0 / seconds as f64,
        "wakeups_per_shim_per_min": sw1.saturating_sub(sw0) as f64 / k * 60.0 / seconds as f64,
        "start_shim_cpu_ms_per_container": start_cpu_ns as f64 / n as f64 / 1e6,
        "start_wall_ms_per_container": start_wall.as_secs_f64() * 1000.0 / n as f64,
    });
    for (client, _, ids) in shims {
        for id in ids.iter().rev() {
            let _ = client.kill(ctx(), &req::kill(id, "", 9)).await;
            let _ = client.wait(ctx(), &req::wait(id, "")).await;
            let _ = client.delete(ctx(), &req::delete(id, "")).await;
        }
        let id = ids[0].clone();
        let _ = client.shutdown(ctx(), &req::id_req::<api::ShutdownRequest>(|r| r.id = id)).await;
    }
    drop(env);
    out
}

fn merge(into: &mut serde_json::Value, from: serde_json::Value) {
    if let (Some(a), serde_json::Value::Object(b)) = (into.as_object_mut(), from) {
        a.extend(b);
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(mode) = args.first().cloned() else {
        eprintln!("usage: shim-load stats|exec|runc|soak|idle [options] (see the source's header)");
        std::process::exit(2);
    };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let out = rt.block_on(async {
        let run = async {
            match mode.as_str() {
                "stats" => stats(&args).await,
                "exec" => exec(&args).await,
                "runc" => runc(&args).await,
                "soak" => soak(&args).await,
                "idle" => idle(&args).await,
                other => {
                    eprintln!("shim-load: unknown mode {other}");
                    std::process::exit(2);
                }
            }
        };
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap();
        let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).unwrap();
        tokio::select! {
            out = run => Some(out),
            // Dropping the run drops its TestEnv: shims killed, containers deleted, dirs removed.
            _ = term.recv() => None,
            _ = int.recv() => None,
        }
        .map_or_else(|| serde_json::json!({"interrupted": true}), |v| v)
    });
    if out.get("interrupted").is_some() {
        eprintln!("shim-load: interrupted, cleaned up");
        std::process::exit(130);
    }
    let mut out = out;
    merge(&mut out, serde_json::json!({"shim": shim_tests::shim_binary().display().to_string()}));
    println!("{out}");
}
