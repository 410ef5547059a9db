// The AMX tile registers (Intel Xeon 4th generation and later): whether this process may use
// them, and their shapes while a kernel does.
#pragma once

#include <cstdint>
#include <initializer_list>

namespace qthink {

enum class AmxProducts { kBf16, kInt8 };

// True when the CPU has AMX tiles with these products, the OS granted this process the tile
// state and they are not switched off (the use_amx op, for comparisons).
bool amx_usable(AmxProducts products);

// One tile register's shape: rows of bytes_per_row bytes (at most 16 and 64).
struct TileShape {
  int64_t rows;
  int64_t bytes_per_row;
};

// Shapes the calling thread's tile registers 0, 1, ... as given, unless they have these shapes
// already (since the last release_tiles): for loops that shape them at every step.
void shape_tiles(std::initializer_list<TileShape> shapes);

// Releases the calling thread's tile registers, if shape_tiles shaped them.
void release_tiles();

// The calling thread's tile registers shaped as given while this lives.
class AmxTiles {
 public:
  AmxTiles(std::initializer_list<TileShape> shapes) { shape_tiles(shapes); }
  ~AmxTiles() { release_tiles(); }
  AmxTiles(const AmxTiles&) = delete;
  AmxTiles& operator=(const AmxTiles&) = delete;
};

}  // namespace qthink
