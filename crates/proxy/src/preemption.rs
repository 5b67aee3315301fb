//! A point where the kernel may take the CPU from the proxy, offered every few requests.
//!
//! A busy proxy never blocks, so Linux's scheduler weighs it only at its tick (every 4 ms
//! here): a task that wakes on the proxy's CPU (a neighbour on a shared host, a log shipper)
//! gets the CPU and keeps it until the next tick, and every request in flight waits that
//! long. Reading the thread's own CPU clock makes the kernel account the time run so far
//! there and then, and switch if the proxy's slice is used up: the other task runs sooner,
//! in shorter turns, and the proxy's tail latency under contention is shorter. With nothing
//! else waiting for the CPU nothing happens. HAProxy reads its thread's CPU clock at every
//! turn of its loop, which has the same effect (bench/RESULTS.md has the measurement).

use std::cell::Cell;

/// Requests between two offers: at 64 busy connections about 0.4 ms of work, HAProxy's loop
/// there; the clock read (one system call) is about a thousandth of that work.
pub const EVERY: u32 = 32;

thread_local! {
    static SINCE_LAST: Cell<u32> = const { Cell::new(0) };
}

/// Counts one request; every [`EVERY`]th reads this thread's CPU clock. Says whether it did.
pub fn count_request() -> bool {
    let due = SINCE_LAST.with(|since| {
        let next = since.get() + 1;
        let due = next >= EVERY;
        since.set(if due { 0 } else { next });
        due
    });
    if due {
        read_thread_cpu_clock();
    }
    due
}

fn read_thread_cpu_clock() {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `now` is a valid, writable timespec for the call's duration. The result is
    // not needed (the call is made for its side effect in the kernel), so its error is too.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_is_read_once_every_so_many_requests() {
        // A fresh thread: its own counter, whatever other tests did on theirs.
        let offers = std::thread::spawn(|| (0..EVERY * 3).filter(|_| count_request()).count())
            .join()
            .expect("the counting thread finishes");
        assert_eq!(offers, 3);
    }
}
