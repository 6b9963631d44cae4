#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| layerkit_fuzz::apply(data));
libfuzzer_sys::fuzz_mutator!(|data: &mut [u8], size: usize, max_size: usize, seed: u32| {
    layerkit_fuzz::mutate(data, size, max_size, seed, libfuzzer_sys::fuzzer_mutate)
});
