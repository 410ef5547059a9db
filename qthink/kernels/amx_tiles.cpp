// The AMX tile registers (see amx_tiles.h).

#include "amx_tiles.h"

#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <torch/library.h>
#include <unistd.h>

#include <atomic>
#include <cstring>

namespace qthink {
namespace {

// Linux keeps the 8 KB tile state off until a process asks for it (arch_prctl, asm/prctl.h).
constexpr int kArchRequestPermission = 0x1023;
constexpr int kTileDataFeature = 18;

// CPUID leaf 7, EDX: AMX-BF16, AMX-TILE and AMX-INT8.
constexpr unsigned kBf16Bit = 1u << 22, kTileBit = 1u << 24, kInt8Bit = 1u << 25;

// The palette-1 tile configuration that ldtilecfg reads.
struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t bytes_per_row[16] = {};
  uint8_t rows[16] = {};
};

// The CPUID bits of the AMX features, if the OS lets this process use them; else 0.
unsigned granted_features() {
  static const unsigned features = [] {
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || !(d & kTileBit)) return 0u;
    return syscall(SYS_arch_prctl, kArchRequestPermission, kTileDataFeature) == 0 ? d : 0u;
  }();
  return features;
}

std::atomic<bool> switched_on{true};

// The configuration the calling thread's tiles hold, if tiles_shaped.
thread_local TileConfig shaped_as;
thread_local bool tiles_shaped = false;

// Whether the AMX kernels are in use: switched on, and the CPU and the OS grant the tiles.
bool amx_in_use() { return switched_on && granted_features() != 0; }

// Switches the AMX kernels on or off; true if they are in use afterwards.
bool use_amx(bool enable) {
  switched_on = enable;
  return amx_in_use();
}

}  // namespace

bool amx_usable(AmxProducts products) {
  const unsigned bit = products == AmxProducts::kBf16 ? kBf16Bit : kInt8Bit;
  return switched_on && (granted_features() & bit) != 0;
}

void shape_tiles(std::initializer_list<TileShape> shapes) {
  TileConfig config;
  int t = 0;
  for (const TileShape& shape : shapes) {
    config.rows[t] = static_cast<uint8_t>(shape.rows);
    config.bytes_per_row[t++] = static_cast<uint16_t>(shape.bytes_per_row);
  }
  if (tiles_shaped && std::memcmp(&config, &shaped_as, sizeof(config)) == 0) return;
  shaped_as = config;
  tiles_shaped = true;
  asm volatile("" : : "m"(shaped_as) : "memory");  // GCC 12 does not see that ldtilecfg reads it
  _tile_loadconfig(&shaped_as);
}

void release_tiles() {
  if (!tiles_shaped) return;
  _tile_release();
  tiles_shaped = false;
}

}  // namespace qthink

TORCH_LIBRARY_FRAGMENT(qthink_kernels, m) {
  m.def("use_amx(bool enable) -> bool", &qthink::use_amx);
  m.def("amx_in_use() -> bool", &qthink::amx_in_use);
}
