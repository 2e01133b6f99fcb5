//! The Prometheus rules shipped in deploy/prometheus, checked by Debian's
//! `promtool` (installed by `cargo xtask setup` with the prometheus
//! package): syntax, and every alert's unit tests (series that fire it and
//! series that must not).

#[cfg(test)]
mod tests {
    use std::{path::PathBuf, process::Command};

    fn promtool(args: &[&str]) {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus");
        let out = Command::new("promtool").args(args).current_dir(&dir).output().unwrap_or_else(|e| {
            panic!("promtool: {e} (Debian's prometheus package; `cargo xtask setup` installs it)")
        });
        assert!(
            out.status.success(),
            "promtool {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn the_rules_pass_promtool_check() {
        promtool(&["check", "rules", "tcptrace.rules.yml"]);
    }

    #[test]
    fn every_alert_fires_when_it_should_and_only_then() {
        promtool(&["test", "rules", "tcptrace.rules.test.yml"]);
    }
}
