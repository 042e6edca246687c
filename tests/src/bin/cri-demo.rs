//! `cri-demo SOCK HANDLER...`: for each CRI runtime handler, run a Kubernetes-style pod of
//! three containers through containerd's CRI plugin at SOCK (as the kubelet does: RunPodSandbox,
//! CreateContainer/StartContainer, ExecSync), print the shim serving it and that shim's memory
//! (PSS and RSS from /proc/PID/smaps_rollup), then remove the pod. Used by hack/demo.sh on a
//! containerd started with `CONTAINERD_CRI=1` (handlers from hack/cri-setup.sh).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::ExitCode;

use shim_tests::cri::{connect, v1 as cri, IMAGE};

fn kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

fn ppid(pid: u32) -> u32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit_once(") ").and_then(|(_, r)| r.split(' ').nth(1)?.parse().ok()).unwrap_or(0)
}

/// The pid of a container's init, from ContainerStatus's verbose info (`{"pid": N, ...}`).
fn task_pid(info: &std::collections::HashMap<String, String>) -> u32 {
    info.get("info")
        .and_then(|j| serde_json::from_str::<serde_json::Value>(j).ok())
        .and_then(|v| v.get("pid")?.as_u64())
        .and_then(|p| u32::try_from(p).ok())
        .unwrap_or(0)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        eprintln!("usage: cri-demo SOCK HANDLER...");
        return ExitCode::from(2);
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let client = connect(&rt, PathBuf::from(&args[0]));
    let logs = std::env::temp_dir().join(format!("cri-demo-{}", std::process::id()));
    let mut failed = false;
    let mut rows = vec![];
    for handler in &args[1..] {
        let name = format!("demo-{handler}");
        let _ = std::fs::create_dir_all(logs.join(&name));
        let host = cri::NamespaceOption { network: cri::NamespaceMode::Node as i32, ..Default::default() };
        let pod = cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: name.clone(),
                uid: format!("uid-{name}"),
                namespace: "default".into(),
                attempt: 0,
            }),
            log_directory: logs.join(&name).display().to_string(),
            linux: Some(cri::LinuxPodSandboxConfig {
                cgroup_parent: format!("/cri-demo-{}/{name}", std::process::id()),
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: Some(host),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let r = rt.block_on(async {
            let mut c = client.clone();
            let req = cri::RunPodSandboxRequest { config: Some(pod.clone()), runtime_handler: handler.clone() };
            let pod_id = c.run_pod_sandbox(req).await?.into_inner().pod_sandbox_id;
            println!("  $ RunPodSandbox {name} (runtime handler {handler}) -> {}", &pod_id[..12]);
            let mut ids = vec![];
            for k in ["web", "sidecar", "logger"] {
                let config = cri::ContainerConfig {
                    metadata: Some(cri::ContainerMetadata { name: k.into(), attempt: 0 }),
                    image: Some(cri::ImageSpec { image: IMAGE.into(), ..Default::default() }),
                    command: vec!["sh".into(), "-c".into(), format!("echo {k} up; while :; do sleep 1; done")],
                    log_path: format!("{k}.log"),
                    ..Default::default()
                };
                let req = cri::CreateContainerRequest {
                    pod_sandbox_id: pod_id.clone(),
                    config: Some(config),
                    sandbox_config: Some(pod.clone()),
                };
                let id = c.create_container(req).await?.into_inner().container_id;
                c.start_container(cri::StartContainerRequest { container_id: id.clone() }).await?;
                let req = cri::ExecSyncRequest {
                    container_id: id.clone(),
                    cmd: vec!["sh".into(), "-c".into(), format!("echo hello from {k}")],
                    timeout: 30,
                };
                let out = c.exec_sync(req).await?.into_inner();
                println!(
                    "  $ CreateContainer+StartContainer {k} -> {}; ExecSync: {:?} (exit {})",
                    &id[..12],
                    String::from_utf8_lossy(&out.stdout).trim(),
                    out.exit_code
                );
                ids.push(id);
            }
            let req = cri::ContainerStatusRequest { container_id: ids[0].clone(), verbose: true };
            let pid = task_pid(&c.container_status(req).await?.into_inner().info);
            let shim = ppid(pid);
            let exe = std::fs::read_link(format!("/proc/{shim}/exe")).unwrap_or_default();
            let (pss, rss) = (kib(shim, "Pss:"), kib(shim, "Rss:"));
            let threads = std::fs::read_dir(format!("/proc/{shim}/task")).map(|d| d.count()).unwrap_or(0);
            println!("  shim pid {shim} ({}) serves the pause + 3 containers", exe.display());
            rows.push(format!(
                "  {handler:<10} {pss:>8} KiB PSS {rss:>8} KiB RSS {threads:>3} threads   {}",
                exe.display()
            ));
            c.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: pod_id.clone() }).await?;
            c.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: pod_id }).await?;
            println!("  $ StopPodSandbox + RemovePodSandbox");
            Ok::<_, tonic::Status>(())
        });
        if let Err(e) = r {
            eprintln!("  pod with handler {handler} failed: {e}");
            failed = true;
        }
    }
    println!("  shim memory per pod (pause + 3 containers, after one ExecSync each; PSS divides shared pages");
    println!("  among the processes mapping them, so other shims of the same binary lower it; RSS does not):");
    for r in rows {
        println!("{r}");
    }
    let _ = std::fs::remove_dir_all(&logs);
    for (mnt, _) in shim_tests::cri::cgroup_mounts() {
        let root = std::path::Path::new(&mnt).join(format!("cri-demo-{}", std::process::id()));
        if root.exists() {
            let _ = std::process::Command::new("find")
                .arg(&root)
                .args(["-depth", "-type", "d", "-exec", "rmdir", "{}", ";"])
                .status();
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
