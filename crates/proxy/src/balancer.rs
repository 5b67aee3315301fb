//! Choosing a server: round robin over the servers that are up, skipping those a request
//! already tried. Pure: no I/O, so it is tested on its own.

/// The index of the next server to use, starting the scan at `cursor` (a round-robin counter),
/// among the `n` servers for which `usable(i)` holds; `None` when none does.
pub fn round_robin(cursor: usize, n: usize, usable: impl Fn(usize) -> bool) -> Option<usize> {
    (0..n).map(|k| (cursor + k) % n).find(|&i| usable(i))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_turns_over_every_server() {
        let picks: Vec<_> = (0..6).map(|c| round_robin(c, 3, |_| true).unwrap()).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn skips_servers_that_are_down() {
        let up = [true, false, true];
        let picks: Vec<_> = (0..4).map(|c| round_robin(c, 3, |i| up[i]).unwrap()).collect();
        assert_eq!(picks, [0, 2, 2, 0]);
        assert_eq!(round_robin(0, 3, |_| false), None);
        assert_eq!(round_robin(0, 0, |_| true), None);
    }
}
