//! The proxy's allocator: glibc's malloc, with a cache of freed blocks on each worker thread.
//!
//! glibc keeps its own per-thread cache (tcache) of at most 7 freed chunks of each size up to
//! 1,032 bytes. A worker frees and allocates in bursts larger than that (a connection's
//! state, its streams, their headers), and every block of 1 KiB or more (a connection's boxed
//! state, hyper's 8 KiB buffers, a stream's router) goes to the arena, which first merges its
//! fast bins whenever a block that large is asked for. A worker's cache keeps freed blocks in
//! size classes and hands them back on the next allocation of the class, without a lock or a
//! search:
//!
//! - up to 1 KiB, one class per glibc chunk size (16 bytes apart): a block is rounded up to
//!   what its chunk holds anyway, so the rounding costs no memory;
//! - from 1 KiB to 16 KiB, classes 64 bytes apart (blocks of 1,088, 1,152, … 16,384 bytes), so
//!   that rounding up costs a connection's few large blocks little;
//! - larger blocks, and blocks aligned to more than 16 bytes, go to glibc as they are.
//!
//! Every block in a class is allocated at its class's full size, on every thread, so that a
//! block freed on any thread may serve any request of its class. Only threads that asked for
//! it ([`cache_this_thread`]) keep a cache, bounded per class and in bytes; it is given back
//! to glibc by [`release_this_thread`].

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::ptr;

/// The largest alignment malloc gives every block (x86_64 and aarch64 glibc).
const MALLOC_ALIGN: usize = 16;
/// glibc's chunk header within a chunk's size: a chunk of `c` bytes holds `c - 8`.
const CHUNK_OVERHEAD: usize = 8;
/// The smallest chunk.
const MIN_CHUNK: usize = 32;
/// Small classes: chunks of 32, 48, … 1,040 bytes (a block of up to 1,032 bytes).
const SMALL_MAX: usize = 1024 + MIN_CHUNK - 16 - CHUNK_OVERHEAD;
const SMALL_CLASSES: usize = (SMALL_MAX + CHUNK_OVERHEAD - MIN_CHUNK) / 16 + 1;
/// Large classes: blocks of 1,088, 1,152, … 16,384 bytes.
const LARGE_STEP: usize = 64;
const LARGE_MAX: usize = 16 * 1024;
/// The first large class's size, in steps.
const LARGE_FIRST: usize = SMALL_MAX.div_ceil(LARGE_STEP);
const LARGE_CLASSES: usize = LARGE_MAX / LARGE_STEP - LARGE_FIRST + 1;
const CLASSES: usize = SMALL_CLASSES + LARGE_CLASSES;
/// Freed blocks a thread keeps of one small class, and of one large class.
const SMALL_KEEP: u16 = 64;
const LARGE_KEEP: u16 = 16;
/// Bytes a thread keeps in all.
const BUDGET: usize = 512 * 1024;

/// A size's class, if it has one.
#[inline(always)]
fn class(size: usize) -> Option<usize> {
    if size <= SMALL_MAX {
        // glibc's chunk for `size` bytes, in 16-byte steps from MIN_CHUNK.
        let chunk = (size + CHUNK_OVERHEAD + 15) & !15;
        Some(chunk.max(MIN_CHUNK) / 16 - MIN_CHUNK / 16)
    } else if size <= LARGE_MAX {
        Some(SMALL_CLASSES + size.div_ceil(LARGE_STEP).max(LARGE_FIRST) - LARGE_FIRST)
    } else {
        None
    }
}

/// What every block of class `c` is allocated with.
#[inline(always)]
fn class_size(c: usize) -> usize {
    if c < SMALL_CLASSES {
        (c + MIN_CHUNK / 16) * 16 - CHUNK_OVERHEAD
    } else {
        (c - SMALL_CLASSES + LARGE_FIRST) * LARGE_STEP
    }
}

/// One thread's freed blocks: a list per class, linked through the blocks' first word.
struct Cache {
    on: Cell<bool>,
    bytes: Cell<usize>,
    heads: [Cell<*mut u8>; CLASSES],
    counts: [Cell<u16>; CLASSES],
}

