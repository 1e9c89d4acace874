//! Shrinking passes run after proptest's own: proptest removes one element at a time
//! and cannot turn a concurrent step into single steps, so a long failing case often
//! ends its time budget still long. These passes keep a candidate only when it still
//! fails, so the result is always a failing case.

use std::time::Instant;

use super::ops::{
    Case, KeySpelling, Op, PathSpelling, Proto, Query, Step, SvcRef, TenantRef, TenantSpelling,
};

/// Shrinks `case` while `fails` holds, until `deadline`; returns the smallest failing
/// case found and the number of runs.
pub fn minimise(
    mut case: Case,
    deadline: Instant,
    mut fails: impl FnMut(&Case) -> bool,
) -> (Case, u64) {
    // Until nothing changes: removing one step can make another removable (services
    // are named by index modulo the number started, so a removed start re-targets later
    // writes).
    let mut runs = 0u64;
    loop {
        let before = case.clone();
        let (smaller, more) = pass(case, deadline, &mut fails);
        runs += more;
        case = smaller;
        if case == before || Instant::now() >= deadline {
            return (case, runs);
        }
    }
}

fn pass(mut case: Case, deadline: Instant, fails: &mut impl FnMut(&Case) -> bool) -> (Case, u64) {
    let mut runs = 0u64;
    let mut try_case = |candidate: Case, case: &mut Case| -> bool {
        if Instant::now() >= deadline || candidate == *case {
            return false;
        }
        runs += 1;
        if fails(&candidate) {
            *case = candidate;
            true
        } else {
            false
        }
    };
    // Remove runs of steps, halving the run length (ddmin without complements).
    let mut chunk = case.steps.len().div_ceil(2).max(1);
    loop {
        let mut start = 0;
        while start < case.steps.len() {
            let mut candidate = case.clone();
            let end = (start + chunk).min(candidate.steps.len());
            candidate.steps.drain(start..end);
            if candidate.steps.is_empty() || !try_case(candidate, &mut case) {
                start += chunk;
            }
        }
        if chunk == 1 {
            break;
        }
        chunk = chunk.div_ceil(2);
    }
    // A concurrent step: try it as its operations one after the other, then each alone.
    let mut i = 0;
    while i < case.steps.len() {
        if let Step::Together(ops) = case.steps[i].clone() {
            let mut sequential = case.clone();
            sequential
                .steps
                .splice(i..=i, ops.iter().cloned().map(Step::One));
            if !try_case(sequential, &mut case) {
                for op in ops {
                    let mut alone = case.clone();
                    alone.steps[i] = Step::One(op);
                    if try_case(alone, &mut case) {
                        break;
                    }
                }
            }
        }
        i += 1;
    }
    // Then remove single steps again, and make each operation as plain as it can be.
    let mut i = 0;
    while i < case.steps.len() {
        let mut candidate = case.clone();
        candidate.steps.remove(i);
        if candidate.steps.is_empty() || !try_case(candidate, &mut case) {
            i += 1;
        }
    }
    for i in 0..case.steps.len() {
        if let Step::One(op) = &case.steps[i] {
            for plainer in plainer(op) {
                let mut candidate = case.clone();
                candidate.steps[i] = Step::One(plainer);
                try_case(candidate, &mut case);
            }
        }
    }
    (case, runs)
}

/// Plainer versions of `op`, one simplification each (HTTP/1.1, plain spellings, no
/// query parameters).
fn plainer(op: &Op) -> Vec<Op> {
    let mut out = Vec::new();
    let mut with = |f: &dyn Fn(&mut Op)| {
        let mut o = op.clone();
        f(&mut o);
        if o != *op {
            out.push(o);
        }
    };
    with(&|o| set_proto(o, Proto::H1));
    with(&|o| set_path(o, PathSpelling { mode: 0, seed: 0 }));
    with(&|o| set_tenant_spelling(o, TenantSpelling::Exact));
    with(&|o| {
        if let Op::ReadAnonymous {
            spelling, query, ..
        }
        | Op::ReadCustomer {
            spelling, query, ..
        } = o
        {
            *spelling = KeySpelling {
                mode: 0,
                seed: 0,
                trailing_slash: false,
            };
            *query = Query::default();
        }
    });
    with(&|o| {
        if let Op::ReadAnonymous { query, .. } | Op::ReadCustomer { query, .. } = o {
            *query = Query::default();
        }
    });
    with(&|o| {
        if let Op::ReadAnonymous { spelling, .. } | Op::ReadCustomer { spelling, .. } = o {
            *spelling = KeySpelling {
                mode: 0,
                seed: 0,
                trailing_slash: false,
            };
        }
    });
    with(&|o| {
        if let Op::Start { ext, .. } = o {
            *ext = 0;
        }
    });
    out
}

fn set_proto(op: &mut Op, to: Proto) {
    match op {
        Op::Start { proto, .. }
        | Op::StartItem { proto, .. }
        | Op::EndItem { proto, .. }
        | Op::Transition { proto, .. }
        | Op::Associate { proto, .. }
        | Op::Extension { proto, .. }
        | Op::Expiry { proto, .. }
        | Op::EndService { proto, .. }
        | Op::Delete { proto, .. }
        | Op::ReadAnonymous { proto, .. }
        | Op::ReadCustomer { proto, .. }
        | Op::ReadById { proto, .. } => *proto = to,
    }
}

fn set_path(op: &mut Op, to: PathSpelling) {
    match op {
        Op::Start { path, .. }
        | Op::StartItem { path, .. }
        | Op::EndItem { path, .. }
        | Op::Transition { path, .. }
        | Op::Associate { path, .. }
        | Op::Extension { path, .. }
        | Op::Expiry { path, .. }
        | Op::EndService { path, .. }
        | Op::Delete { path, .. } => *path = to,
        Op::ReadAnonymous { .. } | Op::ReadCustomer { .. } | Op::ReadById { .. } => {}
    }
}

fn set_tenant_spelling(op: &mut Op, to: TenantSpelling) {
    match op {
        Op::Start {
            tenant: TenantRef { spelling, .. },
            ..
        }
        | Op::ReadAnonymous {
            tenant: TenantRef { spelling, .. },
            ..
        }
        | Op::ReadCustomer {
            tenant: TenantRef { spelling, .. },
            ..
        } => *spelling = to,
        Op::StartItem {
            svc: SvcRef { spelling, .. },
            ..
        }
        | Op::EndItem {
            svc: SvcRef { spelling, .. },
            ..
        }
        | Op::Transition {
            svc: SvcRef { spelling, .. },
            ..
        }
        | Op::Associate {
            svc: SvcRef { spelling, .. },
            ..
        }
        | Op::Extension {
            svc: SvcRef { spelling, .. },
            ..
        }
        | Op::Expiry {
            svc: SvcRef { spelling, .. },
            ..
        }
        | Op::EndService {
            svc: SvcRef { spelling, .. },
            ..
        }
        | Op::Delete {
            svc: SvcRef { spelling, .. },
            ..
        }
        | Op::ReadById {
            svc: SvcRef { spelling, .. },
            ..
        } => *spelling = to,
    }
}
