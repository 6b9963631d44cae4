#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| layerkit_fuzz::decode(data));
