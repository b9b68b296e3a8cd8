// Fused multi-head attention forward, flash-style (Dao et al. 2022): one pass over the keys in
// tiles with an online softmax, so the [queries, keys] score matrix never reaches global memory.
//
// Layout: q [BH, Lq, d], k and v [BH, Lk, d], out [BH, Lq, d], contiguous, f16 or bf16;
// BH = batch * heads, row bh belongs to batch bh / heads and head bh % heads. Scores and the
// softmax run in f32; products run on the tensor cores through WMMA (16x16x16, f32 accumulate).
// Optional additive biases cover the U-Net's three uses:
//   - key_bias [batch, Lk]: text cross-attention's key padding (-1e9 on padded keys, as the CPU
//     path's key_padding_bias does);
//   - head_bias [heads, Lq, Lk]: temporal attention's learned relative-position bias;
//   - neither: spatial self-attention over the H*W tokens of a frame.
//
// Block: WARPS warps, each owning 16 query rows (BM = 16 * WARPS rows per block); keys arrive in
// tiles of BN. Grid: (BH, ceil(Lq / BM)) — BH in x, whose limit is 2^31 - 1, since temporal
// attention has one row per pixel and head. Head dims up to DP are zero-padded to DP in shared
// memory (zero columns add nothing to q.k and produce output columns that are never written), so
// any d <= DP works. Dynamic shared memory, in bytes, with E = sizeof(T):
//   (BM * DP + 2 * BN * DP) * E   q, k, v tiles
//   + BM * BN * 4 + BM * BN * E   raw scores (f32) and probabilities
//   + BM * DP * 4                 output accumulator (f32)
// (the host computes the same sum, and sets the function's max dynamic shared size above 48 KiB).

#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <mma.h>

using namespace nvcuda;

namespace {

constexpr int WARPS = 4;
constexpr int THREADS = 32 * WARPS;
constexpr int BM = 16 * WARPS;  // query rows per block
constexpr int BN = 32;          // keys per tile
constexpr float LOG2E = 1.4426950408889634f;
constexpr unsigned FULL_MASK = 0xffffffffu;
// -infinity (NVRTC has no <cmath> INFINITY); the bit pattern 0xff800000.
__device__ __forceinline__ float neg_inf() { return __int_as_float(0xff800000); }

template <typename T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ __half from_f32<__half>(float x) { return __float2half(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float x) {
  return __float2bfloat16(x);
}

struct Shape {
  int heads;  // heads per batch entry
  int lq;     // queries per row
  int lk;     // keys per row
  int d;      // head dim, <= DP
  float scale;
};

// Copies rows [row0, row0 + ROWS) of a [len, d] matrix into dst [ROWS][DP], zero-filling rows at
// or beyond len and columns at or beyond d. Every thread of the block takes part.
template <typename T, int ROWS, int DP>
__device__ void load_tile(T* dst, const T* __restrict__ src, int row0, int len, int d) {
  for (int i = threadIdx.x; i < ROWS * DP; i += THREADS) {
    const int r = i / DP;
    const int c = i - r * DP;
    const int row = row0 + r;
    dst[i] = (row < len && c < d) ? src[(size_t)row * d + c] : from_f32<T>(0.0f);
  }
}

// s_w [16][BN] = q_w [16][DP] . k_tile^T for one warp's 16 rows.
template <typename T, int DP>
__device__ void warp_scores(float* s_w, const T* q_w, const T* k_s) {
  for (int n = 0; n < BN / 16; ++n) {
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
    wmma::fill_fragment(acc, 0.0f);
    for (int kk = 0; kk < DP / 16; ++kk) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a;
      wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> b;
      wmma::load_matrix_sync(a, q_w + kk * 16, DP);
      // k_s is [key][DP] row-major, i.e. K^T column-major with leading dimension DP.
      wmma::load_matrix_sync(b, k_s + n * 16 * DP + kk * 16, DP);
      wmma::mma_sync(acc, a, b, acc);
    }
    wmma::store_matrix_sync(s_w + n * 16, acc, BN, wmma::mem_row_major);
  }
}

// o_w [16][DP] += p_w [16][BN] . v_tile [BN][DP] for one warp's 16 rows.
template <typename T, int DP>
__device__ void warp_accumulate(float* o_w, const T* p_w, const T* v_s) {
  for (int dd = 0; dd < DP / 16; ++dd) {
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
    wmma::load_matrix_sync(acc, o_w + dd * 16, DP, wmma::mem_row_major);
    for (int n = 0; n < BN / 16; ++n) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a;
      wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> b;
      wmma::load_matrix_sync(a, p_w + n * 16, BN);
      wmma::load_matrix_sync(b, v_s + n * 16 * DP + dd * 16, DP);
      wmma::mma_sync(acc, a, b, acc);
    }
    wmma::store_matrix_sync(o_w + dd * 16, acc, DP, wmma::mem_row_major);
  }
}

