// SR-GNN's training loss and its gradients on the CPU in two native calls (srgnn/fused_cpu.py).
//
// The same computation as srgnn.model.SRGNN.forward(items, lengths, ngc_w, targets): the batch's
// session graphs (srgnn.graph_batch), the gated graph network (Eq. 1-5), the readout (Eq. 6-7) and
// the full-catalog cross-entropy (Eq. 8-10); the backward is written out by hand. The matrix
// products go to ATen (MKL / oneDNN); everything else (graph building, sparse A_s products, gates,
// attention, gathers and scatters) is plain loops, so a 100-pair step is ~20 products and a few
// loops instead of ~400 eager calls with their autograd records.
//
// The first GGNN step projects each distinct item of the batch once (v W_h^T for U distinct items
// instead of M nodes; U ~ M / 2 at 1,000 items) and sums the nodes' gradients per item before the
// products of the backward.
//
// Parameter slots (fused_cpu.parameter_slots): 0 embedding [N+1, d]; 1 w_ih [3d, K d]; 2 w_hh
// [3d, d]; 3 b_ih; 4 b_hh; 5-6 W_1 and its bias; 7-8 W_2 and c; 9 q [1, d]; 10-11 W_3 and its
// bias; then per block k of A_s (in, out, fc_in, fc_out): edge weight [d, d], edge bias, block
// bias (b_iah, b_oah, ...). Readout parameters a readout does not use are empty tensors.
#include <ATen/Parallel.h>
#include <ATen/record_function.h>
#include <torch/extension.h>

#include <algorithm>
#include <utility>
#include <vector>

