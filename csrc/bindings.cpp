// Python bindings of the engine (module pydarknet._core). The Python side builds and validates the network
// description; this module only converts it and runs it. C++ exceptions become Python exceptions
// (pd::InvalidArgument -> ValueError, std::bad_alloc -> MemoryError, pd::CudaError -> pydarknet.CudaError).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>

#include "core/cuda_network.h"
#include "core/network.h"
#include "core/plan.h"
#include "cpu/ops.h"

namespace py = pybind11;

#ifdef PYDARKNET_WITH_CUDA
namespace pd {
std::vector<float> cuda_activate(const std::vector<float>& values, int activation);
}
#endif

namespace pd {
namespace {

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

py::array_t<float> output_array(int batch, const Shape& s) {
    return py::array_t<float>({(py::ssize_t)batch, (py::ssize_t)s.c, (py::ssize_t)s.h, (py::ssize_t)s.w});
}

}  // namespace
}  // namespace pd

PYBIND11_MODULE(_core, m) {
    m.doc() = "pydarknet's C++ engine";
    py::class_<pd::Network>(m, "Network")
        .def(py::init([](const py::list& specs, size_t param_count, const py::tuple& input) {
                 std::vector<pd::LayerSpec> converted;
                 for (auto s : specs) converted.push_back(pd::to_spec(s.cast<py::dict>()));
                 return new pd::Network(converted, param_count, pd::to_shape(input));
             }),
             py::arg("specs"), py::arg("param_count"), py::arg("input_shape"))
        .def_property_readonly(
            "params",
            [](py::object self) {
                auto& net = self.cast<pd::Network&>();
                return py::array_t<float>({(py::ssize_t)net.params.size()}, {(py::ssize_t)sizeof(float)},
                                          net.params.data(), self);
            },
            "The flat parameter buffer (a writable view; call touch_params() after writing).")
        .def("touch_params", [](pd::Network& net) { ++net.params_version; })
        .def_readwrite("bn_epsilon", &pd::Network::bn_epsilon)
        .def_readwrite("keep", &pd::Network::keep)
        .def_readwrite("profile", &pd::Network::profile)
        .def_readonly("layer_seconds", &pd::Network::layer_seconds)
        .def(
            "forward",
            [](pd::Network& net, py::array_t<float, py::array::c_style | py::array::forcecast> x, bool keep_all) {
                auto shape = net.input_shape();
                PD_CHECK(x.ndim() == 4 && x.shape(1) == shape.c && x.shape(2) == shape.h && x.shape(3) == shape.w,
                         "input must have shape (N, ", shape.c, ", ", shape.h, ", ", shape.w, ")");
                PD_CHECK(x.shape(0) >= 1, "input batch must not be empty");
                const float* data = x.data();
                const int batch = (int)x.shape(0);
                py::gil_scoped_release release;
                net.forward(data, batch, keep_all);
            },
            py::arg("x"), py::arg("keep_all") = false)
        .def(
            "output",
            [](const pd::Network& net, int i) {
                PD_CHECK(i >= 0 && i < net.layer_count(), "layer index ", i, " out of range");
                const pd::Shape s = net.layer(i).spec.out;
                py::array_t<float> out = pd::output_array(net.batch(), s);
                std::memcpy(out.mutable_data(), net.output(i), sizeof(float) * net.batch() * s.size());
                return out;
            },
            py::arg("layer"));
    m.def(
        "plan_views",
        [](const pd::Network& net, bool keep_all, bool alias, bool fuse_residual) {
            std::vector<const pd::LayerSpec*> specs;
            for (int i = 0; i < net.layer_count(); ++i) specs.push_back(&net.layer(i).spec);
            pd::PlanOptions options;
            options.alias = alias;
            options.fuse_residual = fuse_residual;
            return pd::plan_to_dict(pd::plan_views(specs, net.keep, keep_all, options));
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
    m.def("cuda_activate", &pd::cuda_activate, py::arg("values"), py::arg("activation"),
          "Applies an element-wise activation on the GPU (for CPU/GPU parity tests).");
    py::register_exception_translator([](std::exception_ptr failure) {
        try {
            if (failure) std::rethrow_exception(failure);
        } catch (const pd::CudaError& e) {
            PyObject* type = PyExc_RuntimeError;
            py::object cls;
            try {
                cls = py::module_::import("pydarknet.errors").attr("CudaError");
                type = cls.ptr();
            } catch (py::error_already_set&) {
            }
            PyErr_SetString(type, e.what());
        }
    });
    py::class_<pd::CudaNetwork>(m, "CudaNetwork")
        .def(py::init([](pd::Network& host, int precision, int device) {
                 PD_CHECK(precision >= 0 && precision <= 2, "precision code must be 0 (fp32), 1 (fp16) or 2 (bf16)");
                 return new pd::CudaNetwork(host, (pd::Precision)precision, device);
             }),
             py::arg("host"), py::arg("precision") = 0, py::arg("device") = 0, py::keep_alive<1, 2>(),
             "Runs the host network's layers on CUDA device `device` (its parameters are read from the host).")
        .def(
            "forward",
            [](pd::CudaNetwork& net, py::array_t<float, py::array::c_style | py::array::forcecast> x, bool keep_all) {
                const pd::Shape shape = net.input_shape();
                PD_CHECK(x.ndim() == 4 && x.shape(1) == shape.c && x.shape(2) == shape.h && x.shape(3) == shape.w,
                         "input must have shape (N, ", shape.c, ", ", shape.h, ", ", shape.w, ")");
                PD_CHECK(x.shape(0) >= 1, "input batch must not be empty");
                const float* data = x.data();
                const int batch = (int)x.shape(0);
                py::gil_scoped_release release;
                net.forward(data, batch, keep_all);
            },
            py::arg("x"), py::arg("keep_all") = false)
        .def(
            "output",
            [](const pd::CudaNetwork& net, int i) {
                PD_CHECK(net.output_available(i), "the output of layer ", i, " was not kept by the last forward pass");
                py::array_t<float> out = pd::output_array(net.batch(), net.output_shape(i));
                float* data = out.mutable_data();
                py::gil_scoped_release release;
                net.copy_output(i, data);
                return out;
            },
            py::arg("layer"))
        .def("time_layers", &pd::CudaNetwork::time_layers, py::arg("warmup") = 3, py::arg("iterations") = 20,
             py::call_guard<py::gil_scoped_release>(),
             "GPU milliseconds of each of `iterations` runs of the layers on the last input (CUDA events).")
        .def_readwrite("use_graph", &pd::CudaNetwork::use_graph)
        .def_readwrite("profile", &pd::CudaNetwork::profile)
        .def_readonly("layer_seconds", &pd::CudaNetwork::layer_seconds)
        .def_property("guard", &pd::CudaNetwork::guard, &pd::CudaNetwork::set_guard)
        .def_property_readonly("guard_region_count", &pd::CudaNetwork::guard_region_count)
        .def("damage_guard_region", &pd::CudaNetwork::damage_guard_region, py::arg("region"),
             "Changes one byte of a guard region (to test the guard check).")
        .def_property(
            "conv_algorithm", [](const pd::CudaNetwork& net) { return (int)net.conv_algorithm(); },
            [](pd::CudaNetwork& net, int algorithm) {
                PD_CHECK(algorithm >= 0 && algorithm <= 2, "conv_algorithm must be 0 (auto), 1 (simt) or 2 (tensor)");
                net.set_conv_algorithm((pd::ConvAlgorithm)algorithm);
            })
        .def_property("split_k", &pd::CudaNetwork::split_k, &pd::CudaNetwork::set_split_k,
                      "Convolution split-K: 0 automatic, 1 never, n > 1 always n splits.")
        .def(
            "set_plan_options",
            [](pd::CudaNetwork& net, bool alias, bool fuse_residual) {
                pd::PlanOptions options;
                options.alias = alias;
                options.fuse_residual = fuse_residual;
                net.set_plan_options(options);
            },
            py::arg("alias") = true, py::arg("fuse_residual") = true)
        .def("plan", [](const pd::CudaNetwork& net) { return pd::plan_to_dict(net.plan()); })
        .def_property_readonly("precision", [](const pd::CudaNetwork& net) { return (int)net.precision(); })
        .def_property_readonly("device", &pd::CudaNetwork::device)
        .def_property_readonly("device_name", &pd::CudaNetwork::device_name)
        .def_property_readonly("arena_bytes", &pd::CudaNetwork::arena_bytes);
#else
    m.attr("built_with_cuda") = false;
    m.def("cuda_device_count", []() { return 0; });
#endif
    m.def(
        "cpu_activate",
        [](std::vector<float> values, int activation) {
            pd::activate_span(values.data(), values.size(), activation);
            return values;
        },
        py::arg("values"), py::arg("activation"), "Applies an element-wise activation on the CPU.");
    m.def("has_layer_type", [](const std::string& name) { return pd::layer_registry().count(name) != 0; });
}
