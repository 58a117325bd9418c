// State of stateful operators (aggregations, deduplication): how it is encoded, versioned and
// kept.
//
// Each stateful operator keeps typed state in memory, in one flat hash map per source partition:
// state for a key lives with the partition its records arrive on, as in Kafka Streams, so a batch
// updates every partition's state in parallel and without locks. After a batch is processed, the
// operator encodes what changed in that batch (a delta: puts and removes of the keys touched); the
// engine hands the deltas to the query's checkpoint store *before* the batch's commit record, so
// a state version becomes visible only with its commit. On restart each partition is restored
// from its newest snapshot plus the deltas after it, up to the last committed batch, and the
// uncommitted batch is replayed with the same id, offsets and watermark: the output is that of a
// run without the failure. Snapshots are made from the files (a snapshot plus the deltas since),
// never from the live maps, so checkpoint cost grows with the keys a batch changed, not with the
// total state.
//
// Layout in a directory checkpoint, as Spark's: state/<operator>/<partition>/<version>.delta and
// <version>.snapshot, where <version> is the batch id that produced it.
#pragma once

#include <absl/container/inlined_vector.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "dataflow/error.h"
#include "dataflow/offsets.h"

namespace dataflow {

class StateBackend;  // state_backend.h

// What a stateful query writes to its sink each batch (Spark's output modes).
enum class OutputMode {
  kAppend,    // a row once, when it is final: a window after the watermark passed its end
  kUpdate,    // the rows of the keys that changed in this batch
  kComplete,  // every row of the state, each batch
};
const char* toString(OutputMode mode);

// ---------------------------------------------------------------------------------------------
// StateCodec<T>: how a key or value of state is written to and read from bytes. Provided for
// arithmetic types, enums, std::string, std::pair, std::tuple, std::optional, std::vector, and for
// trivially copyable types without padding (their bytes). Specialize it for your own key or accumulator
// types:
//
//   template <> struct dataflow::StateCodec<Page> {
//     static void encode(const Page& p, std::string& out) { StateCodec<std::string>::encode(p.url, out); }
//     static Page decode(std::string_view& in) { return Page{StateCodec<std::string>::decode(in)}; }
//   };
//
// decode consumes its bytes from the front of `in` and throws CheckpointError when they run out.
template <class T, class Enable = void>
struct StateCodec;

namespace state_detail {
inline void putVarint(uint64_t v, std::string& out) {
  while (v >= 0x80) {
    out.push_back(static_cast<char>((v & 0x7F) | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<char>(v));
}
// The same into memory with room for it (varintSize); returns the end.
inline char* putVarint(uint64_t v, char* out) {
  while (v >= 0x80) {
    *out++ = static_cast<char>((v & 0x7F) | 0x80);
    v >>= 7;
  }
  *out++ = static_cast<char>(v);
  return out;
}
inline size_t varintSize(uint64_t v) {
  size_t n = 1;
  while (v >= 0x80) {
    v >>= 7;
    ++n;
  }
  return n;
}
inline uint64_t getVarint(std::string_view& in) {
  uint64_t v = 0;
  for (int shift = 0; shift < 64; shift += 7) {
    if (in.empty()) throw CheckpointError("corrupt state: truncated varint");
    auto b = static_cast<uint8_t>(in.front());
    in.remove_prefix(1);
    v |= static_cast<uint64_t>(b & 0x7F) << shift;
    if (!(b & 0x80)) return v;
  }
  throw CheckpointError("corrupt state: varint too long");
}
inline std::string_view take(std::string_view& in, size_t n) {
  if (in.size() < n) throw CheckpointError("corrupt state: truncated value");
  auto out = in.substr(0, n);
  in.remove_prefix(n);
  return out;
}
}  // namespace state_detail

// Types written as their bytes: arithmetic types, enums, and trivially copyable types without
// padding (equal values must give equal bytes: snapshots merge deltas by the key's bytes).
template <class T>
inline constexpr bool kBytewiseState =
    std::is_arithmetic_v<T> || std::is_enum_v<T> ||
    (std::is_trivially_copyable_v<T> && std::has_unique_object_representations_v<T>);

// Types whose every value encodes to the same number of bytes: bytewise ones, and pairs and
// tuples of them (a writer can size a file of them from its first entry).
template <class T>
inline constexpr bool kFixedSizeState = kBytewiseState<T>;
template <class A, class B>
inline constexpr bool kFixedSizeState<std::pair<A, B>> = kFixedSizeState<A> && kFixedSizeState<B>;
template <class... Ts>
inline constexpr bool kFixedSizeState<std::tuple<Ts...>> = (kFixedSizeState<Ts> && ...);

template <class T>
struct StateCodec<T, std::enable_if_t<kBytewiseState<T>>> {
  static void encode(const T& v, std::string& out) {
    out.append(reinterpret_cast<const char*>(&v), sizeof(T));
  }
  static T decode(std::string_view& in) {
    T v;
    std::memcpy(&v, state_detail::take(in, sizeof(T)).data(), sizeof(T));
    return v;
  }
};

template <>
struct StateCodec<std::string> {
  static void encode(const std::string& v, std::string& out) {
    state_detail::putVarint(v.size(), out);
    out.append(v);
  }
  static std::string decode(std::string_view& in) {
    auto n = state_detail::getVarint(in);
    return std::string(state_detail::take(in, n));
  }
};

template <class A, class B>
struct StateCodec<std::pair<A, B>, std::enable_if_t<!kBytewiseState<std::pair<A, B>>>> {
  static void encode(const std::pair<A, B>& v, std::string& out) {
    StateCodec<A>::encode(v.first, out);
    StateCodec<B>::encode(v.second, out);
  }
  static std::pair<A, B> decode(std::string_view& in) {
    A a = StateCodec<A>::decode(in);
    B b = StateCodec<B>::decode(in);
    return {std::move(a), std::move(b)};
  }
};

template <class... Ts>
struct StateCodec<std::tuple<Ts...>, std::enable_if_t<!kBytewiseState<std::tuple<Ts...>>>> {
  static void encode(const std::tuple<Ts...>& v, std::string& out) {
    std::apply([&](const auto&... xs) { (StateCodec<std::decay_t<decltype(xs)>>::encode(xs, out), ...); }, v);
  }
  static std::tuple<Ts...> decode(std::string_view& in) {
    // Braced initialisation evaluates left to right.
    return std::tuple<Ts...>{StateCodec<Ts>::decode(in)...};
  }
};

template <class T>
struct StateCodec<std::optional<T>, std::enable_if_t<!kBytewiseState<std::optional<T>>>> {
  static void encode(const std::optional<T>& v, std::string& out) {
    out.push_back(v ? 1 : 0);
    if (v) StateCodec<T>::encode(*v, out);
  }
  static std::optional<T> decode(std::string_view& in) {
    if (state_detail::take(in, 1)[0] == 0) return std::nullopt;
    return StateCodec<T>::decode(in);
  }
};

template <class T>
struct StateCodec<std::vector<T>> {
  static void encode(const std::vector<T>& v, std::string& out) {
    state_detail::putVarint(v.size(), out);
    for (const auto& x : v) StateCodec<T>::encode(x, out);
  }
  static std::vector<T> decode(std::string_view& in) {
    auto n = state_detail::getVarint(in);
    std::vector<T> v;
    v.reserve(std::min<uint64_t>(n, in.size()));
    for (uint64_t i = 0; i < n; ++i) v.push_back(StateCodec<T>::decode(in));
    return v;
  }
};

// Written as a std::vector of the same elements is: the inline capacity is not part of the bytes.
template <class T, size_t N>
struct StateCodec<absl::InlinedVector<T, N>> {
  static void encode(const absl::InlinedVector<T, N>& v, std::string& out) {
    state_detail::putVarint(v.size(), out);
    for (const auto& x : v) StateCodec<T>::encode(x, out);
  }
  static absl::InlinedVector<T, N> decode(std::string_view& in) {
    auto n = state_detail::getVarint(in);
    absl::InlinedVector<T, N> v;
    v.reserve(std::min<uint64_t>(n, in.size()));
    for (uint64_t i = 0; i < n; ++i) v.push_back(StateCodec<T>::decode(in));
    return v;
  }
};

// A type whose state can be checkpointed.
template <class T>
concept Checkpointable = requires(const T& v, std::string& out, std::string_view& in) {
  StateCodec<T>::encode(v, out);
  { StateCodec<T>::decode(in) } -> std::convertible_to<T>;
};

// ---------------------------------------------------------------------------------------------
// The file of one state change set: a delta (the puts and removes of one batch) or a snapshot
// (every entry at one version). Layout: "DFST", format version byte, kind byte, 8-byte entry
// count, entries (op byte, varint key length, key, [varint value length, value] for puts), then
// an 8-byte checksum of everything before it. The entries are written in place after a
// placeholder header, so finishing a file copies nothing. A truncated or damaged file is refused
// with CheckpointError.
class StateFileWriter {
 public:
  enum class Kind : uint8_t { kDelta = 1, kSnapshot = 2 };
  explicit StateFileWriter(Kind kind);

  void put(std::string_view key, std::string_view value) {
    char* p = room(putSize(key, value));
    *p++ = kPut;
    p = putBytes(key, p);
    putBytes(value, p);
    ++count_;
  }
  void remove(std::string_view key) {
    char* p = room(1 + state_detail::varintSize(key.size()) + key.size());
    *p++ = kRemove;
    putBytes(key, p);
    ++count_;
  }
  // Room for `bytes` more bytes of entries, so that a file of known size (a snapshot, a delta of
  // known entries) is written without the buffer doubling past it, checksum included. Capacity
  // only: an estimate too large costs address space, not pages.
  void reserve(size_t bytes) { body_.reserve(used_ + bytes + sizeof(uint64_t)); }
  // The bytes put(key, value) appends.
  static size_t putSize(std::string_view key, std::string_view value) {
    return 1 + state_detail::varintSize(key.size()) + key.size() + state_detail::varintSize(value.size()) + value.size();
  }
  // Scratch buffers for encoding a key and a value without allocating per entry.
  std::string& keyBuffer() { return key_; }
  std::string& valueBuffer() { return value_; }

  size_t count() const { return count_; }
  // The file's bytes; the writer is spent afterwards.
  std::string finish();

  static constexpr char kPut = 1;
  static constexpr char kRemove = 2;

 private:
  // `n` bytes at the end of the entries. The buffer grows ahead of the entries (its size is the
  // room, `used_` what is written), so that an entry is one bounds check and plain copies rather
  // than an append per part.
  char* room(size_t n) {
    if (body_.size() - used_ < n) grow(n);
    char* p = body_.data() + used_;
    used_ += n;
    return p;
  }
  // Doubles the room (zero-filled, which touches the pages as they come into use), within the
  // reserved capacity while it lasts.
  void grow(size_t n) {
    size_t size = std::max(used_ + n, body_.size() * 2);
    if (used_ + n <= body_.capacity()) size = std::min(size, body_.capacity());
    body_.resize(size);
  }
  // A varint length, then the bytes; returns the end.
  static char* putBytes(std::string_view bytes, char* p) {
    p = state_detail::putVarint(bytes.size(), p);
    if (!bytes.empty()) std::memcpy(p, bytes.data(), bytes.size());
    return p + bytes.size();
  }

  std::string body_;  // header placeholder, then the entries, then room for more
  size_t used_ = 0;   // bytes of body_ written
  std::string key_, value_;
  size_t count_ = 0;
};

// Reads a state file written by StateFileWriter; `origin` names it in errors.
class StateFileReader {
 public:
  StateFileReader(std::string_view bytes, std::string origin);
  StateFileWriter::Kind kind() const { return kind_; }
  size_t count() const { return count_; }
  const std::string& origin() const { return origin_; }
  // Calls put(key, value) or remove(key) for each entry, in order.
  template <class Put, class Remove>
  void forEach(Put&& put, Remove&& remove) const {
    std::string_view in = body_;
    for (size_t i = 0; i < count_; ++i) {
      auto op = state_detail::take(in, 1)[0];
      auto key = state_detail::take(in, state_detail::getVarint(in));
      if (op == StateFileWriter::kPut) {
        auto value = state_detail::take(in, state_detail::getVarint(in));
        put(key, value);
      } else if (op == StateFileWriter::kRemove) {
        remove(key);
      } else {
        throw CheckpointError("corrupt state file " + origin_ + ": unknown entry kind");
      }
    }
  }

 private:
  std::string_view body_;
  std::string origin_;
  StateFileWriter::Kind kind_;
  size_t count_ = 0;
};

// Names one state file of a checkpoint.
struct StateFileId {
  int operatorId = 0;
  PartitionId partition;
  int64_t version = 0;  // the batch id that produced it
  bool snapshot = false;

  auto operator<=>(const StateFileId&) const = default;
  bool operator==(const StateFileId&) const = default;
  // "state/<operator>/<topic>-<partition>/<version>.delta|.snapshot"
  std::string path() const;
  // The inverse of path() for the part under state/; nullopt when `relative` is not such a name.
  static std::optional<StateFileId> fromPath(std::string_view relative);
};

// The state changes of one batch, as the engine hands them to the checkpoint store.
struct StateChanges {
  struct File {
    StateFileId id;
    std::string bytes;
  };
  std::vector<File> files;
  bool empty() const { return files.empty(); }
};

// Options of state checkpointing (QueryOptions::state).
struct StateOptions {
  // Write a snapshot of a partition's state every this many versions (made from the previous
  // snapshot and the deltas, not from the live state). Like
  // spark.sql.streaming.stateStore.minDeltasForSnapshot. Default: 10.
  int minDeltasForSnapshot = 10;
  // Keep the files needed to restore at least this many of the newest versions. Default: 100
  // (spark.sql.streaming.minBatchesToRetain).
  int minVersionsToRetain = 100;
  // Where operators keep their working state (state_backend.h): null keeps it in memory, in flat
  // hash maps; a backend such as connectors/rocksdb keeps it on local disk for state larger
  // than memory. Set with DataStreamWriter::stateBackend. Default: null (memory).
  std::shared_ptr<StateBackend> backend;
  // With a backend: how many keys of a partition stay cached in memory between batches (a
  // partition's cache is emptied after a batch that leaves more). Option
  // "state.cachedKeysPerPartition". Default: 262144.
  int64_t cachedKeysPerPartition = 262144;
};

}  // namespace dataflow