thread_local! {
    // No destructor and a constant start: reading it never allocates nor registers anything,
    // so the allocator itself may use it.
    static CACHE: Cache = const {
        Cache {
            on: Cell::new(false),
            bytes: Cell::new(0),
            heads: [const { Cell::new(ptr::null_mut()) }; CLASSES],
            counts: [const { Cell::new(0) }; CLASSES],
        }
    };
}

impl Cache {
    #[inline(always)]
    fn pop(&self, c: usize) -> *mut u8 {
        let head = self.heads[c].get();
        if !head.is_null() {
            // SAFETY: a block on the list is at least a word long, aligned to 16 and ours
            // alone; its first word is the next block on the list.
            let next = unsafe { head.cast::<*mut u8>().read() };
            self.heads[c].set(next);
            self.counts[c].set(self.counts[c].get() - 1);
            self.bytes.set(self.bytes.get() - class_size(c));
        }
        head
    }

    /// Keeps `block` (of class `c`), if this thread keeps blocks and has room for it.
    #[inline(always)]
    fn push(&self, c: usize, block: *mut u8) -> bool {
        let keep = if c < SMALL_CLASSES {
            SMALL_KEEP
        } else {
            LARGE_KEEP
        };
        let size = class_size(c);
        if !self.on.get() || self.counts[c].get() >= keep || self.bytes.get() + size > BUDGET {
            return false;
        }
        // SAFETY: the block is being freed, so nothing else refers to it; it holds at least
        // a word and is aligned for one.
        unsafe { block.cast::<*mut u8>().write(self.heads[c].get()) };
        self.heads[c].set(block);
        self.counts[c].set(self.counts[c].get() + 1);
        self.bytes.set(self.bytes.get() + size);
        true
    }

    fn drain(&self) {
        for c in 0..CLASSES {
            loop {
                let block = self.pop(c);
                if block.is_null() {
                    break;
                }
                // SAFETY: every cached block came from malloc (through System) with its
                // class's size and an alignment malloc gives.
                unsafe {
                    System.dealloc(block, Layout::from_size_align_unchecked(class_size(c), 1))
                };
            }
        }
    }
}

/// Keeps freed blocks on this thread from now on (for a worker's thread).
pub fn cache_this_thread() {
    CACHE.with(|c| c.on.set(true));
}

/// Gives this thread's kept blocks back to glibc and keeps no more (before the thread ends, or
/// when memory is to be given back).
pub fn release_this_thread() {
    CACHE.with(|c| {
        c.on.set(false);
        c.drain();
    });
}

/// Blocks and bytes this thread keeps now.
pub fn cached_on_this_thread() -> (usize, usize) {
    CACHE.with(|c| {
        let blocks = c.counts.iter().map(|n| usize::from(n.get())).sum();
        (blocks, c.bytes.get())
    })
}

/// glibc's malloc behind per-thread caches of freed blocks (see the module's description).
pub struct Allocator;

/// The class of a layout the caches serve.
#[inline(always)]
fn cached_class(layout: Layout) -> Option<usize> {
    if layout.align() <= MALLOC_ALIGN {
        class(layout.size())
    } else {
        None
    }
}

/// `layout` widened to its class's size.
#[inline(always)]
fn class_layout(c: usize, layout: Layout) -> Layout {
    // SAFETY: the class's size is at least the layout's and far below isize::MAX; the
    // alignment is the layout's own.
    unsafe { Layout::from_size_align_unchecked(class_size(c), layout.align()) }
}

