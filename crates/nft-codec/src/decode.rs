//! Decoding what the kernel sends back (to be written).
