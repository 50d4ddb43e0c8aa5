#![no_main]
//! `cargo fuzz run model`: see `sc_fuzz::model` for what it does with the input.

libfuzzer_sys::fuzz_target!(|data: &[u8]| sc_fuzz::model(data));
