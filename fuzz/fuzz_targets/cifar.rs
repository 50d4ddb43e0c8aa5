#![no_main]
//! `cargo fuzz run cifar`: see `sc_fuzz::cifar` for what it does with the input.

libfuzzer_sys::fuzz_target!(|data: &[u8]| sc_fuzz::cifar(data));
