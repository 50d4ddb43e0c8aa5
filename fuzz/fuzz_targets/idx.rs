#![no_main]
//! `cargo fuzz run idx`: see `sc_fuzz::idx` for what it does with the input.

libfuzzer_sys::fuzz_target!(|data: &[u8]| sc_fuzz::idx(data));
