// Python bindings of the engine (module pydarknet._core). The Python side builds and validates the network
// description; this module only converts it and runs it. C++ exceptions become Python exceptions
// (pd::InvalidArgument -> ValueError, std::bad_alloc -> MemoryError, pd::CudaError -> pydarknet.CudaError,
// pd::ConcurrentUse -> pydarknet.ConcurrentUseError).
//
// Threads: one Python Network may be used from several threads (a web server's request threads). Each engine call
// releases the GIL and then takes its network's mutex, so other Python threads run while one computes, and calls
// on one network take turns. A forward pass and the copy of its outputs happen under one hold of the mutex
// (forward_outputs), so another thread's pass cannot overwrite the activations in between; the copies are new
// arrays that belong to the caller. The mutex is never taken while holding the GIL, and the GIL is never taken
// while holding the mutex (no Python object is made or touched under it), so the two cannot deadlock.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstring>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <tuple>

#include "core/cuda_network.h"
#include "core/cuda_optimizer.h"
#include "core/network.h"
#include "core/plan.h"
#include "cpu/isa.h"
#include "cpu/ops.h"
#include "math/activations.h"
#include "cpu/peak.h"
#include "cpu/train_ops.h"
#include "cpu/winograd.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace py = pybind11;

#ifdef PYDARKNET_WITH_CUDA
namespace pd {
std::vector<float> cuda_activate(const std::vector<float>& values, int activation);
std::vector<float> cuda_channel_sums(const std::vector<float>& x, int batch, int channels, size_t spatial,
                                     std::vector<float> accumulate);
}  // namespace pd
#endif

namespace pd {

// A training sequence (forward_train, then backward or train_output) broken by another thread's forward_train.
struct ConcurrentUse : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// The engine's network with the lock that makes it safe to share between threads (see the file comment). The
// lock lives here rather than in Network so that the engine itself stays free of threading policy.
struct SharedNetwork : Network {
    using Network::Network;
    std::mutex mutex;
    // The thread whose forward_train the training state holds; backward and train_output from any other thread
    // would silently use that thread's activations, so they are refused.
    std::thread::id trainer;
};

#ifdef PYDARKNET_WITH_CUDA
// A CUDA network shares its host network's lock: it reads the host's parameters, keep list and bn_epsilon.
struct SharedCudaNetwork : CudaNetwork {
    SharedCudaNetwork(SharedNetwork& host, Precision precision, int device, const CudaNetwork* share_params = nullptr)
        : CudaNetwork(host, precision, device, share_params), host(host) {}
    SharedNetwork& host;
};
#endif

#ifdef PYDARKNET_CUDA_EMULATION
// The CPU emulation of the CUDA runtime keeps process-wide state (its block scheduler), so emulated CUDA work
// from different networks must not overlap either.
std::mutex emulation_mutex;
#endif

namespace {

// Runs f() with the GIL released and the network's lock held; f must not touch Python objects.
template <typename F>
auto locked(SharedNetwork& net, F&& f) -> decltype(f()) {
    py::gil_scoped_release release;
    std::lock_guard<std::mutex> lock(net.mutex);
    return f();
}

// A read-only property: a copy of a member, taken under the lock.
template <typename T>
auto read_locked(T Network::* member) {
    return [member](SharedNetwork& net) { return locked(net, [&] { return net.*member; }); };
}

#ifdef PYDARKNET_WITH_CUDA
template <typename F>
auto locked(SharedCudaNetwork& net, F&& f) -> decltype(f()) {
    py::gil_scoped_release release;
    std::lock_guard<std::mutex> lock(net.host.mutex);
#ifdef PYDARKNET_CUDA_EMULATION
    std::lock_guard<std::mutex> emulation(emulation_mutex);
#endif
    return f();
}
#endif

Shape to_shape(const py::handle& h) {
    auto t = h.cast<std::vector<int>>();
    PD_CHECK(t.size() == 3, "a shape must be (c, h, w)");
    Shape s;
    s.c = t[0];
    s.h = t[1];
    s.w = t[2];
    return s;
}

LayerSpec to_spec(const py::dict& d) {
    LayerSpec s;
    s.index = d["index"].cast<int>();
    s.type = d["type"].cast<std::string>();
    s.in = to_shape(d["in"]);
    s.out = to_shape(d["out"]);
    s.inputs = d["inputs"].cast<std::vector<int>>();
    for (auto item : d["tensors"].cast<py::dict>()) {
        auto pair = item.second.cast<std::pair<size_t, size_t>>();
        s.tensors[item.first.cast<std::string>()] = TensorRef{pair.first, pair.second};
    }
    for (auto item : d["options"].cast<py::dict>()) {
        const std::string key = item.first.cast<std::string>();
        py::handle value = item.second;
        if (py::isinstance<py::bool_>(value) || py::isinstance<py::int_>(value) || py::isinstance<py::float_>(value))
            s.num[key] = value.cast<double>();
        else if (py::isinstance<py::str>(value))
            s.str[key] = value.cast<std::string>();
        else if (py::isinstance<py::list>(value) || py::isinstance<py::tuple>(value))
            s.lists[key] = value.cast<std::vector<double>>();
    }
    return s;
}

using FloatArray = py::array_t<float, py::array::c_style | py::array::forcecast>;

// The batch size of an input array, after checking it is N x C x H x W with the network's C, H, W and N >= 1.
int input_batch(const FloatArray& x, const Shape& shape) {
    PD_CHECK(x.ndim() == 4 && x.shape(1) == shape.c && x.shape(2) == shape.h && x.shape(3) == shape.w,
             "input must have shape (N, ", shape.c, ", ", shape.h, ", ", shape.w, ")");
    PD_CHECK(x.shape(0) >= 1, "input batch must not be empty");
    return (int)x.shape(0);
}

py::array_t<float> output_array(int batch, const Shape& s) {
    return py::array_t<float>({(py::ssize_t)batch, (py::ssize_t)s.c, (py::ssize_t)s.h, (py::ssize_t)s.w});
}

// The {layer: dLoss/dOutput} dict of a backward call, checked against each layer's output shape at `batch` images
// and converted to float32; `arrays` keeps the converted arrays alive for the call.
template <typename OutputShape>
std::vector<std::pair<int, const float*>> gradient_seeds(const py::dict& output_grads, int batch, int layer_count,
                                                         OutputShape output_shape, std::vector<FloatArray>& arrays) {
    std::vector<std::pair<int, const float*>> seeds;
    arrays.reserve(output_grads.size());
    for (auto item : output_grads) {
        const int i = item.first.cast<int>();
        PD_CHECK(i >= 0 && i < layer_count, "gradient given for layer ", i, ", which does not exist");
        const Shape s = output_shape(i);
        FloatArray a = FloatArray::ensure(item.second);
        PD_CHECK(
            a && a.ndim() == 4 && a.shape(0) == batch && a.shape(1) == s.c && a.shape(2) == s.h && a.shape(3) == s.w,
            "the gradient for layer ", i, " must have shape (", batch, ", ", s.c, ", ", s.h, ", ", s.w, ")");
        arrays.push_back(a);
        seeds.emplace_back(i, arrays.back().data());
    }
    return seeds;
}

// A zeroed (batch, c, h, w) array for the input gradient when asked for (and its data pointer), else none.
std::pair<py::array_t<float>, float*> input_gradient_array(bool wanted, int batch, const Shape& s) {
    if (!wanted) return {py::array_t<float>(), nullptr};
    py::array_t<float> out = output_array(batch, s);
    float* data = out.mutable_data();
    std::fill(data, data + (size_t)batch * s.size(), 0.f);
    return {out, data};
}

// A new (batch, c, h, w) array holding `values`.
py::array_t<float> array_of(const std::vector<float>& values, int batch, const Shape& s) {
    py::array_t<float> out = output_array(batch, s);
    std::memcpy(out.mutable_data(), values.data(), sizeof(float) * values.size());
    return out;
}

// The output arrays for `layers` at `batch` images, made (with the GIL) before the pass that fills them.
struct Outputs {
    std::vector<py::array_t<float>> arrays;
    std::vector<float*> data;
    std::vector<size_t> floats;

