//! The one integration test binary for layerkit; one module per area.

#![allow(clippy::disallowed_methods, clippy::disallowed_types)] // test code: std::fs is fine here

// The layerdiff CLI contract: errors, digests, determinism, options.
mod cli;
// Support: root probe, overlay mounts, the independent applier and tree dump.
mod kernel;
// layerdiff against the kernel's merged view on real overlay mounts.
mod overlay;
// Differential tests of the tar reader against Python tarfile.
mod tar_read;
