//! What each fuzz target in `fuzz/` checks, callable from stable Rust so that the corpus is
//! replayed by `cargo test` (see the tests below) and not only under `cargo fuzz`.
//!
//! Every target takes raw bytes as the API server (or a hostile client writing to it) could send
//! them. Decoding may fail (the watcher then skips the object); what must never happen is a
//! panic, a projection that differs between two runs on the same input, or an index that keeps
//! anything after the object it came from is deleted.

use crate::{
    index::State,
    k8s::{DeviceTaintRule, ResourceClaim, ResourceSlice, Timestamp, WatchedPod},
    view::{ClaimView, PodView, RuleView, SliceView},
};

/// A fixed wall-clock time, so that a failing input reproduces exactly.
fn now() -> Timestamp {
    Timestamp::from_second(1_800_000_000).unwrap_or(Timestamp::UNIX_EPOCH)
}

/// A pod as the pod watch receives it: decode, project, add to the index and delete again.
///
/// # Panics
/// When the projection is not deterministic or the index keeps the pod after its delete.
pub fn pod(data: &[u8]) {
    let Ok(pod) = serde_json::from_slice::<WatchedPod>(data) else {
        return;
    };
    let view = PodView::from_api(&pod);
    assert_eq!(
        view,
        PodView::from_api(&pod),
        "pod projection is not deterministic"
    );
    let Ok(Some(view)) = view else {
        return;
    };
    let mut state = State::new();
    let (name, uid) = (view.object_name(), view.uid.clone());
    state.apply_pod(&name, Some(view));
    assert_eq!(state.sizes().pods, 1, "a pod with claims is stored");
    state.delete_pod(&name, &uid);
    assert_eq!(state.sizes().pods, 0, "a deleted pod is forgotten");
    drop(state.take_changes());
}

/// A ResourceClaim: decode, project, add and delete; its devices leave the index with it.
///
/// # Panics
/// When the projection is not deterministic or the index keeps the claim or its devices.
pub fn claim(data: &[u8]) {
    let Ok(claim) = serde_json::from_slice::<ResourceClaim>(data) else {
        return;
    };
    let view = ClaimView::from_api(&claim);
    assert_eq!(
        view,
        ClaimView::from_api(&claim),
        "claim projection is not deterministic"
    );
    let Ok(view) = view else {
        return;
    };
    let mut state = State::new();
    let (name, uid) = (view.object_name(), view.uid.clone());
    state.apply_claim(view);
    state.delete_claim(&name, &uid);
    let sizes = state.sizes();
    assert_eq!(
        (sizes.claims, sizes.devices),
        (0, 0),
        "a deleted claim is forgotten"
    );
    drop(state.take_changes());
}

/// A ResourceSlice: decode, project, add and delete.
///
/// # Panics
/// When the projection is not deterministic or the index keeps the slice after its delete.
pub fn slice(data: &[u8]) {
    let Ok(slice) = serde_json::from_slice::<ResourceSlice>(data) else {
        return;
    };
    let view = SliceView::from_api(&slice);
    assert_eq!(
        view,
        SliceView::from_api(&slice),
        "slice projection is not deterministic"
    );
    let Ok(view) = view else {
        return;
    };
    let mut state = State::new();
    let name = view.name.clone();
    state.apply_slice(view, now());
    assert_eq!(state.sizes().slices, 1, "a slice is stored");
    state.delete_slice(&name);
    assert_eq!(state.sizes().slices, 0, "a deleted slice is forgotten");
    drop(state.take_changes());
}

/// A DeviceTaintRule at any version: decode, project, add and delete.
///
/// # Panics
/// When the projection is not deterministic or the index keeps the rule after its delete.
pub fn rule(data: &[u8]) {
    let Ok(rule) = serde_json::from_slice::<DeviceTaintRule>(data) else {
        return;
    };
    let view = RuleView::from_api(&rule);
    assert_eq!(
        view,
        RuleView::from_api(&rule),
        "rule projection is not deterministic"
    );
    let Ok(view) = view else {
        return;
    };
    let mut state = State::new();
    let (name, uid) = (view.name.clone(), view.uid.clone());
    state.apply_rule(view, now());
    assert_eq!(state.sizes().rules, 1, "a rule is stored");
    state.delete_rule(&name, &uid);
    assert_eq!(state.sizes().rules, 0, "a deleted rule is forgotten");
    drop(state.take_changes());
}

/// A sequence of pod, claim, slice and rule events, re-lists and worker completions, read from
/// the bytes: after every event the incremental index must hold exactly the pending evictions a
/// from-scratch evaluation finds (`index::model`, the property test's reference).
///
/// # Panics
/// When the index and the reference disagree.
pub fn index_events(data: &[u8]) {
    crate::index::model::check_sequence(&crate::index::model::ops_from_bytes(data));
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// Runs every file of `fuzz/corpus/<target>` through the target. The corpus holds the seeds
    /// and every input a fuzzing run found interesting, so this keeps them passing on stable.
    fn replay(target: &str, check: fn(&[u8])) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/corpus")
            .join(target);
        let mut inputs = 0;
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            let outcome = std::panic::catch_unwind(|| check(&data));
            assert!(outcome.is_ok(), "fuzz input {} fails", path.display());
            inputs += 1;
        }
        assert!(inputs > 0, "no corpus in {}", dir.display());
    }

    #[test]
    fn pod_corpus() {
        replay("pod", super::pod);
    }

    #[test]
    fn claim_corpus() {
        replay("claim", super::claim);
    }

    #[test]
    fn slice_corpus() {
        replay("slice", super::slice);
    }

    #[test]
    fn index_events_corpus() {
        replay("index_events", super::index_events);
    }

    #[test]
    fn rule_corpus() {
        replay("rule", super::rule);
    }
}
