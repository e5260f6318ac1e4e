// common.wgsl: what every WGSL kernel shares. chordlab prepends it to each kernel and fills in the
// dollar-sign placeholders (head dim, tile sizes) when it creates the pipeline, so each (kernel, head dim, tiles)
// compiles to its own pipeline.
//
// Conventions (the library's): q [B, Hq, Lq, D], k and v [B, Hkv, Lk, D], out [B, Hq, Lq, D], float32;
// kv head = query head / (Hq / Hkv); the window and causal rule (chapter 11) as bounds: key j visible to query i
// iff P.vis_lo <= j - i <= P.vis_hi (causal alone: vis_hi = Lk - Lq; ±2^30 is unbounded). The score hook: softcap,
// then ALiBi, whose slopes [B, Hq] sit in the mask buffer from P.alibi_at on (one binding fewer).
// WGSL may assume there are no infinities, so "minus infinity" is spelled with finite sentinels: a hidden
// mask entry arrives as HIDDEN (the host converts -inf and False to it), and NONE is the running max of a
// row that has seen no key yet. The host turns (m, l) into lse, with -inf where l = 0.
//
// Key chunks. One dispatch covers the keys [P.k_begin, P.k_end) and resumes the online softmax where the
// previous dispatch left it: the running max m and sum l in `stats`, the unnormalized accumulator in `out`
// (the host fills them with NONE, 0 and 0 first). Only the dispatch with P.last = 1 divides by l. The host
// cuts the keys into chunks when the driver limits the work of one invocation (Mesa's llvmpipe stops every
// loop of a shader after 65535 iterations in all), and checks `check` afterwards: see probe().

const HEAD_DIM: u32 = $HEAD_DIM;
const NONE: f32 = -3.4e38;
const HIDDEN: f32 = -3.0e38;

struct Params {
    heads_q: u32, heads_kv: u32, len_q: u32, len_k: u32,
    scale: f32, vis_lo: i32, mask_kind: u32, last: u32,
    msb: u32, msh: u32, msi: u32, msj: u32,
    k_begin: u32, k_end: u32, probe_n: u32, alibi_at: u32,
    vis_hi: i32, softcap: f32, has_alibi: u32, pad: u32,
};

@group(0) @binding(0) var<storage, read> q: array<f32>;
@group(0) @binding(1) var<storage, read> k: array<f32>;
@group(0) @binding(2) var<storage, read> v: array<f32>;
@group(0) @binding(3) var<storage, read> mask: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(5) var<storage, read_write> stats: array<f32>;  // [B, Hq, Lq, 2]: running max m, sum l
@group(0) @binding(6) var<uniform> P: Params;
@group(0) @binding(7) var<storage, read_write> check: atomic<u32>;

// The mask's contribution to score (i, j) of batch b, head h: 0, an additive value, or HIDDEN.
fn mask_bias(b: u32, h: u32, i: u32, j: u32) -> f32 {
    let dist = i32(j) - i32(i);
    if (dist < P.vis_lo || dist > P.vis_hi) {
        return HIDDEN;
    }
    if (P.mask_kind == 0u) {
        return 0.0;
    }
    return mask[b * P.msb + h * P.msh + i * P.msi + j * P.msj];
}

// The score hook on the scaled score s of query i, key j: softcap (tanh's argument clamped, where it is ±1 in
// float32 anyway, so that no driver's tanh can overflow), then the ALiBi bias.
fn score_hook(s: f32, b: u32, h: u32, i: u32, j: u32) -> f32 {
    var x = s;
    if (P.softcap > 0.0) {
        x = P.softcap * tanh(clamp(x / P.softcap, -15.0, 15.0));
    }
    if (P.has_alibi != 0u) {
        let slope = mask[P.alibi_at + b * P.heads_q + h];
        x -= slope * abs(f32(i32(i) + i32(P.len_k) - i32(P.len_q) - i32(j)));
    }
    return x;
}

// The first key of this dispatch's chunk that row0 or a later row may see, rounded down to whole tiles of
// `block` keys counted from P.k_begin.
fn key_start(row0: u32, block: u32) -> u32 {
    let first = i32(row0) + P.vis_lo;
    if (first <= i32(P.k_begin)) {
        return P.k_begin;
    }
    return P.k_begin + (u32(first) - P.k_begin) / block * block;
}

// The last key (exclusive) of this dispatch's chunk that any query row below row_end may see.
fn key_stop(row_end: u32) -> u32 {
    let last = i32(min(row_end, P.len_q)) - 1;
    let stop = last + P.vis_hi + 1;
    return u32(clamp(stop, 0, i32(P.k_end)));
}

// What the accumulator is multiplied by when it is stored: 1 / l on the last chunk, else 1 (kept as is).
fn store_factor(l: f32) -> f32 {
    if (P.last == 0u) {
        return 1.0;
    }
    return select(0.0, 1.0 / l, l > 0.0);
}

fn write_row(row: u32, m: f32, l: f32) {
    stats[2u * row] = m;
    stats[2u * row + 1u] = l;
}

// Call last. A loop of P.probe_n (= 2) iterations whose count the compiler cannot know: if the driver cut
// any loop short before it, it cuts this one too, and `check` (set to probe_n by the host) drops below
// probe_n. The host then refuses the result instead of returning a wrong number.
fn probe() {
    var n = 0u;
    for (var x = 0u; x < P.probe_n; x++) {
        n += 1u;
    }
    atomicMin(&check, n);
}
