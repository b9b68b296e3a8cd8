// Fused sampler step for a batch in which every sample has its own time (v-prediction,
// classifier-free guidance, dynamic thresholding, DDIM / ancestral / last step). The algorithm,
// its reasons and its CPU twin are in kernels/src/sampler/ (reference.rs mirrors this file phase
// by phase; radix.rs explains the select; philox.rs is the generator, bit for bit).
//
// Layout: B samples of N elements. z [B, N], v_all [R, N] (model output rows), x0 and z_next
// [B, N], all f32 contiguous; params [B]; flags_in / flags_out [B] u32 (flags_out zeroed by the
// host); hist [B][HIST_WORDS] u32 zeroed by the host; state [B][STATE_WORDS] u32.
//
// One stream, per step (the host skips 2-6 when no sample thresholds):
//   1. vc_sampler_predict    grid (bps, B) x 256: guidance, x0 -> x0, eps -> z_next, flags,
//                            radix pass-0 histogram of thresholded samples
//   2. vc_sampler_select     grid (B) x 32, pass 0
//   3. vc_sampler_radix_hist grid (bps, B) x 256, pass 1
//   4. vc_sampler_select     pass 1
//   5. vc_sampler_radix_hist pass 2
//   6. vc_sampler_select     pass 2: the order statistics -> clamp limit and factor
//   7. vc_sampler_update     grid (bps, B) x 256: threshold x0, then z_next
// Every element loop is grid-stride, so any bps >= 1 is correct. Arithmetic on data goes through
// __fmul_rn / __fadd_rn / __fsub_rn (and the double versions): the compiler never contracts them
// into FMAs, so each result is rounded where the CPU reference (and candle's tensor ops) round it.

namespace {

constexpr unsigned BLOCK = 256;        // threads of the element-wise kernels
constexpr unsigned WARP = 32;          // threads of the select kernel
constexpr unsigned BINS = 2048;        // bins of the widest digit (11 bits)
constexpr unsigned HIST_WORDS = 5 * BINS;  // pass 0; passes 1 and 2: lower and upper target
constexpr unsigned STATE_WORDS = 8;
constexpr unsigned FULL_MASK = 0xffffffffu;

// State words of one sample.
constexpr unsigned ST_PREFIX_LO = 0, ST_RANK_LO = 1, ST_PREFIX_HI = 2, ST_RANK_HI = 3;
constexpr unsigned ST_LIMIT = 4, ST_FACTOR = 5;

constexpr unsigned UPDATE_LAST = 0, UPDATE_DDIM = 1, UPDATE_ANCESTRAL = 2;
constexpr unsigned FLAG_MODEL_OUTPUT = 1, FLAG_X0_ESTIMATE = 2;

// Radix digits: pass p resolves WIDTH[p] bits starting at bit SHIFT[p].
__device__ __forceinline__ unsigned digit_width(unsigned pass) { return pass == 2 ? 10u : 11u; }
__device__ __forceinline__ unsigned digit_shift(unsigned pass) {
  return pass == 0 ? 21u : (pass == 1 ? 10u : 0u);
}

}  // namespace

// Mirrors `DeviceParams` (kernels/src/sampler/mod.rs). `frac` comes first, so it sits at offset
// 0 and the twenty 4-byte fields need no padding: a size of 8 + 20 * 4 = 88 on both sides (both
// assert it) means the layouts agree.
struct SampleParams {
  double frac;  // fraction between the two order statistics
  int cond_row;
  int uncond_row;  // -1: no guidance
  float guidance, alpha_t, sigma_t, alpha_s, sigma_s, c_z, c_x, noise_std;
  unsigned update;     // UPDATE_*
  unsigned threshold;  // 1: dynamic thresholding with rank_lo, rank_hi, frac
  unsigned rank_lo, rank_hi;
  unsigned step;  // 1-based
  unsigned key_lo, key_hi, stream_lo, stream_hi;
  unsigned reserved;
};
static_assert(sizeof(SampleParams) == 88, "SampleParams must match DeviceParams (88 bytes)");

