//! SIGINT and SIGTERM during a long command: the first asks the work to stop
//! at its next safe point (training saves `last`); another one a second or
//! more later ends the process at once (sooner ones are the same request
//! again: `timeout` and a terminal's Ctrl-C may deliver one signal to the
//! process and its group). The exit status is 128 + the signal's number, as
//! a shell reports a process the signal killed.

use std::sync::atomic::{AtomicI32, Ordering};

pub const SIGINT: i32 = 2;
pub const SIGTERM: i32 = 15;

static RECEIVED: AtomicI32 = AtomicI32::new(0);
/// Monotonic clock second of the first signal.
static FIRST_AT: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

/// The signal that asked to stop, if one did.
pub fn received() -> Option<i32> {
    match RECEIVED.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

pub fn name(signal: i32) -> &'static str {
    match signal {
        SIGINT => "SIGINT (Ctrl-C)",
        SIGTERM => "SIGTERM",
        _ => "a signal",
    }
}

#[cfg(unix)]
extern "C" fn on_signal(signal: libc::c_int) {
    // Only async-signal-safe work here: atomics, clock_gettime and _exit.
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the struct it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    #[allow(clippy::unnecessary_cast)] // time_t is i32 on some targets
    let now = now.tv_sec as i64;
    if RECEIVED
        .compare_exchange(0, signal, Ordering::SeqCst, Ordering::SeqCst)
        .is_ok()
    {
        FIRST_AT.store(now, Ordering::SeqCst);
        crate::train::request_stop();
    } else if now - FIRST_AT.load(Ordering::SeqCst) >= 1 {
        // SAFETY: _exit ends the process without running anything else.
        unsafe { libc::_exit(128 + signal) };
    }
}

/// Routes SIGINT and SIGTERM to a polite stop (see the module docs).
#[cfg(unix)]
pub fn install() {
    for signal in [SIGINT, SIGTERM] {
        // SAFETY: the handler only touches atomics and calls _exit.
        unsafe {
            libc::signal(signal, on_signal as *const () as libc::sighandler_t);
        }
    }
}

#[cfg(not(unix))]
pub fn install() {
    let _ = ctrlc::set_handler(|| {
        if RECEIVED.swap(SIGINT, Ordering::SeqCst) != 0 {
            std::process::exit(128 + SIGINT);
        }
        crate::train::request_stop();
    });
}
