// The [yolo] training loss on the device: the same deltas, loss and statistics as the numpy reference
// (pydarknet/train/yolo_loss.py, which documents Darknet's rules), computed from the head's training output
// without copying it to the host. The arithmetic follows that file operation by operation: float32 where it
// computes on float32 arrays (the no-object pass, the stored deltas), double where it computes on Python floats
// (the positives' box and class deltas); the box formulas are csrc/math/yolo_loss.h.
//
// Kernels, in order on one stream:
//   1. anchor_kernel, one thread per (image, anchor, cell): no-object delta, the ignore rule, truth_thresh.
//   2. positive_kernel, one thread per image walking its truths in order (Darknet's order-dependent rules: a
//      later truth on the same anchor adds to its box delta and rewrites only its own class entry).
//   3. average_kernel (iou_thresh < 1): averages_yolo_deltas.
//   4. sums_kernel: per-chunk double sums of delta^2 and objectness in a fixed order; the host adds the chunks
//      and the per-image statistics in order, so the result does not depend on scheduling (no atomics).
//   5. grad_kernel: grad = -delta_normalizer * delta, in place.
#include <cfloat>
#include <vector>

#include "cuda_layer.cuh"
#include "math/yolo_loss.h"
#include "yolo_loss.cuh"

namespace pd {
namespace {

constexpr int kSumChunk = 256;  // anchors per partial sum
constexpr float kClassMatchThresh = 0.25f;
constexpr double kFocalAlpha = 0.5;

struct LossParams {
    int batch, anchors_here, classes, h, w, max_truths;
    int net_w, net_h;
    const int* mask;         // anchors_here entries
    const double* anchors;   // 2 * num
    const float* mult;       // classes entries, or null
    const double* truths;    // batch * max_truths * 4
    const int* truth_class;  // batch * max_truths
    const int* counts;       // batch
    double ignore_thresh, truth_thresh, iou_thresh;
    double iou_normalizer, obj_normalizer, cls_normalizer, max_delta, label_smooth_eps;
    int num, iou_loss, iou_thresh_kind;
    bool clip_max_delta, focal_loss, new_coords, objectness_smooth;
};

// Statistics of one image's positives (Darknet's running sums), or of one anchor's truth_thresh pass.
struct ImageStats {
    double tot_iou, tot_iou_loss, tot_giou_loss, avg_cat, avg_obj;
    long long count, recall50, recall75, total_bbox, rewritten_bbox;
};

// An objectness that is not finite reads as 0 in an image with truths (the numpy reference's rule).
__device__ __forceinline__ float read_obj(float v, bool has_truths) { return has_truths && !isfinite(v) ? 0.f : v; }

__device__ __forceinline__ YoloBox truth_box(const LossParams& p, int b, int t) {
    const double* v = p.truths + ((size_t)b * p.max_truths + t) * 4;
    return YoloBox{v[0], v[1], v[2], v[3]};
}

// delta_yolo_box at one anchor (accumulating into d[0..3], stride `plane`); returns iou and giou. The sums are
// taken in double and rounded once, as numpy adds a float64 step to a float32 delta.
__device__ void box_delta(const LossParams& p, float* d, const float* o, size_t plane, int i, int j, int anchor,
                          const YoloBox& truth, double multiplier, ImageStats& s, double& iou, double& giou) {
    if (d[0] != 0.f || d[plane] != 0.f || d[2 * plane] != 0.f || d[3 * plane] != 0.f) s.rewritten_bbox += 1;
    s.total_bbox += 1;
    const double raw[4] = {(double)o[0], (double)o[plane], (double)o[2 * plane], (double)o[3 * plane]};
    const double aw = p.anchors[2 * anchor], ah = p.anchors[2 * anchor + 1];
    double pw, ph;
    if (p.new_coords) {
        pw = raw[2] * raw[2] * 4 * aw / p.net_w;
        ph = raw[3] * raw[3] * 4 * ah / p.net_h;
    } else {
        pw = exp(raw[2]) * aw / p.net_w;
        ph = exp(raw[3]) * ah / p.net_h;
    }
    YoloBox pred{(i + raw[0]) / p.w, (j + raw[1]) / p.h, pw, ph};
    iou = yolo_box_iou(pred, truth);
    giou = yolo_box_giou(pred, truth);
    if (pred.w == 0) pred.w = 1.0;  // keeps dx_box_iou finite, as Darknet does
    if (pred.h == 0) pred.h = 1.0;
    const double norm = p.iou_normalizer * multiplier;
    if (p.iou_loss == YOLO_MSE) {
        const double scale = 2 - truth.w * truth.h;
        double target[4] = {truth.x * p.w - i, truth.y * p.h - j, 0.0, 0.0};
        if (p.new_coords) {
            target[2] = sqrt(truth.w * p.net_w / (4 * aw));
            target[3] = sqrt(truth.h * p.net_h / (4 * ah));
        } else {
            target[2] = log(truth.w * p.net_w / aw);
            target[3] = log(truth.h * p.net_h / ah);
        }
        for (int k = 0; k < 4; ++k) d[k * plane] = (float)((double)d[k * plane] + scale * (target[k] - raw[k]) * norm);
    } else {
        double step[4];
        yolo_iou_delta(pred, truth, p.iou_loss, step);
        if (!p.new_coords) {
            step[2] *= exp(raw[2]);
            step[3] *= exp(raw[3]);
        }
        for (int k = 0; k < 4; ++k) {
            double v = step[k] * norm;
            if (!isfinite(v)) v = 0.0;
            if (p.clip_max_delta) v = v > p.max_delta ? p.max_delta : (v < -p.max_delta ? -p.max_delta : v);
            d[k * plane] = (float)((double)d[k * plane] + v);
        }
    }
}

// delta_yolo_class at one anchor: d and o point at the first class plane.
__device__ void class_delta(const LossParams& p, float* d, const float* o, size_t plane, int class_id, bool count_stats,
                            ImageStats& s) {
    const double eps = p.label_smooth_eps;
    const double p_own = (double)o[class_id * plane];
    if (count_stats) s.avg_cat += p_own;
    float& own = d[class_id * plane];
    if (own != 0.f) {
        // a second truth on this anchor: only its own class entry is rewritten (without cls_normalizer)
        const double y = eps != 0.0 ? 1.0 * (1 - eps) + 0.5 * eps : 1.0;
        const double r = y - p_own;
        if (isfinite(r)) own = (float)r;
        if (p.mult) own = own * p.mult[class_id];
        return;
    }
    if (p.focal_loss) {
        const double pt = (double)(o[class_id * plane] + 1e-15f);
        const double grad = pt > 0 ? -(1 - pt) * (2 * pt * log(pt) + pt - 1) : (double)NAN;
        for (int k = 0; k < p.classes; ++k)
            d[k * plane] = (float)(((k == class_id ? 1.0 : 0.0) - (double)o[k * plane]) * (kFocalAlpha * grad));
        return;
    }
    for (int k = 0; k < p.classes; ++k) {
        const double onehot = k == class_id ? 1.0 : 0.0;
        const double target = eps != 0.0 ? onehot * (1 - eps) + 0.5 * eps : onehot;
        const double r = target - (double)o[k * plane];
        if (isfinite(r)) d[k * plane] = (float)r;
    }
    if (p.mult) own = own * (float)((double)p.mult[class_id] * p.cls_normalizer);
}

// Box, objectness and class deltas of one truth at one anchor, with Darknet's statistics.
__device__ void positive(const LossParams& p, float* d, const float* o, size_t plane, int i, int j, int anchor,
                         const YoloBox& truth, int class_id, ImageStats& s) {
    const double multiplier = p.mult ? (double)p.mult[class_id] : 1.0;
    double iou, giou;
    box_delta(p, d, o, plane, i, j, anchor, truth, multiplier, s, iou, giou);
    s.tot_iou += iou;
    s.tot_iou_loss += 1 - iou;
    s.tot_giou_loss += 1 - giou;
    const double obj = (double)read_obj(o[4 * plane], true);
    s.avg_obj += obj;
    const double target = multiplier * p.obj_normalizer * (1 - obj);
    if (!p.objectness_smooth || d[4 * plane] == 0.f) d[4 * plane] = (float)target;
    class_delta(p, d + 5 * plane, o + 5 * plane, plane, class_id, true, s);
    s.count += 1;
    if (iou > 0.5) s.recall50 += 1;
    if (iou > 0.75) s.recall75 += 1;
}

// 1. No-object delta, ignore rule and truth_thresh positives of one (image, anchor, cell); tt_bbox counts the
// box deltas the truth_thresh rule writes.
__global__ void anchor_kernel(LossParams p, const float* out, float* delta, int* tt_bbox) {
    const size_t plane = (size_t)p.h * p.w, entries = 5 + (size_t)p.classes;
    const size_t total = (size_t)p.batch * p.anchors_here * plane;
    for (size_t id = blockIdx.x * (size_t)blockDim.x + threadIdx.x; id < total; id += (size_t)gridDim.x * blockDim.x) {
        const size_t cell = id % plane, ba = id / plane;
        const int a = (int)(ba % p.anchors_here), b = (int)(ba / p.anchors_here);
        const int i = (int)(cell % p.w), j = (int)(cell / p.w);
        const float* o = out + ba * entries * plane + cell;
        float* d = delta + ba * entries * plane + cell;
        const int n_truths = p.counts[b];
        const float obj = read_obj(o[4 * plane], n_truths > 0);
        const float obj_norm = (float)p.obj_normalizer;
        d[4 * plane] = obj_norm * (0.f - obj);
        tt_bbox[id] = 0;
        if (n_truths == 0) continue;

        // get_yolo_box in float32 (_pred_boxes)
        const int anchor = p.mask[a];
        const float aw = (float)p.anchors[2 * anchor], ah = (float)p.anchors[2 * anchor + 1];
        const float px = ((float)i + o[0]) / (float)p.w, py = ((float)j + o[plane]) / (float)p.h;
        float pw, ph;
        if (p.new_coords) {
            pw = o[2 * plane] * o[2 * plane] * 4.f * aw / (float)p.net_w;
            ph = o[3 * plane] * o[3 * plane] * 4.f * ah / (float)p.net_h;
        } else {
            pw = expf(o[2 * plane]) * aw / (float)p.net_w;
            ph = expf(o[3 * plane]) * ah / (float)p.net_h;
        }
        bool class_match = false;
        for (int k = 0; k < p.classes; ++k)
            if (o[(5 + k) * plane] > kClassMatchThresh) class_match = true;
        float best_iou = -1.f;
        int best_t = 0;
        for (int t = 0; t < n_truths; ++t) {
            const YoloBox tb = truth_box(p, b, t);
            const float v = yolo_iou_f32(px, py, pw, ph, (float)tb.x, (float)tb.y, (float)tb.w, (float)tb.h);
            if (v > best_iou) {
                best_iou = v;
                best_t = t;
            }
        }
        const float best_match = class_match ? best_iou : 0.f;
        if (best_match > (float)p.ignore_thresh) {
            if (p.objectness_smooth)
                d[4 * plane] = np_maximum(d[4 * plane], obj_norm * (best_match - obj));
            else
                d[4 * plane] = 0.f;
        }
        if (best_iou > (float)p.truth_thresh) {
            // trained as a positive of the truth it overlaps most
            const int class_id = p.truth_class[(size_t)b * p.max_truths + best_t];
            const double iou_sq = (double)best_iou * (double)best_iou;
            d[4 * plane] = (float)(p.obj_normalizer * ((p.objectness_smooth ? iou_sq : 1.0) - (double)obj));
            ImageStats s{};
            class_delta(p, d + 5 * plane, o + 5 * plane, plane, class_id, false, s);
            const double multiplier = p.mult ? (double)p.mult[class_id] : 1.0;
            if (p.objectness_smooth)
                d[(5 + class_id) * plane] = (float)(multiplier * (iou_sq - (double)o[(5 + class_id) * plane]));
            double iou, giou;
            box_delta(p, d, o, plane, i, j, anchor, truth_box(p, b, best_t), multiplier, s, iou, giou);
            tt_bbox[id] = (int)s.total_bbox;
        }
    }
}

// 2. Positives of one image, truth by truth in order.
__global__ void positive_kernel(LossParams p, const float* out, float* delta, ImageStats* stats) {
    const size_t plane = (size_t)p.h * p.w, entries = 5 + (size_t)p.classes;
    for (int b = blockIdx.x * blockDim.x + threadIdx.x; b < p.batch; b += gridDim.x * blockDim.x) {
        ImageStats s{};
        for (int t = 0; t < p.counts[b]; ++t) {
            const YoloBox truth = truth_box(p, b, t);
            const int class_id = p.truth_class[(size_t)b * p.max_truths + t];
            // cell: float32 product truncated; x == 1 stays in the last cell
            int i = (int)((float)truth.x * (float)p.w), j = (int)((float)truth.y * (float)p.h);
            if (i > p.w - 1) i = p.w - 1;
            if (j > p.h - 1) j = p.h - 1;
            const YoloBox shape{0.0, 0.0, truth.w, truth.h};
            int best_n = 0;
            double best = 0.0;
            for (int n = 0; n < p.num; ++n) {
                const double v =
                    yolo_box_iou(YoloBox{0.0, 0.0, p.anchors[2 * n] / p.net_w, p.anchors[2 * n + 1] / p.net_h}, shape);
                if (v > best) {
                    best_n = n;
                    best = v;
                }
            }
            const size_t at = (size_t)j * p.w + i;
            int best_a = -1;
            for (int m = 0; m < p.anchors_here; ++m)
                if (p.mask[m] == best_n) {
                    best_a = m;
                    break;
                }
            if (best_a >= 0) {
                const size_t base = ((size_t)b * p.anchors_here + best_a) * entries * plane + at;
                positive(p, delta + base, out + base, plane, i, j, best_n, truth, class_id, s);
            }
            if (p.iou_thresh < 1.0) {
                for (int n = 0; n < p.num; ++n) {
                    if (n == best_n) continue;
                    int a = -1;
                    for (int m = 0; m < p.anchors_here; ++m)
                        if (p.mask[m] == n) {
                            a = m;
                            break;
                        }
                    if (a < 0) continue;
                    const YoloBox anchor_box{0.0, 0.0, p.anchors[2 * n] / p.net_w, p.anchors[2 * n + 1] / p.net_h};
                    if (yolo_box_metric(p.iou_thresh_kind, anchor_box, shape) > p.iou_thresh) {
                        const size_t base = ((size_t)b * p.anchors_here + a) * entries * plane + at;
                        positive(p, delta + base, out + base, plane, i, j, n, truth, class_id, s);
                    }
                }
            }
        }
        stats[b] = s;
    }
}

// 3. averages_yolo_deltas: an anchor's box delta divided by the number of classes with a positive delta there.
__global__ void average_kernel(LossParams p, float* delta) {
    const size_t plane = (size_t)p.h * p.w, entries = 5 + (size_t)p.classes;
    const size_t total = (size_t)p.batch * p.anchors_here * plane;
    for (size_t id = blockIdx.x * (size_t)blockDim.x + threadIdx.x; id < total; id += (size_t)gridDim.x * blockDim.x) {
        const size_t cell = id % plane, ba = id / plane;
        float* d = delta + ba * entries * plane + cell;
        int classes_here = 0;
        for (int k = 0; k < p.classes; ++k)
            if (d[(5 + k) * plane] > 0.f) ++classes_here;
        if (d[4 * plane] != 0.f && classes_here > 0)
            for (int k = 0; k < 4; ++k) d[k * plane] = d[k * plane] / (float)classes_here;
    }
}

// 4. Sums of chunk c (kSumChunk anchors, in order): [sum delta^2, sum box delta^2, sum objectness], and the
// truth_thresh box deltas.
__global__ void sums_kernel(LossParams p, const float* out, const float* delta, const int* tt_bbox, double* sums,
                            long long* bbox, size_t chunks) {
    const size_t plane = (size_t)p.h * p.w, entries = 5 + (size_t)p.classes;
    const size_t total = (size_t)p.batch * p.anchors_here * plane;
    for (size_t c = blockIdx.x * (size_t)blockDim.x + threadIdx.x; c < chunks; c += (size_t)gridDim.x * blockDim.x) {
        double sum_sq = 0, box_sq = 0, obj_sum = 0;
        long long tt = 0;
        const size_t stop = (c + 1) * kSumChunk < total ? (c + 1) * kSumChunk : total;
        for (size_t id = c * kSumChunk; id < stop; ++id) {
            const size_t cell = id % plane, ba = id / plane;
            const int b = (int)(ba / p.anchors_here);
            const float* d = delta + ba * entries * plane + cell;
            for (size_t e = 0; e < entries; ++e) {
                const double v = (double)d[e * plane];
                sum_sq += v * v;
                if (e < 4) box_sq += v * v;
            }
            obj_sum += (double)read_obj(out[ba * entries * plane + cell + 4 * plane], p.counts[b] > 0);
            tt += tt_bbox[id];
        }
        sums[3 * c] = sum_sq;
        sums[3 * c + 1] = box_sq;
        sums[3 * c + 2] = obj_sum;
        bbox[c] = tt;
    }
}

// 5. The gradient backward reads: -delta_normalizer * delta (float32).
__global__ void grad_kernel(float* delta, size_t n, float scale) {
    for (size_t k = blockIdx.x * (size_t)blockDim.x + threadIdx.x; k < n; k += (size_t)gridDim.x * blockDim.x)
        delta[k] = delta[k] * scale;
}

}  // namespace

YoloLossSums launch_yolo_loss(const YoloLossSetup& setup, const float* output, float* grad, int batch, int h, int w,
                              const double* truths, const int* classes, const int* counts, int max_truths,
                              cudaStream_t stream, YoloLossScratch& scratch) {
    const int anchors_here = (int)setup.mask.size(), num = (int)setup.anchors.size() / 2;
    const size_t plane = (size_t)h * w, entries = 5 + (size_t)setup.classes;
    const size_t anchor_count = (size_t)batch * anchors_here * plane, values = anchor_count * entries;
    const int slots = max_truths > 0 ? max_truths : 1;

    // The buffers persist between calls (scratch); the uploads are enqueued and the synchronisation before the sums
    // are read covers them (their host sources live until this function returns).
    long long& allocations = scratch.allocations;
    auto upload = [&](auto& buffer, const auto* host, size_t count) {
        auto* device = buffer.at_least(count, allocations);
        if (count) PD_CUDA_CHECK(cudaMemcpyAsync(device, host, count * sizeof(*host), cudaMemcpyHostToDevice, stream));
        return device;
    };
    const int* d_mask = upload(scratch.mask, setup.mask.data(), setup.mask.size());
    const double* d_anchors = upload(scratch.anchors, setup.anchors.data(), setup.anchors.size());
    const float* d_mult = setup.class_multipliers.empty()
                              ? nullptr
                              : upload(scratch.mult, setup.class_multipliers.data(), setup.class_multipliers.size());
    const double no_truths[4] = {0.0, 0.0, 0.0, 0.0};
    const int no_classes[1] = {0};
    const double* d_truths = nullptr;
    const int* d_classes = nullptr;
    if (max_truths > 0) {
        d_truths = upload(scratch.truths, truths, (size_t)batch * max_truths * 4);
        d_classes = upload(scratch.classes, classes, (size_t)batch * max_truths);
    } else {  // no image has truths: counts are all 0 and nothing reads these
        d_truths = upload(scratch.truths, no_truths, 4);
        d_classes = upload(scratch.classes, no_classes, 1);
    }
    const int* d_counts = upload(scratch.counts, counts, batch);
    int* d_tt = scratch.tt.at_least(anchor_count, allocations);
    ImageStats* d_stats =
        reinterpret_cast<ImageStats*>(scratch.stats.at_least(batch * sizeof(ImageStats), allocations));
    const size_t chunks = (anchor_count + kSumChunk - 1) / kSumChunk;
    double* d_sums = scratch.sums.at_least(3 * chunks, allocations);
    long long* d_bbox = scratch.bbox.at_least(chunks, allocations);

    LossParams p{};
    p.batch = batch;
    p.anchors_here = anchors_here;
    p.classes = setup.classes;
    p.h = h;
    p.w = w;
    p.max_truths = slots;
    p.net_w = setup.net_w;
    p.net_h = setup.net_h;
    p.mask = d_mask;
    p.anchors = d_anchors;
    p.mult = d_mult;
    p.truths = d_truths;
    p.truth_class = d_classes;
    p.counts = d_counts;
    p.ignore_thresh = setup.ignore_thresh;
    p.truth_thresh = setup.truth_thresh;
    p.iou_thresh = setup.iou_thresh;
    p.iou_normalizer = setup.iou_normalizer;
    p.obj_normalizer = setup.obj_normalizer;
    p.cls_normalizer = setup.cls_normalizer;
    p.max_delta = setup.max_delta;
    p.label_smooth_eps = setup.label_smooth_eps;
    p.num = num;
    p.iou_loss = setup.iou_loss;
    p.iou_thresh_kind = setup.iou_thresh_kind;
    p.clip_max_delta = setup.clip_max_delta;
    p.focal_loss = setup.focal_loss;
    p.new_coords = setup.new_coords;
    p.objectness_smooth = setup.objectness_smooth;

    PD_CUDA_CHECK(cudaMemsetAsync(grad, 0, values * sizeof(float), stream));
    PD_LAUNCH(grid_for(anchor_count, 256), 256, 0, stream, anchor_kernel)(p, output, grad, d_tt);
    PD_CUDA_CHECK_LAUNCH();
    PD_LAUNCH(grid_for(batch, 64), 64, 0, stream, positive_kernel)(p, output, grad, d_stats);
    PD_CUDA_CHECK_LAUNCH();
    if (setup.iou_thresh < 1.0) {
        PD_LAUNCH(grid_for(anchor_count, 256), 256, 0, stream, average_kernel)(p, grad);
        PD_CUDA_CHECK_LAUNCH();
    }
    PD_LAUNCH(grid_for(chunks, 128), 128, 0, stream, sums_kernel)(p, output, grad, d_tt, d_sums, d_bbox, chunks);
    PD_CUDA_CHECK_LAUNCH();
    PD_LAUNCH(grid_for(values, 256), 256, 0, stream, grad_kernel)(grad, values, (float)-setup.delta_normalizer);
    PD_CUDA_CHECK_LAUNCH();

    std::vector<double> sums(3 * chunks);
    std::vector<long long> bbox(chunks);
    std::vector<ImageStats> stats(batch);
    PD_CUDA_CHECK(cudaMemcpyAsync(sums.data(), d_sums, sums.size() * sizeof(double), cudaMemcpyDeviceToHost, stream));
    PD_CUDA_CHECK(
        cudaMemcpyAsync(bbox.data(), d_bbox, bbox.size() * sizeof(long long), cudaMemcpyDeviceToHost, stream));
    PD_CUDA_CHECK(
        cudaMemcpyAsync(stats.data(), d_stats, stats.size() * sizeof(ImageStats), cudaMemcpyDeviceToHost, stream));
    PD_CUDA_CHECK(cudaStreamSynchronize(stream));

    // fixed order: chunks, then images
    YoloLossSums r;
    for (size_t c = 0; c < chunks; ++c) {
        r.sum_sq += sums[3 * c];
        r.box_sq += sums[3 * c + 1];
        r.obj_sum += sums[3 * c + 2];
        r.total_bbox += bbox[c];
    }
    for (const ImageStats& s : stats) {
        r.tot_iou += s.tot_iou;
        r.tot_iou_loss += s.tot_iou_loss;
        r.tot_giou_loss += s.tot_giou_loss;
        r.avg_cat += s.avg_cat;
        r.avg_obj += s.avg_obj;
        r.count += s.count;
        r.recall50 += s.recall50;
        r.recall75 += s.recall75;
        r.total_bbox += s.total_bbox;
        r.rewritten_bbox += s.rewritten_bbox;
    }
    return r;
}

}  // namespace pd
