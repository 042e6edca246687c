//! The one-shot actions: `start` (spawn the daemon, print its address) and `delete` (clean up
//! after a shim that is gone, print a DeleteResponse). SPEC §1.3 and §1.5.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};
use containerd_shim_protos::api::DeleteResponse;
use protobuf::Message;
use sha2::{Digest, Sha256};
use shim_runtime::oci::Runtime;
use shim_runtime::options::{validate_id, BundleSpec, RuncOptions};
use shim_runtime::reaper::Reaper;
use shim_runtime::sys;

use crate::cli::Flags;

/// Where shim sockets live (containerd's compile-time state dir; fixed by the protocol).
pub const SOCKET_DIR: &str = "/run/containerd/s";
/// Annotations that group containers into one shim, in priority order.
const GROUP_LABELS: [&str; 2] = ["io.containerd.runc.v2.group", "io.kubernetes.cri.sandbox-id"];
/// Exit status `delete` reports: 128 + SIGKILL.
const KILLED_STATUS: u32 = 137;

/// Lexically cleans a path like Go's `filepath.Clean`.
pub fn clean_path(p: &str) -> String {
    let absolute = p.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for c in Path::new(p).components() {
        match c {
            Component::Normal(s) => parts.push(s.to_str().unwrap_or("")),
            Component::ParentDir => {
                if parts.last().is_some_and(|l| *l != "..") {
                    parts.pop();
                } else if !absolute {
                    parts.push("..");
                }
            }
            _ => {}
        }
    }
    let joined = parts.join("/");
    match (absolute, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".into(),
        (false, false) => joined,
    }
}

/// The socket path for a shim: `/run/containerd/s/<sha256(join(address, ns, group))>`.
pub fn socket_path(address: &str, namespace: &str, group: &str) -> PathBuf {
    let joined = clean_path(&format!("{address}/{namespace}/{group}"));
    let digest = Sha256::digest(joined.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    Path::new(SOCKET_DIR).join(hex)
}

/// The grouping key: the first group annotation present, else the container id.
fn group_key(bundle: &Path, id: &str) -> Result<String> {
    let spec = BundleSpec::load(bundle).context("read config.json")?;
    Ok(GROUP_LABELS.iter().find_map(|k| spec.annotation(k).filter(|v| !v.is_empty())).unwrap_or(id).to_owned())
}

fn listen(path: &Path) -> Result<Option<UnixListener>> {
    std::fs::create_dir_all(SOCKET_DIR).with_context(|| format!("mkdir {SOCKET_DIR}"))?;
    // Mode 0600 from the start: no window where another user could connect.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let first = UnixListener::bind(path);
    let result = match first {
        Ok(l) => Ok(Some(l)),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            if dial(path) {
                Ok(None)
            } else {
                let _ = std::fs::remove_file(path);
                UnixListener::bind(path).map(Some)
            }
        }
        Err(e) => Err(e),
    };
    nix::sys::stat::umask(old);
    result.with_context(|| format!("listen on {}", path.display()))
}

fn dial(path: &Path) -> bool {
    // A blocking connect on a unix socket answers at once: refused if nobody listens.
    UnixStream::connect(path).is_ok()
}

/// The address line in the format the calling containerd expects: plain for 1.x, the v3 JSON
/// for 2.x. `SHIM_BOOTSTRAP_FORMAT=plain|json` overrides the detection.
fn address_line(address: &str) -> String {
    let json = match std::env::var("SHIM_BOOTSTRAP_FORMAT").as_deref() {
        Ok("json") => true,
        Ok("plain") => false,
        _ => parent_containerd_major().is_some_and(|m| m >= 2),
    };
    if json {
        serde_json::json!({"version": 3, "address": address, "protocol": "ttrpc"}).to_string()
    } else {
        address.to_owned()
    }
}

/// The major version of the containerd that ran us, from `<parent exe> --version`.
fn parent_containerd_major() -> Option<u32> {
    let ppid = nix::unistd::getppid();
    let exe = std::fs::read_link(format!("/proc/{ppid}/exe")).ok()?;
    if !exe.file_name()?.to_str()?.contains("containerd") {
        return None;
    }
    let out = capture_output(&exe, &["--version"]).ok()?;
    let text = String::from_utf8_lossy(&out);
    // "containerd github.com/containerd/containerd 1.6.20~ds1 ..." or "... v2.1.5 ..."
    text.split_whitespace().nth(2).and_then(|v| v.trim_start_matches('v').split('.').next()?.parse().ok())
}

/// Runs a short command through the reaper on a throwaway runtime and returns its stdout.
pub fn capture_output(program: &Path, args: &[&str]) -> Result<Vec<u8>> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let reaper = Reaper::new();
        let reap = reaper.run()?;
        let task = tokio::spawn(reap);
        let r = tokio::time::timeout(Duration::from_secs(5), shim_runtime::oci::capture(&reaper, program, args)).await;
        task.abort();
        Ok(r.context("timed out")??)
    })
}

