//! Child processes of tests: killed when dropped, their output in a file.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// A child process, killed when dropped, with its output in a file.
pub struct Process {
    pub name: String,
    child: Child,
    pub log: PathBuf,
}

impl Process {
    /// Starts `command` with its output in `<dir>/<name>.log`.
    pub fn spawn(name: &str, mut command: Command, dir: &Path) -> Self {
        let log = dir.join(format!("{name}.log"));
        let out = File::create(&log).expect("creating a log file");
        let err = out.try_clone().expect("duplicating the log file");
        command
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .stdin(Stdio::null());
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Process {
            name: name.into(),
            child,
            log,
        }
    }

    /// SIGKILL: the process gets no chance to clean up (a crashed or evicted pod).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `lines` lines of the output, for a failure message.
    pub fn tail(&self, lines: usize) -> String {
        let output = self.output();
        let all: Vec<&str> = output.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The process id, for sending signals.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The exit code once the process has exited.
    pub fn exit_code(&mut self) -> Option<i32> {
        self.child
            .try_wait()
            .ok()
            .flatten()
            .and_then(|status| status.code())
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
        // A failing test shows what its programs said last (the harness prints a failed
        // test's captured output).
        if std::thread::panicking() {
            println!("--- {} (last 40 lines) ---\n{}", self.name, self.tail(40));
        }
    }
}
