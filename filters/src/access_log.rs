//! The access log (`telemetry.access_log`): one JSON object per request,
//! written by a thread of its own.
//!
//! A request never waits for the log: its line goes into a bounded queue
//! with `try_send`, and when the queue is full (a slow disk, a stalled pipe)
//! the line is dropped and counted in `skiff_access_log_dropped_total`. The
//! writer thread blocks on the file, not the runtime's workers, and wakes
//! on a timer rather than per line (a wake-up per request would cost the
//! request a system call).
//!
//! Rotation: move the file away and Skiff reopens its path within a second,
//! or at once on SIGHUP (`request_reopen`); logrotate's `create` and
//! `postrotate kill -HUP` both work. `/dev/stdout` and `-` write to stdout
//! and are never reopened.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_queue::ArrayQueue;
use prometheus_client::metrics::counter::Counter;

/// Lines waiting for the writer at most; more are dropped and counted.
pub const QUEUE: usize = 8192;

/// Written lines' buffers kept for new lines, at most: a line's buffer goes
/// round between the workers and the writer instead of being allocated on
/// one thread and freed on another for every request.
const SPARE: usize = 1024;

/// A spare buffer larger than this (a line with a huge path) is freed
/// rather than kept.
const SPARE_MAX: usize = 4096;

/// What a new line's buffer starts with: a typical line is 400 to 500 bytes.
const LINE: usize = 512;

/// Counts SIGHUPs: each writer reopens its file when it has not seen the
/// latest one.
static REOPEN: AtomicU64 = AtomicU64::new(0);

/// Asks every access log to reopen its file (what SIGHUP does).
pub fn request_reopen() {
    REOPEN.fetch_add(1, Ordering::Relaxed);
}

/// One access log destination and its writer thread.
#[derive(Debug)]
pub struct AccessLog {
    pub path: String,
    tx: SyncSender<String>,
    /// Buffers of written lines, for new ones.
    spare: Arc<ArrayQueue<String>>,
    dropped: Counter,
    /// Lines written, for tests and `/stats`.
    written: Arc<AtomicU64>,
}

impl AccessLog {
    /// Opens `path` for appending (`/dev/stdout` or `-`: stdout) and starts
    /// its writer. The thread ends when the last `Arc` to this is dropped.
    pub fn open(path: &str, dropped: Counter) -> std::io::Result<Arc<Self>> {
        let sink = Sink::open(path)?;
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
        let written = Arc::new(AtomicU64::new(0));
        let counter = written.clone();
        let spare = Arc::new(ArrayQueue::new(SPARE));
        let returned = spare.clone();
        std::thread::Builder::new()
            .name("skiff-access-log".to_owned())
            .spawn(move || write_lines(sink, rx, &returned, &counter))?;
        Ok(Arc::new(Self {
            path: path.to_owned(),
            tx,
            spare,
            dropped,
            written,
        }))
    }

    /// A new line, in a spare buffer when there is one.
    pub fn line(&self) -> Line {
        Line::in_buffer(
            self.spare
                .pop()
                .unwrap_or_else(|| String::with_capacity(LINE)),
        )
    }

    /// Queues one line (without its newline); never blocks.
    pub fn send(&self, line: String) {
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = self.tx.try_send(line) {
            self.dropped.inc();
        }
    }

    /// Lines the writer has written so far.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }
}

/// Where lines go.
enum Sink {
    Stdout(std::io::Stdout),
    File {
        path: PathBuf,
        file: std::io::BufWriter<std::fs::File>,
        /// The inode opened, to notice the path now names another file.
        inode: u64,
    },
}

impl Sink {
    fn open(path: &str) -> std::io::Result<Self> {
        if path == "-" || path == "/dev/stdout" {
            return Ok(Sink::Stdout(std::io::stdout()));
        }
        let path = PathBuf::from(path);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?;
        let inode = inode(&file.metadata()?);
        Ok(Sink::File {
            path,
            file: std::io::BufWriter::with_capacity(64 * 1024, file),
            inode,
        })
    }