/// `start`: spawn the daemon (or join the group's), write `address`, print the address.
pub fn start(flags: &Flags) -> Result<()> {
    if flags.namespace.is_empty() {
        bail!("shim namespace cannot be empty");
    }
    validate_id(&flags.id).map_err(anyhow::Error::msg)?;
    let bundle = std::env::current_dir().context("cwd")?;
    let mut options_bytes = Vec::new();
    // containerd writes the runtime options on stdin; read them so its writer never blocks.
    let _ = std::io::stdin().read_to_end(&mut options_bytes);
    let group = group_key(&bundle, &flags.id)?;
    let path = socket_path(&flags.address, &flags.namespace, &group);
    let address = format!("unix://{}", path.display());
    let Some(listener) = listen(&path)? else {
        // A shim for this group is running: join it.
        std::fs::write(bundle.join("address"), &address).context("write address")?;
        print!("{}", address_line(&address));
        return Ok(());
    };
    let spawned = spawn_daemon(flags, &bundle, OwnedFd::from(listener));
    let pid = match spawned {
        Ok(pid) => pid,
        Err(e) => {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
    };
    adjust_oom_score(pid);
    std::fs::write(bundle.join("address"), &address).context("write address")?;
    print!("{}", address_line(&address));
    std::io::stdout().flush()?;
    Ok(())
}

fn spawn_daemon(flags: &Flags, bundle: &Path, listener: OwnedFd) -> Result<u32> {
    let exe = std::env::current_exe().context("current exe")?;
    let mut cmd = Command::new(exe);
    cmd.arg("-namespace").arg(&flags.namespace).arg("-id").arg(&flags.id).arg("-address").arg(&flags.address);
    if flags.debug {
        cmd.arg("-debug");
    }
    cmd.current_dir(bundle).process_group(0).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    sys::pass_fd(&mut cmd, listener, 3);
    let child = cmd.spawn().context("spawn shim daemon")?;
    // The daemon outlives us and is reparented to the nearest subreaper; we never wait for it.
    Ok(child.id())
}

/// Daemon `oom_score_adj` = containerd's + 1, capped at 1000 (SPEC §1.3 step 7).
fn adjust_oom_score(pid: u32) {
    let ppid = nix::unistd::getppid();
    let parent: i32 = std::fs::read_to_string(format!("/proc/{ppid}/oom_score_adj"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    let _ = std::fs::write(format!("/proc/{pid}/oom_score_adj"), (parent + 1).min(1000).to_string());
}

/// `delete`: force-delete the runtime container, unmount the rootfs, print a DeleteResponse
/// with status 137. Idempotent; errors are only logged (to stderr, which containerd logs).
pub fn delete(flags: &Flags) -> Result<()> {
    validate_id(&flags.id).map_err(anyhow::Error::msg)?;
    if flags.namespace.is_empty() {
        bail!("shim namespace cannot be empty");
    }
    let cwd = std::env::current_dir().context("cwd")?;
    let bundle = cwd.parent().map_or_else(|| cwd.clone(), |p| p.join(&flags.id));
    let opts = RuncOptions::read_from_bundle(&bundle);
    let root = opts.root_for(&flags.namespace);
    let log = bundle.join("log.json");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let deleted = rt.block_on(async {
        let reaper = Reaper::new();
        let task = tokio::spawn(reaper.run()?);
        let runtime = Runtime::new(opts.binary(), root, opts.systemd_cgroup, reaper);
        let log = log.exists().then_some(log.as_path());
        let r = tokio::time::timeout(Duration::from_secs(4), runtime.delete(&flags.id, log, true)).await;
        task.abort();
        Ok::<_, std::io::Error>(r)
    })?;
    match deleted {
        Ok(Ok(())) => {}
        Ok(Err(e)) => eprintln!("runtime delete of {}: {e}", flags.id),
        Err(_) => eprintln!("runtime delete of {}: timed out", flags.id),
    }
    if let Err(e) = shim_runtime::mount::unmount_all(&bundle.join("rootfs")) {
        eprintln!("unmount rootfs: {e}");
    }
    remove_dead_sockets(flags, &bundle);
    let pid =
        std::fs::read_to_string(bundle.join("init.pid")).ok().and_then(|s| s.trim().parse::<u32>().ok()).unwrap_or(0);
    let mut resp = DeleteResponse::new();
    resp.pid = pid;
    resp.exit_status = KILLED_STATUS;
    resp.exited_at = protobuf::MessageField::some(shim_events::publisher::timestamp(SystemTime::now()));
    std::io::stdout().write_all(&resp.write_to_bytes()?)?;
    std::io::stdout().flush()?;
    Ok(())
}

/// Removes the socket of a shim that is gone (SIGKILLed shims cannot remove their own): the one
/// named in `<bundle>/address` and the one derived from the flags. A socket something still
/// listens on (a grouped shim serving other containers) is kept.
fn remove_dead_sockets(flags: &Flags, bundle: &Path) {
    let mut paths = vec![socket_path(&flags.address, &flags.namespace, &flags.id)];
    if let Ok(a) = std::fs::read_to_string(bundle.join("address")) {
        paths.push(PathBuf::from(a.trim().trim_start_matches("unix://")));
    }
    for p in paths {
        // Only sockets in the shim socket dir, never a path the address file could point elsewhere.
        let is_socket = std::fs::symlink_metadata(&p).is_ok_and(|m| m.file_type().is_socket());
        if p.parent() != Some(Path::new(SOCKET_DIR)) || !is_socket || dial(&p) {
            continue;
        }
        if let Err(e) = std::fs::remove_file(&p) {
            eprintln!("remove shim socket {}: {e}", p.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleans_like_go() {
        assert_eq!(
            clean_path("/run/containerd/containerd.sock/default/c1"),
            "/run/containerd/containerd.sock/default/c1"
        );
        assert_eq!(clean_path("/a//b/./c/../d/"), "/a/b/d");
        assert_eq!(clean_path("a/../../b"), "../b");
        assert_eq!(clean_path(""), ".");
    }

    #[test]
    fn socket_hash_matches_containerd() {
        // sha256("/run/containerd/containerd.sock/default/test"), as containerd computes it.
        let p = socket_path("/run/containerd/containerd.sock", "default", "test");
        let expect: String = Sha256::digest(b"/run/containerd/containerd.sock/default/test")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(p, Path::new(SOCKET_DIR).join(expect));
        assert!(p.as_os_str().len() < 106);
    }
}
