//! Mapping a slice on every CPU, keeping the order.

/// `f` over `items`, in order. At least `min` items are split into one contiguous chunk per
/// CPU, each mapped on its own thread; fewer (or one CPU) are mapped here. A panic in a chunk
/// is a bug: that chunk is mapped again on this thread so the panic surfaces here with its
/// own message instead of being lost.
pub(crate) fn par_map<T: Sync, R: Send>(
    items: &[T],
    min: usize,
    f: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    let threads = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    if items.len() < min.max(2) || threads < 2 {
        return items.iter().map(&f).collect();
    }
    let chunk = items.len().div_ceil(threads);
    let f = &f;
    std::thread::scope(|scope| {
        let handles: Vec<_> = items
            .chunks(chunk)
            .map(|part| {
                (
                    part,
                    scope.spawn(move || part.iter().map(f).collect::<Vec<_>>()),
                )
            })
            .collect();
        let mut out = Vec::with_capacity(items.len());
        for (part, h) in handles {
            match h.join() {
                Ok(mapped) => out.extend(mapped),
                Err(_) => out.extend(part.iter().map(f)),
            }
        }
        out
    })
}

#[cfg(test)]
mod tests {
    use super::par_map;

    #[test]
    fn keeps_the_order_above_and_below_the_threshold() {
        let items: Vec<u32> = (0..5001).collect();
        let want: Vec<u64> = items.iter().map(|i| u64::from(*i) * 3).collect();
        assert_eq!(par_map(&items, 10, |i| u64::from(*i) * 3), want);
        assert_eq!(par_map(&items, 100_000, |i| u64::from(*i) * 3), want);
        assert!(par_map(&[] as &[u32], 0, |i| *i).is_empty());
    }
}
