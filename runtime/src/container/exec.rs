//! The exec verbs of the container's [`Core`]: Exec, its Start and the start's completion,
//! Delete of an exec, and the exec pids for Pids.

use std::collections::HashMap;
use std::time::SystemTime;

use containerd_shim_protos::events::task::{TaskExecAdded, TaskExecStarted};
use shim_events::{ExitInfo, ProcessId, Refusal};

use super::core::{not_found_exec, Core, Effect, Effects, Process};
use super::handle::{Deleted, ExecSpec};
use crate::error::{Result, RuntimeError};
use crate::io::StdioConfig;
use crate::process::State;

impl<R> Core<R> {
    /// Exec: registers the process (no runtime call).
    pub(crate) fn add_exec(&mut self, exec_id: String, spec: ExecSpec, stdio: StdioConfig, res: R) -> Result<Effects> {
        // As in the Go shim, adding an exec is a state check only; its Start is what the
        // sequencer refuses once the init's exit was observed (SPEC §4.7 no. 7).
        self.init.state.can_exec()?;
        if self.execs.contains_key(&exec_id) {
            return Err(RuntimeError::AlreadyExists { id: exec_id });
        }
        let mut p = Process::new(0, stdio, res);
        p.spec = Some(spec);
        self.execs.insert(exec_id.clone(), p);
        let mut ev = TaskExecAdded::new();
        ev.container_id = self.id.clone();
        ev.exec_id = exec_id;
        let steps = self.seq.exec_added(ev);
        Ok(self.apply(steps))
    }

    /// Start of an exec: its spec and stdio for `runc exec`.
    pub(crate) fn start_exec(&mut self, exec_id: &str) -> Result<(ExecSpec, StdioConfig)> {
        let p = self.execs.get(exec_id).ok_or_else(|| not_found_exec(exec_id))?;
        let starting = p.state.start()?;
        if self.init_exit_killing.is_some() {
            return Err(self.refused(Refusal::InitExited));
        }
        self.seq.exec_starting(exec_id).map_err(|refusal| self.refused(refusal))?;
        let p = self.execs.get_mut(exec_id).ok_or_else(|| not_found_exec(exec_id))?;
        p.state = starting;
        let spec = p.spec.clone().unwrap_or_else(|| ExecSpec::from(&b"{}"[..]));
        Ok((spec, p.stdio.clone()))
    }

    /// An exec's start returned: `Ok(pid)`, or the error with the exit of a process the
    /// runtime had started anyway (killed and reaped before this). Apply the effects (after
    /// giving a started exec its IO), then reply with the returned result.
    pub(crate) fn exec_started(
        &mut self,
        exec_id: &str,
        result: Result<u32, (RuntimeError, Option<ExitInfo>)>,
    ) -> (Effects, Result<u32>) {
        let Some(p) = self.execs.get_mut(exec_id) else {
            return (Vec::new(), Err(not_found_exec(exec_id)));
        };
        let process = ProcessId::Exec(exec_id.to_owned());
        match result {
            Ok(pid) => {
                p.pid = pid;
                p.state = p.state.started();
                let mut ev = TaskExecStarted::new();
                ev.container_id = self.id.clone();
                ev.exec_id = exec_id.to_owned();
                ev.pid = pid;
                let steps = self.seq.exec_started(ev);
                let mut out = self.apply(steps);
                out.push(Effect::Claim(process, pid));
                (out, Ok(pid))
            }
            Err((error, None)) => {
                // The exec is created again; its waiters are released with status 0 (SPEC §4.9).
                p.state = p.state.start_failed();
                let never = ExitInfo { pid: 0, status: 0, at: SystemTime::UNIX_EPOCH };
                let mut out = vec![Effect::ReleaseWaiters(process, never)];
                let steps = self.seq.exec_start_failed(exec_id);
                out.extend(self.apply(steps));
                (out, Err(error))
            }
            Err((error, Some(exit))) => {
                // A process ran and was killed: the exec is stopped (it cannot be started
                // again) with that exit, and no event names it, as no TaskExecStarted went out.
                p.pid = exit.pid;
                p.state = State::Stopped;
                p.exit = Some(exit);
                let mut out = vec![Effect::ReleaseWaiters(process, exit)];
                let steps = self.seq.exec_start_failed(exec_id);
                out.extend(self.apply(steps));
                (out, Err(error))
            }
        }
    }

    /// Delete of an exec: what it reports, its payload (whose output the reply waits for), and
    /// the effects. The shell also removes its pid file.
    pub(crate) fn delete_exec(&mut self, exec_id: &str) -> Result<(Deleted, R, Effects)> {
        let p = self.execs.get(exec_id).ok_or_else(|| not_found_exec(exec_id))?;
        p.state.can_delete()?;
        let p = self.execs.remove(exec_id).ok_or_else(|| not_found_exec(exec_id))?;
        self.seq.exec_removed(exec_id);
        let mut out = Vec::new();
        if p.pid != 0 {
            out.push(Effect::Forget(ProcessId::Exec(exec_id.to_owned()), p.pid));
        }
        Ok((p.deleted(), p.res, out))
    }

    /// Pids of the execs that have one, for Pids.
    pub(crate) fn exec_pids(&self) -> HashMap<u32, String> {
        self.execs.iter().filter(|(_, p)| p.pid != 0).map(|(id, p)| (p.pid, id.clone())).collect()
    }
}
