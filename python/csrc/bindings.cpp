// The Python face of the extension (module ssmax_torch._C): torch tensors in, views out,
// the kernel run without the GIL, ssmax::argument_error raised as ssmax_torch.ArgumentError.
// The Python layer (ssmax_torch/functional.py) has already normalised every tensor: CPU,
// q's dtype, head dimension contiguous, masks and lengths as contiguous int64 / bool.

#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <string>
#include <tuple>

#include "ops.hpp"

namespace ssmax_torch {
namespace {

PyObject* error_type = nullptr;  // ssmax_torch.ArgumentError, set by _set_error_type

/// The Python-side fields of a call: tensors are held here so their memory outlives it.
struct py_spec {
  int policy = 0;
  c10::optional<at::Tensor> s, b;  // float64 [H], or None (then s_value / b_value)
  double s_value = 0.0, b_value = 0.0;
  int64_t fixed_length = 0, train_length = 8192, floor_scale = 8192, original_length = 16384;
  double attn_scale = 0.1, beta = 0.1;
  bool causal = false;
  int64_t window = 0, query_offset = -1;
  c10::optional<at::Tensor> key_lengths, cu_seqlens_q, cu_seqlens_k;  // int64
  c10::optional<at::Tensor> allowed;  // bool, [B, H, n_q, n_k] strides, key stride 1
  c10::optional<double> scale;

  call_spec lower() const {
    call_spec c;
    c.policy = static_cast<policy_kind>(policy);
    if (s) c.s = s->data_ptr<double>(), c.s_count = s->numel();
    if (b) c.b = b->data_ptr<double>(), c.b_count = b->numel();
    c.s_value = s_value, c.b_value = b_value, c.fixed_length = fixed_length;
    c.train_length = train_length, c.floor_scale = floor_scale, c.attn_scale = attn_scale;
    c.original_length = original_length, c.beta = beta;
    c.mask.causal = causal, c.mask.window = window, c.mask.query_offset = query_offset;
    if (key_lengths) c.mask.key_lengths = key_lengths->data_ptr<int64_t>();
    if (cu_seqlens_q && cu_seqlens_k) {
      c.mask.cu_seqlens_q = cu_seqlens_q->data_ptr<int64_t>();
      c.mask.cu_seqlens_k = cu_seqlens_k->data_ptr<int64_t>();
      c.mask.sequences = cu_seqlens_q->numel() - 1;
    }
    if (allowed) {
      c.mask.allowed = allowed->data_ptr<bool>();
      c.mask.allowed_stride_b = allowed->stride(0), c.mask.allowed_stride_h = allowed->stride(1);
      c.mask.allowed_stride_q = allowed->stride(2);
    }
    if (scale) c.has_scale = true, c.scale = *scale;
    c.threads = at::get_num_threads();
    return c;
  }
};

template <class T>
ssmax::tensor_view<T> view_of(const at::Tensor& t) {
  TORCH_CHECK(t.dim() == 4 && t.stride(3) == 1, "ssmax_torch: internal: bad view");
  return {t.data_ptr<std::remove_const_t<T>>(),
          t.size(0),
          t.size(1),
          t.size(2),
          t.size(3),
          t.stride(0),
          t.stride(1),
          t.stride(2)};
}

std::tuple<at::Tensor, at::Tensor> forward_op(const at::Tensor& q, const at::Tensor& k,
                                              const at::Tensor& v, const py_spec& spec) {
  at::Tensor out = at::empty(q.sizes(), q.options());
  at::Tensor lse = at::empty({q.size(0), q.size(2), q.size(1)}, q.options());
  const call_spec c = spec.lower();
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "ssmax_torch.forward", [&] {
    pybind11::gil_scoped_release no_gil;
    ssmax_torch::forward<scalar_t>(c, view_of<const scalar_t>(q), view_of<const scalar_t>(k),
                                   view_of<const scalar_t>(v), view_of<scalar_t>(out),
                                   lse.data_ptr<scalar_t>());
  });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, c10::optional<at::Tensor>, c10::optional<at::Tensor>>
backward_op(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
            const at::Tensor& dout, const at::Tensor& lse, const py_spec& spec, bool policy_grads) {
  at::Tensor dq = at::empty(q.sizes(), q.options());
  at::Tensor dk = at::empty(k.sizes(), k.options());
  at::Tensor dv = at::empty(v.sizes(), v.options());
  c10::optional<at::Tensor> ds, db;
  if (policy_grads) {
    ds = at::zeros({q.size(2)}, q.options().dtype(at::kDouble));
    db = at::zeros({q.size(2)}, q.options().dtype(at::kDouble));
  }
  const call_spec c = spec.lower();
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "ssmax_torch.backward", [&] {
    pybind11::gil_scoped_release no_gil;
    ssmax_torch::backward<scalar_t>(
        c, view_of<const scalar_t>(q), view_of<const scalar_t>(k), view_of<const scalar_t>(v),
        view_of<const scalar_t>(out), view_of<const scalar_t>(dout), lse.data_ptr<scalar_t>(),
        view_of<scalar_t>(dq), view_of<scalar_t>(dk), view_of<scalar_t>(dv),
        ds ? ds->data_ptr<double>() : nullptr, db ? db->data_ptr<double>() : nullptr);
  });
  return {dq, dk, dv, ds, db};
}

}  // namespace
}  // namespace ssmax_torch

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  namespace py = pybind11;
  using ssmax_torch::py_spec;
  m.doc() = "ssmax attention kernels for PyTorch (use the ssmax_torch package, not this module)";
  py::class_<py_spec>(m, "CallSpec")
      .def(py::init<>())
      .def_readwrite("policy", &py_spec::policy)
      .def_readwrite("s", &py_spec::s)
      .def_readwrite("b", &py_spec::b)
      .def_readwrite("s_value", &py_spec::s_value)
      .def_readwrite("b_value", &py_spec::b_value)
      .def_readwrite("fixed_length", &py_spec::fixed_length)
      .def_readwrite("train_length", &py_spec::train_length)
      .def_readwrite("floor_scale", &py_spec::floor_scale)
      .def_readwrite("attn_scale", &py_spec::attn_scale)
      .def_readwrite("original_length", &py_spec::original_length)
      .def_readwrite("beta", &py_spec::beta)
      .def_readwrite("causal", &py_spec::causal)
      .def_readwrite("window", &py_spec::window)
      .def_readwrite("query_offset", &py_spec::query_offset)
      .def_readwrite("key_lengths", &py_spec::key_lengths)
      .def_readwrite("cu_seqlens_q", &py_spec::cu_seqlens_q)
      .def_readwrite("cu_seqlens_k", &py_spec::cu_seqlens_k)
      .def_readwrite("allowed", &py_spec::allowed)
      .def_readwrite("scale", &py_spec::scale);
  m.def("forward", &ssmax_torch::forward_op, "attention forward: (out, lse)");
  m.def("backward", &ssmax_torch::backward_op, "attention backward: (dq, dk, dv, ds, db)");
  m.def("_set_error_type", [](py::object type) {
    Py_XDECREF(ssmax_torch::error_type);
    ssmax_torch::error_type = type.release().ptr();  // kept for the process's lifetime
  });
  py::register_local_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const ssmax::argument_error& e) {
      PyObject* type = ssmax_torch::error_type ? ssmax_torch::error_type : PyExc_ValueError;
      PyErr_SetObject(type, py::make_tuple(e.what(), e.argument()).ptr());
    }
  });
}