    fn writer(&mut self) -> &mut dyn Write {
        match self {
            Sink::Stdout(s) => s,
            Sink::File { file, .. } => file,
        }
    }

    /// Reopens the path when asked to, or when it no longer names the file
    /// open (moved away by a rotation). Keeps the old file if the new open fails.
    fn maybe_reopen(&mut self, asked: bool) {
        let Sink::File { path, file, inode } = self else {
            return;
        };
        let moved = std::fs::metadata(&*path).map_or(true, |m| self::inode(&m) != *inode);
        if !asked && !moved {
            return;
        }
        let _ = file.flush();
        if let Ok(fresh) = Sink::open(&path.display().to_string()) {
            *self = fresh;
        }
    }
}

#[cfg(unix)]
fn inode(m: &std::fs::Metadata) -> u64 {
    std::os::unix::fs::MetadataExt::ino(m)
}

#[cfg(not(unix))]
fn inode(_: &std::fs::Metadata) -> u64 {
    0
}

/// How often the writer wakes to write what is queued. Waking on every
/// line would cost each request a futex wake-up and the writer a context
/// switch; every few milliseconds costs neither, and a line is on disk
/// within this long.
const WRITE_EVERY: Duration = Duration::from_millis(10);

/// The writer thread: every [`WRITE_EVERY`], writes what is queued in one
/// buffered burst and flushes; checks for rotation once a second.
fn write_lines(
    mut sink: Sink,
    rx: Receiver<String>,
    spare: &ArrayQueue<String>,
    written: &AtomicU64,
) {
    let mut last_check = std::time::Instant::now();
    let mut seen = REOPEN.load(Ordering::Relaxed);
    loop {
        std::thread::sleep(WRITE_EVERY);
        let w = sink.writer();
        let mut wrote = false;
        loop {
            match rx.try_recv() {
                Ok(mut line) => {
                    // A full disk drops lines; nothing to do about it here.
                    let _ = w
                        .write_all(line.as_bytes())
                        .and_then(|()| w.write_all(b"\n"));
                    written.fetch_add(1, Ordering::Relaxed);
                    wrote = true;
                    if line.capacity() <= SPARE_MAX {
                        line.clear();
                        // When the spares are full, this one is freed.
                        let _ = spare.push(line);
                    }
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    let _ = w.flush();
                    return;
                }
            }
        }
        if wrote {
            let _ = w.flush();
        }
        let now = REOPEN.load(Ordering::Relaxed);
        let asked = now != seen;
        seen = now;
        if asked || last_check.elapsed() >= Duration::from_secs(1) {
            sink.maybe_reopen(asked);
            last_check = std::time::Instant::now();
        }
    }
}

/// One JSON object on one line, written field by field into one buffer.
/// Hand-written rather than derived: a line is written for every request,
/// and this is about half the work of going through serde.
pub struct Line(String);

impl Line {
    pub fn with_capacity(n: usize) -> Self {
        Self::in_buffer(String::with_capacity(n))
    }

    /// A line written into `buf` (empty), keeping its capacity.
    fn in_buffer(mut buf: String) -> Self {
        buf.push('{');
        Self(buf)
    }

    fn key(&mut self, key: &str) {
        if self.0.len() > 1 {
            self.0.push(',');
        }
        self.0.push('"');
        self.0.push_str(key);
        self.0.push_str("\":");
    }