// The running softmax state of one query row, held by the two lanes that share the row.
struct RowState {
  float max;  // running maximum of the logits seen so far (-inf before the first key)
  float sum;  // running sum of exp(logit - max)
};

// One key tile's online-softmax update for this lane's half of its row: turns the raw scores in
// s_row into probabilities p_row (relative to the new running max), rescales the row's
// accumulated output o_row by exp(old max - new max), and updates the state. The two lanes of a
// row (lane and lane ^ 16) combine their halves with shuffles, so both end with the same state.
template <typename T, int DP>
__device__ void online_softmax(RowState& st, const float* s_row, T* p_row, float* o_row,
                               int half, int key0, const float* key_bias_row,
                               const float* head_bias_row, const Shape& sh) {
  constexpr int COLS = BN / 2;
  float logits[COLS];
  float tile_max = neg_inf();
#pragma unroll
  for (int c = 0; c < COLS; ++c) {
    const int col = half * COLS + c;
    const int key = key0 + col;
    float x = neg_inf();  // keys past the end take no part
    if (key < sh.lk) {
      x = s_row[col] * sh.scale;
      if (key_bias_row != nullptr) x += key_bias_row[key];
      if (head_bias_row != nullptr) x += head_bias_row[key];
    }
    logits[c] = x;
    tile_max = fmaxf(tile_max, x);
  }
  tile_max = fmaxf(tile_max, __shfl_xor_sync(FULL_MASK, tile_max, 16));
  const float new_max = fmaxf(st.max, tile_max);
  // Before any finite logit both maxima are -inf: nothing to rescale and nothing to add.
  const bool empty = new_max == neg_inf();
  const float correction = empty ? 1.0f : exp2f((st.max - new_max) * LOG2E);
  float tile_sum = 0.0f;
#pragma unroll
  for (int c = 0; c < COLS; ++c) {
    const float p = empty ? 0.0f : exp2f((logits[c] - new_max) * LOG2E);
    p_row[half * COLS + c] = from_f32<T>(p);
    tile_sum += p;
  }
  tile_sum += __shfl_xor_sync(FULL_MASK, tile_sum, 16);
  st.sum = st.sum * correction + tile_sum;
  st.max = new_max;
  for (int c = half * (DP / 2); c < (half + 1) * (DP / 2); ++c) o_row[c] *= correction;
}

