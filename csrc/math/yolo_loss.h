// The [yolo] training loss's box arithmetic, written once for the CUDA kernels (cuda/yolo_loss_kernels.cu) and
// any C++ caller: Darknet's box_iou, box_giou, box_diou, box_ciou and dx_box_iou (box.c), computed as the numpy
// reference pydarknet/train/yolo_loss.py computes them -- in double, with Python's min/max (a NaN second argument
// never wins) and IEEE division (x/0 is +-inf, 0/0 NaN, as that file's _div) -- plus the float32 IoU the ignore
// rule uses (numpy's np.minimum/np.maximum propagate NaN). Boxes are (x, y, w, h) with the centre at x, y.
#pragma once

#include <math.h>

#include "../core/common.h"

namespace pd {

struct YoloBox {
    double x, y, w, h;
};

constexpr double kYoloPi = 3.14159265358979323846;
constexpr double kCiouEps = 1e-6;

// Python's min(a, b) / max(a, b): the first argument unless the second compares smaller / larger.
PD_HD double py_min(double a, double b) { return b < a ? b : a; }
PD_HD double py_max(double a, double b) { return b > a ? b : a; }

PD_HD double yolo_overlap(double c1, double s1, double c2, double s2) {
    return py_min(c1 + s1 / 2, c2 + s2 / 2) - py_max(c1 - s1 / 2, c2 - s2 / 2);
}

PD_HD double yolo_intersection(const YoloBox& a, const YoloBox& b) {
    const double w = yolo_overlap(a.x, a.w, b.x, b.w), h = yolo_overlap(a.y, a.h, b.y, b.h);
    if (w < 0 || h < 0) return 0.0;
    return w * h;
}

PD_HD double yolo_box_iou(const YoloBox& a, const YoloBox& b) {
    const double inter = yolo_intersection(a, b);
    const double uni = a.w * a.h + b.w * b.h - inter;
    if (inter == 0 || uni == 0) return 0.0;
    return inter / uni;
}

// Width and height of the smallest box enclosing a and b.
PD_HD void yolo_enclosure(const YoloBox& a, const YoloBox& b, double& cw, double& ch) {
    const double top = py_min(a.y - a.h / 2, b.y - b.h / 2), bot = py_max(a.y + a.h / 2, b.y + b.h / 2);
    const double left = py_min(a.x - a.w / 2, b.x - b.w / 2), right = py_max(a.x + a.w / 2, b.x + b.w / 2);
    cw = right - left;
    ch = bot - top;
}

PD_HD double yolo_box_giou(const YoloBox& a, const YoloBox& b) {
    double cw, ch;
    yolo_enclosure(a, b, cw, ch);
    const double c = cw * ch, iou = yolo_box_iou(a, b);
    if (c == 0) return iou;
    const double uni = a.w * a.h + b.w * b.h - yolo_intersection(a, b);
    return iou - (c - uni) / c;
}

// IoU - (d^2/c^2)^0.6: Darknet's box_diou has the 0.6 power (its gradient does not).
PD_HD double yolo_box_diou(const YoloBox& a, const YoloBox& b) {
    double cw, ch;
    yolo_enclosure(a, b, cw, ch);
    const double c = cw * cw + ch * ch, iou = yolo_box_iou(a, b);
    if (c == 0) return iou;
    const double d = (a.x - b.x) * (a.x - b.x) + (a.y - b.y) * (a.y - b.y);
    const double ratio = d / c;
    return iou - (ratio >= 0 ? pow(ratio, 0.6) : NAN);
}

// v = 4/pi^2 (atan(w_t/h_t) - atan(w_p/h_p))^2; diff is the atan difference.
PD_HD double yolo_aspect_term(const YoloBox& truth, const YoloBox& pred, double& diff) {
    diff = atan(truth.w / truth.h) - atan(pred.w / pred.h);
    return 4.0 / (kYoloPi * kYoloPi) * diff * diff;
}

// CIoU of prediction a against truth b.
PD_HD double yolo_box_ciou(const YoloBox& a, const YoloBox& b) {
    double cw, ch;
    yolo_enclosure(a, b, cw, ch);
    const double c = cw * cw + ch * ch, iou = yolo_box_iou(a, b);
    if (c == 0) return iou;
    const double d = ((a.x - b.x) * (a.x - b.x) + (a.y - b.y) * (a.y - b.y)) / c;
    double diff;
    const double v = yolo_aspect_term(b, a, diff);
    const double alpha = v / (1 - iou + v + kCiouEps);
    return iou - (d + alpha * v);
}

// iou_loss / iou_thresh_kind codes, in the order of IOU_LOSSES in pydarknet/train/yolo_loss.py.
enum YoloIouKind : int { YOLO_MSE = 0, YOLO_IOU = 1, YOLO_GIOU = 2, YOLO_DIOU = 3, YOLO_CIOU = 4 };

PD_HD double yolo_box_metric(int kind, const YoloBox& a, const YoloBox& b) {
    if (kind == YOLO_GIOU) return yolo_box_giou(a, b);
    if (kind == YOLO_DIOU) return yolo_box_diou(a, b);
    if (kind == YOLO_CIOU) return yolo_box_ciou(a, b);
    return yolo_box_iou(a, b);
}

// Darknet's dx_box_iou: the ascent direction of IoU/GIoU/DIoU/CIoU for (x, y, w, h) of `pred`, with its
// conventions (see iou_delta in pydarknet/train/yolo_loss.py). Edges are indexed t, b, l, r = 0..3.
PD_HD void yolo_iou_delta(const YoloBox& pred, const YoloBox& truth, int kind, double out[4]) {
    const double px = pred.x, py = pred.y, pw = pred.w, ph = pred.h;
    const double tx = truth.x, ty = truth.y, tw = truth.w, th = truth.h;
    const double raw_top = py - ph / 2, raw_bot = py + ph / 2, raw_left = px - pw / 2, raw_right = px + pw / 2;
    const double p_t = py_min(raw_top, raw_bot), p_b = py_max(raw_top, raw_bot);
    const double p_l = py_min(raw_left, raw_right), p_r = py_max(raw_left, raw_right);
    const double g_t = ty - th / 2, g_b = ty + th / 2, g_l = tx - tw / 2, g_r = tx + tw / 2;

    const double inter_h = py_min(p_b, g_b) - py_max(p_t, g_t);
    const double inter_w = py_min(p_r, g_r) - py_max(p_l, g_l);
    const double inter = inter_w * inter_h;  // signed, as Darknet
    const double area_p = (p_b - p_t) * (p_r - p_l), area_g = (g_b - g_t) * (g_r - g_l);
    const double uni = area_p + area_g - inter;
    const double dist2 = (px - tx) * (px - tx) + (py - ty) * (py - ty);
    const double hull_w = py_max(p_r, g_r) - py_min(p_l, g_l), hull_h = py_max(p_b, g_b) - py_min(p_t, g_t);
    const double hull = hull_w * hull_h;

    const double d_area[4] = {-(p_r - p_l), p_r - p_l, -(p_b - p_t), p_b - p_t};
    const double d_inter[4] = {p_t > g_t ? -inter_w : 0.0, p_b < g_b ? inter_w : 0.0, p_l > g_l ? -inter_h : 0.0,
                               p_r < g_r ? inter_h : 0.0};
    const double d_hull[4] = {p_t < g_t ? -hull_w : 0.0, p_b > g_b ? hull_w : 0.0, p_l < g_l ? -hull_h : 0.0,
                              p_r > g_r ? hull_h : 0.0};
    double d_union[4], grad[4] = {0.0, 0.0, 0.0, 0.0};
    for (int e = 0; e < 4; ++e) d_union[e] = d_area[e] - d_inter[e];
    if (uni > 0)
        for (int e = 0; e < 4; ++e) grad[e] = (uni * d_inter[e] - inter * d_union[e]) / (uni * uni);
    // an inverted box (negative size) takes the gradient of the edge that really is its top/left
    if (!(raw_top < raw_bot)) grad[0] = grad[1];
    if (!(raw_left < raw_right)) grad[2] = grad[3];

    if (kind == YOLO_GIOU) {
        double hull_term[4];
        for (int e = 0; e < 4; ++e) hull_term[e] = (hull * d_union[e] - uni * d_hull[e]) / (hull * hull);
        if (hull > 0)
            for (int e = 0; e < 4; ++e) grad[e] += hull_term[e];
        if (inter_w <= 0 || inter_h <= 0)
            for (int e = 0; e < 4; ++e) grad[e] = hull_term[e];
    }

    double dx = grad[2] + grad[3], dy = grad[0] + grad[1], dw = grad[3] - grad[2], dh = grad[1] - grad[0];

    if (kind == YOLO_DIOU || kind == YOLO_CIOU) {
        // squared diagonal of the enclosing box, from the prediction's unsorted edges
        const double c_top = py_min(py - ph / 2, g_t), c_bot = py_max(py + ph / 2, g_b);
        const double c_left = py_min(px - pw / 2, g_l), c_right = py_max(px + pw / 2, g_r);
        const double cw = c_right - c_left, ch = c_bot - c_top;
        const double c2 = cw * cw + ch * ch;
        const double dcw_dx = (p_r > g_r ? 1.0 : 0.0) - (p_l < g_l ? 1.0 : 0.0);
        const double dcw_dw = (p_r > g_r ? 0.5 : 0.0) + (p_l < g_l ? 0.5 : 0.0);
        const double dch_dy = (p_b > g_b ? 1.0 : 0.0) - (p_t < g_t ? 1.0 : 0.0);
        const double dch_dh = (p_b > g_b ? 0.5 : 0.0) + (p_t < g_t ? 0.5 : 0.0);
        const double c4 = c2 * c2;
        const double term_x = (2 * (tx - px) * c2 - 2 * cw * dcw_dx * dist2) / c4;
        const double term_y = (2 * (ty - py) * c2 - 2 * ch * dch_dy * dist2) / c4;
        double term_w = (2 * cw * dcw_dw * dist2) / c4;
        double term_h = (2 * ch * dch_dh * dist2) / c4;
        if (kind == YOLO_CIOU) {
            double diff;
            const double v = yolo_aspect_term(truth, pred, diff);
            const double alpha = v / (1 - inter / uni + v + kCiouEps);
            const double k = 8.0 / (kYoloPi * kYoloPi) * diff;
            term_w += alpha * k * ph;
            term_h += alpha * -k * pw;
        }
        if (c2 > 0) {
            dx += term_x;
            dy += term_y;
            dw += term_w;
            dh += term_h;
        }
        if (inter_w <= 0 || inter_h <= 0) {
            dx = term_x;
            dy = term_y;
            dw = term_w;
            dh = term_h;
        }
    }
    out[0] = dx;
    out[1] = dy;
    out[2] = dw;
    out[3] = dh;
}

// numpy's np.minimum / np.maximum on float32: NaN if either is NaN.
PD_HD float np_minimum(float a, float b) { return (a != a || b != b) ? NAN : (b < a ? b : a); }
PD_HD float np_maximum(float a, float b) { return (a != a || b != b) ? NAN : (b > a ? b : a); }

// box_iou in float32 as the ignore rule computes it for every prediction against every truth (_iou_matrix):
// 0 when the intersection or union is 0, and a NaN reads as 0.
PD_HD float yolo_iou_f32(float px, float py, float pw, float ph, float tx, float ty, float tw, float th) {
    const float half = 0.5f;
    const float ow = np_minimum(px + pw * half, tx + tw * half) - np_maximum(px - pw * half, tx - tw * half);
    const float oh = np_minimum(py + ph * half, ty + th * half) - np_maximum(py - ph * half, ty - th * half);
    const float inter = (ow < 0.f || oh < 0.f) ? 0.f : ow * oh;
    const float uni = pw * ph + tw * th - inter;
    const float iou = inter / uni;
    return (inter != 0.f && uni != 0.f && iou > 0.f) ? iou : 0.f;
}

}  // namespace pd
