//! layerapply on hostile input (being written).
