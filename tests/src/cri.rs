//! A private containerd with its CRI plugin (hack/containerd-up.sh with CONTAINERD_CRI=1) and a
//! CRI client, the kubelet's API: `k8s-cri`'s generated v1 types and tonic client over
//! containerd's socket.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_debug_implementations)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use hyper_util::rt::TokioIo;
use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::containerd::{containerd_down, repo, run_ok, shims_of, Version};
use crate::shim_binary;

pub use k8s_cri::v1;

/// The busybox image (hack/mkimage.sh) imported into k8s.io by hack/cri-setup.sh.
pub const IMAGE: &str = "docker.io/library/shimtest:latest";
/// containerd's namespace for CRI.
pub const K8S_NS: &str = "k8s.io";

/// Which shim serves the pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shim {
    /// This project's build.
    Ours,
    /// The containerd version's own Go `containerd-shim-runc-v2`, the reference.
    Go,
}

/// A private containerd with CRI; torn down (hack/containerd-down.sh) on drop, and the pod
/// cgroup parents the test made removed.
pub struct CriContainerd {
    pub tmp: PathBuf,
    pub dir: PathBuf,
    pub version: Version,
    pub shim: Shim,
    shim_dir: Option<PathBuf>,
    /// The first-level cgroup (in every hierarchy) under which the pods' cgroup parents live.
    pub cgroup_root: String,
    pub rt: tokio::runtime::Runtime,
    /// Whether runc's default state dir for k8s.io existed before: the Go shim's `delete` after
    /// a refused Create runs runc with the default root, which makes it.
    default_root_existed: bool,
    pub client: RuntimeServiceClient<Channel>,
    n: AtomicU32,
}

/// A CRI runtime client over the unix socket `sock` (connects lazily, on the first call).
pub fn connect(rt: &tokio::runtime::Runtime, sock: PathBuf) -> RuntimeServiceClient<Channel> {
    rt.block_on(async {
        let ch = Endpoint::try_from("http://[::]:50051").unwrap().connect_with_connector_lazy(tower::service_fn(
            move |_: Uri| {
                let p = sock.clone();
                async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(p).await?)) }
            },
        ));
        RuntimeServiceClient::new(ch)
    })
}

const DEFAULT_K8S_ROOT: &str = "/run/containerd/runc/k8s.io";

static INSTANCE: AtomicU32 = AtomicU32::new(0);

impl CriContainerd {
    pub fn start(version: &str, shim: Shim) -> CriContainerd {
        let version = Version::from_key(version);
        let n = INSTANCE.fetch_add(1, Ordering::SeqCst);
        let tmp = PathBuf::from(format!("/tmp/cri-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(tmp.join("logs")).unwrap();
        let dir = tmp.join("c");
        // No SHIM_DIR: containerd-up uses that version's Go shim.
        let shim_dir = match shim {
            Shim::Ours => Some(shim_binary().parent().unwrap().to_path_buf()),
            Shim::Go => None,
        };
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let client = connect(&rt, dir.join("containerd.sock"));
        let c = CriContainerd {
            cgroup_root: format!("shimcri-{}-{n}", std::process::id()),
            tmp,
            dir,
            version,
            shim,
            shim_dir,
            rt,
            default_root_existed: Path::new(DEFAULT_K8S_ROOT).exists(),
            client,
            n: AtomicU32::new(0),
        };
        c.up();
        eprintln!(
            "cri: containerd {} ({}) with the {} shim ({})",
            c.version.key(),
            c.version.full(),
            if shim == Shim::Ours { "Rust" } else { "Go" },
            std::fs::read_to_string(c.dir.join("shim-path")).unwrap_or_default().trim()
        );
        c
    }

    fn up(&self) {
        let mut up = Command::new(repo().join("hack/containerd-up.sh"));
        up.arg(&self.dir);
        if let Some(d) = &self.shim_dir {
            up.arg(d);
        }
        up.env("CONTAINERD_CRI", "1").env("CONTAINERD_VERSION", self.version.key());
        run_ok(&mut up);
    }

    /// Stops containerd (SIGTERM, as a node's service manager does) and starts it again on the
    /// same dir; pods and shims keep running.
    pub fn restart(&self) {
        let pid: u32 = std::fs::read_to_string(self.dir.join("containerd.pid")).unwrap().trim().parse().unwrap();
        let raw = i32::try_from(pid).unwrap();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), nix::sys::signal::Signal::SIGTERM).unwrap();
        assert!(
            crate::containerd::wait_until(std::time::Duration::from_secs(30), || !crate::alive(pid)),
            "containerd {pid} did not exit"
        );
        self.up();
    }

    pub fn socket(&self) -> String {
        self.dir.join("containerd.sock").display().to_string()
    }

