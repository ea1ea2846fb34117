#!/usr/bin/env node
// A dense, literal HSA in JavaScript that speaks hsa-port/1 (docs/PORTING.md, "The port
// protocol"): the leaf scores, the block energies as means of those scores, the F / L
// recursion, each family's shares, the attention matrix theta and y = theta v, one batch
// element at a time; gradients by reverse mode written out by hand through the same steps.
//
//   node tests/ports/hsa_port.js [--encoding json|base64] [--bug NAME]
//
// JavaScript numbers are float64, so the port computes in float64 only. Every logsumexp
// subtracts its maximum, and the distance energy is formed from the differences q_i - k_j
// (exact far from the origin). --bug NAME plants one mistake (BUGS below) for the harness to
// reject.
"use strict";

const readline = require("node:readline");

const FORMAT = "hsa-port/1";
const BUGS = {
  "leaf-self-term-dropped": "F(i) = 0 instead of s_ii",
  "keys-gradient-halved": "the gradient of k is half what it should be (the output is right)",
};

function parseArgs(argv) {
  const opts = { encoding: "json", bug: null };
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i];
    const value = argv[i + 1];
    if (flag === "--encoding" && (value === "json" || value === "base64")) {
      opts.encoding = value;
    } else if (flag === "--bug" && Object.hasOwn(BUGS, value)) {
      opts.bug = value;
    } else {
      const bugs = Object.keys(BUGS).join(", ");
      throw new Error(`usage: hsa_port.js [--encoding json|base64] [--bug ${bugs}]; got ${flag}`);
    }
    i++;
  }
  return opts;
}

// ------------------------------------------------------------------------------ arrays
// An hsa-port/1 array: {"shape": [...], "data": [...]} or {"shape": [...], "base64": "..."}
// (float64, little-endian, row-major).
function decodeArray(obj, what) {
  if (obj === null || typeof obj !== "object" || !Array.isArray(obj.shape)) {
    throw new Error(`${what} must be an array object with a 'shape' list`);
  }
  const size = obj.shape.reduce((a, b) => a * b, 1);
  const data = new Float64Array(size);
  if (typeof obj.base64 === "string") {
    const raw = Buffer.from(obj.base64, "base64");
    if (raw.length !== 8 * size) throw new Error(`${what}: ${raw.length} bytes for ${size} values`);
    for (let i = 0; i < size; i++) data[i] = raw.readDoubleLE(8 * i);
  } else {
    if (!Array.isArray(obj.data) || obj.data.length !== size) {
      throw new Error(`${what}: 'data' must hold ${size} numbers`);
    }
    for (let i = 0; i < size; i++) data[i] = obj.data[i] === null ? NaN : Number(obj.data[i]);
  }
  return { shape: obj.shape.slice(), data };
}

function encodeArray(shape, data, encoding) {
  if (encoding === "base64") {
    const raw = Buffer.alloc(8 * data.length);
    for (let i = 0; i < data.length; i++) raw.writeDoubleLE(data[i], 8 * i);
    return { shape, base64: raw.toString("base64") };
  }
  // JSON has no NaN or infinities: the protocol's strings stand for them
  const out = Array.from(data, (x) =>
    Number.isFinite(x) ? x : Number.isNaN(x) ? "NaN" : x > 0 ? "Infinity" : "-Infinity",
  );
  return { shape, data: out };
}

