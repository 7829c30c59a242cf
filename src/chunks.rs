//! Work on a slice split over scoped threads, for the commands that have the machine to
//! themselves (`guardian posture --state`): each thread takes one contiguous chunk, and the
//! results come back in the slice's order.
//!
//! Layer: uses nothing of the crate.

/// `f` of each of `threads` contiguous chunks of `items`, in order (one call on the whole slice
/// when `threads` is 1 or the slice is shorter than `min`). A panic in a thread is resumed here.
pub fn map_chunks<T: Sync, R: Send>(
    items: &[T],
    threads: usize,
    min: usize,
    f: impl Fn(&[T]) -> R + Sync,
) -> Vec<R> {
    if threads <= 1 || items.len() < min.max(2) {
        return vec![f(items)];
    }
    let size = items.len().div_ceil(threads);
    let f = &f;
    std::thread::scope(|sc| {
        let handles: Vec<_> = items.chunks(size).map(|c| sc.spawn(move || f(c))).collect();
        handles
            .into_iter()
            .map(|h| match h.join() {
                Ok(r) => r,
                Err(panic) => std::panic::resume_unwind(panic),
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_come_back_in_order_whatever_the_threads() {
        let items: Vec<u32> = (0..10_007).collect();
        for threads in [1, 2, 3, 8] {
            let parts = map_chunks(&items, threads, 100, |c| c.to_vec());
            assert_eq!(parts.len(), threads.min(items.len()));
            assert_eq!(parts.concat(), items, "{threads} threads");
        }
        assert_eq!(map_chunks(&items[..50], 4, 100, <[u32]>::len), [50]);
        assert_eq!(map_chunks::<u32, usize>(&[], 4, 0, <[u32]>::len), [0]);
    }
}
