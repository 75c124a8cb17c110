// Which implementation ran the last call of each op, so that tests can assert that the path
// they target really ran (fastrnn._C.last_path(op) in Python). One record per op, process-wide
// (backward may run on an autograd worker thread), written once per layer call.
#pragma once

#include <cstdint>
#include <cstring>
#include <mutex>

#include "fastrnn/cell_traits.h"

namespace fastrnn {

struct PathRecord {
  const char* path = nullptr;  // a string literal: "cpu.step_loop", "cpu.single_step",
                               // "cpu.persistent_emulation", "cpu.persistent_mma_emulation",
                               // "cuda.step_loop", "cuda.persistent", "cuda.persistent_mma"
  int64_t grad_chunks = 0;     // backward: how many runs of steps the gate grads were folded in
  const char* fallback = nullptr;  // a string literal: why a preferred path did not run this call
};

class PathLog {
 public:
  // Two ops per cell (cell_traits.h, kCells): record 2c is its forward, 2c + 1 its backward.
  static constexpr int kNumOps = 2 * kNumCells;

  // op: a cell's forward or backward op, qualified ("fastrnn::lstm_forward") or not; path: a
  // string literal.
  static void record(const char* op, const char* path, int64_t grad_chunks = 0, const char* fallback = nullptr) {
    const int i = index(op);
    if (i < 0) return;
    std::lock_guard<std::mutex> lock(mutex());
    records()[i] = PathRecord{path, grad_chunks, fallback};
  }
  // Adds why the preferred path did not run to the op's latest record (after the path ran).
  static void note_fallback(const char* op, const char* fallback) {
    const int i = index(op);
    if (i < 0) return;
    std::lock_guard<std::mutex> lock(mutex());
    records()[i].fallback = fallback;
  }
  static bool known(const char* op) { return index(op) >= 0; }
  // false when the op is unknown or has not run yet.
  static bool get(const char* op, PathRecord& out) {
    const int i = index(op);
    if (i < 0) return false;
    std::lock_guard<std::mutex> lock(mutex());
    out = records()[i];
    return out.path != nullptr;
  }

 private:
  static const char* unqualified(const char* op) {
    return std::strncmp(op, "fastrnn::", 9) == 0 ? op + 9 : op;
  }
  static int index(const char* op) {
    op = unqualified(op);
    for (int c = 0; c < kNumCells; ++c) {
      if (std::strcmp(op, unqualified(kCells[c]->forward_op)) == 0) return 2 * c;
      if (std::strcmp(op, unqualified(kCells[c]->backward_op)) == 0) return 2 * c + 1;
    }
    return -1;
  }
  static std::mutex& mutex() {
    static std::mutex m;
    return m;
  }
  static PathRecord* records() {
    static PathRecord r[kNumOps];
    return r;
  }
};

}  // namespace fastrnn
