//! `ferry convert`'s engine: images in OCI layouts to zstd:chunked images.

mod image;
mod layer;
pub mod oci;
pub mod prioritize;

pub use image::{convert_image, ConvertOptions, LayerReport, Progress, Quiet, Report};
pub use layer::convert_layer;
pub use prioritize::Priorities;

#[cfg(test)]
mod tests;
