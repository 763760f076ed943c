//! Any bytes from a downstream HTTP/2 client: the frame follower (the header blocks of
//! `request_headers_timeout`, Envoy's inbound flood limits) must not panic, and must come to the
//! same verdict however its input is split: the same flood, found no earlier than in the whole
//! input, or the same state. Taken as frames written to the client, the same bytes never flood
//! when the socket takes them as they come, and waiting ones flood however split.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skiff::http::h2_frames::{Flood, FloodLimits, Frames};

/// Feeds `pieces` in order: the first flood (with the offset of what may pass) and the state.
fn run<'a>(
    pieces: impl Iterator<Item = &'a [u8]>,
    limits: bool,
) -> (Option<(Flood, usize)>, Frames) {
    let mut frames = Frames::default();
    if limits {
        frames = frames.with_limits(FloodLimits::default());
    }
    let mut at = 0;
    for piece in pieces {
        if let Err((flood, before)) = frames.feed(piece) {
            return (Some((flood, at + before)), frames);
        }
        at += piece.len();
    }
    (None, frames)
}

/// Writes `data` to the client in pieces of `piece` bytes: taken by the socket at once
/// (`taken`), or left waiting.
fn write(data: &[u8], piece: usize, taken: bool) -> Result<(), Flood> {
    let limits = FloodLimits {
        outbound_frames: 50,
        outbound_control_frames: 5,
        ..FloodLimits::default()
    };
    let mut frames = Frames::new(false).with_limits(limits);
    for part in data.chunks(piece.max(1)) {
        if taken {
            frames.written(part.len());
        }
        frames.sent(part)?;
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let piece = data.get(1).map_or(1, |&b| usize::from(b));
    assert_eq!(write(data, piece, true), Ok(()));
    assert_eq!(
        write(data, piece, false).is_err(),
        write(data, data.len(), false).is_err()
    );
    let split = data.first().map_or(0, |&b| usize::from(b)).min(data.len());
    for limits in [false, true] {
        let (flood, whole) = run(std::iter::once(data), limits);
        let halves = run([&data[..split], &data[split..]].into_iter(), limits);
        let bytes = run(data.chunks(1), limits);
        for (other, how) in [(halves, "halves"), (bytes, "bytes")] {
            match (flood, other.0) {
                (None, None) => assert_eq!(whole, other.1, "{how}"),
                (Some((a, at)), Some((b, bt))) => {
                    assert_eq!(a, b, "{how}");
                    // A piece passes up to the flooding frame, or up to its own start.
                    assert!(bt >= at && bt <= data.len(), "{how}: {bt} < {at}");
                }
                (a, b) => panic!("{how}: {a:?} vs {b:?}"),
            }
        }
    }
});
