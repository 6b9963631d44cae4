//! The one integration test binary for layerkit; one module per area.

// Differential tests of the tar reader against Python tarfile.
mod tar_read;