    template <typename ShapeOf>
    Outputs(const std::vector<int>& layers, int batch, ShapeOf shape_of) {
        for (int i : layers) {
            const Shape s = shape_of(i);
            arrays.push_back(output_array(batch, s));
            data.push_back(arrays.back().mutable_data());
            floats.push_back((size_t)batch * s.size());
        }
    }
    py::list list() const {
        py::list out;
        for (const auto& a : arrays) out.append(a);
        return out;
    }
};

void check_layers(const Network& net, const std::vector<int>& layers) {
    for (int i : layers) PD_CHECK(i >= 0 && i < net.layer_count(), "layer index ", i, " out of range");
}

// forward(x, keep_all) and copies of the outputs of `layers`, as one step under the lock (CPU network).
py::list forward_outputs(SharedNetwork& net, const FloatArray& x, const std::vector<int>& layers, bool keep_all) {
    const int batch = input_batch(x, net.input_shape());
    check_layers(net, layers);
    Outputs outs(layers, batch, [&](int i) { return net.layer(i).spec.out; });
    const float* input = x.data();
    locked(net, [&] {
        for (int i : layers)
            PD_CHECK(keep_all || std::find(net.keep.begin(), net.keep.end(), i) != net.keep.end(),
                     "the output of layer ", i, " is not kept by a forward pass without keep_all");
        net.forward(input, batch, keep_all);
        for (size_t k = 0; k < layers.size(); ++k)
            std::memcpy(outs.data[k], net.output(layers[k]), sizeof(float) * outs.floats[k]);
    });
    return outs.list();
}

// Only the thread that ran the last forward_train may read its outputs or backpropagate through it; call with the
// lock held.
void check_trainer(const SharedNetwork& net, const char* what) {
    PD_CHECK(net.train_batch() > 0, what, " needs a forward_train first");
    if (net.trainer != std::this_thread::get_id())
        throw ConcurrentUse(std::string(what) +
                            ": another thread ran forward_train on this network since this thread's, so its training "
                            "state belongs to that thread (train one network from one thread at a time)");
}

// A numpy view of a buffer owned by the network (kept alive by `owner`).
py::array_t<float> view_of(std::vector<float>& buffer, py::object owner) {
    return py::array_t<float>({(py::ssize_t)buffer.size()}, {(py::ssize_t)sizeof(float)}, buffer.data(), owner);
}

py::dict plan_to_dict(const ViewPlan& plan) {
    py::dict d;
    d["storage"] = plan.storage;
    d["offset"] = plan.offset;
    std::vector<bool> runs(plan.runs.begin(), plan.runs.end());
    d["runs"] = runs;
    d["residual"] = plan.residual;
    d["storage_size"] = plan.storage_size;
    std::vector<int> start, end;
    for (const Lifetime& life : plan.storage_life) {
        start.push_back(life.start);
        end.push_back(life.end);
    }
    d["storage_start"] = start;
    d["storage_end"] = end;
    d["buffer_of"] = plan.buffers.buffer_of;
    d["capacity"] = plan.buffers.capacity;
    d["forever"] = kForever;
    return d;
}

}  // namespace
// Raises pydarknet.errors.<name> (a RuntimeError where that module cannot be imported, e.g. while the interpreter
// shuts down).
inline void set_python_error(const char* name, const char* what) {
    PyObject* type = PyExc_RuntimeError;
    py::object cls;
    try {
        cls = py::module_::import("pydarknet.errors").attr(name);
        type = cls.ptr();
    } catch (py::error_already_set&) {
    }
    PyErr_SetString(type, what);
}

}  // namespace pd