namespace {

using at::Tensor;

enum Readout : int64_t { HYBRID = 0, ATT = 1, LAST = 2, AVG = 3 };

// A pair of normalised matrices, filled in place: the distinct weighted edges src -> dst (packed
// node ids, at most `capacity`), then A_in[dst, src] = w / in-degree(dst) and
// A_out[src, dst] = w / out-degree(src), a zero degree read as 1.
struct EdgePair {
  Tensor src, dst, v_in, v_out;
  int64_t* ps;
  int64_t* pd;
  float* pw;
  int64_t E = 0;
  explicit EdgePair(int64_t capacity)
      : src(at::empty({capacity}, at::kLong)), dst(at::empty({capacity}, at::kLong)),
        v_in(at::empty({capacity}, at::kFloat)), v_out(at::empty({capacity}, at::kFloat)),
        ps(src.data_ptr<int64_t>()), pd(dst.data_ptr<int64_t>()), pw(v_in.data_ptr<float>()) {}
  // The session's pairs (local ids < n_nodes, in click order), each distinct pair once with the
  // weight of its first occurrence; `seen` is scratch of n_nodes^2 flags.
  void add(const std::vector<std::pair<int64_t, int64_t>>& pairs, const std::vector<float>& weights,
           int64_t offset, int64_t n_nodes, std::vector<char>& seen) {
    std::fill(seen.begin(), seen.begin() + n_nodes * n_nodes, 0);
    for (size_t i = 0; i < pairs.size(); ++i) {
      char& flag = seen[pairs[i].first * n_nodes + pairs[i].second];
      if (flag) continue;
      flag = 1;
      ps[E] = offset + pairs[i].first;
      pd[E] = offset + pairs[i].second;
      pw[E] = weights[i];
      ++E;
    }
  }
  std::vector<Tensor> normalised(int64_t M) {
    std::vector<float> in_deg(M, 0.f), out_deg(M, 0.f);
    for (int64_t e = 0; e < E; ++e) { out_deg[ps[e]] += pw[e]; in_deg[pd[e]] += pw[e]; }
    float* po = v_out.data_ptr<float>();
    for (int64_t e = 0; e < E; ++e) {
      const float di = in_deg[pd[e]], dout = out_deg[ps[e]], w = pw[e];
      pw[e] = w / (di > 0 ? di : 1.f);                                // v_in overwrites w in place
      po[e] = w / (dout > 0 ? dout : 1.f);
    }
    return {src.narrow(0, 0, E), dst.narrow(0, 0, E), v_in.narrow(0, 0, E), v_out.narrow(0, 0, E)};
  }
};

// The batch's session graphs, as srgnn.graph_batch.build_session_graph (nodes = a session's distinct
// items in ascending order). Returns node_items [M], click_node [P], click_session [P], last_node [B],
// batch_items [U] (the batch's distinct items) and node_item_id [M] (each node's row there), then per
// edge pair (consecutive clicks; all later clicks for FC) src, dst, v_in, v_out.
constexpr size_t GRAPH_HEAD = 6;
std::vector<Tensor> build_graph(const Tensor& items_t, const Tensor& lengths_t, const Tensor& ngc_t,
                                bool fc) {
  RECORD_FUNCTION("srgnn_fused.build_graph", std::vector<c10::IValue>());
  const int64_t B = items_t.size(0), L = items_t.size(1);
  const int64_t* items = items_t.data_ptr<int64_t>();
  const int64_t* lengths = lengths_t.data_ptr<int64_t>();
  const float* ngc = ngc_t.numel() ? ngc_t.data_ptr<float>() : nullptr;
  int64_t P = 0, fc_pairs = 0;
  for (int64_t b = 0; b < B; ++b) {
    const int64_t n = lengths[b];
    TORCH_CHECK(n >= 1 && n <= L, "session ", b, " has length ", n, "; each must be 1..", L);
    P += n;
    fc_pairs += n * (n - 1) / 2;
  }
  Tensor node_items_t = at::empty({P}, at::kLong), click_node_t = at::empty({P}, at::kLong),
         click_session_t = at::empty({P}, at::kLong), last_node_t = at::empty({B}, at::kLong);
  int64_t *node_items = node_items_t.data_ptr<int64_t>(), *click_node = click_node_t.data_ptr<int64_t>(),
          *click_session = click_session_t.data_ptr<int64_t>(), *last_node = last_node_t.data_ptr<int64_t>();
  EdgePair seq(P), full(fc ? fc_pairs : 0);
  std::vector<int64_t> alias(L), sorted(L);
  std::vector<std::pair<int64_t, int64_t>> pairs;
  std::vector<float> weights;
  std::vector<char> seen(L * L);
  int64_t M = 0, p = 0;
  for (int64_t b = 0; b < B; ++b) {
    const int64_t n = lengths[b];
    const int64_t* row = items + b * L;
    std::copy(row, row + n, sorted.begin());
    std::sort(sorted.begin(), sorted.begin() + n);
    const int64_t n_nodes = std::unique(sorted.begin(), sorted.begin() + n) - sorted.begin();
    const int64_t offset = M;
    std::copy(sorted.begin(), sorted.begin() + n_nodes, node_items + offset);
    M += n_nodes;
    for (int64_t i = 0; i < n; ++i, ++p) {
      alias[i] = std::lower_bound(sorted.begin(), sorted.begin() + n_nodes, row[i]) - sorted.begin();
      click_node[p] = offset + alias[i];
      click_session[p] = b;
    }
    last_node[b] = offset + alias[n - 1];
    pairs.clear(); weights.clear();
    for (int64_t i = 1; i < n; ++i) {
      pairs.emplace_back(alias[i - 1], alias[i]);
      weights.push_back(ngc ? ngc[b * L + i] : 1.f);
    }
    seq.add(pairs, weights, offset, n_nodes, seen);
    if (fc) {
      pairs.clear(); weights.clear();
      for (int64_t i = 0; i < n; ++i)
        for (int64_t j = i + 1; j < n; ++j) { pairs.emplace_back(alias[i], alias[j]); weights.push_back(1.f); }
      full.add(pairs, weights, offset, n_nodes, seen);
    }
  }
  // the batch's distinct items, and each node's row among them
  std::vector<int64_t> batch_items(node_items, node_items + M);
  std::sort(batch_items.begin(), batch_items.end());
  batch_items.erase(std::unique(batch_items.begin(), batch_items.end()), batch_items.end());
  const int64_t U = (int64_t)batch_items.size();
  Tensor batch_items_t = at::empty({U}, at::kLong), node_item_id_t = at::empty({M}, at::kLong);
  std::copy(batch_items.begin(), batch_items.end(), batch_items_t.data_ptr<int64_t>());
  int64_t* node_item_id = node_item_id_t.data_ptr<int64_t>();
  for (int64_t m = 0; m < M; ++m)
    node_item_id[m] = std::lower_bound(batch_items.begin(), batch_items.end(), node_items[m]) - batch_items.begin();
  std::vector<Tensor> out = {node_items_t.narrow(0, 0, M), click_node_t, click_session_t, last_node_t,
                             batch_items_t, node_item_id_t};
  for (auto& t : seq.normalised(M)) out.push_back(t);
  if (fc) for (auto& t : full.normalised(M)) out.push_back(t);
  return out;
}

// The sparse product of one block: dst[row_of(rows[e]), :d] += vals[e] * src[col_of(cols[e]), :d] over
// row-major buffers with row strides; row_of / col_of map a node to its distinct item's row when
// given (the first GGNN step), else are the identity.
void sparse_product(const Tensor& rows_t, const Tensor& cols_t, const Tensor& vals_t, const int64_t* row_map,
                    const int64_t* col_map, const float* src, int64_t src_stride, float* dst, int64_t dst_stride,
                    int64_t d) {
  const int64_t* rows = rows_t.data_ptr<int64_t>();
  const int64_t* cols = cols_t.data_ptr<int64_t>();
  const float* vals = vals_t.data_ptr<float>();
  for (int64_t e = 0, E = vals_t.numel(); e < E; ++e) {
    const float v = vals[e];
    const float* s = src + (col_map ? col_map[cols[e]] : cols[e]) * src_stride;
    float* o = dst + (row_map ? row_map[rows[e]] : rows[e]) * dst_stride;
    for (int64_t j = 0; j < d; ++j) o[j] += v * s[j];
  }
}

// Block k's (rows, cols, vals): k = 2p is A_in of pair p (rows dst, cols src), 2p + 1 its A_out.
struct Block { Tensor rows, cols, vals; };
std::vector<Block> blocks_of(const std::vector<Tensor>& saved, size_t n_graph) {
  std::vector<Block> blocks;
  for (size_t p = GRAPH_HEAD; p + 3 < n_graph; p += 4) {
    blocks.push_back({saved[p + 1], saved[p], saved[p + 2]});   // A_in
    blocks.push_back({saved[p], saved[p + 1], saved[p + 3]});   // A_out
  }
  return blocks;
}

// The products of the node vectors v, all in one: [W_edge_1; ..; W_edge_K; w_hh] ([K d + 3d, d]) and
// the matching biases, so that v W_h^T + b_h = [H_1 .. H_K | gh] (Eq. 1's H_k = v W_k^T + e_k, then
// the gates' v w_hh^T + b_hh).
std::pair<Tensor, Tensor> node_projection(const std::vector<Tensor>& params, int64_t K) {
  std::vector<Tensor> w, b;
  for (int64_t k = 0; k < K; ++k) { w.push_back(params[12 + 3 * k]); b.push_back(params[13 + 3 * k]); }
  w.push_back(params[2]);
  b.push_back(params[4]);
  return {at::cat(w, 0), at::cat(b, 0)};
}

}  // namespace

