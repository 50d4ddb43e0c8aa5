#![no_main]
//! `cargo fuzz run metadata`: see `sc_fuzz::metadata` for what it does with the input.

libfuzzer_sys::fuzz_target!(|data: &[u8]| sc_fuzz::metadata(data));
