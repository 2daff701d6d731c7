//! Decision-core benchmarks: what the controller's hot paths cost without any API server.
//!
//! The cluster: 1000 ResourceSlices of 10 devices (10 000 devices), 10 000 allocated claims
//! (one device each), 100 000 pods of which 10 000 use a claim. Run with `cargo bench --bench core`.

use device_taint_eviction::{
    fixtures::{claim, pod, rule, slice, t, taint},
    index::State,
    view::{ObjectName, SliceView},
};

const SLICES: usize = 1000;
const DEVICES_PER_SLICE: usize = 10;
const CLAIMS: usize = SLICES * DEVICES_PER_SLICE;
const PODS: usize = 100_000;

fn main() {
    divan::main();
}

fn slice_of(i: usize, tainted_device: Option<usize>) -> SliceView {
    let mut s = slice(&format!("slice-{i}"), "gpu.example.com", &format!("node-{i}"));
    for d in 0..DEVICES_PER_SLICE {
        s = s.with_device(&format!("gpu-{d}"));
        if tainted_device == Some(d) {
            s = s.with_taint(taint("example.com/broken", "", "NoExecute", Some(t(0))));
        }
    }
    s
}

fn build() -> State {
    let mut state = State::new();
    for i in 0..SLICES {
        state.apply_slice(slice_of(i, None), t(0));
    }
    for i in 0..PODS {
        let ns = format!("ns-{}", i % 100);
        let name = ObjectName::new(&ns, format!("pod-{i}"));
        if i < CLAIMS {
            let p = pod(&ns, &name.name).with_claim(&format!("claim-{i}"));
            let c = claim(&ns, &format!("claim-{i}"))
                .with_device(
                    "gpu.example.com",
                    &format!("node-{}", i / DEVICES_PER_SLICE),
                    &format!("gpu-{}", i % DEVICES_PER_SLICE),
                )
                .reserved_for(&p);
            state.apply_claim(c);
            state.apply_pod(&name, Some(p));
        } else {
            // Pods without claims are projected to nothing and not stored.
            state.apply_pod(&name, None);
        }
    }
    state.take_changes();
    state
}

/// Start-up: the initial lists of every kind.
#[divan::bench(sample_count = 5, sample_size = 1)]
fn build_state() -> State {
    build()
}

/// One device of one slice gets a NoExecute taint, then loses it (upstream BenchmarkTaintUntaint).
#[divan::bench(sample_count = 50, sample_size = 10)]
fn taint_untaint_one_device(bencher: divan::Bencher) {
    let mut state = build();
    bencher.bench_local(|| {
        state.apply_slice(slice_of(500, Some(3)), t(1));
        assert_eq!(state.sizes().pending, 1);
        state.apply_slice(slice_of(500, None), t(1));
        state.take_changes()
    });
}

/// A DeviceTaintRule selecting the driver's 10 000 devices, added and deleted again.
#[divan::bench(sample_count = 10, sample_size = 1)]
fn rule_matching_10k_devices(bencher: divan::Bencher) {
    let mut state = build();
    let r = rule("all-gpus").selecting(Some("gpu.example.com"), None, None);
    bencher.bench_local(|| {
        state.apply_rule(r.clone(), t(1));
        assert_eq!(state.sizes().pending, CLAIMS);
        state.delete_rule(&r.name, &r.uid);
        state.take_changes()
    });
}

/// A rule that selects a single device among 10 000 (the incremental path, SPEC D5).
#[divan::bench(sample_count = 50, sample_size = 10)]
fn rule_matching_one_device(bencher: divan::Bencher) {
    let mut state = build();
    let r = rule("one-gpu").selecting(Some("gpu.example.com"), Some("node-7"), Some("gpu-3"));
    bencher.bench_local(|| {
        state.apply_rule(r.clone(), t(1));
        state.delete_rule(&r.name, &r.uid);
        state.take_changes()
    });
}
