//! The SSH key work on the agent's schedule: a round at start, after every reload, and every
//! `ssh_keys_interval`; after a round that failed for a passing reason (network, DNS, the API
//! down, a clock not set yet), again as [`sshkeys::Retry`] says (5 s, doubling to a minute);
//! on its own thread, so a slow API or a refused file never touches the tunnel. What a round does is `sshkeys`'; this file decides what the log says of it: a
//! change at INFO, a failure once (repeats at DEBUG), lacking rights once with what to do.

use std::collections::HashMap;
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use log::{debug, error, info, warn};

use super::beacon::Wake;
use super::Live;
use crate::advice;
use crate::sshkeys::{self, Done, Memory, Retry};

/// Starts the SSH key thread.
pub fn spawn(live: Arc<Live>) -> std::io::Result<JoinHandle<()>> {
    thread::Builder::new()
        .name("ssh-keys".into())
        .spawn(move || run(&live))
}

fn run(live: &Live) {
    let mut memory = Memory::default();
    // The last thing said of each job: the same thing is not said twice at INFO and above.
    let mut said: HashMap<&'static str, String> = HashMap::new();
    let mut retry = Retry::new();
    loop {
        let cfg = live.get();
        let client = sshkeys::client(&cfg);
        // A round that failed for a reason that passes (network, DNS, the API down, a clock
        // not set yet at boot) is tried again soon, as the heartbeat is, not an hour later.
        let mut failed = false;
        for o in sshkeys::round(&cfg, client.as_ref(), &mut memory) {
            failed |= matches!(&o.result, Err(e) if e.passes());
            let (text, level) = match &o.result {
                Ok(Done::Changed(m)) => (m.clone(), log::Level::Info),
                Ok(Done::Unchanged(m)) => (m.clone(), log::Level::Info),
                Ok(Done::Off(why)) => (format!("off: {why}"), log::Level::Info),
                Err(e) if e.is_refusal() => {
                    (advice::explained(e, advice::keys(e)), log::Level::Error)
                }
                Err(e) => (advice::explained(e, advice::keys(e)), log::Level::Warn),
            };
            let again = said.get(o.job) == Some(&text);
            let changed = matches!(o.result, Ok(Done::Changed(_)));
            match level {
                _ if again && !changed => debug!("SSH keys ({}): {text}", o.job),
                log::Level::Info => info!("SSH keys ({}): {text}", o.job),
                log::Level::Error => error!("SSH keys ({}): {text}", o.job),
                _ => warn!(
                    "SSH keys ({}): {text}; the tunnel is not affected{}",
                    o.job,
                    if matches!(&o.result, Err(e) if e.passes()) {
                        ", retrying soon"
                    } else {
                        ""
                    }
                ),
            }
            said.insert(o.job, text);
        }
        let wait = match failed {
            true => {
                let delay = retry.next_delay().min(cfg.ssh.interval);
                info!(
                    "SSH keys: trying the failed work again in {:.0} s",
                    delay.as_secs_f64()
                );
                delay
            }
            false => {
                retry.reset();
                cfg.ssh.interval
            }
        };
        match live.keys.wait(wait) {
            Wake::Stop => break,
            Wake::Reloaded | Wake::BeatNow | Wake::Elapsed => {}
        }
    }
    debug!("SSH key thread stopped");
}
