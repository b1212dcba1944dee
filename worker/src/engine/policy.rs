//! The step loop's batching policy, free of libtorch: how a step's chunks split into forwards
//! (count and memory budget), and the share of the loop that other classes get while
//! interactive chunks are in hand.

/// Splits chunks (their `forward_bytes`, in order) into consecutive forwards: each takes chunks
/// while it holds fewer than `max_batch` and their bytes stay within `budget`; a chunk over the
/// budget on its own still runs, alone.
pub(super) fn batch_sizes(bytes: &[usize], max_batch: usize, budget: usize) -> Vec<usize> {
    let mut sizes = Vec::new();
    let (mut n, mut sum) = (0usize, 0usize);
    for &b in bytes {
        if n > 0 && (n == max_batch.max(1) || sum.saturating_add(b) > budget) {
            sizes.push(n);
            (n, sum) = (0, 0);
        }
        n += 1;
        sum = sum.saturating_add(b);
    }
    if n > 0 {
        sizes.push(n);
    }
    sizes
}

/// The share of the step loop's time that other chunks get while interactive ones are in hand
/// (on devices where batching costs time: CPU).
pub(super) const YIELD_SHARE: f64 = 0.1;

/// Seconds the step loop spent on interactive and on other chunks since interactive work came.
#[derive(Debug, Default)]
pub(super) struct Shares {
    pub(super) urgent: f64,
    pub(super) other: f64,
}

#[cfg(test)]
mod tests {
    use super::batch_sizes;

    #[test]
    fn batches_stop_at_the_count_or_the_memory_budget() {
        // Count only.
        assert_eq!(batch_sizes(&[1; 10], 4, usize::MAX), vec![4, 4, 2]);
        // Budget only: 3 + 3 fits 7, a third does not.
        assert_eq!(batch_sizes(&[3; 5], 32, 7), vec![2, 2, 1]);
        // Mixed sizes, in order; a chunk over the budget runs alone.
        assert_eq!(batch_sizes(&[2, 2, 9, 1, 1], 8, 5), vec![2, 1, 2]);
        assert_eq!(batch_sizes(&[], 8, 5), Vec::<usize>::new());
        assert_eq!(batch_sizes(&[5, 5], 0, usize::MAX), vec![1, 1]);
    }
}
