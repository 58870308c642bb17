// Activation memory planning (see plan.h).
#include "plan.h"

#include <algorithm>
#include <numeric>

#include "../math/activations.h"

namespace pd {

BufferAssignment assign_buffers(const std::vector<Lifetime>& lifetimes) {
    std::vector<int> order(lifetimes.size());
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return lifetimes[a].start < lifetimes[b].start; });
    BufferAssignment result;
    result.buffer_of.assign(lifetimes.size(), -1);
    std::vector<int> occupant;  // buffer -> the lifetime it holds now
    for (int id : order) {
        const Lifetime& life = lifetimes[id];
        int best = -1;
        for (int b = 0; b < (int)result.capacity.size(); ++b) {
            if (lifetimes[occupant[b]].end >= life.start) continue;
            if (best < 0) {
                best = b;
                continue;
            }
            const bool fits = result.capacity[b] >= life.size, best_fits = result.capacity[best] >= life.size;
            if ((fits && (!best_fits || result.capacity[b] < result.capacity[best])) ||
                (!fits && !best_fits && result.capacity[b] > result.capacity[best]))
                best = b;
        }
        if (best < 0) {
            best = (int)result.capacity.size();
            result.capacity.push_back(0);
            occupant.push_back(id);
        }
        result.capacity[best] = std::max(result.capacity[best], life.size);
        occupant[best] = id;
        result.buffer_of[id] = best;
    }
    return result;
}

std::vector<int> last_reads(const std::vector<const LayerSpec*>& specs, const std::vector<int>& keep, bool keep_all) {
    const int n = (int)specs.size();
    std::vector<int> last(n, -1);
    for (int i = 0; i < n; ++i) {
        if (i + 1 < n) last[i] = i + 1;
        for (int ref : specs[i]->inputs) last[ref] = std::max(last[ref], i);
    }
    for (int k : keep)
        if (k >= 0 && k < n) last[k] = kForever;
    if (keep_all) std::fill(last.begin(), last.end(), kForever);
    return last;
}

namespace {

bool is_identity(const LayerSpec& s) {
    return s.kind == LayerKind::Dropout || s.kind == LayerKind::Cost || s.kind == LayerKind::Empty;
}

// A [shortcut] at i + 1 can be folded into the convolution at i when it only adds one same-sized layer without
// weights, both activations are element-wise, and nothing but the shortcut reads the convolution's output.
bool can_fold_shortcut(const std::vector<const LayerSpec*>& specs, const std::vector<int>& last, int i) {
    const LayerSpec& conv = *specs[i];
    const LayerSpec& shortcut = *specs[i + 1];
    if (conv.kind != LayerKind::Convolutional || shortcut.kind != LayerKind::Shortcut) return false;
    if (shortcut.inputs.size() != 1 || shortcut.params<ShortcutParams>().weighted) return false;
    const int from = shortcut.inputs[0];
    if (from == i || specs[from]->out.size() != conv.out.size()) return false;
    if (is_channel_activation(conv.params<ConvolutionalParams>().activation) ||
        is_channel_activation(shortcut.params<ShortcutParams>().activation))
        return false;
    return last[i] == i + 1;
}

}  // namespace

ViewPlan plan_views(const std::vector<const LayerSpec*>& specs, const std::vector<int>& keep, bool keep_all,
                    const PlanOptions& options) {
    const int n = (int)specs.size();
    const std::vector<int> last = last_reads(specs, keep, keep_all);
    ViewPlan plan;
    plan.runs.assign(n, 1);
    plan.residual.assign(n, -1);
    // A layer either owns a storage (parent -1) or lives at offset_in_parent inside its parent's output: an
    // earlier layer for views (identity, sliced or single routes), a later one for the inputs of a route that
    // is written in place, the shortcut for a convolution with a folded shortcut. Linking only ever joins two
    // separate trees, so the parents form a forest and every chain ends at a storage owner.
    std::vector<int> parent(n, -1);
    std::vector<size_t> offset_in_parent(n, 0);

    if (options.fuse_residual && !keep_all) {
        for (int i = 0; i + 1 < n; ++i) {
            if (!can_fold_shortcut(specs, last, i)) continue;
            plan.residual[i] = specs[i + 1]->inputs[0];
            plan.runs[i + 1] = 0;
            parent[i] = i + 1;
        }
    }

    if (options.alias) {
        for (int i = 0; i < n; ++i) {
            const LayerSpec& s = *specs[i];
            if (is_identity(s)) {
                if (i == 0) continue;  // the network input is not part of the plan: copy it
                parent[i] = i - 1;
                plan.runs[i] = 0;
                continue;
            }
            if (s.kind != LayerKind::Route) continue;
            const int groups = s.params<RouteParams>().groups, group_id = s.params<RouteParams>().group_id;
            if (s.inputs.size() == 1) {
                const int from = s.inputs[0];
                parent[i] = from;
                offset_in_parent[i] = (size_t)group_id * (specs[from]->out.size() / groups);
                plan.runs[i] = 0;
                continue;
            }
            if (groups != 1) continue;
            bool placeable = true;
            for (size_t j = 0; j < s.inputs.size() && placeable; ++j) {
                const int from = s.inputs[j];
                placeable = parent[from] < 0 && std::count(s.inputs.begin(), s.inputs.end(), from) == 1;
            }
            if (!placeable) continue;
            size_t offset = 0;
            for (int from : s.inputs) {
                parent[from] = i;
                offset_in_parent[from] = offset;
                offset += specs[from]->out.size();
            }
            plan.runs[i] = 0;
        }
    }

    std::vector<int> root(n);
    plan.offset.assign(n, 0);
    for (int i = 0; i < n; ++i) {
        int r = i, steps = 0;
        size_t offset = 0;
        while (parent[r] >= 0) {
            offset += offset_in_parent[r];
            r = parent[r];
            PD_CHECK(++steps <= n, "activation plan: a cycle in the layer views at layer ", i);
        }
        root[i] = r;
        plan.offset[i] = offset;
    }

    std::vector<int> storage_of(n, -1);
    for (int i = 0; i < n; ++i) {
        if (root[i] != i) continue;
        storage_of[i] = (int)plan.storage_size.size();
        plan.storage_size.push_back(specs[i]->out.size());
        plan.storage_life.push_back(Lifetime{specs[i]->out.size(), kForever, -1});
    }
    plan.storage.assign(n, -1);
    for (int i = 0; i < n; ++i) {
        const int s = storage_of[root[i]];
        plan.storage[i] = s;
        PD_CHECK(plan.offset[i] + specs[i]->out.size() <= plan.storage_size[s], "activation plan: layer ", i,
                 " does not fit in the storage of layer ", root[i]);
        Lifetime& life = plan.storage_life[s];
        life.start = std::min(life.start, i);
        life.end = std::max(life.end, last[i]);
    }
    plan.buffers = assign_buffers(plan.storage_life);
    return plan;
}

}  // namespace pd