// ------------------------------------------------------------------------------ the tree
// Everything the recursion needs of an hsa-tree/1 forest: children, leaf counts, the families
// by height, the leaves of every family (each with the position of the child holding it) and
// the leaves of every tree.
function prepareTree(tree) {
  const n = tree.num_leaves;
  const parent = tree.parent;
  if (!Number.isInteger(n) || n < 1 || !Array.isArray(parent) || parent.length < n) {
    throw new Error("the tree must have num_leaves >= 1 and a parent list of N + M entries");
  }
  const nodes = parent.length;
  const children = Array.from({ length: nodes }, () => []);
  for (let x = 0; x < nodes; x++) {
    const p = parent[x];
    if (p === -1) continue;
    if (!Number.isInteger(p) || p < n || p >= nodes || p === x) {
      throw new Error(`parent[${x}] = ${p} is not a family`);
    }
    children[p].push(x);
  }
  const height = new Int32Array(nodes).fill(-1);
  const leavesUnder = new Array(nodes);
  const visit = (x, depth) => {
    if (depth > nodes) throw new Error("the tree has a cycle");
    if (height[x] >= 0) return;
    if (x < n) {
      height[x] = 0;
      leavesUnder[x] = [x];
      return;
    }
    if (children[x].length === 0) throw new Error(`family ${x} has no children`);
    let h = 0;
    leavesUnder[x] = [];
    for (const c of children[x]) {
      visit(c, depth + 1);
      h = Math.max(h, height[c] + 1);
      for (const leaf of leavesUnder[c]) leavesUnder[x].push(leaf);
    }
    height[x] = h;
  };
  const roots = [];
  for (let x = 0; x < nodes; x++) if (parent[x] === -1) roots.push(x);
  for (const r of roots) visit(r, 0);
  if (height.some((h) => h < 0)) throw new Error("a node does not reach a root");
  const families = [];
  for (let x = n; x < nodes; x++) families.push(x);
  families.sort((a, b) => height[a] - height[b] || a - b); // bottom-up
  const count = leavesUnder.map((l) => l.length);
  const fam = new Map();
  for (const a of families) {
    const kids = children[a];
    const leaves = [];
    const label = [];
    kids.forEach((c, r) => {
      for (const leaf of leavesUnder[c]) {
        leaves.push(leaf);
        label.push(r);
      }
    });
    fam.set(a, { kids, leaves, label, size: kids.map((c) => count[c]) });
  }
  const trees = roots.map((r) => leavesUnder[r]);
  return { n, nodes, families, fam, count, trees };
}

// ------------------------------------------------------------------------------ one element
const dotAt = (x, i, y, j, d) => {
  let s = 0;
  for (let t = 0; t < d; t++) s += x[i * d + t] * y[j * d + t];
  return s;
};

function scoreOf(q, k, i, j, d, scale, energy) {
  if (energy === "dot") return scale * dotAt(q, i, k, j, d);
  let s = 0;
  for (let t = 0; t < d; t++) {
    const diff = q[i * d + t] - k[j * d + t];
    s += diff * diff;
  }
  return -0.5 * scale * s;
}

function logsumexp(row) {
  let top = -Infinity;
  for (const x of row) top = Math.max(top, x);
  if (top === -Infinity || top === Infinity || Number.isNaN(top)) return top;
  let s = 0;
  for (const x of row) s += Math.exp(x - top);
  return top + Math.log(s);
}

// The forward pass for one batch element (q: N x dk, k: N x dk, v: N x dv, flat), keeping
// what the backward pass reads.
function forward(t, q, k, v, dk, dv, scale, energy, pos, dp, bug) {
  const { n, nodes, families, fam, count, trees } = t;
  const posDot = (x, y) => (pos === null ? 0 : dotAt(pos, x, pos, y, dp));
  // s_ij for every pair of leaves of one tree (theta is zero across trees)
  const S = new Float64Array(n * n);
  for (const leaves of trees) {
    for (const i of leaves) for (const j of leaves) S[i * n + j] = scoreOf(q, k, i, j, dk, scale, energy);
  }
  const F = new Float64Array(nodes);
  for (let i = 0; i < n; i++) F[i] = bug === "leaf-self-term-dropped" ? 0 : S[i * n + i] + posDot(i, i);
  const share = new Map(); // family -> b x b matrix: mu(B) on the diagonal, delta(B, C) off it
  for (const a of families) {
    const { kids, leaves, label, size } = fam.get(a);
    const b = kids.length;
    const sums = new Float64Array(b * b); // sum of s_ij over i in B, j in C
    for (let x = 0; x < leaves.length; x++) {
      for (let y = 0; y < leaves.length; y++) {
        if (label[x] !== label[y]) sums[label[x] * b + label[y]] += S[leaves[x] * n + leaves[y]];
      }
    }
    const P = new Float64Array(b * b);
    let fa = 0;
    for (let r = 0; r < b; r++) {
      const logits = new Float64Array(b);
      for (let c = 0; c < b; c++) {
        const e = sums[r * b + c] / (size[r] * size[c]) + posDot(kids[r], kids[c]);
        logits[c] = c === r ? F[kids[r]] : Math.log(size[c]) + e;
      }
      const L = logsumexp(logits);
      for (let c = 0; c < b; c++) P[r * b + c] = Math.exp(logits[c] - L);
      fa += (size[r] / count[a]) * L;
    }
    F[a] = fa;
    share.set(a, P);
  }
  // W(B) = mu(B_1) ... mu(B): what each node keeps of the rows under it, from the roots down
  const W = new Float64Array(nodes).fill(1);
  for (let f = families.length - 1; f >= 0; f--) {
    const a = families[f];
    const { kids } = fam.get(a);
    const P = share.get(a);
    kids.forEach((c, r) => {
      W[c] = W[a] * P[r * kids.length + r];
    });
  }
  const theta = new Float64Array(n * n);
  for (let i = 0; i < n; i++) theta[i * n + i] = W[i];
  for (const a of families) {
    const { kids, leaves, label, size } = fam.get(a);
    const P = share.get(a);
    for (let x = 0; x < leaves.length; x++) {
      for (let y = 0; y < leaves.length; y++) {
        const r = label[x];
        const c = label[y];
        if (r !== c) theta[leaves[x] * n + leaves[y]] = (W[a] * P[r * kids.length + c]) / size[c];
      }
    }
  }
  const y = new Float64Array(n * dv);
  for (const leaves of trees) {
    for (const i of leaves) {
      for (const j of leaves) {
        const w = theta[i * n + j];
        for (let t2 = 0; t2 < dv; t2++) y[i * dv + t2] += w * v[j * dv + t2];
      }
    }
  }
  return { y, share, W, theta };
}