    /// The version's `ctr` in namespace k8s.io, bounded.
    pub fn ctr(&self, args: &[&str]) -> String {
        let ctr = self.version.bin_dir().join("ctr");
        let out = run_ok(
            Command::new("timeout")
                .args(["-k", "5", "60"])
                .arg(ctr)
                .args(["-a", &self.socket(), "-n", K8S_NS])
                .args(args)
                .stdin(Stdio::null()),
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `ctr tasks ls`: id -> (pid, status).
    pub fn tasks(&self) -> HashMap<String, (u32, String)> {
        self.ctr(&["tasks", "ls"])
            .lines()
            .skip(1)
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                Some((f.first()?.to_string(), (f.get(1)?.parse().ok()?, f.get(2)?.to_string())))
            })
            .collect()
    }

    /// Pids of the shim daemons serving this containerd (argv has `-address SOCK`).
    pub fn shims(&self) -> Vec<u32> {
        shims_of(&self.socket()).into_iter().filter(|&pid| crate::alive(pid)).collect()
    }

    /// Runs one CRI call on the runtime.
    pub fn call<F, T>(&self, f: impl FnOnce(RuntimeServiceClient<Channel>) -> F) -> Result<T, tonic::Status>
    where
        F: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let c = self.client.clone();
        self.rt.block_on(async move { f(c).await.map(|r| r.into_inner()) })
    }

    /// A unique name within this containerd.
    pub fn unique(&self, prefix: &str) -> String {
        format!("{prefix}-{}", self.n.fetch_add(1, Ordering::SeqCst))
    }

    /// A pod config: host network unless `own_netns`, its cgroup parent under `cgroup_root`.
    pub fn pod_config(&self, name: &str, own_netns: bool) -> cri::PodSandboxConfig {
        let ns = cri::NamespaceOption {
            network: if own_netns { cri::NamespaceMode::Pod } else { cri::NamespaceMode::Node } as i32,
            pid: cri::NamespaceMode::Container as i32,
            ipc: cri::NamespaceMode::Pod as i32,
            ..Default::default()
        };
        let logs = self.tmp.join("logs").join(name);
        std::fs::create_dir_all(&logs).unwrap();
        cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: name.into(),
                uid: format!("uid-{name}"),
                namespace: "default".into(),
                attempt: 0,
            }),
            // A host-network pod shares the host's UTS namespace: no hostname of its own.
            hostname: if own_netns { name.into() } else { String::new() },
            log_directory: logs.display().to_string(),
            linux: Some(cri::LinuxPodSandboxConfig {
                cgroup_parent: format!("/{}/{name}", self.cgroup_root),
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: Some(ns),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// RunPodSandbox with `handler` ("" = default); returns (pod id, its config).
    pub fn run_pod(
        &self,
        name: &str,
        handler: &str,
        own_netns: bool,
    ) -> Result<(String, cri::PodSandboxConfig), tonic::Status> {
        let config = self.pod_config(name, own_netns);
        let req = cri::RunPodSandboxRequest { config: Some(config.clone()), runtime_handler: handler.into() };
        let id = self.call(|mut c| async move { c.run_pod_sandbox(req).await })?.pod_sandbox_id;
        Ok((id, config))
    }

    /// A container config running `sh -c script` with the log file `<name>.log`.
    pub fn container_config(&self, pod: &cri::PodSandboxConfig, name: &str, script: &str) -> cri::ContainerConfig {
        let ns = pod.linux.as_ref().and_then(|l| l.security_context.as_ref()).and_then(|s| s.namespace_options.clone());
        cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata { name: name.into(), attempt: 0 }),
            image: Some(cri::ImageSpec { image: IMAGE.into(), ..Default::default() }),
            command: vec!["sh".into(), "-c".into(), script.into()],
            log_path: format!("{name}.log"),
            linux: Some(cri::LinuxContainerConfig {
                resources: Some(cri::LinuxContainerResources::default()),
                security_context: Some(cri::LinuxContainerSecurityContext {
                    namespace_options: ns,
                    ..Default::default()
                }),
            }),
            ..Default::default()
        }
    }

    /// CreateContainer with `config` in the pod.
    pub fn create(
        &self,
        pod_id: &str,
        pod: &cri::PodSandboxConfig,
        config: cri::ContainerConfig,
    ) -> Result<String, tonic::Status> {
        let req = cri::CreateContainerRequest {
            pod_sandbox_id: pod_id.into(),
            config: Some(config),
            sandbox_config: Some(pod.clone()),
        };
        Ok(self.call(|mut c| async move { c.create_container(req).await })?.container_id)
    }

    /// CreateContainer + StartContainer of `sh -c script`.
    pub fn start_container(
        &self,
        pod_id: &str,
        pod: &cri::PodSandboxConfig,
        name: &str,
        script: &str,
    ) -> Result<String, tonic::Status> {
        let id = self.create(pod_id, pod, self.container_config(pod, name, script))?;
        let req = cri::StartContainerRequest { container_id: id.clone() };
        self.call(|mut c| async move { c.start_container(req).await })?;
        Ok(id)
    }

    pub fn exec_sync(&self, id: &str, cmd: &[&str]) -> Result<cri::ExecSyncResponse, tonic::Status> {
        let req = cri::ExecSyncRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: 60,
        };
        self.call(|mut c| async move { c.exec_sync(req).await })
    }

    pub fn status(&self, id: &str) -> cri::ContainerStatus {
        let req = cri::ContainerStatusRequest { container_id: id.into(), verbose: false };
        self.call(|mut c| async move { c.container_status(req).await }).unwrap().status.unwrap()
    }

    /// Waits until the container has exited; returns its status.
    pub fn wait_exited(&self, id: &str) -> cri::ContainerStatus {
        let mut last = None;
        let ok = crate::containerd::wait_until(std::time::Duration::from_secs(60), || {
            let s = self.status(id);
            let done = s.state == cri::ContainerState::ContainerExited as i32;
            last = Some(s);
            done
        });
        assert!(ok, "{id} did not exit: {last:?}");
        last.unwrap()
    }

    pub fn stop_container(&self, id: &str, timeout: i64) -> Result<(), tonic::Status> {
        let req = cri::StopContainerRequest { container_id: id.into(), timeout };
        self.call(|mut c| async move { c.stop_container(req).await }).map(|_| ())
    }

    pub fn remove_container(&self, id: &str) -> Result<(), tonic::Status> {
        let req = cri::RemoveContainerRequest { container_id: id.into() };
        self.call(|mut c| async move { c.remove_container(req).await }).map(|_| ())
    }

    /// StopPodSandbox + RemovePodSandbox.
    pub fn remove_pod(&self, id: &str) -> Result<(), tonic::Status> {
        let req = cri::StopPodSandboxRequest { pod_sandbox_id: id.into() };
        self.call(|mut c| async move { c.stop_pod_sandbox(req).await })?;
        let req = cri::RemovePodSandboxRequest { pod_sandbox_id: id.into() };
        self.call(|mut c| async move { c.remove_pod_sandbox(req).await }).map(|_| ())
    }

    /// The bundle containerd made for a task.
    pub fn bundle(&self, id: &str) -> PathBuf {
        self.dir.join("state/io.containerd.runtime.v2.task").join(K8S_NS).join(id)
    }

    /// Absolute cgroup directories of `pid` (one per mounted hierarchy).
    pub fn cgroup_dirs(pid: u32) -> Vec<PathBuf> {
        let Ok(cg) = std::fs::read_to_string(format!("/proc/{pid}/cgroup")) else { return vec![] };
        let mounts = cgroup_mounts();
        let mut out = vec![];
        for line in cg.lines() {
            let mut f = line.splitn(3, ':');
            let (_, ctrls, path) = (f.next(), f.next().unwrap_or(""), f.next().unwrap_or(""));
            for (mnt, opts) in &mounts {
                let matches = if ctrls.is_empty() {
                    opts == "cgroup2"
                } else {
                    ctrls.split(',').all(|c| opts.split(',').any(|o| o == c))
                };
                if matches && path != "/" {
                    out.push(Path::new(mnt).join(path.trim_start_matches('/')));
                }
            }
        }
        out.sort();
        out.dedup();
        out
    }
}

/// (mount point, "cgroup2" or the v1 super options) of every cgroup hierarchy.
pub fn cgroup_mounts() -> Vec<(String, String)> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let mnt = pre.split(' ').nth(4)?.to_owned();
            let mut p = post.split(' ');
            match p.next()? {
                "cgroup2" => Some((mnt, "cgroup2".to_owned())),
                "cgroup" => Some((mnt, p.nth(1)?.to_owned())),
                _ => None,
            }
        })
        .collect()
}

impl Drop for CriContainerd {
    fn drop(&mut self) {
        containerd_down(&self.dir);
        // The pods' cgroup parents (kubelet would own these): deepest first.
        for (mnt, _) in cgroup_mounts() {
            let root = Path::new(&mnt).join(&self.cgroup_root);
            if root.exists() {
                let _ = Command::new("find")
                    .arg(&root)
                    .args(["-depth", "-type", "d", "-exec", "rmdir", "{}", ";"])
                    .status();
            }
        }
        if !self.default_root_existed {
            let _ = std::fs::remove_dir(DEFAULT_K8S_ROOT); // only when empty
        }
        let _ = std::fs::remove_dir_all(&self.tmp);
    }
}
