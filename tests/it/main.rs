//! The one integration test binary for layerkit; one module per area.

#![allow(clippy::disallowed_methods, clippy::disallowed_types)] // test code: std::fs is fine here

// Helpers: root/overlay probe, mounts, tree dump, the independent OCI applier, tar listings.
#[macro_use]
mod support;
// layerdiff against the kernel's merged view on real overlay mounts, four mount flavours.
mod diff_overlay;
// The layerdiff / layerkit diff CLI contract: bad input, determinism, --json, compression, clamping.
mod diff_cli;
// Differential tests of the tar reader against Python tarfile.
mod tar_read;
// layerapply --store/--into against the kernel: store layout, raw layer dirs, mounted merged view.
mod apply_store;
// layerapply on hostile and corrupt layers: clean one-line errors, nothing touched outside.
mod apply_hostile;
// layerkit squash against its law (B + squash == B + stack) on apply_flat, the kernel and a model.
mod squash;
// Faults: SIGKILL/SIGINT/SIGTERM mid-run, concurrent stores, ENOSPC, stale temp files of killed writers.
mod faults;
// Paths at any depth: linear work and memory up to MAX_DEPTH, refusal beyond it, layerdiff past
// PATH_MAX.
mod deep;
// Outputs: -o through devices/FIFOs, byte-identical gzip/zstd at any -j, --store refusals, real causes.
mod outputs;
// -j N as one thread budget: every job's peak thread count within its bound.
mod threads;
// Images as inputs: oci:, oci-archive:, docker-archive: against umoci and the kernel; verification.
mod images;
// The container loop on the store (create, mount, commit, inspect, ls, rm, rmi, prune) through the kernel.
mod containers;
// The store under concurrency and kill -9: every command reads and repairs what is left.
mod store_crash;
