//! Supervision: the daemon's threads, each named and returning `Result`, under one stop signal.
//! The first thread to fail (or to end before the stop) sets the signal, so every other thread
//! stops too, and its error is the daemon's.

use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::stop::{Stop, StopOnDrop};

use super::DaemonError;

/// The first failure: which thread, and why.
type First = Arc<Mutex<Option<(String, DaemonError)>>>;

/// Named threads under one stop signal.
pub struct Supervisor {
    stop: Stop,
    /// Sets the signal if the supervisor is dropped without [`Supervisor::join`].
    _guard: StopOnDrop,
    threads: Vec<(String, JoinHandle<()>)>,
    first: First,
    ended_tx: Sender<()>,
    ended: Receiver<()>,
}

impl Supervisor {
    /// A supervisor of no thread yet.
    pub fn new(stop: Stop) -> Supervisor {
        let (ended_tx, ended) = channel();
        Supervisor {
            _guard: stop.on_drop(),
            stop,
            threads: Vec::new(),
            first: Arc::default(),
            ended_tx,
            ended,
        }
    }

    /// The stop signal every thread watches.
    pub fn stop(&self) -> &Stop {
        &self.stop
    }

    /// Starts `f` on a thread named `name`. If it fails, or returns before the stop signal, the
    /// signal is set and its error (the first) becomes the daemon's.
    pub fn spawn<F>(&mut self, name: &str, f: F) -> Result<(), DaemonError>
    where
        F: FnOnce() -> Result<(), DaemonError> + Send + 'static,
    {
        let (stop, first, ended, thread) = (
            self.stop.clone(),
            self.first.clone(),
            self.ended_tx.clone(),
            name.to_string(),
        );
        let handle = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                let r = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
                    Ok(r) => r,
                    Err(_) => Err(DaemonError::Panicked),
                };
                let r = match r {
                    Ok(()) if !stop.is_set() => Err(DaemonError::EndedEarly),
                    r => r,
                };
                if let Err(e) = r {
                    if let Ok(mut f) = first.lock() {
                        f.get_or_insert((thread, e));
                    }
                    stop.set();
                }
                let _ = ended.send(());
            })
            .map_err(|source| DaemonError::Spawn {
                thread: name.to_string(),
                source,
            })?;
        self.threads.push((name.to_string(), handle));
        Ok(())
    }

    /// Whether a thread has failed (the stop signal is then set).
    pub fn failed(&self) -> bool {
        self.first.lock().map_or(true, |f| f.is_some())
    }

    /// Sets the stop signal and waits up to `deadline` for every thread; returns the first
    /// failure, if any.
    pub fn join(self, deadline: Duration) -> Result<(), DaemonError> {
        self.stop.set();
        let end = Instant::now() + deadline;
        let mut running = self.threads.len();
        while running > 0 {
            match self
                .ended
                .recv_timeout(end.saturating_duration_since(Instant::now()))
            {
                Ok(()) => running -= 1,
                Err(_) => {
                    let late: Vec<&str> = self
                        .threads
                        .iter()
                        .filter(|(_, h)| !h.is_finished())
                        .map(|(n, _)| n.as_str())
                        .collect();
                    return Err(DaemonError::Deadline(deadline, late.join(", ")));
                }
            }
        }
        for (_, h) in self.threads {
            let _ = h.join();
        }
        let first = self.first.lock().ok().and_then(|mut f| f.take());
        match first {
            Some((thread, e)) => Err(DaemonError::Thread {
                thread,
                source: Box::new(e),
            }),
            None => Ok(()),
        }
    }
}
