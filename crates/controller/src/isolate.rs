//! Finding the services whose rules the kernel refuses, by bisection over dry runs.
//!
//! The kernel applies a transaction atomically: one refused element refuses everything with
//! it. When a sync is refused, the loop splits the services it touched into those the kernel
//! takes and those it refuses, asking the kernel with dry runs (validated completely, then
//! thrown away) rather than by applying anything. [`isolate`] is the search, independent of
//! what a service or a dry run is.
//!
//! The search is greedy and adaptive. It keeps a growing set of *accepted* services, which
//! the kernel took together, and tries the next chunk of candidates on top of them: accepted
//! when the dry run passes, split in two when it fails, refused when a single service fails.
//! A service is only ever refused given the ones accepted before it, so two services that
//! are fine alone but conflict together resolve the same way every time: the later one in
//! the candidate order is refused. One refused service among `n` costs about `log2(n) + 2`
//! dry runs: when the first half of a failed chunk passes, the second half is known to fail
//! without a dry run, and once a service is refused, what is left of its group is tried
//! again as one chunk (it is most likely fine).

/// The outcome of [`isolate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Isolation<K> {
    /// Candidates the dataplane takes, together, in candidate order.
    pub accepted: Vec<K>,
    /// Candidates it refuses, each with the error of the dry run that refused it alone.
    pub refused: Vec<(K, String)>,
    /// Candidates not decided on when the budget ran out (neither tried alone nor with a
    /// chunk that passed).
    pub undecided: Vec<K>,
    /// Dry runs made.
    pub dry_runs: usize,
}

/// One chunk still to decide on.
struct Chunk<K> {
    keys: Vec<K>,
    /// The group the keys come from.
    group: usize,
    /// Set for the second half of a failed chunk: the error, and the numbers of accepted and
    /// refused candidates which, if found when the chunk comes up, mean the first half was
    /// accepted whole: then this half, with the same accepted candidates, is exactly the
    /// chunk that failed, and fails without a dry run.
    fails_if: Option<(usize, usize, String)>,
}