namespace {

__device__ __forceinline__ bool is_finite(float x) {
  return (__float_as_uint(x) & 0x7f800000u) != 0x7f800000u;
}

// |x| as a key that sorts like the value (sign bit cleared).
__device__ __forceinline__ unsigned magnitude_key(float x) { return __float_as_uint(x) & 0x7fffffffu; }

__device__ __forceinline__ unsigned hist_offset(unsigned pass, unsigned target) {
  return pass == 0 ? 0u : (1u + 2u * (pass - 1u) + target) * BINS;
}

// min(max(x, -limit), limit): candle's clamp (maximum, then minimum).
__device__ __forceinline__ float clamp_to(float x, float limit) { return fminf(fmaxf(x, -limit), limit); }

// ---- Philox4x32-10 and Box-Muller (kernels/src/sampler/philox.rs) ----

__device__ __forceinline__ uint4 philox4x32_10(uint4 ctr, uint2 key) {
#pragma unroll
  for (int r = 0; r < 10; ++r) {
    if (r > 0) {
      key.x += 0x9E3779B9u;
      key.y += 0xBB67AE85u;
    }
    const unsigned hi0 = __umulhi(0xD2511F53u, ctr.x), lo0 = 0xD2511F53u * ctr.x;
    const unsigned hi1 = __umulhi(0xCD9E8D57u, ctr.z), lo1 = 0xCD9E8D57u * ctr.z;
    ctr = make_uint4(hi1 ^ ctr.y ^ key.x, lo1, hi0 ^ ctr.w ^ key.y, lo0);
  }
  return ctr;
}

// Two normals from two words: u in [2^-24, 1 - 2^-24] and the angle are exact in f32.
__device__ __forceinline__ float2 box_muller(unsigned a, unsigned b) {
  const float u = __fmul_rn(__fadd_rn((float)(a >> 9), 0.5f), 1.0f / 8388608.0f);
  const float theta = __fmul_rn(__fmul_rn((float)(b >> 8), 1.0f / 16777216.0f), 6.28318530717958647692f);
  const float radius = sqrtf(__fmul_rn(-2.0f, logf(u)));
  float s, c;
  sincosf(theta, &s, &c);
  return make_float2(__fmul_rn(radius, c), __fmul_rn(radius, s));
}

// ---- shared-memory histograms ----

__device__ __forceinline__ void zero_shared(unsigned* sh, unsigned words) {
  for (unsigned i = threadIdx.x; i < words; i += blockDim.x) sh[i] = 0;
}

// Adds the block's non-zero bins to the sample's global histogram (after a barrier).
__device__ __forceinline__ void flush_shared(const unsigned* sh, unsigned* global, unsigned words) {
  for (unsigned i = threadIdx.x; i < words; i += blockDim.x) {
    const unsigned c = sh[i];
    if (c != 0) atomicAdd(&global[i], c);
  }
}

// Records this block's findings in the sample's flag: an earlier step's flag is carried over by
// block 0 alone; otherwise (step << 2) | kinds, ORed by every block that found something (all
// blocks of a launch share the step, so the word is the same whatever the block order).
__device__ __forceinline__ void record_flag(unsigned prev, unsigned step, int bad_v, int bad_x,
                                            unsigned* flag) {
  if (prev != 0) {
    if (blockIdx.x == 0) atomicOr(flag, prev);
    return;
  }
  const unsigned kinds = (bad_v ? FLAG_MODEL_OUTPUT : 0u) | (bad_x ? FLAG_X0_ESTIMATE : 0u);
  if (kinds != 0) atomicOr(flag, (step << 2) | kinds);
}

// Fixes one target's digit from a histogram of 2^width bins: lane l owns bins
// [l * per, (l + 1) * per); a warp scan of the lanes' sums finds the one lane whose range holds
// the rank, which walks its bins. Returns (new prefix, new rank) in every lane. If no lane holds
// the rank (impossible with consistent counts) the digit is 0 and the rank is kept.
__device__ uint2 select_digit(const unsigned* counts, unsigned width, unsigned prefix, unsigned rank) {
  const unsigned lane = threadIdx.x;
  const unsigned per = (1u << width) / WARP;
  const unsigned first = lane * per;
  unsigned local = 0;
#pragma unroll 4
  for (unsigned d = 0; d < per; ++d) local += counts[first + d];
  unsigned inclusive = local;
#pragma unroll
  for (unsigned offset = 1; offset < WARP; offset <<= 1) {
    const unsigned up = __shfl_up_sync(FULL_MASK, inclusive, offset);
    if (lane >= offset) inclusive += up;
  }
  const unsigned exclusive = inclusive - local;
  const bool mine = exclusive <= rank && rank < inclusive;
  unsigned digit = 0, below = 0;
  if (mine) {
    unsigned running = exclusive;
    for (unsigned d = 0; d < per; ++d) {
      const unsigned c = counts[first + d];
      if (rank < running + c) {
        digit = first + d;
        below = running;
        break;
      }
      running += c;
    }
  }
  const unsigned owners = __ballot_sync(FULL_MASK, mine);
  const int owner = owners != 0 ? __ffs(owners) - 1 : 0;
  digit = owners != 0 ? __shfl_sync(FULL_MASK, digit, owner) : 0u;
  below = owners != 0 ? __shfl_sync(FULL_MASK, below, owner) : 0u;
  return make_uint2((prefix << width) | digit, rank - below);
}

// s = max(1, lo + (hi - lo) frac) in f64 as threshold.rs computes it, then the clamp limit and
// factor: (1, 1) when s <= 1 (clamp to [-1, 1], x * 1 is exact), else ((float)s, (float)(1 / s)).
__device__ void threshold_limits(unsigned lo_key, unsigned hi_key, double frac, unsigned* st) {
  const double lo = (double)__uint_as_float(lo_key);
  const double hi = (double)__uint_as_float(hi_key);
  const double s = fmax(__dadd_rn(lo, __dmul_rn(__dsub_rn(hi, lo), frac)), 1.0);
  const bool scale = s > 1.0;
  st[ST_LIMIT] = __float_as_uint(scale ? __double2float_rn(s) : 1.0f);
  st[ST_FACTOR] = __float_as_uint(scale ? __double2float_rn(__ddiv_rn(1.0, s)) : 1.0f);
}

}  // namespace

