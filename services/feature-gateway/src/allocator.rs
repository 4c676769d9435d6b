//! mimalloc's defaults suit a batch job better than a server that idles between bursts. Two are
//! changed: transparent huge pages are off (the `no_thp` feature: with them, arena memory is faulted
//! in 2 MiB at a time), and, in the servers (`serve`, `demo`), pages a thread freed go back to the
//! OS 10 ms after the free rather than 1 s (and only when that thread allocates again, so a
//! gateway idle after a burst kept them). Measured with an uncached gateway after bursts of
//! 1000-row batches: 53 to 60 MB resident (peak 91) with the defaults, 30 to 36 (peak 46) with
//! these; with a million cached entries, 143 to 170 MB against 121 to 132. Per-request CPU did not
//! change measurably (`bench.py redis`).
//!
//! The other commands keep mimalloc's 1 s: `ingest` never idles (it allocates and frees a fetch's
//! worth of events many times a second), and returning its pages after 10 ms made it spend about
//! 11% more CPU per event giving them back and faulting them in again; the batch commands
//! (`backfill`, `materialize`, `training-set`) end instead of idling.

use libmimalloc_sys::{mi_option_set, mi_option_t};

/// The index of `mi_option_purge_delay` in mimalloc 3's `mi_option_e` (the `libmimalloc-sys`
/// constants follow mimalloc 2's numbering); a test checks it against the default.
const PURGE_DELAY: mi_option_t = 15;
/// Milliseconds between a free and returning the page to the OS.
const PURGE_DELAY_MS: std::ffi::c_long = 10;

/// Sets the purge delay of a server (`server`: `serve` and `demo`) unless `MIMALLOC_PURGE_DELAY`
/// does. Call first thing in `main`, before any other thread exists (mimalloc's option setters
/// are not thread-safe).
pub fn configure(server: bool) {
    if server && std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: `mi_option_set` writes one entry of mimalloc's option table; the index is
        // mimalloc 3's purge delay (checked by a test) and no other thread runs yet.
        #[allow(unsafe_code)]
        unsafe {
            mi_option_set(PURGE_DELAY, PURGE_DELAY_MS)
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_purge_delay_index_is_mimalloc_3s() {
        // mimalloc 3 purges after 1000 ms by default; a different numbering would read
        // another option's default here, and `configure` would set that option.
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            // SAFETY: reads one entry of mimalloc's option table, index in range.
            #[allow(unsafe_code)]
            let delay = unsafe { libmimalloc_sys::mi_option_get(PURGE_DELAY) };
            assert_eq!(delay, 1000);
            configure(false);
            // SAFETY: as above.
            #[allow(unsafe_code)]
            let kept = unsafe { libmimalloc_sys::mi_option_get(PURGE_DELAY) };
            assert_eq!(
                kept, 1000,
                "a command other than a server keeps the default"
            );
            configure(true);
            // SAFETY: as above.
            #[allow(unsafe_code)]
            let delay = unsafe { libmimalloc_sys::mi_option_get(PURGE_DELAY) };
            assert_eq!(delay, PURGE_DELAY_MS);
        }
    }
}