PYBIND11_MODULE(_core, m) {
    m.doc() = "pydarknet's C++ engine";
    py::register_exception_translator([](std::exception_ptr failure) {
        try {
            if (failure) std::rethrow_exception(failure);
        } catch (const pd::ConcurrentUse& e) {
            pd::set_python_error("ConcurrentUseError", e.what());
        } catch (const pd::CudaError& e) {
            pd::set_python_error("CudaError", e.what());
        }
    });
    using pd::SharedNetwork;
    py::class_<SharedNetwork>(m, "Network")
        .def(py::init([](const py::list& specs, size_t param_count, const py::tuple& input, SharedNetwork* share_with) {
                 std::vector<pd::LayerSpec> converted;
                 for (auto s : specs) converted.push_back(pd::to_spec(s.cast<py::dict>()));
                 return new SharedNetwork(converted, param_count, pd::to_shape(input),
                                          share_with ? share_with->store() : nullptr);
             }),
             py::arg("specs"), py::arg("param_count"), py::arg("input_shape"), py::arg("share_with") = nullptr,
             "share_with: another network of the same parameter layout whose parameters and gradients to share.")
        .def_property_readonly(
            "params", [](py::object self) { return pd::view_of(self.cast<SharedNetwork&>().params, self); },
            "The flat parameter buffer (a writable view; call touch_params() after writing). Not to be written while "
            "a pass runs on this network or on one sharing its parameters.")
        .def_property_readonly(
            "grads",
            [](py::object self) {
                SharedNetwork& net = self.cast<SharedNetwork&>();
                std::vector<float>* grads = pd::locked(net, [&] { return &net.grads_buffer(); });
                return pd::view_of(*grads, self);
            },
            "The flat gradient buffer, laid out like params (a writable view).")
        .def("zero_grads", [](SharedNetwork& net) { pd::locked(net, [&] { net.zero_grads(); }); })
        .def("touch_params", [](SharedNetwork& net) { pd::locked(net, [&] { ++net.params_version; }); })
        .def_property(
            "bn_epsilon", [](SharedNetwork& net) { return pd::locked(net, [&] { return net.bn_epsilon; }); },
            [](SharedNetwork& net, float value) { pd::locked(net, [&] { net.bn_epsilon = value; }); })
        .def_property(
            "keep", [](SharedNetwork& net) { return pd::locked(net, [&] { return net.keep; }); },
            [](SharedNetwork& net, const std::vector<int>& keep) { pd::locked(net, [&] { net.keep = keep; }); })
        .def_property(
            "profile", [](SharedNetwork& net) { return pd::locked(net, [&] { return net.profile; }); },
            [](SharedNetwork& net, bool on) { pd::locked(net, [&] { net.profile = on; }); })
        .def_property_readonly("layer_seconds", pd::read_locked(&pd::Network::layer_seconds))
        .def_property_readonly("train_layer_seconds", pd::read_locked(&pd::Network::train_layer_seconds))
        .def_property_readonly("backward_layer_seconds", pd::read_locked(&pd::Network::backward_layer_seconds))
        .def_property_readonly("layer_cpu_seconds", pd::read_locked(&pd::Network::layer_cpu_seconds))
        .def("forward_outputs", &pd::forward_outputs, py::arg("x"), py::arg("layers"), py::arg("keep_all") = false,
             "Runs the network and returns copies of the outputs of `layers` (one step: safe with other threads).")
        .def(
            "forward",
            [](SharedNetwork& net, const pd::FloatArray& x, bool keep_all) {
                const int batch = pd::input_batch(x, net.input_shape());
                const float* input = x.data();
                pd::locked(net, [&] { net.forward(input, batch, keep_all); });
            },
            py::arg("x"), py::arg("keep_all") = false,
            "Runs the network. With several threads, another thread's pass may replace the outputs before output() "
            "reads them: use forward_outputs.")
        .def(
            "output",
            [](SharedNetwork& net, int i) {
                pd::check_layers(net, {i});
                int batch = 0;
                std::vector<float> values = pd::locked(net, [&] {
                    batch = net.batch();
                    PD_CHECK(batch > 0, "no output of layer ", i, " (run forward first)");
                    const float* data = net.output(i);
                    return std::vector<float>(data, data + (size_t)batch * net.layer(i).spec.out.size());
                });
                return pd::array_of(values, batch, net.layer(i).spec.out);
            },
            py::arg("layer"), "The output of layer i from the last forward pass (a copy).")
        .def(
            "forward_train",
            [](SharedNetwork& net, const pd::FloatArray& x, unsigned long long seed, long long iteration,
               const std::vector<int>& outputs) {
                const int batch = pd::input_batch(x, net.input_shape());
                pd::check_layers(net, outputs);
                pd::Outputs outs(outputs, batch, [&](int i) { return net.layer(i).spec.out; });
                const float* input = x.data();
                pd::locked(net, [&] {
                    net.trainer = std::thread::id();  // nobody's, should the pass throw
                    net.forward_train(input, batch, seed, iteration);
                    net.trainer = std::this_thread::get_id();
                    for (size_t k = 0; k < outputs.size(); ++k)
                        std::memcpy(outs.data[k], net.train_output(outputs[k]), sizeof(float) * outs.floats[k]);
                });
                return outs.list();
            },
            py::arg("x"), py::arg("seed") = 0, py::arg("iteration") = 0, py::arg("outputs") = std::vector<int>(),
            "Runs the network in training mode; returns copies of the training outputs of `outputs`.")
        .def_property_readonly("train_batch",
                               [](SharedNetwork& net) { return pd::locked(net, [&] { return net.train_batch(); }); })
        .def(
            "train_output",
            [](SharedNetwork& net, int i) {
                pd::check_layers(net, {i});
                int batch = 0;
                std::vector<float> values = pd::locked(net, [&] {
                    pd::check_trainer(net, "train_output");
                    batch = net.train_batch();
                    const float* data = net.train_output(i);
                    return std::vector<float>(data, data + (size_t)batch * net.layer(i).spec.out.size());
                });
                return pd::array_of(values, batch, net.layer(i).spec.out);
            },
            py::arg("layer"), "The output of layer i from this thread's last forward_train (a copy).")
        .def(
            "backward",
            [](SharedNetwork& net, const py::dict& output_grads, bool want_input_grad) -> py::object {
                const int batch = pd::locked(net, [&] {
                    pd::check_trainer(net, "backward");
                    return net.train_batch();
                });
                std::vector<pd::FloatArray> arrays;
                const auto seeds = pd::gradient_seeds(
                    output_grads, batch, net.layer_count(), [&](int i) { return net.layer(i).spec.out; }, arrays);
                py::array_t<float> input_grad;
                float* input_grad_data = nullptr;
                std::tie(input_grad, input_grad_data) =
                    pd::input_gradient_array(want_input_grad, batch, net.input_shape());
                pd::locked(net, [&] {
                    pd::check_trainer(net, "backward");
                    PD_CHECK(net.train_batch() == batch, "the training batch changed");
                    net.backward(seeds, input_grad_data);
                });
                if (!want_input_grad) return py::none();
                return std::move(input_grad);
            },
            py::arg("output_grads"), py::arg("input_grad") = false);
    m.def(
        "plan_views",
        [](SharedNetwork& net, bool keep_all, bool alias, bool fuse_residual) {
            std::vector<const pd::LayerSpec*> specs;
            for (int i = 0; i < net.layer_count(); ++i) specs.push_back(&net.layer(i).spec);
            pd::PlanOptions options;
            options.alias = alias;
            options.fuse_residual = fuse_residual;
            const std::vector<int> keep = pd::locked(net, [&] { return net.keep; });
            return pd::plan_to_dict(pd::plan_views(specs, keep, keep_all, options));
        },
        py::arg("network"), py::arg("keep_all") = false, py::arg("alias") = true, py::arg("fuse_residual") = true,
        "The CUDA network's activation plan for a network (host logic, no GPU needed).");
#ifdef PYDARKNET_CUDA_EMULATION
    m.attr("cuda_emulated") = true;  // the CUDA kernels run in the CPU emulation (cuda/emulation/)
#else
    m.attr("cuda_emulated") = false;
#endif
#ifdef PYDARKNET_WITH_CUDA
    m.attr("built_with_cuda") = true;
    m.def("cuda_device_count", &pd::cuda_device_count, "Number of usable CUDA GPUs (0 on any CUDA error).");
    m.def("cuda_set_device", &pd::cuda_set_device, py::arg("device"),
          "Make `device` the calling thread's current GPU (libraries such as NCCL create their state on it).");
    m.def(
        "cuda_activate",
        [](const std::vector<float>& values, int activation) {
            py::gil_scoped_release release;
#ifdef PYDARKNET_CUDA_EMULATION
            std::lock_guard<std::mutex> emulation(pd::emulation_mutex);
#endif
            return pd::cuda_activate(values, activation);
        },
        py::arg("values"), py::arg("activation"),
        "Applies an element-wise activation on the GPU (for CPU/GPU parity tests).");
    m.def(
        "cuda_channel_sums",
        [](const std::vector<float>& x, int batch, int channels, size_t spatial, std::vector<float> accumulate) {
            py::gil_scoped_release release;
#ifdef PYDARKNET_CUDA_EMULATION
            std::lock_guard<std::mutex> emulation(pd::emulation_mutex);
#endif
            return pd::cuda_channel_sums(x, batch, channels, spatial, std::move(accumulate));
        },
        py::arg("x"), py::arg("batch"), py::arg("channels"), py::arg("spatial"), py::arg("accumulate"),
        "accumulate[c] + the sum of x[b][c][s] over b and s, on the GPU in its fixed order (for parity tests).");
    using pd::SharedCudaNetwork;
    py::class_<SharedCudaNetwork>(m, "CudaNetwork")
        .def(py::init([](SharedNetwork& host, int precision, int device, const SharedCudaNetwork* share_params) {
                 PD_CHECK(precision >= 0 && precision <= 2, "precision code must be 0 (fp32), 1 (fp16) or 2 (bf16)");
                 return new SharedCudaNetwork(host, (pd::Precision)precision, device, share_params);
             }),
             py::arg("host"), py::arg("precision") = 0, py::arg("device") = 0, py::arg("share_params") = nullptr,
             py::keep_alive<1, 2>(),
             "Runs the host network's layers on CUDA device `device` (its parameters are read from the host). "
             "share_params: the CUDA network of a resized copy whose device parameters and gradients to share.")
        .def(
            "forward_outputs",
            [](SharedCudaNetwork& net, const pd::FloatArray& x, const std::vector<int>& layers, bool keep_all) {
                const int batch = pd::input_batch(x, net.input_shape());
                pd::check_layers(net.host, layers);
                pd::Outputs outs(layers, batch, [&](int i) { return net.output_shape(i); });
                const float* input = x.data();
                pd::locked(net, [&] {
                    net.forward(input, batch, keep_all);
                    for (size_t k = 0; k < layers.size(); ++k) {
                        PD_CHECK(net.output_available(layers[k]), "the output of layer ", layers[k],
                                 " was not kept by the forward pass");
                        net.copy_output(layers[k], outs.data[k]);
                    }
                });
                return outs.list();
            },
            py::arg("x"), py::arg("layers"), py::arg("keep_all") = false,
            "Runs the network and returns copies of the outputs of `layers` (one step: safe with other threads).")
        .def(
            "forward",
            [](SharedCudaNetwork& net, const pd::FloatArray& x, bool keep_all) {
                const int batch = pd::input_batch(x, net.input_shape());
                const float* input = x.data();
                pd::locked(net, [&] { net.forward(input, batch, keep_all); });
            },
            py::arg("x"), py::arg("keep_all") = false,
            "Runs the network. With several threads, another thread's pass may replace the outputs before output() "
            "reads them: use forward_outputs.")
        .def(
            "output",
            [](SharedCudaNetwork& net, int i) {
                pd::check_layers(net.host, {i});
                int batch = 0;
                std::vector<float> values = pd::locked(net, [&] {
                    PD_CHECK(net.output_available(i), "the output of layer ", i,
                             " was not kept by the last forward pass");
                    batch = net.batch();
                    std::vector<float> v((size_t)batch * net.output_shape(i).size());
                    net.copy_output(i, v.data());
                    return v;
                });
                return pd::array_of(values, batch, net.output_shape(i));
            },
            py::arg("layer"), "The output of layer i from the last forward pass (a copy).")
        // Training (float32): the same calls as the host Network's; parameter gradients stay on the device
        // (`grads` is a copy), the SGD step writes the host parameters.
        .def("untrainable_layers", [](SharedCudaNetwork& net) { return net.untrainable_layers(); })
        .def(
            "forward_train",
            [](SharedCudaNetwork& net, pd::FloatArray x, unsigned long long seed, long long iteration) {
                const int batch = pd::input_batch(x, net.input_shape());
                const float* data = x.data();
                py::gil_scoped_release release;
                net.forward_train(data, batch, seed, iteration);
            },
            py::arg("x"), py::arg("seed") = 0, py::arg("iteration") = 0)
        .def_property_readonly("train_batch", [](SharedCudaNetwork& net) { return net.train_batch(); })
        .def(
            "train_output",
            [](const SharedCudaNetwork& net, int i) {
                PD_CHECK(net.train_batch() > 0 && i >= 0 && i < net.layer_count(), "no training output of layer ", i,
                         " (run forward_train first)");
                py::array_t<float> out = pd::output_array(net.train_batch(), net.output_shape(i));
                float* data = out.mutable_data();
                py::gil_scoped_release release;
                net.copy_train_output(i, data);
                return out;
            },
            py::arg("layer"))
        .def(
            "backward",
            [](SharedCudaNetwork& net, const py::dict& output_grads, bool want_input_grad) -> py::object {
                const int batch = net.train_batch();
                PD_CHECK(batch > 0, "backward needs a forward_train first");
                std::vector<pd::FloatArray> arrays;
                const auto seeds = pd::gradient_seeds(
                    output_grads, batch, net.layer_count(), [&](int i) { return net.output_shape(i); }, arrays);
                py::array_t<float> input_grad;
                float* input_grad_data = nullptr;
                std::tie(input_grad, input_grad_data) =
                    pd::input_gradient_array(want_input_grad, batch, net.input_shape());
                {
                    py::gil_scoped_release release;
                    net.backward(seeds, input_grad_data);
                }
                if (!want_input_grad) return py::none();
                return std::move(input_grad);
            },
            py::arg("output_grads"), py::arg("input_grad") = false)
        .def_property_readonly("grads",
                               [](const SharedCudaNetwork& net) {
                                   py::array_t<float> out((py::ssize_t)net.param_count());
                                   net.copy_grads(out.mutable_data());
                                   return out;
                               })
        .def("zero_grads", [](SharedCudaNetwork& net) { return net.zero_grads(); })
        .def(
            "copy_params",
            [](const SharedCudaNetwork& net, py::array_t<float, py::array::c_style> params) {
                PD_CHECK(params.ndim() == 1 && (size_t)params.size() == net.param_count() && params.writeable(),
                         "copy_params: a writable flat float32 array of ", net.param_count(), " values");
                net.copy_params(params.mutable_data());
            },
            py::arg("params"))
        .def("first_nonfinite_grad", [](SharedCudaNetwork& net) { return net.first_nonfinite_grad(); })
        // Mixed precision: backward starts from the given gradients times loss_scale; scale_grads multiplies the
        // device gradient buffer (the optimizer's unscale).
        .def_property(
            "loss_scale", [](SharedCudaNetwork& net) { return pd::locked(net, [&] { return net.loss_scale; }); },
            [](SharedCudaNetwork& net, float scale) { pd::locked(net, [&] { net.loss_scale = scale; }); })
        .def("scale_grads",
             [](SharedCudaNetwork& net, float factor) { pd::locked(net, [&] { net.scale_grads(factor); }); })
        // Gradient exchange between processes: raw device addresses for a collective library (NCCL) that runs
        // on the same stream (a buffer summed on the host goes back with set_grads).
        .def_property_readonly("grads_pointer",
                               [](SharedCudaNetwork& net) { return (uintptr_t)net.grads_device_pointer(); })
        .def_property_readonly("stream_pointer",
                               [](const SharedCudaNetwork& net) { return (uintptr_t)net.stream_handle(); })
        .def("stream_idle", [](const SharedCudaNetwork& net) { return net.stream_idle(); })
        .def(
            "yolo_loss",
            [](SharedCudaNetwork& net, int layer, const py::dict& options,
               py::array_t<double, py::array::c_style | py::array::forcecast> truths,
               py::array_t<int, py::array::c_style | py::array::forcecast> classes,
               py::array_t<int, py::array::c_style | py::array::forcecast> counts) {
                // options: the fields of pydarknet.train.yolo_loss.YoloLossConfig the loss reads (see
                // device_yolo_loss there), iou kinds as YoloIouKind codes.
                const int batch = net.train_batch();
                PD_CHECK(batch > 0, "yolo_loss needs a forward_train first");
                PD_CHECK(truths.ndim() == 3 && truths.shape(0) == batch && truths.shape(2) == 4 &&
                             classes.ndim() == 2 && classes.shape(0) == batch && classes.shape(1) == truths.shape(1) &&
                             counts.ndim() == 1 && counts.shape(0) == batch,
                         "yolo_loss: truths (", batch, ", k, 4), classes (", batch, ", k) and counts (", batch,
                         ") expected");
                pd::YoloLossSetup s;
                s.classes = options["classes"].cast<int>();
                s.net_w = options["net_w"].cast<int>();
                s.net_h = options["net_h"].cast<int>();
                s.mask = options["mask"].cast<std::vector<int>>();
                s.anchors = options["anchors"].cast<std::vector<double>>();
                s.class_multipliers = options["class_multipliers"].cast<std::vector<float>>();
                s.ignore_thresh = options["ignore_thresh"].cast<double>();
                s.truth_thresh = options["truth_thresh"].cast<double>();
                s.iou_thresh = options["iou_thresh"].cast<double>();
                s.iou_normalizer = options["iou_normalizer"].cast<double>();
                s.obj_normalizer = options["obj_normalizer"].cast<double>();
                s.cls_normalizer = options["cls_normalizer"].cast<double>();
                s.delta_normalizer = options["delta_normalizer"].cast<double>();
                s.max_delta = options["max_delta"].cast<double>();
                s.clip_max_delta = options["clip_max_delta"].cast<bool>();
                s.label_smooth_eps = options["label_smooth_eps"].cast<double>();
                s.focal_loss = options["focal_loss"].cast<bool>();
                s.new_coords = options["new_coords"].cast<bool>();
                s.objectness_smooth = options["objectness_smooth"].cast<bool>();
                s.iou_loss = options["iou_loss"].cast<int>();
                s.iou_thresh_kind = options["iou_thresh_kind"].cast<int>();
                const double* t = truths.data();
                const int* c = classes.data();
                const int* n = counts.data();
                const int k = (int)truths.shape(1);
                pd::YoloLossSums r;
                {
                    py::gil_scoped_release release;
                    r = net.yolo_loss(layer, s, t, c, n, k);
                }
                py::dict out;
                out["sum_sq"] = r.sum_sq;
                out["box_sq"] = r.box_sq;
                out["obj_sum"] = r.obj_sum;
                out["tot_iou"] = r.tot_iou;
                out["tot_iou_loss"] = r.tot_iou_loss;
                out["tot_giou_loss"] = r.tot_giou_loss;
                out["avg_cat"] = r.avg_cat;
                out["avg_obj"] = r.avg_obj;
                out["count"] = r.count;
                out["recall50"] = r.recall50;
                out["recall75"] = r.recall75;
                out["total_bbox"] = r.total_bbox;
                out["rewritten_bbox"] = r.rewritten_bbox;
                return out;
            },
            py::arg("layer"), py::arg("options"), py::arg("truths"), py::arg("classes"), py::arg("counts"),
            "The [yolo] loss of a head of this thread's last forward_train on the device; its gradient stays in the "
            "layer's device gradient buffer for the next backward. Returns the loss's sums.")
        .def(
            "time_layers",
            [](SharedCudaNetwork& net, int warmup, int iterations) {
                return pd::locked(net, [&] { return net.time_layers(warmup, iterations); });
            },
            py::arg("warmup") = 3, py::arg("iterations") = 20,
            "GPU milliseconds of each of `iterations` runs of the layers on the last input (CUDA events).")
        .def_property(
            "use_graph", [](SharedCudaNetwork& net) { return pd::locked(net, [&] { return net.use_graph; }); },
            [](SharedCudaNetwork& net, bool on) { pd::locked(net, [&] { net.use_graph = on; }); })
        .def_property(
            "profile", [](SharedCudaNetwork& net) { return pd::locked(net, [&] { return net.profile; }); },
            [](SharedCudaNetwork& net, bool on) { pd::locked(net, [&] { net.profile = on; }); })
        .def_property_readonly(
            "layer_seconds", [](SharedCudaNetwork& net) { return pd::locked(net, [&] { return net.layer_seconds; }); })
        .def_property(
            "guard", [](SharedCudaNetwork& net) { return pd::locked(net, [&] { return net.guard(); }); },
            [](SharedCudaNetwork& net, bool on) { pd::locked(net, [&] { net.set_guard(on); }); })
        .def_property_readonly(
            "guard_region_count",
            [](SharedCudaNetwork& net) { return pd::locked(net, [&] { return net.guard_region_count(); }); })
        .def(
            "damage_guard_region",
            [](SharedCudaNetwork& net, int region) { pd::locked(net, [&] { net.damage_guard_region(region); }); },
            py::arg("region"), "Changes one byte of a guard region (to test the guard check).")
        .def_property(
            "conv_algorithm",
            [](SharedCudaNetwork& net) { return pd::locked(net, [&] { return (int)net.conv_algorithm(); }); },
            [](SharedCudaNetwork& net, int algorithm) {
                PD_CHECK(algorithm >= 0 && algorithm <= 2, "conv_algorithm must be 0 (auto), 1 (simt) or 2 (tensor)");
                pd::locked(net, [&] { net.set_conv_algorithm((pd::ConvAlgorithm)algorithm); });
            })
        .def_property(
            "split_k", [](SharedCudaNetwork& net) { return pd::locked(net, [&] { return net.split_k(); }); },
            [](SharedCudaNetwork& net, int split_k) { pd::locked(net, [&] { net.set_split_k(split_k); }); },
            "Convolution split-K: 0 automatic, 1 never, n > 1 always n splits.")
        .def(
            "set_plan_options",
            [](SharedCudaNetwork& net, bool alias, bool fuse_residual) {
                pd::PlanOptions options;
                options.alias = alias;
                options.fuse_residual = fuse_residual;
                pd::locked(net, [&] { net.set_plan_options(options); });
            },
            py::arg("alias") = true, py::arg("fuse_residual") = true)
        .def("plan",
             [](SharedCudaNetwork& net) {
                 const pd::ViewPlan plan = pd::locked(net, [&] { return net.plan(); });
                 return pd::plan_to_dict(plan);
             })
        .def_property_readonly("precision", [](const SharedCudaNetwork& net) { return (int)net.precision(); })
        .def_property_readonly("device", [](const SharedCudaNetwork& net) { return net.device(); })
        .def_property_readonly("device_name", [](const SharedCudaNetwork& net) { return net.device_name(); })
        .def_property_readonly(
            "arena_bytes", [](SharedCudaNetwork& net) { return pd::locked(net, [&] { return net.arena_bytes(); }); });
    {
        // Device-resident training state: the copy rule's calls on CudaNetwork and the device optimizer
        // (csrc/core/cuda_optimizer.h). Every call takes the network's lock, as the other CUDA calls do.
        using pd::SharedCudaNetwork;
        auto cuda_network = py::reinterpret_borrow<py::class_<SharedCudaNetwork>>(m.attr("CudaNetwork"));
        cuda_network
            .def(
                "sync_params", [](SharedCudaNetwork& net) { pd::locked(net, [&] { net.sync_params(); }); },
                "Upload the host parameters if they changed (params_version) since the last upload.")
            .def(
                "mark_params_current",
                [](SharedCudaNetwork& net) { pd::locked(net, [&] { net.mark_params_current(); }); },
                "Record that the host buffer equals the device parameters (after copy_params): no upload needed.")
            .def(
                "set_grads",
                [](SharedCudaNetwork& net, pd::FloatArray values) {
                    PD_CHECK(values.ndim() == 1 && (size_t)values.size() == net.param_count(),
                             "set_grads: a flat float32 array of ", net.param_count(), " values");
                    const float* data = values.data();
                    pd::locked(net, [&] { net.set_grads(data); });
                },
                py::arg("values"));
        py::class_<pd::CudaOptimizer>(m, "CudaOptimizer")
            .def(py::init<int, size_t>(), py::arg("device"), py::arg("param_count"))
            .def_property_readonly("param_count", &pd::CudaOptimizer::param_count)
            .def(
                "download",
                [](const pd::CudaOptimizer& opt, int buffer) {
                    py::array_t<float> out((py::ssize_t)opt.param_count());
                    float* data = out.mutable_data();
                    py::gil_scoped_release release;
                    opt.download(buffer, data);
                    return out;
                },
                py::arg("buffer"), "A copy of buffer 0 velocity, 1 adam_m, 2 adam_v, 3 adam_pending or 4 ema.")
            .def(
                "upload",
                [](pd::CudaOptimizer& opt, int buffer, pd::FloatArray values) {
                    PD_CHECK(values.ndim() == 1 && (size_t)values.size() == opt.param_count(),
                             "upload: a flat float32 array of ", opt.param_count(), " values");
                    const float* data = values.data();
                    py::gil_scoped_release release;
                    opt.upload(buffer, data);
                },
                py::arg("buffer"), py::arg("values"))
            .def(
                "check_grads",
                [](pd::CudaOptimizer& opt, SharedCudaNetwork& net) {
                    return pd::locked(net, [&] { return opt.check_grads(net); });
                },
                py::arg("net"), "(first non-finite gradient index or -1, sum of squared gradients).")
            .def(
                "step",
                [](pd::CudaOptimizer& opt, SharedCudaNetwork& net, const std::vector<size_t>& starts,
                   const std::vector<size_t>& stops, const std::vector<int>& rules, const std::vector<float>& steps,
                   const std::vector<float>& clips, const std::vector<float>& scalars) {
                    PD_CHECK(starts.size() == stops.size() && starts.size() == rules.size() &&
                                 starts.size() == steps.size() && starts.size() == clips.size(),
                             "step: starts, stops, rules, steps and clips must have the same length");
                    PD_CHECK(scalars.size() == 9,
                             "step: scalars are decay_coef, momentum, B1, B2, eps, 1-B1, 1-B2, 1-B1**t, 1-B2**t");
                    std::vector<pd::OptimizerSegment> segments(starts.size());
                    for (size_t k = 0; k < starts.size(); ++k)
                        segments[k] = pd::OptimizerSegment{starts[k], stops[k], rules[k], steps[k], clips[k]};
                    pd::OptimizerScalars k{scalars[0], scalars[1], scalars[2], scalars[3], scalars[4],
                                           scalars[5], scalars[6], scalars[7], scalars[8]};
                    pd::locked(net, [&] { opt.step(net, segments, k); });
                },
                py::arg("net"), py::arg("starts"), py::arg("stops"), py::arg("rules"), py::arg("steps"),
                py::arg("clips"), py::arg("scalars"))
            .def(
                "ema",
                [](pd::CudaOptimizer& opt, SharedCudaNetwork& net, const std::vector<std::pair<size_t, size_t>>& ranges,
                   bool init, int action, float alpha, float one_minus_alpha) {
                    pd::locked(net, [&] { opt.ema(net, ranges, init, action, alpha, one_minus_alpha); });
                },
                py::arg("net"), py::arg("ranges"), py::arg("init"), py::arg("action"), py::arg("alpha"),
                py::arg("one_minus_alpha"))
            .def(
                "save_params",
                [](pd::CudaOptimizer& opt, SharedCudaNetwork& net) { pd::locked(net, [&] { opt.save_params(net); }); },
                py::arg("net"))
            .def(
                "restore_params",
                [](pd::CudaOptimizer& opt, SharedCudaNetwork& net) {
                    pd::locked(net, [&] { opt.restore_params(net); });
                },
                py::arg("net"));
    }
    {
        // Training input staging (CudaNetwork::stage_input): pinned host buffers and an upload on a copy stream.
        // Bound as forward_train is (the GIL released); stage_input converts like forward_train.
        using pd::SharedCudaNetwork;
        auto cuda_network = py::reinterpret_borrow<py::class_<SharedCudaNetwork>>(m.attr("CudaNetwork"));
        cuda_network
            .def(
                "stage_input",
                [](SharedCudaNetwork& net, pd::FloatArray x) {
                    const int batch = pd::input_batch(x, net.input_shape());
                    const float* data = x.data();
                    py::gil_scoped_release release;
                    net.stage_input(data, batch);
                },
                py::arg("x"), "Copy a batch into pinned memory and start its upload; forward_train_staged runs it.")
            .def(
                "forward_train_staged",
                [](SharedCudaNetwork& net, unsigned long long seed, long long iteration) {
                    py::gil_scoped_release release;
                    net.forward_train_staged(seed, iteration);
                },
                py::arg("seed") = 0, py::arg("iteration") = 0, "forward_train on the oldest staged batch.")
            .def_property_readonly("staged_count", [](SharedCudaNetwork& net) { return net.staged_count(); })
            .def("clear_staged", [](SharedCudaNetwork& net) {
                py::gil_scoped_release release;
                net.clear_staged();
            });
    }
    {
        // Page-locked training batches (CudaNetwork::stage_input uploads them in place), the training state shared
        // by resized networks, and counters for the tests.
        using pd::SharedCudaNetwork;
        auto cuda_network = py::reinterpret_borrow<py::class_<SharedCudaNetwork>>(m.attr("CudaNetwork"));
        cuda_network
            .def(
                "pinned_empty",
                [](SharedCudaNetwork& net, size_t count) {
                    PD_CHECK(count > 0, "pinned_empty: at least one value");
                    auto* buffer =
                        pd::locked(net, [&] { return new pd::PinnedHostBuffer(count * sizeof(float), net.device()); });
                    // The array owns the buffer: freed (and forgotten by stage_input) with its last view.
                    py::capsule owner(buffer, [](void* p) {
                        py::gil_scoped_release release;
#ifdef PYDARKNET_CUDA_EMULATION
                        std::lock_guard<std::mutex> emulation(pd::emulation_mutex);
#endif
                        delete static_cast<pd::PinnedHostBuffer*>(p);
                    });
                    return py::array_t<float>({(py::ssize_t)count}, {(py::ssize_t)sizeof(float)},
                                              static_cast<float*>(buffer->data()), owner);
                },
                py::arg("count"),
                "A new float32 array of `count` values in page-locked host memory; stage_input uploads a batch "
                "that lies in one such array from where it is.")
            .def_property_readonly("staged_direct", [](SharedCudaNetwork& net) { return net.staged_direct(); })
            .def_property_readonly("staged_copied", [](SharedCudaNetwork& net) { return net.staged_copied(); })
            .def_property_readonly("last_upload_source",
                                   [](SharedCudaNetwork& net) { return (uintptr_t)net.last_upload_source(); })
            .def("shares_params_with", [](const SharedCudaNetwork& net,
                                          const SharedCudaNetwork& other) { return net.shares_params_with(other); })
            .def_property_readonly("param_uploads", [](SharedCudaNetwork& net) { return net.param_uploads(); })
            .def_property_readonly("param_downloads", [](SharedCudaNetwork& net) { return net.param_downloads(); })
            .def_property_readonly("loss_scratch_allocations",
                                   [](SharedCudaNetwork& net) { return net.loss_scratch_allocations(); });
    }
#else
    m.attr("built_with_cuda") = false;
    m.def("cuda_device_count", []() { return 0; });
#endif
    m.def(
        "set_batch_norm_reducer",
        [](py::object fn) {
            // The callable lives in a holder freed here, with the GIL held, when it is replaced; never by a static
            // destructor at exit, when Python is gone.
            static py::object* holder = nullptr;
            pd::set_batch_norm_reducer(nullptr);
            delete holder;
            holder = nullptr;
            if (fn.is_none()) return;
            holder = new py::object(fn);
            py::object* call = holder;
            pd::set_batch_norm_reducer([call](int layer, int phase, double* stats, size_t n) {
                py::gil_scoped_acquire gil;
                py::array_t<double> view({(py::ssize_t)n}, {(py::ssize_t)sizeof(double)}, stats,
                                         py::capsule(stats, [](void*) {}));
                (*call)(layer, phase, view);
            });
        },
        py::arg("reducer"),
        "Synchronized batch-norm: reducer(layer, phase, stats) is called by every training batch-norm with its "
        "local per-channel sums (a float64 array: phase 0 [sum x, sum x^2, count], phase 1 [sum g, sum g*xhat, "
        "count]) and must replace them in place by the sums over all processes; None turns it off.");
    m.def("has_batch_norm_reducer", &pd::has_batch_norm_reducer);
    m.def(
        "cpu_activate",
        [](std::vector<float> values, int activation) {
            pd::activate_span(values.data(), values.size(), activation);
            return values;
        },
        py::arg("values"), py::arg("activation"), "Applies an element-wise activation on the CPU.");
    m.def(
        "cpu_activation_gradient",
        [](std::vector<float> values, int activation) {
            PD_CHECK(activation >= 0 && activation < pd::NORM_CHAN, "activation ", activation, " is not element-wise");
            for (float& v : values) v = pd::gradient(pd::activate(v, activation), v, activation);
            return values;
        },
        py::arg("values"), py::arg("activation"),
        "d activate(x) / dx at each value, as the CPU backward pass computes it (element-wise activations).");
    m.def(
        "cpu_isa", []() { return std::string(pd::isa_name(pd::active_isa())); },
        "The instruction set the CPU kernels use now: 'avx512', 'avx2' or 'generic'.");
    m.def(
        "cpu_best_isa", []() { return std::string(pd::isa_name(pd::cpu_best_isa())); },
        "The widest instruction set this CPU supports.");
    m.def("cpu_has_avx512_bf16", &pd::cpu_has_avx512_bf16, "Whether the CPU has the AVX512_BF16 instructions.");
    m.def(
        "set_cpu_isa",
        [](const std::string& name) {
            pd::Isa isa = pd::Isa::Generic;
            if (name == "avx512")
                isa = pd::Isa::Avx512;
            else if (name == "avx2")
                isa = pd::Isa::Avx2;
            else
                PD_CHECK(name == "generic", "unknown instruction set '", name, "' (avx512, avx2 or generic)");
            return std::string(pd::isa_name(pd::set_isa_cap(isa)));
        },
        py::arg("name"),
        "Caps the CPU kernels' instruction set (for tests and comparisons); returns the one now in use.");
    m.def("set_cpu_winograd", &pd::set_winograd_enabled, py::arg("enabled"),
          "Enables or disables the Winograd path for 3x3 stride-1 convolutions (for comparisons with plain GEMM).");
    m.def("cpu_winograd", &pd::winograd_enabled, "Whether the Winograd path is enabled.");
    m.def("set_cpu_winograd_band", &pd::set_winograd_band_floats, py::arg("floats"),
          "Working-set budget of one band of Winograd tiles in floats (0: the default); for tests.");
    m.def(
        "cpu_peak_gflops",
        [](int threads, bool bf16, double seconds) {
            PD_CHECK(threads >= 1, "threads must be at least 1");
            py::gil_scoped_release release;
            return pd::measure_peak_gflops(threads, bf16, seconds);
        },
        py::arg("threads"), py::arg("bf16") = false, py::arg("seconds") = 0.2,
        "Measured multiply-add peak in GFLOP/s (float32 FMA, or the bf16 dot product; 0 without AVX512_BF16).");
    m.def(
        "set_cpu_threads",
        [](int threads) {
            PD_CHECK(threads >= 1, "threads must be at least 1");
#ifdef _OPENMP
            omp_set_num_threads(threads);
#endif
        },
        py::arg("threads"), "Threads for the CPU kernels from now on (OpenMP), for the calling thread.");
    m.def("cpu_threads", []() {
#ifdef _OPENMP
        return omp_get_max_threads();
#else
        return 1;
#endif
    });
    m.def("has_layer_type", [](const std::string& name) {
        pd::LayerKind kind;
        return pd::find_layer_kind(name, &kind) && pd::layer_registry().count(kind) != 0;
    });
}
