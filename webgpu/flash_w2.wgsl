// flash_w2.wgsl: WebGPU version 2: a workgroup per query tile, K/V tiles in workgroup memory.
// Adds over w1: the BLOCK_Q invocations of a workgroup (one query row each) load each tile of BLOCK_K keys
// and values once into var<workgroup> arrays, wait at workgroupBarrier(), and all read it: one load from
// storage serves BLOCK_Q rows. Each invocation then does the online softmax with the tile's max and sum.
// Costs: workgroup memory for the two tiles, which must fit the adapter's limit (16 KiB guaranteed, 32 KiB on
// most: chapter 8's exercise counts it); the score tile is a private array of BLOCK_K floats per invocation.
// Dispatch: (ceil(Lq / BLOCK_Q), Hq, B) workgroups of BLOCK_Q. Constants: HEAD_DIM, BLOCK_Q, BLOCK_K.

const BLOCK_Q: u32 = $BLOCK_Q;
const BLOCK_K: u32 = $BLOCK_K;

var<workgroup> k_tile: array<f32, BLOCK_K * HEAD_DIM>;
var<workgroup> v_tile: array<f32, BLOCK_K * HEAD_DIM>;

@compute @workgroup_size(BLOCK_Q)
fn main(@builtin(local_invocation_index) t: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let q0 = wid.x * BLOCK_Q;
    let i = q0 + t;
    let h = wid.y;
    let b = wid.z;
    let hk = h / (P.heads_q / P.heads_kv);
    let row = (b * P.heads_q + h) * P.len_q + i;
    let kvo = (b * P.heads_kv + hk) * P.len_k * HEAD_DIM;
    let live = i < P.len_q;

    var qr: array<f32, HEAD_DIM>;
    if (live) {
        for (var d = 0u; d < HEAD_DIM; d++) {
            qr[d] = q[row * HEAD_DIM + d] * P.scale;
        }
    }
    var acc: array<f32, HEAD_DIM>;
    var s: array<f32, BLOCK_K>;
    var m = NONE;
    var l = 0.0;
    if (live) {
        for (var d = 0u; d < HEAD_DIM; d++) {
            acc[d] = out[row * HEAD_DIM + d];
        }
        m = stats[2u * row];
        l = stats[2u * row + 1u];
    }
    let stop = key_stop(q0 + BLOCK_Q);  // the same for the whole workgroup: barriers stay uniform
    for (var k0 = key_start(q0, BLOCK_K); k0 < stop; k0 += BLOCK_K) {
        workgroupBarrier();
        for (var e = t; e < BLOCK_K * HEAD_DIM; e += BLOCK_Q) {
            let j = k0 + e / HEAD_DIM;
            var kx = 0.0;
            var vx = 0.0;
            if (j < P.k_end) {
                kx = k[kvo + j * HEAD_DIM + e % HEAD_DIM];
                vx = v[kvo + j * HEAD_DIM + e % HEAD_DIM];
            }
            k_tile[e] = kx;
            v_tile[e] = vx;
        }
        workgroupBarrier();

        var tile_max = NONE;
        for (var jj = 0u; jj < BLOCK_K; jj++) {
            let j = k0 + jj;
            var val = NONE;
            if (live && j < P.k_end) {
                let bias = mask_bias(b, h, i, j);
                if (bias > HIDDEN) {
                    var dot = 0.0;
                    for (var d = 0u; d < HEAD_DIM; d++) {
                        dot += qr[d] * k_tile[jj * HEAD_DIM + d];
                    }
                    val = score_hook(dot, b, h, i, j) + bias;
                }
            }
            s[jj] = val;
            tile_max = max(tile_max, val);
        }
        let m_new = max(m, tile_max);
        let alpha = exp(m - m_new);
        var sum = 0.0;
        for (var jj = 0u; jj < BLOCK_K; jj++) {
            let p = select(0.0, exp(s[jj] - m_new), s[jj] > HIDDEN);
            s[jj] = p;
            sum += p;
        }
        l = l * alpha + sum;
        m = m_new;
        for (var d = 0u; d < HEAD_DIM; d++) {
            var a = acc[d] * alpha;
            for (var jj = 0u; jj < BLOCK_K; jj++) {
                a += s[jj] * v_tile[jj * HEAD_DIM + d];
            }
            acc[d] = a;
        }
    }
    if (live) {
        let f = store_factor(l);
        for (var d = 0u; d < HEAD_DIM; d++) {
            out[row * HEAD_DIM + d] = acc[d] * f;
        }
        write_row(row, m, l);
    }
    probe();
}