/// Splits candidates into accepted, refused and undecided.
///
/// `groups` are the candidates in the order to try them, each group tried whole first (for
/// example the services not suspected before the ones that were refused last time, so that a
/// known offender costs one dry run). `test(accepted, refused, trial)` makes one dry run of
/// the change with the `accepted` and `trial` candidates and without the `refused` ones, and
/// returns `Ok(Ok(()))` when the dataplane takes it, `Ok(Err(reason))` when it refuses it, and
/// `Err` when the dry run could not be made at all (which ends the search). At most `budget`
/// dry runs are made; what is left is undecided.
pub fn isolate<K: Clone, E>(
    groups: Vec<Vec<K>>,
    budget: usize,
    mut test: impl FnMut(&[K], &[K], &[K]) -> Result<Result<(), String>, E>,
) -> Result<Isolation<K>, E> {
    let mut out = Isolation {
        accepted: Vec::new(),
        refused: Vec::new(),
        undecided: Vec::new(),
        dry_runs: 0,
    };
    let mut refused_keys: Vec<K> = Vec::new();
    let mut stack: Vec<Chunk<K>> = groups
        .into_iter()
        .enumerate()
        .rev()
        .filter(|(_, g)| !g.is_empty())
        .map(|(group, keys)| Chunk {
            keys,
            group,
            fails_if: None,
        })
        .collect();
    while let Some(chunk) = stack.pop() {
        let known = match chunk.fails_if {
            Some((accepted, refused, reason))
                if accepted == out.accepted.len() && refused == out.refused.len() =>
            {
                Some(reason)
            }
            _ => None,
        };
        let reason = match known {
            Some(reason) => reason,
            None => {
                if out.dry_runs >= budget {
                    out.undecided.extend(chunk.keys);
                    for rest in stack.into_iter().rev() {
                        out.undecided.extend(rest.keys);
                    }
                    break;
                }
                out.dry_runs += 1;
                match test(&out.accepted, &refused_keys, &chunk.keys)? {
                    Ok(()) => {
                        out.accepted.extend(chunk.keys);
                        continue;
                    }
                    Err(reason) => reason,
                }
            }
        };
        let mut keys = chunk.keys;
        if keys.len() == 1 {
            if let Some(k) = keys.pop() {
                refused_keys.push(k.clone());
                out.refused.push((k, reason));
            }
            // What is left of the group (the second halves of the chunks on the way down,
            // in key order on the stack) is most likely fine: one chunk again.
            let mut rest = Vec::new();
            while stack.last().is_some_and(|c| c.group == chunk.group) {
                if let Some(c) = stack.pop() {
                    rest.extend(c.keys);
                }
            }
            if !rest.is_empty() {
                stack.push(Chunk {
                    keys: rest,
                    group: chunk.group,
                    fails_if: None,
                });
            }
            continue;
        }
        let second = keys.split_off(keys.len() / 2);
        let first_len = keys.len();
        stack.push(Chunk {
            keys: second,
            group: chunk.group,
            fails_if: Some((out.accepted.len() + first_len, out.refused.len(), reason)),
        });
        stack.push(Chunk {
            keys,
            group: chunk.group,
            fails_if: None,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// A dataplane that refuses any set holding one of `bad`, or both of a `pair`.
    fn run(
        n: u32,
        bad: &[u32],
        pairs: &[(u32, u32)],
        groups: Option<Vec<Vec<u32>>>,
        budget: usize,
    ) -> Isolation<u32> {
        let groups = groups.unwrap_or_else(|| vec![(0..n).collect()]);
        isolate(
            groups,
            budget,
            |acc: &[u32], refused: &[u32], trial: &[u32]| {
                let all: BTreeSet<u32> = acc.iter().chain(trial).copied().collect();
                assert!(refused.iter().all(|r| !all.contains(r)), "refused stay out");
                let b = all.iter().find(|k| bad.contains(k));
                let p = pairs
                    .iter()
                    .find(|(x, y)| all.contains(x) && all.contains(y));
                Ok::<_, ()>(match (b, p) {
                    (Some(k), _) => Err(format!("{k} refused")),
                    (None, Some((x, y))) => Err(format!("{x} and {y} conflict")),
                    _ => Ok(()),
                })
            },
        )
        .expect("no I/O errors")
    }

    fn log2_ceil(n: u32) -> usize {
        (32 - (n.max(1) - 1).leading_zeros()) as usize
    }

    #[test]
    fn nothing_refused_costs_one_dry_run() {
        let out = run(1000, &[], &[], None, 40);
        assert_eq!(out.accepted.len(), 1000);
        assert!(out.refused.is_empty() && out.undecided.is_empty());
        assert_eq!(out.dry_runs, 1);
    }

    #[test]
    fn one_refused_service_costs_about_log2_n_dry_runs() {
        for n in [1u32, 2, 3, 10, 100, 1000, 10_000] {
            for bad in [0, n / 3, n / 2, n - 1] {
                let out = run(n, &[bad], &[], None, 100);
                assert_eq!(
                    out.refused,
                    vec![(bad, format!("{bad} refused"))],
                    "n={n} bad={bad}"
                );
                assert_eq!(out.accepted.len() as u32, n - 1);
                assert!(out.undecided.is_empty());
                // The whole, then at most one dry run per level of the search, plus what
                // is left once the offender is found.
                assert!(
                    out.dry_runs <= 2 + log2_ceil(n),
                    "n={n} bad={bad}: {} dry runs",
                    out.dry_runs
                );
            }
        }
        // Last in its chunk, the offender is found with one dry run per level.
        let out = run(1024, &[1023], &[], None, 100);
        assert_eq!(out.dry_runs, 11);
    }

    #[test]
    fn several_refused_services_are_all_found() {
        let bad = [3, 17, 18, 500, 999];
        let out = run(1000, &bad, &[], None, 200);
        let refused: Vec<u32> = out.refused.iter().map(|(k, _)| *k).collect();
        assert_eq!(refused, bad);
        assert_eq!(out.accepted.len(), 995);
        assert!(out.dry_runs <= bad.len() * (1 + 2 * log2_ceil(1000)));
    }

    #[test]
    fn of_two_services_that_conflict_the_later_one_is_refused() {
        let out = run(100, &[], &[(20, 70)], None, 100);
        assert_eq!(out.refused, vec![(70, "20 and 70 conflict".to_owned())]);
        assert_eq!(out.accepted.len(), 99);
        assert!(out.accepted.contains(&20));
    }

    #[test]
    fn suspects_tried_last_cost_one_dry_run_each() {
        // The offender is known from last time: everything else passes in one dry run, the
        // suspect fails in a second one.
        let others: Vec<u32> = (0..10_000).filter(|k| *k != 4242).collect();
        let out = run(0, &[4242], &[], Some(vec![others, vec![4242]]), 100);
        assert_eq!(out.refused.len(), 1);
        assert_eq!(out.accepted.len(), 9999);
        assert_eq!(out.dry_runs, 2);
    }

    #[test]
    fn the_budget_bounds_the_dry_runs_and_leaves_the_rest_undecided() {
        let bad: Vec<u32> = (0..1000).step_by(10).collect();
        let out = run(1000, &bad, &[], None, 30);
        assert_eq!(out.dry_runs, 30);
        assert!(!out.undecided.is_empty());
        let decided = out.accepted.len() + out.refused.len() + out.undecided.len();
        assert_eq!(decided, 1000, "every candidate is accounted for once");
        for (k, _) in &out.refused {
            assert!(bad.contains(k), "only offenders are refused: {k}");
        }
    }

    #[test]
    fn a_failed_dry_run_ends_the_search() {
        let r: Result<Isolation<u32>, &str> =
            isolate(vec![vec![1, 2, 3]], 10, |_, _, _| Err("socket closed"));
        assert_eq!(r, Err("socket closed"));
    }
}
