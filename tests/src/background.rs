//! A helper process (test server, ...) that is killed when the guard drops.

use std::{
    process::{Child, Command, Stdio},
    sync::mpsc::Receiver,
    time::{Duration, Instant},
};

pub struct Background {
    child: Child,
    lines: Receiver<String>,
    pub seen: Vec<String>,
}

impl Background {
    /// Starts `command` and waits for a stdout line starting with `ready`.
    pub fn start(mut command: Command, ready: &str) -> Self {
        command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::inherit());
        let mut child = command.spawn().unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let lines = crate::line_channel(stdout);
        let mut bg = Self { child, lines, seen: Vec::new() };
        bg.wait_for(Duration::from_secs(30), |l| l.starts_with(ready));
        bg
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Reads lines until one satisfies `pred`; panics on timeout or exit.
    pub fn wait_for(&mut self, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if pred(&line) {
                        return line;
                    }
                }
                Err(_) => panic!("helper process: expected line not seen; got {:?}", self.seen),
            }
        }
    }

    /// Collects lines that arrive within `quiet` of each other.
    pub fn collect(&mut self, quiet: Duration) -> Vec<String> {
        while let Ok(line) = self.lines.recv_timeout(quiet) {
            self.seen.push(line);
        }
        self.seen.clone()
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
