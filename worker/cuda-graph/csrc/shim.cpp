// The C side of tutti-cuda-graph: libtorch's CUDA graphs, stream pool, events and SDPA backend
// order behind a C ABI. Host code only (no kernels, no nvcc). Every entry point catches every
// exception and returns it as a malloc'd string (NULL on success) that Rust frees with
// tcg_free_error: a C++ exception must never unwind into Rust.

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <stdexcept>
#include <string>
#include <vector>

#include <ATen/Context.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/core/Event.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAStream.h>

namespace {

char* dup(const std::string& s) {
  char* p = static_cast<char*>(std::malloc(s.size() + 1));
  if (p != nullptr) {
    std::memcpy(p, s.data(), s.size());
    p[s.size()] = '\0';
  }
  return p;
}

template <typename F>
char* guarded(F&& f) {
  try {
    f();
    return nullptr;
  } catch (const c10::Error& e) {
    return dup(e.what_without_backtrace());
  } catch (const std::exception& e) {
    return dup(e.what());
  } catch (...) {
    return dup("unknown C++ exception");
  }
}

// libtorch would fail later, in less obvious ways (or abort in a constructor), on a machine
// without a CUDA device: say so first.
void need_cuda() {
  if (c10::cuda::device_count() == 0) {
    throw std::runtime_error("no CUDA device is available");
  }
}

at::cuda::CUDAGraph* as_graph(void* g) {
  if (g == nullptr) {
    throw std::invalid_argument("null CUDA graph");
  }
  return static_cast<at::cuda::CUDAGraph*>(g);
}

}  // namespace

extern "C" {

// A CUDA stream as plain data: c10's own packed form (stream id, device index, device type).
struct tcg_stream {
  int64_t id;
  int8_t device_index;
  int8_t device_type;
};

static c10::cuda::CUDAStream unpack(const tcg_stream& s) {
  return c10::cuda::CUDAStream::unpack3(
      s.id, s.device_index, static_cast<c10::DeviceType>(s.device_type));
}

static tcg_stream pack(const c10::cuda::CUDAStream& s) {
  auto d = s.pack3();
  return tcg_stream{d.stream_id, d.device_index, static_cast<int8_t>(d.device_type)};
}

void tcg_free_error(char* e) { std::free(e); }

char* tcg_device_count(int64_t* out) {
  return guarded([&] { *out = c10::cuda::device_count(); });
}

char* tcg_graph_pool_handle(uint64_t* a, uint64_t* b) {
  return guarded([&] {
    need_cuda();
    auto id = at::cuda::graph_pool_handle();
    *a = id.first;
    *b = id.second;
  });
}

char* tcg_graph_new(void** out) {
  return guarded([&] {
    need_cuda();
    *out = new at::cuda::CUDAGraph();
  });
}

void tcg_graph_free(void* g) {
  // ~CUDAGraph is noexcept: an error there terminates, as it would in PyTorch.
  delete static_cast<at::cuda::CUDAGraph*>(g);
}

// Thread-local capture mode: the worker's other threads (decode, I/O) may keep using CUDA
// while this thread captures.
char* tcg_graph_capture_begin(void* g, uint64_t pool_a, uint64_t pool_b) {
  return guarded([&] {
    as_graph(g)->capture_begin({pool_a, pool_b}, cudaStreamCaptureModeThreadLocal);
  });
}

char* tcg_graph_capture_end(void* g) {
  return guarded([&] { as_graph(g)->capture_end(); });
}

char* tcg_graph_replay(void* g) {
  return guarded([&] { as_graph(g)->replay(); });
}

char* tcg_graph_pool(void* g, uint64_t* a, uint64_t* b) {
  return guarded([&] {
    auto id = as_graph(g)->pool();
    *a = id.first;
    *b = id.second;
  });
}

char* tcg_stream_from_pool(int8_t device, int high_priority, tcg_stream* out) {
  return guarded([&] {
    need_cuda();
    *out = pack(c10::cuda::getStreamFromPool(high_priority != 0, device));
  });
}

char* tcg_current_stream(int8_t device, tcg_stream* out) {
  return guarded([&] {
    need_cuda();
    *out = pack(c10::cuda::getCurrentCUDAStream(device));
  });
}

char* tcg_set_current_stream(tcg_stream s) {
  return guarded([&] { c10::cuda::setCurrentCUDAStream(unpack(s)); });
}

char* tcg_stream_synchronize(tcg_stream s) {
  return guarded([&] { unpack(s).synchronize(); });
}

// `waiter` runs nothing queued after this call until `waitee`'s work queued so far is done.
char* tcg_stream_wait(tcg_stream waiter, tcg_stream waitee) {
  return guarded([&] {
    // c10's device-generic event rather than ATen/cuda/CUDAEvent.h, whose includes (cuBLAS,
    // cuda_fp16.h) need CCCL headers that the wheel does not ship.
    c10::Event ev(c10::DeviceType::CUDA);
    ev.record(unpack(waitee).unwrap());
    ev.block(unpack(waiter).unwrap());
  });
}

char* tcg_device_synchronize(int8_t device) {
  return guarded([&] {
    need_cuda();
    // Not c10::cuda::CUDAGuard: its header's inline code calls the CUDA runtime directly, which
    // would make this library link libcudart itself (libtorch_cuda already does, by its rpath).
    const c10::DeviceIndex previous = c10::cuda::current_device();
    c10::cuda::set_device(device);
    try {
      c10::cuda::device_synchronize();
    } catch (...) {
      c10::cuda::set_device(previous);
      throw;
    }
    c10::cuda::set_device(previous);
  });
}

// The SDPA backend order (at::SDPBackend values); `n` must be at::num_sdp_backends.
char* tcg_sdp_priority_order(int64_t* out, size_t n) {
  return guarded([&] {
    auto order = at::globalContext().sDPPriorityOrder();
    if (n != order.size()) {
      throw std::invalid_argument("expected " + std::to_string(order.size()) + " backends");
    }
    for (size_t i = 0; i < n; i++) {
      out[i] = static_cast<int64_t>(order[i]);
    }
  });
}

char* tcg_set_sdp_priority_order(const int64_t* order, size_t n) {
  return guarded([&] {
    at::globalContext().setSDPPriorityOrder(std::vector<int64_t>(order, order + n));
  });
}

size_t tcg_num_sdp_backends() { return at::num_sdp_backends; }

}  // extern "C"
