#![no_main]
//! `cargo fuzz run image`: see `sc_fuzz::image` for what it does with the input.

libfuzzer_sys::fuzz_target!(|data: &[u8]| sc_fuzz::image(data));