// Reverse mode through forward(): adds the gradients of sum(g * y) to gq, gk, gv, gpos.
function backward(t, saved, q, k, v, g, dk, dv, scale, energy, pos, dp, grads, bug) {
  const { n, nodes, families, fam, count, trees } = t;
  const { share, W, theta } = saved;
  const [gq, gk, gv, gpos] = grads;
  // y = theta v
  const dTheta = new Float64Array(n * n);
  for (const leaves of trees) {
    for (const i of leaves) {
      for (const j of leaves) {
        const w = theta[i * n + j];
        for (let t2 = 0; t2 < dv; t2++) gv[j * dv + t2] += w * g[i * dv + t2];
        dTheta[i * n + j] = dotAt(g, i, v, j, dv);
      }
    }
  }
  // theta_ii = W(i); theta_ij = W(A) P_A[B][C] / |C| for i in B, j in C, siblings under A
  const dW = new Float64Array(nodes);
  for (let i = 0; i < n; i++) dW[i] = dTheta[i * n + i];
  const dShare = new Map();
  for (const a of families) {
    const { kids, leaves, label, size } = fam.get(a);
    const b = kids.length;
    const P = share.get(a);
    const dP = new Float64Array(b * b);
    for (let x = 0; x < leaves.length; x++) {
      for (let y = 0; y < leaves.length; y++) {
        const r = label[x];
        const c = label[y];
        if (r === c) continue;
        const d = dTheta[leaves[x] * n + leaves[y]] / size[c];
        dP[r * b + c] += d * W[a];
        dW[a] += d * P[r * b + c];
      }
    }
    dShare.set(a, dP);
  }
  // W(B) = W(A) mu(B): from the leaves up, every dW(B) is complete before its family's turn
  for (const a of families) {
    const { kids } = fam.get(a);
    const P = share.get(a);
    const dP = dShare.get(a);
    kids.forEach((c, r) => {
      const at = r * kids.length + r;
      dW[a] += dW[c] * P[at];
      dP[at] += dW[c] * W[a];
    });
  }
  // P = exp(logits - L), L = logsumexp(logits), F(A) = sum |B|/|A| L(B); from the roots down,
  // every dF(A) is complete before its children's turn
  const dF = new Float64Array(nodes);
  const dS = new Float64Array(n * n);
  for (let f = families.length - 1; f >= 0; f--) {
    const a = families[f];
    const { kids, leaves, label, size } = fam.get(a);
    const b = kids.length;
    const P = share.get(a);
    const dP = dShare.get(a);
    const dE = new Float64Array(b * b);
    for (let r = 0; r < b; r++) {
      let inner = 0;
      for (let c = 0; c < b; c++) inner += dP[r * b + c] * P[r * b + c];
      const dL = (dF[a] * size[r]) / count[a];
      for (let c = 0; c < b; c++) {
        const dLogit = P[r * b + c] * (dP[r * b + c] - inner + dL);
        if (c === r) dF[kids[r]] += dLogit;
        else dE[r * b + c] = dLogit;
      }
    }
    // e_BC = mean of s_ij over B x C (+ <p_B, p_C>)
    for (let x = 0; x < leaves.length; x++) {
      for (let y = 0; y < leaves.length; y++) {
        const r = label[x];
        const c = label[y];
        if (r !== c) dS[leaves[x] * n + leaves[y]] = dE[r * b + c] / (size[r] * size[c]);
      }
    }
    if (pos !== null) {
      for (let r = 0; r < b; r++) {
        for (let c = 0; c < b; c++) {
          if (r === c) continue;
          const d = dE[r * b + c];
          for (let t2 = 0; t2 < dp; t2++) {
            gpos[kids[r] * dp + t2] += d * pos[kids[c] * dp + t2];
            gpos[kids[c] * dp + t2] += d * pos[kids[r] * dp + t2];
          }
        }
      }
    }
  }
  // F(i) = s_ii (+ <p_i, p_i>)
  for (let i = 0; i < n; i++) {
    if (bug !== "leaf-self-term-dropped") dS[i * n + i] = dF[i];
    if (pos !== null && bug !== "leaf-self-term-dropped") {
      for (let t2 = 0; t2 < dp; t2++) gpos[i * dp + t2] += 2 * dF[i] * pos[i * dp + t2];
    }
  }
  // s_ij = scale <q_i, k_j>, or -scale/2 |q_i - k_j|^2 (from the differences)
  const keyFactor = bug === "keys-gradient-halved" ? 0.5 : 1;
  for (const leaves of trees) {
    for (const i of leaves) {
      for (const j of leaves) {
        const d = dS[i * n + j];
        if (d === 0) continue;
        for (let t2 = 0; t2 < dk; t2++) {
          const qi = q[i * dk + t2];
          const kj = k[j * dk + t2];
          if (energy === "dot") {
            gq[i * dk + t2] += scale * d * kj;
            gk[j * dk + t2] += keyFactor * scale * d * qi;
          } else {
            const diff = qi - kj;
            gq[i * dk + t2] -= scale * d * diff;
            gk[j * dk + t2] += keyFactor * scale * d * diff;
          }
        }
      }
    }
  }
}

