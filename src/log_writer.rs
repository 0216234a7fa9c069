//! Where log lines go: stderr, with the access log (one line per request, formatted by
//! [`crate::access_log`]) buffered and written in batches by a background thread, so a request costs a
//! `memcpy` into a buffer instead of a `write` system call on the request path. Every other
//! line (warnings, errors, reloads, shutdown) is written at once, as before.
//!
//! The buffer is written when it holds [`FLUSH_BYTES`], at the latest [`FLUSH_INTERVAL`] after
//! its first line, and by [`flush`] (called before the process exits). Lines are never dropped:
//! a writer that finds the buffer over [`MAX_BYTES`] (stderr blocked) writes its line itself.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// A buffer this full is written at once.
pub(crate) const FLUSH_BYTES: usize = 64 * 1024;
/// The longest an access log line waits in the buffer.
pub(crate) const FLUSH_INTERVAL: Duration = Duration::from_millis(50);
/// Past this, writers stop buffering and write their own lines (the output is not keeping up).
pub(crate) const MAX_BYTES: usize = 8 * 1024 * 1024;

/// The shared buffer, an emptied one kept for the next batch (so the buffer does not grow
/// from nothing again after every write), and the flusher's wake-up.
#[derive(Debug, Default)]
struct Shared {
    buf: Mutex<Vec<u8>>,
    spare: Mutex<Vec<u8>>,
    wake: Condvar,
}

/// The `MakeWriter` of the fmt layer: the access log into the buffer, the rest to `out`.
pub(crate) struct LogWriter<W: Write + Send + 'static> {
    shared: Arc<Shared>,
    out: Arc<Mutex<W>>,
    /// False when no flusher thread could be started: every line is written at once.
    buffering: bool,
}

impl<W: Write + Send + 'static> Clone for LogWriter<W> {
    fn clone(&self) -> Self {
        LogWriter {
            shared: self.shared.clone(),
            out: self.out.clone(),
            buffering: self.buffering,
        }
    }
}

static STDERR: OnceLock<LogWriter<std::io::Stderr>> = OnceLock::new();

/// The process's writer to stderr (with its flusher thread, started on first use).
pub(crate) fn stderr() -> LogWriter<std::io::Stderr> {
    STDERR
        .get_or_init(|| LogWriter::start(std::io::stderr()))
        .clone()
}

/// Queues one access log line (formatted by [`crate::access_log`]) for stderr.
pub(crate) fn access(line: &[u8]) {
    let w = STDERR.get_or_init(|| LogWriter::start(std::io::stderr()));
    let _ = EventWriter {
        owner: w,
        buffered: w.buffering,
    }
    .write_all(line);
}

/// Writes whatever the access log buffer holds (before the process exits).
pub(crate) fn flush() {
    if let Some(w) = STDERR.get() {
        w.flush_buffer();
    }
}

impl<W: Write + Send + 'static> LogWriter<W> {
    /// A writer to `out`, with a flusher thread.
    pub(crate) fn start(out: W) -> Self {
        let mut w = LogWriter {
            shared: Arc::new(Shared::default()),
            out: Arc::new(Mutex::new(out)),
            buffering: true,
        };
        let flusher = w.clone();
        w.buffering = std::thread::Builder::new()
            .name("aadgate-log".into())
            .spawn(move || flusher.run())
            .is_ok();
        w
    }

    /// The flusher: waits for a first line, gives the buffer `FLUSH_INTERVAL` to fill (or less,
    /// when it reaches `FLUSH_BYTES`), then writes it in one go.
    fn run(&self) {
        loop {
            let Ok(guard) = self.shared.buf.lock() else {
                return;
            };
            let Ok(guard) = self.shared.wake.wait_while(guard, |b| b.is_empty()) else {
                return;
            };
            let Ok((guard, _)) = self
                .shared
                .wake
                .wait_timeout_while(guard, FLUSH_INTERVAL, |b| b.len() < FLUSH_BYTES)
            else {
                return;
            };
            drop(guard);
            self.flush_buffer();
        }
    }

    /// Writes out the buffer (swapped with the spare under the lock, written outside it); the
    /// written batch, emptied, becomes the spare.
    pub(crate) fn flush_buffer(&self) {
        let take_spare = || {
            (self.shared.spare.lock())
                .map(|mut s| std::mem::take(&mut *s))
                .unwrap_or_default()
        };
        let mut batch = match self.shared.buf.lock() {
            Ok(mut b) if !b.is_empty() => std::mem::replace(&mut *b, take_spare()),
            _ => return,
        };
        if let Ok(mut out) = self.out.lock() {
            let _ = out.write_all(&batch);
            let _ = out.flush();
        }
        // A batch that grew past the usual size (the output was stalled) is not kept.
        if batch.capacity() <= 2 * FLUSH_BYTES {
            batch.clear();
            if let Ok(mut s) = self.shared.spare.lock() {
                *s = batch;
            }
        }
    }

    fn write_direct(&self, line: &[u8]) -> std::io::Result<()> {
        match self.out.lock() {
            Ok(mut out) => out.write_all(line),
            Err(_) => Ok(()),
        }
    }
}

