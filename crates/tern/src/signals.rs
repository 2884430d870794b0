//! SIGTERM and SIGINT set a flag that the serve loop checks, so a process
//! stops cleanly (and logs its counters) when `tern cluster down` asks.

use std::sync::atomic::{AtomicBool, Ordering};

static SHUTDOWN: AtomicBool = AtomicBool::new(false);

extern "C" fn request_shutdown(_signal: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    SHUTDOWN.store(true, Ordering::Relaxed);
}

/// Installs the handlers and returns the flag they set.
pub fn shutdown_flag() -> &'static AtomicBool {
    let handler = request_shutdown as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: the handler only performs an atomic store.
    unsafe {
        libc::signal(libc::SIGTERM, handler);
        libc::signal(libc::SIGINT, handler);
    }
    &SHUTDOWN
}