// Phase 1: per element, guidance, x0 and eps; per block, the flag and (thresholded samples) the
// pass-0 histogram of |x0|'s top 11 bits.
extern "C" __global__ void __launch_bounds__(BLOCK) vc_sampler_predict(
    const float* __restrict__ z, const float* __restrict__ v_all,
    const SampleParams* __restrict__ params, const unsigned* __restrict__ flags_in,
    float* __restrict__ x0_out, float* __restrict__ eps_out, unsigned* __restrict__ flags_out,
    unsigned* __restrict__ hist, unsigned long long n) {
  __shared__ unsigned sh[BINS];
  const unsigned b = blockIdx.y;
  const SampleParams& p = params[b];
  const bool thresholding = p.threshold != 0;  // uniform in the block: barriers below are safe
  if (thresholding) zero_shared(sh, BINS);
  __syncthreads();

  const size_t row = (size_t)b * n;
  const float* cond = v_all + (size_t)p.cond_row * n;
  const float* uncond = p.uncond_row >= 0 ? v_all + (size_t)p.uncond_row * n : nullptr;
  const float w = p.guidance, alpha = p.alpha_t, sigma = p.sigma_t;
  bool bad_v = false, bad_x = false;
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += (size_t)gridDim.x * blockDim.x) {
    float v = cond[i];
    if (uncond != nullptr) {
      const float u = uncond[i];
      v = __fadd_rn(u, __fmul_rn(__fsub_rn(v, u), w));
    }
    const float zi = z[row + i];
    const float x0 = __fsub_rn(__fmul_rn(zi, alpha), __fmul_rn(v, sigma));
    const float eps = __fadd_rn(__fmul_rn(zi, sigma), __fmul_rn(v, alpha));
    bad_v |= !is_finite(v);
    if (thresholding) {
      bad_x |= !is_finite(x0);
      atomicAdd(&sh[magnitude_key(x0) >> 21], 1u);
    }
    x0_out[row + i] = x0;
    eps_out[row + i] = eps;
  }
  const int any_v = __syncthreads_or(bad_v);
  const int any_x = __syncthreads_or(bad_x);  // also the barrier before the flush
  if (threadIdx.x == 0) record_flag(flags_in[b], p.step, any_v, any_x, &flags_out[b]);
  if (thresholding) flush_shared(sh, hist + (size_t)b * HIST_WORDS, BINS);
}

// Phases 3 and 5: histograms of pass `pass` (1 or 2) over the keys matching each target's
// prefix; the upper target gets its own histogram only once its prefix differs.
extern "C" __global__ void __launch_bounds__(BLOCK) vc_sampler_radix_hist(
    const float* __restrict__ x0, const SampleParams* __restrict__ params,
    const unsigned* __restrict__ state, unsigned* __restrict__ hist, unsigned long long n,
    unsigned pass) {
  __shared__ unsigned sh[2 * BINS];
  const unsigned b = blockIdx.y;
  if (params[b].threshold == 0 || pass < 1 || pass > 2) return;  // whole block, before barriers
  const unsigned* st = state + (size_t)b * STATE_WORDS;
  const unsigned prefix_lo = st[ST_PREFIX_LO], prefix_hi = st[ST_PREFIX_HI];
  const bool split = prefix_lo != prefix_hi;
  const unsigned above = digit_shift(pass - 1), shift = digit_shift(pass);
  const unsigned mask = (1u << digit_width(pass)) - 1u;
  zero_shared(sh, 2 * BINS);
  __syncthreads();

  const size_t row = (size_t)b * n;
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += (size_t)gridDim.x * blockDim.x) {
    const unsigned key = magnitude_key(x0[row + i]);
    const unsigned high = key >> above, d = (key >> shift) & mask;
    if (high == prefix_lo) atomicAdd(&sh[d], 1u);
    if (split && high == prefix_hi) atomicAdd(&sh[BINS + d], 1u);
  }
  __syncthreads();
  unsigned* global = hist + (size_t)b * HIST_WORDS;
  flush_shared(sh, global + hist_offset(pass, 0), BINS);
  if (split) flush_shared(sh + BINS, global + hist_offset(pass, 1), BINS);
}

