//! The container loop on the store, through the kernel.