template <typename T, int DP>
__device__ void flash_attention(const T* __restrict__ q, const T* __restrict__ k,
                                const T* __restrict__ v, T* __restrict__ out,
                                const float* __restrict__ key_bias,
                                const float* __restrict__ head_bias, Shape sh) {
  static_assert(DP % 16 == 0 && BN % 16 == 0, "WMMA tiles are 16 wide");
  // 128-byte alignment; every region below starts at a multiple of 32 bytes, as WMMA requires.
  extern __shared__ __align__(128) unsigned char smem[];
  T* q_s = reinterpret_cast<T*>(smem);                    // [BM][DP]
  T* k_s = q_s + BM * DP;                                 // [BN][DP]
  T* v_s = k_s + BN * DP;                                 // [BN][DP]
  float* s_s = reinterpret_cast<float*>(v_s + BN * DP);   // [BM][BN]
  T* p_s = reinterpret_cast<T*>(s_s + BM * BN);           // [BM][BN]
  float* o_s = reinterpret_cast<float*>(p_s + BM * BN);   // [BM][DP]

  const int bh = blockIdx.x;
  const int batch = bh / sh.heads;
  const int head = bh - batch * sh.heads;
  const int row0 = blockIdx.y * BM;
  const T* q_bh = q + (size_t)bh * sh.lq * sh.d;
  const T* k_bh = k + (size_t)bh * sh.lk * sh.d;
  const T* v_bh = v + (size_t)bh * sh.lk * sh.d;

  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int local_row = warp * 16 + (lane & 15);  // this lane's row within the block
  const int half = lane >> 4;                     // which half of the row's columns it handles
  const int row = row0 + local_row;               // the query row, may be >= lq (then idle)
  const float* key_bias_row = key_bias != nullptr ? key_bias + (size_t)batch * sh.lk : nullptr;
  const float* head_bias_row =
      (head_bias != nullptr && row < sh.lq) ? head_bias + ((size_t)head * sh.lq + row) * sh.lk
                                            : nullptr;

  load_tile<T, BM, DP>(q_s, q_bh, row0, sh.lq, sh.d);
  for (int i = threadIdx.x; i < BM * DP; i += THREADS) o_s[i] = 0.0f;
  RowState st{neg_inf(), 0.0f};
  __syncthreads();

  for (int key0 = 0; key0 < sh.lk; key0 += BN) {
    load_tile<T, BN, DP>(k_s, k_bh, key0, sh.lk, sh.d);
    load_tile<T, BN, DP>(v_s, v_bh, key0, sh.lk, sh.d);
    __syncthreads();  // tiles complete before any warp reads them
    warp_scores<T, DP>(s_s + warp * 16 * BN, q_s + warp * 16 * DP, k_s);
    __syncwarp();     // the warp's scores are in shared memory before its lanes read them
    online_softmax<T, DP>(st, s_s + local_row * BN, p_s + local_row * BN, o_s + local_row * DP,
                          half, key0, key_bias_row, head_bias_row, sh);
    __syncwarp();     // probabilities and rescaled outputs are written before the warp's MMA
    warp_accumulate<T, DP>(o_s + warp * 16 * DP, p_s + warp * 16 * BN, v_s);
    __syncthreads();  // every warp is done with k_s / v_s before the next tile overwrites them
  }

  // Each lane writes its half of its row; the accumulator was last stored before the barrier.
  if (row < sh.lq) {
    const float inv = st.sum > 0.0f ? 1.0f / st.sum : 0.0f;
    T* out_row = out + ((size_t)bh * sh.lq + row) * sh.d;
    for (int c = half * (DP / 2); c < (half + 1) * (DP / 2) && c < sh.d; ++c) {
      out_row[c] = from_f32<T>(o_s[local_row * DP + c] * inv);
    }
  }
}

}  // namespace

// One entry point per element type and head-dim padding; the host picks the smallest DP >= d.
#define FLASH_ENTRY(NAME, T, DP)                                                              \
  extern "C" __global__ void __launch_bounds__(THREADS)                                       \
      NAME(const T* q, const T* k, const T* v, T* out, const float* key_bias,                 \
           const float* head_bias, int heads, int lq, int lk, int d, float scale) {           \
    flash_attention<T, DP>(q, k, v, out, key_bias, head_bias, Shape{heads, lq, lk, d, scale}); \
  }

FLASH_ENTRY(flash_attention_f16_d16, __half, 16)
FLASH_ENTRY(flash_attention_f16_d32, __half, 32)
FLASH_ENTRY(flash_attention_f16_d64, __half, 64)
FLASH_ENTRY(flash_attention_f16_d128, __half, 128)
FLASH_ENTRY(flash_attention_bf16_d16, __nv_bfloat16, 16)
FLASH_ENTRY(flash_attention_bf16_d32, __nv_bfloat16, 32)
FLASH_ENTRY(flash_attention_bf16_d64, __nv_bfloat16, 64)
FLASH_ENTRY(flash_attention_bf16_d128, __nv_bfloat16, 128)
