// flash_w1.wgsl: WebGPU version 1: one invocation per query row (CUDA's v1 in WGSL).
// Each invocation runs the online softmax over every key of its chunk for its row, reading K and V from
// storage buffers, its output row in a private array. No sharing between invocations: the baseline.
// Dispatch: (ceil(Lq / WG), Hq, B) workgroups of WG invocations. Constants: HEAD_DIM, WG.

const WG: u32 = $WG;

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let i = gid.x;
    let h = wid.y;
    let b = wid.z;
    if (i >= P.len_q) {
        return;
    }
    let hk = h / (P.heads_q / P.heads_kv);
    let row = (b * P.heads_q + h) * P.len_q + i;
    let qo = row * HEAD_DIM;
    let kvo = (b * P.heads_kv + hk) * P.len_k * HEAD_DIM;
    var acc: array<f32, HEAD_DIM>;
    for (var d = 0u; d < HEAD_DIM; d++) {
        acc[d] = out[qo + d];
    }
    var m = stats[2u * row];
    var l = stats[2u * row + 1u];
    let stop = key_stop(i + 1u);
    for (var j = key_start(i, 1u); j < stop; j++) {
        let bias = mask_bias(b, h, i, j);
        if (bias <= HIDDEN) {
            continue;
        }
        var s = 0.0;
        for (var d = 0u; d < HEAD_DIM; d++) {
            s += q[qo + d] * k[kvo + j * HEAD_DIM + d];
        }
        s = score_hook(s * P.scale, b, h, i, j) + bias;
        let m_new = max(m, s);
        let alpha = exp(m - m_new);
        let p = exp(s - m_new);
        l = l * alpha + p;
        for (var d = 0u; d < HEAD_DIM; d++) {
            acc[d] = acc[d] * alpha + p * v[kvo + j * HEAD_DIM + d];
        }
        m = m_new;
    }
    let f = store_factor(l);
    for (var d = 0u; d < HEAD_DIM; d++) {
        out[qo + d] = acc[d] * f;
    }
    write_row(row, m, l);
    probe();
}
