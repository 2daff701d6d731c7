#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| device_taint_eviction::fuzz_targets::index_events(data));