    /// A string value, escaped as JSON requires.
    pub fn text(&mut self, key: &str, value: &str) {
        self.key(key);
        self.0.push('"');
        // Most values need no escaping: copy them whole.
        if !value.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
            self.0.push_str(value);
            self.0.push('"');
            return;
        }
        for c in value.chars() {
            match c {
                '"' => self.0.push_str("\\\""),
                '\\' => self.0.push_str("\\\\"),
                c if (c as u32) < 0x20 => {
                    use std::fmt::Write as _;
                    let _ = write!(self.0, "\\u{:04x}", c as u32);
                }
                c => self.0.push(c),
            }
        }
        self.0.push('"');
    }

    /// A string value, or `null`.
    pub fn maybe_text(&mut self, key: &str, value: Option<&str>) {
        match value {
            Some(v) => self.text(key, v),
            None => {
                self.key(key);
                self.0.push_str("null");
            }
        }
    }

    /// A value whose `Display` needs no escaping (a timestamp), quoted.
    pub fn display(&mut self, key: &str, value: impl std::fmt::Display) {
        use std::fmt::Write as _;
        self.key(key);
        let _ = write!(self.0, "\"{value}\"");
    }

    pub fn number(&mut self, key: &str, value: u64) {
        use std::fmt::Write as _;
        self.key(key);
        let _ = write!(self.0, "{value}");
    }

    /// A number, or `null`.
    pub fn maybe_number(&mut self, key: &str, value: Option<u64>) {
        match value {
            Some(v) => self.number(key, v),
            None => {
                self.key(key);
                self.0.push_str("null");
            }
        }
    }

    /// A duration in milliseconds, to the microsecond.
    pub fn millis(&mut self, key: &str, d: Duration) {
        use std::fmt::Write as _;
        self.key(key);
        let us = d.as_micros();
        let _ = write!(self.0, "{}.{:03}", us / 1000, us % 1000);
    }

    /// The line, closed.
    pub fn finish(mut self) -> String {
        self.0.push('}');
        self.0
    }
}

/// The access logs that run, by path: a config swap that keeps the path
/// keeps the writer (and its file handle).
#[derive(Debug, Default)]
pub struct AccessLogs {
    open: Mutex<Vec<std::sync::Weak<AccessLog>>>,
}

impl AccessLogs {
    /// The running log for `path`, or a new one.
    pub fn get(&self, path: &str, dropped: Counter) -> std::io::Result<Arc<AccessLog>> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.retain(|w| w.strong_count() > 0);
        if let Some(log) = open
            .iter()
            .filter_map(std::sync::Weak::upgrade)
            .find(|l| l.path == path)
        {
            return Ok(log);
        }
        let log = AccessLog::open(path, dropped)?;
        open.push(Arc::downgrade(&log));
        Ok(log)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The hand-written encoder writes what a JSON parser reads back.
    #[test]
    fn lines_are_json() {
        let mut line = Line::with_capacity(16);
        line.text("a", "quote \" backslash \\ tab \t é");
        line.maybe_text("b", None);
        line.number("c", 7);
        line.millis("d", Duration::from_micros(1_234_567));
        line.display("e", "2026-12-02T05:30:01.123Z");
        line.text("f", "/plain/path?q=1");
        let v: serde_json::Value = serde_json::from_str(&line.finish()).unwrap();
        assert_eq!(v["a"], "quote \" backslash \\ tab \t é");
        assert_eq!(v["b"], serde_json::Value::Null);
        assert_eq!(v["c"], 7);
        assert_eq!(v["d"], 1234.567);
        assert_eq!(v["e"], "2026-12-02T05:30:01.123Z");
        assert_eq!(v["f"], "/plain/path?q=1");
    }

    /// A sink nobody reads (a FIFO whose reader never reads: its pipe
    /// buffer fills, and the writer thread blocks): sending never waits,
    /// and the lines that cannot be queued are counted.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_stuck_sink_drops_and_counts_instead_of_blocking() {
        use std::os::unix::fs::OpenOptionsExt;
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("stuck");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        // The read end, opened without blocking and never read.
        const O_NONBLOCK: i32 = 0o4000;
        let _reader = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(O_NONBLOCK)
            .open(&fifo)
            .unwrap();
        let dropped = Counter::default();
        let log = AccessLog::open(&fifo.display().to_string(), dropped.clone()).unwrap();
        let line = "x".repeat(200);
        let sent = QUEUE * 4;
        for _ in 0..sent {
            log.send(line.clone());
        }
        // The pipe holds 64 KiB and the writer's buffer as much (~650
        // lines of 201 bytes), the queue QUEUE lines: the rest were
        // dropped, each counted, none waited for.
        assert!(
            dropped.get() as usize >= sent - QUEUE - 1000,
            "{}",
            dropped.get()
        );
        assert!(log.written() < 1000, "{}", log.written());
    }
}
