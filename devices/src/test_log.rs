//! A logger for unit tests: [`capture`] returns the lines logged on the
//! calling thread while it runs, so tests can check how much a guest can
//! make the VMM log. Tests run in parallel; filtering by thread keeps them
//! apart.

use std::collections::HashSet;
use std::sync::{Mutex, Once};
use std::thread::ThreadId;

use log::{Level, LevelFilter, Log, Metadata, Record};

#[derive(Default)]
struct State {
    capturing: HashSet<ThreadId>,
    lines: Vec<(ThreadId, Level, String)>,
}

struct Capture(Mutex<Option<State>>);

static CAPTURE: Capture = Capture(Mutex::new(None));

impl Log for Capture {
    fn enabled(&self, _: &Metadata) -> bool {
        true
    }

    fn log(&self, r: &Record) {
        let me = std::thread::current().id();
        let mut st = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(st) = st.as_mut().filter(|s| s.capturing.contains(&me)) {
            st.lines.push((me, r.level(), r.args().to_string()));
        }
    }

    fn flush(&self) {}
}

/// Runs `f`, returning every line (any level) it logged on this thread.
pub fn capture(f: impl FnOnce()) -> Vec<(Level, String)> {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        *CAPTURE.0.lock().unwrap() = Some(State::default());
        log::set_logger(&CAPTURE).expect("no other logger in unit tests");
        log::set_max_level(LevelFilter::Trace);
    });
    let me = std::thread::current().id();
    let with = |g: &mut dyn FnMut(&mut State)| {
        let mut st = CAPTURE.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(st) = st.as_mut() {
            g(st);
        }
    };
    with(&mut |st| {
        st.capturing.insert(me);
    });
    f();
    let mut mine = Vec::new();
    with(&mut |st| {
        st.capturing.remove(&me);
        let (keep, rest) = std::mem::take(&mut st.lines)
            .into_iter()
            .partition(|(t, _, _)| *t == me);
        st.lines = rest;
        mine = keep;
    });
    mine.into_iter().map(|(_, l, s)| (l, s)).collect()
}