// Each method is called, as malloc and free are: inlined at every allocation and drop, the
// caches' code would spread over the callers' hot code.
//
// SAFETY: every block handed out comes from System (malloc) with at least the size and the
// alignment asked; a cached block is handed out again only after it was freed, and only for
// a request its class's size covers.
unsafe impl GlobalAlloc for Allocator {
    #[inline(never)]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match cached_class(layout) {
            Some(c) => {
                let block = CACHE.with(|cache| cache.pop(c));
                if !block.is_null() {
                    return block;
                }
                // SAFETY: a non-zero size with a valid alignment.
                unsafe { System.alloc(class_layout(c, layout)) }
            }
            // SAFETY: as the caller's.
            None => unsafe { System.alloc(layout) },
        }
    }

    #[inline(never)]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        match cached_class(layout) {
            Some(_) => {
                // SAFETY: as the caller's.
                let block = unsafe { self.alloc(layout) };
                if !block.is_null() {
                    // SAFETY: the block holds at least `layout.size()` bytes.
                    unsafe { block.write_bytes(0, layout.size()) };
                }
                block
            }
            // SAFETY: as the caller's.
            None => unsafe { System.alloc_zeroed(layout) },
        }
    }

    #[inline(never)]
    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        match cached_class(layout) {
            Some(c) => {
                if !CACHE.with(|cache| cache.push(c, block)) {
                    // SAFETY: allocated by System with the class's layout.
                    unsafe { System.dealloc(block, class_layout(c, layout)) }
                }
            }
            // SAFETY: as the caller's.
            None => unsafe { System.dealloc(block, layout) },
        }
    }

    #[inline(never)]
    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let (old, new) = match cached_class(layout) {
            Some(c) => (Some(c), class(new_size)),
            None if layout.align() <= MALLOC_ALIGN => (None, class(new_size)),
            // SAFETY: as the caller's; over-aligned blocks never have a class.
            None => return unsafe { System.realloc(block, layout, new_size) },
        };
        match (old, new) {
            // The block already holds its class's size.
            (Some(o), Some(n)) if o == n => block,
            // From one class to another: through the caches, so that the block given up is
            // kept and the new one may be a kept one (glibc's realloc would take neither).
            (Some(_), Some(_)) => {
                // SAFETY: the new layout is valid (a class's size, the old alignment).
                let new_layout =
                    unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
                // SAFETY: a non-zero size with a valid alignment.
                let moved = unsafe { self.alloc(new_layout) };
                if !moved.is_null() {
                    // SAFETY: both blocks hold at least the smaller size, and are distinct.
                    unsafe {
                        ptr::copy_nonoverlapping(block, moved, layout.size().min(new_size));
                        self.dealloc(block, layout);
                    }
                }
                moved
            }
            // Into or out of the classes: glibc's realloc, asking for the new class's full
            // size when there is one so that the block may be kept when freed.
            _ => {
                let size = new.map_or(new_size, class_size);
                let old_layout = old.map_or(layout, |c| class_layout(c, layout));
                // SAFETY: the block was allocated by System with `old_layout`; `size` is
                // non-zero and no less than `new_size`.
                unsafe { System.realloc(block, old_layout, size) }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_cover_their_sizes_and_small_ones_fill_their_chunk() {
        let mut last = None;
        for size in 1..=LARGE_MAX {
            let c = class(size).expect("a class");
            assert!(c < CLASSES, "{size}");
            assert!(
                class_size(c) >= size,
                "{size} in class {c} of {}",
                class_size(c)
            );
            // Classes grow with the size; each holds the sizes of the one before it.
            if let Some(l) = last {
                assert!(c == l || c == l + 1, "{size}");
            }
            last = Some(c);
            assert_eq!(class(class_size(c)), Some(c), "{size}");
        }
        assert_eq!(class(LARGE_MAX + 1), None);
        // glibc's chunk for 24 bytes is 32 (24 usable), for 25 it is 48 (40 usable).
        assert_eq!(class_size(class(1).expect("class")), 24);
        assert_eq!(class_size(class(24).expect("class")), 24);
        assert_eq!(class_size(class(25).expect("class")), 40);
        assert_eq!(class_size(class(1032).expect("class")), 1032);
        assert_eq!(class_size(class(1033).expect("class")), 1088);
        assert_eq!(class_size(class(1089).expect("class")), 1152);
        assert_eq!(class_size(class(5432).expect("class")), 5440);
        assert_eq!(class_size(class(8192).expect("class")), 8192);
        assert_eq!(class_size(class(LARGE_MAX).expect("class")), LARGE_MAX);
    }

    #[test]
    fn a_freed_block_serves_the_next_request_of_its_class_on_a_caching_thread_only() {
        std::thread::spawn(|| {
            let a = Allocator;
            let layout = Layout::from_size_align(5000, 8).expect("layout");
            let other = Layout::from_size_align(5050, 8).expect("layout");
            // SAFETY: each block is freed once, with the layout it was allocated with.
            unsafe {
                // Not caching: freed blocks go back to glibc.
                let p = a.alloc(layout);
                a.dealloc(p, layout);
                assert_eq!(cached_on_this_thread(), (0, 0));

                cache_this_thread();
                let p = a.alloc(layout);
                p.write_bytes(0xab, layout.size());
                a.dealloc(p, layout);
                assert_eq!(
                    cached_on_this_thread(),
                    (1, class_size(class(5000).unwrap()))
                );
                // 5,050 bytes is in 5,000's class: the same block.
                let q = a.alloc(other);
                assert_eq!(q, p);
                assert_eq!(cached_on_this_thread(), (0, 0));
                // Zeroed, though the block was used.
                a.dealloc(q, other);
                let z = a.alloc_zeroed(layout);
                assert_eq!(z, p);
                assert!(std::slice::from_raw_parts(z, layout.size())
                    .iter()
                    .all(|b| *b == 0));
                a.dealloc(z, layout);

                // Bounded per class.
                let blocks: Vec<_> = (0..20).map(|_| a.alloc(layout)).collect();
                for b in blocks {
                    a.dealloc(b, layout);
                }
                assert_eq!(cached_on_this_thread().0, usize::from(LARGE_KEEP));

                release_this_thread();
                assert_eq!(cached_on_this_thread(), (0, 0));
                let p = a.alloc(layout);
                a.dealloc(p, layout);
                assert_eq!(cached_on_this_thread(), (0, 0));
            }
        })
        .join()
        .expect("thread");
    }

    #[test]
    fn realloc_keeps_the_bytes_across_classes_and_stays_put_within_one() {
        std::thread::spawn(|| {
            let a = Allocator;
            cache_this_thread();
            // SAFETY: each block is reallocated and freed with the layout it has then.
            unsafe {
                let mut layout = Layout::from_size_align(10, 8).expect("layout");
                let mut p = a.alloc(layout);
                for (i, b) in (0..10u8).enumerate() {
                    p.add(i).write(b);
                }
                // 10 → 20 bytes: the same 24-byte block.
                let q = a.realloc(p, layout, 20);
                assert_eq!(q, p);
                layout = Layout::from_size_align(20, 8).expect("layout");
                // Through the small, large and uncached sizes and back.
                for size in [900, 3000, 20_000, 2000, 16] {
                    p = a.realloc(p, layout, size);
                    assert!(!p.is_null());
                    let kept = std::slice::from_raw_parts(p, 10);
                    assert_eq!(kept, &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9], "at {size}");
                    layout = Layout::from_size_align(size, 8).expect("layout");
                }
                a.dealloc(p, layout);
                // Between two classes, the block given up is kept, and serves the next
                // request of its class.
                let small = Layout::from_size_align(2000, 8).expect("layout");
                let p = a.alloc(small);
                p.write(7);
                let before = cached_on_this_thread().0;
                let q = a.realloc(p, small, 5000);
                assert_eq!(q.read(), 7);
                assert_eq!(cached_on_this_thread().0, before + 1);
                assert_eq!(a.alloc(small), p);
                a.dealloc(p, small);
                a.dealloc(q, Layout::from_size_align(5000, 8).expect("layout"));
                // Over-aligned blocks are glibc's alone.
                let big = Layout::from_size_align(2048, 64).expect("layout");
                let p = a.alloc(big);
                assert_eq!(p as usize % 64, 0);
                let p = a.realloc(p, big, 4096);
                assert_eq!(p as usize % 64, 0);
                a.dealloc(p, Layout::from_size_align(4096, 64).expect("layout"));
            }
            release_this_thread();
        })
        .join()
        .expect("thread");
    }

    #[test]
    fn a_thread_keeps_no_more_than_its_budget() {
        std::thread::spawn(|| {
            let a = Allocator;
            cache_this_thread();
            let mut held = Vec::new();
            // SAFETY: each block is freed once, with its layout.
            unsafe {
                for size in (1100..LARGE_MAX).step_by(LARGE_STEP) {
                    let layout = Layout::from_size_align(size, 8).expect("layout");
                    for _ in 0..LARGE_KEEP {
                        held.push((a.alloc(layout), layout));
                    }
                }
                for (p, layout) in held {
                    a.dealloc(p, layout);
                }
            }
            let (_, bytes) = cached_on_this_thread();
            assert!(bytes <= BUDGET && bytes > BUDGET - LARGE_MAX, "{bytes}");
            release_this_thread();
        })
        .join()
        .expect("thread");
    }
}
