//! See `skylift_proxy::fuzzing::otlp_split` for what is checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| skylift_proxy::fuzzing::otlp_split(data));