// Forward: {loss, then what backward needs}. Saved layout: the graph (GRAPH_HEAD + 4 per pair), then
// {W_h, b_h, the distinct items' vectors}, per GGNN step {v, inputs, [H | gh], [r | z], n}, then
// {v_final, [s_g | s_l], sigma, alpha, s, log_p}.
std::vector<Tensor> srgnn_forward(const Tensor& items, const Tensor& lengths, const Tensor& ngc_w,
                                  const Tensor& targets, const std::vector<Tensor>& params, int64_t step,
                                  bool fc, int64_t readout) {
  at::NoGradGuard no_grad;
  for (size_t i = 0; i < params.size(); ++i)
    TORCH_CHECK(params[i].numel() == 0 || (params[i].is_contiguous() && params[i].scalar_type() == at::kFloat &&
                                           params[i].device().is_cpu()),
                "parameter slot ", i, " must be a contiguous float32 CPU tensor");
  TORCH_CHECK(items.scalar_type() == at::kLong && lengths.scalar_type() == at::kLong &&
              targets.scalar_type() == at::kLong, "items, lengths and targets must be int64");
  const Tensor& emb = params[0];
  const int64_t d = emb.size(1), N = emb.size(0) - 1, B = items.size(0), K = fc ? 4 : 2;
  std::vector<Tensor> saved = build_graph(items.contiguous(), lengths.contiguous(), ngc_w.contiguous(), fc);
  const size_t n_graph = saved.size();
  std::vector<Block> blocks = blocks_of(saved, n_graph);
  const Tensor node_items = saved[0], click_node = saved[1], click_session = saved[2], last_node = saved[3],
               batch_items = saved[4], node_item_id = saved[5];
  const int64_t M = node_items.size(0), P = click_node.size(0);

  auto [W_h, b_h] = node_projection(params, K);
  const int64_t HW = K * d + 3 * d;                                  // width of [H_1 .. H_K | gh]
  Tensor v_items = emb.index_select(0, batch_items);                 // [U, d]
  saved.insert(saved.end(), {W_h, b_h, v_items});
  Tensor h = emb.index_select(0, node_items);                       // node vectors v
  for (int64_t t = 0; t < step; ++t) {
    RECORD_FUNCTION("srgnn_fused.ggnn_forward", std::vector<c10::IValue>());
    // Eq. 1: a = [A_in H_in + b_iah, A_out H_out + b_oah (, FC blocks)], H_k = v W_k^T + e_k
    // (step 1: one row per distinct item, gathered through node_item_id)
    const int64_t* row_of = t == 0 ? node_item_id.data_ptr<int64_t>() : nullptr;
    Tensor HG = at::addmm(b_h, t == 0 ? v_items : h, W_h.t());       // [U or M, K d + 3d] = [H | gh]
    Tensor inputs = at::empty({M, K * d}, h.options());
    float* in = inputs.data_ptr<float>();
    const float* pHG = HG.data_ptr<float>();
    at::parallel_for(0, K, 1, [&](int64_t k0, int64_t k1) {          // the blocks fill disjoint columns
      for (int64_t k = k0; k < k1; ++k) {
        const float* c = params[14 + 3 * k].data_ptr<float>();
        for (int64_t m = 0; m < M; ++m) std::copy(c, c + d, in + m * K * d + k * d);
        sparse_product(blocks[k].rows, blocks[k].cols, blocks[k].vals, nullptr, row_of, pHG + k * d, HW, in + k * d,
                       K * d, d);
      }
    });
    Tensor gi = at::addmm(params[3], inputs, params[1].t());         // [M, 3d]
    // Eq. 2-5 on [gi | gh]; gh is row row_of(m) of HG's last 3d columns. The sigmoid and tanh are
    // ATen's (vectorised): scalar expf would cost more than the products.
    Tensor rz = at::empty({M, 2 * d}, h.options()), n = at::empty({M, d}, h.options()),
           h_new = at::empty({M, d}, h.options());
    const float *pgi = gi.data_ptr<float>(), *ph_ = h.data_ptr<float>();
    float *prz = rz.data_ptr<float>(), *pn = n.data_ptr<float>(), *pnew = h_new.data_ptr<float>();
    for (int64_t m = 0; m < M; ++m) {
      const float *g = pgi + m * 3 * d, *gh = pHG + (row_of ? row_of[m] : m) * HW + K * d;
      for (int64_t j = 0; j < 2 * d; ++j) prz[m * 2 * d + j] = g[j] + gh[j];
    }
    rz.sigmoid_();                                                    // [r | z]: Eq. 3 reset r, Eq. 2 update z
    for (int64_t m = 0; m < M; ++m) {
      const float *g = pgi + m * 3 * d + 2 * d, *gh = pHG + (row_of ? row_of[m] : m) * HW + K * d + 2 * d,
                  *r = prz + m * 2 * d;
      for (int64_t j = 0; j < d; ++j) pn[m * d + j] = g[j] + r[j] * gh[j];
    }
    n.tanh_();                                                        // Eq. 4: candidate state
    for (int64_t m = 0; m < M; ++m) {
      const float *z = prz + m * 2 * d + d, *v = ph_ + m * d, *c = pn + m * d;
      for (int64_t j = 0; j < d; ++j) pnew[m * d + j] = c[j] + z[j] * (v[j] - c[j]);   // Eq. 5
    }
    saved.insert(saved.end(), {h, inputs, HG, rz, n});
    h = h_new;
  }

  // Readout (Eq. 6-7) into one [B, 2d] buffer [s_g | s_l] (W_3's input).
  Tensor s_cat = at::zeros({B, 2 * d}, h.options());
  Tensor s_g = s_cat.narrow(1, 0, d), s_l = s_cat.narrow(1, d, d);
  Tensor sigma = at::empty({0}, h.options()), alpha = at::empty({0}, h.options());
  const int64_t* cn = click_node.data_ptr<int64_t>();
  const int64_t* cs = click_session.data_ptr<int64_t>();
  const float* ph = h.data_ptr<float>();
  float* pc = s_cat.data_ptr<float>();
  {
    const int64_t* ln = last_node.data_ptr<int64_t>();
    for (int64_t b = 0; b < B; ++b) std::copy(ph + ln[b] * d, ph + ln[b] * d + d, pc + b * 2 * d + d);  // v_n
  }
  if (readout == HYBRID || readout == ATT) {
    // Eq. 6: alpha_i = q^T sigmoid(W_1 v_n + W_2 v_i + c), s_g = sum_i alpha_i v_i
    Tensor q1 = at::addmm(params[6], s_l, params[5].t());
    Tensor q2 = at::addmm(params[8], h, params[7].t());
    sigma = at::empty({P, d}, h.options());
    alpha = at::empty({P}, h.options());
    const float *p1 = q1.data_ptr<float>(), *p2 = q2.data_ptr<float>(), *q = params[9].data_ptr<float>();
    float *ps = sigma.data_ptr<float>(), *pa = alpha.data_ptr<float>();
    for (int64_t p = 0; p < P; ++p) {
      const float *a = p1 + cs[p] * d, *c = p2 + cn[p] * d;
      for (int64_t j = 0; j < d; ++j) ps[p * d + j] = a[j] + c[j];
    }
    sigma.sigmoid_();
    for (int64_t p = 0; p < P; ++p) {
      const float *sp = ps + p * d, *v = ph + cn[p] * d;
      float acc = 0.f;
      for (int64_t j = 0; j < d; ++j) acc += q[j] * sp[j];
      pa[p] = acc;
      float* g = pc + cs[p] * 2 * d;
      for (int64_t j = 0; j < d; ++j) g[j] += acc * v[j];
    }
  } else if (readout == AVG) {
    const int64_t* len = lengths.data_ptr<int64_t>();
    for (int64_t p = 0; p < P; ++p) {
      const float* v = ph + cn[p] * d;
      float* g = pc + cs[p] * 2 * d;
      for (int64_t j = 0; j < d; ++j) g[j] += v[j];
    }
    for (int64_t b = 0; b < B; ++b)
      for (int64_t j = 0; j < d; ++j) pc[b * 2 * d + j] /= (float)len[b];
  }
  Tensor s;
  if (readout == HYBRID) s = at::addmm(params[11], s_cat, params[10].t());  // Eq. 7: s_h = W_3 [s_g ; s_l]
  else if (readout == LAST) s = s_l.contiguous();
  else s = s_g.contiguous();

  // Eq. 8-10: scores over all items, softmax, cross-entropy (mean over the batch).
  Tensor log_p = at::log_softmax(at::mm(s, emb.narrow(0, 1, N).t()), 1);
  const float* lp = log_p.data_ptr<float>();
  const int64_t* tg = targets.data_ptr<int64_t>();
  double loss = 0;
  for (int64_t b = 0; b < B; ++b) {
    TORCH_CHECK(tg[b] >= 1 && tg[b] <= N, "target ", tg[b], " of row ", b, " is outside 1..", N);
    loss -= lp[b * N + tg[b] - 1];
  }
  saved.insert(saved.end(), {h, s_cat, sigma, alpha, s, log_p});
  std::vector<Tensor> out = {at::scalar_tensor(loss / B, h.options())};
  out.insert(out.end(), saved.begin(), saved.end());
  return out;
}

