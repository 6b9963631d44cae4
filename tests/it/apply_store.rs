//! layerapply against the kernel (being written).
