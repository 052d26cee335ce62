//! Safe, allocation-free wrapper of libibverbs: the only crate of ccm with `unsafe`.

pub mod lab;