// ------------------------------------------------------------------------------ batches
// The batch shape of broadcast inputs, and for each batch element the offset of each input's
// matrix (0 along a dimension it broadcasts).
function broadcastBatch(arrays) {
  const batches = arrays.map((a) => a.shape.slice(0, -2));
  const dims = Math.max(...batches.map((s) => s.length));
  const shape = [];
  for (let d = 0; d < dims; d++) {
    let size = 1;
    for (const s of batches) {
      const x = s[d - (dims - s.length)] ?? 1;
      if (x !== 1 && size !== 1 && x !== size) throw new Error("batch shapes do not broadcast");
      if (x !== 1) size = x;
    }
    shape.push(size);
  }
  const total = shape.reduce((a, b) => a * b, 1);
  const offsets = [];
  for (let flat = 0; flat < total; flat++) {
    const index = [];
    let rest = flat;
    for (let d = dims - 1; d >= 0; d--) {
      index.unshift(rest % shape[d]);
      rest = Math.floor(rest / shape[d]);
    }
    offsets.push(
      arrays.map((a, which) => {
        const s = batches[which];
        let at = 0;
        for (let d = 0; d < s.length; d++) {
          at = at * s[d] + (s[d] === 1 ? 0 : index[d + dims - s.length]);
        }
        return at;
      }),
    );
  }
  return { shape, offsets };
}

