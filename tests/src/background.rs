//! A helper process (test server, ...) that is killed when the guard drops.

use std::{
    process::{Child, Command, Stdio},
    sync::mpsc::Receiver,
    time::Duration,
};

pub struct Background {
    child: Child,
    lines: Receiver<String>,
    pub seen: Vec<String>,
}

impl Background {
    /// Starts `command` and waits for a stdout line starting with `ready`.
    pub fn start(mut command: Command, ready: &str) -> Self {
        let (child, lines) = crate::spawn_with_lines(&mut command, Stdio::null());
        let mut bg = Self { child, lines, seen: Vec::new() };
        bg.wait_for(Duration::from_secs(30), |l| l.starts_with(ready));
        bg
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Reads lines until one satisfies `pred`; panics on timeout or exit.
    pub fn wait_for(&mut self, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        crate::recv_until(&self.lines, &mut self.seen, timeout, pred)
            .unwrap_or_else(|| panic!("helper process: expected line not seen; got {:?}", self.seen))
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
