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

#[cfg(test)]
mod tests {
    use super::*;

    /// A thread that runs until the stop signal.
    fn until_stop(sup: &mut Supervisor, name: &str) {
        let s = sup.stop().clone();
        sup.spawn(name, move || {
            s.wait(Duration::from_secs(600));
            Ok(())
        })
        .unwrap();
    }

    fn thread_of(e: &DaemonError) -> (&str, &DaemonError) {
        match e {
            DaemonError::Thread { thread, source } => (thread.as_str(), source),
            other => panic!("not a thread's error: {other}"),
        }
    }

    #[test]
    fn threads_that_end_at_the_stop_join_cleanly() {
        let mut sup = Supervisor::new(Stop::new());
        until_stop(&mut sup, "a");
        until_stop(&mut sup, "b");
        assert!(!sup.failed());
        sup.join(Duration::from_secs(60)).unwrap();
    }

    #[test]
    fn the_first_failure_stops_the_others_and_is_the_error() {
        let mut sup = Supervisor::new(Stop::new());
        until_stop(&mut sup, "waiter");
        sup.spawn("failing", || {
            Err(DaemonError::Store(crate::store::StoreError::WriterGone))
        })
        .unwrap();
        assert!(
            sup.stop().wait(Duration::from_secs(60)),
            "the failure sets the signal"
        );
        assert!(sup.failed());
        let e = sup.join(Duration::from_secs(60)).unwrap_err();
        let (thread, source) = thread_of(&e);
        assert_eq!(thread, "failing");
        assert!(matches!(
            source,
            DaemonError::Store(crate::store::StoreError::WriterGone)
        ));
    }

    #[test]
    fn a_thread_that_ends_before_the_stop_is_a_failure() {
        let mut sup = Supervisor::new(Stop::new());
        until_stop(&mut sup, "waiter");
        sup.spawn("quitter", || Ok(())).unwrap();
        assert!(sup.stop().wait(Duration::from_secs(60)));
        let e = sup.join(Duration::from_secs(60)).unwrap_err();
        let (thread, source) = thread_of(&e);
        assert_eq!(thread, "quitter");
        assert!(matches!(source, DaemonError::EndedEarly));
    }

    #[test]
    fn a_panic_is_a_failure_and_stops_the_others() {
        let mut sup = Supervisor::new(Stop::new());
        until_stop(&mut sup, "waiter");
        sup.spawn("panicking", || panic!("on purpose")).unwrap();
        assert!(sup.stop().wait(Duration::from_secs(60)));
        let e = sup.join(Duration::from_secs(60)).unwrap_err();
        let (thread, source) = thread_of(&e);
        assert_eq!(thread, "panicking");
        assert!(matches!(source, DaemonError::Panicked));
    }

    #[test]
    fn a_thread_past_the_join_deadline_is_named() {
        let mut sup = Supervisor::new(Stop::new());
        until_stop(&mut sup, "prompt");
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        // Ignores the signal: ends only when the test lets it.
        sup.spawn("stuck", move || {
            let _ = rx.recv();
            Ok(())
        })
        .unwrap();
        let started = Instant::now();
        match sup.join(Duration::from_millis(200)) {
            Err(DaemonError::Deadline(d, late)) => {
                assert_eq!(d, Duration::from_millis(200));
                assert_eq!(late, "stuck");
            }
            other => panic!("expected the deadline: {other:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(30));
        drop(tx);
    }

    #[test]
    fn dropping_the_supervisor_stops_its_threads() {
        let stop = Stop::new();
        let mut sup = Supervisor::new(stop.clone());
        until_stop(&mut sup, "a");
        drop(sup);
        assert!(stop.is_set());
    }
}
