// flash_w3.wgsl: WebGPU version 3: subgroups (needs the adapter's "subgroup" feature).
// Adds over w2: a row's work is spread over the workgroup. A workgroup of BLOCK_K invocations takes a tile
// of BLOCK_K keys, one per invocation, and handles BLOCK_Q query rows one after the other: each invocation
// computes one score, the row's max and sum come from subgroupMax / subgroupAdd (like CUDA's warp shuffles)
// combined across the workgroup's subgroups through a small workgroup array, since the subgroup size is
// the hardware's (4 to 128; 8 on lavapipe), not ours. For P·V each invocation owns HEAD_DIM / BLOCK_K
// output columns. Costs: two barriers per reduction; Q, K, V tiles in workgroup memory.
// Dispatch: (ceil(Lq / BLOCK_Q), Hq, B) workgroups of BLOCK_K. Constants: HEAD_DIM, BLOCK_Q, BLOCK_K.

const BLOCK_Q: u32 = $BLOCK_Q;
const BLOCK_K: u32 = $BLOCK_K;
const COLS: u32 = (HEAD_DIM + BLOCK_K - 1u) / BLOCK_K;

var<workgroup> q_tile: array<f32, BLOCK_Q * HEAD_DIM>;
var<workgroup> k_tile: array<f32, BLOCK_K * HEAD_DIM>;
var<workgroup> v_tile: array<f32, BLOCK_K * HEAD_DIM>;
var<workgroup> p_row: array<f32, BLOCK_K>;
var<workgroup> partial: array<f32, BLOCK_K>;  // one value per subgroup (at most BLOCK_K subgroups)

fn group_max(x: f32, sg: u32, lane: u32, groups: u32) -> f32 {
    let r = subgroupMax(x);
    if (lane == 0u) {
        partial[sg] = r;
    }
    workgroupBarrier();
    var total = partial[0];
    for (var g = 1u; g < groups; g++) {
        total = max(total, partial[g]);
    }
    workgroupBarrier();
    return total;
}

fn group_sum(x: f32, sg: u32, lane: u32, groups: u32) -> f32 {
    let r = subgroupAdd(x);
    if (lane == 0u) {
        partial[sg] = r;
    }
    workgroupBarrier();
    var total = 0.0;
    for (var g = 0u; g < groups; g++) {
        total += partial[g];
    }
    workgroupBarrier();
    return total;
}

@compute @workgroup_size(BLOCK_K)
fn main(@builtin(local_invocation_index) t: u32, @builtin(workgroup_id) wid: vec3<u32>,
        @builtin(subgroup_invocation_id) lane: u32, @builtin(subgroup_size) sg_size: u32) {
    let sg = t / sg_size;
    let groups = (BLOCK_K + sg_size - 1u) / sg_size;
    let q0 = wid.x * BLOCK_Q;
    let h = wid.y;
    let b = wid.z;
    let hk = h / (P.heads_q / P.heads_kv);
    let kvo = (b * P.heads_kv + hk) * P.len_k * HEAD_DIM;
    let qbase = (b * P.heads_q + h) * P.len_q;

    for (var e = t; e < BLOCK_Q * HEAD_DIM; e += BLOCK_K) {
        let i = q0 + e / HEAD_DIM;
        var x = 0.0;
        if (i < P.len_q) {
            x = q[(qbase + i) * HEAD_DIM + e % HEAD_DIM] * P.scale;
        }
        q_tile[e] = x;
    }
    var acc: array<f32, BLOCK_Q * COLS>;
    var m: array<f32, BLOCK_Q>;
    var l: array<f32, BLOCK_Q>;
    for (var r = 0u; r < BLOCK_Q; r++) {
        let i = q0 + r;
        m[r] = NONE;
        if (i < P.len_q) {
            m[r] = stats[2u * (qbase + i)];
            l[r] = stats[2u * (qbase + i) + 1u];
            for (var c = 0u; c < COLS; c++) {
                let d = t + c * BLOCK_K;
                if (d < HEAD_DIM) {
                    acc[r * COLS + c] = out[(qbase + i) * HEAD_DIM + d];
                }
            }
        }
    }
    let stop = key_stop(q0 + BLOCK_Q);
    for (var k0 = key_start(q0, BLOCK_K); k0 < stop; k0 += BLOCK_K) {
        workgroupBarrier();
        for (var e = t; e < BLOCK_K * HEAD_DIM; e += BLOCK_K) {
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
        for (var r = 0u; r < BLOCK_Q; r++) {
            let i = q0 + r;
            let j = k0 + t;
            var s = NONE;
            if (i < P.len_q && j < P.k_end) {
                let bias = mask_bias(b, h, i, j);
                if (bias > HIDDEN) {
                    var dot = 0.0;
                    for (var d = 0u; d < HEAD_DIM; d++) {
                        dot += q_tile[r * HEAD_DIM + d] * k_tile[t * HEAD_DIM + d];
                    }
                    s = score_hook(dot, b, h, i, j) + bias;
                }
            }
            let m_new = max(m[r], group_max(s, sg, lane, groups));
            let p = select(0.0, exp(s - m_new), s > HIDDEN);
            let alpha = exp(m[r] - m_new);
            l[r] = l[r] * alpha + group_sum(p, sg, lane, groups);
            m[r] = m_new;
            p_row[t] = p;
            workgroupBarrier();
            for (var c = 0u; c < COLS; c++) {
                let d = t + c * BLOCK_K;
                var a = acc[r * COLS + c] * alpha;
                if (d < HEAD_DIM) {
                    for (var jj = 0u; jj < BLOCK_K; jj++) {
                        a += p_row[jj] * v_tile[jj * HEAD_DIM + d];
                    }
                }
                acc[r * COLS + c] = a;
            }
            workgroupBarrier();
        }
    }
    for (var r = 0u; r < BLOCK_Q; r++) {
        let i = q0 + r;
        if (i < P.len_q) {
            let f = store_factor(l[r]);
            for (var c = 0u; c < COLS; c++) {
                let d = t + c * BLOCK_K;
                if (d < HEAD_DIM) {
                    out[(qbase + i) * HEAD_DIM + d] = acc[r * COLS + c] * f;
                }
            }
            if (t == 0u) {
                write_row(qbase + i, m[r], l[r]);
            }
        }
    }
    probe();
}