function compute(request, bug) {
  const t = prepareTree(request.tree);
  const energy = request.energy ?? "dot";
  if (energy !== "dot" && energy !== "distance") throw new Error(`unknown energy ${energy}`);
  const q = decodeArray(request.q, "q");
  const k = decodeArray(request.k, "k");
  const v = decodeArray(request.v, "v");
  const dk = q.shape.at(-1);
  const dv = v.shape.at(-1);
  for (const [name, x] of [["q", q], ["k", k], ["v", v]]) {
    if (x.shape.length < 2 || x.shape.at(-2) !== t.n) {
      throw new Error(`${name} must have shape (..., ${t.n}, d), got [${x.shape}]`);
    }
  }
  if (k.shape.at(-1) !== dk) throw new Error("q and k must have the same last dimension");
  const scale = request.scale === null || request.scale === undefined ? 1 / Math.sqrt(dk) : request.scale;
  let pos = null;
  let dp = 0;
  if (request.positions) {
    const p = decodeArray(request.positions, "positions");
    if (p.shape.length !== 2 || p.shape[0] !== t.nodes) {
      throw new Error(`positions must have shape (${t.nodes}, d_p), got [${p.shape}]`);
    }
    pos = p.data;
    dp = p.shape[1];
  }
  const { shape: batch, offsets } = broadcastBatch([q, k, v]);
  const outShape = [...batch, t.n, dv];
  const out = new Float64Array(outShape.reduce((a, b) => a * b, 1));
  const g = request.grad_out ? decodeArray(request.grad_out, "grad_out") : null;
  if (g !== null && g.shape.join() !== outShape.join()) {
    throw new Error(`grad_out must have shape [${outShape}], got [${g.shape}]`);
  }
  const grads = g && {
    q: new Float64Array(q.data.length),
    k: new Float64Array(k.data.length),
    v: new Float64Array(v.data.length),
    positions: pos && new Float64Array(pos.length),
  };
  const mq = t.n * dk;
  const mv = t.n * dv;
  offsets.forEach(([oq, ok, ov], e) => {
    const qe = q.data.subarray(oq * mq, (oq + 1) * mq);
    const ke = k.data.subarray(ok * mq, (ok + 1) * mq);
    const ve = v.data.subarray(ov * mv, (ov + 1) * mv);
    const saved = forward(t, qe, ke, ve, dk, dv, scale, energy, pos, dp, bug);
    out.set(saved.y, e * mv);
    if (g === null) return;
    const into = [
      grads.q.subarray(oq * mq, (oq + 1) * mq),
      grads.k.subarray(ok * mq, (ok + 1) * mq),
      grads.v.subarray(ov * mv, (ov + 1) * mv),
      grads.positions,
    ];
    const ge = g.data.subarray(e * mv, (e + 1) * mv);
    backward(t, saved, qe, ke, ve, ge, dk, dv, scale, energy, pos, dp, into, bug);
  });
  const result = { out: { shape: outShape, data: out }, grads: null };
  if (grads) {
    result.grads = {
      q: { shape: q.shape, data: grads.q },
      k: { shape: k.shape, data: grads.k },
      v: { shape: v.shape, data: grads.v },
    };
    if (pos !== null) result.grads.positions = { shape: [t.nodes, dp], data: grads.positions };
  }
  return result;
}

// ------------------------------------------------------------------------------ the loop
function reply(request, bug, encoding) {
  if (request.dtype !== "float64") {
    return { unsupported: `computes in float64 only, not ${request.dtype}` };
  }
  const { out, grads } = compute(request, bug);
  const answer = { out: encodeArray(out.shape, out.data, encoding) };
  for (const [name, g] of Object.entries(grads ?? {})) {
    answer[`grad_${name}`] = encodeArray(g.shape, g.data, encoding);
  }
  return answer;
}

function main() {
  let opts;
  try {
    opts = parseArgs(process.argv.slice(2));
  } catch (err) {
    process.stdout.write(`${JSON.stringify({ format: FORMAT, error: err.message, usage: true })}\n`);
    process.exitCode = 2;
    return;
  }
  const declaration = {
    format: FORMAT,
    name: opts.bug ? `hsa_port.js --bug ${opts.bug}` : "hsa_port.js",
    version: "1",
    dtypes: ["float64"],
    capabilities: {
      energies: ["dot", "distance"],
      forests: true,
      positions: true,
      gradients: true,
      shuffled_leaves: true,
      batches: true,
    },
    encoding: opts.encoding,
  };
  process.stdout.write(`${JSON.stringify(declaration)}\n`);
  const lines = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
  lines.on("line", (line) => {
    if (!line.trim()) return;
    let id = null;
    let answer;
    try {
      const request = JSON.parse(line);
      id = request.id;
      answer = reply(request, opts.bug, opts.encoding);
    } catch (err) {
      answer = { error: String(err && err.stack ? err.stack : err).slice(0, 2000) };
    }
    process.stdout.write(`${JSON.stringify({ id, ...answer })}\n`);
  });
}

main();