// Backward: the gradient of every parameter slot (empty where the slot is empty).
std::vector<Tensor> srgnn_backward(const Tensor& grad_loss, const std::vector<Tensor>& saved,
                                   const Tensor& lengths, const Tensor& targets,
                                   const std::vector<Tensor>& params, int64_t step, bool fc, int64_t readout) {
  at::NoGradGuard no_grad;
  const Tensor& emb = params[0];
  const int64_t d = emb.size(1), N = emb.size(0) - 1, B = targets.size(0), K = fc ? 4 : 2;
  const size_t n_graph = GRAPH_HEAD + (fc ? 8 : 4);
  std::vector<Block> blocks = blocks_of(saved, n_graph);
  const Tensor &node_items = saved[0], &click_node = saved[1], &click_session = saved[2], &last_node = saved[3],
               &batch_items = saved[4], &node_item_id = saved[5];
  const int64_t M = node_items.size(0), P = click_node.size(0), U = batch_items.size(0);
  const Tensor &W_h = saved[n_graph], &v_items = saved[n_graph + 2];
  const int64_t HW = K * d + 3 * d;
  const size_t tail = n_graph + 3 + 5 * step;
  const Tensor &h = saved[tail], &s_cat = saved[tail + 1], &sigma = saved[tail + 2], &alpha = saved[tail + 3],
               &s = saved[tail + 4], &log_p = saved[tail + 5];
  const Tensor s_l = s_cat.narrow(1, d, d);
  std::vector<Tensor> grads(params.size());

  // Eq. 8-10: d loss / d scores = (softmax - onehot) * g / B
  const float scale = grad_loss.item<float>() / (float)B;
  Tensor G = at::exp(log_p).mul_(scale);
  {
    float* pG = G.data_ptr<float>();
    const int64_t* tg = targets.data_ptr<int64_t>();
    for (int64_t b = 0; b < B; ++b) pG[b * N + tg[b] - 1] -= scale;
  }
  Tensor d_emb = at::empty_like(emb);
  d_emb[0].zero_();                                                    // row 0 is never scored
  Tensor d_scored = d_emb.narrow(0, 1, N);
  at::mm_out(d_scored, G.t(), s);
  Tensor ds = at::mm(G, emb.narrow(0, 1, N));                          // [B, d]

  Tensor dcat;                                                         // d [s_g | s_l]
  if (readout == HYBRID) {
    grads[10] = at::mm(ds.t(), s_cat);
    grads[11] = ds.sum(0);
    dcat = at::mm(ds, params[10]);
  } else {
    dcat = at::zeros({B, 2 * d}, s.options());
    dcat.narrow(1, readout == LAST ? d : 0, d).copy_(ds);
  }
  Tensor ds_g = dcat.narrow(1, 0, d), ds_l = dcat.narrow(1, d, d);

  Tensor dh = at::zeros({M, d}, s.options());
  const int64_t* cn = click_node.data_ptr<int64_t>();
  const int64_t* cs = click_session.data_ptr<int64_t>();
  const float* ph = h.data_ptr<float>();
  float* pdh = dh.data_ptr<float>();
  const float* pdc = dcat.data_ptr<float>();
  if (readout == HYBRID || readout == ATT) {
    Tensor dq1 = at::zeros({B, d}, s.options()), dq2 = at::zeros({M, d}, s.options()),
           dq = at::zeros({1, d}, s.options());
    const float *ps = sigma.data_ptr<float>(), *pa = alpha.data_ptr<float>(), *q = params[9].data_ptr<float>();
    float *p1 = dq1.data_ptr<float>(), *p2 = dq2.data_ptr<float>(), *pq = dq.data_ptr<float>();
    for (int64_t p = 0; p < P; ++p) {
      const float *g = pdc + cs[p] * 2 * d, *v = ph + cn[p] * d, *sp = ps + p * d;
      float* dv = pdh + cn[p] * d;
      float dalpha = 0.f;
      for (int64_t j = 0; j < d; ++j) { dalpha += g[j] * v[j]; dv[j] += pa[p] * g[j]; }
      float *a = p1 + cs[p] * d, *c = p2 + cn[p] * d;
#pragma GCC ivdep
      for (int64_t j = 0; j < d; ++j) {
        pq[j] += dalpha * sp[j];
        const float dpre = dalpha * q[j] * sp[j] * (1.f - sp[j]);
        a[j] += dpre;
        c[j] += dpre;
      }
    }
    grads[9] = dq;
    grads[5] = at::mm(dq1.t(), s_l);
    grads[6] = dq1.sum(0);
    ds_l.addmm_(dq1, params[5]);
    grads[7] = at::mm(dq2.t(), h);
    grads[8] = dq2.sum(0);
    dh.addmm_(dq2, params[7]);
  } else if (readout == AVG) {
    const int64_t* len = lengths.data_ptr<int64_t>();
    for (int64_t p = 0; p < P; ++p) {
      const float* g = pdc + cs[p] * 2 * d;
      float* dv = pdh + cn[p] * d;
      const float inv = 1.f / (float)len[cs[p]];
      for (int64_t j = 0; j < d; ++j) dv[j] += g[j] * inv;
    }
  }
  {
    const int64_t* ln = last_node.data_ptr<int64_t>();
    for (int64_t b = 0; b < B; ++b)
      for (int64_t j = 0; j < d; ++j) pdh[ln[b] * d + j] += pdc[b * 2 * d + d + j];
  }

  // The GGNN steps in reverse (Eq. 1-5).
  Tensor d_wih = at::zeros_like(params[1]), d_Wh = at::zeros_like(W_h);
  Tensor d_bih = at::zeros_like(params[3]), d_bh = at::zeros({HW}, s.options()), d_c = at::zeros({K * d}, s.options());
  for (int64_t t = step - 1; t >= 0; --t) {
    RECORD_FUNCTION("srgnn_fused.ggnn_backward", std::vector<c10::IValue>());
    const size_t o = n_graph + 3 + 5 * t;
    const Tensor &h_in = saved[o], &inputs = saved[o + 1], &HG = saved[o + 2], &rz = saved[o + 3],
                 &n = saved[o + 4];
    // [dH | dgh]: per node, or (step 1) summed per distinct item, as the forward projected them
    const bool per_item = t == 0;
    const int64_t* row_of = per_item ? node_item_id.data_ptr<int64_t>() : nullptr;
    Tensor dgi = at::empty({M, 3 * d}, s.options());
    Tensor dHG = at::zeros({per_item ? U : M, HW}, s.options());
    Tensor dh_prev = at::empty({M, d}, s.options());
    const float *prz = rz.data_ptr<float>(), *pn = n.data_ptr<float>(), *pHG = HG.data_ptr<float>(),
                *phi = h_in.data_ptr<float>(), *pd = dh.data_ptr<float>();
    float *pgi_ = dgi.data_ptr<float>(), *pHG_ = dHG.data_ptr<float>(), *pp = dh_prev.data_ptr<float>();
    std::vector<float> bias_sum(3 * d, 0.f);                          // d b_ih = column sums of dgi
    float* bsum = bias_sum.data();
    for (int64_t m = 0; m < M; ++m) {
      const int64_t row = row_of ? row_of[m] : m;
      float *gi3 = pgi_ + m * 3 * d, *gh3 = pHG_ + row * HW + K * d;
      const float *pr = prz + m * 2 * d, *pz = pr + d, *ghn = pHG + row * HW + K * d + 2 * d;
      const float *pdm = pd + m * d, *phm = phi + m * d, *pnm = pn + m * d;
      float* ppm = pp + m * d;
#pragma GCC ivdep
      for (int64_t j = 0; j < d; ++j) {
        const float dz = pdm[j] * (phm[j] - pnm[j]);                 // h' = n + z (h - n)
        const float dn = pdm[j] * (1.f - pz[j]);
        ppm[j] = pdm[j] * pz[j];
        const float dpre_n = dn * (1.f - pnm[j] * pnm[j]);           // n = tanh(i_n + r h_n)
        const float dpre_z = dz * pz[j] * (1.f - pz[j]);
        const float dpre_r = dpre_n * ghn[j] * pr[j] * (1.f - pr[j]);
        gi3[j] = dpre_r; gi3[d + j] = dpre_z; gi3[2 * d + j] = dpre_n;
        gh3[j] += dpre_r; gh3[d + j] += dpre_z; gh3[2 * d + j] += dpre_n * pr[j];
        bsum[j] += dpre_r; bsum[d + j] += dpre_z; bsum[2 * d + j] += dpre_n;
      }
    }
    d_wih.addmm_(dgi.t(), inputs);
    {
      float* pb = d_bih.data_ptr<float>();
      for (int64_t j = 0; j < 3 * d; ++j) pb[j] += bsum[j];
    }
    Tensor dinputs = at::mm(dgi, params[1]);                          // [M, K d]
    d_c.add_(dinputs.sum(0));
    const float* pdi = dinputs.data_ptr<float>();
    at::parallel_for(0, K, 1, [&](int64_t k0, int64_t k1) {          // A_k^T: rows and cols swapped
      for (int64_t k = k0; k < k1; ++k)
        sparse_product(blocks[k].cols, blocks[k].rows, blocks[k].vals, row_of, nullptr, pdi + k * d, K * d,
                       pHG_ + k * d, HW, d);
    });
    d_Wh.addmm_(dHG.t(), per_item ? v_items : h_in);
    d_bh.add_(dHG.sum(0));
    if (per_item) d_emb.index_add_(0, batch_items, at::mm(dHG, W_h));
    else dh_prev.addmm_(dHG, W_h);
    dh = dh_prev;
  }
  grads[1] = d_wih; grads[3] = d_bih;
  grads[2] = d_Wh.narrow(0, K * d, 3 * d).contiguous();
  grads[4] = d_bh.narrow(0, K * d, 3 * d).contiguous();
  for (int64_t k = 0; k < K; ++k) {
    grads[12 + 3 * k] = d_Wh.narrow(0, k * d, d).contiguous();
    grads[13 + 3 * k] = d_bh.narrow(0, k * d, d).contiguous();
    grads[14 + 3 * k] = d_c.narrow(0, k * d, d).contiguous();
  }
  d_emb.index_add_(0, node_items, dh);                               // the node lookups
  grads[0] = d_emb;
  for (size_t i = 0; i < grads.size(); ++i)
    if (!grads[i].defined()) grads[i] = at::empty({0}, s.options());
  return grads;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &srgnn_forward, "SR-GNN loss and saved state");
  m.def("backward", &srgnn_backward, "SR-GNN parameter gradients");
}