/// One event's writer: buffered (access log) or direct.
pub(crate) struct EventWriter<'a, W: Write + Send + 'static> {
    owner: &'a LogWriter<W>,
    buffered: bool,
}

impl<W: Write + Send + 'static> Write for EventWriter<'_, W> {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        self.write_all(line)?;
        Ok(line.len())
    }

    fn write_all(&mut self, line: &[u8]) -> std::io::Result<()> {
        if !self.buffered {
            return self.owner.write_direct(line);
        }
        let buffered = match self.owner.shared.buf.lock() {
            Ok(mut b) if b.len() + line.len() <= MAX_BYTES => {
                b.extend_from_slice(line);
                Some(b.len())
            }
            _ => None,
        };
        // The output is not keeping up (or the lock is poisoned): write the line ourselves,
        // after what is buffered, so lines stay in order.
        let Some(len) = buffered else {
            self.owner.flush_buffer();
            return self.owner.write_direct(line);
        };
        if len == line.len() || len >= FLUSH_BYTES {
            self.owner.shared.wake.notify_one();
        }
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a, W: Write + Send + 'static> MakeWriter<'a> for LogWriter<W> {
    type Writer = EventWriter<'a, W>;

    /// Every `tracing` event is written at once; access lines come through [`access`].
    fn make_writer(&'a self) -> Self::Writer {
        EventWriter {
            owner: self,
            buffered: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An output whose contents the test can read.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("sink").extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Sink {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().expect("sink").clone()).expect("utf8")
        }
    }

    /// A writer with no flusher thread: the test decides when the buffer is written.
    fn without_flusher(sink: &Sink) -> LogWriter<Sink> {
        LogWriter {
            shared: Arc::new(Shared::default()),
            out: Arc::new(Mutex::new(sink.clone())),
            buffering: true,
        }
    }

    fn writer(w: &LogWriter<Sink>, buffered: bool) -> EventWriter<'_, Sink> {
        EventWriter { owner: w, buffered }
    }

    #[test]
    fn access_lines_wait_in_the_buffer_and_other_lines_do_not() {
        let sink = Sink::default();
        let w = without_flusher(&sink);
        writer(&w, true).write_all(b"access 1\n").expect("write");
        writer(&w, false).write_all(b"warn\n").expect("write");
        assert_eq!(sink.text(), "warn\n");
        writer(&w, true).write_all(b"access 2\n").expect("write");
        w.flush_buffer();
        assert_eq!(sink.text(), "warn\naccess 1\naccess 2\n");
    }

    #[test]
    fn a_full_buffer_is_written_before_the_line_that_overflows_it() {
        let sink = Sink::default();
        let w = without_flusher(&sink);
        let line = vec![b'x'; MAX_BYTES - 1];
        writer(&w, true).write_all(&line).expect("write");
        writer(&w, true).write_all(b"yy").expect("write");
        let text = sink.text();
        assert_eq!(text.len(), MAX_BYTES + 1, "nothing dropped");
        assert!(text.ends_with("xyy"), "in order");
    }

    #[test]
    fn a_written_batch_is_kept_as_the_next_buffer() {
        let sink = Sink::default();
        let w = without_flusher(&sink);
        writer(&w, true).write_all(&[b'a'; 1000]).expect("write");
        w.flush_buffer();
        let spare = w.shared.spare.lock().expect("spare").capacity();
        assert!(spare >= 1000, "the batch's memory is kept ({spare})");
        writer(&w, true).write_all(b"next\n").expect("write");
        w.flush_buffer();
        assert!(sink.text().ends_with("next\n"));
        assert_eq!(sink.text().len(), 1005, "nothing lost or repeated");
        assert!(
            w.shared.buf.lock().expect("buf").capacity() >= 1000,
            "the spare is in use"
        );
    }

    #[test]
    fn the_flusher_thread_writes_the_buffer_without_being_asked() {
        let sink = Sink::default();
        let w = LogWriter::start(sink.clone());
        writer(&w, true).write_all(b"access\n").expect("write");
        // Bounded wait for the background write (FLUSH_INTERVAL is 50 ms).
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while sink.text().is_empty() {
            assert!(std::time::Instant::now() < deadline, "never flushed");
            std::thread::yield_now();
        }
        assert_eq!(sink.text(), "access\n");
    }
}
