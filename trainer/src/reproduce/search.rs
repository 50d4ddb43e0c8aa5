//! One setting chosen from finished runs on the validation split: the best candidate, and a
//! bracketed search that steps past an edge of its candidates while the best sits on it.
//! `budget` (max LR, weight decay), `recipe` (the stack's) and `claims` (each arm's) choose this
//! way.

/// How many times a bracketed search may step past the edge of its candidates.
pub const MAX_STEPS: usize = 3;

/// The candidate with the best accuracy, the first of equals; None when no candidate has an
/// accuracy (unfinished or diverged). `tried`: (value, final validation accuracy).
pub fn best(tried: impl IntoIterator<Item = (f64, Option<f64>)>) -> Option<f64> {
    let mut top: Option<(f64, f64)> = None;
    for (v, acc) in tried {
        if let Some(a) = acc {
            if top.is_none_or(|(_, b)| a > b) {
                top = Some((v, a));
            }
        }
    }
    top.map(|t| t.0)
}

/// The next value to try when the best is the lowest tried (half of it) or the highest (twice
/// it); None when the best has a worse neighbour on each side, or nothing has an accuracy. A
/// choice is only made between worse neighbours.
pub fn past_edge(tried: &[(f64, Option<f64>)]) -> Option<f64> {
    let top = best(tried.iter().copied())?;
    let lo = tried.iter().map(|t| t.0).fold(f64::INFINITY, f64::min);
    let hi = tried.iter().map(|t| t.0).fold(f64::NEG_INFINITY, f64::max);
    if top == lo {
        Some(lo / 2.0)
    } else if top == hi {
        Some(hi * 2.0)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_best_is_the_first_of_equals_and_ignores_runs_without_accuracy() {
        assert_eq!(best([(1e-4, Some(0.90)), (5e-4, Some(0.91))]), Some(5e-4));
        assert_eq!(best([(1e-4, Some(0.90)), (5e-4, Some(0.90))]), Some(1e-4));
        assert_eq!(best([(1e-4, Some(0.90)), (5e-4, None)]), Some(1e-4));
        assert_eq!(best([(1e-4, None)]), None);
    }

    #[test]
    fn a_search_steps_past_the_edge_its_best_sits_on() {
        let t = |a: [Option<f64>; 3]| [(0.1, a[0]), (0.2, a[1]), (0.4, a[2])];
        assert_eq!(past_edge(&t([Some(0.9), Some(0.8), Some(0.7)])), Some(0.05));
        assert_eq!(past_edge(&t([Some(0.7), Some(0.8), Some(0.9)])), Some(0.8));
        assert_eq!(past_edge(&t([Some(0.7), Some(0.9), Some(0.8)])), None);
        // A diverged top candidate is worse than any accuracy.
        assert_eq!(past_edge(&t([Some(0.7), Some(0.9), None])), None);
        assert_eq!(past_edge(&t([None, None, None])), None);
    }
}
