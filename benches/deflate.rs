//! permessage-deflate: what compressing one delivery costs, per backend and level, and what
//! inflating a client's message costs. The gateway compresses once per publish (on the topic's
//! owner core), so these are per-publish costs; divided by the subscribers of a topic they are
//! the per-delivery share (docs/performance.md, "permessage-deflate").
//!
//! Payloads: `subsocket::sample::price_ticks` (JSON price ticks: 64 B, 1 KiB, 16 KiB), not
//! padding (which compresses a hundredfold and says nothing). Backends:
//! - `zlib-rs` through flate2, the gateway's: `compress_frame` (state reset per message, sync
//!   flush, 15-bit window), levels 1, 3 (the default) and 6;
//! - `miniz_oxide` (flate2's default backend), the same stream shape, levels 1 and 3;
//! - `libdeflate`, levels 1 and 3: whole-buffer only, it can end a message only with a final
//!   block (RFC 7692 needs a sync flush to strip) and has no window sizes, so it is measured for
//!   reference and not usable as is.
//!
//! The compressed sizes are printed once before the timings. Run: `cargo bench --bench deflate`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use miniz_oxide::deflate::core::{
    compress as miniz_compress, create_comp_flags_from_zip_params, CompressorOxide, TDEFLFlush,
};
use subsocket::sample::price_ticks;
use subsocket::ws::deflate::{compress_frame, compress_message, Inflater};
use subsocket::ws::frame::OpCode;

const SIZES: [(usize, &str); 3] = [(64, "64B"), (1024, "1KiB"), (16 * 1024, "16KiB")];
/// A nanosecond timestamp of late 2025, the shape the load generator puts in.
const TS: u64 = 1_765_100_000_000_000_000;

/// One message through miniz_oxide with a reused compressor, ending in a sync flush.
fn miniz(c: &mut CompressorOxide, input: &[u8], out: &mut Vec<u8>) -> usize {
    c.reset();
    out.clear();
    out.resize(input.len() + 64, 0);
    let (_, _, n) = miniz_compress(c, input, out, TDEFLFlush::Sync);
    n.saturating_sub(4)
}

fn bench_compress(c: &mut Criterion) {
    let mut lib1 = libdeflater::Compressor::new(libdeflater::CompressionLvl::new(1).unwrap());
    let mut lib3 = libdeflater::Compressor::new(libdeflater::CompressionLvl::new(3).unwrap());
    let mut mz1 = CompressorOxide::new(create_comp_flags_from_zip_params(1, -15, 0));
    let mut mz3 = CompressorOxide::new(create_comp_flags_from_zip_params(3, -15, 0));
    let mut out = Vec::new();
    eprintln!("compressed sizes (payload bytes -> compressed message bytes):");
    for (size, label) in SIZES {
        let p = price_ticks(TS, 42, size);
        let z = |l| compress_message(p.as_bytes(), l, 15).map_or(0, |v| v.len());
        out.resize(size + 64, 0);
        let l1 = lib1.deflate_compress(p.as_bytes(), &mut out).unwrap_or(0);
        let l3 = lib3.deflate_compress(p.as_bytes(), &mut out).unwrap_or(0);
        eprintln!(
            "  {label:>6}: zlib-rs L1 {} / L3 {} / L6 {}; miniz_oxide L1 {} / L3 {}; libdeflate L1 {l1} / L3 {l3}",
            z(1),
            z(3),
            z(6),
            miniz(&mut mz1, p.as_bytes(), &mut out),
            miniz(&mut mz3, p.as_bytes(), &mut out),
        );
    }
    let mut g = c.benchmark_group("compress");
    for (size, label) in SIZES {
        let p = price_ticks(TS, 42, size);
        let p = p.as_bytes();
        g.throughput(Throughput::Bytes(size as u64));
        for level in [1, 3, 6] {
            g.bench_with_input(
                BenchmarkId::new(format!("zlib-rs_L{level}"), label),
                p,
                |b, p| b.iter(|| compress_frame(OpCode::Text, black_box(p), level, 15)),
            );
        }
        for (name, comp) in [("miniz_oxide_L1", &mut mz1), ("miniz_oxide_L3", &mut mz3)] {
            g.bench_with_input(BenchmarkId::new(name, label), p, |b, p| {
                b.iter(|| miniz(comp, black_box(p), &mut out))
            });
        }
        for (name, comp) in [("libdeflate_L1", &mut lib1), ("libdeflate_L3", &mut lib3)] {
            out.resize(size + 64, 0);
            g.bench_with_input(BenchmarkId::new(name, label), p, |b, p| {
                b.iter(|| comp.deflate_compress(black_box(p), &mut out))
            });
        }
    }
    g.finish();
}

fn bench_inflate(c: &mut Criterion) {
    let mut g = c.benchmark_group("inflate");
    for (size, label) in SIZES {
        let p = price_ticks(TS, 42, size);
        let z = compress_message(p.as_bytes(), 3, 15).expect("compresses");
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::new("no_context", label), &z, |b, z| {
            let mut inf = Inflater::no_context();
            b.iter(|| inf.inflate(black_box(z), 1 << 20).expect("inflates"))
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    targets = bench_compress, bench_inflate
}
criterion_main!(benches);
