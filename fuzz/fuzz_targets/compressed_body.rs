//! Any body bytes labelled gzip, br or zstd: decoding must not panic, must stop a gzip body
//! at its inflate ratio, and must give the same bytes however the body is cut. A decoder may
//! hold back output it has decoded until more input comes (brotli keeps a truncated stream's
//! last window in its ring buffer), so of two cuts of the same bytes one output is a prefix
//! of the other.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skiff::config::model::DecompressorLibrary;
use skiff::http::filters::decompressor::decode_pieces;

fuzz_target!(|data: &[u8]| {
    let libraries = [
        DecompressorLibrary::Gzip {
            window_bits: 15,
            max_inflate_ratio: 100,
            chunk_size: 4096,
        },
        DecompressorLibrary::Brotli { chunk_size: 4096 },
        DecompressorLibrary::Zstd { chunk_size: 4096 },
    ];
    for library in &libraries {
        let (whole, ok) = decode_pieces(library, &[data]);
        if let DecompressorLibrary::Gzip { .. } = library {
            assert!(whole.len() as u64 <= 100 * data.len() as u64 + 4096);
        }
        let mid = data.len() / 2;
        let (split, split_ok) = decode_pieces(library, &[&data[..mid], &data[mid..]]);
        if ok && split_ok {
            let common = whole.len().min(split.len());
            assert_eq!(whole[..common], split[..common]);
        }
    }
});
