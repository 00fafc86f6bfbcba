//! The SSH key work on the agent's schedule: a round at start, after every reload, and every
//! `ssh_keys_interval`; after a round that failed for a passing reason (network, DNS, the API
//! down, a clock not set yet), again 5 s later, doubling up to that interval; on its own thread, so a slow API or a refused file never touches the
//! tunnel. What a round does is `sshkeys`'; this file decides what the log says of it: a
//! change at INFO, a failure once (repeats at DEBUG), lacking rights once with what to do.

use std::collections::HashMap;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use log::{debug, error, info, warn};

use super::presence::Wake;
use super::Live;
use crate::advice;
use crate::backoff::{Backoff, Jitter};
use crate::sshkeys::{self, Done, Memory};

/// Starts the SSH key thread.
pub fn spawn(live: Arc<Live>) -> std::io::Result<JoinHandle<()>> {
    thread::Builder::new()
        .name("ssh-keys".into())
        .spawn(move || run(&live))
}

/// The first retry after a failed round; it doubles up to `ssh_keys_interval`.
const RETRY_FIRST: Duration = Duration::from_secs(5);

fn run(live: &Live) {
    let mut memory = Memory::default();
    // The last thing said of each job: the same thing is not said twice at INFO and above.
    let mut said: HashMap<&'static str, String> = HashMap::new();
    let mut retry = Backoff::new(RETRY_FIRST, Duration::MAX, Duration::ZERO, Duration::ZERO);
    let mut jitter = Jitter::from_entropy();
    loop {
        let cfg = live.get();
        let client = sshkeys::client(&cfg);
        // A round that failed for a reason that passes (network, DNS, the API down, a clock
        // not set yet at boot) is tried again soon, as the heartbeat is, not an hour later.
        let mut failed = false;
        for o in sshkeys::round(&cfg, client.as_ref(), &mut memory) {
            failed |= matches!(&o.result, Err(e) if !e.is_refusal() && !e.is_permission());
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
                    if matches!(&o.result, Err(e) if e.is_permission()) {
                        ""
                    } else {
                        ", retrying soon"
                    }
                ),
            }
            said.insert(o.job, text);
        }
        let wait = match failed {
            true => {
                let delay = retry.next_delay(false, jitter.unit()).min(cfg.ssh.interval);
                info!(
                    "SSH keys: trying the failed work again in {:.0} s",
                    delay.as_secs_f64()
                );
                delay
            }
            false => {
                retry = Backoff::new(RETRY_FIRST, Duration::MAX, Duration::ZERO, Duration::ZERO);
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
