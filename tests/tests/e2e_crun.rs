//! crun as the OCI runtime through a private, real containerd (`ctr run --runc-binary`), with
//! the built shim; crun runs through hack/crun-private-ns (see there why).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Stdio;
use std::time::{Duration, Instant};

use shim_tests::containerd::{run_ok, Containerd, Setup, IMAGE};
use shim_tests::e2e_versions;
use shim_tests::{mounts_under, TestEnv};

fn ctr_run_and_exec_with_crun(setup: Setup) {
    let c = Containerd::start_with(setup);
    let fifo = &c.fifo;
    let crun = TestEnv::crun_wrapper().display().to_string();

    // `ctr run --rm`: output and exit code.
    let mut args = c.run_args();
    args.extend(["--runc-binary", &crun, "--rm", IMAGE, "crun-exit", "sh", "-c", "echo hi; exit 3"]);
    let out = c.ctr(&args).output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n");

    // A detached container, an exec in it, SIGKILL.
    let mut args = c.run_args();
    args.extend(["--runc-binary", &crun, "-d", IMAGE, "crun-bg", "sleep", "1000"]);
    run_ok(&mut c.ctr(&args));
    c.wait_status("crun-bg", "RUNNING");
    // crun's state (a `status` file; runc writes state.json) proves which runtime runs it.
    assert!(c.dir.join("runc").join(&c.ns).join("crun-bg").join("status").exists());
    let out = c
        .ctr(&["tasks", "exec", "--fifo-dir", fifo, "--exec-id", "e1", "crun-bg", "sh", "-c", "echo ex; exit 4"])
        .stdout(Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ex\n");
    run_ok(&mut c.ctr(&["tasks", "kill", "-s", "SIGKILL", "crun-bg"]));
    c.wait_status("crun-bg", "STOPPED");
    run_ok(&mut c.ctr(&["tasks", "delete", "crun-bg"]));
    run_ok(&mut c.ctr(&["containers", "delete", "crun-bg"]));

    let deadline = Instant::now() + Duration::from_secs(10);
    while !c.shims().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(c.shims().is_empty(), "shims left: {:?}", c.shims());
    let left: Vec<_> = std::fs::read_dir(c.dir.join("runc").join(&c.ns))
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "crun state left: {left:?}");
    assert!(mounts_under(&c.dir).is_empty(), "mounts left: {:?}", mounts_under(&c.dir));
}

e2e_versions!(ctr_run_and_exec_with_crun => crun_run_and_exec_v1_6, crun_run_and_exec_v1_7, crun_run_and_exec_v2);
e2e_versions!(reference ctr_run_and_exec_with_crun => crun_run_and_exec_go_v1_6, crun_run_and_exec_go_v1_7, crun_run_and_exec_go_v2);