// Phases 2, 4 and 6: one warp per sample fixes both targets' digits of pass `pass`; after pass
// 2 the prefixes are the order statistics' keys and the clamp limit and factor are stored.
extern "C" __global__ void __launch_bounds__(WARP) vc_sampler_select(
    const SampleParams* __restrict__ params, const unsigned* __restrict__ hist,
    unsigned* __restrict__ state, unsigned pass) {
  const unsigned b = blockIdx.x;
  const SampleParams& p = params[b];
  if (p.threshold == 0 || pass > 2) return;  // whole warp
  unsigned* st = state + (size_t)b * STATE_WORDS;
  unsigned prefix_lo = 0, rank_lo = p.rank_lo, prefix_hi = 0, rank_hi = p.rank_hi;
  if (pass > 0) {
    prefix_lo = st[ST_PREFIX_LO];
    rank_lo = st[ST_RANK_LO];
    prefix_hi = st[ST_PREFIX_HI];
    rank_hi = st[ST_RANK_HI];
  }
  const bool split = pass > 0 && prefix_lo != prefix_hi;
  const unsigned* h = hist + (size_t)b * HIST_WORDS;
  const unsigned* counts_lo = h + hist_offset(pass, 0);
  const unsigned* counts_hi = split ? h + hist_offset(pass, 1) : counts_lo;
  const unsigned width = digit_width(pass);
  const uint2 lo = select_digit(counts_lo, width, prefix_lo, rank_lo);
  const uint2 hi = select_digit(counts_hi, width, prefix_hi, rank_hi);
  __syncwarp();  // every lane has read the old state before lane 0 overwrites it
  if (threadIdx.x != 0) return;
  st[ST_PREFIX_LO] = lo.x;
  st[ST_RANK_LO] = lo.y;
  st[ST_PREFIX_HI] = hi.x;
  st[ST_RANK_HI] = hi.y;
  if (pass == 2) threshold_limits(lo.x, hi.x, p.frac, st);
}

// Phase 7: each thread owns groups of 4 consecutive elements (one Philox draw): threshold x0,
// then the last-step clamp, DDIM from eps (parked in z_next), or the ancestral draw.
extern "C" __global__ void __launch_bounds__(BLOCK) vc_sampler_update(
    const float* __restrict__ z, const SampleParams* __restrict__ params,
    const unsigned* __restrict__ state, float* __restrict__ x0, float* __restrict__ z_next,
    unsigned long long n) {
  const unsigned b = blockIdx.y;
  const SampleParams& p = params[b];
  const bool thresholding = p.threshold != 0;
  const unsigned* st = state + (size_t)b * STATE_WORDS;
  const float limit = thresholding ? __uint_as_float(st[ST_LIMIT]) : 0.0f;
  const float factor = thresholding ? __uint_as_float(st[ST_FACTOR]) : 1.0f;
  const uint2 key = make_uint2(p.key_lo, p.key_hi);
  const size_t row = (size_t)b * n, groups = (n + 3) / 4;
  for (size_t g = (size_t)blockIdx.x * blockDim.x + threadIdx.x; g < groups;
       g += (size_t)gridDim.x * blockDim.x) {
    float noise[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    if (p.update == UPDATE_ANCESTRAL) {
      const uint4 r = philox4x32_10(make_uint4((unsigned)g, p.step, p.stream_lo, p.stream_hi), key);
      const float2 n01 = box_muller(r.x, r.y), n23 = box_muller(r.z, r.w);
      noise[0] = n01.x;
      noise[1] = n01.y;
      noise[2] = n23.x;
      noise[3] = n23.y;
    }
#pragma unroll
    for (unsigned k = 0; k < 4; ++k) {
      const size_t i = 4 * g + k;
      if (i >= n) continue;
      float x = x0[row + i];
      if (thresholding) x = __fmul_rn(clamp_to(x, limit), factor);
      float out;
      if (p.update == UPDATE_LAST) {
        out = clamp_to(x, 1.0f);
      } else if (p.update == UPDATE_DDIM) {
        out = __fadd_rn(__fmul_rn(x, p.alpha_s), __fmul_rn(z_next[row + i], p.sigma_s));
      } else {
        out = __fadd_rn(__fadd_rn(__fmul_rn(z[row + i], p.c_z), __fmul_rn(x, p.c_x)),
                        __fmul_rn(noise[k], p.noise_std));
      }
      x0[row + i] = x;
      z_next[row + i] = out;
    }
  }
}
