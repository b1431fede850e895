//! See `skylift_proxy::fuzzing::grpc_framing` for what is checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| skylift_proxy::fuzzing::grpc_framing(data));
